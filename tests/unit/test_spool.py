"""FileQueue on real files in tmp_path, inside one process (processes: tests/integration)."""
import json
import os
import stat
import struct
import subprocess
import sys
import time

import gevent
import gevent.event
import pytest

from instances.exceptions import InvalidConfigurationException
from instances.notification import Notification
from instances.queues import Closed, Empty, Full
from instances.spec import QUEUE_DEFAULTS
from instances.spool import FileQueue, OutputQueue, names
from instances.spool.layout import stats
from instances.spool.writer import SpoolWriter
from supervisor.testing import wait_for


def listing(directory, sub):
    """The sorted names in ``directory/sub``; none when it is gone (a closed queue removes
    its empty ``pending/<owner>/``)."""
    try:
        return sorted(os.listdir(os.path.join(str(directory), sub)))
    except FileNotFoundError:
        return []


def drain(queue):
    items = []
    while True:
        try:
            item = queue.get(block=False)
        except Empty:
            return items
        items.append(item)
        queue.done(item)


def pending_once_deleted(directory, queue, count=0):
    """The names in ``queue``'s ``pending/<owner>/`` once ``count`` are left: the files
    all of whose messages are settled are unlinked by a greenlet of the queue, after the
    outcome returned (at most 10 s)."""
    sub = "pending/" + queue.owner
    wait_for(lambda: len(listing(directory, sub)) == count, 10,
             message="the settled files are deleted")
    return listing(directory, sub)


