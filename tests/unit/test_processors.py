"""ProcessorPool over a MemoryQueue: ordering, handler errors and timeouts, autoscale,
resize, stop, kill, back-pressure."""
import time

import gevent
import gevent.event
import pytest

from instances import InstanceSpec
from instances.components import ComponentKilled
from instances.exceptions import InvalidConfigurationException
from instances.processors import ProcessorPool
from instances.queues import Closed, Empty, Full, MemoryQueue
from supervisor.testing import HubHeartbeat, holds, wait_for


class Gate:
    """A handler that blocks on chosen items until released, recording what it saw."""

    def __init__(self, block=lambda item: True):
        self.block = block
        self.release = gevent.event.Event()
        self.started = []
        self.finished = []

    def __call__(self, item):
        self.started.append(item)
        if self.block(item):
            self.release.wait()
        self.finished.append(item)


def make_pool(handler, queue=None, **kwargs):
    kwargs.setdefault("name", "test")
    pool = ProcessorPool(queue or MemoryQueue(100), handler, **kwargs)
    return pool


@pytest.fixture
def pools():
    """Pools created by a test; any still alive at the end are killed."""
    created = []
    yield created
    for pool in created:
        pool.kill(block=True, timeout=5)


@pytest.mark.timeout(20)
def test_single_worker_handles_a_thousand_items_strictly_in_queue_order(pools):
    seen = []

    def handler(item):
        if item % 7 == 0:
            gevent.sleep(0)  # yield mid-stream: order must still hold
        seen.append(item)

    queue = MemoryQueue(50)  # smaller than the input: the producer hits back-pressure
    pool = make_pool(handler, queue)
    pools.append(pool.start())
    producer = gevent.spawn(lambda: [queue.put(i) for i in range(1000)])
    wait_for(lambda: pool.processed == 1000, 10)
    producer.get(timeout=1)
    assert seen == list(range(1000))
    assert pool.size == 1
    assert (queue.put_count, queue.done_count, queue.failed_count) == (1000, 1000, 0)


@pytest.mark.timeout(10)
def test_a_raising_handler_sends_the_item_to_failed_and_the_pool_keeps_going(pools, caplog):
    def handler(item):
        if item % 2:
            raise ValueError("odd item %d" % item)

    queue = MemoryQueue(100)
    pool = make_pool(handler, queue, name="river")
    pools.append(pool.start())
    for i in range(10):
        queue.put(i)
    wait_for(lambda: pool.processed + pool.failed == 10, 5)
    assert (pool.processed, pool.failed, queue.failed_count) == (5, 5, 5)
    assert pool.alive
    failure = queue.errors[-1]
    assert failure["item"] == 9 and "ValueError('odd item 9')" == failure["error"]
    assert "in handler" in failure["traceback"]
    assert pool.last_error == "ValueError('odd item 9')"
    records = [r for r in caplog.records if getattr(r, "action", "") == "handler.error"]
    assert len(records) == 5 and records[0].instance == "river" and records[0].exc_info


@pytest.mark.timeout(10)
def test_a_handler_over_its_timeout_is_killed_counted_and_failed(pools):
    never = gevent.event.Event()
    done = []

    def handler(item):
        if item == "slow":
            try:
                never.wait()
            except Exception:  # a handler's catch-all must not swallow the timeout
                pass
        done.append(item)

    queue = MemoryQueue(10)
    pool = make_pool(handler, queue, handler_timeout=0.05)
    pools.append(pool.start())
    queue.put("slow")
    queue.put("fast")
    wait_for(lambda: done == ["fast"], 5)
    assert (pool.timed_out, pool.failed, pool.processed) == (1, 0, 1)
    failure = queue.errors[-1]
    assert failure["item"] == "slow" and failure["error"].startswith("TimeoutError(")
    assert "never.wait()" in failure["traceback"]  # where the handler was stuck


