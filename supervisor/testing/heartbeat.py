"""The :class:`HubHeartbeat`: proof that nothing blocks the gevent hub.

A greenlet sleeps ``tick`` seconds in a loop and records how much later than asked each
tick came. Use it around code under test (a handler, a listener, a supervisor) to assert
the hub never stalled: ``with HubHeartbeat() as beat: ...; assert beat.max_stall < 0.05``.

On a loaded machine a tick also comes late when the hub's thread was ready to run but
waited for a CPU: the kernel ran other processes. That is not the code under test holding
the hub, and a 50 ms bound measured on wall time alone fails at random on two busy cores
(issue 16, item 16). So ``max_stall`` leaves out the time the thread spent waiting in the
kernel's run queue (Linux: ``/proc/thread-self/schedstat``, second field);
``max_wall_stall`` keeps the raw figure. The kernel adds a wait to that figure only when
the thread runs again, so the clock and the figure are read together, again if the thread
was descheduled between the two reads (it often is: a busy kernel preempts at the return
from a system call, and reading the figure is one); read one after the other, a gap got a
wait in its wall time and the next gap in its run-queue time: 40-70 ms "stalls" with 0.3 ms
of CPU. In a virtual machine the host also takes the virtual CPU away now and then (steal time,
``/proc/stat``; the guest kernel counts it neither as run time nor as a run-queue wait):
that is left out too, as the most any one CPU lost in the gap (10 ms granularity). CPU
work, blocking system calls (a getaddrinfo, an fsync) and waits for the GIL held by
another of our threads all still count.

What the worst gap was made of is kept in :attr:`HubHeartbeat.worst` (:class:`Gap`): the
seconds on a CPU, waiting for one, stolen, and the rest (a blocking call or the GIL), and
the greenlet that held the hub longest in it (a switch tracer), so a failure says where to
look. Run nothing else that holds the GIL for long meanwhile: gevent's monitor thread
(``gevent.config.monitor_thread``; :class:`supervisor.hubwatch.HubWatch` does not use it),
once it sees a block, walks every object of the heap for its report and makes the block it
reports longer.

What the hub's thread was doing in a gap is sampled too (:class:`GapSampler`, on Linux): a
real OS thread looks every 2 ms, and when the hub is more than 10 ms late it reads, for each
thread of the process, its state, kernel wait channel and system call from
``/proc/self/task`` and the top of its Python stack (``sys._current_frames()``). The worst
gap keeps the first samples taken in it (:attr:`Gap.samples`), so a stall in a blocking
call names the call, and a wait for the GIL names the thread that held it.
"""
import dataclasses
import os
import sys
import time
import typing

import gevent
import gevent.hub
import greenlet


@dataclasses.dataclass(frozen=True)
class Gap:
    """One gap between two ticks, in seconds: ``late`` (beyond the tick), and of the whole
    gap ``on_cpu``, ``waited`` (for a CPU), ``stolen`` (by the host); ``stall`` is
    ``late`` less ``waited`` and ``stolen``. ``holder`` is the greenlet (a repr) that ran
    longest without a switch in it and ``held`` how long (None, 0.0 when the hub itself
    was the one running)."""

    stall: float
    late: float
    on_cpu: float
    waited: float
    stolen: float = 0.0
    holder: typing.Optional[str] = None
    held: float = 0.0
    #: What :class:`GapSampler` saw during the gap (texts, oldest first; filled in by
    #: :meth:`HubHeartbeat.stop`).
    samples: typing.Tuple[str, ...] = ()

    @property
    def rest(self):
        """Seconds of the gap off a CPU and not waiting for one: a blocking call or the GIL
        (the gap is ``late`` plus the tick; ``late`` here, close enough for a message)."""
        return max(0.0, self.late - self.on_cpu - self.waited - self.stolen)

    def __str__(self):
        text = "%.1f ms late: %.1f ms on a CPU, %.1f ms waiting for one, %.1f ms stolen " \
               "by the host, the rest (a blocking call or the GIL) about %.1f ms" % (
                   self.late * 1000, self.on_cpu * 1000, self.waited * 1000,
                   self.stolen * 1000, self.rest * 1000)
        if self.holder is not None:
            text += "; %s ran %.1f ms without a switch" % (self.holder, self.held * 1000)
        for sample in self.samples:
            text += "\n  sampled " + sample
        return text


