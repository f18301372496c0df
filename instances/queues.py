"""The queue protocol between a listener and its processors, and :class:`MemoryQueue`.

Any queue a :class:`~instances.processors.ProcessorPool` consumes offers::

    put(item, block=True, timeout=None)   blocks while full (back-pressure, never drops);
                                          raises Full on timeout / non-blocking, Closed after close()
    get(block=True, timeout=None) -> item  raises Empty on timeout / non-blocking;
                                          Closed once closed and drained
    done(item)                            the handler succeeded
    failed(item, error, tb_text)          the handler raised or timed out
    qsize() -> int                        items waiting (not those being handled)
    close()                               no more puts; getters drain what is left

A blocked ``get`` must tolerate an exception thrown into the waiting greenlet without
losing an item (the pool's stop interrupts idle workers that way). ``Empty``, ``Full`` and
``Closed`` here are the exceptions every implementation raises (FileQueue included).

The memory queue lives as long as its instance object, not as long as the processors:
a pool restarted on the same queue picks up what was left.
"""
import collections
import time

import gevent.queue

from instances.spec import InstanceSpec, check_queue_size

#: Raised by ``get`` on timeout or when non-blocking and nothing is there.
Empty = gevent.queue.Empty
#: Raised by ``put`` on timeout or when non-blocking and the queue is full.
Full = gevent.queue.Full
#: Raised by ``put`` after close(), and by ``get`` after close() once drained.
Closed = gevent.queue.ShutDown


class MemoryQueue:
    """A bounded in-process queue (gevent.queue.Queue) with counters and recent failures.

    Concurrency: any greenlet of the hub's thread may call any method; ``put`` and ``get``
    block only the calling greenlet. Not for use across OS threads.
    """

    #: Items the queue holds before ``put`` blocks (the spec's ``queue_size`` default).
    maxsize = InstanceSpec.__dataclass_fields__["queue_size"].default
    #: Failures kept in :attr:`errors` (newest last) for status pages.
    errors_kept = 100

    def __init__(self, maxsize=None, errors_kept=None):
        self.maxsize = maxsize = check_queue_size(self.maxsize if maxsize is None else maxsize)
        self._queue = gevent.queue.Queue(maxsize)
        #: The last failures: dicts with item, error (repr), traceback (text), time (epoch).
        self.errors = collections.deque(maxlen=self.errors_kept if errors_kept is None
                                        else errors_kept)
        self.done_count = 0
        self.failed_count = 0
        # Hot path: put, get and qsize are the compiled gevent methods themselves, not
        # Python wrapper frames (they shadow the documented methods below); a wrapper on
        # put alone cost a quarter of the pool's throughput.
        self.put = self._queue.put
        self.get = self._queue.get
        self.qsize = self._queue.qsize

    @property
    def put_count(self):
        """Items ever put. gevent's joinable queue counts every put in ``unfinished_tasks``
        and only task_done() lowers it, which this class never calls."""
        return self._queue.unfinished_tasks

    def put(self, item, block=True, timeout=None):  # replaced per instance in __init__
        """Append ``item``; blocks the caller while the queue is full (never drops)."""
        self._queue.put(item, block, timeout)

    def get(self, block=True, timeout=None):  # replaced per instance in __init__
        """Remove and return the oldest item; blocks the caller while empty."""
        return self._queue.get(block, timeout)

    def qsize(self):  # replaced per instance in __init__
        """Items waiting to be handled."""
        return self._queue.qsize()

    def give_back(self, items):
        """Put ``items`` (got earlier, not handled) back at the FRONT, in their order, even
        past ``maxsize`` (they were counted in before): per-key order's stop
        (:mod:`instances.ordering`). Wakes a blocked getter. Never blocks."""
        queue = self._queue
        queue.queue.extendleft(reversed(items))
        gevent.get_hub().loop.run_callback(queue._unlock)  # what put() schedules

    def done(self, item):
        """Count ``item`` as handled. Never blocks."""
        self.done_count += 1

    def failed(self, item, error, tb_text):
        """Count ``item`` as failed and keep the failure in :attr:`errors`. Never blocks.

        A memory queue has no error directory: the failure is kept for inspection only.
        """
        self.failed_count += 1
        self.errors.append({"item": item, "error": repr(error), "traceback": tb_text,
                            "time": time.time()})

    def close(self):
        """Refuse further puts, wake blocked putters (Closed); getters drain, then Closed."""
        self._queue.shutdown()

    @property
    def closed(self):
        return self._queue.is_shutdown

    def full(self):
        return self._queue.qsize() >= self.maxsize

    def stats(self):
        """Counters as a dict (for status and metrics)."""
        return {"size": self._queue.qsize(), "maxsize": self.maxsize,
                "put": self.put_count, "done": self.done_count, "failed": self.failed_count}

    def __repr__(self):
        return "<MemoryQueue %d/%d put=%d done=%d failed=%d>" % (
            self._queue.qsize(), self.maxsize, self.put_count, self.done_count,
            self.failed_count)
