"""Status fields the status page shows: ``budget_left`` (automatic restarts allowed now) and
``spool_errors`` (messages in a spool's errors/)."""
import pytest

from instances import InstanceSpec
from instances.connectors import PostgresConnector
from supervisor import Supervisor
from supervisor.testing import wait_for

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def supervisor(registry, pg_dsn):
    sup = Supervisor(registry, pg_dsn, interval=3600, restart_max_rate="2/h",
                     probe_interval=0.2, set_as_current=False)
    sup.start()
    yield sup
    sup.stop(timeout=5)


def wait_running(sup, name):
    wait_for(lambda: sup.status().get(name, {}).get("state") == "running", 20, 0.02,
             "%s running" % name)


def test_budget_left_counts_down_with_automatic_restarts_and_an_operator_restart_refills_it(
        registry, supervisor):
    registry.add(InstanceSpec(name="river", channels=["river_ch"], handler="tests.handlers:noop"))
    registry.add(InstanceSpec(name="own", channels=["own_ch"], handler="tests.handlers:noop",
                              restart_max_rate="5/h"))
    wait_running(supervisor, "river")
    wait_running(supervisor, "own")
    assert supervisor.status()["river"]["budget_left"] == 2
    assert supervisor.status()["own"]["budget_left"] == 5  # the spec's own rate
    for restarts, left in ((1, 1), (2, 0)):
        supervisor.instance("river").kill()
        wait_for(lambda n=restarts: supervisor.status()["river"]["restarts"] == n, 20, 0.02,
                 "river restarted")
        assert supervisor.status()["river"]["budget_left"] == left
    assert supervisor.status()["own"]["budget_left"] == 5
    supervisor.restart(["river"]).get(timeout=10)
    assert supervisor.status()["river"]["budget_left"] == 2


def test_spool_errors_counts_the_messages_set_aside(registry, supervisor, pg_dsn, tmp_path):
    registry.add(InstanceSpec(name="spooled", channels=["spooled_ch"],
                              handler="tests.handlers:fail_on_bad",
                              queue={"spool": str(tmp_path / "spool")}))
    registry.add(InstanceSpec(name="memory", channels=["spooled_ch"],
                              handler="tests.handlers:noop"))
    wait_running(supervisor, "spooled")
    wait_running(supervisor, "memory")
    assert supervisor.status()["spooled"]["spool_errors"] == 0
    assert supervisor.status()["memory"]["spool_errors"] is None  # no spool
    connector = PostgresConnector(pg_dsn)
    try:
        for payload in ("bad", "good", "bad"):
            connector.execute("SELECT pg_notify('spooled_ch', %s)", (payload,))
    finally:
        connector.disconnect()
    wait_for(lambda: supervisor.status()["spooled"]["spool_errors"] == 2, 20, 0.05,
             "two messages in errors/")
    assert supervisor.status()["memory"]["spool_errors"] is None
