"""Per-key order under concurrency: :class:`KeyOrder`, the bookkeeping of which keys run,
what waits behind them and what is ready to run, and :func:`key_function`, a spec's
``order_key`` as a function.

With ``order_key`` a :class:`~instances.processors.ProcessorPool` of several workers keeps
two promises: notifications with the same key never run at the same time, and they run in
the order the queue gave them out. Different keys run in parallel. How::

    one worker at a time (the one holding the *turn*) takes from the queue (a whole chunk
    of a chunk queue) and dispatches it, in queue order, without yielding:
        key free?  --yes--> the key is reserved; (key, item) is ready for any worker
                   --no---> the item is held behind the key (its owner will run it)
    a worker takes a ready (key, item), runs it, then what was held behind that key
    (oldest first), then frees the key

Every held item has an owner working its way to it (or a ready head waiting for one), so
holding never stalls, and the one taker makes the dispatch order the queue's order. A
retried item keeps its key (the retries run in the same worker). What is out of the queue
-- ready and held -- is bounded (:attr:`KeyOrder.hold_limit`, plus one chunk): past it
nobody takes from the queue until the owners work some off (back-pressure on the queue,
whose own bound then applies). When the pool stops, an owner gives what waits behind its
key back to the FRONT of the queue, oldest first, and the ready ones go back with what
waits behind them, so the next pool on the same queue (after a restart) sees every key's
items in their order; autoscaling only ever ends idle workers, which own nothing.

A ``catch_up`` has a key of its own (:data:`CATCH_UP_KEY`): the key function is not asked
about it, and catch_ups never overlap each other.

Concurrency: one KeyOrder belongs to one pool; every method is for greenlets of the hub's
thread and never yields, except :meth:`KeyOrder.take_turn` and
:meth:`KeyOrder.wait_for_room`, which block the caller.
"""
import collections
import operator

import gevent.event
import gevent.lock

from instances.notification import Notification
from instances.queues import Empty

#: The key every catch_up has (whatever the key function would say about it).
CATCH_UP_KEY = ("catch_up",)

_CATCH_UP = Notification.CATCH_UP


def key_function(order_key):
    """The key of an item for ``order_key``: ``"channel"`` or ``"payload"`` (of a
    Notification, or that key of a spool message that is a plain dict), or a callable
    (a resolved ``"module:function"`` path) called with the item. None: None."""
    if order_key is None or callable(order_key):
        return order_key
    index = {"channel": 0, "payload": 1}[order_key]
    field = operator.itemgetter(index)

    def named(item):
        if isinstance(item, Notification):
            return field(item)
        return item.get(order_key) if isinstance(item, dict) else None

    named.__name__ = "order_key_" + order_key
    return named


class KeyOrder:
    """Which keys are reserved (ready or running), the items held behind them, the ready
    heads, and the turn to take from the queue (one worker at a time)."""

    #: Items out of the queue (ready or held) past which nobody takes more from it.
    hold_limit = 1000

    def __init__(self, key, hold_limit=None):
        self._key = key
        if hold_limit is not None:
            self.hold_limit = hold_limit
        self._held = {}  # reserved key -> deque of items held behind it
        self._ready = collections.deque()  # (key, item): a reserved key's head, not started
        self.held = 0  # items held behind reserved keys (ready heads not counted)
        self._turn = gevent.lock.Semaphore(1)
        self._room = gevent.event.Event()
        self._room.set()

    def key(self, item):
        """The item's key (a catch_up's is :data:`CATCH_UP_KEY`). Raises what the key
        function raises; TypeError for an unhashable key."""
        if isinstance(item, Notification) and item[2] == _CATCH_UP:
            return CATCH_UP_KEY
        key = self._key(item)
        hash(key)
        return key

    def dispatch(self, items, failed):
        """Sort ``items`` (taken from the queue, in its order) into ready heads and held
        items; ``failed(item, error)`` is called, inside the ``except``, for an item whose
        key cannot be had. Never yields."""
        held, ready = self._held, self._ready
        for item in items:
            try:
                key = self.key(item)
            except Exception as error:  # the key function failed on it: that item alone
                failed(item, error)
                continue
            waiting = held.get(key)
            if waiting is None:
                held[key] = collections.deque()
                ready.append((key, item))
            else:
                waiting.append(item)
                self.held += 1
        if self.full:
            self._room.clear()

    def take_ready(self):
        """A ready ``(key, item)`` for the caller to run (then :meth:`next`), or None."""
        return self._ready.popleft() if self._ready else None

    def next(self, key):
        """The owner of ``key`` is done with its item: the next one held behind it, or
        None, and then the key is free."""
        waiting = self._held[key]
        if waiting:
            self._taken(1)
            return waiting.popleft()
        del self._held[key]
        return None

    def give_up(self, key):
        """The owner of ``key`` stops: free the key and return what was held behind it,
        oldest first (to go back to the front of the queue)."""
        waiting = self._held.pop(key, None)
        if not waiting:
            return []
        self._taken(len(waiting))
        return list(waiting)

    def take_all_ready(self):
        """Every ready head followed by what is held behind its key, per key in order
        (the pool stops: it all goes back to the queue); those keys are free again."""
        items = []
        while self._ready:
            key, item = self._ready.popleft()
            items.append(item)
            items.extend(self.give_up(key))
        return items

    @property
    def waiting(self):
        """Items out of the queue that no worker runs: ready heads and held items."""
        return self.held + len(self._ready)

    @property
    def full(self):
        return self.waiting >= self.hold_limit

    def running(self):
        """The reserved keys (ready or running)."""
        return list(self._held)

    def take_turn(self, timeout=None):
        """Block the caller until it holds the turn to take from the queue (then
        :meth:`end_turn`, always); raise ``Empty`` after ``timeout`` seconds (None: no
        limit). One waiter is woken per end_turn."""
        if not self._turn.acquire(timeout=timeout):
            raise Empty()

    def end_turn(self):
        self._turn.release()

    def wait_for_room(self, timeout=None):
        """Block the caller while :attr:`full`; raise ``Empty`` after ``timeout``."""
        if self.full and not self._room.wait(timeout):
            raise Empty()

    def _taken(self, count):
        self.held -= count
        if not self.full:
            self._room.set()

    def __repr__(self):
        return "<KeyOrder reserved=%d ready=%d held=%d>" % (
            len(self._held), len(self._ready), self.held)
