"""A handler an edit names that the module imported earlier lacks: the module is read again
as deployed, once per change of its file (supervisor.execution._reload_if_lacking)."""
import importlib
import os
import sys

import pytest

from supervisor import execution

RUNS = "RUNS.append(1)\n"


@pytest.fixture
def module(tmp_path, monkeypatch):
    name = "pgvisor_reread_%d" % os.getpid()
    path = tmp_path / (name + ".py")
    path.write_text("RUNS = globals().setdefault('RUNS', [])\n" + RUNS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(execution, "_reread", {})
    imported = importlib.import_module(name)
    yield name, path, imported
    sys.modules.pop(name, None)


def _deploy(path, text, bump):
    path.write_text(text)
    stat = os.stat(path)  # a later mtime, as a deployment a moment later has
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + bump * 1_000_000_000))


def test_a_lacking_handler_is_read_from_the_file_deployed_since(module):
    name, path, imported = module
    execution._reload_if_lacking(name + ":RUNS")  # present: the module is not run again
    assert imported.RUNS == [1]
    _deploy(path, "RUNS = globals().setdefault('RUNS', [])\n" + RUNS
            + "def handle(n):\n    pass\n", 1)
    execution._reload_if_lacking(name + ":handle")
    assert callable(sys.modules[name].handle) and imported.RUNS == [1, 1]
    execution._reload_if_lacking(name + ":handle")
    assert imported.RUNS == [1, 1]


def test_a_module_that_fails_is_not_run_again_until_its_file_changes(module):
    name, path, imported = module
    _deploy(path, "RUNS = globals().setdefault('RUNS', [])\n" + RUNS + "1 / 0\n", 1)
    for _ in range(3):  # every verify retries the pending edit: the same error, one run
        with pytest.raises(RuntimeError, match="handler='%s:handle': cannot re-import module "
                           "'%s': ZeroDivisionError" % (name, name)):
            execution._reload_if_lacking(name + ":handle")
    assert imported.RUNS == [1, 1]
    _deploy(path, "RUNS = globals().setdefault('RUNS', [])\n" + RUNS
            + "def handle(n):\n    pass\n", 2)
    execution._reload_if_lacking(name + ":handle")
    assert callable(imported.handle) and imported.RUNS == [1, 1, 1]
