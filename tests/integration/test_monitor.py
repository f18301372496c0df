"""DatabaseMonitor against a real server: one long-lived probe connection (not one per
probe), a terminated backend is a blip (reconnect, no "down"), a stopped server is down
after two failures, and the outage is told once on one line (issue 16, items 13, 14)."""
import logging

import pytest

from supervisor.monitor import DatabaseMonitor
from supervisor.testing import wait_for

pytestmark = pytest.mark.usefixtures("hub_heartbeat")

NAME = "pgvisor-monitor-test"


def _backends(database):
    return [pid for (pid,) in database.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (NAME,))]


@pytest.fixture
def monitor_of():
    made = []

    def make(dsn, **kwargs):
        reports = []
        monitor = DatabaseMonitor(dsn, reports.append, application_name=NAME, **kwargs)
        monitor.reports = reports
        made.append(monitor)
        return monitor.start()

    yield make
    for monitor in made:
        monitor.stop()


@pytest.mark.timeout(30)
def test_probes_share_one_long_lived_connection(pg_database, monitor_of):
    monitor = monitor_of(pg_database.dsn, probe_interval=0.02)
    wait_for(lambda: monitor.reports, 10, message="no first report")
    first = _backends(pg_database)
    assert len(first) == 1
    probes = monitor.probes
    wait_for(lambda: monitor.probes >= probes + 30, 10)
    assert _backends(pg_database) == first  # the same backend, 30 probes later
    assert [state.up for state in monitor.reports] == [True]


@pytest.mark.timeout(30)
def test_a_terminated_probe_backend_is_a_blip_not_an_outage(pg_database, monitor_of):
    monitor = monitor_of(pg_database.dsn, probe_interval=0.05)
    wait_for(lambda: len(_backends(pg_database)) == 1, 10)
    (old,) = _backends(pg_database)
    assert pg_database.cluster.terminate_backends(application_name=NAME) == 1
    wait_for(lambda: _backends(pg_database) not in ([], [old]), 10,
             message="the monitor never reconnected")
    probes = monitor.probes
    wait_for(lambda: monitor.probes > probes + 3, 10)
    assert [state.up for state in monitor.reports] == [True]  # never reported down


@pytest.mark.timeout(60)
def test_an_outage_is_down_after_two_failures_and_told_once(pg_private_cluster, monitor_of,
                                                            caplog):
    caplog.set_level(logging.DEBUG)
    monitor = monitor_of(pg_private_cluster.dsn_for("postgres"), probe_interval=0.05,
                         down_interval=0.2, probe_timeout=1.0)
    wait_for(lambda: monitor.reports, 10, message="no first report")
    pg_private_cluster.stop()
    wait_for(lambda: monitor.reports[-1].up is False, 10, message="never reported down")
    assert monitor.failures >= 2
    failed = monitor.probes
    wait_for(lambda: monitor.probes >= failed + 5, 10)  # the outage goes on
    pg_private_cluster.start()
    wait_for(lambda: monitor.reports[-1].up, 20, message="never reported up again")
    assert [state.up for state in monitor.reports] == [True, False, True]
    told = [r for r in caplog.records if r.levelno >= logging.INFO and r.name.startswith(
        ("supervisor", "instances"))]
    assert [(r.levelname, r.getMessage().split(":")[0]) for r in told] == [
        ("INFO", "database up"), ("WARNING", "database down"), ("INFO", "database up")]
    assert "was down for" in told[-1].getMessage()
    assert all("\n" not in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(30)
def test_a_first_host_that_swallows_the_connect_does_not_hide_the_second(pg_cluster,
                                                                         monitor_of):
    """host=a,b with ``a`` a blackhole (accepts, never answers): each host has its own
    connect deadline, so the probe reaches ``b`` and the database is up."""
    import psycopg2.extensions

    from supervisor.testing import FaultProxy
    with FaultProxy(pg_cluster.port) as silent:
        silent.blackhole()
        params = psycopg2.extensions.parse_dsn(pg_cluster.dsn_for("postgres", tcp=True))
        params.update(host="127.0.0.1,127.0.0.1",
                      port="%d,%d" % (silent.port, pg_cluster.port))
        monitor = monitor_of(params, probe_interval=0.2, probe_timeout=1.0)
        wait_for(lambda: monitor.reports, 15, message="no first report")
        assert monitor.reports[0].up, monitor.reports[0]
        silent.heal()
