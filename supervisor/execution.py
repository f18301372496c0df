"""The :class:`Executor`: carries out the Supervisor's requests and the policy's actions.

Runs only in the Supervisor's actor greenlet (it writes records and instances, which no
other greenlet does). Starting is quick (instances connect in their own greenlets);
stopping waits for the current notification up to the shutdown grace, so the stops of one
request run side by side and a request costs at most one grace period.

Two facts the pure plan does not see are applied here: a death during an outage, a manual
pause or the revive grace is *free* (its restart spends no budget), and an instance whose
listener was refused by the server's role (RoleChanged, e.g. LISTEN on a standby) is not
started again on that role: it waits for a role change or an operator's restart/enable.
"""
import inspect
import logging

import gevent

from instances.exceptions import FatalDatabaseError, RoleChanged
from instances.instance import Instance
from supervisor.plan import Apply, Forget, Recreate, Restart, Start, Stop, role_fits
from supervisor.records import Record

log = logging.getLogger(__name__)

UNKNOWN = "unknown instance"


def _takes_queue(factory):
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "queue" or p.kind is p.VAR_KEYWORD for p in params)


class Executor:
    """Request handlers of ``supervisor``; ``instance_factory(spec, dsn, on_death,
    on_connection_lost)`` builds instances (default: :class:`~instances.instance.Instance`;
    a factory that also takes ``queue=`` gets the old instance's queue on a restart)."""

    def __init__(self, supervisor, instance_factory=None):
        self.sup = supervisor
        self.factory = instance_factory or self._make_instance
        self._pass_queue = _takes_queue(self.factory)

    def _make_instance(self, spec, dsn, on_death, on_connection_lost, queue=None):
        return Instance(spec, dsn, on_death=on_death, on_connection_lost=on_connection_lost,
                        queue=queue)

    def blank(self, name):
        return Record(name)

    def record(self, name):
        record = self.sup.records.get(name)
        if record is None:
            record = self.sup.records[name] = Record(name)
        return record

    def handle(self, kind, names, flags):
        """Carry out one request; return ``{name: outcome}``."""
        return getattr(self, "on_" + kind)(names, **flags)

    # -- requests -------------------------------------------------------------------------
    def on_verify(self, names, ratelimit=False):
        self.sup.counters["verifies"] += 1
        outcome = self._unknown(names)
        known = None if names is None else [n for n in names if n not in outcome]
        outcome.update(self.carry_out(self.sup.plan(known, ratelimit)))
        for name in (known if known is not None else self.sup.desired()):
            outcome.setdefault(name, "unchanged")
        return outcome

    def on_tick(self, names):
        return self.on_verify(None, ratelimit=True)

    on_registry = on_tick

    def on_role_check(self, names):
        """A failover file changed: the monitor probes now (its report follows as a
        ``database`` request when something changed)."""
        self.sup.monitor.check_now()
        return {}

    def on_reload(self, names):
        try:
            self.sup.registry.reload()  # on a change, callbacks queue a verify
        except Exception as error:
            log.error("registry reload rejected, previous state stays: %s", error,
                      extra={"action": "registry.reload_rejected", "instance": None})
            return False
        return True

    def on_enabled(self, names):
        """An operator enabled ``names``: clear parking, role blocks and budgets, verify."""
        for name in names:
            record = self.sup.records.get(name)
            if record is not None:
                if record.parked:
                    log.info("instance %s unparked by enable", name,
                             extra={"action": "supervisor.unpark", "instance": name})
                    record.exit = None  # a fresh start, not a restart
                record.parked = record.blocked_role = None
                record.changed()
            self.sup.budget.reset(name)
        return self.on_verify(names, ratelimit=True)

    def on_restart(self, names):
        desired = self.sup.desired(names)
        outcome = self._unknown(names)
        records = [self.record(n) for n in names if n not in outcome]
        for record in records:
            record.parked = record.final_state = record.blocked_role = None
            self.sup.budget.reset(record.name)
        stopping = [r for r in records if r.instance is not None and r.instance.alive]
        self._stop_all(stopping)
        for record in records:
            was_running = any(r is record for r in stopping)
            outcome[record.name] = self._explicit_start(record, desired[record.name],
                                                        was_running)
        return outcome

    def on_shutdown(self, names):
        outcome = self._unknown(names)
        records = [self.record(n) for n in names if n not in outcome]
        self._stop_all([r for r in records if r.instance is not None and r.instance.alive])
        for record in records:
            record.final_state, record.exit, record.died_in_outage = "stopped", None, False
            record.changed()
            outcome[record.name] = "stopped"
        return outcome

    def on_died(self, names, instance):
        sup, name = self.sup, instance.name
        record = sup.records.get(name)
        if record is None or record.instance is not instance:
            return {}  # an instance we already replaced or stopped
        sup.counters["deaths"] += 1
        error = instance.exception
        record.exit = instance.exit or "abnormal"
        record.last_error = None if error is None else str(error)
        record.changed()
        if isinstance(error, RoleChanged):
            # The server refused the listener for its role: wait for a role change (or an
            # operator), do not restart against the same role (that would flap forever).
            record.exit, record.final_state = None, "waiting"
            record.blocked_role = sup.role or "unknown"
            log.warning("instance %s waits: the %s refused it (%s)", name,
                        record.blocked_role, error,
                        extra={"action": "supervisor.role_refused", "instance": name})
            sup.monitor.check_now()
            return {name: "waiting"}
        if isinstance(error, FatalDatabaseError):
            return {name: self._park(record, "fatal database error: %s" % error)}
        spec = sup.desired().get(name)
        if (sup.paused or sup.in_grace) and (spec is None or spec.needs_database):
            record.died_in_outage = True  # restarted after the grace, free of budget
            sup.monitor.check_now()
            return {name: "waiting"}
        return self.on_verify([name], ratelimit=True)

    def on_database(self, names, state):
        """The monitor saw a change; the actor records it (pausing, grace, role)."""
        if self.sup.database_changed(state) and state.up:
            for record in self.sup.records.values():
                record.blocked_role = None  # a new role: refused instances may try again
        # Down too: instances that need no database (spool sources) are planned anyway.
        return self.on_verify(None, ratelimit=True)

    def on_grace_over(self, names, generation):
        """The grace after a revival is over: instances still not connected are restarted,
        then a verify restarts the dead; neither spends restart budget."""
        sup = self.sup
        if not sup.end_grace(generation) or not sup.db_up:
            return {}
        desired, state = sup.desired(), sup.plan_state(ratelimit=False)
        late = [Restart(r.name, desired[r.name], "not back %.1f s after the database revived"
                        % sup.wait_after_db_revived, budgeted=False)
                for r in sup.records.values()
                if r.instance is not None and r.instance.alive and not r.instance.connected
                and r.name in desired and desired[r.name].enabled and not r.parked
                and role_fits(desired[r.name].run_on, state.role)]
        outcome = self.carry_out(late)
        outcome.update(self.on_verify(None, ratelimit=False))
        return outcome

    def on_stop(self, names):
        records = [r for r in self.sup.records.values()
                   if r.instance is not None and r.instance.alive]
        self._stop_all(records)
        return {r.name: "stopped" for r in records}

    # -- actions --------------------------------------------------------------------------
    def carry_out(self, actions):
        outcome, kept = {}, []
        for action in actions:
            if isinstance(action, (Start, Restart)) and self._role_blocked(action.name):
                outcome[action.name] = "waiting"
            else:
                kept.append(action)
        self._stop_all([self.sup.records[a.name] for a in kept
                        if isinstance(a, (Stop, Recreate, Restart)) and self._alive(a.name)])
        for action in kept:
            outcome[action.name] = self._carry_out_one(action)
        return outcome

    def _carry_out_one(self, action):
        record = self.record(action.name)
        if isinstance(action, Forget) or (
                isinstance(action, Stop) and action.name not in self.sup.registry):
            self.sup.records.pop(action.name, None)
            self.sup.budget.forget(action.name)
            log.info("instance %s removed", action.name,
                     extra={"action": "supervisor.forget", "instance": action.name})
            return "stopped"
        if isinstance(action, Stop):
            return self._record_stop(record, action)
        if isinstance(action, Apply):
            record.instance.apply(action.spec)
            return "updated: %s" % ", ".join(action.changes)
        if isinstance(action, Restart):
            return self._restart(record, action)
        return self._start(record, action.spec, "started", reason=action.reason)

    def _record_stop(self, record, action):
        """A Stop: the instance (if it ran) is stopped already; record the state."""
        record.final_state, record.exit, record.died_in_outage = action.final_state, None, False
        if action.final_state == "disabled":  # an operator's disable clears parking too
            record.parked = record.blocked_role = None
            self.sup.budget.reset(record.name)
        record.changed()
        log.info("instance %s stopped: %s", record.name, action.reason,
                 extra={"action": "supervisor.stop_instance", "instance": record.name})
        return action.final_state if action.final_state != "waiting" else "stopped"

    def _restart(self, record, action):
        free = record.died_in_outage or not action.budgeted
        if not free and not self.sup.budget.try_spend(record.name, action.spec.restart_max_rate):
            self.sup.counters["restarts_rate_limited"] += 1
            rate = action.spec.restart_max_rate or self.sup.budget.default_rate
            return self._park(record, "restart budget %s spent (%s)" % (rate, action.reason))
        record.restarts += 1
        self.sup.counters["restarts"] += 1
        return self._start(record, action.spec, "restarted", reason=action.reason)

    def _explicit_start(self, record, spec, was_running):
        if not spec.enabled:
            return "disabled"
        record.restarts += was_running
        self.sup.counters["restarts"] += was_running
        return self._start(record, spec, "restarted" if was_running else "started",
                           reason="operator request")

    def _start(self, record, spec, outcome, reason):
        old = record.instance
        queue = old.queue if old is not None and old.spec.queue == spec.queue and (
            old.spec.queue_size == spec.queue_size) else None
        if old is not None and (queue is None or not self._pass_queue):
            self._close_queue(old)
        extra = {"queue": queue} if self._pass_queue else {}
        try:
            record.instance = self.factory(spec, self.sup.dsn, self.sup._instance_died,
                                           self.sup._connection_lost, **extra)
            record.instance.start()
        except Exception as error:  # a bad handler or queue: fail fast, spend nothing
            return self._park(record, "cannot start: %s" % error)
        record.exit, record.final_state, record.died_in_outage = None, None, False
        record.changed()
        log.info("instance %s %s (%s)", record.name, outcome, reason,
                 extra={"action": "supervisor." + outcome, "instance": record.name})
        return outcome

    def _close_queue(self, old):
        """The old instance's queue is not reused: close it (a FileQueue hands its claims
        back and closes its directory fds)."""
        try:
            getattr(old.queue, "close", lambda: None)()
        except Exception:  # the old queue's trouble must not stop the new instance
            log.exception("instance %s: closing the old queue failed", old.name,
                          extra={"action": "supervisor.queue_close_failed",
                                 "instance": old.name})

    def _park(self, record, reason):
        record.parked = reason
        record.changed()
        if record.instance is not None and record.instance.alive:
            record.instance.kill()
        log.error("instance %s disabled_by_supervisor: %s (restart it or enable it to retry)",
                  record.name, reason,
                  extra={"action": "supervisor.park", "instance": record.name})
        return "disabled_by_supervisor"

    def _stop_all(self, records):
        """Stop the instances of ``records`` side by side (each within the grace)."""
        grace = self.sup.shutdown_grace
        jobs = [gevent.spawn(r.instance.stop, grace) for r in records
                if r.instance is not None and r.instance.alive]
        if jobs:
            gevent.joinall(jobs, timeout=grace + 5)

    def _alive(self, name):
        record = self.sup.records.get(name)
        return record is not None and record.instance is not None and record.instance.alive

    def _role_blocked(self, name):
        record = self.sup.records.get(name)
        return (record is not None and record.blocked_role is not None
                and record.blocked_role == (self.sup.role or "unknown"))

    def _unknown(self, names):
        if names is None:
            return {}
        known = self.sup.desired(names)
        return {name: UNKNOWN for name in names if name not in known}
