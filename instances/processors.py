"""The :class:`ProcessorPool`: greenlets calling the handler for each queued notification.

One pool consumes one queue (see :mod:`instances.queues`) with between ``min_concurrency``
and ``max_concurrency`` worker greenlets, plus one manager greenlet that autoscales and
enforces ``handler_timeout``. A worker takes a **chunk** (a memory queue's
``get_chunk``: what the listener read at once, shared out among ``max_concurrency``
workers; from any other queue one ``get``, a chunk of one) and runs the handler on each
item of it, in order (:meth:`ProcessorPool._run_chunk`)::

    queue.get_chunk() --> for each item: handler(item) --+-- returns ----------> processed
                                                         +-- raises: retried, --> failed(...)
                                                         |   then the error path
                                                         +-- overruns timeout -> interrupted,
                                                                                 failed(...)
    end of the chunk --> counters, latency histogram, queue.done_many(processed)

A queue without chunks gets its outcome per item: ``done(item)``, or, when it offers
``forward(item, result)`` (a FileQueue), the handler's return value: with an output queue
(``queue_out_dir``) the result goes on to it (piper semantics: a message, a list of them,
or None for nothing); without one it is dropped, exactly as ``done`` would.

Per chunk, not per item: the counters, the latency histogram (each item of a chunk is
counted in the bucket of the chunk's mean handler time; a chunk of one is exact) and the
queue's outcome. Per item: one clock read (the handler's deadline and the pool's heartbeat
count from it) and the handler call.

What a worker holds without an outcome when it ends -- the rest of its chunk after a stop,
the item in flight and the rest after a kill or an interrupted retry wait -- goes back to
the queue (``give_back``, first in line, order kept; a FileQueue's ``release`` per
item): the next pool on the queue runs it, nothing is lost inside the process.

Autoscale (cyme's): the manager adds one worker every ``scale_interval`` while the backlog
(``queue.qsize()``) exceeds the number of workers and all of them are busy, up to max; a
worker above min that waited ``idle_timeout`` for an item exits.

Ordering: with ``max_concurrency == 1`` one worker handles items strictly in queue order,
one at a time. With more, items start in queue order but run concurrently and may finish
in any order, including two notifications of the same channel -- unless ``order_key`` is
given: then items of one key never overlap and run in queue order
(:mod:`instances.ordering`). With ``batch = N`` the handler gets lists of up to N items
(:mod:`instances.batching`, which also says what a failing batch means).

Handler timeouts cost one clock read per item: the manager sleeps until the earliest
deadline of a running handler and throws :class:`HandlerTimeout` into that worker only if
it is still on the same item. A handler that never yields to the hub cannot be interrupted (nor could
gevent.Timeout); ``busy_since`` exposes it.

The pool's end: it ends with its last worker, then tells its links::

    spawn --> _work --> _loop(worker) --+-- returns / _Stop / Closed --> exit "normal"
                                        +-- raises (the queue failed) -> crash: the others
                                                                         are killed
    last worker gone --> manager killed --> exit "normal" | "abnormal" --> links

``stop`` lets running handlers finish: "normal" (handlers still running after its timeout
are killed: "abnormal"); ``kill`` or a crash: "abnormal".

Concurrency: every method is for greenlets of the hub's thread; ``stop`` and ``kill``
block the caller (not the hub). Link callbacks run in the hub and MUST NOT block or raise.
"""
import bisect
import linecache
import logging
import sys
import time
import traceback
import weakref
from operator import length_hint

import gevent
import gevent.event
from gevent import GreenletExit, getcurrent

from instances.backoff import Backoff
from instances.batching import cut_batch
from instances.components import ComponentKilled, interrupt_if
from instances.episodes import LogLimiter, shorten
from instances.links import Links
from instances.notification import LiveRead
from instances.ordering import KeyOrder, key_function
from instances.queues import Closed, Empty
from instances.spec import check_batch, check_concurrency, check_handler_timeout

log = logging.getLogger(__name__)

#: The last pool started on each queue (weakly): see :meth:`ProcessorPool.start`.
_last_pool = weakref.WeakKeyDictionary()


class HandlerTimeout(BaseException):
    """Thrown into a handler that overran ``handler_timeout`` (BaseException, like
    gevent.Timeout, so a handler's ``except Exception`` does not swallow it)."""


#: What a handler may raise that fails its notification alone: any exception, even
#: SystemExit, KeyboardInterrupt or GeneratorExit (only the service's own shutdown ends the
#: process; a kill is a GreenletExit, which still stops the worker), and the pool's own
#: HandlerTimeout.
_FAILURES = (HandlerTimeout, Exception, gevent.Timeout, SystemExit, KeyboardInterrupt,
             GeneratorExit)

#: The same without HandlerTimeout (it has a branch of its own where it is caught).
_HANDLER_FAILURES = _FAILURES[1:]