@pytest.mark.timeout(10)
def test_a_timeout_set_live_applies_to_the_running_handler(pools):
    gate = Gate()
    pool = make_pool(gate, handler_timeout=None)
    pools.append(pool.start())
    pool.queue.put("slow")
    wait_for(lambda: gate.started == ["slow"], 5)
    pool.handler_timeout = 0.05
    wait_for(lambda: pool.timed_out == 1, 5)
    with pytest.raises(InvalidConfigurationException):
        pool.handler_timeout = "soon"
    assert pool.handler_timeout == 0.05


@pytest.mark.timeout(10)
def test_a_handler_inside_its_timeout_is_left_alone(pools):
    gate = Gate()
    pool = make_pool(gate, handler_timeout=30)
    pools.append(pool.start())
    pool.queue.put("a")
    wait_for(lambda: gate.started == ["a"], 5)
    gate.release.set()
    wait_for(lambda: pool.processed == 1, 5)
    assert pool.timed_out == 0


@pytest.mark.timeout(10)
def test_pool_grows_under_backlog_and_shrinks_back_to_min_after_idling(pools):
    gate = Gate()
    pool = make_pool(gate, min_concurrency=1, max_concurrency=4)
    pool.scale_interval, pool.idle_timeout = 0.01, 0.05
    pools.append(pool.start())
    assert pool.size == 1
    for i in range(10):
        pool.queue.put(i)
    wait_for(lambda: pool.size == 4, 5)
    assert len(gate.started) == 4  # all four handle items concurrently
    holds(lambda: pool.size == 4, 0.05, message="never beyond max")
    gate.release.set()
    wait_for(lambda: pool.processed == 10, 5)
    wait_for(lambda: pool.size == 1, 5)
    holds(lambda: pool.size == 1, 0.15, message="never below min")


@pytest.mark.timeout(10)
def test_pool_does_not_grow_while_workers_keep_up(pools):
    pool = make_pool(lambda item: None, min_concurrency=1, max_concurrency=4)
    pool.scale_interval = 0.01
    pools.append(pool.start())
    for i in range(50):
        pool.queue.put(i)
        gevent.sleep(0)
    wait_for(lambda: pool.processed == 50, 5)
    assert pool.size == 1


@pytest.mark.timeout(10)
def test_resize_live_spawns_up_to_min_and_retires_above_max(pools):
    gate = Gate()
    pool = make_pool(gate)
    pools.append(pool.start())
    pool.resize(3, 5)
    assert pool.size == 3 and (pool.min_concurrency, pool.max_concurrency) == (3, 5)
    pool.queue.put("busy")
    wait_for(lambda: gate.started == ["busy"], 5)
    pool.resize(1, 1)
    wait_for(lambda: pool.size == 1, 5)  # the two idle ones left at once
    gate.release.set()
    wait_for(lambda: pool.processed == 1, 5)
    pool.queue.put("after")
    wait_for(lambda: pool.processed == 2, 5)
    assert pool.size == 1


def test_resize_rejects_bad_bounds_and_keeps_the_old_ones():
    pool = make_pool(lambda item: None, min_concurrency=2, max_concurrency=3)
    with pytest.raises(InvalidConfigurationException) as info:
        pool.resize(4, 2)
    assert info.value.field == "min_concurrency,max_concurrency"  # the spec's rule
    assert (pool.min_concurrency, pool.max_concurrency) == (2, 3)


@pytest.mark.parametrize("kwargs,field", [
    ({"min_concurrency": 0}, "min_concurrency"),
    ({"max_concurrency": "2"}, "max_concurrency"),
    ({"max_concurrency": 1025}, "max_concurrency"),
    ({"handler_timeout": 0}, "handler_timeout"),
])
def test_invalid_settings_name_the_field(kwargs, field):
    with pytest.raises(InvalidConfigurationException) as info:
        make_pool(lambda item: None, **kwargs)
    assert info.value.field == field


