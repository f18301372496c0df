"""The spool's read-through cache (instances.spool.readthrough): a file this queue's group
commit wrote, claimed by its own reader for a first delivery, is handed out from the kept
columns, exactly as reading it from disk would give it; anything else is read."""
import gc
import os

import gevent.monkey
import pytest

from instances.notification import ACCELERATED, Notification
from instances.queues import Empty
from instances.spool import FileQueue, OutputQueue, claims, codec, names
from instances.spool.readthrough import ReadThrough
from supervisor.testing import wait_for


def listing(directory, sub):
    try:
        return sorted(os.listdir(os.path.join(str(directory), sub)))
    except FileNotFoundError:
        return []


def written(queue, items):
    """Put ``items`` as the notifier does (the group commit) and wait for their file;
    its name."""
    before = set(listing(queue.directory, "incoming"))
    ids = queue.put_batch(items, False)
    wait_for(lambda: set(listing(queue.directory, "incoming")) - before, 10,
             message="the group is written")
    (name,) = set(listing(queue.directory, "incoming")) - before
    return name, list(ids)


def reading(queue):
    """``queue`` once its reader has asked for messages (none yet): it keeps what it
    writes from now on."""
    with pytest.raises(Empty):
        queue.get(block=False)
    return queue


def take_all(queue):
    """Every message ready now, by chunks, each chunk settled."""
    got = []
    while True:
        try:
            chunk = queue.get_chunk(False)
        except Empty:
            return got
        got.extend(chunk)
        queue.done_many(len(chunk))


def fields_and_types(notifications):
    return [(tuple(n), tuple(map(type, n)), type(n)) for n in notifications]


def _notes(prefix, count):
    return [Notification("ch", "%s%d" % (prefix, i), "notify", 1, 1.0) for i in range(count)]


class _Text(str):
    """A str subclass: JSON gives it back as a str."""


#: Every field type a Notification may have in a stored batch, and payloads that keep a
#: file's payloads out of its appended section.
ODD = [Notification("a", "x", "notify", 1, 5, "given-id"),  # an int time, an id
       Notification("b", None, "notify", None, 6.25),
       Notification("a", "\u00e9\"\\", "notify", 2, float("inf"), ""),
       Notification(None, "", Notification.CATCH_UP, 0, -0.0)]


@pytest.mark.parametrize("parts", [
    [_notes("p", 3), _notes("q", 2)],
    [ODD, ODD[::-1]],
    [[Notification("a", "\udc80", "notify", 1, 1.0), Notification("a", "n\x00", "x", 2, 3)]],
], ids=["same", "odd", "unappended"])
def test_a_written_batch_is_what_decoding_its_file_gives(parts):
    columns = codec.joined_columns([codec.columns_of(part) for part in parts],
                                   sum(map(len, parts)))
    count = sum(map(len, parts))
    data = codec.encode_joined(columns, count, "base")
    kept = codec.written_batch(columns, count, "base")
    assert fields_and_types(kept[:]) == fields_and_types(codec.decode(data, "other")[:])
    assert [n.id for n in kept] == [n.id or "base#%d" % i for i, n in enumerate(
        [n for part in parts for n in part])]
    assert codec.encode_joined(columns, count, "base") == data  # columns not changed


@pytest.mark.skipif(not ACCELERATED, reason="C part not built")
def test_the_columns_a_batch_waits_as_are_out_of_the_collectors_passes():
    parts = [_notes("p", 3), _notes("q", 2)]
    columns = codec.joined_columns([codec.columns_of(part) for part in parts], 5)
    assert type(columns[1]) is list and not gc.is_tracked(columns[1])  # joined payloads
    data = codec.encode_joined(columns, 5, "base")
    for batch in (codec.written_batch(columns, 5, "base"), codec.decode(data, "base")):
        lists = [column for column in batch._columns if type(column) is list]
        assert lists and not any(gc.is_tracked(column) for column in lists)
        assert [n.payload for n in batch] == ["p0", "p1", "p2", "q0", "q1"]


@pytest.mark.parametrize("odd", [
    Notification("ch", _Text("sub"), "notify", 1, 1.0),  # comes back a str
    Notification(_Text("ch"), "p", "notify", 1, 1.0),
    Notification("ch", "p", "notify", True, 1.0),  # makes the file undecodable
    Notification("ch", "p", "notify", 1, False),
])
def test_a_batch_with_a_value_its_file_gives_back_otherwise_is_not_made(odd):
    for part in ([odd], [odd, Notification("ch", "p", "notify", 2, 2.0)]):
        columns = codec.joined_columns([codec.columns_of(part)], len(part))
        assert codec.written_batch(columns, len(part), "base") is None


