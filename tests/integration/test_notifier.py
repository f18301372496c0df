"""The shared notifier against a real Postgres: one LISTEN connection for many instances,
fan-out in order, overflow into one coalesced catch_up, catch_up after a channel added
live (for that instance only), reconnect and death of the notifier without charging the
instances, and the self-NOTIFY probe noticing a proxy that swallows notifications."""
import logging

import gevent
import gevent.event
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from instances.notifier import Notifier, Notifiers
from supervisor import Supervisor
from supervisor.testing import FaultProxy, PostgresCluster, wait_for
from tests import handlers


def _spec(name, channels=None, handler=None, **fields):
    values = {"name": name, "channels": channels or ["ch_" + name],
              "handler": handler or "tests.handlers:into_" + name}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _notify(dsn, *items):
    """One transaction of ``(channel, payload)`` NOTIFYs."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for channel, payload in items:
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


def _seen(key, kind=None):
    return [n for n in handlers.seen_by.get(key, []) if kind is None or n.kind == kind]


def _payloads(key):
    return [n.payload for n in _seen(key, "notify")]


def _catch_ups(key):
    return len(_seen(key, "catch_up"))


def _backends(dsn):
    """Client backends of the database of ``dsn``, but this one."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend' AND pid <> pg_backend_pid()")
            return cursor.fetchone()[0]
    finally:
        conn.close()


@pytest.fixture
def node():
    """``start(spec)`` -> a connected Instance on one shared Notifiers; all stopped after."""
    handlers.reset()
    notifiers, made = Notifiers(), []

    def start(spec, dsn, **kwargs):
        instance = Instance(spec, dsn, notifiers=notifiers, **kwargs).start()
        made.append(instance)
        wait_for(lambda: instance.connected, 10, message="%s never connected" % spec.name)
        return instance

    start.notifiers = notifiers
    yield start
    if handlers.blocking["event"] is not None:
        handlers.blocking["event"].set()
    for instance in made:
        instance.stop(5)
    notifiers.stop(5)


@pytest.fixture
def supervised(registry, pg_dsn):
    sups = []

    def make(**options):
        sup = Supervisor(registry, pg_dsn, interval=3600, probe_interval=0.2,
                         set_as_current=False, **options)
        sups.append(sup)
        return sup.start()

    yield make
    for sup in sups:
        sup.stop(timeout=5)


def _wait_running(sup, names, timeout=20):
    wait_for(lambda: all(sup.status().get(n, {}).get("state") == "running" for n in names),
             timeout, message="not all running: %r" % {
                 n: sup.status().get(n, {}).get("state") for n in names})


# -- one connection, fan-out ----------------------------------------------------------------
@pytest.mark.timeout(30)
def test_instances_of_one_database_share_one_connection_and_each_gets_its_channels(
        pg_dsn, node, hub_heartbeat):
    a = node(_spec("a", ["x", "shared"]), pg_dsn)
    b = node(_spec("b", ["y", "shared"]), pg_dsn)
    assert len(node.notifiers.notifiers()) == 1
    assert _backends(pg_dsn) == 1
    _notify(pg_dsn, ("x", "1"), ("shared", "2"), ("y", "3"), ("shared", "4"))
    wait_for(lambda: len(_payloads("a")) == 3 and len(_payloads("b")) == 3, 5)
    assert _payloads("a") == ["1", "2", "4"] and _payloads("b") == ["2", "3", "4"]
    assert [n.kind for n in _seen("a")][0] == "catch_up" and _catch_ups("a") == 1
    assert a.health()["subscription"]["notifier"] == b.health()["subscription"]["notifier"]


@pytest.mark.timeout(30)
def test_an_own_connection_instance_keeps_a_listener_of_its_own(pg_dsn, node,
                                                                hub_heartbeat):
    node(_spec("a", ["x"]), pg_dsn)
    own = node(_spec("b", ["x"], connection="own"), pg_dsn)
    assert own.health()["subscription"]["connection"] == "own"
    assert _backends(pg_dsn) == 2
    _notify(pg_dsn, ("x", "1"))
    wait_for(lambda: _payloads("a") == ["1"] and _payloads("b") == ["1"], 5)