def dead_pid():
    """A pid that certainly belonged to a process that is gone now (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def fake_owner(pid, start):
    return "%s-%d-%s" % (names.hostname(), pid, start)


def move_incoming_to_owner(directory, owner):
    """What a consumer that then crashed would have left behind."""
    owner_dir = os.path.join(str(directory), "pending", owner)
    os.makedirs(owner_dir, exist_ok=True)
    for name in listing(directory, "incoming"):
        os.rename(os.path.join(str(directory), "incoming", name), os.path.join(owner_dir, name))


@pytest.mark.timeout(10)
def test_messages_come_out_in_enqueue_order_across_singles_and_batches(tmp_path):
    queue = FileQueue(tmp_path)
    expected = []
    for i in range(30):
        if i % 3 == 0:
            queue.put_batch([{"n": "%d.a" % i}, {"n": "%d.b" % i}])
            expected += ["%d.a" % i, "%d.b" % i]
        else:
            queue.put({"n": str(i)})
            expected.append(str(i))
    assert [item["n"] for item in drain(queue)] == expected
    assert listing(tmp_path, "incoming") == []
    assert pending_once_deleted(tmp_path, queue) == []


@pytest.mark.timeout(10)
def test_batch_is_one_file_and_each_message_keeps_its_own_id(tmp_path):
    queue = FileQueue(tmp_path)
    ids = queue.put_batch([{"n": i} for i in range(3)])
    (name,) = listing(tmp_path, "incoming")
    assert ids == ["%s#%d" % (name, i) for i in range(3)]
    items = [queue.get(block=False) for _ in range(3)]
    assert [item["id"] for item in items] == ids
    assert listing(tmp_path, "pending/" + queue.owner) == [name]  # claimed whole
    for item in items[:2]:
        queue.done(item)
    assert listing(tmp_path, "pending/" + queue.owner) == [name]  # one still open
    queue.done(items[2])
    assert pending_once_deleted(tmp_path, queue) == []


@pytest.mark.timeout(10)
def test_notifications_come_back_as_notifications_with_their_message_id(tmp_path):
    queue = FileQueue(tmp_path)
    sent = Notification("doc_changed", "42", pid=7, received_at=1.5)
    message_id = queue.put(sent)
    got = queue.get(block=False)
    assert isinstance(got, Notification)
    assert (got.channel, got.payload, got.kind, got.pid, got.received_at) == (
        "doc_changed", "42", "notify", 7, 1.5)
    assert got.id == message_id
    with pytest.raises(TypeError):
        queue.put("not a dict")


@pytest.mark.timeout(10)
def test_failed_message_of_a_batch_goes_alone_to_errors_with_meta(tmp_path):
    queue = FileQueue(tmp_path)
    ids = queue.put_batch([{"n": 0}, {"n": 1}, {"n": 2}])
    first, bad, last = (queue.get(block=False) for _ in range(3))
    queue.done(first)
    queue.failed(bad, ValueError("boom"), "Traceback ...\nValueError: boom\n")
    queue.done(last)
    assert pending_once_deleted(tmp_path, queue) == []
    base = ids[0].split("#")[0]
    assert listing(tmp_path, "errors") == [base + "_1", base + "_1.meta"]
    with open(os.path.join(str(tmp_path), "errors", base + "_1")) as f:
        assert json.load(f) == {"n": 1, "id": ids[1]}
    with open(os.path.join(str(tmp_path), "errors", base + "_1.meta")) as f:
        meta = json.load(f)
    assert meta["error"] == "ValueError('boom')"
    assert meta["traceback"].endswith("ValueError: boom")
    assert (meta["attempts"], meta["owner"], meta["message_id"], meta["reason"]) == (
        1, queue.owner, ids[1], "failed")


@pytest.mark.timeout(10)
def test_requeued_error_comes_back_with_same_id_and_attempts_reset(tmp_path):
    queue = FileQueue(tmp_path)
    single_id = queue.put({"n": "single"})
    batch_ids = queue.put_batch([{"n": "b0"}, {"n": "b1"}])
    single, b0, b1 = (queue.get(block=False) for _ in range(3))
    queue.failed(single, "bad", None)
    queue.failed(b1, "bad", None)
    queue.done(b0)
    assert stats(str(tmp_path))["errors"] == 2
    assert queue.requeue(errors=True) == 2
    assert listing(tmp_path, "errors") == []
    again = [queue.get(block=False) for _ in range(2)]
    assert [(i["n"], i["id"]) for i in again] == [("single", single_id), ("b1", batch_ids[1])]
    assert [queue.attempts(i) for i in again] == [1, 1]


@pytest.mark.timeout(10)
def test_directories_and_files_are_owner_only_by_default_despite_umask(tmp_path):
    old = os.umask(0o022)
    try:
        queue = FileQueue(tmp_path / "q")
        queue.put({"n": 1})
        queue.failed(queue.get(block=False), "x", None)
        queue.put({"n": 2})
    finally:
        os.umask(old)
    root = str(tmp_path / "q")
    for sub in ("", "tmp", "incoming", "pending", "errors", "pending/" + queue.owner):
        assert stat.S_IMODE(os.stat(os.path.join(root, sub)).st_mode) == 0o700, sub
    for sub in ("incoming", "errors"):
        for name in listing(root, sub):
            assert stat.S_IMODE(os.stat(os.path.join(root, sub, name)).st_mode) == 0o600


@pytest.mark.timeout(10)
def test_group_permissions_are_configurable_and_not_cut_by_umask(tmp_path):
    old = os.umask(0o077)
    try:
        queue = FileQueue(tmp_path / "q", mode=0o750)
        queue.put({"n": 1})
    finally:
        os.umask(old)
    root = str(tmp_path / "q")
    assert stat.S_IMODE(os.stat(os.path.join(root, "incoming")).st_mode) == 0o750
    (name,) = listing(root, "incoming")
    assert stat.S_IMODE(os.stat(os.path.join(root, "incoming", name)).st_mode) == 0o640


@pytest.mark.timeout(20)
def test_files_of_a_dead_owner_go_back_to_incoming_with_one_more_attempt(tmp_path):
    FileQueue(tmp_path).put_batch([{"n": 0}, {"n": 1}])
    owner = fake_owner(dead_pid(), "1")
    move_incoming_to_owner(tmp_path, owner)
    queue = FileQueue(tmp_path)  # recovery runs at open
    assert not os.path.exists(os.path.join(str(tmp_path), "pending", owner))
    items = [queue.get(block=False) for _ in range(2)]
    assert [i["n"] for i in items] == [0, 1]
    assert [queue.attempts(i) for i in items] == [2, 2]


@pytest.mark.timeout(10)
def test_a_recovered_batch_comes_back_split_so_a_poison_message_goes_to_errors_alone(
        tmp_path):
    ids = FileQueue(tmp_path).put_batch([{"n": 0}, {"n": 1}, {"n": 2}])
    owner = fake_owner(dead_pid(), "1")
    move_incoming_to_owner(tmp_path, owner)
    queue = FileQueue(tmp_path, max_attempts=2)  # recovery at open splits the batch
    assert len(listing(tmp_path, "incoming")) == 3
    items = [queue.get(block=False) for _ in range(3)]
    assert [i["n"] for i in items] == [0, 1, 2]
    assert [i["id"] for i in items] == ids  # the ids survive the split
    assert [queue.attempts(i) for i in items] == [2, 2, 2]
    queue.done(items[0])
    queue.done(items[2])  # message 1 killed its consumer again: it alone goes to errors/
    pending_once_deleted(tmp_path, queue, 1)  # the crash came after 0 and 2 were deleted
    os.rename(os.path.join(str(tmp_path), "pending", queue.owner), os.path.join(str(tmp_path), "pending", owner))
    FileQueue(tmp_path, max_attempts=2)
    errors = listing(tmp_path, "errors")
    assert len(errors) == 2  # message 1 and its .meta, not its neighbours
    message = [n for n in errors if not n.endswith(".meta")][0]
    with open(os.path.join(str(tmp_path), "errors", message)) as f:
        assert json.load(f) == {"n": 1, "id": ids[1]}


@pytest.mark.timeout(10)
def test_a_recovered_batch_of_twelve_comes_back_in_batch_order(tmp_path):
    ids = FileQueue(tmp_path).put_batch([{"n": n} for n in range(12)])
    move_incoming_to_owner(tmp_path, fake_owner(dead_pid(), "1"))
    queue = FileQueue(tmp_path)  # recovery splits the batch into 12 files
    assert len(listing(tmp_path, "incoming")) == 12
    items = drain(queue)
    assert [i["n"] for i in items] == list(range(12))  # not 0, 1, 10, 11, 2, ...
    assert [i["id"] for i in items] == ids
    ids = queue.put_batch([{"n": n} for n in range(12)])  # a failed member, requeued
    items = [queue.get(block=False) for _ in range(12)]
    for item in items:
        queue.failed(item, "x", None)
    queue.requeue()
    assert [i["id"] for i in drain(queue)] == ids


@pytest.mark.timeout(10)
def test_a_reused_pid_is_not_mistaken_for_the_live_owner(tmp_path):
    FileQueue(tmp_path).put({"n": 0})
    reused = fake_owner(os.getpid(), "12345")  # our pid, but another start time
    alive = fake_owner(os.getppid(), names.process_start_time(os.getppid()))
    other_host = "elsewhere-1-1"
    move_incoming_to_owner(tmp_path, reused)
    for owner in (alive, other_host):
        os.makedirs(os.path.join(str(tmp_path), "pending", owner))
        with open(os.path.join(str(tmp_path), "pending", owner, "x"), "w") as f:
            f.write("{}")
    queue = FileQueue(tmp_path)
    assert queue.get(block=False)["n"] == 0
    pending = stats(str(tmp_path))["pending"]
    assert pending[alive] == 1 and pending[other_host] == 1 and reused not in pending


@pytest.mark.timeout(10)
def test_an_owner_id_names_its_boot_and_pid_namespace_and_only_this_one_is_judged(
        tmp_path):
    queue = FileQueue(tmp_path)
    assert "-%s-%d-" % (names.scope(), os.getpid()) in queue.owner
    pid = dead_pid()
    other_ns = "%s-%s.1-%d-1" % (names.hostname(), names.boot_id(), pid)
    this_ns = "%s-%s-%d-1" % (names.hostname(), names.scope(), pid)
    other_boot = "f" * 12 if names.boot_id() != "f" * 12 else "e" * 12
    rebooted = "%s-%s.%s-%d-1" % (names.hostname(), other_boot, names.pid_namespace(),
                                  os.getpid())
    assert names.owner_alive(other_ns)  # the same pid in another container: not ours
    assert not names.owner_alive(this_ns)
    assert not names.owner_alive(rebooted)  # every process of another boot is gone
    assert names.owner_alive(queue.owner)
    for owner in (other_ns, this_ns, rebooted):
        queue.put({"owner": owner})
        move_incoming_to_owner(tmp_path, owner)
    assert queue.recover()[0] == 2
    assert sorted(stats(str(tmp_path))["pending"]) == sorted([other_ns, queue.owner])


@pytest.mark.timeout(10)
def test_claims_of_an_owner_that_dies_while_we_run_come_back_at_the_next_sweep(
        tmp_path, monkeypatch):
    monkeypatch.setattr(FileQueue, "sweep_interval", 0.05)
    queue = FileQueue(tmp_path)
    queue.put({"n": 0})
    move_incoming_to_owner(tmp_path, fake_owner(dead_pid(), "1"))
    item = queue.get(timeout=5)  # no reopen needed
    assert item["n"] == 0 and queue.attempts(item) == 2


@pytest.mark.timeout(10)
def test_outcomes_tolerate_a_claimed_file_that_vanished(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put({"n": 0})
    queue.put({"n": 1})
    first, second = queue.get(block=False), queue.get(block=False)
    pending = os.path.join(str(tmp_path), "pending", queue.owner)
    for name in os.listdir(pending):  # an operator's `queue requeue --owner` took them
        os.rename(os.path.join(pending, name), os.path.join(str(tmp_path), "incoming", name))
    queue.failed(first, "ValueError('x')", None)  # raised FileNotFoundError
    queue.done(second)
    queue.close()
    message = [n for n in listing(tmp_path, "errors") if not n.endswith(".meta")]
    assert len(message) == 1
    with open(os.path.join(str(tmp_path), "errors", message[0])) as f:
        assert json.load(f)["n"] == 0


@pytest.mark.timeout(20)
def test_message_whose_consumers_keep_dying_goes_to_errors_after_max_attempts(tmp_path):
    FileQueue(tmp_path, max_attempts=3).put({"n": 0})
    owner = fake_owner(dead_pid(), "1")
    for delivery in (1, 2):
        queue = FileQueue(tmp_path, max_attempts=3)
        assert queue.attempts(queue.get(block=False)) == delivery
        os.rename(os.path.join(str(tmp_path), "pending", queue.owner), os.path.join(str(tmp_path), "pending", owner))
    queue = FileQueue(tmp_path, max_attempts=3)
    assert queue.attempts(queue.get(block=False)) == 3
    os.rename(os.path.join(str(tmp_path), "pending", queue.owner), os.path.join(str(tmp_path), "pending", owner))
    queue = FileQueue(tmp_path, max_attempts=3)
    with pytest.raises(Empty):
        queue.get(block=False)
    (name, meta_name) = listing(tmp_path, "errors")
    with open(os.path.join(str(tmp_path), "errors", meta_name)) as f:
        meta = json.load(f)
    assert (meta["reason"], meta["attempts"], meta["owner"]) == ("max_attempts", 3, owner)


@pytest.mark.timeout(20)
def test_stale_tmp_files_are_removed_at_open_and_never_delivered(tmp_path):
    FileQueue(tmp_path)
    tmp = os.path.join(str(tmp_path), "tmp")
    dead = names.tmp_name(names.new_base(), fake_owner(dead_pid(), "1"))
    old_foreign, fresh_foreign = "old.msg", "fresh.msg"
    for name in (dead, old_foreign, fresh_foreign):
        with open(os.path.join(tmp, name), "w") as f:
            f.write('{"n": "partial"}')
    os.utime(os.path.join(tmp, old_foreign), (1, 1))
    queue = FileQueue(tmp_path)
    assert listing(tmp_path, "tmp") == [fresh_foreign]  # may still be in the making
    with pytest.raises(Empty):
        queue.get(block=False)


@pytest.mark.timeout(10)
def test_undecodable_file_goes_to_errors_and_the_next_one_is_delivered(tmp_path):
    queue = FileQueue(tmp_path)
    writer = SpoolWriter(str(tmp_path), queue.owner)
    writer.put_file(b"", "incoming", names.new_base())  # truncated by a crash
    queue.put({"n": "good"})
    assert queue.get(block=False)["n"] == "good"
    name, meta_name = listing(tmp_path, "errors")
    with open(os.path.join(str(tmp_path), "errors", meta_name)) as f:
        assert json.load(f)["reason"] == "undecodable"


def _meta(directory, name):
    with open(os.path.join(str(directory), "errors", name + ".meta")) as f:
        return json.load(f)


@pytest.mark.timeout(20)
def test_deeply_nested_json_goes_to_errors_and_the_queue_opens_again(tmp_path):
    queue = FileQueue(tmp_path)
    writer = SpoolWriter(str(tmp_path), queue.owner)
    deep = names.new_base()
    writer.put_file(b"[" * 200000 + b"]" * 200000, "incoming", deep)
    queue.put({"n": "good"})
    assert queue.get(block=False)["n"] == "good"  # no RecursionError out of get()
    meta = _meta(tmp_path, deep)
    assert meta["reason"] == "undecodable" and "nested too deeply" in meta["error"]
    # The same file claimed by a consumer that then died: the next open recovers it.
    stuck = names.new_base()
    writer.put_file(b"[" * 200000 + b"]" * 200000, "incoming", stuck)
    move_incoming_to_owner(tmp_path, fake_owner(dead_pid(), "1"))
    again = FileQueue(tmp_path)  # raised RecursionError: the queue could never open
    with pytest.raises(Empty):
        again.get(block=False)
    assert _meta(tmp_path, stuck)["reason"] == "undecodable"


@pytest.mark.timeout(10)
def test_a_file_over_max_file_bytes_goes_to_errors_unread_and_put_refuses_one(
        tmp_path, monkeypatch):
    monkeypatch.setattr(FileQueue, "max_file_bytes", 1000)
    queue = FileQueue(tmp_path)
    writer = SpoolWriter(str(tmp_path), queue.owner)
    big = names.new_base()
    writer.put_file(json.dumps({"blob": "x" * 2000}).encode(), "incoming", big)
    queue.put({"n": "good"})
    assert queue.get(block=False)["n"] == "good"
    meta = _meta(tmp_path, big)
    assert meta["reason"] == "oversized" and "max_file_bytes=1000" in meta["error"]
    with pytest.raises(ValueError, match="max_file_bytes=1000"):
        queue.put({"blob": "x" * 2000})
    with pytest.raises(ValueError, match="max_file_bytes"):
        queue.put_batch([{"blob": "x" * 600}, {"blob": "x" * 600}])
    assert listing(tmp_path, "incoming") == [] and listing(tmp_path, "tmp") == []


@pytest.mark.timeout(10)
def test_put_wakes_a_blocked_get_without_waiting_for_a_poll(tmp_path):
    queue = FileQueue(tmp_path)
    queue.poll_interval = 3600.0  # only a wake-up can deliver in time
    events = []

    def consume():
        item = queue.get()
        events.append(("got", item["n"]))

    getter = gevent.spawn(consume)
    wait_for(lambda: queue.waiting == 1, timeout=5)
    events.append(("put", 1))
    queue.put({"n": 1})
    getter.join(timeout=5)
    assert events == [("put", 1), ("got", 1)]


@pytest.mark.timeout(10)
def test_a_put_while_the_getter_looks_at_incoming_still_wakes_it(tmp_path, monkeypatch):
    """The look yields (the listing runs in the threadpool): a put made then must not be
    lost to the wait that follows the empty look (it was: the getter slept a whole poll)."""
    queue = FileQueue(tmp_path)
    queue.poll_interval = queue.watched_poll_interval = 3600.0
    look = queue._claims.claim_next
    looks = []

    def look_while_a_put_comes():
        found = look()
        if not looks:  # the first, empty look: the put lands before it returns
            looks.append(found)
            queue.put({"n": 1})
            return False
        return found

    monkeypatch.setattr(queue._claims, "claim_next", look_while_a_put_comes)
    assert gevent.spawn(queue.get).get(timeout=5)["n"] == 1
    assert looks == [False]


@pytest.mark.timeout(10)
def test_put_on_another_queue_object_of_the_same_directory_wakes_its_getter(tmp_path):
    consumer, producer = FileQueue(tmp_path), FileQueue(tmp_path)
    consumer.poll_interval = 3600.0
    getter = gevent.spawn(consumer.get)
    wait_for(lambda: consumer.waiting == 1, timeout=5)
    producer.put({"n": 1})
    assert getter.get(timeout=5)["n"] == 1


@pytest.mark.timeout(10)
def test_a_watcher_wakes_a_blocked_get_from_another_thread(tmp_path):
    queue = FileQueue(tmp_path)
    callbacks = []
    queue.attach_watcher(callbacks.append)
    queue.poll_interval = 3600.0
    getter = gevent.spawn(queue.get)
    wait_for(lambda: queue.waiting == 1, timeout=5)
    SpoolWriter(str(tmp_path), "elsewhere-1-1").write(b'{"n": 1}')  # no local wake
    thread = gevent.get_hub().threadpool.spawn(callbacks[0])  # as inotify's thread would
    thread.get(timeout=5)
    assert getter.get(timeout=5)["n"] == 1


@pytest.mark.timeout(10)
def test_put_listeners_hear_every_file_this_process_puts_into_incoming(tmp_path):
    queue, other = FileQueue(tmp_path / "q"), FileQueue(tmp_path / "q")
    heard = []

    def listener():
        heard.append(len(os.listdir(tmp_path / "q" / "incoming")))

    queue.add_put_listener(listener)
    other.put({"n": 1})  # another FileQueue of the same directory
    queue.put_batch([{"n": 2}, {"n": 3}])
    assert heard == [1, 2]  # called once the file is in incoming/
    queue.failed(queue.get(block=False), ValueError("no"), "")
    queue.requeue()  # errors/ back to incoming/
    assert heard == [1, 2, 2]
    source = FileQueue(tmp_path / "p", output=OutputQueue(tmp_path / "q"))
    source.put({"n": 4})
    source.done(source.get(block=False))  # forwarded into q's incoming/
    assert heard == [1, 2, 2, 3]
    queue.remove_put_listener(listener)
    other.put({"n": 5})
    assert heard == [1, 2, 2, 3]


@pytest.mark.timeout(10)
def test_get_times_out_with_empty_and_an_interrupted_get_loses_nothing(tmp_path):
    queue = FileQueue(tmp_path)
    with pytest.raises(Empty):
        queue.get(timeout=0.01)
    getter = gevent.spawn(queue.get)
    wait_for(lambda: queue.waiting == 1, timeout=5)
    getter.kill(timeout=5)
    queue.put({"n": 1})
    assert queue.get(timeout=5)["n"] == 1


@pytest.mark.timeout(10)
def test_close_wakes_getters_and_gives_unhandled_claims_back(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch([{"n": 0}, {"n": 1}])  # claimed whole by the first get
    queue.put_batch([{"n": 2}, {"n": 3}])
    first, second = queue.get(block=False), queue.get(block=False)
    third = queue.get(block=False)  # claims the second file; one message left in it
    other = FileQueue(tmp_path)
    other.poll_interval = 3600.0
    outcome = []

    def blocked_get():
        try:
            other.get()
        except Closed:
            outcome.append("closed")

    blocked = gevent.spawn(blocked_get)
    wait_for(lambda: other.waiting == 1, timeout=5)
    other.close()
    blocked.join(timeout=5)
    assert outcome == ["closed"]
    queue.close()
    with pytest.raises(Closed):
        queue.get(block=False)
    with pytest.raises(Closed):
        queue.put({"n": 9})
    assert len(listing(tmp_path, "pending/" + queue.owner)) == 2  # messages in handlers
    queue.done(first)
    queue.failed(second, "x", None)
    assert len(pending_once_deleted(tmp_path, queue, 1)) == 1
    queue.done(third)
    assert len(listing(tmp_path, "incoming")) == 1  # what is left of the batch, given back
    assert [i["n"] for i in drain(FileQueue(tmp_path))] == [3]  # the done one is not


@pytest.mark.timeout(10)
def test_a_clean_close_gives_back_only_the_unfinished_messages_with_attempts_unchanged(
        tmp_path):
    queue = FileQueue(tmp_path)
    ids = queue.put_batch([{"n": n} for n in range(4)])
    queue.put({"n": 4})
    first, second, third = (queue.get(block=False) for _ in range(3))
    queue.done(first)
    queue.release(second)  # its handler was killed: handed out again, before the rest
    assert queue.get(block=False) is second
    queue.close()  # the fourth message (never handed out) waits for second and third
    queue.release(second)
    assert listing(tmp_path, "pending/" + queue.owner) != []
    queue.release(third)
    assert listing(tmp_path, "pending/" + queue.owner) == []
    with pytest.raises(ValueError):
        queue.release(third)
    assert not any("." in name for name in listing(tmp_path, "incoming"))  # no attempt
    again = FileQueue(tmp_path)
    items = [again.get(block=False) for _ in range(4)]
    assert [i["n"] for i in items] == [1, 2, 3, 4]  # the done message is not sent again
    assert [i["id"] for i in items[:3]] == ids[1:]
    assert [again.attempts(i) for i in items] == [1, 1, 1, 1]


@pytest.mark.timeout(10)
def test_a_pool_stop_that_kills_a_handler_gives_its_claim_back_unchanged(tmp_path):
    from instances.processors import ProcessorPool

    queue = FileQueue(tmp_path)
    ids = queue.put_batch([{"n": 0}, {"n": 1}])
    started = gevent.event.Event()

    def handler(item):
        started.set()
        gevent.sleep(3600)

    pool = ProcessorPool(queue, handler, 1, 1)
    pool.start()
    assert started.wait(5)
    assert pool.stop(0.1) is False  # the handler was killed
    assert queue.qsize() == 2  # the killed handler's message is ready again, first
    queue.close()
    assert listing(tmp_path, "pending/" + queue.owner) == []
    assert listing(tmp_path, "incoming") == [ids[0].partition("#")[0]]  # unchanged name
    again = FileQueue(tmp_path)
    items = drain(again)
    assert [i["id"] for i in items] == ids


@pytest.mark.timeout(10)
def test_done_with_an_output_queue_sends_the_message_on_with_its_id(tmp_path):
    queue = FileQueue.from_piper_options(queue_in_dir=tmp_path / "in",
                                         queue_out_dir=tmp_path / "out")
    message_id = queue.put({"n": 1})
    queue.put({"n": 2})
    queue.put({"n": 3})
    queue.done(queue.get(block=False))
    queue.forward(queue.get(block=False), [{"m": "a"}, {"m": "b"}])
    queue.forward(queue.get(block=False), None)  # filtered out
    out = drain(FileQueue(tmp_path / "out"))
    assert [(i.get("n"), i.get("m")) for i in out] == [(1, None), (None, "a"), (None, "b")]
    assert out[0]["id"] == message_id
    assert stats(str(tmp_path / "in"))["incoming"] == 0


@pytest.mark.timeout(10)
def test_output_back_pressure_blocks_the_handler_until_the_next_queue_drains(tmp_path):
    queue = FileQueue.from_piper_options(queue_in_dir=tmp_path / "in",
                                         queue_out_dir=tmp_path / "out",
                                         queue_out_limit=2, queue_out_wait=0.01)
    for n in range(3):
        queue.put({"n": n})
    queue.done(queue.get(block=False))
    queue.done(queue.get(block=False))
    third = queue.get(block=False)
    forwarder = gevent.spawn(queue.done, third)
    wait_for(lambda: stats(str(tmp_path / "in"))["pending"][queue.owner] == 1, timeout=5)
    assert not forwarder.ready() and stats(str(tmp_path / "out"))["incoming"] == 2
    next_queue = FileQueue(tmp_path / "out")
    next_queue.done(next_queue.get(block=False))
    forwarder.get(timeout=5)
    assert stats(str(tmp_path / "out"))["incoming"] == 2
    with pytest.raises(Full):
        SpoolWriter(str(tmp_path / "out"), queue.owner).write(b"{}", limit=2, block=False)


@pytest.mark.timeout(10)
def test_a_file_queue_built_directly_takes_the_specs_spool_defaults_and_rules(tmp_path):
    queue = FileQueue(tmp_path / "a", output=OutputQueue(tmp_path / "out"))
    assert (queue.fsync, queue.mode, queue.max_attempts) == tuple(
        QUEUE_DEFAULTS[k] for k in ("fsync", "mode", "max_attempts"))
    assert (queue.output.limit, queue.output.wait) == (
        QUEUE_DEFAULTS["queue_out_limit"], QUEUE_DEFAULTS["queue_out_wait"])
    assert stat.S_IMODE(os.stat(tmp_path / "a" / "incoming").st_mode) == QUEUE_DEFAULTS["mode"]
    partial = FileQueue.from_spec({"spool": str(tmp_path / "b"), "max_attempts": 2})
    assert (partial.max_attempts, partial.fsync) == (2, QUEUE_DEFAULTS["fsync"])
    for field, value in (("max_attempts", 0), ("fsync", "yes"), ("mode", "rwx")):
        with pytest.raises(InvalidConfigurationException) as caught:
            FileQueue(tmp_path / "c", **{field: value})
        assert (caught.value.field, caught.value.value) == (field, value)


@pytest.mark.timeout(10)
def test_piper_options_and_owner_labels_are_validated(tmp_path):
    with pytest.raises(InvalidConfigurationException) as caught:
        FileQueue.from_piper_options(queue_in_dir=tmp_path, queue_out_dir=tmp_path / "o",
                                     queue_out_limit="lots")
    assert caught.value.field == "queue_out_limit" and caught.value.value == "lots"
    with pytest.raises(InvalidConfigurationException):
        OutputQueue(tmp_path, wait=-1)
    with pytest.raises(InvalidConfigurationException) as caught:
        FileQueue(tmp_path, owner="a/b")
    assert caught.value.field == "owner"
    labelled = FileQueue(tmp_path, owner="worker-1")
    assert labelled.owner.startswith("worker-1@") and labelled.owner.endswith(
        "-%d-%s" % (os.getpid(), names.process_start_time(os.getpid())))


@pytest.mark.timeout(10)
def test_stats_count_every_directory_and_the_oldest_age(tmp_path):
    queue = FileQueue(tmp_path, fsync=True)
    queue.put({"n": 0})
    queue.put_batch([{"n": 1}, {"n": 2}])
    queue.put({"n": 3})
    queue.failed(queue.get(block=False), "x", None)
    queue.get(block=False)
    counts = queue.stats()
    assert counts["incoming"] == 1 and counts["errors"] == 1 and counts["tmp"] == 0
    assert counts["pending"] == {queue.owner: 1}
    assert 0 <= counts["oldest_age"] < 60
    assert queue.qsize() == 2  # one claimed message waiting + one file in incoming/


@pytest.mark.timeout(10)
def test_closing_one_queue_object_does_not_break_another_of_the_same_process(tmp_path):
    consumer, inspector = FileQueue(tmp_path), FileQueue(tmp_path)
    assert consumer.owner == inspector.owner  # one process, one owner id
    inspector.close()
    consumer.put({"n": 1})
    consumer.done(consumer.get(block=False))
    pending_once_deleted(tmp_path, consumer)
    os.rmdir(os.path.join(str(tmp_path), "pending", consumer.owner))  # an operator tidying up
    consumer.put({"n": 2})
    assert consumer.get(block=False)["n"] == 2  # claimed although its pending dir had gone


@pytest.mark.timeout(10)
def test_a_spec_queue_in_perms_and_wait_are_the_spool_mode_and_poll_interval(tmp_path):
    options = dict(QUEUE_DEFAULTS, spool=str(tmp_path / "in"), queue_in_perms=0o750,
                   queue_in_wait=0.5, queue_out_dir=str(tmp_path / "out"))
    queue = FileQueue.from_spec(options)
    try:
        assert (queue.mode, queue.poll_interval) == (0o750, 0.5)
        for directory in ("in", "in/incoming", "in/pending", "out/incoming"):
            assert stat.S_IMODE(os.stat(tmp_path / directory).st_mode) == 0o750, directory
    finally:
        queue.close()
    default = FileQueue.from_spec(dict(QUEUE_DEFAULTS, spool=str(tmp_path / "other")))
    try:
        assert (default.mode, default.poll_interval) == (0o700, FileQueue.poll_interval)
    finally:
        default.close()


def test_a_bad_queue_in_wait_is_refused_naming_it(tmp_path):
    with pytest.raises(InvalidConfigurationException) as caught:
        FileQueue.from_piper_options(tmp_path, queue_in_wait=-1)
    assert caught.value.field == "queue_in_wait"


@pytest.mark.timeout(20)
def test_a_failing_handler_is_retried_with_doubling_delays_before_errors(tmp_path):
    from instances.processors import ProcessorPool

    assert (ProcessorPool.retries, ProcessorPool.retry_jitter) == (3, 0.1)  # DESIGN's
    queue = FileQueue(tmp_path)
    queue.put({"n": "blip"})  # fails twice (a database blip), then works
    queue.put({"n": "poison"})  # always fails
    tries = {"blip": [], "poison": []}
    done = gevent.event.Event()

    def handler(item):
        tries[item["n"]].append(time.monotonic())
        if item["n"] == "poison" or len(tries["blip"]) <= 2:
            if len(tries["poison"]) == 4:
                done.set()
            raise ValueError("db down")

    pool = ProcessorPool(queue, handler, 1, 1)
    pool.retry_delay = 0.05
    pool.start()
    try:
        assert done.wait(15)
        wait_for(lambda: pool.failed == 1, 5)
    finally:
        pool.stop(5)
    assert len(tries["blip"]) == 3 and len(tries["poison"]) == 4  # 1 + 3 retries
    gaps = [b - a for a, b in zip(tries["poison"], tries["poison"][1:], strict=False)]
    assert all(gap >= 0.9 * 0.05 * 2 ** k for k, gap in enumerate(gaps)), gaps
    assert pool.processed == 1 and pool.retried == 2 + 3
    message = [n for n in listing(tmp_path, "errors") if not n.endswith(".meta")]
    assert len(message) == 1 and _meta(tmp_path, message[0])["error"] == \
        "ValueError('db down')"


@pytest.mark.timeout(10)
def test_a_stop_during_a_retry_wait_gives_the_message_back_not_to_errors(tmp_path):
    from instances.processors import ProcessorPool

    queue = FileQueue(tmp_path)
    ids = [queue.put({"n": 0})]
    failed_once = gevent.event.Event()

    def handler(item):
        failed_once.set()
        raise ValueError("db down")

    pool = ProcessorPool(queue, handler, 1, 1)
    pool.retry_delay = 3600.0
    pool.start()
    assert failed_once.wait(5)
    wait_for(lambda: pool.retried == 1, 5)
    assert pool.stop(5) is True  # the wait is interrupted at once, nothing killed
    queue.close()
    assert listing(tmp_path, "errors") == []
    assert [i["id"] for i in drain(FileQueue(tmp_path))] == ids


@pytest.mark.timeout(10)
def test_requeue_replays_errors_through_a_filter(tmp_path):
    queue = FileQueue(tmp_path)
    for n in range(3):
        queue.put({"n": n})
    items = [queue.get(block=False) for _ in range(3)]
    queue.failed(items[0], ValueError("db down"), None)
    queue.failed(items[1], KeyError("payload"), None)
    queue.failed(items[2], ValueError("db down again"), None)
    SpoolWriter(str(tmp_path), queue.owner).put_file(b"{", "incoming", names.new_base())
    with pytest.raises(Empty):
        queue.get(block=False)  # the undecodable file goes to errors/
    assert queue.error_count() == 4
    assert queue.requeue(error_contains="db down") == 2
    assert queue.requeue(reason="failed") == 1  # the KeyError; the undecodable one stays
    assert queue.error_count() == 1
    assert sorted(i["n"] for i in drain(queue)) == [0, 1, 2]


FIELDS = ["channel", "payload", "kind", "pid", "received_at", "id"]


@pytest.mark.timeout(10)
def test_a_batch_of_notifications_is_stored_as_columns_and_comes_back_the_same(tmp_path):
    queue = FileQueue(tmp_path)
    sent = [Notification("ch", "p%d" % i, "notify", 7, 1700000000.5 + i / 3) for i in range(3)]
    sent.append(Notification(None, "", Notification.CATCH_UP, 0, 1700000009.0))
    ids = queue.put_batch(sent)
    (name,) = listing(tmp_path, "incoming")
    head, _, appended = (tmp_path / "incoming" / name).read_bytes().partition(b"\n")
    stored = json.loads(head)
    assert stored["pgvisor_columns"] == FIELDS and stored["count"] == 4
    assert stored["columns"][2] == ["notify"] * 3 + ["catch_up"]
    assert stored["columns"][1] == {"appended": 9}  # the payloads, NUL between two
    assert stored["columns"][4] == {"float64": 32}  # then the receipt times, packed
    assert appended[:9] == b"p0\x00p1\x00p2\x00" and len(appended) == 9 + 32
    got = drain(queue)
    assert [tuple(n)[:5] for n in got] == [tuple(n)[:5] for n in sent]  # times exact
    assert [n.id for n in got] == ids and all(isinstance(n, Notification) for n in got)


@pytest.mark.timeout(10)
def test_a_columns_batch_keeps_every_field_type_a_notification_may_have(tmp_path):
    queue = FileQueue(tmp_path)
    sent = [Notification("a", "x", "notify", 1, 5, "given-id"),  # an int time, an id
            Notification("a", None, "notify", None, 6.25),
            Notification("b", "\u00e9\"\\", "notify", 2, float("inf"), "")]
    ids = queue.put_batch(sent)
    got = drain(queue)
    assert [tuple(n)[:5] for n in got] == [tuple(n)[:5] for n in sent]
    assert [type(n.received_at) for n in got] == [int, float, float]
    assert [n.id for n in got] == ["given-id", ids[1], ids[2]]  # a set id is kept
    odd = [Notification("a", "nul\x00inside", "notify", 1, 1.0),  # no appended section
           Notification("a", "\udc80", "notify", 1, 1.0),  # a lone surrogate
           Notification("a", "\u00e9t\u00e9 \u2603\n", "notify", 1, 1.0)]
    for batch in ([odd[0], odd[2]], [odd[1], odd[2]], [odd[2], odd[2]], odd[2:] * 3):
        queue.put_batch(batch)
        assert [n.payload for n in drain(queue)] == [n.payload for n in batch]
    same = Notification("c", "p", "notify", 1, 1.0)
    ids = queue.put_batch([same, same])  # every column {"same": ...}
    got = drain(queue)
    assert [tuple(n)[:5] for n in got] == [tuple(same)[:5]] * 2
    assert [n.id for n in got] == ids and ids[0] != ids[1]


@pytest.mark.timeout(10)
def test_a_rows_batch_of_an_older_version_is_still_read(tmp_path):
    queue = FileQueue(tmp_path)
    base = names.new_base(2)
    rows = [["ch", "p0", "notify", 1, 1.5, None], ["ch", "p1", "notify", 1, 2.5, "kept"]]
    content = json.dumps({"pgvisor_rows": FIELDS, "base": base, "rows": rows}).encode()
    SpoolWriter(str(tmp_path), queue.owner).put_file(content, "incoming", base)
    got = drain(queue)
    assert [tuple(n) for n in got] == [("ch", "p0", "notify", 1, 1.5, base + "#0"),
                                       ("ch", "p1", "notify", 1, 2.5, "kept")]


def _columns(*columns, count=1, fields=FIELDS):
    return json.dumps({"pgvisor_columns": fields, "count": count,
                       "columns": list(columns)}).encode()


_GOOD = [{"same": "ch"}, ["p"], {"same": "notify"}, {"same": 1}, [0.5], {"same": None}]
#: Two messages whose payloads are appended: 3 bytes, "a" NUL "b".
_TWO = [_GOOD[0], {"appended": 3}, _GOOD[2], _GOOD[3], [0.5, 1.5], _GOOD[5]]


#: The same, with the times appended after the payloads.
_TIMES = _TWO[:4] + [{"float64": 16}, _TWO[5]]
_DOUBLES = struct.pack("<dd", 0.5, 1.5)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("content", [
    _columns(*_TWO, count=2) + b"\na\x00b",
    _columns(*_TIMES, count=2) + b"\na\x00b" + _DOUBLES,
    _columns(_TWO[0], ["a", "b"], *_TWO[2:4], {"float64": "AAAAAAAA4D8AAAAAAAD4Pw=="},
             _TWO[5], count=2) + b"\n",  # the times in base64, no section, a newline
], ids=["payloads", "payloads and times", "base64 times"])
def test_a_columns_file_with_an_appended_section_is_read(tmp_path, content):
    queue = FileQueue(tmp_path)
    base = names.new_base(2)
    SpoolWriter(str(tmp_path), queue.owner).put_file(content, "incoming", base)
    assert [tuple(n) for n in drain(queue)] == [("ch", "a", "notify", 1, 0.5, base + "#0"),
                                               ("ch", "b", "notify", 1, 1.5, base + "#1")]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("content", [
    b'{"pgvisor_rows": ["channel"], "rows": []}',
    b'{"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"], "rows": 3}',
    b'{"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"], '
    b'"rows": [["ch", "p", "notify", 1, 0.0]]}',
    b'{"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"], '
    b'"rows": [["ch", 5, "notify", 1, 0.0, null]]}',
    b'{"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"], '
    b'"rows": [["ch", "p", "notify", true, 0.0, null]]}',
    b'{"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"], '
    b'"rows": [["ch", "p", null, 1, 0.0, null]]}',
    _columns(*_GOOD, fields=["channel"]),
    _columns(*_GOOD[:5]),
    _columns(*_GOOD, count=-1),
    _columns(*_GOOD, count="1"),
    _columns(*_GOOD, count=2),  # a list column of one value for two messages
    _columns(_GOOD[0], [5], *_GOOD[2:]),  # a payload that is not a string
    _columns(*_GOOD[:3], {"same": True}, *_GOOD[4:]),  # a bool pid
    _columns(*_GOOD[:2], {"same": None}, *_GOOD[3:]),  # a null kind
    _columns(*_GOOD[:4], [True], _GOOD[5]),  # a bool time
    _columns(*_GOOD[:4], {"float64": "AAAA"}, _GOOD[5]),  # 3 bytes for 8
    _columns(*_GOOD[:4], {"float64": "not base64!"}, _GOOD[5]),
    _columns(_GOOD[0], {"float64": "AAAAAAAAAAA="}, *_GOOD[2:]),  # packed, not a time
    _columns(_GOOD[0], {"other": 1}, *_GOOD[2:]),
    _columns(_GOOD[0], "p", *_GOOD[2:]),
    _columns(*_TWO, count=2) + b"\na\x00bc",  # 4 bytes, the column says 3
    _columns(*_TWO, count=2) + b"\nabc",  # one payload for two messages
    _columns(*_TWO[:1], {"appended": 3}, *_TWO[2:], count=2) + b"\n\xff\x00b",  # UTF-8
    _columns(*_TWO, count=2),  # the section is missing
    _columns(*_TWO[:1], {"appended": "3"}, *_TWO[2:], count=2) + b"\na\x00b",
    _columns(*_TIMES, count=2) + b"\na\x00b" + _DOUBLES[:8],  # one time for two
    _columns(*_TIMES[:4], {"float64": 8}, _TIMES[5], count=2) + b"\na\x00b" + _DOUBLES,
    _columns(*_TIMES, count=2) + b"\na\x00b" + _DOUBLES + b"x",  # a byte too many
    _columns(*_GOOD) + b"\n{}",  # a section nobody announced
    b'{"pgvisor_rows": [], "rows": []}\n{}',
])
def test_a_bad_rows_or_columns_file_goes_to_errors_as_undecodable(tmp_path, content):
    queue = FileQueue(tmp_path)
    SpoolWriter(str(tmp_path), queue.owner).put_file(content, "incoming", names.new_base(2))
    queue.put({"n": 1})
    assert queue.get(block=False)["n"] == 1  # the bad file is set aside, the queue goes on
    (meta,) = [n for n in listing(tmp_path, "errors") if n.endswith(".meta")]
    assert json.loads((tmp_path / "errors" / meta).read_text())["reason"] == "undecodable"


@pytest.mark.timeout(10)
def test_recovery_splits_a_columns_batch_keeping_each_message_id(tmp_path):
    owner = fake_owner(dead_pid(), "1")
    first = FileQueue(tmp_path)
    ids = first.put_batch([Notification("ch", "p%d" % i, "notify", 1, 1.0) for i in range(3)])
    first.close()
    move_incoming_to_owner(tmp_path, owner)
    second = FileQueue(tmp_path)  # recovery: three files, one per message
    assert len(listing(tmp_path, "incoming")) == 3
    got = drain(second)
    assert [n.payload for n in got] == ["p0", "p1", "p2"] and [n.id for n in got] == ids


def _notes(prefix, count):
    return [Notification("ch", "%s%d" % (prefix, i), "notify", 1, 1.0) for i in range(count)]


@pytest.mark.timeout(10)
def test_chunks_settle_at_once_what_did_not_fail_or_go_back(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch(_notes("p", 6))
    queue.put_batch(_notes("q", 2))
    chunk = queue.get_chunk(False, split=2)  # half of the claimed file
    assert [n.payload for n in chunk] == ["p0", "p1", "p2"]
    queue.release(chunk[1])  # first in line again
    queue.done_many(2)  # p0 and p2
    chunk = queue.get_chunk(False)  # spans the released p1 and the rest of the file
    assert [n.payload for n in chunk] == ["p1", "p3", "p4", "p5"]
    assert queue.attempts(chunk[2]) == 1
    queue.failed(chunk[2], "bad", None)  # p4 alone to errors/
    queue.done_many(3)  # p1, p3, p5: every message of the file has its outcome
    assert pending_once_deleted(tmp_path, queue) == []  # the p file is deleted
    assert [n.payload for n in queue.get_chunk(False)] == ["q0", "q1"]
    with pytest.raises(ValueError):
        queue.release(chunk[0])  # done already
    queue.done_many(2)
    assert pending_once_deleted(tmp_path, queue) == []
    assert queue.error_count() == 1 and len(listing(tmp_path, "errors")) == 2  # + .meta
    with pytest.raises(Empty):
        queue.get_chunk(False)


@pytest.mark.timeout(10)
def test_a_claimed_batch_is_handed_out_in_chunks_of_at_most_chunk_max(tmp_path):
    queue = FileQueue(tmp_path)
    queue.chunk_max = 3
    ids = queue.put_batch(_notes("p", 8))
    first = queue.get_chunk(False)
    assert [(n.payload, n.id) for n in first] == [("p%d" % i, ids[i]) for i in range(3)]
    second = queue.get_chunk(False)
    assert [n.payload for n in second] == ["p3", "p4", "p5"]
    assert all(isinstance(n, Notification) for n in first + second)
    queue.release(second[1])  # first in line again: built anew, equal to the one given
    queue.done_many(5)  # p0-p2, p3, p5
    again = queue.get_chunk(False)
    assert again == [second[1]] + _notes_with_ids("p", range(6, 8), ids)
    with pytest.raises(ValueError):
        queue.release(second[1])  # settled when it went back: the new one is held now
    queue.done_many(3)
    assert pending_once_deleted(tmp_path, queue) == []  # every message settled


def _notes_with_ids(prefix, indexes, ids):
    return [Notification("ch", "%s%d" % (prefix, i), "notify", 1, 1.0, ids[i])
            for i in indexes]


@pytest.mark.timeout(10)
def test_the_group_commit_answers_ids_made_only_when_read(tmp_path):
    queue = FileQueue(tmp_path)
    ids = queue.put_batch(_notes("p", 3), False)
    assert type(ids) is not list and len(ids) == 3  # made when read
    one = queue.put(_notes("q", 1)[0], False)  # the same group: one file
    got = queue.get_chunk(True, 10)
    assert [n.id for n in got] == ids + [one] == [] + ids + [one]
    assert ids == list(ids) == [n.id for n in got[:3]] and ids[1:] == list(ids)[1:]
    queue.done_many(4)


@pytest.mark.timeout(10)
def test_a_chunk_partly_done_at_close_gives_back_only_its_messages_without_an_outcome(
        tmp_path):
    queue = FileQueue(tmp_path)
    ids = queue.put_batch(_notes("p", 4))
    chunk = queue.get_chunk(False)
    queue.done_many(1)  # p0
    queue.failed(chunk[2], "bad", None)  # p2
    queue.release(chunk[1])
    queue.release(chunk[3])
    queue.close()
    again = FileQueue(tmp_path)
    got = drain(again)
    assert [(n.payload, n.id) for n in got] == [("p1", ids[1]), ("p3", ids[3])]


def _held_group(tmp_path):
    """A queue whose reader is busy with one file while another waits for it, and a read
    put without blocking since: the group commit holds it (the group not written)."""
    queue = FileQueue(tmp_path)
    queue.group_hold = 60.0
    queue.put_batch(_notes("a", 2), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    assert [n.payload for n in queue.get_chunk(False)] == ["a0", "a1"]  # the reader is busy
    queue.put_batch(_notes("b", 2), False)  # nothing waits for the reader: written at once
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    queue.put_batch(_notes("c", 2), False)
    for _ in range(3):
        gevent.sleep(0)  # the group writer runs: it holds the group
    assert len(queue._groups) == 1 and queue._committer is not None
    queue.put_batch(_notes("d", 2), False)  # joins the held group
    return queue


@pytest.mark.timeout(10)
def test_the_group_commit_holds_the_open_group_while_the_reader_is_behind(tmp_path):
    queue = _held_group(tmp_path)
    assert len(listing(tmp_path, "incoming")) == 1  # only the b file
    queue.done_many(2)  # the a file is done: the reader claims b, the held group goes
    assert [n.payload for n in queue.get_chunk(False)] == ["b0", "b1"]
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    (name,) = listing(tmp_path, "incoming")
    assert names.message_count(name) == 4  # c and d in ONE file
    queue.done_many(2)
    assert [n.payload for n in queue.get_chunk(False)] == ["c0", "c1", "d0", "d1"]


@pytest.mark.timeout(10)
def test_a_blocking_put_ends_a_hold_and_goes_after_the_held_group(tmp_path):
    queue = _held_group(tmp_path)
    queue.put({"n": 1})  # waits for the held group first (FIFO), not for group_hold
    written = listing(tmp_path, "incoming")
    assert [names.message_count(n) for n in written] == [2, 4, 1]  # b, c+d, the dict


@pytest.mark.timeout(10)
def test_without_group_hold_the_open_group_is_written_at_once(tmp_path):
    queue = FileQueue(tmp_path)
    queue.group_hold = 0
    queue.put_batch(_notes("a", 2), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    queue.get_chunk(False)
    queue.put_batch(_notes("b", 2), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    queue.put_batch(_notes("c", 2), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 2, 10)  # not held


# -- the unlink of a settled file runs beside the processor --------------------------------

@pytest.mark.timeout(10)
def test_the_last_outcome_of_a_file_does_not_wait_for_its_unlink(tmp_path):
    """The processor that settles a file's last message goes on at once: the unlink runs
    in the threadpool for a greenlet of the queue (a round trip of 7 to 60 ms while the
    hub reads a burst, per file, was a stall of the drain)."""
    queue = FileQueue(tmp_path)
    queue.put_batch(_notes("p", 3))
    chunk = queue.get_chunk(False)
    (name,) = listing(tmp_path, "pending/" + queue.owner)
    others = []
    gevent.spawn(others.append, "ran")  # runs at this greenlet's first yield
    queue.done_many(3)
    assert others == []  # done_many did not yield
    assert listing(tmp_path, "pending/" + queue.owner) == [name]
    assert pending_once_deleted(tmp_path, queue) == []
    assert len(chunk) == 3 and queue.qsize() == 0
    queue.close()
    with pytest.raises(Empty):
        FileQueue(tmp_path).get(block=False)  # deleted: not delivered again


@pytest.mark.timeout(10)
@pytest.mark.parametrize("on_hub", [False, True], ids=["greenlet", "hub"])
def test_a_clean_close_deletes_the_settled_files_first(tmp_path, on_hub):
    """A stop right after the last outcome: the files settled are deleted before the
    queue removes its pending directory, so the next process delivers none of them again;
    on the hub (a link callback closing the queue) the unlinks run inline."""
    queue = FileQueue(tmp_path)
    for prefix in ("p", "q"):
        queue.put_batch(_notes(prefix, 2))
    for _ in range(2):
        queue.done_many(len(queue.get_chunk(False)))
    if on_hub:
        closed = gevent.event.Event()
        gevent.get_hub().loop.run_callback(lambda: (queue.close(), closed.set()))
        assert closed.wait(5)
    else:
        queue.close()
    assert not os.path.exists(os.path.join(str(tmp_path), "pending", queue.owner))
    again = FileQueue(tmp_path)
    again.requeue_pending_of_dead_owners()
    with pytest.raises(Empty):
        again.get(block=False)


@pytest.mark.timeout(10)
def test_a_settled_file_that_cannot_be_deleted_is_logged_and_stays(tmp_path, monkeypatch,
                                                                   caplog):
    """The unlink fails (a read-only mount, say): an error names the spool and what it
    means, the file stays in pending/<owner>/ (delivered again after a restart: at least
    once), and the queue goes on."""
    from instances.spool import claims

    def refused(paths):
        raise PermissionError(13, "Permission denied", paths[0])

    queue = FileQueue(tmp_path)
    queue.put_batch(_notes("p", 2))
    monkeypatch.setattr(claims, "_unlink_all", refused)
    with caplog.at_level("ERROR", logger="instances.spool.claims"):
        queue.done_many(len(queue.get_chunk(False)))
        wait_for(lambda: caplog.records, 5, message="the failure is logged")
    (record,) = caplog.records
    assert record.action == "spool.delete_failed"
    assert "deleting 1 settled file(s) failed" in record.getMessage()
    assert "delivered again after a restart" in record.getMessage()
    assert len(listing(tmp_path, "pending/" + queue.owner)) == 1
    queue.put_batch(_notes("q", 1))
    assert [n.payload for n in queue.get_chunk(False)] == ["q0"]
