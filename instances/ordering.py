"""Per-key order under concurrency: :class:`KeyOrder`, the bookkeeping of which keys run
and what waits behind them, and :func:`key_function`, a spec's ``order_key`` as a function.

With ``order_key`` a :class:`~instances.processors.ProcessorPool` of several workers keeps
two promises: notifications with the same key never run at the same time, and they run in
the order the queue gave them out. Different keys run in parallel. How::

    worker: item = queue.get()   key free?  --yes--> own the key, run item, then run what
                                    |                waits behind it (oldest first), then
                                    |                free the key
                                    +--no---> hold the item behind the key's owner, get
                                              the next item

Every held item has an owner working its way to it, so holding never stalls. The owner
runs its key's items back to back, in order; a retried item keeps its key (the retries
run in the same worker). Held items are out of the queue, so their number is bounded
(:attr:`KeyOrder.hold_limit`): a worker whose item would exceed it waits, as an idle
worker, for the owners to work some off (back-pressure on the queue, whose own bound then
applies). An owner that stops (the pool stops or shrinks, its worker is killed) gives what
waits behind its key back to the FRONT of the queue, oldest first, so the next worker (or
the next pool on the same queue, after a restart) sees the key's items in their order;
autoscaling only ever ends idle workers, which own nothing.

A ``catch_up`` has a key of its own (:data:`CATCH_UP_KEY`): the key function is not asked
about it, and catch_ups never overlap each other.

Concurrency: one KeyOrder belongs to one pool; every method is for greenlets of the hub's
thread and never yields, except :meth:`KeyOrder.wait_for_room`, which blocks the caller.
"""
import collections
import operator

import gevent.event

from instances.notification import Notification

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
    """Which keys run (each owned by one worker) and the items held behind them."""

    #: Items held behind running keys at most (out of the queue, so counted here): a
    #: worker whose item would go past it waits for room.
    hold_limit = 1000

    def __init__(self, key, hold_limit=None):
        self._key = key
        if hold_limit is not None:
            self.hold_limit = hold_limit
        self._held = {}  # key -> deque of items waiting behind that key's owner
        self.held = 0  # items held now, every key together
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

    def admit(self, key, item):
        """True: ``key`` was free and is now the caller's, run ``item``. False: ``key``
        runs in another worker; ``item`` is held behind it (the owner will run it)."""
        waiting = self._held.get(key)
        if waiting is None:
            self._held[key] = collections.deque()
            return True
        waiting.append(item)
        self.held += 1
        if self.held >= self.hold_limit:
            self._room.clear()
        return False

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

    def running(self):
        """The keys owned by a worker now."""
        return list(self._held)

    def wait_for_room(self, timeout=None):
        """Block the caller while :attr:`hold_limit` items are held; True once there is
        room."""
        return self._room.wait(timeout)

    @property
    def full(self):
        return self.held >= self.hold_limit

    def _taken(self, count):
        self.held -= count
        if self.held < self.hold_limit:
            self._room.set()

    def __repr__(self):
        return "<KeyOrder running=%d held=%d>" % (len(self._held), self.held)
