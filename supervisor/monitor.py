"""The :class:`DatabaseMonitor`: is the database up, and which role does it play?

One greenlet probes the server every ``probe_interval`` seconds on a short-lived connection
of its own (``server_identity()``: role and identity) with a deadline of ``probe_timeout``.
It reports *changes* only, through ``report(DatabaseState)``: up/down, the role, and the
identity (system identifier, timeline). A role change is believed only after a second probe
``role_debounce`` seconds later agrees (a failover flaps; acting twice costs restarts).
:meth:`check_now` probes at once: instances call it when they lose their connection, and
the failover watcher when a signal file appears.

Concurrency: ``report`` is called in the monitor's greenlet and MUST NOT block (the
supervisor puts a request on its queue). :meth:`check_now` is safe from any greenlet of
the hub thread.
"""
import dataclasses
import logging
import typing

import gevent
import gevent.event

from instances.connectors import PostgresConnector
from instances.exceptions import DatabaseError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DatabaseState:
    """One observation: ``up``; ``role`` "primary" | "standby" | None (unknown/down);
    ``system_identifier`` and ``timeline`` (None when down); ``error`` (text) when down;
    ``fatal``: the error is one retrying cannot fix (authentication, unknown database)."""

    up: bool
    role: typing.Optional[str] = None
    system_identifier: typing.Optional[str] = None
    timeline: typing.Optional[int] = None
    error: typing.Optional[str] = None
    fatal: bool = False

    def same(self, other):
        """True when ``other`` says the same (two "down" states differ only by ``fatal``:
        a changed error text is not news)."""
        if other is None or self.up != other.up:
            return False
        if not self.up:
            return self.fatal == other.fatal
        return self == other


class DatabaseMonitor:
    """Probe ``dsn`` periodically and on demand; ``report(state)`` on every change."""

    #: Seconds between probes.
    probe_interval = 1.0
    #: Seconds a probe (connect + query) may take before the database counts as down.
    probe_timeout = 2.0
    #: Seconds after which a changed role is probed again and believed only if confirmed.
    role_debounce = 0.3

    def __init__(self, dsn, report, probe_interval=None, probe_timeout=None,
                 application_name="pgvisor-monitor"):
        self.report = report
        if probe_interval is not None:
            self.probe_interval = probe_interval
        if probe_timeout is not None:
            self.probe_timeout = probe_timeout
        self.connector = PostgresConnector(dsn, application_name=application_name,
                                           connect_timeout=max(1, int(self.probe_timeout)))
        #: The last state reported (None before the first probe).
        self.state = None
        self.probes = 0
        self._last_up = None
        self._wake = gevent.event.Event()
        self._greenlet = None

    def start(self):
        if self._greenlet is None or self._greenlet.dead:
            self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self, timeout=5.0):
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=timeout)
            self._greenlet = None

    def check_now(self):
        """Probe as soon as possible (returns at once)."""
        self._wake.set()

    def probe(self):
        """One observation (blocks this greenlet at most about ``probe_timeout``)."""
        self.probes += 1
        try:
            with gevent.Timeout(self.probe_timeout, DatabaseError(
                    "no answer within %.1f s" % self.probe_timeout)):
                identity = self.connector.server_identity()
        except DatabaseError as error:
            return DatabaseState(up=False, error=str(error), fatal=error.kind == "fatal")
        return DatabaseState(
            up=True, role="standby" if identity["in_recovery"] else "primary",
            system_identifier=identity["system_identifier"], timeline=identity["timeline"])

    def _run(self):
        while True:
            try:
                self._observe()
            except Exception:  # the loop's edge: keep monitoring whatever happened
                log.exception("database probe failed unexpectedly",
                              extra={"action": "monitor.error", "instance": None})
            self._wake.wait(self.probe_interval)
            self._wake.clear()

    def _observe(self):
        state = self.probe()
        previous = self.state
        last_role = self._last_up.role if self._last_up is not None else None
        if state.up and last_role is not None and state.role != last_role:
            # A changed role (also across an outage) is believed when a second probe
            # ``role_debounce`` later agrees: a flapping failover costs one change, not two.
            gevent.sleep(self.role_debounce)
            confirmed = self.probe()
            if not confirmed.up or confirmed.role != state.role:
                log.info("role flap ignored: %s -> %s -> %s", last_role, state.role,
                         confirmed.role, extra={"action": "monitor.role_flap", "instance": None})
                return
            state = confirmed
        if not state.same(previous):
            self._log_change(previous, state, self._last_up)
            self.state = state
            if state.up:
                self._last_up = state
            self.report(state)

    @staticmethod
    def _log_change(previous, state, last_up):
        extra = {"action": "monitor.change", "instance": None}
        if not state.up:
            log.warning("database down: %s", state.error, extra=extra)
            return
        if previous is None or not previous.up:
            log.info("database up: %s, timeline %s", state.role, state.timeline, extra=extra)
        if last_up is not None and last_up.role != state.role:
            log.warning("database role changed: %s -> %s", last_up.role, state.role,
                        extra=dict(extra, action="monitor.role_changed"))
        if last_up is not None and (last_up.system_identifier != state.system_identifier
                                    or last_up.timeline != state.timeline):
            log.warning("database identity changed: system identifier %s -> %s, timeline "
                        "%s -> %s", last_up.system_identifier, state.system_identifier,
                        last_up.timeline, state.timeline,
                        extra=dict(extra, action="monitor.identity_changed"))