class HubHeartbeat:
    """A greenlet that sleeps ``tick`` seconds in a loop and keeps the worst lateness.

    Concurrency: start() and stop() from any greenlet of the hub's thread; the loop runs
    in its own greenlet and never raises.
    """

    #: Seconds between two ticks.
    tick = 0.005
    #: What reads the kernel's figures (a seam for tests of the arithmetic).
    clock_class = None  # RunQueueClock, set below the class
    #: What samples the process's threads during a gap (None: no sampling).
    sampler_class = None  # GapSampler, set below the class

    def __init__(self, tick=None, sample=True):
        if tick is not None:
            self.tick = tick
        self._sample = sample
        self._sampler = None
        self._worst_start = None
        #: Seconds a tick came later than asked, at worst, less the time the thread waited
        #: for a CPU meanwhile (see the module docstring).
        self.max_stall = 0.0
        #: The same on wall time alone.
        self.max_wall_stall = 0.0
        #: The :class:`Gap` of ``max_stall`` (None before the first tick).
        self.worst = None
        self.ticks = 0
        self._greenlet = None
        self._tracer = None

    def start(self):
        if self._sample and self.sampler_class is not None:
            self._sampler = self.sampler_class(self.tick)
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        """Kill the loop (blocks the caller until it is dead); return the worst stall."""
        if self._greenlet is not None:
            self._greenlet.kill()
        if self._sampler is not None:
            self._sampler.stop()  # the samples of the worst gap may come after its end
            if self.worst is not None:
                self.worst = dataclasses.replace(
                    self.worst, samples=self._sampler.samples(self._worst_start))
        return self.max_stall

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _run(self):
        run_queue = self.clock_class()
        tracer = self._tracer = SwitchTracer().install()
        sampler = self._sampler
        try:
            last, last_times = self._read(run_queue)
            if sampler is not None:
                sampler.start(last)
            while True:
                gevent.sleep(self.tick)
                now, times = self._read(run_queue)
                late = now - last - self.tick
                on_cpu, waited = times[0] - last_times[0], times[1] - last_times[1]
                stolen = max((b - a for a, b in zip(last_times[2], times[2], strict=False)),
                             default=0.0)  # a CPU may come or go: compare those in both
                stall = late - waited - stolen
                if late > self.max_wall_stall:
                    self.max_wall_stall = late
                if stall > self.max_stall:
                    self.max_stall = stall
                    self.worst = Gap(stall, late, on_cpu, waited, stolen, *tracer.longest)
                    self._worst_start = last
                tracer.reset()
                last, last_times = now, times
                if sampler is not None:
                    sampler.beat(now, self._worst_start)
                self.ticks += 1
        finally:
            tracer.uninstall()
            run_queue.close()

    @staticmethod
    def _read(run_queue, clock=time.perf_counter):
        """``(now, RunQueueClock.read())`` read together. The kernel adds a wait to the
        thread's figure when the thread runs again: descheduled between the two reads, one
        gap would get the wait in its wall time and the next one in its run-queue time (the
        stall of the first hidden, of the second made up). So read again until no wait
        came between (a clock read before and after the run-queue read less than 1 ms
        apart), at most 10 times."""
        for _attempt in range(10):
            before = clock()
            times = run_queue.read()
            after = clock()
            if after - before < 0.001:
                break
        return after, times


