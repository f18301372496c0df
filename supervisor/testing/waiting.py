"""Polling to a deadline: the kit's (and the tests') replacement for bare sleeps."""
import time

import gevent


def wait_for(predicate, timeout=10.0, interval=0.01, message=None):
    """Call ``predicate()`` until it returns something truthy; return that value.

    Between calls it sleeps ``interval`` seconds with :func:`gevent.sleep`, so other
    greenlets run meanwhile (with or without monkey-patching). The predicate is always called
    at least once, and once more at the deadline. When ``timeout`` seconds pass without a
    truthy value, raises :class:`AssertionError` naming ``message`` (or the predicate), the
    timeout and the last value seen. Exceptions from the predicate propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        gevent.sleep(min(interval, remaining))
    what = message or getattr(predicate, "__name__", repr(predicate))
    raise AssertionError("%s: not true within %.3gs (last value %r)" % (what, timeout, value))


def holds(predicate, duration, interval=0.005, message=None):
    """Check that ``predicate()`` stays truthy for ``duration`` seconds, polling; return
    True, or raise AssertionError at the first falsy value (failing early).

    The negative twin of :func:`wait_for`, for "this must not happen" checks (a pool must
    not grow past its maximum, a callback must not be called twice).
    """
    deadline = time.monotonic() + duration
    while True:
        value = predicate()
        if not value:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError("%s: stopped holding (value %r)" % (what, value))
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return True
        gevent.sleep(min(interval, remaining))
