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

A queue that hands work over in **chunks** (a :class:`MemoryQueue`) offers besides::

    put_many(items, block=True, timeout=None) -> int
                                 put ``items`` in order as ONE hand-off (the listener's
                                 whole read): as many as there is room for, waiting for room
                                 for the rest while ``block``; returns how many it took
                                 (fewer only when full at the timeout / without ``block``)
    get_chunk(block=True, timeout=None, split=1) -> list
                                 the oldest queued chunk (with ``split`` workers, at most
                                 1/split of the queued items; the rest stays first in
                                 line), Empty / Closed as ``get``
    give_back(items)             give back items taken but never finished (a stop, a kill):
                                 first in line again, in their order, whatever the bound
    release(item)                the same for one item (as a FileQueue's ``release``)
    done_many(count)             ``count`` items of chunks succeeded (no per-item call)

The bound counts items (notifications), never chunks. Chunks are lists that nobody mutates
once put: the notifier offers one list to every subscriber of its channel.

A blocked ``get``/``get_chunk`` must tolerate an exception thrown into the waiting greenlet
without losing an item (the pool's stop interrupts idle workers that way); so must a
blocked ``put``/``put_many`` (an own listener's stop): what was taken stays taken, the rest
is the caller's. ``Empty``, ``Full`` and ``Closed`` here are the exceptions every
implementation raises (FileQueue included).

The memory queue lives as long as its instance object, not as long as the processors:
a pool restarted on the same queue picks up what was left, released items first.
"""
import collections
import time

import gevent
import gevent.queue
from gevent.hub import Waiter

from instances.spec import InstanceSpec, check_queue_size

#: Raised by ``get`` on timeout or when non-blocking and nothing is there.
Empty = gevent.queue.Empty
#: Raised by ``put`` on timeout or when non-blocking and the queue is full.
Full = gevent.queue.Full
#: Raised by ``put`` after close(), and by ``get`` after close() once drained.
Closed = gevent.queue.ShutDown

_TIMED_OUT = object()


class MemoryQueue:
    """A bounded in-process queue of chunks, with counters and recent failures.

    Holds chunks (lists of notifications) in a deque; :attr:`maxsize` bounds the number of
    notifications in them. A blocked getter or putter waits on a :class:`~gevent.hub.Waiter`
    of its own and is woken from the hub (a put never switches away from the putter: the
    notifier keeps reading).

    Concurrency: any greenlet of the hub's thread may call any method; ``put*`` and
    ``get*`` block only the calling greenlet. Not for use across OS threads.
    """

    #: Items the queue holds before ``put`` blocks (the spec's ``queue_size`` default).
    maxsize = InstanceSpec.__dataclass_fields__["queue_size"].default
    #: Failures kept in :attr:`errors` (newest last) for status pages.
    errors_kept = 100

    def __init__(self, maxsize=None, errors_kept=None):
        self.maxsize = check_queue_size(self.maxsize if maxsize is None else maxsize)
        self._chunks = collections.deque()
        self._size = 0  # items in _chunks
        self._head = 0  # items of _chunks[0] already taken one at a time (get)
        self._getters = collections.deque()  # Waiters of blocked getters, oldest first
        self._putters = collections.deque()  # Waiters of blocked putters, oldest first
        self._wake_scheduled = False
        self._closed = False
        #: The last failures: dicts with item, error (repr), traceback (text), time (epoch).
        self.errors = collections.deque(maxlen=self.errors_kept if errors_kept is None
                                        else errors_kept)
        #: Items ever put (released ones are not counted again).
        self.put_count = 0
        self.done_count = 0
        self.failed_count = 0

    # -- putting ---------------------------------------------------------------------------
    def put(self, item, block=True, timeout=None):
        """Append ``item``; blocks the caller while the queue is full (never drops)."""
        if not self.put_many((item,), block, timeout):
            raise Full

    def put_many(self, items, block=True, timeout=None):
        """Append ``items`` (in order) as one chunk, or as many of them as fit; while
        ``block``, wait up to ``timeout`` seconds for room for the rest. Returns how many
        were taken. Raises Closed once closed (what was taken before stays queued)."""
        taken, count = 0, len(items)
        deadline = None
        while True:
            if self._closed:
                raise Closed
            room = self.maxsize - self._size
            if room > 0:
                part = items if taken == 0 and count <= room else items[taken:taken + room]
                self._append(part if isinstance(part, list) else list(part))
                taken += len(part)
                if taken == count:
                    return taken
            if not block:
                return taken
            if timeout is not None:
                deadline = deadline or time.monotonic() + timeout
                left = deadline - time.monotonic()
                if left <= 0 or not self._wait(self._putters, left):
                    return taken
            else:
                self._wait(self._putters, None)

    def release(self, item):
        """Give back one ``item`` taken but never finished (see :meth:`give_back`)."""
        self.give_back([item])

    def give_back(self, items):
        """Give back ``items`` (a list) taken but never finished (a stop, a kill, per-key
        order's held items): they are first in line again, in their order, even beyond the
        bound (they were counted in before). Wakes a blocked getter. Never blocks; allowed
        after close (getters drain them)."""
        if items:
            self._trim_head()
            self._chunks.appendleft(items)
            self._size += len(items)
            self._schedule_wake()

    def take_all(self):
        """Remove and return every queued item, in order (an edit that replaces this queue
        hands them to the new one: see :meth:`give_back`). Never blocks."""
        self._trim_head()
        items = [item for chunk in self._chunks for item in chunk]
        self._chunks.clear()
        self._size = 0
        if self._putters:
            self._schedule_wake()
        return items

    def _append(self, chunk):
        self._chunks.append(chunk)
        self._size += len(chunk)
        self.put_count += len(chunk)
        if self._getters:
            self._schedule_wake()

    # -- getting ---------------------------------------------------------------------------
    def get_chunk(self, block=True, timeout=None, split=1):
        """Remove and return the oldest chunk (a list); blocks the caller while empty.
        With ``split`` > 1 (a pool of that many workers) at most that fraction of the
        queued items (rounded up): the rest stays first in line for the other workers."""
        chunks = self._chunks
        if not chunks:
            self._await_items(block, timeout)
        self._trim_head()
        chunk = chunks[0]
        limit = -(-self._size // split) if split > 1 else None
        if limit is not None and len(chunk) > limit:
            chunks[0] = chunk[limit:]
            chunk = chunk[:limit]
        else:
            chunks.popleft()
        self._size -= len(chunk)
        if self._putters:
            self._schedule_wake()
        return chunk

    def get(self, block=True, timeout=None):
        """Remove and return the oldest item; blocks the caller while empty."""
        chunks = self._chunks
        if not chunks:
            self._await_items(block, timeout)
        chunk, head = chunks[0], self._head
        if head + 1 < len(chunk):  # an index, not a copy of the rest: O(1) per item
            self._head = head + 1
        else:
            chunks.popleft()
            self._head = 0
        self._size -= 1
        if self._putters:
            self._schedule_wake()
        return chunk[head]

    def _trim_head(self):
        """Drop what :meth:`get` took of the first chunk (a copy, once per chunk call)."""
        if self._head:
            self._chunks[0] = self._chunks[0][self._head:]
            self._head = 0

    def _await_items(self, block, timeout):
        """Return once a chunk is queued; Empty (timeout, non-blocking) or Closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._chunks:
            if self._closed:
                raise Closed
            if not block:
                raise Empty
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not self._wait(self._getters, left):
                raise Empty

    # -- waiting (the caller's greenlet) and waking (the hub) ------------------------------
    def _wait(self, waiters, timeout):
        """Block until woken (True) or ``timeout`` (False). An exception thrown in leaves
        nothing behind: the waiter is removed, no item was taken."""
        waiter = Waiter()
        waiters.append(waiter)
        timer = None
        if timeout is not None:
            timer = gevent.get_hub().loop.timer(timeout)
            timer.start(waiter.switch, _TIMED_OUT)
        try:
            return waiter.get() is not _TIMED_OUT
        finally:
            if timer is not None:
                timer.close()
            if waiters and waiter in waiters:  # timed out or thrown into, not woken
                waiters.remove(waiter)

    def _schedule_wake(self):
        if not self._wake_scheduled:
            self._wake_scheduled = True
            gevent.get_hub().loop.run_callback(self._wake)

    def _wake(self):
        """Hub: wake getters while there are chunks, putters while there is room (after
        close: all of them). A woken waiter runs at once and re-checks; every waiter in a
        deque is still blocked (a timed-out one removed itself first)."""
        self._wake_scheduled = False
        getters, putters = self._getters, self._putters
        while getters and (self._chunks or self._closed):
            getters.popleft().switch(True)
        while putters and (self._size < self.maxsize or self._closed):
            putters.popleft().switch(True)

    # -- outcomes and state ----------------------------------------------------------------
    def qsize(self):
        """Items waiting to be handled (released ones included)."""
        return self._size

    def done(self, item):
        """Count ``item`` as handled. Never blocks."""
        self.done_count += 1

    def done_many(self, count):
        """Count ``count`` items as handled (once per chunk). Never blocks."""
        self.done_count += count

    def failed(self, item, error, tb_text):
        """Count ``item`` as failed and keep the failure in :attr:`errors`. Never blocks.

        A memory queue has no error directory: the failure is kept for inspection only.
        """
        self.failed_count += 1
        self.errors.append({"item": item, "error": repr(error), "traceback": tb_text,
                            "time": time.time()})

    def close(self):
        """Refuse further puts, wake blocked putters (Closed); getters drain, then Closed."""
        if not self._closed:
            self._closed = True
            if self._getters or self._putters:
                self._schedule_wake()

    @property
    def closed(self):
        return self._closed

    def full(self):
        return self._size >= self.maxsize

    def stats(self):
        """Counters as a dict (for status and metrics)."""
        return {"size": self._size, "maxsize": self.maxsize, "put": self.put_count,
                "done": self.done_count, "failed": self.failed_count}

    def __repr__(self):
        return "<MemoryQueue %d/%d put=%d done=%d failed=%d>" % (
            self._size, self.maxsize, self.put_count, self.done_count, self.failed_count)
