"""The :class:`Executor`: carries out the policy's actions and the operator's commands.

It is handed what it works on by its owner, the Supervisor: the ``records``
(``{name: Record}``), the restart ``budget``, the ``counters``, the database ``dsn``, the
instances' ``on_death`` / ``on_connection_lost`` callbacks and the ``instance_factory``. It
never sees the Supervisor and decides nothing about an instance: what to do is
:func:`supervisor.plan.plan`'s; the Executor only does it (starting, stopping, parking,
spending budget, keeping the records) and answers each with an
:class:`~supervisor.plan.Outcome`.

Build first, stop second: the instance an action starts is built (its handler imported,
its queue opened or validated) before the one it replaces is stopped. When the spec asked
for cannot be built (a handler that does not import, a spool directory that cannot be
used), the running instance keeps running on its previous spec, and a dead one is started
again on that spec; the error is kept on the record (``pending_spec_error`` in the status)
and the next verify tries the new spec again (docs/supervision.rst, "Edits that cannot
start"). Only an instance with no previous spec to fall back on is parked.

Runs only in the Supervisor's actor greenlet (it writes records and instances, which no
other greenlet does). Starting is quick (instances connect in their own greenlets);
stopping waits for the current notification up to the shutdown ``grace`` each call is
given, so the stops of one request run side by side and a request costs at most one grace.
"""
import dataclasses
import importlib
import logging
import os
import sys
import typing

import gevent

from instances.exceptions import FatalDatabaseError, RoleChanged
from instances.instance import Instance
from supervisor.plan import Apply, Forget, Hold, Outcome, Park, Recreate, Restart, Start, Stop
from supervisor.records import Record

log = logging.getLogger(__name__)

#: The actions that start an instance: it is built before anything is stopped.
STARTING = (Start, Restart, Recreate)


@dataclasses.dataclass
class Built:
    """An instance built for an action before the old one stops. ``spec``: what it was
    built of (the spec asked for, or the previous one when that cannot be built);
    ``instance``: None when it is built only once the old one has stopped (a spool
    directory the old instance still holds); ``error``: why the spec asked for could not
    be built (None: it could); ``fresh_queue``: the queue is not the old instance's."""

    spec: typing.Any
    instance: typing.Any = None
    error: typing.Optional[str] = None
    fresh_queue: bool = True
    #: The spec asked for (differs from ``spec`` when the previous one was built instead).
    asked: typing.Any = None


def make_instance(spec, dsn, on_death, on_connection_lost, queue=None, notifiers=None):
    """The default ``instance_factory``: an :class:`~instances.instance.Instance`
    (subscribing to ``notifiers``, the Supervisor's, unless its spec asks for its own
    connection)."""
    return Instance(spec, dsn, on_death=on_death, on_connection_lost=on_connection_lost,
                    queue=queue, notifiers=notifiers)