class GapSampler:
    """A real OS thread that, while the hub is late, samples what each thread of the process
    is doing (see the module docstring). The heartbeat's greenlet calls :meth:`beat` after
    each tick, with the start of the worst gap so far; :meth:`stop` ends the thread (waiting
    for a sample under way) and :meth:`samples` gives what was seen in a gap.

    The Python stacks are taken first, with no system call between: each system call hands
    the GIL back, and a thread computing meanwhile keeps it for a switch interval (5 ms)
    each time, so the kernel's figures, read next, may come some milliseconds later. While
    the hub is on time the thread runs Python code only for microseconds every
    :attr:`period` (a clock read and a comparison).
    """

    #: Seconds between two looks.
    period = 0.002
    #: Seconds late beyond the tick before the threads are sampled.
    late = 0.010
    #: Samples kept per gap.
    per_gap = 3
    TASKS = "/proc/self/task"

    def __init__(self, tick, clock=time.perf_counter):
        from gevent import monkey

        from supervisor.hubwatch import describe
        self._describe_frames = describe
        self._tick = tick
        self._clock = clock
        self._sleep = monkey.get_original("time", "sleep")
        self._start_thread = monkey.get_original("_thread", "start_new_thread")
        self._get_ident = monkey.get_original("_thread", "get_ident")
        self._running = monkey.get_original("_thread", "allocate_lock")()
        self._hub_ident = self._get_ident()
        self._hub_tid = self._native_id()
        self._own_tid = None
        self._last = self._keep = None
        self._by_gap = {}  # start of a gap -> [sample texts]; written by the thread only
        self._stopped = False

    @staticmethod
    def _native_id():
        try:
            return int(os.readlink("/proc/thread-self").rsplit("/", 1)[1])
        except (OSError, ValueError):
            return None

    def start(self, now):
        self._last = now
        if self._hub_tid is not None:
            self._running.acquire()
            self._start_thread(self._loop, ())

    def stop(self):
        self._stopped = True
        if self._running.acquire(timeout=1.0):
            self._running.release()

    def beat(self, now, keep):
        """A tick came at ``now``; the gap that started at ``keep`` is the worst so far."""
        self._last, self._keep = now, keep

    def samples(self, start):
        """The samples taken in the gap that started at ``start`` (a tuple of texts)."""
        return tuple(self._by_gap.get(start, ()))

    def _loop(self):
        try:
            self._own_tid = self._native_id()
            while not self._stopped:
                self._sleep(self.period)
                last = self._last
                now = self._clock()
                if now - last < self._tick + self.late:
                    continue
                taken = self._by_gap.get(last)
                if taken is None:
                    for start in [s for s in self._by_gap if s != self._keep]:
                        del self._by_gap[start]
                    taken = self._by_gap[last] = []
                if len(taken) < self.per_gap:
                    try:
                        taken.append("%.1f ms into the gap: %s" % (
                            (now - last) * 1000, self._describe()))
                    except Exception as error:  # a sample never ends the thread
                        taken.append("sample failed: %r" % (error,))
        finally:
            self._running.release()

    def _describe(self):
        stacks = self._stacks()  # first: no system call before it (see the class docstring)
        parts = []
        for name in sorted(os.listdir(self.TASKS), key=int):
            tid = int(name)
            if tid == self._own_tid:
                continue
            state, comm = self._stat(tid)
            if tid != self._hub_tid and state not in ("R", "D"):
                continue  # a sleeping thread (an idle pool thread) holds nothing
            parts.append("%s %d %s (%s) wchan=%s syscall=%s" % (
                "hub" if tid == self._hub_tid else "thread", tid, state, comm,
                self._read(tid, "wchan"), self._read(tid, "syscall").split(" ")[0]))
        return "; ".join(parts) + " | python: " + "; ".join(stacks)

    def _stacks(self):
        """The innermost frames of every other thread, as the service's HubWatch describes
        them (:func:`supervisor.hubwatch.describe`: the instance whose code runs, if any)."""
        own = self._get_ident()
        stacks = []
        for ident, frame in sys._current_frames().items():
            if ident == own:
                continue
            _entry, instance, stack = self._describe_frames(frame, 4)
            label = "hub" if ident == self._hub_ident else str(ident)
            if instance is not None:
                label += " (instance %s)" % instance
            stacks.append("%s [%s]" % (label, " < ".join(reversed(stack))))
        return stacks

    def _read(self, tid, what):
        try:
            with open("%s/%d/%s" % (self.TASKS, tid, what)) as f:
                return f.read().strip() or "-"
        except OSError:
            return "?"

    def _stat(self, tid):
        text = self._read(tid, "stat")
        comm_end = text.rfind(")")
        if comm_end < 0:
            return "?", "?"
        return text[comm_end + 2:comm_end + 3], text[text.find("(") + 1:comm_end]


