"""The spool off the hub: fsync and directory scans run in gevent's threadpool, sizes come
from counters, idle readers are woken without polling, and ``incoming/`` has a bound."""
import os
import subprocess
import sys

import gevent
import gevent.event
import gevent.monkey
import pytest

from instances.queues import Empty, Full
from instances.spool import FileQueue, backlog, names, watcher
from instances.spool.writer import SpoolWriter
from supervisor.testing import wait_for

real_ident = gevent.monkey.get_original("_thread", "get_ident")


class Recorder:
    """Wraps the os functions a spool could block on; records on which real thread each
    call touching ``root`` (or any fsync) ran."""

    def __init__(self, monkeypatch, root):
        self.root = str(root)
        self.calls = []  # (function name, real thread id)
        for name in ("fsync", "listdir", "scandir"):
            monkeypatch.setattr(os, name, self._wrap(name, getattr(os, name)))

    def _wrap(self, name, original):
        def recorded(*args, **kwargs):
            target = args[0] if args else kwargs.get("path", ".")
            if name == "fsync" or str(target).startswith(self.root):
                self.calls.append((name, real_ident()))
            return original(*args, **kwargs)
        return recorded

    def on(self, thread):
        return [name for name, ident in self.calls if ident == thread]


def dead_owner():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return "%s-%d-%s" % (names.hostname(), child.pid, "1")


@pytest.mark.timeout(20)
def test_fsync_and_every_directory_scan_run_in_the_threadpool_not_on_the_hub(
        tmp_path, monkeypatch):
    hub_thread = real_ident()
    recorder = Recorder(monkeypatch, tmp_path)
    owner_dir = tmp_path / "q" / "pending" / dead_owner()
    owner_dir.mkdir(parents=True)
    (owner_dir / names.new_base()).write_bytes(b'{"n": -1}')  # a crashed consumer's claim
    queue = FileQueue(tmp_path / "q", fsync=True)  # recovery + the first count
    queue.put({"n": 0})
    queue.put_batch([{"n": 1}, {"n": 2}])
    first = queue.get(block=False)
    queue.failed(first, ValueError("x"), None)
    assert queue.qsize() >= 2 and queue.error_count() == 1
    queue.stats()
    assert queue.requeue() == 1
    queue._next_sweep = 0  # the periodic sweep of pending/, due now
    items = [queue.get(block=False) for _ in range(4)]
    for item in items:
        queue.done(item)
    with pytest.raises(Empty):
        queue.get(block=False)
    queue.close()
    kinds = {name for name, _ in recorder.calls}
    assert kinds == {"fsync", "listdir", "scandir"}, recorder.calls  # the test saw them
    assert recorder.on(hub_thread) == []


@pytest.mark.timeout(10)
def test_qsize_and_error_count_read_counters_without_looking_at_the_directory(
        tmp_path, monkeypatch):
    queue = FileQueue(tmp_path)
    for n in range(5):
        queue.put({"n": n})
    queue.put_batch([{"n": n} for n in range(5, 15)])
    queue.failed(queue.get(block=False), ValueError("x"), None)
    queue._backlog._next_recount = float("inf")  # no recount is due
    recorder = Recorder(monkeypatch, tmp_path)
    assert queue.qsize() == 14  # 4 single files + one batch file of 10 messages
    assert queue.error_count() == 1
    assert recorder.calls == []


