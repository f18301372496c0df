"""The :class:`HubWatch`: reports each time one greenlet holds the gevent hub too long.

Two parts, and nothing on the hub's path between them::

    hub:          a timer every max_blocking_time / 4 --> _tick: keep (now, CPU wait so far)
    watch thread: when the tick could first be late by max_blocking_time (about once per
                  max_blocking_time) --> _look: is it? take the hub thread's frames
                  (sys._current_frames()), attribute them, keep them,
                  hub.loop.run_callback_threadsafe(_flush)
    hub:          _flush (once the hub runs again) --> one WARNING line "hub.blocked",
                                                        on_block(Block)

The hub runs its timer only when it gets back to its loop, so a tick late by
``max_blocking_time`` means the loop did not turn for that long: a greenlet (or a callback
of the hub) ran without yielding. Nothing is added to a greenlet switch (gevent's own monitor
thread, ``gevent.config.monitor_thread``, installs a greenlet trace function called on every
switch) and nothing walks the heap (gevent's report of a block walks every object through
``gc.get_objects()`` holding the GIL, which on a large heap made the block it reported
longer, again each period while it lasted): the watch thread reads a tuple and the kernel's
figure, and only when the tick is late the frames of the hub's thread.

Time the hub's thread spent ready but waiting for a CPU (the kernel's run-queue delay,
:class:`RunQueueWait`) is left out, as :class:`supervisor.testing.HubHeartbeat` does: on a
busy machine the loop comes back late without any greenlet holding it. The kernel counts a
wait when the thread runs again, so the watch thread may see a late tick that is only a wait;
``_flush``, on the hub, then has the whole figure and drops it.

Every sighting of the same late tick belongs to the same block, so each block gives one log
line and one ``on_block`` call (the supervisor counts them in ``counters["hub_blocks"]``).
The block is attributed to the instance whose code was running: the innermost frame of the
hub's thread that runs a method of a Component or ProcessorPool (they carry the instance's
name), else ``instance`` is None.

The watch thread is a real OS thread (gevent's original ``_thread.start_new_thread``, as
gevent's monitor thread uses, so it works monkey-patched or not); it touches no gevent
object but ``loop.run_callback_threadsafe``. Each HubWatch has its own timer and thread, so
several may run at once (one per Supervisor). start/stop: the hub's thread; stop() wakes the
thread, and no report comes after it returns.
"""
import dataclasses
import logging
import os
import sys
import time
import traceback
import typing

import gevent
import gevent.event
from gevent.monkey import get_original

from instances.components import Component
from instances.processors import ProcessorPool

log = logging.getLogger(__name__)

_start_new_thread = get_original("_thread", "start_new_thread")
_allocate_lock = get_original("_thread", "allocate_lock")
_get_ident = get_original("_thread", "get_ident")
_OWNERS = (Component, ProcessorPool)


@dataclasses.dataclass(frozen=True)
class Block:
    """One hub block: ``greenlet`` (what ran: its entry point, from its outermost frame),
    ``instance`` (name or None), ``seconds`` (how late the hub's loop came back, less the
    time its thread waited for a CPU; at least ``max_blocking_time``, within
    ``max_blocking_time / 4``) and ``stack`` (innermost frames, innermost last, each
    "file:line function")."""

    greenlet: str
    instance: typing.Optional[str]
    seconds: float
    stack: tuple


@dataclasses.dataclass(frozen=True)
class _Sighting:
    """What the watch thread saw of one block: ``since`` is the tick state it came after."""

    since: tuple
    greenlet: str
    instance: typing.Optional[str]
    stack: tuple


def owner_codes():
    """The code objects of the methods of Component, ProcessorPool and their subclasses."""
    codes, seen, todo = set(), set(), list(_OWNERS)
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        todo.extend(cls.__subclasses__())
        for value in vars(cls).values():
            func = getattr(value, "__func__", value)  # classmethod, staticmethod
            for _wrapper in range(8):  # a decorated method: the codes it wraps
                code = getattr(func, "__code__", None)
                if code is not None:
                    codes.add(code)
                func = getattr(func, "__wrapped__", None)
                if func is None:
                    break
    return codes


