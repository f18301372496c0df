"""The :class:`WorkerGreenlets`: the worker greenlets of a pool, and how the pool ends.

The base of :class:`~instances.processors.ProcessorPool` (as gevent's ``Group`` is the
base of its ``Pool``): it owns the worker table, spawns and retires workers, stops them
(let running work finish, kill what is left after a timeout), kills them, and ends the
pool with its last worker, then tells the links::

    spawn --> _work --> subclass's _loop(worker) --+-- returns / _Stop / Closed --> normal
                                                   +-- raises (queue failed) ----> crash
    last worker gone --> _ended() hook --> exit "normal" | "abnormal" --> links

A subclass fills ``_loop(worker)`` (the work, on the worker's greenlet) and may fill the
``_ended()`` hook. It starts the workers itself with :meth:`_spawn_worker`.

Concurrency: every method is for greenlets of the hub's thread; ``stop`` and ``kill``
block the caller (not the hub). Link callbacks run in the hub and MUST NOT block or raise.
"""
import logging
import time

import gevent
from gevent import GreenletExit, getcurrent

from instances.components import ComponentKilled, interrupt_if
from instances.links import Links
from instances.queues import Closed

log = logging.getLogger(__name__)


class _Stop(GreenletExit):
    """Private: thrown by stop() into a worker waiting for an item."""


class _Worker:
    __slots__ = ("greenlet", "idle", "busy_since", "stopping", "timeout_sent")

    def __init__(self):
        self.greenlet = None
        self.idle = False
        self.busy_since = None  # time.monotonic() the current item started, None if idle
        self.stopping = False
        self.timeout_sent = None  # the busy_since we already threw HandlerTimeout for


class WorkerGreenlets:
    """Worker greenlets each running the subclass's ``_loop(worker)``."""

    #: Seconds stop() waits for running work before it kills the workers.
    stop_timeout = 10.0

    def __init__(self, name=""):
        self.name = name
        #: None while running or never started; "normal" or "abnormal" after the end.
        self.exit = None
        self.exception = None
        self._workers = {}  # greenlet -> _Worker
        self._running = False
        self._ending = None  # None | "stop" | "kill"
        self._links = Links("pool")

    # -- owner API ---------------------------------------------------------------------
    @property
    def alive(self):
        return self._running

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
            gevent.killall(stuck, ComponentKilled, block=True, timeout=timeout)
        if self._running:  # a worker that ignored the kill: give up on it
            self._finish("abnormal" if stuck else "normal", self.exception)
        return not stuck and self.exit == "normal"

    def kill(self, block=True, timeout=None):
        """End the pool as a crash would: workers die where they are (exit "abnormal").

        The items being handled are lost to a memory queue (a spool keeps them pending).
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
        gevent.killall(glets, ComponentKilled, block=block, timeout=timeout)
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
        """Now if a worker waits for items (idle is alive), else the newest handler start
        (None when no worker runs). Compare with :attr:`busy_since` to spot a hang."""
        starts = []
        for worker in self._workers.values():
            if worker.busy_since is None:
                return time.monotonic()
            starts.append(worker.busy_since)
        return max(starts) if starts else None

    # -- workers -----------------------------------------------------------------------
    def _active(self):
        return sum(1 for w in self._workers.values() if not w.stopping)

    def _spawn_worker(self):
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
            self._loop(worker)
        except (_Stop, Closed):
            pass
        except Exception as error:  # the queue failed us: the pool cannot go on
            log.exception("pool %s: worker crashed", self.name,
                          extra={"action": "pool.worker_crashed", "instance": self.name})
            self._crash(error)
        finally:
            self._workers.pop(worker.greenlet, None)

    def _loop(self, worker):
        """The subclass's work, on ``worker``'s greenlet, until ``worker.stopping``."""
        raise NotImplementedError

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
        self._ended()
        log.info("pool %s ended (%s)", self.name, exit,
                 extra={"action": "pool.ended", "instance": self.name})
        self._links.notify_soon(self)

    def _ended(self):
        """Hook: the pool just ended (in the hub, before the links). MUST NOT block/raise."""
