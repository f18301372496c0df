"""The resources of the HTTP control API: routes, their handlers and the operations table.

Transport-free: a handler takes a :class:`Request` (the parsed WSGI environ) and returns a
:class:`Response`, or raises :class:`HttpError` for a 4xx answer. :mod:`supervisor.http` owns
the server, authentication, the body limit, error answers and the access log. Every route
and answer is documented in docs/http.rst.

Concurrency: handlers run in the request's greenlet. They read the supervisor through its
public, non-blocking surface (``status()``, ``database_status()``, ``counters``), change the
registry (file I/O, milliseconds, blocks only the request) and put requests to the
supervisor's actor (``restart``/``verify``/``shutdown`` return greenlets at once). Only the
``?wait=1`` forms block, for at most ``timeout`` seconds.
"""
import collections
import contextlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Mapping
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from instances.dsn import redact_dsn
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import InstanceExists, UnknownInstance
from instances.spec import InstanceSpec, check_name
from supervisor.config.settings import handler_allowed
from supervisor.http import page

log = logging.getLogger(__name__)
_OPERATION_ID = re.compile(r"[0-9a-f]{1,32}\Z")
ACTIONS = ("restart", "verify", "shutdown")
JSON_TYPE = "application/json"


class HttpError(Exception):
    """A 4xx/5xx answer: ``{"error": message, "field": field, "value": value, **extra}``."""

    def __init__(self, status, message, field=None, value=None, headers=(), **extra):
        super().__init__(message)
        self.status, self.message, self.field, self.value = status, message, field, value
        self.headers, self.extra = list(headers), extra

    def body(self):
        return {"error": self.message, "field": self.field, "value": self.value, **self.extra}


class Response:
    """An answer: ``status`` (int), ``body`` (JSON-able object, or bytes with a content
    type), extra ``headers``."""

    def __init__(self, status, body, content_type=JSON_TYPE, headers=()):
        self.status, self.body, self.content_type = status, body, content_type
        self.headers = list(headers)


def from_configuration_error(exc):
    """HttpError 400 for an InvalidConfigurationException (every problem listed)."""
    problems = [{"error": str(p), "field": p.field, "value": _safe_value(p.field, p.value)}
                for p in getattr(exc, "problems", [exc])]
    return HttpError(400, str(exc), exc.field, _safe_value(exc.field, exc.value),
                     problems=problems)


def _safe_value(field, value):
    """The offending value as shown in an answer: a DSN (or any object) without its
    secrets."""
    if field == "dsn" or isinstance(value, Mapping):
        return redact_dsn(value)
    return value


class Request:
    """What a handler needs of a WSGI request. ``read_body`` is supplied by the transport
    (it enforces the body limit and raises HttpError 413)."""

    def __init__(self, method, path, query_string, content_type, read_body):
        self.method, self.path, self.content_type = method, path, content_type
        self.query = parse_qs(query_string or "", keep_blank_values=True)
        self._read_body = read_body

    def param(self, name, default=None):
        values = self.query.get(name)
        return values[-1] if values else default

    def flag(self, name):
        value = self.param(name, "0").strip().lower()
        if value not in ("1", "true", "yes", "0", "false", "no", ""):
            raise HttpError(400, "%s=%r: must be 1 or 0" % (name, value), name, value)
        return value in ("1", "true", "yes")

    def seconds(self, name, default, maximum):
        raw = self.param(name)
        try:
            value = default if raw is None else float(raw)
        except ValueError:
            value = math.nan
        if not (0 < value <= maximum):
            raise HttpError(400, "%s=%r: must be seconds > 0 and <= %s" % (name, raw, maximum),
                            name, raw)
        return value

    def json(self):
        """The body parsed as a JSON object; HttpError 415, 413 or 400."""
        kind = (self.content_type or "").split(";")[0].strip().lower()
        if kind != JSON_TYPE:
            raise HttpError(415, "Content-Type must be %s, got %r" % (
                JSON_TYPE, self.content_type or None), "Content-Type", self.content_type)
        data = parse_json(self._read_body())
        if not isinstance(data, dict):
            raise HttpError(400, "body must be a JSON object of instance fields, got %s"
                            % type(data).__name__, "body", None)
        return data