class Executor:
    """Carries out actions on ``records``; see the module docstring for the collaborators.

    ``instance_factory(spec, dsn, on_death, on_connection_lost, queue=None)`` builds an
    instance; on a restart with an unchanged queue it gets the old instance's ``queue``.
    """

    def __init__(self, *, records, budget, counters, dsn, on_death, on_connection_lost,
                 instance_factory=None):
        self.records = records
        self.budget = budget
        self.counters = counters
        self.dsn = dsn
        self.on_death = on_death
        self.on_connection_lost = on_connection_lost
        self.factory = instance_factory or make_instance
        self._carry = {Start: self._do_start, Restart: self._do_restart,
                       Recreate: self._do_recreate, Apply: self._do_apply,
                       Stop: self._do_stop, Hold: self._do_hold, Park: self._do_park, Forget: self._do_forget}

    def record(self, name):
        """The record of ``name``, created on first use."""
        record = self.records.get(name)
        if record is None:
            record = self.records[name] = Record(name)
        return record

    # -- the policy's actions -------------------------------------------------------------
    def carry_out(self, actions, grace):
        """Carry out ``actions`` (from :func:`~supervisor.plan.plan`); return ``{name:
        outcome}``. What the actions start is built first (:meth:`build`); then the
        instances to stop stop, side by side, within ``grace``; a Recreate whose new spec
        cannot be built stops nothing: its instance keeps running (:meth:`_keep`)."""
        built = {a.name: self.build(self.record(a.name), a.spec,
                                    fallback=not isinstance(a, Recreate))
                 for a in actions if isinstance(a, STARTING)}
        kept = {a.name for a in actions if isinstance(a, Recreate) and built[a.name].error}
        self.stop_all([self.records[a.name] for a in actions
                       if isinstance(a, (Stop, Recreate, Restart, Park))
                       and a.name not in kept and self._alive(a.name)], grace)
        return {a.name: self._carry[type(a)](a, built[a.name]) if a.name in built
                else self._carry[type(a)](a) for a in actions}

    def _do_start(self, action, built):
        return self._start(self.record(action.name), built, Outcome.STARTED, action.reason)

    def _do_recreate(self, action, built):
        record = self.record(action.name)
        if built.error:
            return self._keep(record, action.spec, built.error)
        return self._start(record, built, Outcome.STARTED, action.reason)

    def _do_restart(self, action, built):
        record = self.record(action.name)
        if action.budgeted:
            self.budget.try_spend(record.name, action.spec.restart_max_rate)
        record.restarts += 1
        self.counters["restarts"] += 1
        return self._start(record, built, Outcome.RESTARTED, action.reason)

    def _do_apply(self, action):
        self.records[action.name].instance.apply(action.spec)
        return Outcome.UPDATED.detail(", ".join(action.changes))

    def _do_stop(self, action):
        """The instance (if it ran) is stopped already; record the state."""
        if action.forget:
            return self._do_forget(action)
        record = self.record(action.name)
        record.final_state, record.exit, record.died_in_outage = action.final_state, None, False
        if action.final_state == "disabled":  # an operator's disable clears parking too
            self.unblock(record)
        record.changed()
        log.info("instance %s stopped: %s", record.name, action.reason,
                 extra={"action": "supervisor.stop_instance", "instance": record.name})
        return Outcome(action.final_state) if action.final_state != "waiting" \
            else Outcome.STOPPED

    def _do_hold(self, action):
        record = self.record(action.name)
        if record.final_state != "waiting":
            record.final_state, record.exit = "waiting", None
            record.changed()
            log.info("instance %s waits: %s", record.name, action.reason,
                     extra={"action": "supervisor.hold", "instance": record.name})
        return Outcome.WAITING

    def _do_park(self, action):
        if action.rate_limited:
            self.counters["restarts_rate_limited"] += 1
        return self._park(self.record(action.name), action.reason)

    def _do_forget(self, action):
        record = self.records.pop(action.name, None)
        if record is not None and record.instance is not None:
            self._close_queue(record.instance)  # removed for good: claims back, fds closed
        self.budget.forget(action.name)
        released = action.released
        if released is None:
            log.info("instance %s removed from the registry", action.name,
                     extra={"action": "supervisor.forget", "instance": action.name})
        else:  # multi-node: it runs (or will) elsewhere; say where and with which epoch
            log.info("instance %s %s", action.name, released.message(),
                     extra=dict(released.fields(), action="cluster.release",
                                instance=action.name))
        return Outcome.STOPPED

    # -- the operator's commands ------------------------------------------------------------
    def restart(self, specs, grace):
        """Restart the instances of ``specs`` (``{name: spec}``) now, whatever their state:
        parking, refusals and budgets are cleared; a disabled one is only stopped. Each
        replacement is built before its instance stops (:meth:`build`)."""
        records = [self.record(name) for name in specs]
        for record in records:
            self.unblock(record)
            record.final_state = None
        built = {r.name: self.build(r, specs[r.name]) for r in records if specs[r.name].enabled}
        stopping = [r for r in records if r.instance is not None and r.instance.alive]
        self.stop_all(stopping, grace)
        outcome = {}
        for record in records:
            was_running = any(r is record for r in stopping)
            if record.name not in built:
                outcome[record.name] = Outcome.DISABLED
                continue
            record.restarts += was_running
            self.counters["restarts"] += was_running
            outcome[record.name] = self._start(
                record, built[record.name],
                Outcome.RESTARTED if was_running else Outcome.STARTED, "operator request")
        return outcome

    def shutdown(self, names, grace):
        """Stop ``names``; they stay "stopped" until restarted."""
        records = [self.record(n) for n in names]
        self.stop_all(records, grace)
        for record in records:
            record.final_state, record.exit, record.died_in_outage = "stopped", None, False
            record.changed()
        return {record.name: Outcome.STOPPED for record in records}

    def stop_everything(self, grace):
        """Stop every running instance (the Supervisor stops)."""
        records = [r for r in self.records.values()
                   if r.instance is not None and r.instance.alive]
        self.stop_all(records, grace)
        return {r.name: Outcome.STOPPED for r in records}

    def unblock(self, record):
        """Clear what holds ``record`` back (parking, a refusal, a fatal error) and give it
        its full budget again: an operator's enable, disable or restart."""
        if record.parked:
            log.info("instance %s unparked", record.name,
                     extra={"action": "supervisor.unpark", "instance": record.name})
        record.clear_blocks()
        self.budget.reset(record.name)
        record.changed()

    # -- deaths ---------------------------------------------------------------------------
    def record_death(self, instance, in_outage, role):
        """Write down how ``instance`` died (``in_outage``: supervision was paused or in
        the grace; ``role``: the server's role then); return its record, or None when the
        death is of an instance already replaced or stopped."""
        record = self.records.get(instance.name)
        if record is None or record.instance is not instance:
            return None
        self.counters["deaths"] += 1
        error = instance.exception
        record.exit = instance.exit or "abnormal"
        record.last_error = None if error is None else str(error)
        record.died_in_outage = in_outage
        if isinstance(error, RoleChanged):
            record.refused_by = role or "unknown"
            log.warning("instance %s waits: the %s refused it (%s)", record.name,
                        record.refused_by, error,
                        extra={"action": "supervisor.role_refused", "instance": record.name})
        elif isinstance(error, FatalDatabaseError):
            record.fatal = str(error)
        record.changed()
        return record

    # -- carrying out -----------------------------------------------------------------------
    def build(self, record, spec, fallback=True):
        """Build, not start, the instance of ``spec`` that replaces ``record``'s (see
        :class:`Built`): its handler imported, its queue the old one when unchanged, else
        opened now (a spool directory the old instance holds opens once that one has
        closed it: only its handler is checked now). When ``spec`` cannot be built and
        ``fallback``, the record's previous spec is built instead; when neither can be,
        the Built has no spec. Never raises."""
        old = record.instance
        try:
            if record.pending_spec is not None:
                importlib.invalidate_caches()  # a retry: see the modules deployed since
            _reload_if_lacking(spec.handler)
            return self._build(old, spec)
        except Exception as exc:
            error = str(exc)
        previous = old.spec if old is not None else None
        if fallback and previous is not None and previous != spec:
            try:
                built = self._build(old, previous)
            except Exception as exc:
                error = "%s (the previous spec cannot start either: %s)" % (error, exc)
            else:
                built.error, built.asked = error, spec
                return built
        return Built(None, None, error, asked=spec)

    def _build(self, old, spec):
        queue = old.queue if old is not None and old.spec.queue == spec.queue and (
            old.spec.queue_size == spec.queue_size) else None
        if queue is None and _same_spool(old, spec):
            spec.resolve_handler()
            return Built(spec)
        instance = self.factory(spec, self.dsn, self.on_death, self.on_connection_lost,
                                queue=queue)
        return Built(spec, instance, fresh_queue=queue is None)

    def _start(self, record, built, outcome, reason):
        """Start ``built`` in place of ``record``'s instance (stopped by now). When it
        fails to start, the previous spec is started instead (as :meth:`build` would have
        chosen); the record is parked only when nothing starts."""
        old = record.instance
        if built.spec is None:
            return self._park(record, "cannot start: %s" % built.error)
        if old is not None and built.fresh_queue:
            self._carry_over(old, built)
            self._close_queue(old)  # after the stop: its claims go back for the new one
        try:
            instance = self._started(built, None if built.fresh_queue else old.queue)
        except Exception as error:  # a bad handler or queue: fail fast, spend nothing
            if built.error is not None or old is None or old.spec == built.spec:
                return self._park(record, "cannot start: %s" % error)
            built = Built(old.spec, error=str(error), asked=built.spec,
                          fresh_queue=built.fresh_queue)
            instance = self._start_previous(record, built, old)
            if instance is None:
                return Outcome.PARKED
        record.instance = instance
        record.exit, record.final_state, record.died_in_outage = None, None, False
        record.refused_by = record.fatal = None
        record.changed()
        if built.error:
            log.info("instance %s %s on its previous spec (%s)", record.name, outcome, reason,
                     extra={"action": "supervisor." + outcome, "instance": record.name})
            self._keep(record, built.asked, built.error)
            return Outcome.ERROR.detail("%s on the previous spec; the new one cannot start: "
                                        "%s" % (outcome, built.error))
        if record.pending_spec is not None:
            log.info("instance %s: its pending spec applies now", record.name,
                     extra={"action": "supervisor.pending_applied", "instance": record.name})
        record.pending_spec = record.pending_error = None
        log.info("instance %s %s (%s)", record.name, outcome, reason,
                 extra={"action": "supervisor." + outcome, "instance": record.name})
        return outcome

    def _start_previous(self, record, built, old):
        """The spec asked for failed to start after ``old`` stopped: start ``built`` (of
        ``old``'s spec) instead; None (and ``record`` parked) when that fails too."""
        try:
            return self._started(built, None if built.fresh_queue else old.queue)
        except Exception as again:
            self._park(record, "cannot start: %s (the previous spec cannot start either: "
                       "%s)" % (built.error, again))
            return None

    def _started(self, built, queue):
        """The instance of ``built`` (made now if it was not yet, on ``queue``), started;
        a queue opened for it is closed again when it fails."""
        instance = built.instance
        try:
            if instance is None:
                instance = self.factory(built.spec, self.dsn, self.on_death,
                                        self.on_connection_lost, queue=queue)
            return instance.start() or instance
        except Exception:
            if instance is not None and queue is None and built.fresh_queue:
                self._close_queue(instance)
            raise

    def _keep(self, record, spec, error):
        """``spec`` cannot start: ``record``'s instance goes on with its previous one; the
        error shows on it (``pending_spec_error``) until a verify can start ``spec``.
        Logged once per spec and error."""
        if (record.pending_spec, record.pending_error) != (spec, error):
            log.error("instance %s keeps its previous spec: the new one cannot start: %s "
                      "(tried again at every verify)", record.name, error,
                      extra={"action": "supervisor.spec_refused", "instance": record.name})
        record.pending_spec, record.pending_error = spec, error
        return Outcome.ERROR.detail("still running the previous spec; the new one cannot "
                                    "start: %s" % error)

    def _carry_over(self, old, built):
        """A memory queue replaced by a new one (an edit of ``queue_size``): what the old
        one still holds goes first into the new one, in order (even beyond a smaller
        bound: it was counted in once), not dropped with the old queue."""
        new_queue = getattr(built.instance, "queue", None)
        take_all = getattr(old.queue, "take_all", None)
        if take_all is None or not hasattr(new_queue, "give_back"):
            return
        items = take_all()
        if items:
            new_queue.give_back(items)
            log.info("instance %s: %d queued notification(s) carried over to its new queue",
                     old.name, len(items),
                     extra={"action": "supervisor.queue_carried", "instance": old.name})

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
        return Outcome.PARKED

    def stop_all(self, records, grace):
        """Stop the instances of ``records`` side by side (each within ``grace``)."""
        jobs = [gevent.spawn(r.instance.stop, grace) for r in records
                if r.instance is not None and r.instance.alive]
        if jobs:
            gevent.joinall(jobs, timeout=grace + 5)

    def _alive(self, name):
        record = self.records.get(name)
        return record is not None and record.instance is not None and record.instance.alive