@pytest.fixture
def small_cluster():
    """A private cluster with max_connections = 50 (started before the hub heartbeat)."""
    cluster = PostgresCluster("pgvisor-maxconn", settings={"max_connections": 50})
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@pytest.mark.timeout(110)
def test_200_instances_run_and_deliver_against_max_connections_50(registry, small_cluster,
                                                                 hub_heartbeat):
    cluster = small_cluster
    sup = None
    try:
        handlers.reset()
        names = ["i%03d" % i for i in range(200)]
        for name in names:
            registry.add(_spec(name))
        sup = Supervisor(registry, cluster.dsn, interval=3600, set_as_current=False).start()
        wait_for(lambda: all(sup.instance(n) is not None and sup.instance(n).connected
                             for n in names), 60, message="not all connected")
        assert _backends(cluster.dsn) <= 2  # the notifier and the database monitor
        _notify(cluster.dsn, *[("ch_" + name, name) for name in names])
        wait_for(lambda: all(_payloads(n) == [n] for n in names), 30,
                 message="not delivered to every instance")
        assert all(_catch_ups(n) == 1 for n in names)
        assert sup.counters["restarts"] == 0 and sup.counters["deaths"] == 0
    finally:
        if sup is not None:
            sup.stop(timeout=10)


# -- overflow --------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_full_queue_drops_for_that_instance_only_then_one_catch_up_after_room(
        pg_dsn, node, caplog, hub_heartbeat):
    handlers.reset()
    gate = handlers.blocking["event"] = gevent.event.Event()
    slow = node(_spec("slow", ["burst"], handler="tests.handlers:block", queue_size=5),
                pg_dsn)
    node(_spec("fast", ["burst"]), pg_dsn)
    wait_for(lambda: len(handlers.seen) == 1, 5, message="slow never got its catch_up")
    sent = [str(i) for i in range(50)]
    _notify(pg_dsn, *[("burst", p) for p in sent])
    wait_for(lambda: _payloads("fast") == sent, 10, message="the fast one missed some")
    wait_for(lambda: slow.health()["subscription"]["dropped"] == 45, 5)
    assert slow.queue.qsize() == 5
    with caplog.at_level(logging.WARNING, logger="instances.notifier"):
        gate.set()  # room returns
        wait_for(lambda: len(handlers.seen) == 7, 5, message="no catch_up after the room")
        _notify(pg_dsn, ("burst", "after"))
        wait_for(lambda: len(handlers.seen) == 8, 5)
    assert [(n.kind, n.payload) for n in handlers.seen] == (
        [("catch_up", "")] + [("notify", p) for p in sent[:5]] + [("catch_up", ""),
                                                                  ("notify", "after")])
    health = slow.health()
    assert health["subscription"]["overflows"] == 1 and health["catch_ups"] == 2
    episodes = [r for r in caplog.records if getattr(r, "action", "") == "subscription.overflow"]
    assert len(episodes) == 1 and episodes[0].dropped == 45
    assert _catch_ups("fast") == 1 and _payloads("fast") == sent + ["after"]