@pytest.mark.timeout(10)
def test_stop_finishes_the_current_item_and_leaves_the_rest_queued(pools):
    gate = Gate()
    queue = MemoryQueue(10)
    pool = make_pool(gate, queue)
    ended = gevent.event.Event()
    pool.link(lambda p: ended.set())
    pools.append(pool.start())
    for i in range(5):
        queue.put(i)
    wait_for(lambda: gate.started == [0], 5)
    stopper = gevent.spawn(pool.stop, 5)
    holds(lambda: pool.alive and not stopper.ready(), 0.01)
    gate.release.set()
    assert stopper.get(timeout=5) is True
    assert gate.finished == [0] and queue.done_count == 1
    assert queue.qsize() == 4
    assert (pool.alive, pool.exit, pool.size) == (False, "normal", 0)
    assert ended.wait(5)
    # The queue outlives the pool: a new pool picks up where the old one stopped.
    second = make_pool(gate, queue)
    pools.append(second.start())
    wait_for(lambda: gate.finished == [0, 1, 2, 3, 4], 5)


@pytest.mark.timeout(10)
def test_stop_of_an_idle_pool_is_prompt_and_takes_nothing(pools):
    queue = MemoryQueue(10)
    pool = make_pool(lambda item: None, queue, min_concurrency=3, max_concurrency=3)
    pools.append(pool.start())
    gevent.sleep(0)
    started = gevent.get_hub().loop.now()
    assert pool.stop(5) is True
    assert gevent.get_hub().loop.now() - started < 1
    queue.put("later")
    assert queue.qsize() == 1


@pytest.mark.timeout(10)
def test_stop_kills_a_handler_that_outlives_the_timeout(pools):
    gate = Gate()
    pool = make_pool(gate, handler_timeout=None)
    told = []
    pool.link(told.append)
    pools.append(pool.start())
    pool.queue.put("stuck")
    wait_for(lambda: gate.started == ["stuck"], 5)
    assert pool.stop(timeout=0.05) is False
    assert pool.exit == "abnormal" and isinstance(pool.exception, ComponentKilled)
    wait_for(lambda: told == [pool], 5)


@pytest.mark.timeout(10)
def test_kill_is_abnormal_and_tells_links_once(pools):
    gate = Gate()
    pool = make_pool(gate, min_concurrency=2, max_concurrency=2)
    told = []
    pool.link(told.append)
    pools.append(pool.start())
    pool.queue.put("x")
    wait_for(lambda: gate.started == ["x"], 5)
    pool.kill()
    assert (pool.alive, pool.exit, pool.size) == (False, "abnormal", 0)
    assert isinstance(pool.exception, ComponentKilled)
    wait_for(lambda: told == [pool], 5)
    holds(lambda: told == [pool], 0.01, message="told once")


@pytest.mark.timeout(10)
def test_a_pool_can_be_started_again_after_kill(pools):
    pool = make_pool(lambda item: None)
    pools.append(pool.start())
    pool.kill()
    pool.start()
    assert pool.alive and pool.exit is None and pool.size == 1
    pool.queue.put(1)
    wait_for(lambda: pool.processed == 1, 5)


@pytest.mark.timeout(10)
def test_a_closed_queue_is_drained_then_the_pool_ends_normally(pools):
    queue = MemoryQueue(10)
    pool = make_pool(lambda item: None, queue, min_concurrency=2, max_concurrency=2)
    ended = gevent.event.Event()
    pool.link(lambda p: ended.set())
    pools.append(pool.start())
    for i in range(3):
        queue.put(i)
    queue.close()
    assert ended.wait(5)
    assert (pool.processed, pool.exit) == (3, "normal")


@pytest.mark.timeout(10)
def test_a_failing_queue_ends_the_pool_abnormally(pools, caplog):
    class BrokenQueue(MemoryQueue):
        def done_many(self, count):
            raise OSError("disk full")

    pool = make_pool(lambda item: None, BrokenQueue(10), min_concurrency=2, max_concurrency=2)
    ended = gevent.event.Event()
    pool.link(lambda p: ended.set())
    pools.append(pool.start())
    pool.queue.put(1)
    assert ended.wait(5)
    assert pool.exit == "abnormal" and isinstance(pool.exception, OSError)
    assert pool.size == 0
    assert any(getattr(r, "action", "") == "pool.worker_crashed" for r in caplog.records)


