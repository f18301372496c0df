"""Process isolation: :class:`WorkerProcesses` runs an instance's processors as child
processes that share its spool; one such child, both its ends and their protocol, is
:mod:`instances.isolation.child`.

::

    parent (the service)                       child (python -m gevent.monkey --module
                                                      instances.isolation.child, one per worker)
    listener ─▶ FileQueue(DIR) ─ files ─▶ FileQueue(DIR, own owner) ─▶ ProcessorPool(1) ─▶ handler
    WorkerProcesses ◀── beat pipe: "processed failed timed_out\\n" every beat_interval ──┘
                    ─── stdin: the spec as one JSON line, then held open (EOF: stop) ──▶

Children are new interpreters (``subprocess``, never ``fork``): nothing of the parent's hub
is inherited, and the spec (which may hold a password) goes through stdin, never argv.

Wake-ups (no polling between the service and its children): every file this process puts
into the spool (:meth:`FileQueue.add_put_listener <instances.spool.FileQueue.add_put_listener>`)
writes one byte to each child's stdin, which wakes the child's blocked ``get``; a child
looks at ``incoming/`` by itself only every ``watched_poll_interval`` (1 s) for files put
there by other processes.

Watching (no polling of pids):

* **death**: EOF on a child's beat pipe means the child is gone; the parent reaps it at
  once, gives its claimed files back to ``incoming/`` (one more attempt each; at
  ``max_attempts`` they go to ``errors/``), and ends the pool "abnormal" with
  :class:`WorkerDied`. The instance then dies, and its owner (the supervisor) restarts it
  under its restart budget. The other children are asked to stop (SIGTERM: finish the
  current message, give claims back, exit), and SIGKILLed after ``stop_timeout``.
* **hang**: a child silent for ``heartbeat_timeout`` seconds (a handler holding the CPU
  without yielding: its hub cannot beat), or without a first beat ``start_timeout``
  seconds after its start, is SIGKILLed, then handled as a death.

Concurrency: ``min_concurrency`` children at start, one more (up to ``max_concurrency``)
each ``scale_interval`` while the spool backlog exceeds their number; never fewer until a
restart. Each child runs one processor greenlet. Every parent method is for greenlets of
the hub's thread; ``stop`` and a blocking ``kill`` block the caller; links run in the hub.
"""
import logging
import signal
import sys
import time

import gevent
import gevent.event

from instances import logformat
from instances.components import ComponentKilled
from instances.isolation.child import WorkerChild
from instances.links import Links
from instances.spec import check_concurrency

log = logging.getLogger(__name__)


class WorkerDied(Exception):
    """A worker process ended while its pool was running (crash, SIGKILL or hang)."""


