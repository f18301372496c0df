"""The HTTP control API server: :class:`HttpApi` (the only module importing gevent.pywsgi).

A plain WSGI application served by :class:`gevent.pywsgi.WSGIServer`. This module owns the
transport: binding (loopback unless a token is configured), bearer-token authentication,
the request body limit, JSON error answers, password scrubbing of every answer, and one
access log line per request. The resources (routes, handlers, operations) live in
:mod:`supervisor.http.routes`; the metrics in :mod:`supervisor.metrics`. docs/http.rst is
the reference.

Lifecycle::

    api = HttpApi(supervisor, listen=("127.0.0.1", 0), token=None)
    api.start()        # binds and returns at once; api.address is the bound (host, port)
    ...                # each request runs in a greenlet of its own (at most max_connections)
    api.stop(timeout)  # closes the listener, waits for requests up to timeout, kills the rest

Concurrency: start() and stop() are called from any greenlet of the hub's thread. The WSGI
application never raises: an unexpected exception is answered with 500 and an error id,
and logged with its traceback under that id.
"""
import hmac
import json
import logging
import time
import uuid
from collections.abc import Mapping

import gevent.pool
import gevent.pywsgi

from instances.dsn import scrub, secret_fragments
from instances.exceptions import InvalidConfigurationException
from supervisor.config.settings import is_loopback
from supervisor.http.routes import HttpError, Request, Response, Routes
from supervisor.metrics import make_registry

log = logging.getLogger(__name__)

MUTATING = ("PUT", "DELETE", "POST")
#: Secret fragments shorter than this are not scrubbed from answers (they would mangle
#: ordinary words; passwords are redacted where errors are made, this is a second net).
MIN_SCRUBBED = 4
#: Routes readable without a token even when ``token_for_reads`` is set (probes).
OPEN_PATHS = ("/health",)
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 400: "Bad Request",
            401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 413: "Payload Too Large", 415: "Unsupported Media Type",
            500: "Internal Server Error", 503: "Service Unavailable"}


class HttpApi:
    """The control API of ``supervisor`` on ``listen`` (host, port); port 0: ephemeral.

    ``token``: bearer token required by PUT, DELETE and POST (and by GETs other than
    /health when ``token_for_reads``); None: no authentication, allowed only on a loopback
    address. ``max_body``: bytes accepted in a request body.
    """

    #: Requests served at once; further connections wait in the listen backlog.
    max_connections = 64
    #: Seconds stop() waits for running requests by default.
    stop_timeout = 5.0
    #: Seconds a client may stay silent while sending a request or between two requests of
    #: a kept-alive connection before it is disconnected (a slow or stuck client must not
    #: hold one of the max_connections slots forever). Waiting for an operation's outcome
    #: (``?wait=1``) is not socket silence and is not cut by it.
    idle_timeout = 30.0

    def __init__(self, supervisor, listen=("127.0.0.1", 7390), token=None, max_body=65536,
                 token_for_reads=False):
        host, port = listen
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise InvalidConfigurationException("token: must be a non-empty string",
                                                "token", "***")
        if token is None and not is_loopback(host):
            raise InvalidConfigurationException(
                "listen=%s:%s: a non-loopback address requires a token (set http.token_file)"
                % (host, port), "listen", "%s:%s" % (host, port))
        if token is None and token_for_reads:
            raise InvalidConfigurationException(
                "token_for_reads=True: needs a token", "token_for_reads", True)
        self.supervisor = supervisor
        self.listen = (host, port)
        self.max_body = max_body
        self.token_for_reads = token_for_reads
        self._token = token.encode("utf-8") if token is not None else None
        self.metrics_registry = make_registry(supervisor)
        self.routes = Routes(supervisor, self.metrics_registry)
        self._server = None

    @property
    def address(self):
        """The bound ``(host, port)`` once started (the real port when 0 was asked)."""
        return self._server.address if self._server is not None else None

    def start(self):
        """Bind and serve in the background; return at once. Raises OSError if the address
        cannot be bound."""
        self._server = _Server(
            self.listen, self.application, spawn=gevent.pool.Pool(self.max_connections),
            log=None, error_log=_ErrorLog())
        self._server.idle_timeout = self.idle_timeout
        self._server.start()
        log.info("HTTP API listening on %s:%d", *self.address[:2],
                 extra={"action": "http.start", "instance": None})

    def stop(self, timeout=None):
        """Stop listening; wait up to ``timeout`` seconds for running requests, then kill
        them. Blocks the caller."""
        if self._server is not None:
            self._server.stop(timeout=self.stop_timeout if timeout is None else timeout)
            log.info("HTTP API stopped", extra={"action": "http.stop", "instance": None})

    # -- the WSGI application -------------------------------------------------------------------

    def application(self, environ, start_response):
        """WSGI entry point; runs in the request's greenlet and never raises."""
        started = time.monotonic()
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO") or "/"
        body = _Body(environ, self.max_body)
        try:
            response = self._dispatch(method, path, environ, body)
        except HttpError as exc:
            response = Response(exc.status, exc.body(), headers=exc.headers)
        except Exception:
            error_id = uuid.uuid4().hex[:12]
            log.exception("internal error %s answering %s %s", error_id, method, path,
                          extra={"action": "http.internal_error", "instance": None,
                                 "error_id": error_id})
            response = Response(500, {"error": "internal error", "id": error_id})
        payload, headers = self._encode(response)
        if body.refuse_rest():
            headers.append(("Connection", "close"))
        start_response("%d %s" % (response.status, _REASONS.get(response.status, "")), headers)
        duration = time.monotonic() - started
        log.info("%s %s %d %.3fs", method, path, response.status, duration,
                 extra={"action": "http.request", "instance": None, "method": method,
                        "path": path, "status": response.status,
                        "duration": round(duration, 6)})
        return [payload]

    def _dispatch(self, method, path, environ, body):
        handlers, kwargs = self.routes.match(path)
        handler = handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(handlers))
            raise HttpError(405, "method %s not allowed on %s (allowed: %s)" % (
                method, path, allow), "method", method, headers=[("Allow", allow)])
        if self._token is not None and (method in MUTATING or (
                self.token_for_reads and path.rstrip("/") not in OPEN_PATHS)):
            self._authenticate(environ)
        request = Request(method, path, environ.get("QUERY_STRING"),
                          environ.get("CONTENT_TYPE"), body.read)
        return handler(request, **kwargs)

    def _authenticate(self, environ):
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8"), self._token)
        if not ok:
            raise HttpError(401, "missing or wrong bearer token (send 'Authorization: "
                            "Bearer <token>')", "Authorization", None,
                            headers=[("WWW-Authenticate", 'Bearer realm="pgvisor"')])

    def _encode(self, response):
        if isinstance(response.body, bytes):
            payload = response.body
        else:
            body = scrub_body(response.body, self._secrets())
            payload = (json.dumps(body, default=_jsonable, ensure_ascii=False, indent=1)
                       + "\n").encode("utf-8")
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(payload))),
                   ("Cache-Control", "no-store")] + response.headers
        return payload, headers


    def _secrets(self):
        """Fragments that must not appear in any answer: the DSN passwords we know."""
        dsns = [getattr(self.supervisor, "dsn", None)]
        dsns += [spec.dsn for spec in self.supervisor.registry]
        found = set()
        for dsn in dsns:
            if isinstance(dsn, Mapping):
                dsn = dict(dsn)
            if isinstance(dsn, (str, dict)):
                found.update(secret_fragments(dsn))
        return sorted((f for f in found if len(f) >= MIN_SCRUBBED), key=len, reverse=True)


