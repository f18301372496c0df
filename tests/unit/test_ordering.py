"""Per-key order (``order_key``) in a ProcessorPool over a MemoryQueue and a FileQueue:
no two items of one key at once, each key's items in queue order, different keys in
parallel; through retries, autoscaling, stop (held items back to the queue's front, in
order) and kill."""
import random

import gevent
import gevent.event
import pytest

from instances.notification import Notification
from instances.ordering import CATCH_UP_KEY, KeyOrder, key_function
from instances.processors import ProcessorPool
from instances.queues import MemoryQueue
from instances.spool import FileQueue
from supervisor.testing import wait_for


class Recorder:
    """A handler that yields for a random moment and records, per key, the order it ran
    items in, the same-key overlaps it saw, and the most keys running at once."""

    def __init__(self, key=lambda n: n.channel, pause=0.002):
        self.key, self.pause = key, pause
        self.running = {}  # key -> items running now
        self.order = {}
        self.overlaps = []
        self.widest = 0
        self.count = 0

    def __call__(self, item):
        key = self.key(item)
        if self.running.get(key):
            self.overlaps.append((key, item))
        self.running[key] = self.running.get(key, 0) + 1
        self.widest = max(self.widest, sum(1 for v in self.running.values() if v))
        try:
            gevent.sleep(random.random() * self.pause)
        finally:
            self.running[key] -= 1
        self.order.setdefault(key, []).append(item.payload)
        self.count += 1


def in_order(seen):
    """True when the payloads (numbers) ``seen`` of one key came in ascending order."""
    numbers = [int(payload) for payload in seen]
    return numbers == sorted(numbers)


def notes(count, keys, seed=7):
    rng = random.Random(seed)
    return [Notification("k%d" % rng.randrange(keys), str(i)) for i in range(count)]


@pytest.fixture
def pools():
    created = []
    yield created
    for pool in created:
        pool.kill(block=True, timeout=5)


def run(pools, handler, items, queue=None, **kwargs):
    queue = queue if queue is not None else MemoryQueue(len(items) + 10)
    pool = ProcessorPool(queue, handler, **dict({"min_concurrency": 4, "max_concurrency": 4,
                                                 "name": "ordered"}, **kwargs))
    pools.append(pool.start())
    for item in items:
        queue.put(item)
    wait_for(lambda: handler.count >= len(items), 30, message="all items handled")
    return pool


@pytest.mark.timeout(60)
def test_same_key_never_overlaps_and_keeps_queue_order_while_keys_run_in_parallel(pools):
    handler = Recorder()
    run(pools, handler, notes(2000, 20), order_key="channel")
    assert handler.overlaps == []
    assert all(in_order(seen) for seen in handler.order.values())
    assert handler.widest > 1  # different keys did run side by side


@pytest.mark.timeout(60)
def test_without_order_key_the_same_workload_overlaps_keys(pools):
    """The control: the detector of the test above sees what order_key prevents."""
    handler = Recorder()
    run(pools, handler, notes(2000, 20))
    assert handler.overlaps


@pytest.mark.timeout(60)
def test_order_holds_while_the_pool_grows_and_shrinks(pools):
    ProcessorPool.idle_timeout, old = 0.05, ProcessorPool.idle_timeout
    try:
        handler = Recorder()
        queue = MemoryQueue(5000)
        pool = ProcessorPool(queue, handler, 1, 4, name="scaling", order_key="channel")
        pool.scale_interval = 0.01
        pools.append(pool.start())
        sizes = []
        for wave in range(3):
            for item in notes(500, 30, seed=wave):
                queue.put(Notification(item.channel, str(wave * 1000 + int(item.payload))))
            wait_for(lambda w=wave: sizes.append(pool.size) or handler.count >= 500 * (w + 1),
                     30)
            wait_for(lambda: pool.size == 1, 10, message="shrunk back to min")
        assert max(sizes) > 1  # it did grow
        assert handler.overlaps == []
        assert all(in_order(seen) for seen in handler.order.values())
    finally:
        ProcessorPool.idle_timeout = old


@pytest.mark.timeout(30)
def test_a_retried_item_keeps_its_key_until_it_is_done(pools):
    failed_once = set()
    seen = []

    def handler(item):
        if item.payload == "1" and "1" not in failed_once:
            failed_once.add("1")
            raise RuntimeError("transient")
        gevent.sleep(0.001)
        seen.append(item.payload)

    queue = MemoryQueue(100)
    pool = ProcessorPool(queue, handler, 4, 4, name="retry", order_key="channel")
    pools.append(pool.start())
    for i in range(6):
        queue.put(Notification("a", str(i)))
    wait_for(lambda: len(seen) == 6, 10)
    assert seen == ["0", "1", "2", "3", "4", "5"]
    assert pool.retried == 1 and queue.failed_count == 0


def _blocking(first_payload):
    gate = gevent.event.Event()
    seen = []

    def handler(item):
        seen.append(item.payload)
        if item.payload == first_payload:
            gate.wait()

    return handler, gate, seen


