"""What a spool runs off the hub: fsync and directory scans, in gevent's threadpool.

An ``fsync`` waits for the disk (a millisecond on a good one, seconds on a busy or failing
one) and a listing of a directory of 100,000 files takes tens of milliseconds: either,
made on the hub's thread, stops every greenlet of the process (timeouts, heartbeats,
``/health``). :func:`call` runs such a function in the hub's threadpool and blocks only
the calling greenlet until it returns (its exception is raised in the caller).

Functions given to :func:`call` touch the file system and their own arguments only: no
logging, no greenlet, no state shared with the hub thread (the result goes back, the
caller acts on it). A call made from the hub itself (a hub callback, which must never
block) runs inline instead: that is the rare path (a link callback closing a queue), and
blocking the hub briefly beats raising in it. So does a call made by a function already
running in the threadpool (recovery writes files there).
"""
import heapq
import os
import time

import gevent
import gevent.monkey

_real_ident = gevent.monkey.get_original("_thread", "get_ident")
_real_sleep = gevent.monkey.get_original("time", "sleep")
#: The clock :func:`paced` measures work with (a seam for tests).
_clock = time.perf_counter
#: Real thread ids of the threadpool's threads that ran a function of ours.
_pool_threads = set()


def call(function, *args):
    """``function(*args)`` in the hub's threadpool; blocks the calling greenlet only."""
    return call_through(function, *args, shield=False)[0]


def call_through(function, *args, shield=True):
    """``function(*args)`` in the hub's threadpool: ``(value, thrown)``. A thread cannot be
    stopped: when an exception is thrown into the waiting greenlet (a kill at a stop) the
    function still runs to its end and what it did (a file renamed into ``pending/``) is
    done. With ``shield`` the greenlet waits for it anyway and returns the value with the
    exception thrown in, for the caller to record what the thread did, then raise it
    (``thrown`` is None when nothing was thrown in). Without, the exception is raised at
    once. An exception of ``function`` is raised in the caller."""
    if _real_ident() in _pool_threads:
        return function(*args), None
    hub = gevent.get_hub()
    if gevent.getcurrent() is hub:
        return function(*args), None
    result = hub.threadpool.spawn(_in_pool, function, args)
    thrown = None
    while True:
        try:
            value, error = result.get()
            break
        except BaseException as exc:
            if not shield:
                raise
            if thrown is None:
                thrown = exc
    if error is not None:
        try:
            raise error
        finally:
            error = None  # no reference cycle through the traceback
    return value, thrown


def _in_pool(function, args):
    """Run in the pool; an exception comes back as a value (gevent would also report an
    exception escaping a pool function to the hub as an error: a full disk is not a bug
    of the hub's)."""
    _pool_threads.add(_real_ident())
    try:
        return function(*args), None
    except Exception as error:
        return None, error


def listing(path):
    """The names in the directory ``path``, sorted (FIFO for spool names); [] when it
    does not exist. Runs in the threadpool."""
    return call(_sorted_names, path)


def _sorted_names(path):
    try:
        return sort_names(os.listdir(path))
    except FileNotFoundError:
        return []


#: Names sorted at once by :func:`sort_names`: one ``sorted()`` call holds the GIL.
SORT_CHUNK = 2000
#: A thread beside the hub computing for this long (seconds) without a pause ...
PACE_WORK = 0.002
#: ... sleeps this long (seconds), the GIL free for the hub: see :func:`paced`.
PACE_REST = 0.0005


def paced(items, every=256):
    """Iterate ``items`` in a threadpool thread, pausing :data:`PACE_REST` seconds after
    each :data:`PACE_WORK` seconds (checked every ``every`` items).

    A thread that computes while holding the GIL convoys the hub: the switch interval
    (5 ms) hands the GIL to the hub when it asks, but each system call the hub makes
    (a socket read, a timer's clock) lets the GIL go and the computing thread takes it
    back, so the hub waits a whole interval again, once per call (sorting 100,000 names
    stalled a heartbeat by 50 ms). Pausing gives the hub whole stretches of free GIL.
    Elsewhere (the hub's thread, a CLI) the items come without a pause."""
    if _real_ident() not in _pool_threads:
        yield from items
        return
    since = _clock()
    for n, item in enumerate(items, 1):
        yield item
        if not n % every and _clock() - since >= PACE_WORK:
            _real_sleep(PACE_REST)
            since = _clock()


def sort_names(names):
    """``sorted(names)`` for a thread beside the hub. ``sorted()`` is one C call that
    holds the GIL throughout (100,000 names: ~40 ms in which the hub cannot run), so
    runs of :data:`SORT_CHUNK` are sorted apart and merged by Python code, both
    :func:`paced`."""
    if len(names) <= SORT_CHUNK:
        return sorted(names)
    runs = [sorted(names[i:i + SORT_CHUNK])
            for i in paced(range(0, len(names), SORT_CHUNK), every=1)]
    return list(paced(heapq.merge(*runs)))

