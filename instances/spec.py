"""The :class:`InstanceSpec`: the validated, immutable description of one instance.

An *instance* is one listener + its queue + a pool of processors calling a handler (see
DESIGN.md); its spec is what the registry stores and the supervisor reconciles against.
This module owns the fields, their defaults and units; the rules about their values live in
:mod:`instances.spec_rules` (re-exported here: ``NAME_PATTERN``, ``QUEUE_DEFAULTS``,
``redact_dsn``, ``import_handler``...).

Validation collects *all* problems of a spec and reports them together, one per line, each
naming the field and the value (a DSN is shown with its password redacted). Pure: no I/O
except importing the handler's module when resolving it; never imports psycopg2.
"""
import dataclasses
import json
import typing
from collections.abc import Mapping

from instances.exceptions import InvalidConfigurationException
from instances.spec_rules import (  # noqa: F401 (NAME_PATTERN, QUEUE_DEFAULTS... re-exported)
    ISOLATIONS,
    MAX_CHANNEL_BYTES,
    MAX_CONCURRENCY,
    NAME_PATTERN,
    QUEUE_DEFAULTS,
    RESTART_TYPES,
    ROLES,
    _problem,
    combine,
    import_handler,
    redact_dsn,
    validate,
)


@dataclasses.dataclass(frozen=True)
class InstanceSpec:
    """One instance's desired configuration: frozen, validated on construction.

    Construction raises InvalidConfigurationException listing every problem. ``resolve``
    (not a field) imports the handler to check that it exists and is callable; pass
    ``resolve=False`` where the handler's modules are not importable (a CLI editing the
    registry outside the application's environment, the registry reading its file): the
    handler's syntax is still checked, and the supervisor resolves it when it starts the
    instance. Safe to share between greenlets and threads (immutable).
    """

    name: str
    #: LISTEN channels; empty: a spool-source instance (no listener, no database).
    channels: tuple
    handler: str
    #: Processor greenlets kept running even when idle.
    min_concurrency: int = 1
    #: Processor greenlets at most (autoscaled between min and max; up to 1024).
    max_concurrency: int = 1
    enabled: bool = True
    #: OTP restart type: permanent (always), transient (only after a crash), temporary (never).
    restart: str = "permanent"
    #: Role of the database server the instance runs against: primary, standby or any.
    run_on: str = "primary"
    #: None: bounded memory queue; {"spool": DIR, ...}: durable FileQueue (QUEUE_DEFAULTS).
    queue: typing.Optional[Mapping] = None
    #: Notifications held by the memory queue before the listener stops reading.
    queue_size: int = 10000
    #: Seconds a handler call may run before it is killed; None: no limit.
    handler_timeout: typing.Optional[float] = 60.0
    #: "greenlet" (in the service) or "process" (a child process; needs a spool queue).
    isolation: str = "greenlet"
    #: DSN override (libpq string or dict); None: the service's database.
    dsn: typing.Union[None, str, Mapping] = None
    #: Restart rate override such as "1/m"; None: the supervisor's restart_max_rate.
    restart_max_rate: typing.Optional[str] = None
    resolve: dataclasses.InitVar[bool] = True

    def __post_init__(self, resolve):
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        normalized, problems = validate(values, resolve)
        if problems:
            raise combine(problems, "instance %s" % _label(values))
        for field, value in normalized.items():
            object.__setattr__(self, field, value)

    @classmethod
    def from_dict(cls, data, resolve=True):
        """Build a spec from a dict of fields (e.g. parsed JSON); raise one
        InvalidConfigurationException naming every unknown, missing or invalid field."""
        if not isinstance(data, Mapping):
            raise _problem("spec", data, "must be an object of instance fields")
        known = [f.name for f in dataclasses.fields(cls)]
        problems = []
        unknown = [str(key) for key in data if key not in known]
        if unknown:
            problems.append(InvalidConfigurationException(
                "unknown field(s) %s (known: %s)" % (", ".join(map(repr, unknown)),
                                                     ", ".join(known)),
                ",".join(unknown), {k: data[k] for k in data if k not in known}))
        for field in ("name", "channels", "handler"):
            if field not in data:
                problems.append(InvalidConfigurationException(
                    "%s: required field missing" % field, field, None))
        values = {k: v for k, v in data.items() if k in known}
        defaults = {f.name: f.default for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING}
        problems += validate({**defaults, **values}, resolve)[1]
        if problems:
            raise combine(problems, "instance %s" % _label(data))
        return cls(**values, resolve=False)

    def to_dict(self):
        """All fields as a JSON-serializable dict (channels a list, queue mode an octal
        string, the dsn *with* its password: store it where a password may be stored)."""
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["channels"] = list(self.channels)
        if self.queue is not None:
            data["queue"] = dict(self.queue, mode="0o%o" % self.queue["mode"])
        if isinstance(self.dsn, Mapping):
            data["dsn"] = dict(self.dsn)
        return data

    def replace(self, resolve=None, **changes):
        """A copy with ``changes`` applied and validated; ``resolve`` defaults to whether
        the handler changes. Raise InvalidConfigurationException naming unknown fields."""
        data = self.to_dict()
        data.update(changes)
        return self.from_dict(data, "handler" in changes if resolve is None else resolve)

    @property
    def needs_database(self):
        """False for a spool-source instance (``channels=[]``): it consumes its spool
        without a listener, so the database's state and role do not gate it."""
        return bool(self.channels)

    def changed_fields(self, other):
        """Sorted tuple of the fields whose values differ from ``other``'s; () if equal."""
        if other is self or other == self:
            return ()
        return tuple(sorted(f.name for f in dataclasses.fields(self)
                            if getattr(self, f.name) != getattr(other, f.name, None)))

    def restart_fields(self, other):
        """The changed fields (``other`` -> self) a running instance cannot take live: any
        outside :data:`LIVE_FIELDS`, and ``channels`` going to or from none (a listener to
        add or remove). Empty: the change can be applied without a restart."""
        return tuple(f for f in self.changed_fields(other) if f not in LIVE_FIELDS or (
            f == "channels" and self.needs_database != other.needs_database))

    def resolve_handler(self):
        """Return the handler callable (imports its module: blocks while importing)."""
        return import_handler(self.handler)

    def __hash__(self):
        return hash(json.dumps(self.to_dict(), sort_keys=True))

    def __reduce__(self):
        return (_from_dict_unresolved, (self.to_dict(),))

    def __repr__(self):
        fields = ", ".join(
            "%s=%s" % (f.name, _shown(f.name, getattr(self, f.name)))
            for f in dataclasses.fields(self))
        return "InstanceSpec(%s)" % fields


#: Fields a running instance takes without a restart (listener channels, pool bounds and
#: handler timeout) or that only the supervisor reads (restart type, role, budget, enabled).
LIVE_FIELDS = frozenset(("channels", "min_concurrency", "max_concurrency", "handler_timeout",
                         "restart", "run_on", "restart_max_rate", "enabled"))


def _from_dict_unresolved(data):
    return InstanceSpec.from_dict(data, resolve=False)


def _label(values):
    name = values.get("name") if isinstance(values, Mapping) else None
    return repr(name) if isinstance(name, str) else "(unnamed)"


def _shown(field, value):
    if field == "dsn":
        return repr(redact_dsn(value)) if isinstance(value, str) else redact_dsn(value)
    return repr(dict(value) if isinstance(value, Mapping) else value)