@pytest.mark.timeout(10)
@pytest.mark.parametrize("batch", [
    _notes("p", 700),  # every column {"same": ...} but the payloads
    [Notification("c", "p%d" % i, "notify", 7, 1700000000.5 + i / 3) for i in range(5)],
    ODD,
    ODD + [Notification("a", "nul\x00inside", "notify", 1, 1.0)],  # no appended section
    ODD + [Notification("a", "\udc80", "notify", 1, 1.0)],  # a lone surrogate
], ids=["same", "times", "odd", "nul", "surrogate"])
def test_a_claimed_file_this_queue_wrote_yields_what_reading_it_from_disk_gives(
        tmp_path, batch):
    queue = reading(FileQueue(tmp_path))
    name, ids = written(queue, batch)
    on_disk = codec.decode((tmp_path / "incoming" / name).read_bytes(), name)
    got = take_all(queue)
    assert (queue.readthrough.hits, queue.readthrough.misses) == (1, 0)
    assert fields_and_types(got) == fields_and_types(on_disk[:])
    assert [n.id for n in got] == [v or i for v, i in zip([n.id for n in batch], ids,
                                                          strict=True)]
    wait_for(lambda: listing(tmp_path, "pending/" + queue.owner) == [], 10,
             message="done: the file is deleted")


@pytest.mark.timeout(10)
def test_the_reads_of_a_group_are_kept_as_one_file_and_chunks_come_from_it(tmp_path):
    queue = reading(FileQueue(tmp_path))
    queue.chunk_max = 300
    queue.group_hold = 60.0
    name, first = written(queue, _notes("a", 2))
    assert [n.payload for n in queue.get_chunk(False)] == ["a0", "a1"]  # the reader is busy
    name, second = written(queue, _notes("b", 2))  # nothing waits for it: written at once
    ids = list(queue.put_batch(_notes("c", 400), False))
    ids += list(queue.put_batch([Notification("other", "d", "notify", 2, 3.0)], False))
    queue.done_many(2)  # the reader claims b: the held group (c and d) is written
    assert [n.payload for n in queue.get_chunk(False)] == ["b0", "b1"]
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 10)
    queue.done_many(2)
    (name,) = listing(tmp_path, "incoming")
    on_disk = codec.decode((tmp_path / "incoming" / name).read_bytes(), name)
    got = take_all(queue)
    assert len(got) == 401 and [n.id for n in got] == ids
    assert fields_and_types(got) == fields_and_types(on_disk[:])
    assert queue.readthrough.hits == 3


@pytest.mark.timeout(10)
def test_the_cache_keeps_the_oldest_unclaimed_files_within_its_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(FileQueue, "read_cache_files", 2)
    queue = reading(FileQueue(tmp_path))
    for index in range(4):
        written(queue, _notes("f%d-" % index, 10))
    assert len(queue.readthrough) == 2
    assert [n.payload for n in take_all(queue)] == [
        "f%d-%d" % (f, i) for f in range(4) for i in range(10)]
    assert (queue.readthrough.hits, queue.readthrough.misses) == (2, 0)  # the oldest two
    assert len(queue.readthrough) == 0 and queue.readthrough.bytes == 0
    name, _ = written(queue, _notes("one", 1))
    size = os.path.getsize(tmp_path / "incoming" / name)
    take_all(queue)
    queue.close()

    # room for one file of one notification, not for two
    monkeypatch.setattr(FileQueue, "read_cache_bytes", size + ReadThrough.per_message)
    small = reading(FileQueue(tmp_path))
    written(small, _notes("big", 10))  # over the bound alone: not kept
    assert len(small.readthrough) == 0
    written(small, _notes("two", 1))
    written(small, _notes("six", 1))  # no room left: not kept (two is claimed sooner)
    assert len(small.readthrough) == 1 and small.readthrough.bytes <= small.read_cache_bytes
    assert [n.payload for n in take_all(small)] == [
        "big%d" % i for i in range(10)] + ["two0", "six0"]
    assert small.readthrough.hits == 1  # two


def test_a_full_group_of_the_biggest_notifications_is_not_kept():
    """10,000 notifications of 8,000 bytes: 80 MB in memory, over read_cache_bytes."""
    cache = ReadThrough(FileQueue.read_cache_files, FileQueue.read_cache_bytes)
    cache.keep("big", 10000 * 8000, range(10000))
    cache.keep("small", 1500, range(10))
    assert len(cache) == 1 and cache.take("big") is None
    assert cache.take("small") == (1500, range(10)) and cache.bytes == 0


