"""The Supervisor's defaults: class attributes (cyme's names among them) whose values come
from the settings table; an argument left None takes the class attribute. No database."""
import json
import subprocess
import sys

import pytest

from instances.registry import Registry
from supervisor import Supervisor
from supervisor.config.settings import BY_NAME

#: Supervisor attribute -> setting of the table.
FROM_THE_TABLE = {
    "interval": "supervisor.interval",
    "restart_max_rate": "supervisor.restart_max_rate",
    "wait_after_db_revived": "supervisor.wait_after_db_revived",
    "heartbeat_timeout": "supervisor.heartbeat_timeout",
    "shutdown_grace": "supervisor.shutdown_grace",
    "probe_interval": "supervisor.probe_interval",
    "probe_timeout": "supervisor.probe_timeout",
    "failover_debounce": "failover.debounce",
    "failover_files": "failover.files",
}


@pytest.fixture
def registry(tmp_path):
    return Registry(str(tmp_path / "registry.json"))


def make(registry, cls=Supervisor, **options):
    return cls(registry, "host=127.0.0.1 port=1", set_as_current=False, **options)


def test_the_class_defaults_are_the_settings_tables():
    for attribute, setting in FROM_THE_TABLE.items():
        assert getattr(Supervisor, attribute) == BY_NAME[setting].default, attribute


def test_cymes_documented_class_attributes():
    assert Supervisor.interval == 60.0
    assert Supervisor.restart_max_rate == "1/m"
    assert Supervisor.paused is False
    assert Supervisor.wait_after_broker_revived == Supervisor.wait_after_db_revived == 35.0


def test_arguments_left_none_take_the_class_attributes(registry):
    sup = make(registry)
    assert (sup.interval, sup.restart_max_rate, sup.wait_after_db_revived) == (60.0, "1/m",
                                                                                35.0)
    assert sup.budget.default_rate == "1/m" and sup.monitor.probe_interval == 1.0
    given = make(registry, interval=5, restart_max_rate="3/h", wait_after_db_revived=2.0,
                 shutdown_grace=1.5, probe_interval=0.25)
    assert (given.interval, given.budget.default_rate, given.wait_after_db_revived,
            given.shutdown_grace, given.monitor.probe_interval) == (5, "3/h", 2.0, 1.5, 0.25)


def test_a_subclass_changes_the_defaults_with_cymes_names(registry):
    class Mine(Supervisor):
        interval = 5.0
        restart_max_rate = "10/m"
        wait_after_broker_revived = 3.0
        paused = True

    sup = make(registry, Mine)
    assert (sup.interval, sup.budget.default_rate) == (5.0, "10/m")
    assert sup.wait_after_db_revived == sup.wait_after_broker_revived == 3.0
    assert sup.paused and sup.database_status()["paused_by"] == "operator"
    assert Supervisor.wait_after_db_revived == 35.0  # the base class is untouched


def test_an_assignment_to_the_class_attribute_changes_the_default(registry, monkeypatch):
    monkeypatch.setattr(Supervisor, "interval", 7.0)
    monkeypatch.setattr(Supervisor, "paused", True)
    sup = make(registry)
    assert sup.interval == 7.0 and sup.database_status()["paused_by"] == "operator"


def test_the_broker_alias_reads_and_sets_the_grace(registry):
    sup = make(registry)
    sup.wait_after_broker_revived = 4.0
    assert sup.wait_after_db_revived == 4.0


def test_options_are_keyword_only_and_unknown_ones_are_refused(registry):
    with pytest.raises(TypeError):
        make(registry, no_such_option=1)
    with pytest.raises(TypeError):
        Supervisor(registry, "host=x", None, None, None, None, None, None, True, 30.0)


def test_paused_is_true_while_the_database_state_is_unknown(registry):
    sup = make(registry)
    assert sup.paused  # no probe yet: nothing is started
    assert sup.database_status()["paused_by"] == "outage"


def test_the_service_settles_the_collector_once_started_and_keeps_a_higher_threshold():
    """``settle_collector`` (Service.start): start-up's objects frozen, the young threshold
    raised to GC_YOUNG_THRESHOLD, never lowered, a disabled collector left so. In a fresh
    interpreter: the test process's own collector is not touched."""
    script = (
        "import gc, json\n"
        "from supervisor.service import GC_YOUNG_THRESHOLD, settle_collector\n"
        "seen = []\n"
        "for young in (700, 50000, 0):\n"
        "    gc.set_threshold(young, 10, 10)\n"
        "    settle_collector()\n"
        "    seen.append(gc.get_threshold())\n"
        "print(json.dumps([GC_YOUNG_THRESHOLD, gc.get_freeze_count() > 0, seen]))\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    threshold, frozen, seen = json.loads(out)
    assert threshold > 700 and frozen
    assert seen == [[threshold, 10, 10], [50000, 10, 10], [0, 10, 10]]
