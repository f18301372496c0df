"""The :class:`DatabaseMonitor`: is the database up, and which role does it play?

One greenlet probes the server on ONE long-lived connection of its own (``SELECT`` of role
and identity, with a deadline of ``probe_timeout``), reconnecting only after a failure: a
new connection per probe was 86,400 connections a day in the server's log. It reports
*changes* only, through ``report(DatabaseState)``: up/down, the role, and the identity
(system identifier, timeline).

Hysteresis and pace (DESIGN's "database probe" row)::

    up:    probe every probe_interval (1 s); one failed probe is a blip: probe again after
           probe_interval; failures_to_down (2) failures in a row = down
    down:  probe at a backed-off pace, probe_interval doubling up to down_interval (5 s);
           the first success = up again (the supervisor's own grace covers a flapping
           return)

A role change is believed only after a second probe ``role_debounce`` seconds later agrees
(a failover flaps; acting twice costs restarts). :meth:`check_now` probes at once:
instances call it when they lose their connection, and the failover watcher when a signal
file appears.

The log tells an outage once, on one line: "database down: <error>", then every
``summary_interval`` (5 min) "database still down for 5m12s, 310 attempts, last error:
...", and "database up: primary, timeline 1 (was down for 5m40s, 331 attempts)".

Concurrency: ``report`` is called in the monitor's greenlet and MUST NOT block (the
supervisor puts a request on its queue). :meth:`check_now` is safe from any greenlet of
the hub thread; everything else runs in the monitor's greenlet.
"""
import dataclasses
import logging
import typing

import gevent
import gevent.event