@pytest.mark.timeout(10)
def test_a_file_claimed_by_another_queue_of_the_directory_is_read_from_disk(tmp_path):
    writer = reading(FileQueue(tmp_path))
    name, ids = written(writer, _notes("p", 3))
    other = FileQueue(tmp_path, owner="other")  # another owner: its own cache, empty
    got = other.get_chunk(False)
    assert [n.id for n in got] == ids and other.readthrough.hits == 0
    for item in got:
        other.release(item)
    other.close()  # none was handled: the file goes back whole, its name unchanged
    assert listing(tmp_path, "incoming") == [name]
    again = take_all(writer)  # the same file, the same bytes: the kept columns serve
    assert again == got and [n.id for n in again] == ids
    assert writer.readthrough.hits == 1


@pytest.mark.timeout(10)
def test_an_entry_of_a_file_another_consumer_took_leaves_at_the_next_claim(tmp_path):
    writer = reading(FileQueue(tmp_path))
    written(writer, _notes("x", 2))
    other = FileQueue(tmp_path, owner="other")
    assert [n.payload for n in take_all(other)] == ["x0", "x1"]  # handled there
    written(writer, _notes("y", 2))
    assert len(writer.readthrough) == 2  # x stays until the writer claims again
    assert [n.payload for n in take_all(writer)] == ["y0", "y1"]
    assert len(writer.readthrough) == 0 and writer.readthrough.hits == 1
    written(writer, _notes("z", 2))  # room again: kept
    assert len(writer.readthrough) == 1


@pytest.mark.timeout(10)
def test_an_entry_is_dropped_when_another_consumer_wins_the_claim(tmp_path):
    queue = reading(FileQueue(tmp_path))
    written(queue, _notes("x", 2))
    name, _ = written(queue, _notes("y", 2))
    assert [n.payload for n in queue.get_chunk(False)] == ["x0", "x1"]  # y is known now
    thief = os.path.join(str(tmp_path), "pending", "thief")
    os.makedirs(thief)
    os.rename(os.path.join(str(tmp_path), "incoming", name), os.path.join(thief, name))
    queue.done_many(2)
    with pytest.raises(Empty):
        queue.get_chunk(False)  # the rename of y lost
    assert len(queue.readthrough) == 0 and queue.readthrough.hits == 1


@pytest.mark.timeout(10)
def test_a_redelivery_is_read_from_disk(tmp_path):
    """Recovery gives a dead owner's file back with one more attempt (a batch split, one
    message alone renamed): a new name, and not a first delivery."""
    queue = reading(FileQueue(tmp_path))
    name, ids = written(queue, _notes("p", 1))
    dead = os.path.join(str(tmp_path), "pending", "%s-999999999-1" % names.hostname())
    os.makedirs(dead)
    os.rename(os.path.join(str(tmp_path), "incoming", name), os.path.join(dead, name))
    queue.recover()
    assert listing(tmp_path, "incoming") == [name + ".1"]
    got = queue.get_chunk(False)
    assert [n.id for n in got] == ids and [queue.attempts(n) for n in got] == [2]
    assert queue.readthrough.hits == 0
    queue.done_many(1)


@pytest.mark.timeout(10)
def test_a_file_changed_on_disk_is_read_unless_its_size_is_the_size_written(tmp_path):
    """The spool never rewrites a file in place: a file of the name and size written is
    what this queue wrote, and its kept copy is handed out (corruption that keeps the
    size goes unnoticed); another size means another content, read from disk."""
    queue = reading(FileQueue(tmp_path))
    name, ids = written(queue, _notes("p", 3))
    path = tmp_path / "incoming" / name
    data = path.read_bytes()
    path.write_bytes(data.replace(b"p1", b"q1"))  # the same size
    assert [n.payload for n in take_all(queue)] == ["p0", "p1", "p2"]  # what we wrote
    assert queue.readthrough.hits == 1

    name, ids = written(queue, _notes("p", 3))
    (tmp_path / "incoming" / name).write_bytes(data[:-3])  # truncated
    assert take_all(queue) == []
    assert queue.readthrough.misses == 1  # read, then undecodable: to errors/
    assert len(listing(tmp_path, "errors")) == 2  # the file and its .meta


@pytest.mark.timeout(10)
def test_values_a_file_does_not_give_back_as_they_are_are_read_from_disk(tmp_path):
    queue = reading(FileQueue(tmp_path))
    written(queue, [Notification("ch", _Text("sub"), "notify", 1, 1.0)])
    assert len(queue.readthrough) == 0  # not kept
    (got,) = take_all(queue)
    assert got.payload == "sub" and type(got.payload) is str
    written(queue, [Notification("ch", "p", "notify", True, 1.0)])  # a bool pid
    assert len(queue.readthrough) == 0
    assert take_all(queue) == [] and queue.error_count() == 1  # undecodable, as from disk