#: "No item": the worker holds none that lacks its outcome.
_NOTHING = object()


class _Stop(GreenletExit):
    """Private: thrown by stop() into a worker waiting for an item."""


#: What _wait_for returns instead of work: exit (an idle worker above min), try again.
_RETIRE, _AGAIN = object(), object()


def _kill_all(glets, block, timeout):
    """Kill ``glets`` (ComponentKilled); with ``block``, wait up to ``timeout`` seconds.
    (gevent's killall raises Timeout when one outlives it -- a handler that swallows the
    kill --; here the caller looks at who is still alive instead.)"""
    gevent.killall(glets, ComponentKilled, block=False)
    if block:
        gevent.joinall(glets, timeout=timeout)


class _Worker:
    __slots__ = ("greenlet", "idle", "busy_since", "stopping", "timeout_sent", "items")

    def __init__(self):
        self.greenlet = None
        self.items = None  # the iterator over the chunk in hand (what is left: not started)
        self.idle = False
        self.busy_since = None  # time.monotonic() the current item started, None if idle
        self.stopping = False
        self.timeout_sent = None  # the busy_since we already threw HandlerTimeout for


class ProcessorPool:
    """Worker greenlets running ``handler(item)`` for items of ``queue``."""

    #: Seconds stop() waits for running handlers before it kills the workers.
    stop_timeout = 10.0
    #: Seconds a worker above min_concurrency waits for an item before it exits.
    idle_timeout = 5.0
    #: Seconds between autoscale checks while the pool may still grow.
    scale_interval = 0.25
    #: Items a worker handles back to back before it yields to other greenlets (at the end
    #: of a chunk): a queue that always has an item never blocks ``get``, and a handler
    #: that never does I/O would otherwise hold the hub (and every other instance) for a
    #: whole backlog.
    yield_every = 64
    #: Upper bounds (seconds) of the handler latency histogram (Prometheus-style buckets).
    latency_bounds = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                      2.5, 5.0, 10.0)

    #: Tries of a handler that raised, on the same item, before the error path
    #: (``queue.failed``): DESIGN's "retry 3 times" (0: fail at once). A timeout is not
    #: retried.
    retries = 3
    #: Seconds before the first retry, doubling for each further one (1 s, 2 s, 4 s).
    retry_delay = 1.0
    #: Fraction of each retry delay added or removed at random.
    retry_jitter = 0.1

    def __init__(self, queue, handler, min_concurrency=1, max_concurrency=1,
                 handler_timeout=60.0, name="", batch=None, order_key=None):
        self.name = name
        #: None while running or never started; "normal" or "abnormal" after the end.
        self.exit = None
        self.exception = None
        self._workers = {}  # greenlet -> _Worker
        self._running = False
        self._ending = None  # None | "stop" | "kill"
        self._links = Links("pool")
        self.queue = queue
        self.handler = handler
        check_concurrency(min_concurrency, max_concurrency)
        self.min_concurrency, self.max_concurrency = min_concurrency, max_concurrency
        self._wake_manager = gevent.event.Event()
        self.handler_timeout = handler_timeout
        self.processed = self.failed = self.timed_out = self.retried = 0
        #: Seconds workers spent waiting to retry (left out of the latency histogram).
        self.retry_waited = 0.0
        #: Handled items per latency bucket (the last one: above every bound), and the sum.
        self.latency_counts = [0] * (len(self.latency_bounds) + 1)
        self.latency_sum = 0.0
        #: repr() of the last handler error or timeout, None if none yet.
        self.last_error = None
        self._failure_log = LogLimiter()
        self._manager = None
        self._stragglers = []  # workers of the previous pool on the queue, still running
        self._after = None
        #: None: ``handler(item)``; N: ``handler(list of up to N)`` (instances.batching).
        self.batch = check_batch(batch)
        #: None, or the :class:`~instances.ordering.KeyOrder` of ``order_key`` (``"channel"``,
        #: ``"payload"`` or a callable taking an item).
        self.order = None if order_key is None else KeyOrder(key_function(order_key))
        self._settle = self._settler()

    # -- owner API ---------------------------------------------------------------------
    @property
    def handler_timeout(self):
        """Seconds a handler may run (None: no limit); settable live, applies at once."""
        return self._handler_timeout

    @handler_timeout.setter
    def handler_timeout(self, seconds):
        self._handler_timeout = check_handler_timeout(seconds)
        self._wake_manager.set()

    def start(self):
        """Spawn min_concurrency workers and the manager; no-op while alive. Returns self.

        Never two pools' handlers at once on one queue: while workers of the pool started
        before on the same queue still run (a stop gave up on handlers that ignored the
        kill), the workers of this one start only once those are gone."""
        if self._running:
            return self
        stragglers = self._stragglers_before()
        self._running, self._ending = True, None
        self.exit = self.exception = None
        self._workers = {}
        self._settle = self._settler()
        self._stragglers = stragglers
        if stragglers:
            self._after = gevent.spawn(self._start_after, stragglers)
        for _ in range(self.min_concurrency):
            self._spawn_worker()
        self._manager = gevent.spawn(self._manage)
        return self

    def _stragglers_before(self):
        """The workers still alive of the last pool started on this queue (this pool
        included); this pool is the last one from now on."""
        try:
            previous = _last_pool.get(self.queue)
            _last_pool[self.queue] = self
        except TypeError:  # a queue that cannot be a weak key: not tracked
            return []
        if previous is None:
            return []
        return [w for w in previous._workers.values() if not w.greenlet.dead]

    def _start_after(self, stragglers):
        """Wait (this greenlet) for ``stragglers`` to end, then spawn min_concurrency
        workers. Meanwhile the pool is alive without workers; its heartbeat is theirs."""
        log.warning("pool %s: %d worker(s) of the previous pool on this queue still run "
                    "(their handlers ignored the kill): this pool starts once they are gone",
                    self.name, len(stragglers),
                    extra={"action": "pool.waits_for_stragglers", "instance": self.name})
        gevent.joinall([w.greenlet for w in stragglers])
        self._stragglers = []
        if self._running and not self._ending:
            for _ in range(self.min_concurrency):
                self._spawn_worker()
            log.info("pool %s: the previous pool's workers are gone, started", self.name,
                     extra={"action": "pool.started_after_stragglers", "instance": self.name})

    def resize(self, min_concurrency, max_concurrency):
        """Change the bounds live: spawn up to the new min; retire workers above the new
        max (idle ones at once, busy ones after their current item)."""
        check_concurrency(min_concurrency, max_concurrency)
        self.min_concurrency, self.max_concurrency = min_concurrency, max_concurrency
        if not self._running or self._ending:
            return
        self._wake_manager.set()
        while self._active() < min_concurrency:
            self._spawn_worker()
        surplus = self._active() - max_concurrency
        for worker in sorted(self._workers.values(), key=lambda w: not w.idle):
            if surplus <= 0:
                break
            if not worker.stopping:
                self._retire(worker)
                surplus -= 1

    @property
    def alive(self):
        return self._running

    @property
    def held(self):
        """Items taken from the queue that wait for a worker (``order_key``: ready, or
        held behind a running key)."""
        return self.order.waiting if self.order is not None else 0

    @property
    def in_hand(self):
        """Items of the chunks the workers took that have not started yet (they left the
        queue with their chunk, and still wait: an instance's backlog counts them)."""
        return sum(length_hint(w.items) for w in list(self._workers.values())
                   if w.items is not None)

    @property
    def size(self):
        """Worker greenlets alive now (including ones finishing before they exit)."""
        return len(self._workers)

    def stop(self, timeout=None):
        """Let running handlers finish, then end; after ``timeout`` seconds kill them.

        Idle workers are interrupted at once; items not started stay in the queue. Blocks
        the caller. Returns True when every worker ended by itself.
        """
        if not self._running:
            return self.exit != "abnormal"
        if self._ending is None:
            self._ending = "stop"
        workers = list(self._workers.values())
        for worker in workers:
            self._retire(worker)
        if any(w.greenlet is getcurrent() for w in workers):
            return True  # called from a handler: asked, cannot wait for ourselves
        timeout = self.stop_timeout if timeout is None else timeout
        gevent.joinall([w.greenlet for w in workers], timeout=timeout)
        stuck = [w.greenlet for w in workers if not w.greenlet.dead]
        if stuck:
            log.warning("pool %s: %d handler(s) still running after %.1fs: killing them",
                        self.name, len(stuck), timeout,
                        extra={"action": "pool.stop_timeout", "instance": self.name})
            self._ending = "kill"
            self.exception = ComponentKilled("handlers killed at stop")
            _kill_all(stuck, True, timeout)
        if self._running:  # a worker that ignored the kill: give up on it
            self._finish("abnormal" if stuck else "normal", self.exception)
        return not stuck and self.exit == "normal"

    def kill(self, block=True, timeout=None):
        """End the pool as a crash would: workers die where they are (exit "abnormal").

        The items being handled and the rest of their chunks go back to the queue.
        ``block``: wait up to ``timeout`` seconds for the workers to die; pass
        ``block=False`` from the hub (a link callback), which cannot wait.
        """
        if not self._running:
            return
        self._ending = "kill"
        self.exception = self.exception or ComponentKilled("pool %s killed" % self.name)
        glets = list(self._workers)
        for glet in glets:
            self._workers[glet].stopping = True
        _kill_all(glets, block, timeout)
        for glet in glets:  # one killed before it ever ran has no finally to remove it
            if glet.dead:
                self._workers.pop(glet, None)
        if not self._workers and self._running:
            self._finish("abnormal", self.exception)

    def join(self, timeout=None):
        """Block until every worker has ended or ``timeout``; True if the pool ended."""
        gevent.joinall(list(self._workers), timeout=timeout)
        return not self._running

    def link(self, callback):
        """Call ``callback(pool)`` in the hub whenever the pool ends. MUST NOT block/raise."""
        self._links.add(callback)

    def unlink(self, callback):
        self._links.remove(callback)

    # -- health ------------------------------------------------------------------------
    @property
    def busy_since(self):
        """time.monotonic() when the oldest running handler started; None if none runs."""
        starts = [w.busy_since for w in self._workers.values() if w.busy_since is not None]
        return min(starts) if starts else None

    @property
    def heartbeat(self):
        """Now while the pool makes progress: a worker waits for items (idle is alive), or
        a handler runs within ``handler_timeout`` (slow is not hung; without a timeout a
        handler may run as long as it likes). Once every handler is past its deadline --
        interrupted, and ignoring it -- the newest deadline: the supervisor's
        ``heartbeat_timeout`` after it is the margin before the pool counts as hung.
        None when no worker runs. While the workers of the previous pool on the queue
        still run (see :meth:`start`), theirs: a handler that ignores every interrupt
        makes this pool hung too."""
        now, limit = time.monotonic(), self.handler_timeout
        beats = []
        for worker in list(self._workers.values()) or self._stragglers:
            if worker.busy_since is None or limit is None:
                return now
            beats.append(min(now, worker.busy_since + limit))
        return max(beats) if beats else None

    def stats(self):
        return {"size": self.size, "processed": self.processed, "failed": self.failed,
                "timed_out": self.timed_out, "last_error": self.last_error,
                "busy_since": self.busy_since, "latency_buckets": self.latency_buckets(),
                "latency_sum": self.latency_sum}

    def latency_buckets(self):
        """Cumulative ``[(upper bound in seconds, count), ...]``, the last bound ``"+Inf"``."""
        total, cumulative = 0, []
        for bound, count in zip(self.latency_bounds + ("+Inf",), self.latency_counts,
                                strict=True):
            total += count
            cumulative.append((bound, total))
        return cumulative

    # -- workers -----------------------------------------------------------------------
    def _active(self):
        return sum(1 for w in self._workers.values() if not w.stopping)

    def _spawn_worker(self):
        if self._stragglers:  # _start_after spawns them once the previous pool is gone
            return
        worker = _Worker()
        worker.greenlet = glet = gevent.Greenlet(self._work, worker)
        self._workers[glet] = worker
        glet.link(self._on_worker_end)
        glet.start()

    def _retire(self, worker):
        worker.stopping = True
        interrupt_if(worker.greenlet, lambda: worker.idle, _Stop())

    def _work(self, worker):
        try:
            if self.batch is not None:
                self._loop_batches(worker)
            elif self.order is not None:
                self._loop_ordered(worker)
            else:
                self._loop(worker)
        except (_Stop, Closed):
            pass
        except Exception as error:  # the queue failed us: the pool cannot go on
            log.exception("pool %s: worker crashed", self.name,
                          extra={"action": "pool.worker_crashed", "instance": self.name})
            self._crash(error)
        finally:
            self._workers.pop(worker.greenlet, None)

    # -- the work ----------------------------------------------------------------------
    def _loop(self, worker):
        """Block for a chunk, run it, again. A get that finds work never blocks, so while
        a backlog lasts the worker yields to the hub after every ``yield_every`` items."""
        take, streak = self._taker(), 0
        while not worker.stopping:
            worker.idle = True
            try:
                chunk = take(self.idle_timeout if len(self._workers) > self.min_concurrency
                             else None)
            except Empty:
                if self._active() > self.min_concurrency:
                    return
                continue
            finally:
                worker.idle = False
            self._run_chunk(worker, chunk)
            streak += len(chunk)
            if streak >= self.yield_every:
                streak = 0
                if self.queue.qsize():
                    gevent.sleep(0)

    def _taker(self):
        """``take(timeout) -> chunk``: a chunk queue's ``get_chunk``, sharing a backlog
        out among ``max_concurrency`` workers; else one ``get`` as a chunk of one."""
        queue = self.queue
        get_chunk = getattr(queue, "get_chunk", None)
        if get_chunk is not None:
            return lambda timeout: get_chunk(True, timeout, self.max_concurrency)
        get = queue.get
        return lambda timeout: (get(True, timeout),)

    def _run_chunk(self, worker, chunk):
        """The per-item loop (the hot path): ``handler(item)`` for each item of ``chunk``,
        in order. Per item: one clock read (the handler's deadline counts from it) and the
        handler call. Counters, the latency histogram and a chunk queue's outcome
        (``done_many``) once per chunk; a queue without chunks gets ``done``/``forward``
        per item. A raising handler takes the slow path (:meth:`_handler_failed`) and the
        loop goes on. A stop ends the loop after the current item; what was not finished
        (a stop, a kill, an interrupted retry wait) goes back to the queue, first in line."""
        handler, monotonic, settle = self.handler, time.monotonic, self._settle
        failures, waited = self.failed + self.timed_out, self.retry_waited
        items = worker.items = iter(chunk)
        item = settled = _NOTHING
        started = monotonic()
        try:
            if settle is None:  # a chunk queue: the outcome per chunk (done_many)
                for item in items:
                    worker.busy_since = monotonic()
                    try:
                        handler(item)
                    except _FAILURES as error:
                        self._handler_failed(worker, item, error)
                        settled = item
                    if worker.stopping:
                        break
            else:
                for item in items:
                    worker.busy_since = monotonic()
                    try:
                        result = handler(item)
                    except _FAILURES as error:
                        self._handler_failed(worker, item, error)
                    else:
                        settle(item, result)
                    settled = item
                    if worker.stopping:
                        break
        except BaseException:  # killed or stopped where it was: no outcome for the rest
            worker.busy_since = worker.items = None
            self._put_back(([item] if item is not settled else []) + list(items))
            raise
        worker.busy_since = worker.items = None
        rest = list(items)  # a stop came: these never started
        if rest:
            self._put_back(rest)
        self._count(len(chunk) - len(rest), failures, started, waited)

    def _count(self, ran, failures, started, waited):
        """Once per chunk: ``ran`` items had an outcome; those that did not fail are
        processed, each counted in the latency bucket of the chunk's mean handler time
        (retry waits left out)."""
        ok = ran - (self.failed + self.timed_out - failures)
        if ok <= 0:
            return
        elapsed = time.monotonic() - started - (self.retry_waited - waited)
        mean = max(elapsed, 0.0) / ran
        self.processed += ok
        self.latency_counts[bisect.bisect_left(self.latency_bounds, mean)] += ok
        self.latency_sum += mean * ok
        if self._settle is None:
            self.queue.done_many(ok)

    def _handler_failed(self, worker, item, error):
        """The slow path of one item whose handler raised ``error``: a timeout goes to the
        error path at once; anything else is tried again (:meth:`_retry_wait` first) until
        it succeeds or :attr:`retries` are used, then the error path."""
        worker.busy_since = None
        tries = 0
        while not isinstance(error, HandlerTimeout):
            if tries >= self.retries:
                self._failed(item, error)
                return
            tries += 1
            self._retry_wait(worker, item, error, tries)
            worker.busy_since = time.monotonic()
            try:
                result = self.handler(item)
            except _FAILURES as again:
                worker.busy_since = None
                error = again
                continue
            worker.busy_since = None
            if self._settle is not None:
                self._settle(item, result)
            return
        self._timed_out(item, error)

    # -- batches and per-key order (instances.batching, instances.ordering) --------------
    def _wait_for(self, worker, take):
        """``take(timeout)`` as the hot path blocks (idle meanwhile); _RETIRE when an idle
        worker above min_concurrency should exit, _AGAIN after an idle timeout."""
        worker.idle = True
        try:
            return take(self.idle_timeout if len(self._workers) > self.min_concurrency
                        else None)
        except Empty:
            return _RETIRE if self._active() > self.min_concurrency else _AGAIN
        finally:
            worker.idle = False

    def _sources(self):
        """``(take(timeout), more())``: a chunk queue's ``get_chunk`` (blocking, then not;
        split among ``max_concurrency`` workers), else ``get`` as a chunk of one."""
        get_chunk = getattr(self.queue, "get_chunk", None)
        split = self.max_concurrency
        if get_chunk is not None:
            return (lambda timeout: get_chunk(True, timeout, split),
                    lambda: get_chunk(False, None, split))
        get = self.queue.get
        return (lambda timeout: (get(True, timeout),)), (lambda: (get(False),))

    def _loop_ordered(self, worker):
        """The worker of an ``order_key`` pool: run a ready item and what is held behind
        its key; with nothing ready, wait for the turn to take from the queue, take and
        dispatch (see instances.ordering)."""
        order, take, handled = self.order, self._sources()[0], 0
        try:
            while not worker.stopping:
                entry = order.take_ready()
                if entry is None:
                    entry = self._take_turn(worker, take)
                    if entry is _RETIRE:
                        return
                    if entry is _AGAIN:
                        continue
                handled += self._run_key(worker, *entry)
                if handled >= self.yield_every:
                    handled = 0
                    gevent.sleep(0)  # a queue that always has work never blocks
        finally:
            if self._ending:  # the pool ends: nobody runs what is ready, give it back
                self._put_back(order.take_all_ready())

    def _take_turn(self, worker, take):
        """Hold the turn: something ready by now, else (room permitting) take from the
        queue and dispatch it. A ready ``(key, item)``, or _RETIRE / _AGAIN."""
        order = self.order
        got = self._wait_for(worker, order.take_turn)
        if got is _RETIRE or got is _AGAIN:
            return got
        try:
            while True:
                entry = order.take_ready()
                if entry is not None or worker.stopping:
                    return entry or _AGAIN
                wait = order.wait_for_room if order.full else take
                got = self._wait_for(worker, wait)
                if got is _RETIRE or got is _AGAIN:
                    return got
                if wait is take:
                    order.dispatch(got, self._failed)
        finally:
            order.end_turn()

    def _run_key(self, worker, key, item):
        """Run ``item`` and every item held behind ``key``, in order; return how many. A
        stop (or a kill) gives what is still held back to the queue's front, in order."""
        order, count = self.order, 0
        try:
            while item is not None:
                self._handle(worker, item, item)
                count += 1
                if worker.stopping:
                    break
                item = order.next(key)
            else:
                return count
        except BaseException:  # killed or stopped in it: the item, then what waits behind
            self._put_back([item] + order.give_up(key))
            raise
        self._put_back(order.give_up(key))
        return count

    def _loop_batches(self, worker):
        """The worker of a ``batch`` pool: lists of up to ``batch`` items per call, cut from
        what the queue hands over (whole chunks of a chunk queue, else single items)."""
        take, more = self._sources()
        pending, live, handled = [], True, 0
        try:
            while not worker.stopping:
                if not pending:
                    got = self._wait_for(worker, take)
                    if got is _RETIRE:
                        return
                    if got is _AGAIN:
                        continue
                    live = type(got) is LiveRead  # a read of NOTIFYs: no catch_up to look for
                    pending.extend(got)
                batch, live = cut_batch(pending, more, self.batch, live)
                self._run_batch(worker, batch, pending)
                handled += len(batch)
                if handled >= self.yield_every:
                    handled = 0
                    gevent.sleep(0)
        finally:
            if pending:  # taken, never started: back to the front, in order
                self._put_back(pending)

    def _run_batch(self, worker, batch, pending):
        """``handler(batch)`` with the retry policy; all done, or each item alone. What of
        the batch gets no outcome here (a stop, a kill) goes back to the queue's front with
        ``pending`` (taken after it; emptied) behind it: the queue's order."""
        tries, settled = 0, 0
        try:
            while True:
                started = worker.busy_since = time.monotonic()
                try:
                    self.handler(batch)
                except HandlerTimeout as interrupt:
                    worker.busy_since = None
                    if len(batch) == 1:
                        settled = 1
                        return self._timed_out(batch[0], interrupt)
                    self._log_batch_failure(batch, "timed out")
                    break
                except _HANDLER_FAILURES as error:
                    worker.busy_since = None
                    if tries < self.retries:
                        tries += 1
                        self._retry_wait(worker, batch, error, tries)
                        continue
                    if len(batch) == 1:
                        settled = 1
                        return self._failed(batch[0], error)
                    self._log_batch_failure(batch, repr(error))
                    break
                worker.busy_since = None
                self._batch_done(batch, time.monotonic() - started)
                settled = len(batch)
                return None
            for item in batch:  # isolate the poison one(s)
                if worker.stopping:
                    break
                self._handle(worker, item, [item])
                settled += 1
        finally:
            if settled < len(batch):  # a stop or a kill: the rest, then what came after
                rest = batch[settled:] + pending
                del pending[:]
                self._put_back(rest)
        return None

    def _batch_done(self, batch, elapsed):
        done_many = getattr(self.queue, "done_many", None)  # a chunk queue: one call
        if done_many is not None:
            done_many(len(batch))
        else:
            done = self.queue.done
            for item in batch:
                done(item)
        self.processed += len(batch)
        self.latency_counts[bisect.bisect_left(self.latency_bounds, elapsed)] += 1
        self.latency_sum += elapsed

    def _log_batch_failure(self, batch, why):
        allowed, held = self._failure_log.allow("handler.batch_failed")
        if allowed:
            log.warning("pool %s: a batch of %d failed (%s)%s: handling each alone",
                        self.name, len(batch), shorten(why),
                        " (%d similar lines held back)" % held if held else "",
                        extra={"action": "handler.batch_failed", "instance": self.name,
                               "held_back": held})

    def _handle(self, worker, item, arg):
        """``handler(arg)`` for ``item`` (``arg``: the item, or ``[item]`` for a batch
        handler) with the retry policy, then its outcome, as the hot path does inline."""
        forward = getattr(self.queue, "forward", None)
        tries = 0
        while True:
            started = worker.busy_since = time.monotonic()
            try:
                result = self.handler(arg)
            except HandlerTimeout:
                worker.busy_since = None
                return self._timed_out(item)
            except _HANDLER_FAILURES as error:
                worker.busy_since = None
                if tries < self.retries:
                    tries += 1
                    self._retry_wait(worker, item, error, tries)
                    continue
                return self._failed(item, error)
            elapsed = time.monotonic() - started
            worker.busy_since = None
            if forward is None:
                self.queue.done(item)
            else:
                failed = self.failed
                self._forwarded(forward, item, result)
                if self.failed != failed:  # an output it could not write: failed instead
                    return None
            self.processed += 1
            self.latency_counts[bisect.bisect_left(self.latency_bounds, elapsed)] += 1
            self.latency_sum += elapsed
            return None

    def _put_back(self, items):
        """Items taken from the queue that get no outcome here (the rest of a chunk after
        a stop; after a kill or an interrupted retry wait the item in flight too) go back
        to its front, in order: a memory queue's ``give_back``, else each item's
        ``release`` (a spool hands each out first: hence reversed). Never raises: the
        worker may be dying already (logged)."""
        if not items:
            return
        queue = self.queue
        try:
            many = getattr(queue, "release_many", None) or getattr(queue, "give_back", None)
            if many is not None:
                many(list(items))
                return
            for item in reversed(items):
                try:
                    queue.release(item)
                except ValueError:  # settled meanwhile: not ours to give back
                    pass
        except Exception:
            log.exception("pool %s: could not give back %d item(s)", self.name, len(items),
                          extra={"action": "pool.release_failed", "instance": self.name})

    def _retry_wait(self, worker, item, error, tries):
        """Wait before try ``tries + 1`` of ``item``: :attr:`retry_delay` doubling, with
        :attr:`retry_jitter`. The worker counts as idle meanwhile, so a stop or a retire
        interrupts the wait at once (the item is then given back, not failed)."""
        self.retried += 1
        self.last_error = repr(error)
        backoff = Backoff(self.retry_delay, 2.0, self.retry_delay * 2.0 ** self.retries,
                          self.retry_jitter)
        backoff.attempts = tries - 1
        delay = backoff.next()
        allowed, held = self._failure_log.allow("handler.retry")
        if allowed:
            log.warning("pool %s: handler failed on %s (%s), try %d of %d in %.1fs%s",
                        self.name, shorten(repr(item)), shorten(repr(error)), tries + 1,
                        self.retries + 1, delay,
                        " (%d similar lines held back)" % held if held else "",
                        extra={"action": "handler.retry", "instance": self.name,
                               "held_back": held})
        worker.idle = True
        began = time.monotonic()
        try:
            if worker.stopping:
                raise _Stop()
            gevent.sleep(delay)
        finally:
            worker.idle = False
            self.retry_waited += time.monotonic() - began

    def _settler(self):
        """``settle(item, result)`` per item for a queue without chunks (None for a chunk
        queue: ``done_many`` per chunk): ``forward`` (a FileQueue: the result goes on to
        its output queue) or ``done``."""
        queue = self.queue
        if hasattr(queue, "get_chunk"):
            return None
        forward = getattr(queue, "forward", None)
        if forward is None:
            done = queue.done
            return lambda item, result: done(item)
        return lambda item, result: self._forwarded(forward, item, result)

    def _drop(self, item):
        """A worker dies holding ``item`` without an outcome: a queue that can take it
        back (a FileQueue's ``release``) hands it out again (or, closed, gives its file
        back to ``incoming/``) instead of leaving it claimed until the process ends. An
        item that already had its outcome is not the queue's any more: nothing to do."""
        release = getattr(self.queue, "release", None)
        if release is not None:
            try:
                release(item)
            except ValueError:
                pass
            except Exception:  # dying already: log, never mask the kill
                log.exception("pool %s: could not give back %s", self.name,
                              shorten(repr(item)),
                              extra={"action": "pool.release_failed", "instance": self.name})

    def _forwarded(self, forward, item, result):
        """Hand the handler's ``result`` on; an output the queue cannot write (not a
        message, not JSON) fails that item alone, as if the handler had raised."""
        try:
            forward(item, result)
        except (TypeError, ValueError) as error:
            self._failed(item, error)
            return False
        return True

    def _failed(self, item, error):
        read_sources(error)
        tb_text = "".join(traceback.format_exception(error))
        self.failed += 1
        self.last_error = repr(error)
        self._log_failure("handler.error", "handler failed on", item, error)
        self.queue.failed(item, error, tb_text)

    def _timed_out(self, item, interrupt=None):
        # where the handler was when it was stopped (the one being handled by default)
        if interrupt is None:
            interrupt = sys.exc_info()[1]
        read_sources(interrupt)
        tb_text = "".join(traceback.format_exception(interrupt))
        error = TimeoutError("handler ran longer than %ss" % self.handler_timeout)
        self.timed_out += 1
        self.last_error = repr(error)
        self._log_failure("handler.timeout", "handler timed out on", item, interrupt)
        self.queue.failed(item, error, tb_text)

    def _log_failure(self, action, what, item, error):
        """One ERROR line with the traceback, the item cut to ITEM_CHARS, at most
        ``LogLimiter.burst`` a minute per pool: the counters count every failure, the log
        says how many lines it held back (a poison backlog must not flood it)."""
        allowed, held = self._failure_log.allow(action)
        if allowed:
            log.error("pool %s: %s %s%s", self.name, what, shorten(repr(item)),
                      " (%d similar lines held back)" % held if held else "", exc_info=error,
                      extra={"action": action, "instance": self.name, "held_back": held})

    # -- manager: autoscale and handler deadlines ----------------------------------------
    def _manage(self):
        while self._running:
            delay = self._enforce_deadlines()
            if self._active() < self.max_concurrency and not self._ending:
                self._maybe_grow()
                delay = min(delay, self.scale_interval)
            self._wake_manager.wait(delay)  # resize() wakes it early
            self._wake_manager.clear()

    def _maybe_grow(self):
        workers = self._workers.values()
        busy = all(w.busy_since is not None for w in workers if not w.stopping)
        if busy and self.queue.qsize() + self.held > self._active():
            self._spawn_worker()
            log.debug("pool %s: grew to %d", self.name, self._active(),
                      extra={"action": "pool.grow", "instance": self.name})

    def _enforce_deadlines(self):
        """Throw HandlerTimeout into overdue handlers; return seconds to the next deadline."""
        limit = self.handler_timeout
        if limit is None:
            return 3600.0
        now, next_check = time.monotonic(), limit
        for worker in list(self._workers.values()):
            since = worker.busy_since
            if since is None:
                continue
            # A handler that swallowed the first throw gets another one a full limit later.
            deadline = since + limit * (2 if worker.timeout_sent is since else 1)
            if deadline <= now:
                worker.timeout_sent = since
                interrupt_if(worker.greenlet, lambda w=worker, s=since: w.busy_since is s,
                             HandlerTimeout())
                deadline = now + limit
            next_check = min(next_check, deadline - now)
        return max(next_check, 0.001)

    # -- the end -----------------------------------------------------------------------
    def _crash(self, error):
        if self._ending != "kill":
            self._ending, self.exception = "kill", error
            for glet, worker in list(self._workers.items()):
                worker.stopping = True
                if glet is not getcurrent():
                    glet.kill(ComponentKilled, block=False)

    def _on_worker_end(self, glet):
        """Hub: a worker greenlet ended. The pool ends with its last worker: abnormally
        after kill() or a crash, normally after stop() or when the queue was closed."""
        self._workers.pop(glet, None)
        if self._workers or not self._running:
            return
        if self._ending == "kill":
            self._finish("abnormal", self.exception)
        else:
            self._finish("normal", None)

    def _finish(self, exit, exception):
        self._running = False
        self.exit, self.exception = exit, exception
        if self._manager is not None:
            self._manager.kill(block=False)
        if self._after is not None:
            self._after.kill(block=False)
            self._after = None
        log.info("pool %s ended (%s)", self.name, exit,
                 extra={"action": "pool.ended", "instance": self.name})
        self._links.notify_soon(self)

    def __repr__(self):
        return "<ProcessorPool %s size=%d processed=%d failed=%d %s>" % (
            self.name, self.size, self.processed, self.failed,
            "alive" if self._running else (self.exit or "new"))


#: Source files a traceback named that linecache could not read (relative names of
#: compiled modules, "<string>"): not looked for again.
_no_source = set()


def read_sources(error):
    """Read the source files of ``error``'s traceback (its causes and contexts too) into
    :mod:`linecache` in the threadpool, blocking the calling greenlet only.

    Formatting a traceback reads the source line of every frame, from disk the first time
    a file is named: the handler's modules, gevent's ``hub.py`` for a handler stopped in a
    sleep, and a stat of every ``sys.path`` entry for each relative name of a compiled
    module. Done on the hub, that stalled every greenlet (118 ms at a handler timeout, the
    disk busy with other processes' fsyncs). Once read, formatting finds the lines in
    memory: the hub then only formats. Nothing to read (the usual case: the same handler
    failing again), no threadpool call."""
    names, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        tb = error.__traceback__
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if name not in linecache.cache and name not in _no_source:
                names.append(name)
            tb = tb.tb_next
        error = error.__cause__ or error.__context__
    if names and getcurrent() is not gevent.get_hub():
        _no_source.update(gevent.get_hub().threadpool.apply(_read, (names,)))


def _read(names):
    """In the threadpool: ``names`` into linecache; the ones it could not read."""
    return [name for name in set(names) if not linecache.getlines(name)]