# -- catch_up for whom it concerns -----------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_channel_added_live_gets_a_catch_up_for_that_instance_only(pg_dsn, node,
                                                                     hub_heartbeat):
    a = node(_spec("a", ["x"]), pg_dsn)
    node(_spec("b", ["x"]), pg_dsn)
    wait_for(lambda: _catch_ups("a") == 1 and _catch_ups("b") == 1, 5)
    a.apply(a.spec.replace(channels=("x", "z")))
    wait_for(lambda: _catch_ups("a") == 2, 5, message="no catch_up for the channel added")
    _notify(pg_dsn, ("z", "1"), ("x", "2"))
    wait_for(lambda: _payloads("a") == ["1", "2"] and _payloads("b") == ["2"], 5)
    assert _catch_ups("b") == 1
    assert [n.kind for n in _seen("a")] == ["catch_up", "catch_up", "notify", "notify"]
    a.apply(a.spec.replace(channels=("z",)))  # a channel removed: no catch_up
    wait_for(lambda: a.listener.active == ("z",), 5)
    _notify(pg_dsn, ("x", "3"), ("z", "4"))
    wait_for(lambda: _payloads("a")[-1] == "4" and _payloads("b")[-1] == "3", 5)
    assert _payloads("a") == ["1", "2", "4"] and _catch_ups("a") == 2


@pytest.mark.timeout(30)
def test_catch_up_interval_puts_a_periodic_catch_up(pg_dsn, node, hub_heartbeat):
    node(_spec("a", catch_up_interval=0.2), pg_dsn)
    wait_for(lambda: _catch_ups("a") >= 3, 5, message="no periodic catch_up")


# -- supervision ---------------------------------------------------------------------------
def _notifier_pid(dsn):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT pid FROM pg_stat_activity WHERE application_name = "
                           "'pgvisor-notifier'")
            return [row[0] for row in cursor.fetchall()]
    finally:
        conn.close()


def _terminate(dsn, pids):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for pid in pids:
                cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
    finally:
        conn.close()


def _charged(sup, names):
    return (sup.counters["restarts"], sup.counters["deaths"],
            [sup.budget.remaining(n) for n in names])


@pytest.mark.timeout(40)
def test_the_notifier_backend_terminated_every_subscriber_one_catch_up_nothing_charged(
        registry, supervised, pg_dsn, hub_heartbeat):
    handlers.reset()
    names = ["a", "b", "c"]
    for name in names:
        registry.add(_spec(name))
    sup = supervised()
    _wait_running(sup, names)
    wait_for(lambda: all(_catch_ups(n) == 1 for n in names), 5)
    before = _charged(sup, names)
    pids = _notifier_pid(pg_dsn)
    assert len(pids) == 1
    _terminate(pg_dsn, pids)
    wait_for(lambda: all(_catch_ups(n) == 2 for n in names), 15,
             message="not every subscriber got its catch_up after the reconnect")
    _wait_running(sup, names)
    _notify(pg_dsn, *[("ch_" + n, "after") for n in names])
    wait_for(lambda: all(_payloads(n) == ["after"] for n in names), 5)
    assert _charged(sup, names) == before
    assert all(sup.status()[n]["reconnects"] == 1 for n in names)
    assert sup.notifier_status()[0]["reconnects"] == 1
    assert all(_catch_ups(n) == 2 for n in names)


@pytest.mark.timeout(40)
def test_a_killed_notifier_is_started_again_and_nothing_is_charged(
        registry, supervised, pg_dsn, hub_heartbeat):
    handlers.reset()
    names = ["a", "b"]
    for name in names:
        registry.add(_spec(name))
    sup = supervised()
    _wait_running(sup, names)
    before = _charged(sup, names)
    notifier = sup.notifiers.notifiers()[0]
    notifier.kill()
    wait_for(lambda: all(_catch_ups(n) == 2 for n in names), 10,
             message="the notifier was not started again")
    _wait_running(sup, names)
    assert sup.notifiers.notifiers() == [notifier] and notifier.is_alive()
    assert _charged(sup, names) == before