def _reload_if_lacking(handler):
    """Re-read the module of ``handler`` (``"module:attr.path"``) when it was imported
    before but lacks the attribute: the file deployed since (with the new handler an edit
    names) is not in ``sys.modules``, and importing again would only return the old
    module, at every retry of the pending edit until the service restarts. Its code
    runs again only when its file changed since the last time it was re-read here (once
    at the first retry), not at every verify. Raises when the module as deployed cannot
    be executed."""
    module_name, _, attribute = handler.partition(":")
    module = sys.modules.get(module_name)
    if module is None:
        return  # never imported (or it failed): import_module reads the file anyway
    target = module
    for part in attribute.split("."):
        target = getattr(target, part, _LACKING)
        if target is _LACKING:
            break
    else:
        return
    try:
        changed = os.stat(module.__file__).st_mtime_ns
    except (OSError, TypeError):  # no file (a namespace or built-in module): nothing to read
        return
    seen, error = _reread.get(module_name, (None, None))
    if seen != changed:
        try:
            importlib.reload(module)
            error = None
        except Exception as exc:  # any error of the module's code
            error = "handler=%r: cannot re-import module %r: %s: %s" % (
                handler, module_name, type(exc).__name__, exc)
        _reread[module_name] = changed, error
    if error is not None:  # the same file still: the same error, its code not run again
        raise RuntimeError(error)


_LACKING = object()
#: Module name -> (its file's mtime in ns, the error or None) when
#: :func:`_reload_if_lacking` last re-read it.
_reread = {}


def _same_spool(old, spec):
    """True when ``spec``'s spool is the directory ``old``'s queue holds (the new queue
    can only open once the old one has closed: it removes its claims' directory)."""
    directory = getattr(old.queue, "directory", None) if old is not None else None
    return bool(directory and spec.queue is not None
                and os.path.abspath(spec.queue["spool"]) == directory)