#: Deepest nesting of arrays and objects accepted in a request body.
MAX_JSON_DEPTH = 16
#: Most digits accepted in a JSON number (Python's own limit is 4300).
MAX_NUMBER_DIGITS = 30


def parse_json(raw):
    """``raw`` (bytes) parsed as JSON; HttpError 400 naming the problem for bytes that are
    not UTF-8, malformed JSON, NaN/Infinity, numbers of more than MAX_NUMBER_DIGITS digits,
    nesting deeper than MAX_JSON_DEPTH and lone surrogates (``"\\ud800"``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HttpError(400, "body is not UTF-8: %s" % exc, "body", None) from None
    try:
        data = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                          parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise HttpError(400, "malformed JSON at line %d column %d: %s" % (
            exc.lineno, exc.colno, exc.msg), "body", None, line=exc.lineno,
            column=exc.colno) from None
    except RecursionError:
        raise HttpError(400, "JSON nested more than %d levels deep" % MAX_JSON_DEPTH,
                        "body", None) from None
    except ValueError as exc:
        raise HttpError(400, "bad JSON value: %s" % exc, "body", None) from None
    _check_parsed(data, "body", 0)
    return data


def _parse_int(text):
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError("a number of %d digits (at most %d)" % (
            len(text.lstrip("-")), MAX_NUMBER_DIGITS))
    return int(text)


def _parse_float(text):
    if len(text) > MAX_NUMBER_DIGITS + 10:
        raise ValueError("a number of %d characters (at most %d)" % (
            len(text), MAX_NUMBER_DIGITS + 10))
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("%s is out of range" % text)
    return value


def _refuse_constant(name):
    raise ValueError("%s is not a JSON number" % name)


def _check_parsed(value, where, depth):
    """HttpError 400 for nesting deeper than MAX_JSON_DEPTH or a lone surrogate."""
    if depth > MAX_JSON_DEPTH:
        raise HttpError(400, "%s: JSON nested more than %d levels deep" % (
            where, MAX_JSON_DEPTH), where, None)
    if isinstance(value, str):
        if _SURROGATE.search(value):
            raise HttpError(400, "%s: a lone surrogate (\\ud800-\\udfff) is not text"
                            % where, where, None)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_parsed(key, where, depth + 1)
            _check_parsed(item, key if depth == 0 else where, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_parsed(item, where, depth + 1)


_SURROGATE = re.compile("[\ud800-\udfff]")


class Operations:
    """Recent restart/verify/shutdown operations by id (greenlets of the supervisor)."""

    #: Operations kept for GET /operations/{id}; the oldest finished ones are dropped first.
    max_kept = 1000

    def __init__(self):
        self._ops = collections.OrderedDict()

    def add(self, action, name, greenlet):
        """Remember ``greenlet`` (whose value is ``{name: outcome}``); return its id."""
        op_id = uuid.uuid4().hex[:16]
        self._ops[op_id] = (action, name, greenlet, time.time())
        while len(self._ops) > self.max_kept:
            done = next((k for k, v in self._ops.items() if v[2].ready()), None)
            self._ops.pop(done if done is not None else next(iter(self._ops)))
        return op_id

    def get(self, op_id):
        return self._ops.get(op_id)

    def view(self, op_id):
        action, name, greenlet, created = self._ops[op_id]
        view = {"operation": op_id, "action": action, "instance": name,
                "status": "pending", "created": created}
        if greenlet.ready():
            if greenlet.successful():
                view.update(status="done", result=greenlet.value)
            else:
                view.update(status="failed", error="%s: %s" % (
                    type(greenlet.exception).__name__, greenlet.exception))
        return view


class Routes:
    """The handlers over one supervisor; :meth:`match` finds the handler of a path."""

    #: Seconds ``?wait=1`` blocks by default, and at most.
    wait_timeout = 30.0
    max_wait_timeout = 3600.0

    def __init__(self, supervisor, metrics_registry, handler_modules=()):
        self.supervisor = supervisor
        self.metrics_registry = metrics_registry
        #: Module prefixes a PUT spec's handler may come from (empty: any module).
        self.handler_modules = tuple(handler_modules)
        self.operations = Operations()

    def match(self, path):
        """``(handlers by method, keyword arguments)`` for ``path``; HttpError 404/400."""
        parts = path.strip("/").split("/") if path.strip("/") else []
        if parts[:1] == ["instances"] and len(parts) in (2, 3):
            _check_name(parts[1])
        if parts == ["instances"]:
            return {"GET": self.list_instances}, {}
        if len(parts) == 2 and parts[0] == "instances":
            return {"GET": self.get_instance, "PUT": self.put_instance,
                    "DELETE": self.delete_instance}, {"name": parts[1]}
        if len(parts) == 3 and parts[0] == "instances" and parts[2] in ACTIONS:
            return {"POST": self.post_action}, {"name": parts[1], "action": parts[2]}
        if len(parts) == 2 and parts[0] == "operations":
            return {"GET": self.get_operation}, {"op_id": parts[1]}
        if not parts or (len(parts) == 2 and parts[0] == "static"):
            return {"GET": self.page}, {"asset": parts[1] if parts else None}
        simple = {"health": self.health, "metrics": self.metrics, "status": self.status,
                  "nodes": self.nodes}
        if len(parts) == 1 and parts[0] in simple:
            return {"GET": simple[parts[0]]}, {}
        raise HttpError(404, "no route %s" % path, "path", path)

    # -- reads --------------------------------------------------------------------------------

    def list_instances(self, request):
        return Response(200, self._instance_views())

    def get_instance(self, request, name):
        spec = self.supervisor.registry.get(name, None)
        status = self.supervisor.status().get(name)
        if spec is None and status is None:
            raise _unknown(name)
        return Response(200, instance_view(name, spec, status))

    def get_operation(self, request, op_id):
        if not _OPERATION_ID.match(op_id) or self.operations.get(op_id) is None:
            raise HttpError(404, "no operation %r (operations are kept in memory, the last "
                            "%d)" % (op_id, self.operations.max_kept), "operation", op_id)
        return Response(200, self.operations.view(op_id))

    def health(self, request):
        live_only = request.flag("live")
        database = dict(self.supervisor.database_status())
        live = bool(self.supervisor.running)
        ready = live and database.get("state") == "up" and not database.get("paused")
        ok = live if live_only else ready
        return Response(200 if ok else 503, dict(database, live=live, ready=ready))

    def metrics(self, request):
        return Response(200, generate_latest(self.metrics_registry), CONTENT_TYPE_LATEST)

    def status(self, request):
        body = {
            "running": bool(self.supervisor.running),
            "database": dict(self.supervisor.database_status()),
            "instances": self._instance_views(),
            "counters": dict(self.supervisor.counters),
            "notifiers": list(getattr(self.supervisor, "notifier_status", list)()),
            "registry_version": self.supervisor.registry.version,
            "registry": dict(getattr(self.supervisor, "registry_status", dict)())}
        cluster = getattr(self.supervisor, "cluster", None)
        if cluster is not None:  # the page's Nodes table (GET /nodes has the rest)
            body["nodes"] = cluster.nodes()
        return Response(200, body)

    def nodes(self, request):
        """The cluster as this node sees it (``supervisor.cluster.status()``); 404 when
        clustering is off."""
        cluster = getattr(self.supervisor, "cluster", None)
        if cluster is None:
            raise HttpError(404, "clustering is off on this node ([cluster] enabled = "
                            "false)", "cluster.enabled", False)
        return Response(200, cluster.status())

    def page(self, request, asset):
        """The status page (``/``) or one of its files (``/static/NAME``)."""
        if asset is None:
            return Response(200, page.document(), page.HTML_TYPE, page.HEADERS)
        found = page.asset(asset)
        if found is None:
            raise HttpError(404, "no static file %r" % asset, "path", "/static/" + asset)
        return Response(200, found[0], found[1], page.HEADERS)

    def _instance_views(self):
        registry, status = self.supervisor.registry, self.supervisor.status()
        names = sorted(set(registry.names()) | set(status))
        return [instance_view(n, registry.get(n, None), status.get(n)) for n in names]

    # -- changes ------------------------------------------------------------------------------

    def put_instance(self, request, name):
        data = request.json()
        if "name" in data and data["name"] != name:
            raise HttpError(400, "name=%r in the body differs from %r in the path" % (
                data["name"], name), "name", data["name"])
        for field in ("handler", "order_key"):  # both name code the service imports
            path = data.get(field)
            if isinstance(path, str) and ":" in path and not handler_allowed(
                    path, self.handler_modules):
                raise HttpError(403, "%s=%r: its module is not allowed by [security] "
                                "handler_modules (%s)" % (field, path, ", ".join(
                                    self.handler_modules)), field, path)
        registry = self.supervisor.registry
        with _registry_errors():
            spec = InstanceSpec.from_dict(dict(data, name=name), resolve=registry.resolve)
            created = name not in registry
            if created:
                registry.add(spec)
            else:
                fields = spec.to_dict()
                del fields["name"]
                registry.update(name, **fields)
        body = self.get_instance(request, name).body
        body.update(operation=self._verify(name), registry_version=registry.version)
        return Response(201 if created else 200, body)

    def delete_instance(self, request, name):
        registry = self.supervisor.registry
        with _registry_errors():
            registry.remove(name)
        return Response(200, {"instance": name, "removed": True,
                              "operation": self._verify(name),
                              "registry_version": registry.version})

    def _verify(self, name):
        """Ask the supervisor to act on a registry change at once; the operation's id."""
        return self.operations.add("verify", name, self.supervisor.verify([name]))

    def post_action(self, request, name, action):
        wait = request.flag("wait")
        timeout = request.seconds("timeout", self.wait_timeout, self.max_wait_timeout)
        if name not in self.supervisor.registry and name not in self.supervisor.status():
            raise _unknown(name)
        op_id = self.operations.add(action, name, getattr(self.supervisor, action)([name]))
        if wait:
            self.operations.get(op_id)[2].join(timeout)
        view = self.operations.view(op_id)
        return Response(202 if view["status"] == "pending" else 200, view)


