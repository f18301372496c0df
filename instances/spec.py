"""The :class:`InstanceSpec`: the validated, immutable description of one instance, and
the rules about its fields' values.

An *instance* is one listener + its queue + a pool of processors calling a handler (see
:doc:`concepts`); its spec is what the registry stores and the supervisor reconciles
against. This module owns the fields, their defaults and units, the allowed values (name
pattern, channel limits, restart types, roles, isolations, the spool options of ``queue``
and their defaults: :data:`QUEUE_DEFAULTS`), one check per field, and the cross-field
rules. The runtime applies the same checks where it takes a value live
(:func:`check_name`, :func:`check_concurrency`, :func:`check_handler_timeout`,
:func:`check_queue_size`, :func:`check_queue_option`, :func:`check_batch`), so each rule
has one home.

Validation collects *all* problems of a spec and reports them together, one per line, each
naming the field and the value (a DSN is shown with its password redacted): :func:`validate`
collects, :func:`combine` reports. Pure: no I/O except importing the handler's module in
:func:`import_handler` (blocks while importing); never imports psycopg2.
"""
import dataclasses
import importlib
import json
import math
import re
import types
import typing
from collections.abc import Mapping

from instances.dsn import redact_dsn
from instances.exceptions import InvalidConfigurationException
from instances.rates import parse_rate

NAME_PATTERN = r"[a-z0-9][a-z0-9_.-]{0,63}"
_NAME = re.compile(NAME_PATTERN + r"\Z")
#: Bytes (UTF-8): Postgres truncates identifiers longer than NAMEDATALEN - 1.
MAX_CHANNEL_BYTES = 63
#: Upper bound of max_concurrency (processor greenlets per instance).
MAX_CONCURRENCY = 1024
RESTART_TYPES = ("permanent", "transient", "temporary")
ROLES = ("primary", "standby", "any")
ISOLATIONS = ("greenlet", "process")
#: Where a listening instance's notifications come from (see InstanceSpec.connection).
CONNECTIONS = ("shared", "own")
#: Upper bound of ``batch`` (notifications per call of a batch handler).
MAX_BATCH = 10000
#: The named keys of ``order_key`` (else a ``"module:function"`` path).
ORDER_KEYS = ("channel", "payload")
#: The spool options of ``queue`` and their defaults (``spool`` is required).
QUEUE_DEFAULTS = {
    "spool": None,             # directory of the FileQueue (required)
    "fsync": False,            # fsync every enqueued message (slower, survives power loss)
    "max_attempts": 5,         # handler attempts per message before errors/
    "queue_out_dir": None,     # piper output queue directory, or None
    "queue_out_limit": 10000,  # messages allowed in queue_out_dir before waiting
    "queue_out_wait": 10.0,    # seconds to wait when queue_out_dir is over its limit
    "mode": 0o700,             # permissions of the spool directories
    "batch": True,             # dequeue several messages per directory scan
    "queue_in_perms": None,    # mentat's name for mode (None: mode applies)
    "queue_in_wait": None,     # seconds an idle reader waits between looks at incoming/
                               # (None: FileQueue.poll_interval, 0.05)
    "max_messages": 1_000_000,  # messages incoming/ may hold; then overflow (0: no bound)
    "max_bytes": 1 << 30,      # bytes of files incoming/ may hold (1 GiB; 0: no bound)
}


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
    #: "shared": the node's notifier (one LISTEN connection per database); "own": a
    #: LISTEN connection of its own (isolation; a full queue then blocks its reader).
    connection: str = "shared"
    #: Seconds between periodic catch_ups (the polling fallback where LISTEN cannot work,
    #: e.g. behind PgBouncer in transaction mode); None: only after a (re)LISTEN.
    catch_up_interval: typing.Optional[float] = None
    #: None: ``handler(notification)``; N: ``handler(list)`` of up to N notifications per
    #: call, a catch_up alone in its own (see :mod:`instances.batching`).
    batch: typing.Optional[int] = None
    #: None: no order beyond ``max_concurrency == 1``'s; ``"channel"``, ``"payload"`` or
    #: ``"module:function"`` (a notification's key): notifications of one key never run at
    #: the same time and keep their order (see :mod:`instances.ordering`).
    order_key: typing.Optional[str] = None
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
            data["queue"] = queue = dict(self.queue, mode="0o%o" % self.queue["mode"])
            if queue.get("queue_in_perms") is not None:
                queue["queue_in_perms"] = "0o%o" % queue["queue_in_perms"]
        if isinstance(self.dsn, Mapping):
            data["dsn"] = dict(self.dsn)
        return data

    def replace(self, resolve=None, **changes):
        """A copy with ``changes`` applied and validated; ``resolve`` defaults to whether
        the handler changes. Raise InvalidConfigurationException naming unknown fields."""
        data = self.to_dict()
        data.update(changes)
        if resolve is None:
            resolve = "handler" in changes or "order_key" in changes
        return self.from_dict(data, resolve)

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

    def resolve_order_key(self):
        """The key function of ``order_key`` (None without one); a path's module is
        imported (blocks while importing). See :func:`instances.ordering.key_function`."""
        if self.order_key is None or self.order_key in ORDER_KEYS:
            return self.order_key
        return import_handler(self.order_key, "order_key")

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
        return repr(redact_dsn(value))
    return repr(dict(value) if isinstance(value, Mapping) else value)