@pytest.mark.timeout(30)
def test_stop_gives_the_held_items_back_to_the_front_of_the_memory_queue_in_order(pools):
    handler, gate, seen = _blocking("a0")
    queue = MemoryQueue(100)
    pool = ProcessorPool(queue, handler, 2, 2, name="stop", order_key="channel")
    pools.append(pool.start())
    for item in ("a0", "a1", "a2", "b0"):
        queue.put(Notification(item[0], item))
    wait_for(lambda: pool.held == 2 and "b0" in seen, 10)
    stopper = gevent.spawn(pool.stop, 10)
    gate.set()
    assert stopper.get(timeout=10) is True
    queue.put(Notification("a", "a3"))
    assert [queue.get(False).payload for _ in range(queue.qsize())] == ["a1", "a2", "a3"]


@pytest.mark.timeout(30)
def test_a_restarted_pool_on_a_spool_runs_the_held_items_first_in_order(pools, tmp_path):
    handler, gate, seen = _blocking("a0")
    queue = FileQueue(str(tmp_path / "spool"))
    pool = ProcessorPool(queue, handler, 2, 2, name="spool", order_key="channel")
    pools.append(pool.start())
    queue.put_batch([Notification(p[0], p) for p in ("a0", "a1", "a2", "b0")])
    wait_for(lambda: pool.held == 2 and "b0" in seen, 10)
    stopper = gevent.spawn(pool.stop, 10)
    gate.set()
    assert stopper.get(timeout=10) is True
    queue.put(Notification("a", "a3"))
    second = ProcessorPool(queue, handler, 2, 2, name="spool2", order_key="channel")
    pools.append(second.start())
    wait_for(lambda: len(seen) == 5, 10)
    assert [p for p in seen if p[0] == "a"] == ["a0", "a1", "a2", "a3"]
    wait_for(lambda: not any(queue.stats()["pending"].values()), 10)


@pytest.mark.timeout(30)
def test_a_kill_gives_the_held_items_of_a_spool_back_after_the_killed_one(pools, tmp_path):
    handler, gate, seen = _blocking("a0")
    queue = FileQueue(str(tmp_path / "spool"))
    pool = ProcessorPool(queue, handler, 2, 2, name="kill", order_key="channel")
    pools.append(pool.start())
    queue.put_batch([Notification("a", p) for p in ("a0", "a1", "a2")])
    wait_for(lambda: pool.held == 2, 10)
    pool.kill(block=True, timeout=5)
    gate.set()
    del seen[:]
    second = ProcessorPool(queue, handler, 2, 2, name="kill2", order_key="channel")
    pools.append(second.start())
    wait_for(lambda: len(seen) == 3, 10)
    assert seen == ["a0", "a1", "a2"]


@pytest.mark.timeout(30)
def test_held_items_are_bounded_and_a_hot_key_still_drains(pools):
    handler = Recorder(pause=0.0005)
    queue = MemoryQueue(1000)
    pool = ProcessorPool(queue, handler, 4, 4, name="hot", order_key="channel")
    pool.order.hold_limit = 10
    most = []
    pools.append(pool.start())
    watcher = gevent.spawn(lambda: [most.append(pool.held) or gevent.sleep(0)
                                    for _ in iter(lambda: handler.count < 300, False)])
    for i in range(300):
        queue.put(Notification("hot" if i % 10 else "cold%d" % i, str(i)))
    wait_for(lambda: handler.count == 300, 20)
    watcher.kill()
    assert max(most) <= 10 + 4  # the limit, plus at most one item per worker
    assert in_order(handler.order["hot"])


@pytest.mark.timeout(30)
def test_a_failing_key_function_sends_that_item_to_the_error_path(pools):
    def key(item):
        if item.payload == "bad":
            raise ValueError("no key in %r" % item.payload)
        return item.payload[0]

    handler = Recorder(key=lambda n: n.payload[0])
    queue = MemoryQueue(100)
    pool = ProcessorPool(queue, handler, 2, 2, name="keyfn", order_key=key)
    pools.append(pool.start())
    for payload in ("a1", "bad", "a2", "b1"):
        queue.put(Notification("c", payload))
    wait_for(lambda: handler.count == 3 and queue.failed_count == 1, 10)
    assert "no key" in queue.errors[0]["error"]


def test_key_functions_and_the_catch_up_key():
    note = Notification("ch", "pay")
    assert key_function("channel")(note) == "ch"
    assert key_function("payload")(note) == "pay"
    assert key_function("channel")({"channel": "x"}) == "x"
    order = KeyOrder(key_function("channel"))
    assert order.key(Notification(None, "", Notification.CATCH_UP)) == CATCH_UP_KEY
    with pytest.raises(TypeError):
        KeyOrder(lambda item: [1]).key(note)


def test_key_order_dispatches_in_order_holds_and_frees():
    order = KeyOrder(lambda item: item[0], hold_limit=2)
    failed = []
    order.dispatch(["a0", "a1", "b0", 5, "a2"], lambda item, error: failed.append(item))
    assert failed == [5]  # 5[0]: TypeError, that item alone
    assert order.take_ready() == ("a", "a0") and order.take_ready() == ("b", "b0")
    assert order.take_ready() is None and order.full and order.waiting == 2
    assert order.next("a") == "a1" and not order.full
    assert order.give_up("a") == ["a2"] and order.held == 0
    assert order.running() == ["b"]
    assert order.next("b") is None and order.running() == []
    order.dispatch(["c0", "c1", "d0"], None)
    assert order.take_all_ready() == ["c0", "c1", "d0"] and order.running() == []
