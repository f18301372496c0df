"""Batch handlers (``batch = N``) in a ProcessorPool over a MemoryQueue and a FileQueue:
lists of up to N in queue order, a catch_up alone, the whole batch retried and then each
item alone (a poison one to the error path, the others done), a stop gives a batch back."""
import gevent
import gevent.event
import pytest

from instances.batching import cut_batch, take_batch
from instances.notification import LiveRead, Notification
from instances.processors import ProcessorPool
from instances.queues import Empty, MemoryQueue
from instances.spool import FileQueue
from supervisor.testing import wait_for


class Bulk:
    """A batch handler recording each call's payloads; ``poison`` payloads make it raise."""

    def __init__(self, poison=(), fail_first=0):
        self.calls = []
        self.poison = set(poison)
        self.fail_first = fail_first

    def __call__(self, batch):
        assert isinstance(batch, list)
        self.calls.append([n.payload for n in batch])
        if self.fail_first > 0:
            self.fail_first -= 1
            raise ConnectionError("bulk API unavailable")
        bad = self.poison.intersection(n.payload for n in batch)
        if bad:
            raise ValueError("cannot index %s" % sorted(bad))

    def handled(self):
        return [p for call in self.calls for p in call]


def note(payload):
    return Notification("docs", payload, received_at=0.0)


CATCH_UP = Notification(None, "", Notification.CATCH_UP)


@pytest.fixture
def pools():
    created = []
    yield created
    for pool in created:
        pool.kill(block=True, timeout=5)


def start(pools, handler, queue, **kwargs):
    pool = ProcessorPool(queue, handler, name="bulk", **kwargs)
    pools.append(pool.start())
    return pool


@pytest.mark.timeout(20)
def test_a_backlog_arrives_in_lists_of_up_to_n_in_queue_order_and_a_catch_up_alone(pools):
    queue = MemoryQueue(1000)
    for i in range(25):
        queue.put(note(str(i)))
    queue.put(CATCH_UP)
    for i in range(25, 30):
        queue.put(note(str(i)))
    handler = Bulk()
    pool = start(pools, handler, queue, batch=10)
    wait_for(lambda: queue.done_count == 31, 10)
    assert [len(c) for c in handler.calls] == [10, 10, 5, 1, 5]
    assert handler.calls[3] == [""]  # the catch_up, alone
    assert handler.handled() == [str(i) for i in range(25)] + [""] + [
        str(i) for i in range(25, 30)]
    assert pool.processed == 31
    assert sum(count for _, count in pool.latency_buckets()[-1:]) == 5  # one per call


@pytest.mark.timeout(20)
def test_a_poison_item_is_isolated_to_the_error_path_and_the_rest_is_handled(pools):
    queue = MemoryQueue(100)
    for i in range(5):
        queue.put(note(str(i)))
    handler = Bulk(poison={"3"})
    pool = start(pools, handler, queue, batch=5)
    wait_for(lambda: queue.done_count + queue.failed_count == 5, 10)
    whole = [["0", "1", "2", "3", "4"]] * (1 + ProcessorPool.retries)
    alone = [["0"], ["1"], ["2"]] + [["3"]] * (1 + ProcessorPool.retries) + [["4"]]
    assert handler.calls == whole + alone
    assert (queue.done_count, queue.failed_count) == (4, 1)
    assert queue.errors[0]["item"].payload == "3"
    assert "cannot index" in queue.errors[0]["error"]
    assert (pool.processed, pool.failed) == (4, 1)


@pytest.mark.timeout(20)
def test_a_transient_failure_retries_the_whole_batch_only(pools):
    queue = MemoryQueue(100)
    for i in range(4):
        queue.put(note(str(i)))
    handler = Bulk(fail_first=2)
    pool = start(pools, handler, queue, batch=10)
    wait_for(lambda: queue.done_count == 4, 10)
    assert handler.calls == [["0", "1", "2", "3"]] * 3
    assert (pool.retried, queue.failed_count) == (2, 0)


@pytest.mark.timeout(20)
def test_a_batch_over_its_timeout_is_handled_item_by_item(pools):
    slow = set()

    def handler(batch):
        handler.calls.append([n.payload for n in batch])
        if len(batch) > 1 or batch[0].payload in slow:
            gevent.sleep(10)

    handler.calls = []
    slow.add("1")
    queue = MemoryQueue(100)
    for i in range(3):
        queue.put(note(str(i)))
    pool = start(pools, handler, queue, batch=3, handler_timeout=0.05)
    wait_for(lambda: queue.done_count + queue.failed_count == 3, 10)
    assert handler.calls == [["0", "1", "2"], ["0"], ["1"], ["2"]]  # timeouts: no retries
    assert (queue.done_count, queue.failed_count, pool.timed_out) == (2, 1, 1)


