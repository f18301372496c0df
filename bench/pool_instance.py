"""The :class:`PoolInstance`: an Instance-like runtime without a database connection.

Used by the supervisor-cost benchmarks (verify pass time and memory at 100 / 1,000 /
10,000 instances) through the Supervisor's ``instance_factory`` option. Each one is a real
:class:`~instances.queues.MemoryQueue` and a real :class:`~instances.processors.ProcessorPool`
(one worker greenlet + the pool's manager greenlet, the same as a real instance at
min_concurrency=1) — everything of :class:`~instances.instance.Instance` but the listener
greenlet and its connection. It reports itself connected while alive.

Concurrency: as Instance (hub thread only; on_death is called from the hub, never raises).
"""
import time

from instances.processors import ProcessorPool
from instances.queues import MemoryQueue


class PoolInstance:
    """Duck-typed :class:`~instances.instance.Instance` for ``instance_factory``."""

    def __init__(self, spec, dsn, on_death=None, on_connection_lost=None, queue=None):
        self.spec = spec
        self.on_death = on_death
        self.queue = queue if queue is not None else MemoryQueue(spec.queue_size)
        self.pool = None
        self.exit = self.exception = None
        self._stopping = False
        self._handler = spec.resolve_handler()

    @property
    def name(self):
        return self.spec.name

    @property
    def alive(self):
        return self.pool is not None and self.pool.alive

    @property
    def connected(self):
        return self.alive

    def start(self):
        self.exit = self.exception = None
        self._stopping = False
        spec = self.spec
        self.pool = ProcessorPool(self.queue, self._handler, spec.min_concurrency,
                                  spec.max_concurrency, spec.handler_timeout, spec.name)
        self.pool.link(self._ended)
        self.pool.start()
        return self

    def stop(self, timeout=10.0):
        self._stopping = True
        clean = self.pool.stop(timeout) if self.pool is not None else True
        self.exit = "normal" if clean else "abnormal"
        return clean

    def kill(self):
        if self.pool is not None:
            self.pool.kill(block=False)

    def apply(self, spec):
        self.spec = spec
        return set()

    def heartbeat_age(self):
        beat = self.pool.heartbeat if self.alive else None
        return None if beat is None else time.monotonic() - beat

    def health(self):
        stats = self.pool.stats() if self.pool is not None else {}
        return {"alive": self.alive, "connected": self.connected, "exit": self.exit,
                "heartbeat_age": self.heartbeat_age(), "backlog": self.queue.qsize(),
                "received": 0, "catch_ups": 0, "reconnects": 0,
                "processed": stats.get("processed", 0), "failed": stats.get("failed", 0),
                "timed_out": stats.get("timed_out", 0), "concurrency": stats.get("size", 0),
                "last_error": stats.get("last_error")}

    def _ended(self, pool):
        if self._stopping or self.exit is not None:
            return
        self.exit, self.exception = pool.exit or "abnormal", pool.exception
        if self.on_death is not None:
            try:
                self.on_death(self)
            except Exception:  # a link callback never raises
                pass