def describe(frame, depth):
    """``(greenlet, instance, stack)`` of the frames from ``frame`` outwards: the entry
    point (the outermost frame), the instance name of the innermost Component or
    ProcessorPool method, the innermost ``depth`` frames. Reads ``f_locals`` of those
    methods' frames only (they hold ``self``)."""
    stack, instance, codes, outermost = [], None, None, None
    while frame is not None:
        code = frame.f_code
        if len(stack) < depth:
            stack.append("%s:%s %s" % (code.co_filename,  # f_lineno may be None (3.11+)
                                        frame.f_lineno or "?", code.co_name))
        if instance is None and code.co_argcount and code.co_varnames[0] == "self":
            codes = owner_codes() if codes is None else codes
            owner = frame.f_locals.get("self") if code in codes else None
            if isinstance(owner, _OWNERS):
                instance = owner.name
        outermost, frame = frame, frame.f_back
    if outermost is None:
        return "<unknown>", None, ()
    code = outermost.f_code
    greenlet = "<greenlet running %s (%s:%d)>" % (
        getattr(code, "co_qualname", code.co_name), code.co_filename, code.co_firstlineno)
    return greenlet, instance, tuple(reversed(stack))


class RunQueueWait:
    """Seconds the thread that made it waited, ready, for a CPU (the kernel's run-queue
    delay, Linux ``/proc/thread-self/schedstat``; 0.0 where the kernel does not say). One
    pread per :meth:`read`, from any thread: the file is the maker's. The kernel adds a wait
    when the thread runs again, so a wait still going on is not in the figure yet."""

    PATH = "/proc/thread-self/schedstat"

    def __init__(self):
        try:
            self._fd = os.open(self.PATH, os.O_RDONLY)
        except OSError:
            self._fd = None

    def read(self):
        if self._fd is None:
            return 0.0
        try:
            return int(os.pread(self._fd, 64, 0).split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def close(self):
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class HubWatch:
    """Watch the hub of the thread that calls :meth:`start`; ``on_block(Block)`` is called
    in the hub (MUST NOT block or raise) once per block."""

    #: Seconds one greenlet may run without yielding to the hub before it counts as a block.
    max_blocking_time = 0.1
    #: Innermost frames of the blocking greenlet kept in the log line.
    stack_depth = 4

    def __init__(self, on_block=None, max_blocking_time=None):
        self.on_block = on_block
        if max_blocking_time is not None:
            self.max_blocking_time = max_blocking_time
        self.blocks = 0
        self.hub = None
        #: (monotonic time, RunQueueWait) at the last tick: one attribute, written by the
        #: hub, read by the watch thread
        self._tick_state = (0.0, 0.0)
        self._timer = None
        self._thread = None  # the _WatchThread of this start
        self._ended = None  # set (by a callback of the thread) when the thread ended

    @property
    def period(self):
        """Seconds between two ticks of the hub's timer."""
        return self.max_blocking_time / 4

    def start(self):
        """Start the hub's timer and the watch thread. Returns self."""
        if self.hub is not None:
            return self
        self.hub = gevent.get_hub()
        self._ended = gevent.event.Event()
        self._thread = _WatchThread(self, self.hub.loop, _get_ident(), RunQueueWait(),
                                    self._ended)
        self._tick()
        self._timer = self.hub.loop.timer(self.period, self.period, ref=False)
        self._timer.start(self._tick)
        self._thread.start()
        return self

    def stop(self):
        """Stop the timer and the watch thread: no block is reported after it returns.
        Waits (cooperatively) until the thread has ended, up to a second."""
        if self.hub is None:
            return
        hub, thread, ended = self.hub, self._thread, self._ended
        self.hub = self._thread = None
        self._timer.stop()
        self._timer.close()
        self._timer = None
        thread.stop()
        if gevent.getcurrent() is not hub:  # the hub itself cannot wait
            ended.wait(1.0)

    # -- hub ----------------------------------------------------------------------------
    def _tick(self):
        waited = self._thread.run_queue.read()  # first: a wait between goes to the next gap
        self._tick_state = (time.monotonic(), waited)

    def _stall(self, since, until):
        """Seconds the hub's loop did not turn between tick state ``since`` and ``until``
        (``(time, waited)``), beyond the period and the time it waited for a CPU."""
        return until[0] - since[0] - self.period - (until[1] - since[1])

    def _flush(self, thread):
        """The hub runs again after the block ``thread`` saw: report it, unless the hub's
        thread was only waiting for a CPU (the machine is busy: no greenlet held the hub)."""
        seen = thread.take()
        if seen is None or thread is not self._thread:
            return  # stopped meanwhile
        now = (time.monotonic(), thread.run_queue.read())  # clock first: conservative
        end = now if self._tick_state[0] == seen.since[0] else self._tick_state
        self._tick_state = now  # the hub runs: a block from now on is another
        seconds = self._stall(seen.since, end)
        if seconds < self.max_blocking_time:
            return
        block = Block(seen.greenlet, seen.instance, seconds, seen.stack)
        self.blocks += 1
        log.warning("hub blocked for at least %.2f s by %s%s: %s", block.seconds,
                    block.greenlet, "" if seen.instance is None else
                    " (instance %s)" % seen.instance, " <- ".join(reversed(block.stack)),
                    extra={"action": "hub.blocked", "instance": seen.instance})
        if self.on_block is not None:
            try:
                self.on_block(block)
            except Exception:
                log.exception("hub block callback failed",
                              extra={"action": "hub.callback_error", "instance": seen.instance})

    def _log_error(self, text):
        log.error("hub watch failed (it goes on looking): %s", text,
                  extra={"action": "hub.watch_error", "instance": None})


class _WatchThread:
    """The OS thread of one HubWatch start: it compares the hub's last tick with the clock
    when the tick could first be late enough to be a block. Touches no gevent object but
    ``loop.run_callback_threadsafe`` (and, once, to say it ended, ``ended.set`` through
    it). Closes ``run_queue`` at its end (after it no tick or flush of this start reads
    it)."""

    def __init__(self, watch, loop, hub_ident, run_queue, ended):
        self.watch, self.loop, self.hub_ident = watch, loop, hub_ident
        self.run_queue, self.ended = run_queue, ended
        self._stop = _allocate_lock()
        self._stop.acquire()  # held until stop(): the thread sleeps on it
        self._seen = None  # the _Sighting not yet flushed
        self._block_since = None  # the tick the last block came after (one report each)
        self._error = None  # the first error of a look (logged once, by the hub)

    def start(self):
        _start_new_thread(self._run, ())

    def stop(self):
        self._stop.release()

    def take(self):
        seen, self._seen = self._seen, None
        return seen

    def _run(self):
        watch = self.watch
        try:
            wait = watch.max_blocking_time
            while not self._stop.acquire(True, wait):
                try:
                    wait = self._look(watch)
                except Exception:  # noqa: BLE001 -- a report is not worth the watch
                    self._failed(watch)
                    wait = watch.max_blocking_time
        finally:
            self.run_queue.close()
            try:
                self.loop.run_callback_threadsafe(self.ended.set)
            except Exception:  # noqa: BLE001 -- the loop is gone (interpreter exit)
                pass

    def _look(self, watch):
        """Look once; return the seconds to the next look: the earliest the hub's stall can
        reach ``max_blocking_time`` (a stall grows no faster than the clock), so a healthy
        hub is looked at about once per ``max_blocking_time`` (each look takes the GIL,
        and a busy hub then waits for this thread to get a CPU)."""
        limit, since = watch.max_blocking_time, watch._tick_state
        if since[0] == self._block_since:  # this block was seen: wait for the next tick
            return limit
        stall = watch._stall(since, (time.monotonic(), self.run_queue.read()))
        if stall < limit:
            return max(limit - stall, limit / 8)
        self._block_since = since[0]
        frame = sys._current_frames().get(self.hub_ident)
        try:
            greenlet, instance, stack = describe(frame, watch.stack_depth)
        except Exception:  # noqa: BLE001 -- the block is still worth its report
            greenlet, instance, stack = "<unknown>", None, ()
            self._failed(watch)
        finally:
            del frame  # no frame of the hub's thread outlives the look
        self._seen = _Sighting(since, greenlet, instance, stack)
        self.loop.run_callback_threadsafe(watch._flush, self)
        return limit

    def _failed(self, watch):
        """Hand the first error of this thread to the hub to log (logging's locks are
        gevent's when monkey-patched: not for this thread)."""
        if not self._error:
            self._error = traceback.format_exc()
            self.loop.run_callback_threadsafe(watch._log_error, self._error)
