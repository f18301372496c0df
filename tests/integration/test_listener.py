"""PostgresNotificationListener against a real server: delivery, order, catch_up,
reconnects, half-open connections, live channel changes, back-pressure."""
import time

import psycopg2
import pytest

from instances.backoff import Backoff
from instances.listeners import PostgresNotificationListener
from instances.queues import MemoryQueue
from supervisor.testing import FaultProxy, wait_for

pytestmark = pytest.mark.usefixtures("hub_heartbeat")


def _notify_many(dsn, items):
    """Commit one NOTIFY per (channel, payload) in a single transaction."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for channel, payload in items:
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


def _drain(queue, count, timeout=20.0):
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        got.append(queue.get(timeout=max(0.01, deadline - time.monotonic())))
    return got


def _fast_backoff():
    return Backoff(initial=0.05, max_delay=0.2, jitter=0.0)


@pytest.fixture
def listener_factory(request):
    made = []

    def make(dsn, channels, queue=None, **kwargs):
        listener = PostgresNotificationListener(
            dsn, channels, queue or MemoryQueue(100000), name="test-listener",
            backoff=kwargs.pop("backoff", _fast_backoff()), **kwargs)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.stop(5)


def _wait_listening(listener):
    wait_for(lambda: listener.connected, 10, message="listener never connected")


@pytest.mark.timeout(60)
def test_delivers_10000_notifications_over_3_channels_in_order(pg_dsn, listener_factory):
    queue = MemoryQueue(100000)
    listener = listener_factory(pg_dsn, ["a", "b", "c"], queue).start()
    _wait_listening(listener)
    assert queue.get(timeout=5).kind == "catch_up"
    sent = [("abc"[i % 3], str(i)) for i in range(10000)]
    for start in range(0, len(sent), 2000):
        _notify_many(pg_dsn, sent[start:start + 2000])
    got = _drain(queue, len(sent))
    assert [(n.channel, n.payload) for n in got] == sent
    assert all(n.kind == "notify" and n.pid > 0 for n in got)
    assert listener.received == 10000


@pytest.mark.timeout(30)
def test_hostile_channel_name_is_just_a_channel(pg_dsn, listener_factory):
    hostile = 'a"; DROP TABLE x; --'
    queue = MemoryQueue()
    listener = listener_factory(pg_dsn, [hostile], queue).start()
    _wait_listening(listener)
    queue.get(timeout=5)  # catch_up
    _notify_many(pg_dsn, [(hostile, "payload")])
    note = queue.get(timeout=5)
    assert (note.channel, note.payload) == (hostile, "payload")


@pytest.mark.timeout(60)
def test_terminated_backend_reconnects_with_catch_up(pg_cluster, pg_database,
                                                     listener_factory):
    lost = []
    queue = MemoryQueue()
    listener = listener_factory(pg_database.dsn, ["events"], queue,
                                on_connection_lost=lambda *a: lost.append(a[1])).start()
    _wait_listening(listener)
    assert queue.get(timeout=5).kind == "catch_up"
    assert pg_cluster.terminate_backends(application_name="test-listener") == 1
    # The next silence ping (or the read) notices; a catch_up follows the re-LISTEN.
    assert queue.get(timeout=15).kind == "catch_up"
    assert lost and lost[0].kind == "connection"
    assert listener.reconnects == 1
    _notify_many(pg_database.dsn, [("events", "after")])
    assert queue.get(timeout=5).payload == "after"


@pytest.mark.timeout(60)
def test_blackholed_connection_is_detected_and_recovered(pg_cluster, pg_database,
                                                         listener_factory):
    proxy = FaultProxy(pg_cluster.port).start()
    try:
        dsn = proxy.dsn_for(pg_cluster, pg_database.name)
        queue = MemoryQueue()
        listener = listener_factory(dsn, ["events"], queue)
        listener.ping_interval, listener.ping_timeout = 0.5, 1.0
        listener.start()
        _wait_listening(listener)
        assert queue.get(timeout=5).kind == "catch_up"
        proxy.blackhole()
        started = time.monotonic()
        wait_for(lambda: not listener.connected, 10, message="half-open never detected")
        detected_after = time.monotonic() - started
        assert detected_after < 5.0
        proxy.heal()
        assert queue.get(timeout=15).kind == "catch_up"
        _notify_many(pg_database.dsn, [("events", "healed")])
        assert queue.get(timeout=5).payload == "healed"
    finally:
        proxy.stop()


@pytest.mark.timeout(90)
def test_server_stop_and_start_recovers(pg_private_cluster, listener_factory):
    queue = MemoryQueue()
    listener = listener_factory(pg_private_cluster.dsn, ["events"], queue).start()
    _wait_listening(listener)
    queue.get(timeout=5)
    pg_private_cluster.stop(mode="fast")
    wait_for(lambda: not listener.connected, 10, message="stop never noticed")
    assert listener.is_alive()
    pg_private_cluster.start()
    assert queue.get(timeout=20).kind == "catch_up"
    _notify_many(pg_private_cluster.dsn, [("events", "back")])
    assert queue.get(timeout=5).payload == "back"


@pytest.mark.timeout(30)
def test_channels_change_live_without_losing_kept_channel(pg_dsn, listener_factory):
    queue = MemoryQueue()
    listener = listener_factory(pg_dsn, ["keep", "drop"], queue).start()
    _wait_listening(listener)
    queue.get(timeout=5)
    listener.set_channels(["keep", "new"])
    wait_for(lambda: listener._listening == ("keep", "new"), 5)
    _notify_many(pg_dsn, [("drop", "x"), ("keep", "1"), ("new", "2")])
    got = _drain(queue, 3)
    # The channel added gets a catch_up (what was sent on it before is gone), then live.
    assert [(n.kind, n.channel, n.payload) for n in got] == [
        ("catch_up", None, ""), ("notify", "keep", "1"), ("notify", "new", "2")]
    assert queue.qsize() == 0
    assert listener.reconnects == 0 and listener.catch_ups == 2


@pytest.mark.timeout(30)
def test_full_queue_blocks_the_listener_and_drops_nothing(pg_dsn, listener_factory):
    queue = MemoryQueue(10)
    listener = listener_factory(pg_dsn, ["events"], queue)
    listener.put_beat = 0.05
    listener.start()
    _wait_listening(listener)
    _notify_many(pg_dsn, [("events", str(i)) for i in range(200)])
    wait_for(lambda: queue.full(), 5)
    beat = listener.heartbeat
    # Blocked in put, the listener beats its heartbeat (not hung) and drops nothing.
    wait_for(lambda: listener.heartbeat != beat, 5)
    assert queue.qsize() == 10
    got = _drain(queue, 201)
    assert got[0].kind == "catch_up"
    assert [n.payload for n in got[1:]] == [str(i) for i in range(200)]
    assert listener.is_alive()


@pytest.mark.timeout(30)
def test_stop_interrupts_the_wait_promptly(pg_dsn, listener_factory):
    listener = listener_factory(pg_dsn, ["events"])
    listener.ping_interval = 30.0  # left alone, the wait would last 30 s
    listener.start()
    _wait_listening(listener)
    started = time.monotonic()
    assert listener.stop(10) is True
    assert time.monotonic() - started < 5.0  # interrupted; margin for a loaded machine
    assert not listener.is_alive() and listener.exit == "normal"
