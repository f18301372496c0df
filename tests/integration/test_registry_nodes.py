"""Two Supervisors on one Postgres registry: an edit through one reaches the other at once
(the NOTIFY of the edit, through the other's shared notifier, not the periodic verify),
the registry channel shares the instances' notifier, and a database outage keeps the last
desired state in force."""
import logging
import time

import pytest

from instances import InstanceSpec
from instances.registry import PostgresRegistry
from supervisor import Supervisor
from supervisor.testing import wait_for
from tests import handlers

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("hub_heartbeat")]

#: The issue's bound: an edit on one node reaches every node within this many seconds.
REACH = 1.0


def _spec(name="river", **fields):
    values = {"name": name, "channels": ["doc_changed"], "handler": "tests.handlers:record"}
    values.update(fields)
    return InstanceSpec.from_dict(values)


@pytest.fixture
def nodes(pg_dsn):
    """Two supervisors, each with its own PostgresRegistry on the same schema. The
    periodic verify is an hour away: only the NOTIFY can bring an edit in time."""
    handlers.reset()
    made = []
    for _ in range(2):
        registry = PostgresRegistry(pg_dsn)
        made.append(Supervisor(registry, pg_dsn, interval=3600, probe_interval=0.2,
                               wait_after_db_revived=0.5, set_as_current=False))
    for sup in made:
        sup.start()
    yield made
    for sup in made:
        sup.stop(timeout=5)
        sup.registry.close()


def _state(sup, name):
    return sup.status().get(name, {}).get("state")


def _subscribed(sup):
    follower = sup._follower
    return follower is not None and follower.subscription.connected


def test_an_edit_through_one_node_reaches_the_other_within_a_second(nodes):
    one, two = nodes
    wait_for(lambda: _subscribed(one) and _subscribed(two), 10, message="followers LISTEN")
    for edit, check in [
            (lambda: one.registry.add(_spec()), lambda: "river" in two.registry),
            (lambda: one.registry.update("river", max_concurrency=3),
             lambda: two.registry.get("river").max_concurrency == 3),
            (lambda: two.registry.disable("river"),
             lambda: one.registry.get("river").enabled is False),
            (lambda: two.registry.remove("river"), lambda: "river" not in one.registry)]:
        edit()
        started = time.monotonic()
        wait_for(check, REACH, interval=0.002, message="the edit reached the other node")
        logging.getLogger(__name__).info("edit reached the other node in %.1f ms",
                                         (time.monotonic() - started) * 1000)


def test_the_other_node_runs_what_one_node_added_and_stops_what_it_disabled(nodes):
    one, two = nodes
    one.registry.add(_spec())
    wait_for(lambda: _state(two, "river") == "running", 15, message="river runs on two")
    one.registry.disable("river")
    wait_for(lambda: _state(two, "river") == "disabled", 15, message="river disabled on two")


def test_the_registry_channel_rides_on_the_nodes_shared_notifier(nodes):
    one, _ = nodes
    one.registry.add(_spec())
    wait_for(lambda: _state(one, "river") == "running", 15)
    notifiers = one.notifiers.status()
    assert len(notifiers) == 1, notifiers  # the instance and the registry: one connection
    assert sorted(notifiers[0]["channels"]) == ["doc_changed", "pgvisor_registry"]


def test_an_edit_missed_while_cut_off_is_read_at_the_reconnect(nodes, pg_database):
    one, two = nodes
    wait_for(lambda: _subscribed(two), 10)
    pg_database.cluster.terminate_backends(application_name="pgvisor")  # two's notifier too
    one.registry.add(_spec("missed"))  # its NOTIFY may find two not LISTENing
    wait_for(lambda: "missed" in two.registry, 15,
             message="the catch_up after the reconnect reloads the registry")


@pytest.mark.timeout(90)
def test_a_database_outage_keeps_the_last_desired_state_in_force(pg_private_cluster):
    handlers.reset()
    dsn = pg_private_cluster.dsn
    registry = PostgresRegistry(dsn)
    registry.add(_spec())
    sup = Supervisor(registry, dsn, interval=0.2, probe_interval=0.2,
                     wait_after_db_revived=0.5, set_as_current=False)
    sup.start()
    try:
        wait_for(lambda: _state(sup, "river") == "running", 15)
        pg_private_cluster.stop()
        wait_for(lambda: sup.registry_status()["last_error"] is not None, 15,
                 message="a reload failed during the outage")
        status = sup.registry_status()
        assert (status["backend"], status["schema"], status["instances"]) == (
            "postgres", "pgvisor", 1)
        assert "unavailable" in status["last_error"]
        assert registry.names() == ["river"] and "river" in sup.status()
        reloads = sup._follower.reloads
        wait_for(lambda: sup._follower.reloads > reloads + 2, 15)  # polling goes on
        assert sup.status()["river"]["state"] in ("waiting", "running", "starting")
        pg_private_cluster.start()
        wait_for(lambda: sup.registry_status()["last_error"] is None, 20)
        wait_for(lambda: _state(sup, "river") == "running", 30)
    finally:
        sup.stop(timeout=5)
        registry.close()
