"""Batch handlers for bulk sinks: how a spec's ``batch = N`` cuts the queue's items into
handler calls, and what a failing call means.

With ``batch = N`` a :class:`~instances.processors.ProcessorPool` calls
``handler(notifications)`` with a list of up to N items instead of once per item: a worker
blocks for the first item, then takes what is queued already (never waiting for more), up
to N. A ``catch_up`` is always alone in its own call (``[catch_up]``): it means "re-read
your tables", which a bulk sink does apart from its rows. Order: one worker hands its list
in queue order; with ``max_concurrency > 1`` batches run side by side, as items would.

Outcomes are per batch::

    handler(batch) --returns--------------------------------------> every item done
                   --raises--> the whole batch again, the pool's retry policy
                               (``retries`` = 3, 1 s doubling, 10 % jitter)
                   --still raises, or overran handler_timeout--> each item alone:
                               handler([item]), as a single notification is handled
                               (retried, then the error path); the others are done

so a poison notification goes to the error path alone (``errors/`` of a spool, the
memory queue's ``errors``) and the rest of its batch is handled. A batch of one that
fails goes straight to the error path after its retries. The latency histogram observes
each call (a batch), ``processed`` counts items. A spool's messages are claimed as the
spool hands them out and acked (``done``) together once their batch succeeded; a batch
interrupted by a stop is given back unacked, in order. A batch handler's return value is
not used (a spec with ``batch`` and ``queue_out_dir`` is refused).

Concurrency: pure functions, for any greenlet.
"""
import operator
from operator import countOf

from instances.notification import LiveRead, Notification
from instances.queues import Empty

_CATCH_UP = Notification.CATCH_UP
_NOTIFY = Notification.NOTIFY
_kind = operator.itemgetter(2)


def is_catch_up(item):
    """True for a catch_up notification (a plain spool message never is one)."""
    return isinstance(item, Notification) and item[2] == _CATCH_UP


def take_batch(pending, more, size):
    """The next batch: up to ``size`` items cut from the front of ``pending`` (a list of
    items taken from the queue, oldest first; consumed in place), refilled from ``more()``
    (what the queue has at once, a sequence; raises Empty) while short. A catch_up ends
    the batch: alone when it comes first, else it stays first in ``pending`` for the next
    one. Never blocks (``more`` must not); ``pending`` must not be empty."""
    return cut_batch(pending, more, size, False)[0]


def cut_batch(pending, more, size, live):
    """:func:`take_batch` for a worker that knows more: ``live`` says every item of
    ``pending`` came in a :class:`~instances.notification.LiveRead` (a read of NOTIFYs,
    no catch_up), and so do the chunks ``more()`` hands over while theirs are; then the
    batch needs no look for a catch_up. Returns ``(batch, live)``: ``live`` for what is
    left in ``pending``. The hot path: the cut and any catch_up scan run at C speed."""
    while len(pending) < size:
        try:
            chunk = more()
        except Empty:
            break
        live = live and type(chunk) is LiveRead
        pending.extend(chunk)
    batch = pending[:size]
    if not live:
        stop = catch_up_at(batch)
        if stop is not None:
            batch = batch[:max(stop, 1)]
    del pending[:len(batch)]
    return batch, live


def catch_up_at(items):
    """The index of the first catch_up in ``items``, or None. Live notifications share
    one ``kind`` string (:attr:`Notification.NOTIFY`, interned), so a batch of only those
    is recognised by identity at C speed; anything else is looked for by value."""
    try:
        if countOf(map(_kind, items), _NOTIFY) == len(items):
            return None
        return list(map(_kind, items)).index(_CATCH_UP)
    except ValueError:
        return None
    except (TypeError, KeyError, IndexError):  # not all Notifications (spool messages)
        return next((i for i, item in enumerate(items) if is_catch_up(item)), None)