def scrub_body(value, fragments):
    """``value`` (a JSON-able object) with every string scrubbed of ``fragments``."""
    if not fragments:
        return value
    if isinstance(value, str):
        return scrub(value, fragments)
    if isinstance(value, Mapping):
        return {scrub_body(k, fragments): scrub_body(v, fragments) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub_body(v, fragments) for v in value]
    return value


class _Server(gevent.pywsgi.WSGIServer):
    """pywsgi's server with a socket timeout per connection (pywsgi sets none)."""

    idle_timeout = None

    def handle(self, sock, address):
        sock.settimeout(self.idle_timeout)
        super().handle(sock, address)


class _Body:
    """The request body, read at most once and never beyond ``limit`` bytes."""

    def __init__(self, environ, limit):
        self.input = environ.get("wsgi.input")
        self.limit = limit
        self.chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        raw_length = environ.get("CONTENT_LENGTH") or ""
        self.length = int(raw_length) if raw_length.isdigit() else None
        self.bad_length = bool(raw_length) and self.length is None
        self.consumed = False

    def read(self):
        """The body's bytes; HttpError 400 (bad Content-Length) or 413 (over the limit)."""
        if self.bad_length:
            raise HttpError(400, "invalid Content-Length", "Content-Length", None)
        if self.length is not None and self.length > self.limit:
            raise HttpError(413, "body of %d bytes is over the limit of %d bytes" % (
                self.length, self.limit), "Content-Length", self.length, limit=self.limit)
        if self.input is None or (self.length is None and not self.chunked):
            self.consumed = True
            return b""
        data = self.input.read(self.limit + 1 if self.length is None else self.length)
        if len(data) > self.limit:
            raise HttpError(413, "body is over the limit of %d bytes" % self.limit,
                            "body", None, limit=self.limit)
        self.consumed = self.length is not None or not self.input.read(1)
        return data

    def refuse_rest(self):
        """If a body was sent and not read to its end, stop pywsgi from reading the rest
        (it would otherwise discard it by reading it all) and return True: the connection
        must then be closed."""
        if self.consumed or not (self.chunked or self.length):
            return False
        # gevent.pywsgi.Input discards an unread body after the response by reading up to
        # content_length (or the last chunk); make it believe the body is finished.
        self.input.content_length = getattr(self.input, "position", 0)
        self.input.chunked_input = False
        return True


class _ErrorLog:
    """File-like sink for pywsgi's own error messages (bad request lines, socket errors)."""

    def write(self, text):
        text = text.rstrip()
        if text:
            log.warning("%s", text, extra={"action": "http.server_error", "instance": None})

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        pass


def _jsonable(value):
    if hasattr(value, "items"):
        return dict(value.items())
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)