class SwitchTracer:
    """Keeps, between two :meth:`reset` calls, the greenlet that ran longest without a
    switch (greenlet's trace hook, chained to the one installed before, e.g. gevent's
    monitor thread's). The hub's thread only."""

    def __init__(self, clock=time.perf_counter):
        self._clock = clock
        self._previous = None
        self._installed = False
        self._since = clock()
        self._longest = (None, 0.0)

    @property
    def longest(self):
        """``(repr of the greenlet or None, seconds)``."""
        glet, held = self._longest
        return (None if glet is None else repr(glet)), held

    def install(self):
        self._previous = greenlet.settrace(self)
        self._installed = True
        return self

    def uninstall(self):
        if not self._installed:
            return
        self._installed = False
        if greenlet.gettrace() is self:
            greenlet.settrace(self._previous)

    def reset(self):
        self._longest = (None, 0.0)

    def __call__(self, event, args):
        if self._installed and event in ("switch", "throw"):
            now = self._clock()
            held = now - self._since
            origin = args[0]
            if held > self._longest[1] and not isinstance(origin, gevent.hub.Hub):
                self._longest = (origin, held)
            self._since = now
        if self._previous is not None:
            self._previous(event, args)


class RunQueueClock:
    """What the kernel says of the thread that made it: seconds on a CPU and seconds
    waiting in the run queue (ready to run, no CPU given), and each CPU's seconds stolen by
    the host; zeros where the kernel does not say. Two preads per :meth:`read`.

    The thread's own figure only: another thread's waits happen beside the hub's (a thread
    waiting for the GIL wakes every 5 ms and waits for a CPU too), and subtracting them hid
    a greenlet holding the hub on a loaded machine."""

    PATH = "/proc/thread-self/schedstat"
    STEAL_PATH = "/proc/stat"

    def __init__(self):
        self._fd = self._open(self.PATH)
        self._steal_fd = self._open(self.STEAL_PATH)
        self._hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

    @staticmethod
    def _open(path):
        try:
            return os.open(path, os.O_RDONLY)
        except OSError:
            return None

    def read(self):
        """``(seconds on a CPU, seconds waited for one, (seconds stolen, per CPU))``."""
        cpu = waited = 0.0
        if self._fd is not None:
            try:
                fields = os.pread(self._fd, 64, 0).split()
                cpu, waited = int(fields[0]) / 1e9, int(fields[1]) / 1e9
            except (OSError, IndexError, ValueError):
                pass
        return cpu, waited, self._stolen()

    def _stolen(self):
        if self._steal_fd is None:
            return ()
        try:
            text = os.pread(self._steal_fd, 4096, 0)
        except OSError:
            return ()
        stolen = []
        for line in text.split(b"\n")[1:]:
            if not line.startswith(b"cpu"):
                break
            fields = line.split()
            if len(fields) > 8 and fields[8].isdigit():
                stolen.append(int(fields[8]) / self._hz)
        return tuple(stolen)

    def seconds(self):
        """Seconds waited for a CPU."""
        return self.read()[1]

    def close(self):
        for name in ("_fd", "_steal_fd"):
            fd = getattr(self, name)
            if fd is not None:
                os.close(fd)
                setattr(self, name, None)


HubHeartbeat.clock_class = RunQueueClock
HubHeartbeat.sampler_class = GapSampler
