"""An edit that cannot start leaves the running instance running (issue 16, item 10).

The real service against a real Postgres: an instance handles notifications; its spec is
edited (the registry file through the CLI, and an HTTP PUT) to one whose handler cannot be
imported or whose spool cannot be opened. The instance goes on handling notifications on
its previous spec, the error shows on it (``pending_spec_error`` and ``last_error`` in
``GET /instances/NAME``, the CLI's status), and once the module is deployed (or the
directory fixed) the next periodic verify applies the edit.
"""
import os

import pytest

from supervisor.testing import wait_for
from tests.acceptance.service_process import ServiceProcess, environ

HANDLERS = "tests.acceptance.handlers"
LATE_MODULE = "pgvisor_edit_handler_%d" % os.getpid()
LATE_HANDLER = '''import os


def handle(notification):
    with open(os.path.join(os.environ["ACCEPTANCE_OUT"], "handled.log"), "a") as f:
        f.write("late %s\\n" % notification.payload)
'''


@pytest.fixture
def service(tmp_path, pg_dsn):
    code = tmp_path / "code"
    code.mkdir()
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_dsn},
        # A verify every half second: the retry of a pending edit.
        "supervisor": {"interval": 0.5, "probe_interval": 0.2},
    }, env={"PYTHONPATH": environ(tmp_path)["PYTHONPATH"] + os.pathsep + str(code)})
    svc.code = code
    added = svc.cli("instances", "add", "edit", "-c", svc.config, "--channel", "edit_ch",
                    "--handler", HANDLERS + ":record")
    assert added.returncode == 0, added.stderr
    svc.start()
    yield svc
    svc.stop()


def _notify(pg_database, payload):
    pg_database.execute("SELECT pg_notify('edit_ch', %s)", [payload])


def _pending(svc):
    return svc.get("/instances/edit").get("pending_spec_error")


@pytest.mark.timeout(90)
def test_an_edit_whose_handler_cannot_be_imported_keeps_the_instance_running(
        service, pg_database):
    svc = service
    svc.wait_state("edit", "running")
    _notify(pg_database, "before")
    svc.wait_handled("notify edit_ch before")
    since = svc.get("/instances/edit")["since"]

    edited = svc.cli("instances", "update", "edit", "-c", svc.config,
                     "--handler", LATE_MODULE + ":handle")
    assert edited.returncode == 0, edited.stderr
    wait_for(lambda: _pending(svc), 20, 0.05, "the edit's error shows on the instance")
    view = svc.get("/instances/edit")
    assert "cannot import module %r" % LATE_MODULE in view["pending_spec_error"]
    assert view["handler"] == LATE_MODULE + ":handle"  # the registry holds the edit
    assert view["state"] == "running" and view["since"] == since  # never stopped
    assert view["restarts"] == 0
    assert "new spec not applied" in view["last_error"]
    status = svc.cli("status", "-c", svc.config)
    assert "cannot import module" in status.stdout, status.stdout

    for payload in ("during-1", "during-2"):  # the old handler goes on, retries or not
        _notify(pg_database, payload)
        svc.wait_handled("notify edit_ch %s" % payload)
    assert svc.log().count("action=supervisor.spec_refused") == 1  # once, not per verify
    assert "action=supervisor.park" not in svc.log()

    (svc.code / (LATE_MODULE + ".py")).write_text(LATE_HANDLER)  # the fix is deployed
    wait_for(lambda: _pending(svc) is None, 20, 0.05, "the next verify applies the edit")
    svc.wait_state("edit", "running")
    _notify(pg_database, "after")
    svc.wait_handled("late after")
    assert "notify edit_ch after" not in svc.handled()
    assert "action=supervisor.pending_applied" in svc.log()


@pytest.mark.timeout(90)
def test_a_put_whose_spool_cannot_open_keeps_the_instance_until_the_directory_is_fixed(
        service, pg_database, tmp_path):
    svc = service
    svc.wait_state("edit", "running")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the spool's parent directory should be")
    body = {k: v for k, v in svc.get("/instances/edit").items()
            if k in ("channels", "handler", "min_concurrency", "max_concurrency")}
    body["queue"] = {"spool": str(blocker / "spool")}
    code, answer = svc.call("PUT", "/instances/edit", body)
    assert code == 200, answer
    wait_for(lambda: _pending(svc), 20, 0.05, "the spool's error shows on the instance")
    assert "Not a directory" in _pending(svc)
    _notify(pg_database, "memory-still")
    svc.wait_handled("notify edit_ch memory-still")
    assert svc.get("/instances/edit")["queue"]["spool"] == str(blocker / "spool")

    blocker.unlink()  # fixed: the directory can be made now
    wait_for(lambda: _pending(svc) is None, 20, 0.05, "the next verify applies the edit")
    svc.wait_state("edit", "running")
    _notify(pg_database, "spooled")
    svc.wait_handled("notify edit_ch spooled")
    assert (blocker / "spool" / "incoming").is_dir()


@pytest.mark.timeout(90)
def test_an_edit_to_a_handler_added_to_a_module_the_service_imported_before(
        service, pg_database):
    """Version 2 of a module the service runs a handler of adds a new handler, and a spec
    is edited to it: the CLI (a new process) finds it, the service's ``sys.modules`` holds
    version 1, which lacks it. The edit must read the module as deployed, not park as
    pending until the service restarts."""
    svc = service
    module = LATE_MODULE + "_v"
    (svc.code / (module + ".py")).write_text(LATE_HANDLER.replace("def handle", "def first")
                                              .replace('"late %s', '"v1 %s'))
    svc.wait_state("edit", "running")
    edited = svc.cli("instances", "update", "edit", "-c", svc.config,
                     "--handler", module + ":first")
    assert edited.returncode == 0, edited.stderr
    wait_for(lambda: svc.get("/instances/edit")["handler"] == module + ":first", 20, 0.05,
             "the edit to version 1's handler applies")
    svc.wait_state("edit", "running")
    _notify(pg_database, "one")
    svc.wait_handled("v1 one")  # version 1 is imported in the service now

    (svc.code / (module + ".py")).write_text("# version 2: a new handler\n" + LATE_HANDLER)
    edited = svc.cli("instances", "update", "edit", "-c", svc.config,
                     "--handler", module + ":handle")
    assert edited.returncode == 0, edited.stderr  # the CLI's own import finds it
    wait_for(lambda: _pending(svc) or "late " in svc.handled(), 20, 0.05,
             "the new instance's catch_up reaches version 2's handler")
    assert _pending(svc) is None
    _notify(pg_database, "two")
    svc.wait_handled("late two")
    assert _pending(svc) is None
    assert "has no attribute" not in svc.log()
