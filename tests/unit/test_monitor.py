"""DatabaseMonitor's decisions over a scripted probe (no database): only changes are
reported, role flaps are debounced (also across an outage), identity changes warned."""
import logging

import pytest

from supervisor.monitor import DatabaseMonitor, DatabaseState

PRIMARY = DatabaseState(up=True, role="primary", system_identifier="7", timeline=1)
STANDBY = DatabaseState(up=True, role="standby", system_identifier="7", timeline=1)
PROMOTED = DatabaseState(up=True, role="primary", system_identifier="7", timeline=2)


def down(error="connection refused"):
    return DatabaseState(up=False, error=error)


class ScriptedMonitor(DatabaseMonitor):
    """A DatabaseMonitor whose probe() answers from a script (a working fake of the
    server's answers; everything else is the real monitor)."""

    role_debounce = 0.0

    def __init__(self, script):
        self.reports = []
        super().__init__("host=/nonexistent dbname=none", self.reports.append)
        self.script = list(script)

    def probe(self):
        self.probes += 1
        return self.script.pop(0)

    def run_script(self):
        while self.script:
            self._observe()
        return self.reports


@pytest.mark.timeout(5)
def test_only_changes_are_reported():
    assert ScriptedMonitor([PRIMARY, PRIMARY, PRIMARY]).run_script() == [PRIMARY]


@pytest.mark.timeout(5)
def test_a_role_flap_is_ignored():
    monitor = ScriptedMonitor([PRIMARY, STANDBY, PRIMARY, PRIMARY])
    assert monitor.run_script() == [PRIMARY]
    assert monitor.probes == 4  # the flap cost one confirming probe


@pytest.mark.timeout(5)
def test_a_confirmed_role_change_is_reported_once():
    monitor = ScriptedMonitor([PRIMARY, STANDBY, STANDBY, STANDBY])
    assert monitor.run_script() == [PRIMARY, STANDBY]


@pytest.mark.timeout(5)
def test_a_role_flap_across_an_outage_is_ignored_too():
    monitor = ScriptedMonitor([PRIMARY, down(), STANDBY, PRIMARY, PRIMARY])
    assert monitor.run_script() == [PRIMARY, down(), PRIMARY]


@pytest.mark.timeout(5)
def test_a_new_error_text_while_down_is_not_news():
    monitor = ScriptedMonitor([PRIMARY, down("refused"), down("no such file"), PRIMARY])
    assert monitor.run_script() == [PRIMARY, down("refused"), PRIMARY]


@pytest.mark.timeout(5)
def test_a_changed_timeline_is_warned_with_both_values(caplog):
    caplog.set_level(logging.INFO, logger="supervisor.monitor")
    monitor = ScriptedMonitor([STANDBY, PROMOTED, PROMOTED])
    assert monitor.run_script() == [STANDBY, PROMOTED]
    warnings = {r.action: r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING}
    assert "standby -> primary" in warnings["monitor.role_changed"]
    assert "system identifier 7 -> 7, timeline 1 -> 2" in warnings["monitor.identity_changed"]