def _problem(field, value, why, shown=None):
    shown = repr(value) if shown is None else shown
    return InvalidConfigurationException("%s=%s: %s" % (field, shown, why), field, value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_choice(field, value, choices):
    if value not in choices or not isinstance(value, str):
        raise _problem(field, value, "must be one of %s" % ", ".join(choices))
    return value


def _check_int(field, value, low, high=None):
    if not _is_int(value) or value < low or (high is not None and value > high):
        why = ("an integer between %d and %d" % (low, high) if high is not None
               else "an integer >= %d" % low)
        raise _problem(field, value, "must be " + why)
    return value


def _check_bool(field, value):
    if not isinstance(value, bool):
        raise _problem(field, value, "must be true or false")
    return value


def check_name(value):
    """The rule of an instance name (the spec's ``name``, and a name in a request path):
    :data:`NAME_PATTERN`. Return it, or raise InvalidConfigurationException naming the
    field and the value."""
    if not isinstance(value, str) or not _NAME.match(value):
        raise _problem("name", value, "must match %s (lowercase letters, digits, '_', '.', "
                       "'-'; at most 64 characters)" % NAME_PATTERN)
    return value


def _check_channels(value):
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise _problem("channels", value, "must be a list of channel names")
    seen = set()
    for channel in value:
        if not isinstance(channel, str) or not channel:
            raise _problem("channels", value, "%r is not a non-empty string" % (channel,))
        if "\x00" in channel or len(channel.encode("utf-8")) > MAX_CHANNEL_BYTES:
            raise _problem("channels", value, "%r must be at most %d bytes (UTF-8) without NUL"
                           % (channel, MAX_CHANNEL_BYTES))
        if channel in seen:
            raise _problem("channels", value, "%r is listed twice" % (channel,))
        seen.add(channel)
    return tuple(value)


def _check_handler(value, field="handler"):
    module, _, attribute = value.partition(":") if isinstance(value, str) else ("", "", "")
    parts = module.split(".") + attribute.split(".")
    if not all(part.isidentifier() for part in parts):
        raise _problem(field, value,
                       "must be 'module.path:callable' (e.g. 'myapp.river:index')")
    return value


def import_handler(handler, field="handler"):
    """Import ``"module.path:attr.path"`` and return the callable; blocks while importing.

    Raise InvalidConfigurationException naming ``field`` (the handler, or the path of an
    ``order_key``), the path and the import error.
    """
    module_name, _, attribute = _check_handler(handler, field).partition(":")
    try:
        target = importlib.import_module(module_name)
    except Exception as exc:  # any error of the imported module's code
        raise _problem(field, handler, "cannot import module %r: %s: %s"
                       % (module_name, type(exc).__name__, exc)) from exc
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise _problem(field, handler, "%r has no attribute %r"
                           % (getattr(target, "__name__", target), part)) from None
    if not callable(target):
        raise _problem(field, handler, "%r is not callable (it is a %s)"
                       % (attribute, type(target).__name__))
    return target


def check_batch(value):
    """The rule of ``batch``: None (one notification per handler call) or an integer
    between 1 and :data:`MAX_BATCH`. Raise InvalidConfigurationException naming the field
    and the value."""
    if value is not None and (not _is_int(value) or not 1 <= value <= MAX_BATCH):
        raise _problem("batch", value, "must be null (one notification per call) or an "
                       "integer between 1 and %d (notifications per call)" % MAX_BATCH)
    return value


def _check_order_key(value):
    if value is None or value in ORDER_KEYS:
        return value
    if not isinstance(value, str) or ":" not in value:
        raise _problem("order_key", value, "must be null, %s or a 'module.path:function' "
                       "taking a notification" % " or ".join(map(repr, ORDER_KEYS)))
    return _check_handler(value, "order_key")


def _check_path(field, value, required):
    if (value is not None or required) and not (isinstance(value, str) and value):
        raise _problem(field, value, "must be a directory path" + (
            " (required)" if required else " or null"))
    return value


_QUEUE_CHECKS = {  # key -> check(field, value)
    "spool": lambda f, v: _check_path(f, v, required=True),
    "fsync": _check_bool,
    "max_attempts": lambda f, v: _check_int(f, v, 1),
    "queue_out_dir": lambda f, v: _check_path(f, v, required=False),
    "queue_out_limit": lambda f, v: _check_int(f, v, 1),
    "queue_out_wait": lambda f, v: _check_seconds(f, v),
    "mode": lambda f, v: _check_mode(f, v),
    "batch": _check_bool,
    "queue_in_perms": lambda f, v: None if v is None else _check_mode(f, v),
    "queue_in_wait": lambda f, v: None if v is None else _check_seconds(f, v),
    "max_messages": lambda f, v: _check_int(f, v, 0),
    "max_bytes": lambda f, v: _check_int(f, v, 0),
}


def _check_queue(value):
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _problem("queue", value, "must be null (memory queue) or {\"spool\": DIR, ...}")
    unknown = sorted(set(value) - set(QUEUE_DEFAULTS), key=str)
    if unknown:
        raise _problem("queue", value, "unknown option(s) %s (known: %s)" % (
            ", ".join(map(repr, unknown)), ", ".join(QUEUE_DEFAULTS)))
    queue, problems = {**QUEUE_DEFAULTS, **value}, []
    for key, check in _QUEUE_CHECKS.items():
        try:
            queue[key] = check("queue." + key, queue[key])
        except InvalidConfigurationException as exc:
            problems.append(exc)
    if problems:
        raise combine(problems, "queue")
    return types.MappingProxyType(queue)


def _check_mode(field, value):
    mode = value
    if isinstance(value, str):
        try:
            mode = int(value, 8)
        except ValueError:
            mode = None
    if not _is_int(mode) or not 0 <= mode <= 0o7777:
        raise _problem(field, value, "must be permissions such as '0o700' or 448")
    if mode & 0o022:  # the spool's own rule (instances/spool/layout.py), said at once
        raise _problem(field, value, "must not be writable by group or others (0o700 or "
                       "0o750)")
    return mode


def _check_seconds(field, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not _is_number(value) or not math.isfinite(value) or value <= 0:
        raise _problem(field, value, "must be a number of seconds > 0"
                       + (" or null for no limit" if allow_none else ""))
    return float(value)


def _check_dsn(value):
    if value is None or isinstance(value, str):
        return value
    shown = repr(redact_dsn(value))
    if not isinstance(value, Mapping):
        raise _problem("dsn", value, "must be null, a libpq string or an object", shown)
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, (str, int, float, type(None))) \
                or isinstance(item, bool):
            raise _problem("dsn", value, "%r must map to a string or a number" % (key,), shown)
    return types.MappingProxyType(dict(value))


def _check_rate(value):
    if value is not None:
        parse_rate(value, "restart_max_rate")
    return value


_CHECKS = {
    "name": check_name,
    "channels": _check_channels,
    "handler": _check_handler,
    "min_concurrency": lambda v: _check_int("min_concurrency", v, 1, MAX_CONCURRENCY),
    "max_concurrency": lambda v: _check_int("max_concurrency", v, 1, MAX_CONCURRENCY),
    "enabled": lambda v: _check_bool("enabled", v),
    "restart": lambda v: _check_choice("restart", v, RESTART_TYPES),
    "run_on": lambda v: _check_choice("run_on", v, ROLES),
    "queue": _check_queue,
    "queue_size": lambda v: check_queue_size(v),
    "handler_timeout": lambda v: check_handler_timeout(v),
    "isolation": lambda v: _check_choice("isolation", v, ISOLATIONS),
    "dsn": _check_dsn,
    "restart_max_rate": _check_rate,
    "connection": lambda v: _check_choice("connection", v, CONNECTIONS),
    "catch_up_interval": lambda v: _check_seconds("catch_up_interval", v, allow_none=True),
    "batch": check_batch,
    "order_key": _check_order_key,
}


def check_concurrency(low, high):
    """The rule of ``min_concurrency`` and ``max_concurrency`` (a spec's, or a pool's
    bounds set live): integers, ``1 <= low <= high <=`` :data:`MAX_CONCURRENCY`. Raise
    InvalidConfigurationException naming the field(s) and the value(s)."""
    problems = []
    for field, value in (("min_concurrency", low), ("max_concurrency", high)):
        try:
            _CHECKS[field](value)
        except InvalidConfigurationException as exc:
            problems.append(exc)
    problems = problems or _bounds_problems(low, high)
    if problems:
        raise combine(problems, "concurrency")


def check_handler_timeout(value):
    """The rule of ``handler_timeout``: seconds > 0 (returned as a float), or None for no
    limit. Raise InvalidConfigurationException naming the field and the value."""
    return _check_seconds("handler_timeout", value, allow_none=True)


def check_queue_size(value):
    """The rule of ``queue_size`` (a memory queue's bound): an integer >= 1. Raise
    InvalidConfigurationException naming the field and the value."""
    return _check_int("queue_size", value, 1)


def check_queue_option(key, value, field=None):
    """The rule of the spool option ``key`` of ``queue`` (see :data:`QUEUE_DEFAULTS`), for
    the spec and for a FileQueue built directly: return the normalized value, or raise
    InvalidConfigurationException naming ``field`` (default ``queue.<key>``) and the value."""
    return _QUEUE_CHECKS[key]("queue." + key if field is None else field, value)


def _bounds_problems(low, high):
    if _is_int(low) and _is_int(high) and low > high:
        return [InvalidConfigurationException(
            "min_concurrency=%r, max_concurrency=%r: min_concurrency must not exceed "
            "max_concurrency" % (low, high), "min_concurrency,max_concurrency",
            {"min_concurrency": low, "max_concurrency": high})]
    return []


def _cross_problems(values):
    problems = _bounds_problems(values.get("min_concurrency"), values.get("max_concurrency"))
    if values.get("channels") == () and values.get("queue", 0) is None:
        problems.append(InvalidConfigurationException(
            "channels=[], queue=None: an instance without channels reads a spool (no "
            "Postgres): set queue={\"spool\": DIR}, or name at least one channel",
            "channels,queue", {"channels": [], "queue": None}))
    if values.get("isolation") == "process" and values.get("queue", 0) is None:
        problems.append(InvalidConfigurationException(
            "isolation='process', queue=None: process isolation needs a spool queue "
            "(set queue={\"spool\": DIR})", "isolation,queue",
            {"isolation": "process", "queue": None}))
    return problems + _delivery_problems(values)


def _delivery_problems(values):
    """The combinations ``batch`` and ``order_key`` do not support (named, not guessed)."""
    batch, key, problems = values.get("batch"), values.get("order_key"), []
    if batch is not None and key is not None:
        problems.append(InvalidConfigurationException(
            "batch=%r, order_key=%r: a batch handler cannot have an order_key (a batch runs "
            "several keys at once; with max_concurrency=1 batches keep the queue's order)"
            % (batch, key), "batch,order_key", {"batch": batch, "order_key": key}))
    queue = values.get("queue")
    if batch is not None and isinstance(queue, Mapping) and queue.get("queue_out_dir"):
        problems.append(InvalidConfigurationException(
            "batch=%r, queue.queue_out_dir=%r: a batch handler's return value cannot be "
            "forwarded per message (drop queue_out_dir or batch)"
            % (batch, queue["queue_out_dir"]), "batch,queue",
            {"batch": batch, "queue": dict(queue)}))
    if key is not None and values.get("isolation") == "process":
        problems.append(InvalidConfigurationException(
            "order_key=%r, isolation='process': per-key order is kept inside one process's "
            "pool; worker processes claim spool files on their own" % (key,),
            "order_key,isolation", {"order_key": key, "isolation": "process"}))
    return problems


def validate(values, resolve_handler=True):
    """Check the fields present in ``values``; return ``(normalized, problems)``.

    ``problems`` is a list of InvalidConfigurationException, one per problem; cross-field
    rules are checked only between fields that are valid on their own.
    """
    normalized, problems = dict(values), []
    for field, check in _CHECKS.items():
        if field in values:
            try:
                normalized[field] = check(values[field])
            except InvalidConfigurationException as exc:
                problems.extend(getattr(exc, "problems", [exc]))
                normalized.pop(field)
    if resolve_handler and "handler" in normalized:
        try:
            import_handler(normalized["handler"])
        except InvalidConfigurationException as exc:
            problems.append(exc)
    if resolve_handler and normalized.get("order_key") not in (None,) + ORDER_KEYS:
        try:
            import_handler(normalized["order_key"], "order_key")
        except InvalidConfigurationException as exc:
            problems.append(exc)
    return normalized, problems + _cross_problems(normalized)


def combine(problems, what):
    """One InvalidConfigurationException for ``problems``: the single one, or all of them
    one per line (``.problems`` keeps the list; ``.field`` joins their fields)."""
    if len(problems) == 1:
        return problems[0]
    error = InvalidConfigurationException(
        "%d problems in %s:\n%s" % (len(problems), what, "\n".join(
            "  " + str(p) for p in problems)),
        ",".join(str(p.field) for p in problems), None)
    error.problems = list(problems)
    return error
