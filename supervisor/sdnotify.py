"""systemd's notify protocol: readiness, stopping, status and watchdog pings (``Type=notify``).

A few datagrams to the unix socket named by ``NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``); without it every call is a no-op, so the service never
depends on systemd. No third-party dependency.

    notifier = Notifier.from_environ()
    notifier.notify("READY=1", "STATUS=supervising 3 instances")
    notifier.watchdog_interval  # seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC) or None

Concurrency: :meth:`Notifier.notify` does one non-blocking sendto (datagrams to a local
socket do not block in practice) and never raises: systemd going away must not stop the
service. Safe from any greenlet.
"""
import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    """Talks to systemd at ``address`` (None: disabled, every call does nothing)."""

    def __init__(self, address=None, watchdog_usec=None):
        self.address = address
        #: Seconds between watchdog pings (half of systemd's WatchdogSec), or None.
        self.watchdog_interval = (watchdog_usec / 2e6) if watchdog_usec else None
        self._socket = None

    @classmethod
    def from_environ(cls, environ=os.environ):
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (the watchdog is
        ours only when WATCHDOG_PID is unset or our pid)."""
        raw = environ.get("NOTIFY_SOCKET") or None
        address = None
        if raw:
            address = "\0" + raw[1:] if raw.startswith("@") else raw
        usec = None
        pid = environ.get("WATCHDOG_PID")
        if environ.get("WATCHDOG_USEC", "").isdigit() and (
                not pid or pid == str(os.getpid())):
            usec = int(environ["WATCHDOG_USEC"]) or None
        return cls(address, usec)

    @property
    def enabled(self):
        return self.address is not None

    def notify(self, *states):
        """Send ``states`` (``"READY=1"``, ``"STATUS=..."``) in one datagram; True if sent."""
        if self.address is None:
            return False
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto("\n".join(states).encode("utf-8"), self.address)
            return True
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc,
                        extra={"action": "systemd.notify_failed", "instance": None})
            return False

    def close(self):
        if self._socket is not None:
            self._socket.close()
            self._socket = None
