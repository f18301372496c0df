"""The :class:`Instance`: the runtime of one :class:`~instances.spec.InstanceSpec`.

An instance is a subscription + its queue + a pool of processors calling the handler::

    Postgres NOTIFY -> the node's notifier (shared) -> queue -> processors -> handler(n)

By default (``connection="shared"``) the instance's source is a
:class:`~instances.notifier.Subscription` to the notifier of its DSN in ``notifiers`` (the
supervisor's :class:`~instances.notifier.Notifiers`; an instance built without one gets a
private one): one LISTEN connection serves every instance of a node and database, a full
memory queue overflows into one coalesced ``catch_up`` instead of stalling the reader.
With ``connection="own"`` the source is a :class:`PostgresNotificationListener` on a
connection of its own (a full queue blocks that listener: back-pressure, nothing dropped).
Below, "listener" means either source. With ``catch_up_interval`` a ticker puts one
``catch_up`` every that many seconds while connected (the polling fallback).

With ``queue={"spool": DIR, ...}`` the queue is a FileQueue (the listener spools each
drained read as one batch file unless ``batch`` is false; with ``queue_out_dir`` the
handler's return value goes on, see :mod:`instances.processors`); with
``isolation="process"`` the processors are child processes sharing that spool
(:mod:`instances.isolation.parent`), and a worker that dies or hangs ends the instance "abnormal".
A *spool source* (``channels=[]``) has no listener and no database: mentat's piper as an
instance, ``spool DIR -> processors -> handler(message) -> queue_out_dir (optional)``.

The queue belongs to the Instance object, not to its parts: what is queued survives a
restart of the instance inside the same process (and, with a spool, a crash of it).

Lifecycle::

    new --start()--> alive --stop()/drain()--> ended "normal" (or "abnormal": killed)
                       |  \\--kill()--> ended "abnormal" (as a crash would)
                       \\--a part ends by itself--> the other part is killed,
                                                  ended "abnormal" (or "normal")
    every end calls on_death(instance) once, unless it was asked for by stop()/drain()

stop() is for a restart (what is queued stays for the next Instance on the queue);
drain() is for the end of the process (a memory queue's backlog is worked off first).

Concurrency: every method is for greenlets of the hub's thread; ``on_death`` and
``on_connection_lost`` are called in the hub and MUST NOT block or raise.
"""
import logging
import time

import gevent

from instances.listeners import PostgresNotificationListener
from instances.notification import Notification
from instances.notifier import Notifiers, Subscription
from instances.processors import ProcessorPool
from instances.queues import Closed, Full, MemoryQueue

log = logging.getLogger(__name__)

#: Notifications per spool file with process isolation: a batch file is claimed whole by
#: one worker process, so smaller batches spread a burst over the processes.
PROCESS_BATCH_SIZE = 16


def make_queue(spec, owner=None):
    """The queue an instance of ``spec`` uses: a MemoryQueue, or a FileQueue spool opened
    with the spec's queue options (``owner`` labels its claims, as in FileQueue)."""
    if spec.queue is None:
        return MemoryQueue(spec.queue_size)
    from instances.spool import FileQueue  # the spool is optional weight
    return FileQueue.from_spec(spec.queue, owner=owner)


def make_pool(spec, queue, handler, order_key=None):
    """The processors of ``spec``: greenlets in this process, or worker processes
    (``isolation="process"``, see :mod:`instances.isolation.parent`) sharing the spool.
    ``order_key``: the spec's, resolved (:meth:`InstanceSpec.resolve_order_key`)."""
    if spec.isolation == "process":
        from instances.isolation.parent import WorkerProcesses
        return WorkerProcesses(queue, spec)
    return ProcessorPool(queue, handler, spec.min_concurrency, spec.max_concurrency,
                         spec.handler_timeout, spec.name, batch=spec.batch,
                         order_key=order_key)


