"""FileQueue shared by real processes: crashes (SIGKILL), claim races, back-pressure.

Each child is ``sys.executable -c CODE DIR ...`` importing the installed package, not
monkey-patched (the spool must work without it). Children talk over stdin/stdout lines.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from instances.queues import Empty
from instances.spool import FileQueue
from instances.spool.layout import stats
from supervisor.testing import wait_for

CLAIM_AND_HANG = """
import sys
from instances.spool import FileQueue
queue = FileQueue(sys.argv[1])
item = queue.get(timeout=10)
print(queue.owner + " " + item["id"], flush=True)
sys.stdin.read()  # a handler that never finishes: SIGKILLed here
"""

RESERVE_AND_HANG = """
import os, sys
from instances.spool import FileQueue
queue = FileQueue(sys.argv[1])
fd, path, base = queue.writer.reserve()
os.write(fd, b'{"n": "half-writ')
print(path, flush=True)
sys.stdin.read()
"""

RACE = """
import json, sys
from instances.queues import Empty
from instances.spool import FileQueue
queue = FileQueue(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()
ids = []
while True:
    try:
        item = queue.get(block=False)
    except Empty:
        break
    ids.append(item["id"])
    queue.done(item)
queue.close()
print(json.dumps(ids), flush=True)
"""

WRITER = """
import sys
from instances.spool import FileQueue
in_dir, out_dir, limit, count, tag = sys.argv[1:6]
queue = FileQueue.from_piper_options(queue_in_dir=in_dir, queue_out_dir=out_dir,
                                     queue_out_limit=int(limit), queue_out_wait=0.005)
for n in range(int(count)):
    queue.put({"w": tag, "n": n})
for n in range(int(count)):
    queue.done(queue.get(block=False))
queue.close()
print("finished", flush=True)
"""

PUT_ONE = """
import sys
from instances.spool import FileQueue
FileQueue(sys.argv[1]).put({"n": "from child"})
"""


def child(code, *args):
    return subprocess.Popen([sys.executable, "-c", code] + [str(a) for a in args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def kill9(process):
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)  # reaped: the pid is gone, as after a real crash


@pytest.mark.timeout(30)
def test_messages_claimed_by_a_sigkilled_process_are_delivered_again(tmp_path):
    queue = FileQueue(tmp_path)
    ids = [queue.put({"n": n}) for n in range(3)] + queue.put_batch([{"n": 3}, {"n": 4}])
    queue.close()
    worker = child(CLAIM_AND_HANG, tmp_path)
    owner, claimed = worker.stdout.readline().split()
    assert claimed == ids[0]
    assert stats(str(tmp_path))["pending"][owner] == 1
    kill9(worker)

    reopened = FileQueue(tmp_path)
    assert owner not in stats(str(tmp_path))["pending"]
    delivered = []
    while True:
        try:
            item = reopened.get(block=False)
        except Empty:
            break
        delivered.append((item["id"], reopened.attempts(item)))
        reopened.done(item)
    assert delivered == [(ids[0], 2)] + [(i, 1) for i in ids[1:]]


@pytest.mark.timeout(30)
def test_a_sigkilled_writers_tmp_file_is_cleaned_and_never_delivered(tmp_path):
    FileQueue(tmp_path).close()
    writer = child(RESERVE_AND_HANG, tmp_path)
    tmp_path_of_writer = writer.stdout.readline().strip()
    assert os.path.exists(tmp_path_of_writer)
    kill9(writer)
    queue = FileQueue(tmp_path)
    assert not os.path.exists(tmp_path_of_writer)
    assert stats(str(tmp_path))["tmp"] == 0
    with pytest.raises(Empty):
        queue.get(block=False)


@pytest.mark.timeout(60)
def test_two_processes_racing_deliver_every_message_exactly_once(tmp_path):
    queue = FileQueue(tmp_path)
    sent = {queue.put({"n": n}) for n in range(2000)}
    queue.close()
    racers = [child(RACE, tmp_path) for _ in range(2)]
    for racer in racers:
        assert racer.stdout.readline().strip() == "ready"
    for racer in racers:  # start both together
        racer.stdin.write("go\n")
        racer.stdin.flush()
    results = [json.loads(racer.stdout.readline()) for racer in racers]
    for racer in racers:
        assert racer.wait(timeout=20) == 0
    first, second = results
    assert first and second, "both processes should have won some races"
    assert not set(first) & set(second)
    assert len(first) + len(second) == len(sent) and set(first) | set(second) == sent
    assert stats(str(tmp_path))["incoming"] == 0


@pytest.mark.timeout(60)
def test_output_limit_holds_under_four_concurrent_writer_processes(tmp_path):
    limit, per_writer, writers = 20, 60, 4
    out_dir = tmp_path / "out"
    next_queue = FileQueue(out_dir)
    procs = [child(WRITER, tmp_path / ("in%d" % w), out_dir, limit, per_writer, w)
             for w in range(writers)]
    incoming = os.path.join(str(out_dir), "incoming")
    wait_for(lambda: len(os.listdir(incoming)) >= limit, timeout=20,
             message="the writers never filled the output queue")
    most, received = 0, {w: [] for w in range(writers)}
    for _ in range(per_writer * writers):
        most = max(most, len(os.listdir(incoming)))
        item = next_queue.get(timeout=20)
        received[int(item["w"])].append(item["n"])
        next_queue.done(item)
    for proc in procs:
        assert proc.stdout.readline().strip() == "finished"
        assert proc.wait(timeout=20) == 0
    assert limit <= most <= limit + writers
    assert all(ns == list(range(per_writer)) for ns in received.values())  # FIFO per writer


@pytest.mark.timeout(30)
def test_a_blocked_get_sees_another_processes_put(tmp_path):
    queue = FileQueue(tmp_path)
    queue.poll_interval = 0.01
    writer = child(PUT_ONE, tmp_path)
    assert queue.get(timeout=20)["n"] == "from child"
    assert writer.wait(timeout=20) == 0
