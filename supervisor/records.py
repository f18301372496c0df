"""What the supervisor remembers about each instance, and how that reads as a status
(also the database's status, from the monitor's last report).

A :class:`Record` is owned by the Supervisor's actor greenlet: only it writes records.
:func:`observed_of` turns a record into the :class:`~supervisor.plan.Observed` the policy
reads; :func:`status_of` into the status dict callers see (its state decided by
:func:`supervisor.plan.shown_state`).
"""
import dataclasses
import time
import typing

from supervisor.plan import Observed, shown_state


@dataclasses.dataclass(eq=False)
class Record:
    """The runtime record of one instance name (mutable; the actor's alone; compared by
    identity)."""

    name: str
    instance: typing.Any = None
    #: How it last died: None, "normal" or "abnormal".
    exit: typing.Optional[str] = None
    #: The final state recorded by the last Stop ("stopped", "disabled", "waiting").
    final_state: typing.Optional[str] = None
    #: Why it is parked disabled_by_supervisor (None: not parked).
    parked: typing.Optional[str] = None
    restarts: int = 0
    last_error: typing.Optional[str] = None
    #: The death happened while the database was down or paused: its restart is free.
    died_in_outage: bool = False
    #: The role ("primary", "standby", "unknown") whose server refused the instance
    #: (RoleChanged): not started again until the role changes or an operator says so.
    refused_by: typing.Optional[str] = None
    #: The fatal database error it last died of (None: none).
    fatal: typing.Optional[str] = None
    #: A spec asked for that could not start (its handler does not import, its queue
    #: cannot open): the instance runs its previous spec meanwhile; None: none.
    pending_spec: typing.Any = None
    #: Why ``pending_spec`` could not start.
    pending_error: typing.Optional[str] = None
    since: float = dataclasses.field(default_factory=time.time)

    def changed(self):
        self.since = time.time()

    def clear_blocks(self):
        """An operator's restart or enable: forget parking, refusal and fatal error."""
        self.parked = self.refused_by = self.fatal = None


def observed_of(record, restarts_left=None):
    """The policy's view of ``record``; ``restarts_left``: what its restart budget still
    allows (None: not looked up)."""
    instance = record.instance
    alive = instance is not None and instance.alive
    return Observed(
        name=record.name, alive=alive, exit=None if alive else record.exit,
        heartbeat_age=instance.heartbeat_age() if alive else None,
        spec=instance.spec if instance is not None else None,
        parked=record.parked, final_state=None if alive else record.final_state,
        connected=alive and instance.connected, died_in_outage=record.died_in_outage,
        refused_by=record.refused_by, fatal=record.fatal, restarts_left=restarts_left)


def pending_error_of(record, spec):
    """Why the desired ``spec`` does not run yet (its instance runs its previous spec), or
    None: an error recorded for another spec (the registry moved on) does not count."""
    if record.pending_spec is not None and record.pending_spec == spec:
        return record.pending_error
    return None


def status_of(record, spec, db_up):
    """The status dict of one instance (see Supervisor.status)."""
    instance = record.instance
    health = instance.health() if instance is not None else {}
    shown = spec if spec is not None else (instance.spec if instance is not None else None)
    pending = pending_error_of(record, spec)
    return {
        "state": shown_state(spec, observed_of(record), db_up),
        "restarts": record.restarts,
        "last_error": record.parked or (pending and "new spec not applied: %s" % pending)
        or health.get("last_error") or record.last_error,
        "parked_reason": record.parked,
        "pending_spec_error": pending,
        "since": record.since,
        "channels": list(shown.channels) if shown is not None else [],
        "concurrency": health.get("concurrency", 0) if health.get("alive") else 0,
        "min_concurrency": shown.min_concurrency if shown is not None else None,
        "max_concurrency": shown.max_concurrency if shown is not None else None,
        "enabled": shown.enabled if shown is not None else False,
        "run_on": shown.run_on if shown is not None else None,
        "connected": bool(health.get("connected")),
        "backlog": health.get("backlog", 0),
        "spool_errors": health.get("spool_errors"),
        "received": health.get("received", 0),
        "processed": health.get("processed", 0),
        "failed": health.get("failed", 0),
        "timed_out": health.get("timed_out", 0),
        "catch_ups": health.get("catch_ups", 0),
        "reconnects": health.get("reconnects", 0),
        "subscription": health.get("subscription"),
        "dropped": health.get("dropped", 0),
        "overflows": health.get("overflows", 0),
        "latency_buckets": health.get("latency_buckets"),
        "latency_sum": health.get("latency_sum"),
    }


def database_status_of(db, since, manual_pause, in_grace):
    """The database status dict from the last DatabaseState ``db`` (None: no probe yet)."""
    up = db is not None and db.up
    paused_by = "operator" if manual_pause else (
        "outage" if not up else ("grace" if in_grace else None))
    return {
        "state": "unknown" if db is None else ("up" if up else "down"),
        "paused": manual_pause or not up, "paused_by": paused_by,
        "role": db.role if db is not None else None, "since": since,
        "system_identifier": db.system_identifier if db is not None else None,
        "timeline": db.timeline if db is not None else None,
        "error": db.error if db is not None else None,
        "in_grace": in_grace,
    }
