"""The spool's bound against a real Postgres, processors stalled: ``incoming/`` stops
growing at ``max_messages``, the shared notifier counts what it drops (an overflow, shown in
the instance's status) and owes ONE catch_up once there is room; nothing already in the
spool is lost. An own-connection listener waits at the bound instead and drops nothing."""
import os

import gevent
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from instances.spool import names
from supervisor.testing import wait_for
from tests import handlers

BOUND = 100
BATCH = 20  # notifications per transaction: the bound holds exactly 5 batch files


def _notify(dsn, payloads):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for payload in payloads:
                cursor.execute("SELECT pg_notify('doc_changed', %s)", (payload,))
    finally:
        conn.close()


def _waiting_messages(spool):
    """Messages in incoming/, as the file names tell."""
    return sum(names.message_count(n) for n in os.listdir(spool / "incoming"))


@pytest.fixture
def stalled(tmp_path, pg_dsn):
    """An instance on a spool bounded at BOUND whose one processor blocks on its first
    item (the catch_up) until the test sets handlers.blocking["event"]."""
    handlers.reset()
    handlers.blocking["event"] = gevent.event.Event()
    made = []

    def start(connection):
        spec = InstanceSpec.from_dict({
            "name": "river", "channels": ["doc_changed"], "handler": "tests.handlers:block",
            "connection": connection,
            "queue": {"spool": str(tmp_path / "spool"), "max_messages": BOUND}})
        instance = Instance(spec, pg_dsn).start()
        made.append(instance)
        wait_for(lambda: instance.connected, 10, message="the instance listens")
        wait_for(lambda: [n.kind for n in handlers.seen] == ["catch_up"], 10,
                 message="the processor holds the first catch_up")
        return instance
    yield start
    handlers.blocking["event"].set()
    for instance in made:
        instance.stop(5)


def _send(dsn, instance, batches, first=0):
    """``batches`` transactions of BATCH payloads, each one read before the next is sent
    (so every read is one transaction: one batch file)."""
    sent, before = [], instance.listener.received
    for k in range(batches):
        payloads = ["n%03d" % (first + k * BATCH + i) for i in range(BATCH)]
        _notify(dsn, payloads)
        sent += payloads
        expected = before + (k + 1) * BATCH
        wait_for(lambda e=expected: instance.listener.received >= e, 10,
                 message="the notifier read transaction %d" % k)
    return sent


@pytest.mark.timeout(60)
def test_a_full_spool_overflows_once_and_owes_one_catch_up(tmp_path, pg_dsn, stalled):
    spool = tmp_path / "spool"
    instance = stalled("shared")
    sent = _send(pg_dsn, instance, 15)  # 300 notifications, room for 100
    assert _waiting_messages(spool) == BOUND  # it stopped growing at the bound
    health = instance.health()
    assert (health["dropped"], health["overflows"]) == (200, 1)
    assert health["subscription"]["overflowing"] is True
    assert health["backlog"] == BOUND
    handlers.blocking["event"].set()  # the processors run again: room
    wait_for(lambda: len(handlers.seen) == 1 + BOUND + 1, 20,
             message="the spooled messages and the owed catch_up are handled")
    kinds = [n.kind for n in handlers.seen]
    assert kinds == ["catch_up"] + ["notify"] * BOUND + ["catch_up"]
    assert [n.payload for n in handlers.seen[1:-1]] == sent[:BOUND]  # none lost
    wait_for(lambda: not instance.health()["subscription"]["overflowing"], 5,
             message="the episode ended")
    more = _send(pg_dsn, instance, 1, first=1000)  # live delivery again
    wait_for(lambda: [n.payload for n in handlers.seen[-BATCH:]] == more, 10,
             message="live notifications after the episode")
    health = instance.health()
    assert (health["dropped"], health["overflows"], health["catch_ups"]) == (200, 1, 2)


@pytest.mark.timeout(60)
def test_an_own_listener_waits_at_the_bound_and_drops_nothing(tmp_path, pg_dsn, stalled):
    spool = tmp_path / "spool"
    instance = stalled("own")
    _notify(pg_dsn, ["n%03d" % i for i in range(BOUND)])  # the bound, in one read
    wait_for(lambda: instance.listener.received == BOUND, 10, message="the first read")
    sent = ["n%03d" % i for i in range(BOUND)]
    for k in range(3):  # more than fits: the listener waits in its put
        payloads = ["m%03d" % (k * BATCH + i) for i in range(BATCH)]
        _notify(pg_dsn, payloads)
        sent += payloads
    for _ in range(3):  # the listener waits in its put (1 s each), beating meanwhile
        beat = instance.listener.heartbeat
        wait_for(lambda b=beat: instance.listener.heartbeat != b, 5,
                 message="the waiting listener beats its heartbeat")
        assert _waiting_messages(spool) == BOUND and instance.alive
    handlers.blocking["event"].set()
    wait_for(lambda: len(handlers.seen) == 1 + len(sent), 20, message="everything handled")
    assert [n.payload for n in handlers.seen[1:]] == sent
    assert instance.health()["dropped"] == 0
