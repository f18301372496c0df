"""Importable handlers for tests (``tests.handlers:record`` etc.).

Handlers record what they saw in module-level lists so a test can assert on them; call
:func:`reset` at the start of a test.
"""
import gevent

seen = []
failures = []
blocking = {"event": None}


def reset():
    del seen[:]
    del failures[:]
    blocking["event"] = None


def record(notification):
    """Remember every notification."""
    seen.append(notification)


def fail_on_bad(notification):
    """Raise for payloads starting with 'bad', record the rest."""
    if (notification.payload or "").startswith("bad"):
        failures.append(notification)
        raise ValueError("bad payload %r" % notification.payload)
    seen.append(notification)


def block(notification):
    """Record, then block until the test sets ``blocking['event']``."""
    seen.append(notification)
    event = blocking["event"]
    if event is not None:
        event.wait()


def noop(notification):
    """Do nothing (benchmarks, smoke tests)."""


def cpu_spin(notification):
    """Hold the CPU for a moment without yielding (a hung handler)."""
    gevent.idle()