@pytest.mark.timeout(20)
def test_a_stop_during_a_batch_retry_gives_the_batch_back_in_order(pools):
    queue = MemoryQueue(100)
    for i in range(3):
        queue.put(note(str(i)))
    handler = Bulk(fail_first=100)
    ProcessorPool.retry_delay, old = 5.0, ProcessorPool.retry_delay
    try:
        pool = start(pools, handler, queue, batch=10)
        wait_for(lambda: handler.calls and pool.retried == 1, 10)
        assert pool.stop(5) is True
    finally:
        ProcessorPool.retry_delay = old
    assert [queue.get(False).payload for _ in range(queue.qsize())] == ["0", "1", "2"]
    assert queue.failed_count == 0


@pytest.mark.timeout(20)
def test_a_spool_batch_is_acked_together_and_its_poison_goes_to_errors(pools, tmp_path):
    queue = FileQueue(str(tmp_path / "spool"))
    queue.put_batch([note(str(i)) for i in range(6)])
    handler = Bulk(poison={"4"})
    start(pools, handler, queue, batch=6)
    wait_for(lambda: queue.stats()["errors"] == 1 and not any(
        queue.stats()["pending"].values()), 10)
    assert sorted(set(handler.handled())) == [str(i) for i in range(6)]
    assert queue.stats()["incoming"] == 0


@pytest.mark.timeout(20)
def test_a_killed_spool_batch_is_delivered_again_whole_and_in_order(pools, tmp_path):
    gate = gevent.event.Event()
    seen = []

    def handler(batch):
        seen.append([n.payload for n in batch])
        gate.wait()

    queue = FileQueue(str(tmp_path / "spool"))
    queue.put_batch([note(str(i)) for i in range(4)])
    pool = start(pools, handler, queue, batch=10)
    wait_for(lambda: seen, 10)
    pool.kill(block=True, timeout=5)
    gate.set()
    start(pools, handler, queue, batch=10)
    wait_for(lambda: len(seen) == 2, 10)
    assert seen == [["0", "1", "2", "3"]] * 2


def test_take_batch_stops_at_empty_size_and_a_catch_up():
    later = [[note("3"), note("4")], [note("5")]]

    def more():
        if not later:
            raise Empty()
        return later.pop(0)

    pending = [CATCH_UP, note("0"), note("1"), note("2"), CATCH_UP]
    assert take_batch(pending, more, 10) == [CATCH_UP]
    assert take_batch(pending, more, 2) == [note("0"), note("1")]
    assert take_batch(pending, more, 10) == [note("2")]  # the catch_up stays first in line
    assert take_batch(pending, more, 10) == [CATCH_UP]
    pending.append(note("x"))  # after what the first call took in from more()
    assert take_batch(pending, more, 10) == [note("3"), note("4"), note("5"), note("x")]
    assert not pending and not later
    messages = [{"payload": "a"}, CATCH_UP, {"payload": "b"}]  # spool messages may be dicts
    assert take_batch(messages, more, 10) == [{"payload": "a"}]
    assert take_batch(messages, more, 10) == [CATCH_UP]


def test_cut_batch_looks_for_a_catch_up_only_in_what_did_not_come_as_reads_of_notifies():
    later = [LiveRead([note("2")]), [CATCH_UP, note("3")], LiveRead([note("4")])]

    def more():
        if not later:
            raise Empty()
        return later.pop(0)

    pending = [note("0"), note("1")]  # a LiveRead's items, extended into the worker's list
    assert cut_batch(pending, more, 3, True) == ([note("0"), note("1"), note("2")], True)
    pending.append(note("x"))
    batch, live = cut_batch(pending, more, 10, True)  # takes in a plain chunk: looks again
    assert (batch, live) == ([note("x")], False)
    assert cut_batch(pending, more, 10, live) == ([CATCH_UP], False)
    assert cut_batch(pending, more, 10, False) == ([note("3"), note("4")], False)
    assert not pending and not later


@pytest.mark.timeout(20)
def test_a_catch_up_between_reads_of_notifies_still_comes_alone(pools):
    queue = MemoryQueue(100)
    queue.put_many(LiveRead(note(str(i)) for i in range(3)))
    queue.put(CATCH_UP)
    queue.put_many(LiveRead(note(str(i)) for i in range(3, 5)))
    queue.give_back([note("-1")])  # first in line again, a plain list
    handler = Bulk()
    start(pools, handler, queue, batch=10)
    wait_for(lambda: queue.done_count == 7, 10)
    assert handler.calls == [["-1", "0", "1", "2"], [""], ["3", "4"]]


@pytest.mark.timeout(20)
def test_a_stop_gives_back_the_batch_and_what_was_taken_after_it_in_queue_order(pools):
    queue = MemoryQueue(100)
    queue.put_many([note(str(i)) for i in range(5)])  # one chunk: the worker takes it all
    handler = Bulk(fail_first=100)
    ProcessorPool.retry_delay, old = 5.0, ProcessorPool.retry_delay
    try:
        pool = start(pools, handler, queue, batch=2)
        wait_for(lambda: handler.calls and pool.retried == 1, 10)
        assert pool.stop(5) is True
    finally:
        ProcessorPool.retry_delay = old
    assert handler.calls == [["0", "1"]]
    assert [queue.get(False).payload for _ in range(queue.qsize())] == ["0", "1", "2", "3", "4"]