from instances.backoff import Backoff
from instances.connectors import PostgresConnector
from instances.episodes import Episode, duration, one_line
from instances.exceptions import DatabaseError, InvalidConfigurationException
from supervisor.config.settings import BY_NAME

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

    #: Seconds between probes while the database is up (and after a single failure); the
    #: default is the settings table's ``[supervisor] probe_interval``.
    probe_interval = BY_NAME["supervisor.probe_interval"].default
    #: Seconds between probes at most while it is down (the pace backs off up to this).
    down_interval = 5.0
    #: Seconds a probe (connect + query) may take before it counts as failed (the settings
    #: table's ``[supervisor] probe_timeout``).
    probe_timeout = BY_NAME["supervisor.probe_timeout"].default
    #: Failed probes in a row that make the database "down" (one is a blip).
    failures_to_down = 2
    #: Seconds after which a changed role is probed again and believed only if confirmed.
    role_debounce = 0.3
    #: Seconds between two "still down" summaries in the log.
    summary_interval = 300.0

    def __init__(self, dsn, report, probe_interval=None, probe_timeout=None,
                 application_name="pgvisor-monitor", down_interval=None,
                 failures_to_down=None):
        self.report = report
        for key, value in (("probe_interval", probe_interval), ("probe_timeout", probe_timeout),
                           ("down_interval", down_interval),
                           ("failures_to_down", failures_to_down)):
            if value is not None:
                setattr(self, key, value)
        if not (isinstance(self.failures_to_down, int) and self.failures_to_down >= 1):
            raise InvalidConfigurationException(
                "failures_to_down must be an integer >= 1, got %r" % (self.failures_to_down,),
                "failures_to_down", self.failures_to_down)
        self.connector = PostgresConnector(dsn, application_name=application_name,
                                           connect_timeout=max(1, int(self.probe_timeout)))
        #: The pace while down: probe_interval doubling up to down_interval, +/-10 %.
        self.backoff = Backoff(initial=self.probe_interval, factor=2.0,
                               max_delay=max(self.down_interval, self.probe_interval))
        #: The last state reported (None before the first report).
        self.state = None
        self.probes = 0
        #: Failed probes in a row (0 after a success).
        self.failures = 0
        self.outage = Episode(self.summary_interval)
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
        self.connector.disconnect()

    def check_now(self):
        """Probe as soon as possible (returns at once)."""
        self._wake.set()

    def probe(self):
        """One observation on the long-lived connection (blocks this greenlet at most about
        ``probe_timeout``, plus a connect's own deadlines when it reconnects). A failed
        probe drops the connection: the next one reconnects."""
        self.probes += 1
        try:
            if not self.connector.connected:
                # Connecting has its deadline per host (connect_timeout): one probe_timeout
                # for the whole would never reach the second host of host=a,b when the
                # first one swallows the connect.
                self.connector.fileno()
            with gevent.Timeout(self.probe_timeout, DatabaseError(
                    "no answer within %.1f s" % self.probe_timeout)):
                identity = self.connector.server_identity(shared=True)
        except DatabaseError as error:
            self.connector.disconnect()  # after a deadline it may be mid-protocol
            return DatabaseState(up=False, error=one_line(error), fatal=error.kind == "fatal")
        return DatabaseState(
            up=True, role="standby" if identity["in_recovery"] else "primary",
            system_identifier=identity["system_identifier"], timeline=identity["timeline"])

    def next_delay(self):
        """Seconds until the next probe: probe_interval unless the database is down (then
        the backed-off pace)."""
        if self.state is not None and not self.state.up:
            return self.backoff.next()
        return self.probe_interval

    def _run(self):
        while True:
            try:
                self._observe()
            except Exception:  # the loop's edge: keep monitoring whatever happened
                log.exception("database probe failed unexpectedly",
                              extra={"action": "monitor.error", "instance": None})
            self._wake.wait(self.next_delay())
            self._wake.clear()

    def _observe(self):
        state = self.probe()
        if not state.up:
            self._failed(state)
            return
        self.failures = 0
        self.backoff.reset()
        last_role = self._last_up.role if self._last_up is not None else None
        if last_role is not None and state.role != last_role:
            # A changed role (also across an outage) is believed when a second probe
            # ``role_debounce`` later agrees: a flapping failover costs one change, not two.
            gevent.sleep(self.role_debounce)
            confirmed = self.probe()
            if not confirmed.up or confirmed.role != state.role:
                log.info("role flap ignored: %s -> %s -> %s", last_role, state.role,
                         confirmed.role, extra={"action": "monitor.role_flap", "instance": None})
                return
            state = confirmed
        outage = self.outage.snapshot() if self.outage.open else None
        self.outage.ended()
        if not state.same(self.state):
            self._log_up(self.state, state, self._last_up, outage)
            self._change(state)

    def _failed(self, state):
        """A failed probe: counted; ``failures_to_down`` in a row make the change."""
        self.failures += 1
        step = self.outage.failed(state.error)
        if self.state is not None and not self.state.up:
            if not state.same(self.state):  # it became fatal, or stopped being fatal
                self._log_down(state)
                self._change(state)
            elif step == "summary":
                log.warning("database still down %s", self.outage.describe(),
                            extra={"action": "monitor.still_down", "instance": None})
            return
        if self.failures >= self.failures_to_down:
            self._log_down(state)
            self._change(state)
        else:
            log.debug("database probe failed (%d of %d before down): %s", self.failures,
                      self.failures_to_down, state.error,
                      extra={"action": "monitor.probe_failed", "instance": None})

    def _change(self, state):
        self.state = state
        if state.up:
            self._last_up = state
        self.report(state)

    def _log_down(self, state):
        log.warning("database down%s: %s", " (fatal: retrying cannot fix it)"
                    if state.fatal else "", state.error,
                    extra={"action": "monitor.change", "instance": None})

    @staticmethod
    def _log_up(previous, state, last_up, outage):
        extra = {"action": "monitor.change", "instance": None}
        if previous is None or not previous.up:
            was = ""
            if previous is not None and outage is not None:
                seconds, attempts = outage
                was = " (was down for %s, %d failed probe%s)" % (
                    duration(seconds), attempts, "" if attempts == 1 else "s")
            log.info("database up: %s, timeline %s%s", state.role, state.timeline, was,
                     extra=extra)
        if last_up is not None and last_up.role != state.role:
            log.warning("database role changed: %s -> %s", last_up.role, state.role,
                        extra=dict(extra, action="monitor.role_changed"))
        if last_up is not None and (last_up.system_identifier != state.system_identifier
                                    or last_up.timeline != state.timeline):
            log.warning("database identity changed: system identifier %s -> %s, timeline "
                        "%s -> %s", last_up.system_identifier, state.system_identifier,
                        last_up.timeline, state.timeline,
                        extra=dict(extra, action="monitor.identity_changed"))