@pytest.mark.timeout(10)
def test_a_slow_handler_within_its_timeout_keeps_the_pool_beating(pools):
    """Issue 16, item 3: running longer than the supervisor's heartbeat_timeout but within
    handler_timeout is slow, not hung (it was judged unresponsive and restarted)."""
    gate = Gate()
    pool = make_pool(gate, handler_timeout=30.0)
    assert pool.heartbeat is None and pool.busy_since is None
    pools.append(pool.start())
    gevent.sleep(0)
    assert pool.busy_since is None
    assert abs(pool.heartbeat - time.monotonic()) < 1  # idle counts as alive
    pool.queue.put("slow")
    wait_for(lambda: gate.started, 5)
    since = pool.busy_since
    gevent.sleep(0.05)
    assert since is not None and pool.heartbeat > since  # still beating while it runs
    assert time.monotonic() - pool.heartbeat < 0.01
    gate.release.set()
    wait_for(lambda: pool.busy_since is None, 5)


@pytest.mark.timeout(10)
def test_a_handler_ignoring_its_interrupt_stops_the_beat_at_its_deadline(pools):
    """Hung = past handler_timeout and deaf to the HandlerTimeout thrown at it: from then on
    the pool's heartbeat stays at the deadline and ages (the supervisor's margin)."""
    release = gevent.event.Event()
    interrupted = []

    def deaf(item):
        while not release.is_set():
            try:
                release.wait()
            except BaseException as error:  # noqa: B036 -- the point: it swallows it
                interrupted.append(type(error).__name__)

    pool = make_pool(deaf, handler_timeout=0.2)
    pools.append(pool.start())
    pool.queue.put("deaf")
    wait_for(lambda: interrupted, 5, message="the handler was never interrupted")
    since = pool.busy_since
    assert interrupted[0] == "HandlerTimeout" and since is not None
    gevent.sleep(0.1)
    assert pool.heartbeat == since + 0.2  # the deadline, no longer now
    assert time.monotonic() - pool.heartbeat >= 0.1
    release.set()
    wait_for(lambda: pool.busy_since is None, 5)
    assert abs(pool.heartbeat - time.monotonic()) < 1


@pytest.mark.timeout(10)
def test_a_raising_link_callback_is_logged_and_others_still_run(pools, caplog):
    told = []

    def broken(pool):
        raise RuntimeError("callback bug")

    pool = make_pool(lambda item: None)
    pool.link(broken)
    pool.link(told.append)
    pools.append(pool.start())
    pool.stop(5)
    wait_for(lambda: told == [pool], 5)
    assert any(getattr(r, "action", "") == "pool.link_error" for r in caplog.records)


@pytest.mark.timeout(10)
def test_put_blocks_while_the_queue_is_full_and_never_drops():
    queue = MemoryQueue(2)
    queue.put("a")
    queue.put("b")
    with pytest.raises(Full):
        queue.put("c", timeout=0.01)
    blocked = gevent.spawn(queue.put, "c")
    for _ in range(5):
        gevent.sleep(0)
    assert not blocked.ready() and queue.qsize() == 2
    assert queue.get() == "a"
    blocked.get(timeout=5)
    assert [queue.get(), queue.get()] == ["b", "c"]
    assert queue.put_count == 3


def test_a_closed_queue_refuses_puts_and_drains_for_getters():
    queue = MemoryQueue(5)
    queue.put(1)
    queue.close()
    assert queue.closed
    with pytest.raises(Closed):
        queue.put(2)
    assert queue.get() == 1
    with pytest.raises(Closed):
        queue.get()


