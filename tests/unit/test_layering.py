"""The one-adapter-per-I/O-library rule (DESIGN.md) stays enforced as modules are added:
every module appears in the import-linter contracts of tox.ini, and gevent.pywsgi (which
import-linter cannot name) is imported by supervisor.http alone."""
import configparser
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ADAPTERS = {
    "psycopg2-adapter": {"instances.connectors", "supervisor.testing"},
    "watchdog-adapter": {"supervisor.watch"},
    "limits-adapter": {"supervisor.budget"},
}


def _modules():
    found = set()
    for package in ("instances", "supervisor"):
        for root, _dirs, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py") and name != "__init__.py":
                    path = os.path.relpath(os.path.join(root, name), ROOT)[:-3]
                    found.add(path.replace(os.sep, "."))
    return found


@pytest.mark.parametrize("contract", sorted(ADAPTERS))
def test_every_module_is_checked_by_the_adapter_contract(contract):
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "tox.ini"))
    listed = set(config["importlinter:contract:" + contract]["source_modules"].split())
    allowed = ADAPTERS[contract]
    expected = {m for m in _modules()
                if m not in allowed and not any(m.startswith(a + ".") for a in allowed)}
    missing = expected - listed
    assert not missing, "add to [importlinter:contract:%s] in tox.ini: %s" % (
        contract, ", ".join(sorted(missing)))


def test_only_the_http_module_imports_pywsgi():
    importers = set()
    for module in _modules():
        path = os.path.join(ROOT, *module.split(".")) + ".py"
        with open(path, encoding="utf-8") as source:
            if re.search(r"^\s*(from gevent import pywsgi|import gevent\.pywsgi|"
                         r"from gevent\.pywsgi import)", source.read(), re.M):
                importers.add(module)
    assert importers <= {"supervisor.http"}, importers