@pytest.mark.timeout(40)
def test_killing_one_instance_leaves_the_others_delivering(registry, supervised, pg_dsn,
                                                          hub_heartbeat):
    handlers.reset()
    names = ["a", "b", "c"]
    for name in names:
        registry.add(_spec(name, ["same"]))
    sup = supervised()
    _wait_running(sup, names)
    victim = sup.instance("b")
    victim.kill()
    _notify(pg_dsn, ("same", "1"))
    wait_for(lambda: _payloads("a") == ["1"] and _payloads("c") == ["1"], 5)
    wait_for(lambda: sup.instance("b") is not victim, 10, message="b not restarted")
    _wait_running(sup, names)
    wait_for(lambda: _catch_ups("b") == 2, 5, message="the restart did not re-subscribe")
    _notify(pg_dsn, ("same", "2"))
    wait_for(lambda: all(_payloads(n)[-1:] == ["2"] for n in names), 5)
    assert _payloads("a") == ["1", "2"] and _catch_ups("a") == 1
    assert len(sup.notifiers.notifiers()) == 1


@pytest.mark.timeout(40)
def test_status_shows_the_notifier_and_each_subscription(registry, supervised, pg_dsn,
                                                         hub_heartbeat):
    registry.add(_spec("a", ["x", "y"]))
    sup = supervised()
    _wait_running(sup, ["a"])
    wait_for(lambda: sup.notifier_status()[0]["channels"] == ["x", "y"], 5)
    notifier = sup.database_status()["notifiers"][0]
    assert notifier["connected"] and notifier["subscribers"] == 1
    assert "password" not in notifier["dsn"] or "***" in notifier["dsn"]
    assert sup.status()["a"]["subscription"]["connection"] == "shared"
    assert sup.status()["a"]["subscription"]["channels"] == ["x", "y"]


# -- liveness ------------------------------------------------------------------------------
@pytest.fixture
def fast_probe(monkeypatch):
    monkeypatch.setattr(Notifier, "probe_interval", 0.3)
    monkeypatch.setattr(Notifier, "probe_timeout", 0.7)


@pytest.mark.timeout(40)
def test_a_proxy_swallowing_notifications_is_found_by_the_self_notify_probe(
        pg_cluster, pg_database, node, fast_probe, hub_heartbeat):
    with FaultProxy(pg_cluster.port) as proxy:
        dsn = proxy.dsn_for(pg_cluster, pg_database.name)
        instance = node(_spec("a"), dsn)
        notifier = node.notifiers.notifiers()[0]
        wait_for(lambda: notifier.probes >= 2 and notifier.probe_rtt is not None, 5)
        assert notifier.probe_failures == 0 and notifier.queue_usage is not None
        proxy.swallow_notifications()
        wait_for(lambda: notifier.probe_failures >= 1, 0.3 + 0.7 + 3,
                 message="the swallowed probe went unnoticed")
        assert proxy.swallowed >= 1
        proxy.heal()
        wait_for(lambda: instance.connected and _catch_ups("a") >= 2, 10,
                 message="no reconnect with a catch_up after the probe failed")
        _notify(pg_database.dsn, ("ch_a", "after"))
        wait_for(lambda: _payloads("a") == ["after"], 5)


@pytest.mark.timeout(60)
def test_probes_amid_a_stream_on_one_channel_never_reach_the_handler(
        pg_dsn, node, fast_probe, hub_heartbeat):
    """A one-channel notifier reads no channel of a read while no probe is out: the probes
    sent in the middle of a stream still come back to the notifier, and only the stream's
    notifications, every one in order, reach the handler."""
    node(_spec("a"), pg_dsn)
    notifier = node.notifiers.notifiers()[0]
    probes = notifier.probes
    sent = 0
    while notifier.probes < probes + 4:  # each 0.3 s: about a second and a half of stream
        _notify(pg_dsn, *[("ch_a", str(sent + i)) for i in range(50)])
        sent += 50  # each transaction is a connection's round trips: the stream is spread
    wait_for(lambda: len(_payloads("a")) >= sent, 20, message="the stream was not delivered")
    assert _payloads("a") == [str(i) for i in range(sent)]
    assert notifier.probe_failures == 0 and notifier.probe_rtt is not None
    wait_for(lambda: notifier._probes_out == 0, 5, message="a probe never came back")
    assert _catch_ups("a") == 1 and notifier.reconnects == 0