class WorkerProcesses:
    """Child processes consuming ``queue``'s spool directory with ``spec``'s handler.

    Offers the :class:`~instances.processors.ProcessorPool` surface an Instance uses.
    """

    #: Seconds between two beats of a child.
    beat_interval = 1.0
    #: Seconds without a beat after which a child counts as hung and is SIGKILLed.
    heartbeat_timeout = 30.0
    #: Seconds a new child may take to start (import, open the spool) before its first beat.
    start_timeout = 30.0
    #: Seconds a stopping child may finish its message before it is SIGKILLed.
    stop_timeout = 10.0
    #: Seconds between the watcher's looks (hang check, growth).
    scale_interval = 0.5

    def __init__(self, queue, spec):
        self.queue, self.spec, self.name = queue, spec, spec.name
        check_concurrency(spec.min_concurrency, spec.max_concurrency)
        self.min_concurrency, self.max_concurrency = spec.min_concurrency, spec.max_concurrency
        #: Passed to children at their start (a live change applies to new children).
        self.handler_timeout = spec.handler_timeout
        self.exit = self.exception = self.last_error = None
        #: Children that died unexpectedly / were killed as hung, since creation.
        self.deaths = self.hangs = 0
        self._children = {}  # pid -> WorkerChild
        self._ended_counts = [0, 0, 0]
        self._gone = gevent.event.Event()
        self._running = False
        self._watcher = None
        self._links = Links("workers")

    # -- owner API ---------------------------------------------------------------------
    @property
    def alive(self):
        return self._running

    @property
    def size(self):
        return len(self._children)

    @property
    def pids(self):
        """Pids of the children serving now (not those retiring)."""
        return [pid for pid, c in self._children.items() if not c.retiring]

    @property
    def ready(self):
        """True when every serving child has beaten at least once."""
        return self._running and all(c.counts is not None for c in self._serving())

    def start(self):
        """Spawn ``min_concurrency`` children and the watcher; returns at once."""
        if self._running:
            return self
        self._running, self.exit, self.exception = True, None, None
        for _ in range(self.min_concurrency):
            self._spawn()
        self._watcher = gevent.spawn(self._watch)
        self.queue.add_put_listener(self._wake_children)
        return self

    def stop(self, timeout=None):
        """SIGTERM every child (each finishes its message and gives claims back), SIGKILL
        those left after ``timeout`` seconds. Blocks the caller; True if all ended cleanly."""
        if not self._running:
            return self.exit != "abnormal"
        timeout = self.stop_timeout if timeout is None else timeout
        self._running = False
        self._signal_all(signal.SIGTERM)
        clean = self._gone.wait(timeout)
        if not clean:
            log.warning("pool %s: workers still running after %.1fs: killing them", self.name,
                        timeout, extra={"action": "workers.stop_timeout", "instance": self.name})
            self._signal_all(signal.SIGKILL)
            self._gone.wait(timeout)
        self._finish("normal" if clean else "abnormal",
                     None if clean else ComponentKilled("workers killed at stop"))
        return clean

    def kill(self, block=True, timeout=None):
        """SIGKILL every child, as a crash would (exit "abnormal"; claims come back from
        ``pending/``). ``block``: wait up to ``timeout`` seconds until they are reaped."""
        if self._running:
            self._running = False
            self._signal_all(signal.SIGKILL)
            self._finish("abnormal", ComponentKilled("pool %s killed" % self.name))
        if block:
            self._gone.wait(timeout)

    def join(self, timeout=None):
        """Block until every child is reaped or ``timeout``; True if the pool ended."""
        self._gone.wait(timeout)
        return not self._running

    def resize(self, min_concurrency, max_concurrency):
        """New bounds: spawn up to the new min, ask children above the new max to stop."""
        check_concurrency(min_concurrency, max_concurrency)
        self.min_concurrency, self.max_concurrency = min_concurrency, max_concurrency
        if not self._running:
            return
        while len(self._serving()) < min_concurrency:
            self._spawn()
        for child in self._serving()[max_concurrency:]:
            child.retiring = True
            child.signal(signal.SIGTERM)

    def link(self, callback):
        """Call ``callback(pool)`` in the hub when the pool ends. MUST NOT block/raise."""
        self._links.add(callback)

    def unlink(self, callback):
        self._links.remove(callback)

    # -- health ------------------------------------------------------------------------
    busy_since = None  # handlers run in the children; hangs are judged by their beats

    @property
    def heartbeat(self):
        """time.monotonic() of the least recent beat among serving children (None if none)."""
        beats = [c.last_beat for c in self._serving()]
        return min(beats) if beats else None

    def stats(self):
        totals = list(self._ended_counts)
        for child in self._children.values():
            for i, count in enumerate(child.counts or (0, 0, 0)):
                totals[i] += count
        return {"size": self.size, "processed": totals[0], "failed": totals[1],
                "timed_out": totals[2], "last_error": self.last_error, "busy_since": None,
                "deaths": self.deaths, "hangs": self.hangs}

    # -- children ----------------------------------------------------------------------
    def _serving(self):
        return [c for c in self._children.values() if not c.retiring]

    def _wake_children(self):
        """Put listener (in the putting greenlet): tell every child incoming/ changed."""
        for child in self._children.values():
            child.wake()

    def _spawn(self):
        child = WorkerChild.start(self.beat_interval, self.stop_timeout)
        self._children[child.proc.pid] = child
        self._gone.clear()
        spec = dict(self.spec.to_dict(), handler_timeout=self.handler_timeout)
        child.send({"spec": spec, "path": sys.path, "log": logformat.current()})
        child.reader = gevent.spawn(self._read, child)
        log.info("pool %s: worker %d started", self.name, child.proc.pid,
                 extra={"action": "workers.spawn", "instance": self.name})
        return child

    def _read(self, child):
        """Reader greenlet of one child: beats until EOF, then the child's end."""
        self._child_ended(child, child.read_beats(self.name))

    def _child_ended(self, child, code):
        self._children.pop(child.proc.pid, None)
        try:
            child.proc.stdin.close()
        except OSError:
            pass
        for i, count in enumerate(child.counts or (0, 0, 0)):
            self._ended_counts[i] += count
        try:
            self.queue.requeue_pending_of_dead_owners()  # its claims, at once
        except Exception:
            log.exception("pool %s: requeue after worker end failed", self.name,
                          extra={"action": "workers.requeue_error", "instance": self.name})
        if not self._children:
            self._gone.set()
        if child.retiring or not self._running:
            return
        how = ("hung: no beat for %.1fs" % (time.monotonic() - child.last_beat) if child.stuck
               else "killed by signal %d" % -code if code < 0 else "exit code %d" % code)
        error = WorkerDied("worker %d of %s ended (%s)" % (child.proc.pid, self.name, how))
        self.deaths += 1
        self.last_error = str(error)
        log.error("%s", error, extra={"action": "workers.died", "instance": self.name})
        self._running = False
        self._signal_all(signal.SIGTERM)
        gevent.spawn(self._kill_after, self.stop_timeout)
        self._finish("abnormal", error)

    def _kill_after(self, seconds):
        if not self._gone.wait(seconds):
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum):
        for child in list(self._children.values()):
            child.retiring = True
            child.signal(signum)

    def _watch(self):
        """Watcher greenlet: SIGKILL hung children; grow while the backlog is larger."""
        while self._running:
            now = time.monotonic()
            for child in self._serving():
                limit = self.heartbeat_timeout if child.counts else self.start_timeout
                if not child.stuck and now - child.last_beat > limit:
                    child.stuck = True
                    self.hangs += 1
                    log.error("pool %s: worker %d silent for %.1fs: killing it", self.name,
                              child.proc.pid, now - child.last_beat,
                              extra={"action": "workers.hung", "instance": self.name})
                    child.signal(signal.SIGKILL)
            serving = len(self._serving())
            if serving < self.max_concurrency and self.queue.qsize() > serving:
                self._spawn()
            gevent.sleep(min(self.scale_interval, self.heartbeat_timeout / 4))

    def _finish(self, exit, exception):
        self.exit, self.exception = exit, exception
        self.queue.remove_put_listener(self._wake_children)
        if self._watcher is not None and self._watcher is not gevent.getcurrent():
            self._watcher.kill(block=False)
        log.info("pool %s ended (%s)", self.name, exit,
                 extra={"action": "workers.ended", "instance": self.name})
        self._links.notify_soon(self)

    def __repr__(self):
        return "<WorkerProcesses %s pids=%s %s>" % (
            self.name, sorted(self._children), "alive" if self._running else (self.exit or "new"))
