"""The spool's own cost, without Postgres: ``python -m bench.spool_pipeline N MODE [PAUSE]``.

One monkey-patched process runs what an instance does with a read of notifications, N of
them: a producer greenlet hands reads of 140 (libpq's read size here) to the queue as the
shared notifier does (``put_batch(read, False)`` for a spool, ``put_many`` for the memory
queue), a consumer greenlet takes chunks, calls a trivial handler per notification and
settles each chunk (``get_chunk`` / ``done_many``), as a processor does. MODE: ``memory``,
``spool`` (fsync off) or ``spool-fsync``. PAUSE: seconds the producer sleeps after each
read (default 0, a burst; 0.001 is a trickle the reader keeps up with, so every read
becomes a file of its own). Prints the process's CPU time per notification.

Its use is the instruction count, which the machine's load does not change: run it under
``valgrind --tool=callgrind`` for two sizes and subtract (start-up cancels out), for the
spool and for the memory queue; the difference per notification, by C function
(``callgrind_annotate``), is what the spool costs over the memory queue (bench/RESULTS.md,
"The spool").
"""
import gevent.monkey

gevent.monkey.patch_all()

import gc  # noqa: E402
import itertools  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import gevent.event  # noqa: E402

from instances.notification import Notification  # noqa: E402
from instances.queues import MemoryQueue  # noqa: E402
from instances.spool import FileQueue  # noqa: E402

READ = 140


def main(argv):
    count, mode = int(argv[0]), argv[1]
    pause = float(argv[2]) if len(argv) > 2 else 0.0
    stamp = time.time()
    payloads = [("%.6f:%d:" % (stamp, i)).ljust(100, "x") for i in range(count)]
    directory = tempfile.mkdtemp(prefix="pgvisor-bench-pipeline-", dir="/var/tmp")
    if mode == "memory":
        queue = MemoryQueue(count + 1)
        put = queue.put_many
    else:
        queue = FileQueue(directory, fsync=mode == "spool-fsync")
        put = queue.put_batch
    handled, finished = [0], gevent.event.Event()

    def consume():
        while handled[0] < count:
            chunk = queue.get_chunk(True, 10, 1)
            for _ in chunk:
                handled[0] += 1
            queue.done_many(len(chunk))
        finished.set()

    def produce():  # as the notifier builds a read (Notification.from_notifies)
        for start in range(0, count, READ):
            put(list(map(tuple.__new__, itertools.repeat(Notification), zip(
                itertools.repeat("bench"), payloads[start:start + READ],
                itertools.repeat("notify"), itertools.repeat(4242),
                itertools.repeat(time.time()), itertools.repeat(None)))), False)
            gevent.sleep(pause)  # the notifier lets the others run after a read

    gc.collect()
    gc.freeze()  # as ``pgvisor run`` does once started; its young threshold (2,000,
    # supervisor.service.settle_collector) stays at 700 here, as profiles/spool-*.txt had it
    began = time.process_time()
    workers = [gevent.spawn(consume), gevent.spawn(produce)]
    finished.wait()
    used = time.process_time() - began
    gevent.joinall(workers)
    if mode != "memory":
        queue.close()
    shutil.rmtree(directory, ignore_errors=True)
    print("%s: %d notifications, %.2f us CPU per notification" % (mode, count,
                                                                 used * 1e6 / count))


if __name__ == "__main__":
    main(sys.argv[1:])
