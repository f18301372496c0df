"""Per-key order against a real Postgres: many producers NOTIFY runs of one key at a time,
an instance with four processors and ``order_key`` handles them: per key, every
notification once, in the order each producer sent them, never two at the same time, and
different keys side by side. The same load without ``order_key`` shows what it prevents.
Also through a restart of the instance on its spool in the middle of the load."""
import random

import gevent
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from supervisor.testing import wait_for

pytestmark = [pytest.mark.usefixtures("hub_heartbeat"), pytest.mark.timeout(120)]

HERE = "tests.integration.test_ordering"
CHANNEL = "orders"
PRODUCERS, KEYS_EACH, TRANSACTIONS, RUN = 10, 10, 20, 5

# -- the handler and key function of this module (tests.integration.test_ordering:...) ----
state = {}
_pause = random.Random(5)


def reset():
    state.update(running={}, seen={}, overlaps=[], widest=0, count=0)


def key(notification):
    """The key of ``"<key>:<seq>"`` payloads (an ``order_key`` path)."""
    return notification.payload.partition(":")[0]


def record(notification):
    """Yield for a random moment (up to 2 ms: handlers of one key would finish out of
    order if they overlapped), noting same-key overlaps and the order."""
    if notification.kind != "notify":
        return
    k, _, seq = notification.payload.partition(":")
    running = state["running"]
    if running.get(k):
        state["overlaps"].append(notification.payload)
    running[k] = running.get(k, 0) + 1
    state["widest"] = max(state["widest"], sum(1 for v in running.values() if v))
    try:
        gevent.sleep(_pause.random() * 0.002)
    finally:
        running[k] -= 1
    state["seen"].setdefault(k, []).append(int(seq))
    state["count"] += 1


# -- the load --------------------------------------------------------------------------
def produce(dsn, producer, rng):
    """TRANSACTIONS transactions of RUN NOTIFYs for one random key of this producer's
    own, the key's sequence numbers ascending: a run arrives together, in order."""
    conn = psycopg2.connect(dsn)
    sequence = {}
    try:
        for _ in range(TRANSACTIONS):
            k = "p%dk%d" % (producer, rng.randrange(KEYS_EACH))
            with conn, conn.cursor() as cursor:
                for _ in range(RUN):
                    sequence[k] = sequence.get(k, -1) + 1
                    cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, "%s:%d" % (
                        k, sequence[k])))
            gevent.sleep(rng.random() * 0.005)
    finally:
        conn.close()
    return sequence


def load(dsn, seed=1):
    """All producers at once; returns {key: last sequence number sent}."""
    producers = [gevent.spawn(produce, dsn, p, random.Random(seed * 100 + p))
                 for p in range(PRODUCERS)]
    gevent.joinall(producers, raise_error=True)
    sent = {}
    for producer in producers:
        sent.update(producer.value)
    return sent


def spec(**fields):
    return InstanceSpec.from_dict(dict({
        "name": "ordered", "channels": [CHANNEL], "handler": HERE + ":record",
        "min_concurrency": 4, "max_concurrency": 4}, **fields))


@pytest.fixture
def started(pg_dsn):
    reset()
    made = []

    def start(spec, queue=None):
        instance = Instance(spec, pg_dsn, queue=queue).start()
        made.append(instance)
        wait_for(lambda: instance.connected, 10, message="instance never connected")
        return instance

    yield start
    for instance in made:
        instance.stop(5)


def assert_every_key_complete_and_in_order(sent):
    seen = state["seen"]
    assert set(seen) == set(sent)
    for k, last in sent.items():
        assert seen[k] == list(range(last + 1)), "key %s out of order or incomplete" % k


def test_same_key_never_overlaps_and_keeps_its_order_under_many_producers(pg_dsn, started):
    started(spec(order_key=HERE + ":key"))
    sent = load(pg_dsn)
    total = sum(last + 1 for last in sent.values())
    wait_for(lambda: state["count"] >= total, 60, message="every notification handled")
    assert state["overlaps"] == []
    assert_every_key_complete_and_in_order(sent)
    assert state["widest"] > 1  # keys did run side by side


def test_without_order_key_the_same_load_overlaps_and_reorders_keys(pg_dsn, started):
    """The control: the checks above catch what a plain pool of four does."""
    started(spec())
    sent = load(pg_dsn)
    total = sum(last + 1 for last in sent.values())
    wait_for(lambda: state["count"] >= total, 60, message="every notification handled")
    reordered = [k for k, seqs in state["seen"].items() if seqs != sorted(seqs)]
    assert state["overlaps"] and reordered


def test_order_holds_across_a_restart_of_the_instance_on_its_spool(pg_dsn, started,
                                                                   tmp_path):
    """Stopped with a backlog on its spool and items held behind running keys, restarted
    on the same queue (as the supervisor restarts it): still every key in order, once."""
    ordered = spec(order_key=HERE + ":key", queue={"spool": str(tmp_path / "spool")},
                   min_concurrency=1)
    first = started(ordered)
    sent = load(pg_dsn, seed=2)
    total = sum(last + 1 for last in sent.values())
    wait_for(lambda: first.health()["received"] >= total and state["count"] >= 50, 30,
             message="everything spooled, the handling under way")
    assert first.stop(5)
    assert state["count"] < total  # a backlog was left for the restart
    second = started(ordered, queue=first.queue)
    wait_for(lambda: state["count"] >= total, 60, message="every notification handled")
    assert state["overlaps"] == []
    assert_every_key_complete_and_in_order(sent)
    # the last handled chunk is acknowledged after its handler returns: wait for the ack
    wait_for(lambda: second.queue.qsize() == 0, 10, message="the spool drained")
