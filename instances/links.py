"""The :class:`Links`: callbacks an owner is told about when a runtime part ends.

Components, processor pools and worker-process pools all tell their owner of their end
the same way: each registered callback is called with the part, in the hub, never raising
into the part (a failing callback is logged with its traceback).
"""
import contextlib
import logging

import gevent

log = logging.getLogger(__name__)


class Links:
    """The link callbacks of one part; ``action`` prefixes the log line of a failure."""

    __slots__ = ("_callbacks", "_action")

    def __init__(self, action):
        self._callbacks = []
        self._action = action

    def add(self, callback):
        self._callbacks.append(callback)

    def remove(self, callback):
        with contextlib.suppress(ValueError):
            self._callbacks.remove(callback)

    def notify(self, part, callbacks=None):
        """Call every callback (or ``callbacks``) with ``part`` now; never raises."""
        for callback in list(self._callbacks if callbacks is None else callbacks):
            try:
                callback(part)
            except Exception:
                log.exception("%r: link callback %r failed", part, callback,
                              extra={"action": self._action + ".link_error",
                                     "instance": getattr(part, "name", None)})

    def notify_soon(self, part, callbacks=None):
        """:meth:`notify` from the hub's next loop iteration (returns at once)."""
        gevent.get_hub().loop.run_callback(self.notify, part, callbacks)
