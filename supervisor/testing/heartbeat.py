"""The :class:`HubHeartbeat`: proof that nothing blocks the gevent hub.

A greenlet sleeps ``tick`` seconds in a loop and records how much later than asked each
tick came. Use it around code under test (a handler, a listener, a supervisor) to assert
the hub never stalled: ``with HubHeartbeat() as beat: ...; assert beat.max_stall < 0.05``.

On a loaded machine a tick also comes late when the process was ready to run but waited
for a CPU: the kernel ran other processes. That is not the code under test holding the
hub, and a 50 ms bound measured on wall time alone fails at random on two busy cores
(issue 16, item 16). The hub's thread waits that way in two places: in the kernel's run
queue itself, and for the GIL while another thread of the process (a threadpool worker
back from an fsync or a getaddrinfo, gevent's monitor thread) holds it but waits in the
run queue. So ``max_stall`` leaves out the time *every* thread of the process spent in the
run queue meanwhile (Linux: ``/proc/self/task/*/schedstat``, second field);
``max_wall_stall`` keeps the raw figure. The kernel adds a wait to that figure only when
the thread runs again, so the clock and the figure are read together, again if the thread
was descheduled between the two reads (it often is: a busy kernel preempts at the return
from a system call, and reading the figure is one). CPU work (on the hub or in a thread
holding the GIL), blocking system calls on the hub (a getaddrinfo, an fsync) and GC pauses
all still count: only waiting for a CPU is left out.
"""
import os
import time

import gevent


class HubHeartbeat:
    """A greenlet that sleeps ``tick`` seconds in a loop and keeps the worst lateness.

    Concurrency: start() and stop() from any greenlet of the hub's thread; the loop runs
    in its own greenlet and never raises.
    """

    #: Seconds between two ticks.
    tick = 0.005

    def __init__(self, tick=None):
        if tick is not None:
            self.tick = tick
        #: Seconds a tick came later than asked, at worst, less the time the process's
        #: threads waited for a CPU meanwhile (see the module docstring).
        self.max_stall = 0.0
        #: The same on wall time alone.
        self.max_wall_stall = 0.0
        self.ticks = 0
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        """Kill the loop (blocks the caller until it is dead); return the worst stall."""
        if self._greenlet is not None:
            self._greenlet.kill()
        return self.max_stall

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _run(self):
        run_queue = RunQueueClock()
        try:
            last, last_wait = self._read(run_queue)
            while True:
                gevent.sleep(self.tick)
                now, wait = self._read(run_queue)
                wall = now - last - self.tick
                stall = wall - (wait - last_wait)
                if wall > self.max_wall_stall:
                    self.max_wall_stall = wall
                if stall > self.max_stall:
                    self.max_stall = stall
                last, last_wait = now, wait
                self.ticks += 1
        finally:
            run_queue.close()

    @staticmethod
    def _read(run_queue, clock=time.perf_counter):
        """``(now, seconds waited for a CPU)`` read together. The kernel adds a wait to the
        thread's figure when the thread runs again: descheduled between the two reads, one
        gap would get the wait in its wall time and the next one in its run-queue time (the
        stall of the first hidden, of the second made up). So read again until no wait
        came between (a clock read before and after the run-queue read less than 1 ms
        apart), at most 10 times."""
        for _attempt in range(10):
            before = clock()
            waited = run_queue.seconds()
            after = clock()
            if after - before < 0.001:
                break
        return after, waited


class RunQueueClock:
    """Seconds the threads of this process have waited in the kernel's run queue, ready to
    run with no CPU given, summed over the threads (0.0 where the kernel does not say).

    Each :meth:`seconds` call adds what each thread waited since the call before; a thread
    first seen counts from its start, one that ended since is left out from its last
    reading (its last wait is not left out of a stall: the safe side). One directory read
    and one pread per thread per call; files of threads kept open between calls.
    """

    TASKS = "/proc/self/task"

    def __init__(self):
        self._files = {}  # thread id -> (fd, nanoseconds waited at the last reading)
        self._total = 0
        self._open = os.path.isdir(self.TASKS)

    def seconds(self):
        if not self._open:
            return 0.0
        try:
            threads = set(os.listdir(self.TASKS))
        except OSError:
            return self._total / 1e9
        for tid in list(self._files):
            if tid not in threads:
                os.close(self._files.pop(tid)[0])
        for tid in threads:
            entry = self._files.get(tid)
            if entry is None:
                try:
                    entry = (os.open("%s/%s/schedstat" % (self.TASKS, tid), os.O_RDONLY), 0)
                except OSError:
                    continue  # it ended meanwhile
            fd, last = entry
            try:
                waited = int(os.pread(fd, 64, 0).split()[1])
            except (OSError, IndexError, ValueError):
                os.close(fd)
                self._files.pop(tid, None)
                continue
            self._total += max(0, waited - last)
            self._files[tid] = (fd, waited)
        return self._total / 1e9

    def close(self):
        self._open = False
        for fd, _last in self._files.values():
            os.close(fd)
        self._files.clear()
