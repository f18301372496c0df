"""The :class:`Executor`: carries out the Supervisor's requests and the policy's actions.

Runs only in the Supervisor's actor greenlet (it writes records and instances, which no
other greenlet does). Starting is quick (instances connect in their own greenlets);
stopping waits for the current notification up to the shutdown grace, so the stops of one
request run side by side and a request costs at most one grace period.
"""
import logging
import time

import gevent

from instances.exceptions import FatalDatabaseError, RoleChanged
from instances.instance import Instance
from supervisor.plan import Apply, Forget, Recreate, Restart, Stop
from supervisor.records import Record

log = logging.getLogger(__name__)

UNKNOWN = "unknown instance"


class Executor:
    """Request handlers of ``supervisor``; ``instance_factory(spec, dsn, on_death,
    on_connection_lost)`` builds instances (default: :class:`~instances.instance.Instance`)."""

    def __init__(self, supervisor, instance_factory=None):
        self.sup = supervisor
        self.factory = instance_factory or self._make_instance

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
        self.sup._tick_pending = False
        return self.on_verify(None, ratelimit=True)

    def on_registry(self, names):
        return self.on_verify(None, ratelimit=True)

    def on_reload(self, names):
        try:
            self.sup.registry.reload()  # on a change, callbacks queue a verify
        except Exception as error:
            log.error("registry reload rejected, previous state stays: %s", error,
                      extra={"action": "registry.reload_rejected", "instance": None})
            return False
        return True

    def on_enabled(self, names):
        """An operator enabled ``names``: clear parking and budgets, then verify them."""
        for name in names:
            record = self.sup.records.get(name)
            if record is not None and record.parked:
                log.info("instance %s unparked by enable", name,
                         extra={"action": "supervisor.unpark", "instance": name})
                record.parked, record.exit = None, None  # a fresh start, not a restart
                record.changed()
                self.sup.budget.reset(name)
        return self.on_verify(names, ratelimit=True)

    def on_restart(self, names):
        desired = self.sup.desired(names)
        outcome = self._unknown(names)
        stopping = []
        for name in names:
            if name in outcome:
                continue
            record = self.record(name)
            record.parked, record.final_state = None, None
            self.sup.budget.reset(name)
            if record.instance is not None and record.instance.alive:
                stopping.append(record)
        self._stop_all(stopping)
        for name in names:
            if name not in outcome:
                was = any(r.name == name for r in stopping)
                outcome[name] = self._explicit_start(self.record(name), desired[name], was)
        return outcome

    def on_shutdown(self, names):
        outcome = self._unknown(names)
        records = [self.record(n) for n in names if n not in outcome]
        self._stop_all([r for r in records if r.instance is not None and r.instance.alive])
        for record in records:
            record.final_state, record.exit = "stopped", None
            record.changed()
            outcome[record.name] = "stopped"
        return outcome

    def on_died(self, names, instance):
        record = self.sup.records.get(instance.name)
        if record is None or record.instance is not instance:
            return {}  # an instance we already replaced or stopped
        self.sup.counters["deaths"] += 1
        record.exit = instance.exit or "abnormal"
        record.last_error = None if instance.exception is None else str(instance.exception)
        record.changed()
        error = instance.exception
        if isinstance(error, RoleChanged):
            record.exit, record.final_state = None, "waiting"
            self.sup.monitor.check_now()
            return {instance.name: "waiting"}
        if isinstance(error, FatalDatabaseError):
            return {instance.name: self._park(record, "fatal database error: %s" % error)}
        if not self.sup.db_up or self.sup.paused or self.sup._in_grace():
            record.died_in_outage = True
            self.sup.monitor.check_now()
            return {instance.name: "waiting"}
        return self.on_verify([instance.name], ratelimit=True)

    def on_database(self, names, state):
        sup, previous = self.sup, self.sup.database
        was_up = previous is not None and previous.up
        sup.database, sup._db_since = state, time.time()
        if was_up and not state.up:
            sup.counters["outages"] += 1
        if state.up and previous is not None and not was_up:
            sup._revived_at = time.monotonic()
            gevent.spawn_later(sup.wait_after_db_revived, sup._put, "grace_over", None)
            log.info("database revived: instances have %.1f s to reconnect",
                     sup.wait_after_db_revived,
                     extra={"action": "supervisor.revived", "instance": None})
        if state.up and previous is not None and previous.up and previous.role != state.role:
            sup.counters["role_changes"] += 1
        if not state.up:
            return {}
        return self.on_verify(None, ratelimit=True)

    def on_grace_over(self, names):
        """The grace after a revival is over: instances not back are restarted, free."""
        sup = self.sup
        if sup._in_grace():
            return {}
        for record in sup.records.values():
            instance = record.instance
            if instance is not None and instance.alive and not instance.connected:
                record.died_in_outage = True
                record.exit = "abnormal"
                self._stop_all([record])
        return self.on_verify(None, ratelimit=True)

    def on_stop(self, names):
        records = [r for r in self.sup.records.values()
                   if r.instance is not None and r.instance.alive]
        self._stop_all(records)
        return {r.name: "stopped" for r in records}

    # -- actions --------------------------------------------------------------------------
    def carry_out(self, actions):
        outcome, stopping = {}, []
        for action in actions:
            if isinstance(action, (Stop, Recreate)) or (
                    isinstance(action, Restart) and self._alive(action.name)):
                stopping.append(self.record(action.name))
        self._stop_all(stopping)
        for action in actions:
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
            record.final_state, record.exit = action.final_state, None
            record.changed()
            log.info("instance %s stopped: %s", action.name, action.reason,
                     extra={"action": "supervisor.stop_instance", "instance": action.name})
            return action.final_state if action.final_state != "waiting" else "stopped"
        if isinstance(action, Apply):
            record.instance.apply(action.spec)
            return "updated: %s" % ", ".join(action.changes)
        if isinstance(action, Restart):
            return self._restart(record, action)
        return self._start(record, action.spec, "started", reason=action.reason)

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
        try:
            record.instance = self.factory(spec, self.sup.dsn, self.sup._instance_died,
                                           self.sup._connection_lost, queue=queue)
            record.instance.start()
        except Exception as error:  # a bad handler or queue: fail fast, spend nothing
            return self._park(record, "cannot start: %s" % error)
        record.exit, record.final_state, record.died_in_outage = None, None, False
        record.changed()
        log.info("instance %s %s (%s)", record.name, outcome, reason,
                 extra={"action": "supervisor." + outcome, "instance": record.name})
        return outcome

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
        if not records:
            return
        grace = self.sup.shutdown_grace
        jobs = [gevent.spawn(r.instance.stop, grace) for r in records
                if r.instance is not None and r.instance.alive]
        gevent.joinall(jobs, timeout=grace + 5)

    def _alive(self, name):
        record = self.sup.records.get(name)
        return record is not None and record.instance is not None and record.instance.alive

    def _unknown(self, names):
        if names is None:
            return {}
        known = self.sup.desired(names)
        return {name: UNKNOWN for name in names if name not in known}
