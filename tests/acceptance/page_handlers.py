"""Handlers for the status page tests' service (tests/acceptance/test_status_page.py)."""
import gevent

from supervisor import get_current


def kill(notification):
    """A live notification kills the instance named by its payload, as a crash would
    (``Supervisor.instance(name).kill()``, from a greenlet of its own, since it may be the
    instance running this very handler)."""
    if notification.kind == "notify" and notification.payload:
        instance = get_current().instance(notification.payload)
        if instance is not None:
            gevent.spawn(instance.kill)


def idle(notification):
    """Does nothing: an instance that simply runs."""


def fail(notification):
    """A live notification fails with its payload as the error's text."""
    if notification.kind == "notify":
        raise RuntimeError(notification.payload)