def test_memory_queue_keeps_only_the_last_failures():
    queue = MemoryQueue(5, errors_kept=3)
    for i in range(5):
        queue.failed(i, ValueError(i), "tb %d" % i)
    assert queue.failed_count == 5
    assert [e["item"] for e in queue.errors] == [2, 3, 4]
    assert queue.stats()["failed"] == 5


@pytest.mark.parametrize("field,value", [
    ("min_concurrency", 0), ("max_concurrency", 1025), ("max_concurrency", True),
    ("handler_timeout", float("nan")), ("handler_timeout", "60"), ("queue_size", 1.5),
])
def test_the_runtime_refuses_what_the_spec_refuses_with_the_same_message(field, value):
    with pytest.raises(InvalidConfigurationException) as by_spec:
        InstanceSpec(name="x", channels=["c"], handler="tests.handlers:record",
                     **{field: value})
    with pytest.raises(InvalidConfigurationException) as by_runtime:
        if field == "queue_size":
            MemoryQueue(value)
        else:
            make_pool(lambda item: None, **{field: value})
    assert str(by_runtime.value) == str(by_spec.value)
    assert by_runtime.value.field == by_spec.value.field == field


def test_memory_queue_rejects_a_bad_size():
    with pytest.raises(InvalidConfigurationException) as info:
        MemoryQueue(0)
    assert info.value.field == "queue_size"


@pytest.mark.timeout(10)
def test_handler_latency_lands_in_cumulative_buckets():
    """A handler taking 30 ms lands in no bucket below 30 ms. Only lower bounds: a loaded
    machine makes a latency longer, never shorter (a no-op's "under 0.5 ms" failed there)."""
    queue = MemoryQueue()
    pool = ProcessorPool(queue, lambda item: gevent.sleep(0.03), 1, 1, None, name="latency")
    for i in range(10):
        queue.put(i)
    pool.start()
    try:
        wait_for(lambda: pool.processed == 10, 10)
    finally:
        pool.stop(5)
    buckets = pool.latency_buckets()
    assert buckets[-1] == ("+Inf", 10)
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)
    assert [count for bound, count in buckets[:-1] if bound < 0.03] == [0] * 6, buckets
    assert pool.latency_sum >= 0.03 * 10 * 0.99
    assert pool.stats()["latency_buckets"] == buckets


@pytest.mark.timeout(30)
def test_a_long_backlog_never_holds_the_hub():
    """The property is the worst stall, whatever the machine's speed: every gap between two
    heartbeat ticks is measured, the one that ends after the drain included (a worker that
    never yielded would leave a single gap as long as the whole backlog)."""
    queue = MemoryQueue(200000)
    for i in range(100000):
        queue.put(i)
    beat = HubHeartbeat(0.001).start()
    gevent.sleep(0.01)  # the heartbeat runs before the pool can take the hub
    pool = ProcessorPool(queue, lambda item: None, 1, 1, None, name="backlog")
    pool.start()
    try:
        wait_for(lambda: pool.processed == 100000, 20)
        after_drain = beat.ticks
        wait_for(lambda: beat.ticks >= after_drain + 2, 5)  # the last gap is measured
    finally:
        beat.stop()
        pool.stop(5)
    assert beat.max_stall < 0.05, "the hub was held %.1f ms" % (beat.max_stall * 1000)


# -- the chunk hand-off -------------------------------------------------------------------
def test_the_bound_counts_items_a_chunk_that_does_not_fit_is_taken_in_part():
    queue = MemoryQueue(5)
    assert queue.put_many([1, 2, 3], False) == 3
    assert queue.put_many([4, 5, 6, 7], False) == 2  # room for two: those, in order
    assert queue.qsize() == 5 and queue.full() and queue.put_count == 5
    assert queue.put_many([8], False) == 0
    assert queue.get_chunk(False) == [1, 2, 3]  # one chunk per put
    assert queue.get_chunk(False) == [4, 5]
    with pytest.raises(Empty):
        queue.get_chunk(False)


