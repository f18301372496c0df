"""systemd's notify protocol: readiness, stopping, status and watchdog pings (``Type=notify``).

A few datagrams to the unix socket named by ``NOTIFY_SOCKET`` (a path, or an abstract
socket when it starts with ``@``); without it every call is a no-op, so the service never
depends on systemd. No third-party dependency.

    notifier = Notifier.from_environ()
    notifier.notify("READY=1", "STATUS=supervising 3 instances")
    notifier.watchdog_interval  # seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC) or None

The :class:`Watchdog` pings ``WATCHDOG=1`` only while the supervisor's actor loop answers:
each round it asks ``probe()`` (the supervisor's ``ping()``: a request through the actor's
queue) and pings only when the answer comes within the interval. A loop that is stuck (a
request that never finishes) or dead stops the pings, and systemd restarts the service; a
hub blocked by a handler stops them too, since nothing runs then.

Concurrency: :meth:`Notifier.notify` does one non-blocking sendto (datagrams to a local
socket do not block in practice) and never raises: systemd going away must not stop the
service. Safe from any greenlet. The Watchdog's loop runs in its own greenlet; start/stop
from the hub's thread.
"""
import logging
import os
import socket
import time

import gevent

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


class Watchdog:
    """``WATCHDOG=1`` every ``interval`` seconds, each only after ``probe()`` answered.

    ``probe()`` returns a greenlet (or anything with ``join(timeout)``, ``ready()`` and
    ``successful()``) that finishes when the supervised loop has handled it. A probe not
    answered within ``interval`` skips that ping (logged once per silence, then its end).
    """

    def __init__(self, notifier, probe, interval=None):
        self.notifier = notifier
        self.probe = probe
        #: Seconds between pings (default: the notifier's half of WatchdogSec).
        self.interval = interval if interval is not None else notifier.watchdog_interval
        self.pings = 0
        #: Rounds in a row whose probe did not answer in time (0: the loop answers).
        self.missed = 0
        self._greenlet = None

    def start(self):
        if self.interval and (self._greenlet is None or self._greenlet.dead):
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill()
            self._greenlet = None

    def hub_only(self):
        """From now on ping as long as the hub runs, without asking ``probe()`` (a drain:
        the supervised loop stops before the process does, within the shutdown grace)."""
        self.probe = None

    def _run(self):
        while True:
            started = time.monotonic()
            answer = self.probe() if self.probe is not None else None
            if answer is not None:
                answer.join(self.interval)
            if answer is None or (answer.ready() and answer.successful()):
                self._answered()
                gevent.sleep(max(0.0, self.interval - (time.monotonic() - started)))
            else:
                self._silent()

    def _answered(self):
        if self.missed:
            log.warning("supervisor loop answers again after %d missed watchdog ping%s",
                        self.missed, "" if self.missed == 1 else "s",
                        extra={"action": "systemd.watchdog_resumed", "instance": None})
        self.missed = 0
        if self.notifier.notify("WATCHDOG=1"):
            self.pings += 1

    def _silent(self):
        self.missed += 1
        if self.missed == 1:
            log.error("supervisor loop did not answer within %.1f s: not pinging systemd's "
                      "watchdog (it restarts the service if this goes on)", self.interval,
                      extra={"action": "systemd.watchdog_missed", "instance": None})
