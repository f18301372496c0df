"""The :class:`RegistryFollower`: keeps a :class:`~instances.registry.PostgresRegistry` in
line with the edits other nodes (and CLIs) make.

It subscribes to the registry's channel (``<schema>_registry``) through the node's shared
notifier (:class:`~instances.notifier.Notifiers`: the same connection the instances of that
database use, no connection of its own) and reloads the registry:

- on every NOTIFY of an edit (the payload is the new version; several waiting are one
  reload);
- on every ``catch_up`` the notifier gives it: after its subscribe and after every
  reconnect, so an edit made while this node was cut off is read as soon as it is back;
- every ``interval`` seconds whatever happens (the fallback when notifications cannot
  arrive, e.g. through a pooler that loses LISTEN, or a standby, which refuses LISTEN);
- while the registry is not read yet or its last reload failed, again after
  ``retry_first`` (1 s), doubling up to ``interval``: a node started while its registry
  was unavailable (a standby its table has not reached yet) reads it as soon as it can, and
  a leader never plans for long without one;
- every ``unfollowed_poll`` (5 s) while its subscription is not connected (a standby
  refuses LISTEN: without it a standby's node saw the rows replicated after its first
  read only an interval later).

A reload that changes the specs calls the registry's ``on_change`` listeners (the
supervisor's: a registry-changed request to its actor). A reload that fails is logged (a
database outage once as it begins and once as it ends, an invalid row once per distinct
message) and the last desired state stays in force. A subscription that the server refused
(authentication) is taken again at the next poll.

Lifecycle: ``start()`` (returns at once) -> following -> ``stop(timeout)``. The follower's
greenlet does the database reads; everything else returns at once.
"""
import logging

import gevent
import gevent.queue

from instances.exceptions import RegistryError
from instances.notifier import Subscription
from instances.queues import MemoryQueue
from instances.registry.desired import RegistryUnavailable

log = logging.getLogger(__name__)


class RegistryFollower:
    """Reload ``registry`` (a PostgresRegistry: ``dsn``, ``channel``, ``loaded``,
    ``reload()``) on its NOTIFYs through ``notifiers`` and every ``interval`` seconds."""

    #: Notifications kept waiting (more start an overflow: one catch_up, one reload).
    queue_size = 64
    #: Seconds before the first new try of a registry not read yet or failing (doubling
    #: up to the interval).
    retry_first = 1.0
    #: Seconds between two reloads while the subscription is not connected (no NOTIFY can
    #: tell of an edit: a standby, a refused LISTEN).
    unfollowed_poll = 5.0

    def __init__(self, registry, notifiers, interval):
        self.registry = registry
        self.notifiers = notifiers
        self.interval = interval
        self.queue = MemoryQueue(self.queue_size)
        self.subscription = Subscription(notifiers, registry.dsn, [registry.channel],
                                         self.queue, name="registry")
        #: Reloads done, and those that changed the specs.
        self.reloads = self.changes = 0
        #: The last reload's error (None after a good one).
        self.last_error = None
        self._greenlet = None
        self._told = None

    def start(self):
        if self._greenlet is None:
            self.subscription.start()
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self, timeout=None):
        """Unsubscribe and stop the greenlet (blocks up to ``timeout`` for a reload)."""
        self.subscription.stop()
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None

    def status(self):
        """``{"following", "reloads", "changes", "last_error"}`` (JSON-ready)."""
        return {"following": self.subscription.connected, "reloads": self.reloads,
                "changes": self.changes,
                "last_error": str(self.last_error) if self.last_error is not None else None}

    def reload_now(self):
        """A greenlet reloading now; its value: True if the reload succeeded."""
        return gevent.spawn(self._reload)

    def _run(self):
        retry = self.retry_first
        while True:
            # Unread or failing (a service started while its registry was unavailable, a
            # standby without the table yet): again within retry_first seconds, doubling
            # up to the interval, not only after a whole interval (a leader with an unread
            # registry assigns nothing). Read: every interval, and on every NOTIFY.
            # Not following (no LISTEN: a standby refuses it): no NOTIFY tells of an edit,
            # so look every unfollowed_poll seconds (one row read when nothing changed).
            failing = not self.registry.loaded or self.last_error is not None
            timeout = (retry if failing else self.interval if self.subscription.connected
                       else self.unfollowed_poll)
            try:
                self.queue.get(timeout=min(timeout, self.interval))
            except gevent.queue.Empty:
                if not self.subscription.is_alive():  # refused by the server: try again
                    self.subscription.start()
            while self.queue.qsize():
                self.queue.get(block=False)
            retry = self.retry_first if self._reload() else min(retry * 2, self.interval)

    def _reload(self):
        unread = not self.registry.loaded  # the service started while it was unavailable
        try:
            if self.registry.reload():
                self.changes += 1
        except RegistryError as exc:
            self._failed(exc)
            return False
        except Exception as exc:  # the loop's edge: report, keep following
            log.exception("registry reload failed", extra={
                "action": "registry.reload_failed", "instance": None})
            self.last_error = exc
            return False
        finally:
            self.reloads += 1
        if self.last_error is not None or unread:
            log.info("registry %s read: %d instance(s)", self.registry.location,
                     len(self.registry),
                     extra={"action": "registry.available", "instance": None})
        self.last_error = self._told = None
        return True

    def _failed(self, exc):
        """Log ``exc`` unless it was the last one told (an outage is told once)."""
        self.last_error = exc
        unavailable = isinstance(exc, RegistryUnavailable)
        told = "unavailable" if unavailable else str(exc)
        if told == self._told:
            return
        self._told = told
        if unavailable:
            log.warning("registry unavailable, the last desired state stays in force: %s",
                        exc, extra={"action": "registry.unavailable", "instance": None})
        else:
            log.error("registry reload rejected, previous state stays: %s", exc,
                      extra={"action": "registry.reload_rejected", "instance": None})