@pytest.mark.timeout(10)
def test_a_recount_catches_files_other_processes_put_and_took(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put({"n": 0})
    other = SpoolWriter(str(tmp_path), "other-owner")
    other.write(b'[{"n": 1}, {"n": 2}, {"n": 3}]', count=3)  # another process's batch
    assert queue.qsize() == 1  # not seen yet
    queue._backlog.recount()
    assert queue.qsize() == 4
    for name in os.listdir(tmp_path / "incoming"):  # another consumer took them all
        os.unlink(tmp_path / "incoming" / name)
    queue._backlog._next_recount = 0
    queue.qsize()  # starts the recount in the background
    wait_for(lambda: queue.qsize() == 0, timeout=5, message="the recount sees them gone")


@pytest.mark.timeout(10)
def test_a_batch_file_name_tells_its_message_count(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch([{"n": n} for n in range(7)])
    queue.put({"n": 7})
    counts = sorted(names.message_count(n) for n in os.listdir(tmp_path / "incoming"))
    assert counts == [1, 7]
    assert names.message_count(names.part_name(names.new_base(12), 3, 12)) == 1
    assert names.message_count("not-a-spool-name.3") == 1


@pytest.mark.timeout(10)
def test_an_idle_reader_is_woken_by_another_process_through_inotify(tmp_path):
    queue = FileQueue(tmp_path)
    if not queue._backlog.watched:
        pytest.skip("no inotify here")
    queue.poll_interval = queue.watched_poll_interval = 3600.0  # only a wake-up delivers
    reader = gevent.spawn(queue.get, True, 10)
    wait_for(lambda: queue.waiting == 1, timeout=5, message="the reader waits")
    code = ("from instances.spool.writer import SpoolWriter; "
            "SpoolWriter(%r, 'writer-process').write(b'{\"n\": 1}')" % str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30,
                   cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
    assert reader.get(timeout=5)["n"] == 1


@pytest.mark.timeout(10)
def test_the_last_queue_of_a_directory_removes_its_watch(tmp_path):
    first, second = FileQueue(tmp_path), FileQueue(tmp_path)
    shared = backlog.known(first.directory)
    assert second._backlog is shared
    watch = shared._watch
    if watch is None:
        pytest.skip("no inotify here")
    inotify = watcher._inotify
    first.close()
    assert inotify.watches.get(watch.wd) is watch
    second.close()
    assert shared._watch is None and watch.wd not in inotify.watches


# -- the bound ---------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_a_put_over_max_messages_raises_full_when_not_blocking(tmp_path):
    queue = FileQueue(tmp_path, max_messages=5)
    queue.put_batch([{"n": n} for n in range(4)])
    queue.put({"n": 4})
    with pytest.raises(Full):
        queue.put({"n": 5}, block=False)
    with pytest.raises(Full):
        queue.put_batch([{"n": 5}, {"n": 6}], False)
    with pytest.raises(Full):
        queue.put({"n": 5}, timeout=0.05)
    assert sum(names.message_count(n) for n in os.listdir(tmp_path / "incoming")) == 5


@pytest.mark.timeout(10)
def test_a_put_over_max_bytes_waits_for_a_claim(tmp_path):
    queue = FileQueue(tmp_path, max_bytes=100)
    queue.put({"pad": "x" * 60})
    with pytest.raises(Full):
        queue.put({"pad": "y" * 60}, block=False)
    waiting = gevent.spawn(queue.put, {"pad": "y" * 60})
    gevent.sleep(0.01)
    assert not waiting.ready()
    item = queue.get(block=False)  # room: the waiting put goes in
    waiting.get(timeout=5)
    queue.done(item)
    assert queue.get(block=False)["pad"] == "y" * 60


@pytest.mark.timeout(10)
def test_an_empty_spool_takes_one_file_bigger_than_the_bound(tmp_path):
    queue = FileQueue(tmp_path, max_messages=2)
    queue.put_batch([{"n": n} for n in range(3)])  # never refused forever
    with pytest.raises(Full):
        queue.put({"n": 3}, block=False)


@pytest.mark.timeout(10)
def test_zero_means_no_bound_and_bad_bounds_are_refused_by_name(tmp_path):
    from instances.exceptions import InvalidConfigurationException
    queue = FileQueue(tmp_path, max_messages=0, max_bytes=0)
    for n in range(50):
        queue.put({"n": n}, block=False)
    assert queue.maxsize == 0
    with pytest.raises(InvalidConfigurationException, match="max_messages=-1"):
        FileQueue(tmp_path, max_messages=-1)
    with pytest.raises(InvalidConfigurationException, match="max_bytes='big'"):
        FileQueue(tmp_path, max_bytes="big")


@pytest.mark.timeout(10)
def test_a_queue_dropped_without_close_lets_its_watch_go(tmp_path):
    import gc
    queue = FileQueue(tmp_path)
    if queue._backlog._watch is None:
        pytest.skip("no inotify here")
    wd = queue._backlog._watch.wd
    del queue
    gc.collect()
    assert wd not in watcher._inotify.watches


# -- chunks and the group commit ----------------------------------------------------------

def _notifications(count, first=0):
    from instances.notification import Notification
    return [Notification("ch", "p%d" % (first + i), "notify", 1, 1.0) for i in range(count)]


class Worker:
    """A greenlet that takes a chunk, then settles ``done_many(count)`` when told."""

    def __init__(self, queue, split=1):
        self.chunk, self.settle = None, gevent.event.AsyncResult()
        self.taken = gevent.event.Event()

        def run():
            self.chunk = queue.get_chunk(False, None, split)
            self.taken.set()
            queue.done_many(self.settle.get())
        self.greenlet = gevent.spawn(run)
        self.taken.wait(5)

    def done_many(self, count):
        self.settle.set(count)
        self.greenlet.get(timeout=5)


@pytest.mark.timeout(10)
def test_done_many_settles_only_the_calling_greenlets_chunk(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch(_notifications(4))
    queue.put_batch(_notifications(4, 4))
    mine = queue.get_chunk(False, None, 2)  # half of the first file
    theirs = Worker(queue)
    assert [n.payload for n in mine] == ["p0", "p1"]
    assert [n.payload for n in theirs.chunk] == ["p2", "p3"]
    queue.failed(mine[0], ValueError("poison"), None)
    queue.done_many(1)  # mine[1]: the failed one had its outcome already
    assert queue.attempts(theirs.chunk[0]) == 1  # still handed out: not settled by me
    with pytest.raises(ValueError):
        queue.attempts(mine[1])
    theirs.done_many(2)  # the first file is done
    assert len(os.listdir(tmp_path / "incoming")) == 1
    wait_for(lambda: os.listdir(tmp_path / "pending" / queue.owner) == [], 10,
             message="the settled file is deleted")


@pytest.mark.timeout(10)
def test_a_released_item_of_a_chunk_is_not_settled_by_that_chunk(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch(_notifications(3))
    chunk = queue.get_chunk(False)
    queue.release(chunk[2])  # a stop: it goes back first in line
    again = Worker(queue)
    assert again.chunk == [chunk[2]]
    queue.done_many(3)  # only two are still mine (logged, nothing else settled)
    assert queue.attempts(again.chunk[0]) == 1  # the other greenlet's: still handed out
    again.done_many(1)
    wait_for(lambda: os.listdir(tmp_path / "pending" / queue.owner) == [], 10,
             message="the settled file is deleted")


@pytest.mark.timeout(10)
def test_a_queue_with_an_output_queue_offers_no_chunks(tmp_path):
    from instances.spool import OutputQueue
    piping = FileQueue(tmp_path / "in", output=OutputQueue(tmp_path / "out"))
    assert not hasattr(piping, "get_chunk") and not hasattr(piping, "done_many")
    assert hasattr(FileQueue(tmp_path / "plain"), "get_chunk")


@pytest.mark.timeout(10)
def test_the_group_commit_writes_non_blocking_batches_as_one_file_in_order(tmp_path):
    queue = FileQueue(tmp_path)
    ids = []
    for k in range(5):  # what the notifier does: one non-blocking put per read
        ids += queue.put_batch(_notifications(10, 10 * k), False)
    ids.append(queue.put({"n": "after"}))  # a blocking put waits for the group
    files = sorted(os.listdir(tmp_path / "incoming"))
    assert len(files) == 2 and names.message_count(files[0]) == 50
    got = []
    while True:
        try:
            item = queue.get(block=False)
        except Empty:
            break
        got.append(item)
        queue.done(item)
    assert [getattr(n, "payload", None) or n["n"] for n in got] == (
        ["p%d" % i for i in range(50)] + ["after"])
    assert [n.id if hasattr(n, "id") and not isinstance(n, dict) else n["id"]
            for n in got] == ids


@pytest.mark.timeout(10)
def test_a_failed_group_write_refuses_the_next_put_so_a_catch_up_is_owed(
        tmp_path, monkeypatch):
    queue = FileQueue(tmp_path)
    monkeypatch.setattr(queue.writer, "write", lambda *a, **k: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    queue.put_batch(_notifications(3), False)
    wait_for(lambda: queue._committer is None, timeout=5, message="the group writer ran")
    with pytest.raises(Full):
        queue.put_batch(_notifications(1), False)
    assert queue.qsize() == 0  # what could not be written is not counted as waiting
    monkeypatch.undo()
    queue.put_batch(_notifications(1), False)  # the refusal is once


@pytest.mark.timeout(10)
def test_a_killed_chunk_holder_s_finished_messages_are_done_at_close(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch(_notifications(4))
    gate = gevent.event.Event()

    def worker():  # handles p0 and p1, is killed in p2's handler (as a pool's worker)
        chunk = queue.get_chunk(False)
        try:
            gate.wait()
        except gevent.GreenletExit:
            for item in reversed(chunk[2:]):
                queue.release(item)
            raise
    glet = gevent.spawn(worker)
    wait_for(lambda: queue.qsize() == 0, timeout=5, message="the chunk is taken")
    glet.kill()
    queue.close()  # p2 and p3 go back; p0 and p1 ran: never delivered again
    reopened = FileQueue(tmp_path)
    got = []
    while reopened.qsize():
        got += reopened.get_chunk(False)
    assert [n.payload for n in got] == ["p2", "p3"]
    assert [reopened.attempts(n) for n in got] == [1, 1]


@pytest.mark.timeout(20)
def test_a_getter_killed_while_its_claim_runs_in_the_threadpool_loses_nothing(
        tmp_path, monkeypatch):
    """A stop kills a processor waiting in get() while the threadpool renames a file into
    pending/: the rename still happens, so the claim must be recorded before the getter
    dies (left in pending/<this owner>/ nobody would deliver it before the process ends;
    given back later, a restarted pool would run newer messages first)."""
    from instances.spool import claims

    queue = FileQueue(tmp_path / "q")
    queue.put_batch([{"n": 0}, {"n": 1}])
    entered, release = threading_event(), threading_event()
    real_claim = claims._claim_file

    def slow_claim(*args):
        entered.set()
        release.wait(10)
        return real_claim(*args)

    monkeypatch.setattr(claims, "_claim_file", slow_claim)
    getter = gevent.spawn(queue.get)
    wait_for(entered.is_set, 5, message="the claim runs in the threadpool")
    killer = gevent.spawn(getter.kill)  # as a stop kills a processor
    gevent.idle()  # the kill is thrown in; the rename cannot end before `release`
    assert not getter.dead and not killer.dead
    release.set()
    killer.join(5)
    assert getter.dead and killer.dead
    monkeypatch.setattr(claims, "_claim_file", real_claim)
    # the claim was recorded before the getter died: its messages first in line, in order
    assert [queue.get(timeout=5)["n"], queue.get(timeout=5)["n"]] == [0, 1]
    assert queue.qsize() == 0


def threading_event():
    """An Event for a real thread to wait on (the threadpool's), patched or not."""
    return gevent.monkey.get_original("threading", "Event")()


@pytest.mark.timeout(10)
def test_a_group_never_exceeds_group_max_so_worker_processes_share_a_burst(tmp_path):
    queue = FileQueue(tmp_path)
    queue.group_max = 4  # process isolation sets PROCESS_BATCH_SIZE
    for k in range(3):
        queue.put_batch(_notifications(3, 3 * k), False)
    queue.put({"n": "after"})  # waits for the groups
    counts = sorted(names.message_count(n) for n in os.listdir(tmp_path / "incoming"))
    assert counts == [1, 3, 3, 3]


class CountingClock:
    """A clock for :func:`offload.paced` that moves ``step`` seconds per read."""

    def __init__(self, step):
        self.step, self.now = step, 0.0

    def __call__(self):
        self.now += self.step
        return self.now


def test_a_big_listing_is_sorted_in_paced_steps_that_leave_the_gil_to_the_hub(
        monkeypatch):
    from instances.spool import offload
    rests = []
    monkeypatch.setattr(offload, "_real_sleep", rests.append)
    monkeypatch.setattr(offload, "_clock", CountingClock(0.001))
    spool_names = [names.new_base() for _ in range(20_000)]
    spool_names.reverse()
    # in the threadpool, as the spool sorts
    assert offload.call(offload.sort_names, spool_names) == sorted(spool_names)
    # a check after each run sorted and every 256 names merged; the clock moves 1 ms a
    # read, so every other check finds PACE_WORK (2 ms) used up and pauses
    checks = 20_000 // offload.SORT_CHUNK + 20_000 // 256
    assert len(rests) >= checks // 3
    assert set(rests) == {offload.PACE_REST}
    rests.clear()
    assert offload.call(offload.sort_names, spool_names[:100]) == sorted(spool_names[:100])
    assert rests == []  # a small listing is one sorted(), no pause
    assert offload.sort_names(spool_names) == sorted(spool_names)
    assert rests == []  # nor on the hub's thread (a CLI's): there it would only be slower
