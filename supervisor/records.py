"""What the supervisor remembers about each instance, and how that reads as a status
(also the database's status, from the monitor's last report).

A :class:`Record` is owned by the Supervisor's actor greenlet: only it writes records.
:func:`status_of` turns a record (and the instance's health) into the status dict callers
see; :func:`observed_of` into the :class:`~supervisor.plan.Observed` the policy reads.
"""
import dataclasses
import time
import typing

from supervisor.plan import Observed

STATES = ("starting", "running", "waiting", "stopped", "disabled", "disabled_by_supervisor")


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
    blocked_role: typing.Optional[str] = None
    since: float = dataclasses.field(default_factory=time.time)

    def changed(self):
        self.since = time.time()


def observed_of(record):
    """The policy's view of ``record``."""
    instance = record.instance
    alive = instance is not None and instance.alive
    return Observed(
        name=record.name, alive=alive, exit=None if alive else record.exit,
        heartbeat_age=instance.heartbeat_age() if alive else None,
        spec=instance.spec if instance is not None else None,
        parked=record.parked, final_state=None if alive else record.final_state,
        connected=alive and instance.connected)


def state_of(record, spec, db_up):
    """One of :data:`STATES` for ``record`` whose desired spec is ``spec`` (None: removed)."""
    instance = record.instance
    if instance is not None and instance.alive:  # what runs, until it has stopped
        if instance.connected:
            return "running"
        return "waiting" if not db_up else "starting"
    if record.parked:
        return "disabled_by_supervisor"
    if spec is not None and not spec.enabled:
        return "disabled"
    if record.final_state == "waiting" or record.died_in_outage or (record.exit and not db_up):
        return "waiting"
    return "stopped"


def status_of(record, spec, db_up):
    """The status dict of one instance (see Supervisor.status)."""
    instance = record.instance
    health = instance.health() if instance is not None else {}
    shown = spec if spec is not None else (instance.spec if instance is not None else None)
    return {
        "state": state_of(record, spec, db_up),
        "restarts": record.restarts,
        "last_error": record.parked or health.get("last_error") or record.last_error,
        "parked_reason": record.parked,
        "since": record.since,
        "channels": list(shown.channels) if shown is not None else [],
        "concurrency": health.get("concurrency", 0) if health.get("alive") else 0,
        "min_concurrency": shown.min_concurrency if shown is not None else None,
        "max_concurrency": shown.max_concurrency if shown is not None else None,
        "enabled": shown.enabled if shown is not None else False,
        "run_on": shown.run_on if shown is not None else None,
        "connected": bool(health.get("connected")),
        "backlog": health.get("backlog", 0),
        "received": health.get("received", 0),
        "processed": health.get("processed", 0),
        "failed": health.get("failed", 0),
        "timed_out": health.get("timed_out", 0),
        "catch_ups": health.get("catch_ups", 0),
        "reconnects": health.get("reconnects", 0),
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