@pytest.mark.timeout(10)
def test_a_queue_with_an_output_queue_hands_out_kept_messages_one_by_one(tmp_path):
    queue = reading(FileQueue(tmp_path / "in", output=OutputQueue(tmp_path / "out")))
    name, ids = written(queue, _notes("p", 3))
    for _ in range(3):
        queue.done(queue.get(block=False))
    assert queue.readthrough.hits == 1
    out = FileQueue(tmp_path / "out")
    got = [out.get(block=False) for _ in range(3)]
    assert [(n.payload, n.id) for n in got] == [("p%d" % i, ids[i]) for i in range(3)]


@pytest.mark.timeout(10)
def test_a_closed_queue_keeps_nothing(tmp_path):
    queue = reading(FileQueue(tmp_path))
    name, ids = written(queue, _notes("p", 2))
    assert len(queue.readthrough) == 1
    queue.close()
    assert len(queue.readthrough) == 0
    reopened = FileQueue(tmp_path)
    assert [n.id for n in take_all(reopened)] == ids and reopened.readthrough.hits == 0


@pytest.mark.timeout(10)
def test_a_queue_only_written_to_keeps_nothing(tmp_path):
    """The service's queue under process isolation: its workers read in their own."""
    queue = FileQueue(tmp_path)
    written(queue, _notes("p", 2))
    assert len(queue.readthrough) == 0
    worker = FileQueue(tmp_path, owner="worker")
    assert [n.payload for n in take_all(worker)] == ["p0", "p1"]
    written(queue, _notes("q", 2))
    assert len(queue.readthrough) == 0 and queue.readthrough.hits == 0


@pytest.mark.timeout(10)
def test_without_a_read_cache_every_file_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(FileQueue, "read_cache_files", 0)
    queue = reading(FileQueue(tmp_path))
    name, ids = written(queue, _notes("p", 2))
    assert len(queue.readthrough) == 0
    assert [n.id for n in take_all(queue)] == ids and queue.readthrough.hits == 0


@pytest.mark.timeout(20)
def test_a_burst_of_several_group_files_is_all_served_from_the_cache(tmp_path):
    """The default bound holds the files of a burst the reader is behind on (a drain of
    100,000 notifications wrote 14 or 15 files): with 2, the reader read and decoded all
    but the first two from disk."""
    queue = reading(FileQueue(tmp_path))
    for index in range(12):
        written(queue, _notes("f%02d-" % index, 1000))
    assert len(queue.readthrough) == 12 <= queue.read_cache_files
    got = take_all(queue)
    assert [n.payload for n in got] == ["f%02d-%d" % (f, i) for f in range(12)
                                        for i in range(1000)]
    assert (queue.readthrough.hits, queue.readthrough.misses) == (12, 0)
    queue.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
def test_a_file_claimed_before_its_writer_resumes_is_served_from_the_cache(
        tmp_path, monkeypatch, fsync):
    """The rename into incoming/ makes a file claimable while the group writer still
    waits for its threadpool call (the directory's fsync, the hub seeing the call end):
    here the call returns only once the reader has claimed the file."""
    queue = reading(FileQueue(tmp_path, fsync=fsync))
    commit, claim_file = queue.writer._commit, claims._claim_file
    claimed = gevent.monkey.get_original("threading", "Event")()  # set in a pool thread

    def claim_then_tell(*args, **kwargs):
        try:
            return claim_file(*args, **kwargs)
        finally:
            claimed.set()

    def commit_then_wait_for_the_claim(fd, tmp, data, target, name):
        done = commit(fd, tmp, data, target, name)
        assert claimed.wait(10), "the reader claims the file"
        return done

    monkeypatch.setattr(claims, "_claim_file", claim_then_tell)
    monkeypatch.setattr(queue.writer, "_commit", commit_then_wait_for_the_claim)
    name, ids = written(queue, _notes("p", 50))
    got = take_all(queue)
    assert [n.id for n in got] == ids and [n.payload for n in got][-1] == "p49"
    assert (queue.readthrough.hits, queue.readthrough.misses) == (1, 0)
    assert len(queue.readthrough) == 0
    queue.close()


@pytest.mark.timeout(10)
def test_a_group_whose_write_fails_leaves_nothing_kept(tmp_path, monkeypatch):
    queue = reading(FileQueue(tmp_path))

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(queue.writer, "_commit", full_disk)
    queue.put_batch(_notes("p", 3), False)
    wait_for(lambda: queue._committer is None, 5, message="the group writer gives up")
    assert len(queue.readthrough) == 0 and queue.readthrough.bytes == 0
    queue.close()