class Instance:
    """The running form of ``spec``: start, stop, kill, apply live changes, report health.

    ``dsn`` is used unless the spec overrides it. ``on_death(instance)`` is told about
    every end not asked for by :meth:`stop`; ``on_connection_lost(instance, error)`` about
    every lost database connection (the instance keeps reconnecting by itself).
    ``notifiers`` is the node's :class:`~instances.notifier.Notifiers` a shared-connection
    instance subscribes to (None: a private one, for an instance used on its own).
    """

    #: Seconds between looks at a memory queue's backlog while :meth:`drain` waits.
    drain_poll_interval = 0.02

    def __init__(self, spec, dsn, on_death=None, on_connection_lost=None, queue=None,
                 notifiers=None):
        self.spec = spec
        self.dsn = spec.dsn if spec.dsn is not None else dsn
        self.on_death = on_death
        self.on_connection_lost = on_connection_lost
        self.queue = queue if queue is not None else make_queue(spec)
        self.notifiers = notifiers
        self.listener = None
        self.pool = None
        self._ticker = None
        #: None while alive or never started; "normal" or "abnormal" after an end.
        self.exit = None
        #: The exception that ended the instance, if any.
        self.exception = None
        self.started_at = None
        self.ended_at = None
        self._stopping = False
        self._handler = spec.resolve_handler()
        self._order_key = spec.resolve_order_key()

    @property
    def name(self):
        return self.spec.name

    @property
    def alive(self):
        listening = not self.spec.channels or (self.listener and self.listener.is_alive())
        return bool(listening and self.pool and self.pool.alive)

    @property
    def connected(self):
        """True while the listener is connected; always for a spool-source instance
        (nothing to connect)."""
        return not self.spec.channels or bool(self.listener and self.listener.connected)

    def start(self):
        """Start listener and processors; returns at once (connecting happens in the
        listener's greenlet). A spool-source instance starts its processors only.
        No-op while alive."""
        if self.alive:
            return self
        self.exit = self.exception = None
        self._stopping = False
        spec = self.spec
        self.pool = make_pool(spec, self.queue, self._handler, self._order_key)
        self.pool.link(self._part_ended)
        self.listener = self._make_listener() if spec.channels else None
        self.started_at, self.ended_at = time.time(), None
        self.pool.start()
        if self.listener is not None:
            self.listener.start()
            if spec.catch_up_interval:
                self._ticker = gevent.spawn(self._tick_catch_ups, spec.catch_up_interval)
        log.info("instance %s started", spec.name,
                 extra={"action": "instance.start", "instance": spec.name})
        return self

    def _make_listener(self):
        spec = self.spec
        # A spool takes each drained read as one file (one write, fsync, rename).
        batch = bool(spec.queue is not None and spec.queue.get("batch", True))
        if spec.connection == "shared":
            if self.notifiers is None:
                self.notifiers = Notifiers()
            source = Subscription(self.notifiers, self.dsn, spec.channels, self.queue,
                                  name=spec.name, batch=batch,
                                  on_connection_lost=self._connection_lost)
            if spec.isolation == "process":
                source.batch_size = PROCESS_BATCH_SIZE
                self.queue.group_max = PROCESS_BATCH_SIZE  # the group commit too
            source.link(self._part_ended)
            return source
        listener = PostgresNotificationListener(
            self.dsn, spec.channels, self.queue, name=spec.name,
            on_connection_lost=self._connection_lost)
        listener.batch = batch
        if spec.isolation == "process":
            listener.batch_size = PROCESS_BATCH_SIZE
        listener.link(self._part_ended)
        return listener

    def stop(self, timeout=10.0):
        """Stop listening, let the processors finish their current item, then end them.

        Blocks the caller up to about ``timeout`` seconds; items not started stay queued
        (a new Instance on the same queue handles them). Returns True when everything
        ended cleanly. on_death is not called.
        """
        clean = self._shut(timeout, work_off=False)
        log.info("instance %s stopped%s", self.name, "" if clean else " (killed)",
                 extra={"action": "instance.stop", "instance": self.name})
        return clean

    def drain(self, timeout=10.0):
        """Shut down for good, handling what can be handled within ``timeout`` seconds.

        Stops the listener (no new notifications), lets the processors work off a memory
        queue's backlog until it is empty or the time is up, then stops the pool: handlers
        in flight finish within what is left, then are killed. What a memory queue still
        holds is dropped: logged with its count (``instance.dropped_at_shutdown``) and
        returned; the next start's ``catch_up`` is how the handler finds those rows. A
        spool keeps its backlog on disk for the next start: nothing is dropped (returns 0);
        it is closed, its claims back in ``incoming/`` with their attempts unchanged.

        Blocks the caller up to about ``timeout`` seconds (a handler that ignores the kill
        adds a moment). on_death is not called; :attr:`exit` says whether the end was clean.
        """
        clean = self._shut(timeout, work_off=self.spec.queue is None)
        extra = {"instance": self.name}
        if self.spec.queue is not None:
            self.queue.close()  # claims back to incoming/ unchanged: a clean stop, no crash
        backlog = self.queue.qsize()
        if self.spec.queue is not None:
            log.info("instance %s drained%s: nothing dropped, the spool keeps %d queued "
                     "notification(s) on disk for the next start", self.name,
                     "" if clean else " (killed)", backlog,
                     extra=dict(extra, action="instance.kept_at_shutdown", kept=backlog))
            return 0
        if backlog:
            log.warning("instance %s: %d queued notification(s) not handled, dropped at "
                        "shutdown (memory queue; the next start's catch_up covers them)",
                        self.name, backlog,
                        extra=dict(extra, action="instance.dropped_at_shutdown", dropped=backlog))
        log.info("instance %s drained%s", self.name, "" if clean else " (killed)",
                 extra=dict(extra, action="instance.drain"))
        return backlog

    def _shut(self, timeout, work_off):
        """Stop the listener, optionally wait for the queue to empty, stop the pool: all
        within about ``timeout`` seconds. Returns True when both parts ended cleanly."""
        self._stopping = True
        self._stop_ticker()
        deadline = time.monotonic() + timeout
        clean = True
        if self.listener is not None:
            clean = self.listener.stop(timeout) and clean
        pool = self.pool
        if work_off and pool is not None:
            # The pool keeps working (and autoscaling); nothing signals "empty": look
            # (at what per-key order holds out of the queue, too).
            while pool.alive and (self.queue.qsize() or getattr(pool, "held", 0)) \
                    and time.monotonic() < deadline:
                gevent.sleep(self.drain_poll_interval)
        if pool is not None:
            clean = pool.stop(max(0.1, deadline - time.monotonic())) and clean
        self._ended("normal" if clean else "abnormal", None)
        return clean

    def kill(self):
        """Kill listener and processors where they are, as a crash would (exit abnormal).

        Returns at once; on_death follows from the hub."""
        self._stop_ticker()
        for part in (self.listener, self.pool):
            if part is not None:
                part.kill(block=False)

    def reconnect_now(self):
        """The database is back (its owner knows): a source waiting out its reconnect
        backoff tries at once, the own listener or the shared notifier this instance
        subscribes to (:meth:`~instances.components.Component.retry_now`). Returns True if
        one was waiting to reconnect. Never blocks."""
        listener = self.listener
        source = getattr(listener, "notifier", listener)  # a Subscription: its notifier
        retry = getattr(source, "retry_now", None)
        return bool(retry is not None and self.alive and retry())

    def apply(self, spec):
        """Take ``spec`` live: channels and concurrency change without a restart.

        Changes :meth:`InstanceSpec.restart_fields` names (a handler, a queue, channels to
        or from none, ...) need a new Instance; raises ValueError for them.
        """
        restart = spec.restart_fields(self.spec)
        if restart:
            raise ValueError("fields %s need a restart" % ", ".join(restart))
        changed = set(spec.changed_fields(self.spec))
        self.spec = spec
        if self.listener is not None and "channels" in changed:
            self.listener.set_channels(spec.channels)
        if self.pool is not None:
            if changed & {"min_concurrency", "max_concurrency"}:
                self.pool.resize(spec.min_concurrency, spec.max_concurrency)
            self.pool.handler_timeout = spec.handler_timeout
        return changed

    def heartbeat_age(self):
        """Seconds since the least recent progress of listener or processors.

        A processor pool whose oldest handler runs past its timeout counts as hung too."""
        if not self.alive:
            return None
        now = time.monotonic()
        ages = [(self.listener.heartbeat_age() if self.listener else None) or 0.0]
        pool_beat = self.pool.heartbeat
        if pool_beat is not None:
            ages.append(now - pool_beat)
        return max(ages)

    def health(self):
        """A dict for status pages: connected, heartbeat age, backlog, counters, last error."""
        listener, pool = self.listener, self.pool
        pool_stats = pool.stats() if pool is not None else {}
        last_error = (listener.last_error if listener is not None else None) or (
            pool.last_error if pool is not None else None) or self.exception
        return {
            "alive": self.alive, "connected": self.connected, "exit": self.exit,
            "heartbeat_age": self.heartbeat_age(),
            "backlog": self.queue.qsize() + getattr(pool, "in_hand", 0),  # none: worker processes
            "spool_errors": self.queue.error_count() if self.spec.queue is not None else None,
            "received": listener.received if listener else 0,
            "catch_ups": listener.catch_ups if listener else 0,
            "reconnects": listener.reconnects if listener else 0,
            "subscription": self._subscription_status(),
            "dropped": getattr(listener, "dropped", 0),
            "overflows": getattr(listener, "overflows", 0),
            "processed": pool_stats.get("processed", 0),
            "failed": pool_stats.get("failed", 0),
            "timed_out": pool_stats.get("timed_out", 0),
            "concurrency": pool_stats.get("size", 0),
            "last_error": None if last_error is None else str(last_error),
            "latency_buckets": pool_stats.get("latency_buckets"),
            "latency_sum": pool_stats.get("latency_sum"),
        }

    def _subscription_status(self):
        """How the instance listens: shared (its notifier, dropped, overflows) or own."""
        listener = self.listener
        if isinstance(listener, Subscription):
            return listener.status()
        if listener is None:
            return None
        return {"connection": "own", "notifier": None, "connected": listener.connected,
                "channels": list(listener.channels), "dropped": 0, "overflows": 0,
                "overflowing": False}

    # -- the catch_up ticker (its own greenlet) -------------------------------------------
    def _tick_catch_ups(self, interval):
        """Every ``interval`` seconds while connected, one catch_up (never blocks the
        source: a shared subscription coalesces it, a full queue of an own listener skips
        it, as a catch_up is still waiting there)."""
        while True:
            gevent.sleep(interval)
            listener = self.listener
            if listener is None or not listener.connected:
                continue
            if isinstance(listener, Subscription):
                listener.owe_catch_up()
                continue
            try:
                self.queue.put(Notification(None, "", Notification.CATCH_UP, 0, time.time()),
                               False)
                listener.catch_ups += 1
            except (Full, Closed):
                pass

    def _stop_ticker(self):
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.kill(block=False)

    # -- internals (hub callbacks) --------------------------------------------------------
    def _connection_lost(self, listener, error, was_connected):
        if self.on_connection_lost is not None and not self._stopping:
            try:
                self.on_connection_lost(self, error)
            except Exception:
                log.exception("instance %s: on_connection_lost failed", self.name,
                              extra={"action": "instance.callback_error", "instance": self.name})

    def _part_ended(self, part):
        if self._stopping or self.exit is not None:
            return
        other = self.pool if part is self.listener else self.listener
        exit = part.exit or "abnormal"
        self._ended(exit, part.exception)
        self._stop_ticker()
        if other is not None:
            gevent.spawn(other.kill, block=False)
        log.warning("instance %s ended (%s): %s", self.name, exit, part.exception,
                    extra={"action": "instance.died", "instance": self.name})
        if self.on_death is not None:
            try:
                self.on_death(self)
            except Exception:
                log.exception("instance %s: on_death failed", self.name,
                              extra={"action": "instance.callback_error", "instance": self.name})

    def _ended(self, exit, exception):
        if self.exit is None:
            self.exit, self.exception, self.ended_at = exit, exception, time.time()

    def __repr__(self):
        state = "alive" if self.alive else (self.exit or "new")
        return "<Instance %s %s>" % (self.name, state)
