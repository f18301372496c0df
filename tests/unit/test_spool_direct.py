"""A group file written for this queue's waiting reader goes straight into its claims
(``pending/<owner>/``): no listing of ``incoming/`` and no claim rename between the write
and the handler; what a claim of ``incoming/`` guarantees still holds."""
import os
import subprocess
import sys

import gevent
import gevent.event
import pytest

from instances.notification import Notification
from instances.spool import FileQueue, codec
from supervisor.testing import wait_for

pytestmark = pytest.mark.timeout(20)


def listing(directory, sub):
    try:
        return sorted(os.listdir(os.path.join(str(directory), sub)))
    except FileNotFoundError:
        return []


def _notes(prefix, count):
    return [Notification("ch", "%s%d" % (prefix, i), "notify", 1, 1.0) for i in range(count)]


class Reader:
    """A greenlet blocked in get_chunk (what a processor does); it settles its chunk
    (``done_many``: only the greenlet a chunk went to can) when :meth:`settle` is called."""

    def __init__(self, queue):
        self.queue, self.chunk = queue, None
        self._settle = gevent.event.Event()
        self.greenlet = gevent.spawn(self._run)
        wait_for(lambda: queue.waiting == 1, 5, message="the reader waits")

    def _run(self):
        self.chunk = self.queue.get_chunk(True, 10)
        self._settle.wait(10)
        self.queue.done_many(len(self.chunk))

    def got(self):
        wait_for(lambda: self.chunk is not None or self.greenlet.dead, 10,
                 message="the reader got a chunk")
        if self.chunk is None:
            self.greenlet.get()  # its error
        return self.chunk

    def settle(self):
        self._settle.set()
        self.greenlet.get(timeout=10)


@pytest.mark.parametrize("fsync", [False, True])
def test_a_file_for_a_waiting_reader_is_claimed_at_birth(tmp_path, fsync):
    queue = FileQueue(tmp_path, fsync=fsync)
    pending = os.path.join("pending", queue.owner)
    reader = Reader(queue)
    ids = list(queue.put_batch(_notes("a", 5), False))
    chunk = reader.got()
    assert [n.payload for n in chunk] == ["a%d" % i for i in range(5)]
    assert [n.id for n in chunk] == ids
    assert queue._claims.direct == 1 and listing(tmp_path, "incoming") == []
    (name,) = listing(tmp_path, pending)  # durable where a claim would have put it
    on_disk = codec.decode((tmp_path / pending / name).read_bytes(), name)
    assert list(on_disk[:]) == chunk
    assert queue.qsize() == 0
    reader.settle()
    wait_for(lambda: listing(tmp_path, pending) == [], 5, message="the done file deleted")
    queue.close()


def test_with_nobody_waiting_the_file_goes_to_incoming(tmp_path):
    queue = FileQueue(tmp_path)
    queue.put_batch(_notes("b", 3), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 5, message="written")
    assert queue._claims.direct == 0
    assert [n.payload for n in queue.get_chunk(False)] == ["b0", "b1", "b2"]
    queue.close()


def test_files_known_in_incoming_go_first(tmp_path):
    """A reader with files of incoming/ still to claim is not idle: a new file queues
    behind them (FIFO), it is not handed out before them."""
    queue = FileQueue(tmp_path)
    queue.put_batch(_notes("old", 2), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 1, 5, message="written")
    queue.put_batch(_notes("older-still-waiting", 1), False)
    wait_for(lambda: len(listing(tmp_path, "incoming")) == 2, 5, message="written")
    first = queue.get_chunk(False)  # lists both, claims the oldest
    assert [n.payload for n in first] == ["old0", "old1"]
    reader = gevent.spawn(queue.get_chunk, True, 10)
    queue.put_batch(_notes("new", 1), False)
    assert [n.payload for n in reader.get(timeout=10)] == ["older-still-waiting0"]
    assert [n.payload for n in queue.get_chunk(True, 10)] == ["new0"]
    assert queue._claims.direct == 0
    queue.close()


def test_a_file_written_after_close_goes_back_to_incoming(tmp_path):
    queue = FileQueue(tmp_path)
    pending = os.path.join("pending", queue.owner)
    items = _notes("c", 2)
    name = queue.writer.write(codec.encode_batch(items), count=2, target=pending)
    queue._claims.close()
    batch = codec.decode((tmp_path / pending / name).read_bytes(), name)
    assert queue._claims.take_written(name, os.path.getsize(tmp_path / pending / name),
                                      batch) is False
    assert listing(tmp_path, pending) == [] and listing(tmp_path, "incoming") == [name]
    queue.close()
    again = FileQueue(tmp_path)
    assert [n.payload for n in again.get_chunk(False)] == ["c0", "c1"]
    again.close()


CRASHER = """
import os, sys
import gevent
from instances.notification import Notification
from instances.spool import FileQueue
from supervisor.testing import wait_for
queue = FileQueue(sys.argv[1])
reader = gevent.spawn(queue.get_chunk, True, 10)
wait_for(lambda: queue.waiting, 5, message="the reader waits")
queue.put_batch([Notification("ch", "d%d" % i, "notify", 1, 1.0) for i in range(3)], False)
chunk = reader.get(timeout=10)
assert queue._claims.direct == 1 and len(chunk) == 3, (queue._claims.direct, chunk)
print(queue.owner, flush=True)
os.kill(os.getpid(), 9)  # handed out, never done
"""


def test_a_crash_after_a_direct_claim_redelivers_the_file(tmp_path):
    """The file sits in pending/<owner>/ as a claimed one does: when its process is
    killed (-9) the next one's sweep gives it back to incoming/ (an attempt counted),
    nothing is lost."""
    child = subprocess.run([sys.executable, "-c", CRASHER, str(tmp_path)], capture_output=True,
                           text=True, timeout=30)
    assert child.returncode == -9, child.stderr
    owner = child.stdout.strip()
    assert len(listing(tmp_path, os.path.join("pending", owner))) == 1
    again = FileQueue(tmp_path)
    again.requeue_pending_of_dead_owners()
    assert listing(tmp_path, os.path.join("pending", owner)) == []
    got = []
    while len(got) < 3:  # given back as one file per message (recovery splits a batch)
        chunk = again.get_chunk(True, 10)
        got.extend(chunk)
        again.done_many(len(chunk))
    assert [n.payload for n in got] == ["d0", "d1", "d2"]
    assert all(n.id.startswith(got[0].id.split("#")[0]) for n in got)  # the same ids
    again.close()