@pytest.mark.timeout(30)
def test_get_one_at_a_time_from_a_big_chunk_keeps_order_and_is_linear():
    """A consumer of single items (get) on a read of 300,000 notifications: every item in
    order, mixed with get_chunk; copying the rest of the chunk on each get (O(n^2)) would
    take minutes here."""
    queue = MemoryQueue(300_000)
    queue.put_many(list(range(300_000)))
    assert [queue.get(False), queue.get(False)] == [0, 1]
    assert queue.get_chunk(False, split=2) == list(range(2, 150_001))  # ceil(299,998 / 2)
    assert queue.qsize() == 149_999
    assert [queue.get(False) for _ in range(149_999)] == list(range(150_001, 300_000))
    with pytest.raises(Empty):
        queue.get(False)


def test_get_chunk_shares_a_backlog_among_the_workers_of_a_pool():
    queue = MemoryQueue(100)
    queue.put_many(list(range(10)))
    assert queue.get_chunk(False, split=4) == [0, 1, 2]  # ceil(10 / 4)
    assert queue.get_chunk(False, split=4) == [3, 4]  # ceil(7 / 4)
    assert queue.get() == 5
    assert queue.get_chunk(False) == [6, 7, 8, 9]
    assert queue.qsize() == 0


def test_released_items_are_first_in_line_in_their_order_beyond_the_bound():
    queue = MemoryQueue(3)
    queue.put_many(["c", "d", "e"])
    queue.give_back(["a", "b"])  # taken earlier, never finished
    assert queue.qsize() == 5 and queue.put_count == 3
    assert queue.get_chunk(False) == ["a", "b"]
    assert queue.get_chunk(False) == ["c", "d", "e"]


@pytest.mark.timeout(10)
def test_a_blocked_put_many_takes_what_fits_as_room_appears_and_a_throw_loses_nothing():
    queue = MemoryQueue(2)
    queue.put_many(["a", "b"])
    putter = gevent.spawn(queue.put_many, ["c", "d", "e"])
    wait_for(lambda: len(queue._putters) == 1, 5)
    assert queue.get() == "a"
    wait_for(lambda: queue.qsize() == 2, 5)  # "c" went in, the putter waits for more
    assert not putter.ready()
    putter.kill(block=True)  # as an own listener's stop would
    assert [queue.get(), queue.get()] == ["b", "c"] and queue.qsize() == 0
    assert not queue._putters  # the thrown-into waiter is gone
    queue.put("f")  # and nothing is woken by mistake
    assert queue.get() == "f"


@pytest.mark.timeout(10)
def test_a_getter_thrown_into_while_it_waits_takes_nothing():
    queue = MemoryQueue(5)
    getter = gevent.spawn(queue.get_chunk)
    wait_for(lambda: len(queue._getters) == 1, 5)
    getter.kill(block=True)
    queue.put_many([1, 2])
    assert queue.get_chunk(False) == [1, 2]


@pytest.mark.timeout(10)
def test_close_wakes_blocked_getters_and_putters():
    def outcome(call, *args):
        try:
            call(*args)
        except Closed:
            return "closed"

    queue = MemoryQueue(1)
    queue.put(0)
    putter = gevent.spawn(outcome, queue.put, 1)
    empty = MemoryQueue(1)
    getter = gevent.spawn(outcome, empty.get_chunk)
    wait_for(lambda: queue._putters and empty._getters, 5)
    queue.close()
    empty.close()
    assert putter.get(timeout=5) == getter.get(timeout=5) == "closed"
    assert queue.get() == 0  # what was queued is still there for getters


@pytest.mark.timeout(10)
def test_a_pool_takes_a_read_as_one_chunk_and_counts_it_once(pools):
    seen = []
    queue = MemoryQueue(100)
    pool = make_pool(seen.append, queue)
    queue.put_many(list(range(50)))
    pools.append(pool.start())
    wait_for(lambda: pool.processed == 50, 5)
    assert seen == list(range(50))
    assert queue.done_count == 50 and queue.qsize() == 0
    assert pool.latency_buckets()[-1] == ("+Inf", 50)


