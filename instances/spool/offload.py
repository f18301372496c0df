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

import gevent
import gevent.monkey

_real_ident = gevent.monkey.get_original("_thread", "get_ident")
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


def sort_names(names):
    """``sorted(names)`` for a thread beside the hub: ``sorted()`` is one C call that
    holds the GIL throughout (100,000 names: ~150 ms in which the hub cannot run), so
    runs of :data:`SORT_CHUNK` are sorted apart and merged by Python code, which lets
    the hub have the GIL every switch interval."""
    if len(names) <= SORT_CHUNK:
        return sorted(names)
    runs = [sorted(names[i:i + SORT_CHUNK]) for i in range(0, len(names), SORT_CHUNK)]
    return list(heapq.merge(*runs))

