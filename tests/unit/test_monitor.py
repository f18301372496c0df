"""DatabaseMonitor's decisions over a scripted probe (no database): only changes are
reported, one failed probe is a blip and two in a row are down, the pace backs off while
down, role flaps are debounced (also across an outage), identity changes warned, and an
outage is told once, with a summary every 5 minutes and its figures at the end."""
import logging

import pytest

from instances.episodes import Episode
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
    monitor = ScriptedMonitor([PRIMARY, down(), down(), STANDBY, PRIMARY, PRIMARY])
    assert monitor.run_script() == [PRIMARY, down(), PRIMARY]


@pytest.mark.timeout(5)
def test_a_new_error_text_while_down_is_not_news():
    monitor = ScriptedMonitor([PRIMARY, down("refused"), down("no such file"),
                               down("timeout"), PRIMARY])
    assert monitor.run_script() == [PRIMARY, down("no such file"), PRIMARY]


@pytest.mark.timeout(5)
def test_a_changed_timeline_is_warned_with_both_values(caplog):
    caplog.set_level(logging.INFO, logger="supervisor.monitor")
    monitor = ScriptedMonitor([STANDBY, PROMOTED, PROMOTED])
    assert monitor.run_script() == [STANDBY, PROMOTED]
    warnings = {r.action: r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING}
    assert "standby -> primary" in warnings["monitor.role_changed"]
    assert "system identifier 7 -> 7, timeline 1 -> 2" in warnings["monitor.identity_changed"]


@pytest.mark.timeout(5)
def test_one_failed_probe_is_a_blip_two_in_a_row_are_down():
    assert ScriptedMonitor([PRIMARY, down(), PRIMARY, down(), PRIMARY]).run_script() == [
        PRIMARY]
    assert ScriptedMonitor([PRIMARY, down(), down(), down()]).run_script() == [
        PRIMARY, down()]


@pytest.mark.timeout(5)
def test_a_database_down_from_the_start_is_reported_after_two_failures_too():
    monitor = ScriptedMonitor([down()])
    assert monitor.run_script() == [] and monitor.failures == 1
    monitor.script = [down()]
    assert monitor.run_script() == [down()]


@pytest.mark.timeout(5)
def test_a_fatal_error_while_down_is_news():
    fatal = DatabaseState(up=False, error="password authentication failed", fatal=True)
    assert ScriptedMonitor([PRIMARY, down(), down(), fatal]).run_script() == [
        PRIMARY, down(), fatal]


@pytest.mark.timeout(5)
def test_the_pace_backs_off_while_down_and_resets_when_up():
    monitor = ScriptedMonitor([PRIMARY])
    monitor.backoff.jitter = 0.0
    monitor.run_script()
    assert monitor.next_delay() == monitor.probe_interval == 1.0
    monitor.script = [down(), down()]
    monitor.run_script()
    assert [monitor.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    monitor.script = [PRIMARY]
    monitor.run_script()
    assert monitor.next_delay() == 1.0 and monitor.backoff.attempts == 0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.mark.timeout(5)
def test_an_outage_is_logged_once_then_summarized_every_five_minutes(caplog):
    caplog.set_level(logging.DEBUG, logger="supervisor.monitor")
    clock = Clock()
    monitor = ScriptedMonitor([PRIMARY])
    monitor.outage = Episode(300.0, clock=clock)
    monitor.run_script()
    for _ in range(420):  # 420 failed probes over 10 min 30 s
        monitor.script = [down("connection refused")]
        monitor.run_script()
        clock.now += 1.5
    monitor.script = [PRIMARY]
    monitor.run_script()
    lines = [(r.levelname, r.action, r.getMessage()) for r in caplog.records
             if r.levelno >= logging.INFO]
    assert [line[:2] for line in lines] == [
        ("INFO", "monitor.change"), ("WARNING", "monitor.change"),
        ("WARNING", "monitor.still_down"), ("WARNING", "monitor.still_down"),
        ("INFO", "monitor.change")]
    assert lines[1][2] == "database down: connection refused"
    assert lines[2][2] == ("database still down for 5m00s, 201 attempts, last error: "
                           "connection refused")
    assert lines[4][2] == ("database up: primary, timeline 1 (was down for 10m30s, "
                           "420 failed probes)")
    assert all("\n" not in r.getMessage() for r in caplog.records)