@pytest.mark.timeout(10)
def test_a_stop_mid_chunk_ends_after_the_current_item_and_gives_back_the_rest(pools):
    gate = Gate(block=lambda item: item == 2)
    queue = MemoryQueue(100)
    pool = make_pool(gate, queue)
    queue.put_many([0, 1, 2, 3, 4])
    pools.append(pool.start())
    wait_for(lambda: gate.started == [0, 1, 2], 5)
    stopper = gevent.spawn(pool.stop, 5)
    gevent.sleep(0.01)
    gate.release.set()  # the current item finishes
    assert stopper.get(timeout=5) is True
    assert gate.finished == [0, 1, 2] and pool.processed == 3
    assert queue.get_chunk(False) == [3, 4]  # not started: back, first in line


@pytest.mark.timeout(10)
def test_a_kill_mid_chunk_gives_back_the_item_in_flight_and_the_rest(pools):
    gate = Gate(block=lambda item: item == 1)
    queue = MemoryQueue(100)
    queue.put_many([0, 1, 2])
    queue.put_many([3])
    pool = make_pool(gate, queue)
    pools.append(pool.start())
    wait_for(lambda: gate.started == [0, 1], 5)
    pool.kill(block=True, timeout=5)
    assert pool.exit == "abnormal" and pool.processed == 0  # the chunk never finished
    assert queue.get_chunk(False) == [1, 2] and queue.get_chunk(False) == [3]


@pytest.mark.timeout(10)
def test_a_stop_in_a_retry_wait_gives_the_item_back_and_the_next_pool_runs_it(pools):
    tries = []

    def flaky(item):
        tries.append(item)
        if item == "x" and len(tries) < 3:
            raise ConnectionError("database blip")

    queue = MemoryQueue(100)
    first = make_pool(flaky, queue)
    first.retry_delay = 30.0  # the stop comes during the wait
    queue.put_many(["x", "y"])
    pools.append(first.start())
    wait_for(lambda: first.retried == 1, 5)
    assert first.stop(5) is True  # prompt: the wait is interrupted, no kill
    assert first.failed == 0 and queue.failed_count == 0  # not sent to the error path
    assert queue.get_chunk(False, split=1) == ["x", "y"]
    queue.give_back(["x", "y"])
    second = make_pool(flaky, queue)
    pools.append(second.start())
    wait_for(lambda: second.processed == 2, 5)
    assert tries == ["x", "x", "x", "y"] and queue.failed_count == 0


def test_a_failure_s_source_files_are_read_off_the_hub_before_its_traceback_is_formatted(
        tmp_path, monkeypatch):
    import importlib
    import linecache
    import sys

    import gevent.monkey

    from instances import processors
    real_ident = gevent.monkey.get_original("_thread", "get_ident")
    hub_thread = real_ident()
    name = "pgvisor_failing_%d" % id(tmp_path)
    (tmp_path / (name + ".py")).write_text("def handle(n):\n    raise ValueError(n)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        module.handle(1)
    except ValueError as exc:
        error = exc
    path = module.__file__
    linecache.cache.pop(path, None)
    reads = []
    monkeypatch.setattr(linecache, "getlines", _recording(linecache.getlines, reads, real_ident))
    failures = []
    queue = MemoryQueue()
    queue.failed = lambda item, err, tb_text: failures.append(tb_text)
    pool = ProcessorPool(queue, lambda n: None, name="p")
    gevent.spawn(pool._failed, "item", error).join()
    assert (path, True) in [(n, ident != hub_thread) for n, ident in reads]  # in a thread
    assert "raise ValueError(n)" in failures[0]  # the traceback has its source lines
    reads.clear()
    gevent.spawn(processors.read_sources, error).join()
    assert reads == []  # read once: formatting again reads nothing
    sys.modules.pop(name, None)


def _recording(getlines, reads, ident):
    def recorded(filename, module_globals=None):
        reads.append((filename, ident()))
        return getlines(filename, module_globals)
    return recorded