def instance_view(name, spec, status):
    """One instance as answered: the spec's fields (dsn redacted) and the status fields side
    by side. Where both have a key (channels, enabled, ...) the spec's (desired) value wins,
    so a GET answer minus status fields is a valid PUT body."""
    view = spec_view(spec) if spec is not None else {"name": name}
    view["registered"] = spec is not None
    for key, value in (status if status is not None else {"state": "unknown"}).items():
        view.setdefault(key, value)
    return view


def spec_view(spec):
    data = spec.to_dict()
    data["dsn"] = redact_dsn(data.get("dsn"))
    return data


def _check_name(name):
    try:
        check_name(name)  # the spec's rule, one home
    except InvalidConfigurationException as exc:
        raise HttpError(400, str(exc), "name", name) from None


def _unknown(name):
    return HttpError(404, "no instance named %r" % name, "name", name)


@contextlib.contextmanager
def _registry_errors():
    """Translate registry exceptions into HTTP answers (nothing was changed)."""
    try:
        yield
    except UnknownInstance:
        raise HttpError(404, "no such instance", "name", None) from None
    except InstanceExists:
        raise HttpError(409, "an instance of that name exists already", "name",
                        None) from None
    except InvalidConfigurationException as exc:
        raise from_configuration_error(exc) from None
    except RegistryError as exc:  # its message names the service's files: only logged
        log.warning("registry unavailable: %s", exc,
                    extra={"action": "http.registry_unavailable", "instance": None})
        raise HttpError(503, "registry unavailable (see the service's log)") from None
