"""The HTTP control API server: :class:`HttpApi` (the only module importing gevent.pywsgi).

A plain WSGI application served by :class:`gevent.pywsgi.WSGIServer`. This module owns the
transport: binding, the ``Host`` check (DNS rebinding), bearer-token authentication (every
mutating request, always; reads too with ``token_for_reads``, where a browser may show
the token once and read with a cookie instead, see :meth:`HttpApi.read_cookie`), the JSON
content type of
mutations (no cross-site form posts), the request body limit, the per-request deadline and
the connection pool (idle connections dropped first), JSON error answers, password
scrubbing of every answer, and one access log line per request with control characters
escaped. The resources (routes, handlers, operations) live in
:mod:`supervisor.http.routes`; the metrics in :mod:`supervisor.metrics`. docs/http.rst is
the reference; docs/operations.rst ("Security") says what the token protects.

Lifecycle::

    api = HttpApi(supervisor, listen=("127.0.0.1", 0), token=None)  # None: a random token
    api.start()        # binds and returns at once; api.address is the bound (host, port)
    ...                # each request runs in a greenlet of its own (at most max_connections)
    api.stop(timeout)  # closes the listener, waits for requests up to timeout, kills the rest

Concurrency: start() and stop() are called from any greenlet of the hub's thread. The WSGI
application never raises: an unexpected exception is answered with 500 and an error id,
and logged with its traceback under that id.
"""
import hashlib
import hmac
import json
import logging
import re
import socket
import time
import uuid
from collections.abc import Mapping
from urllib.parse import parse_qs

import gevent
import gevent.pool
import gevent.pywsgi

from instances.dsn import REDACTED, scrub, secret_fragments
from instances.exceptions import InvalidConfigurationException
from supervisor.config.settings import is_loopback
from supervisor.config.token import new_token
from supervisor.http import page
from supervisor.http.routes import JSON_TYPE, HttpError, Request, Response, Routes
from supervisor.metrics import make_registry

log = logging.getLogger(__name__)

MUTATING = ("PUT", "DELETE", "POST")
#: Secret fragments shorter than this are not scrubbed from answers (they would mangle
#: ordinary words; passwords are redacted where errors are made, this is a second net).
MIN_SCRUBBED = 4
#: Routes readable without a token even when ``token_for_reads`` is set (probes).
OPEN_PATHS = ("/health",)
#: Where the status page's login form posts the token (form-encoded, not JSON).
LOGIN_PATH = "/login"
FORM_TYPE = "application/x-www-form-urlencoded"
#: The cookie that opens reads for a browser (``token_for_reads``): an HMAC of the token.
READ_COOKIE = "pgvisor_read"
#: Host names always accepted in the ``Host`` header (with any port).
LOOPBACK_NAMES = ("localhost", "localhost.")
_REASONS = {200: "OK", 201: "Created", 202: "Accepted", 303: "See Other", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            413: "Payload Too Large", 415: "Unsupported Media Type",
            421: "Misdirected Request", 500: "Internal Server Error",
            503: "Service Unavailable"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")


class HttpApi:
    """The control API of ``supervisor`` on ``listen`` (host, port); port 0: ephemeral.

    ``token``: the bearer token every PUT, DELETE and POST needs (and GETs other than
    /health when ``token_for_reads``); None: a random one is made (:attr:`token`), so a
    mutation is never open. ``allowed_hosts``: ``Host`` names accepted besides the
    loopback names and the listen host (``"*"``: any). ``handler_modules``: module
    prefixes a PUT spec's handler may come from (empty: any). ``max_body``: bytes accepted
    in a request body.
    """

    #: Connections served at once; when all are taken, the longest idle one (waiting for
    #: a request) is dropped for a new one, else new ones wait in the listen backlog.
    max_connections = 256
    #: Listen backlog (connections the kernel queues while the pool is full).
    backlog = 1024
    #: Seconds a client has to send one whole request (line, headers and body), counted
    #: from the moment the server waits for it; also the keep-alive idle limit. A slow
    #: client (one byte a second) is cut there, whatever its pace.
    request_timeout = 10.0
    #: Seconds stop() waits for running requests by default.
    stop_timeout = 5.0
    #: Seconds a socket operation may wait (sending an answer to a client that does not
    #: read it). Waiting for an operation's outcome (``?wait=1``) is not socket silence.
    idle_timeout = 30.0

    def __init__(self, supervisor, listen=("127.0.0.1", 7390), token=None, max_body=65536,
                 token_for_reads=False, allowed_hosts=(), handler_modules=()):
        host, port = listen
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise InvalidConfigurationException("token: must be a non-empty string",
                                                "token", REDACTED)
        self.supervisor = supervisor
        self.listen = (host, port)
        self.max_body = max_body
        self.token_for_reads = token_for_reads
        self._token = (token if token is not None else new_token()).encode()
        self._cookie = hmac.new(self._token, b"pgvisor read cookie", hashlib.sha256).hexdigest()
        self.allowed_hosts = _host_set(host, allowed_hosts)
        self.metrics_registry = make_registry(supervisor)
        self.routes = Routes(supervisor, self.metrics_registry,
                             handler_modules=tuple(handler_modules or ()))
        self._server = None

    @property
    def token(self):
        """The bearer token in force (never log it)."""
        return self._token.decode()

    @property
    def read_cookie(self):
        """The value of the :data:`READ_COOKIE` a browser gets for the token (``GET
        /?token=...`` or the login form's ``POST /login``): it opens reads, never a
        mutation (those need the bearer header: a cookie would make them forgeable from
        another site). An HMAC of the token: the cookie never holds the token itself."""
        return self._cookie

    @property
    def address(self):
        """The bound ``(host, port)`` once started (the real port when 0 was asked)."""
        return self._server.address if self._server is not None else None

    def start(self):
        """Bind and serve in the background; return at once. Raises OSError if the address
        cannot be bound."""
        self._server = _Server(
            self.listen, self.application, backlog=self.backlog,
            spawn=gevent.pool.Pool(self.max_connections), log=None, error_log=_ErrorLog(),
            handler_class=_Handler)
        self._server.idle_timeout = self.idle_timeout
        self._server.request_timeout = self.request_timeout
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
        deadline = environ.get(_DEADLINE_KEY)
        body = _Body(environ, self.max_body, deadline)
        try:
            response = self._dispatch(method, path, environ, body)
        except HttpError as exc:
            response = Response(exc.status, exc.body(), headers=exc.headers)
        except gevent.Timeout as exc:
            if exc is not deadline:
                response = _internal_error(method, path)
            else:
                body.abandoned = True
                response = Response(408, {"error": "request not received within %.0f s" % (
                    self.request_timeout), "field": None, "value": None})
        except Exception:
            response = _internal_error(method, path)
        finally:
            if deadline is not None:
                deadline.close()  # answering is bounded by the socket timeout
        payload, headers = self._encode(response)
        if body.refuse_rest():
            headers.append(("Connection", "close"))
        start_response("%d %s" % (response.status, _REASONS.get(response.status, "")), headers)
        self._log_request(method, path, response.status, started)
        return [payload]

    def _log_request(self, method, path, status, started):
        """One line; the query string is left out (it may carry anything)."""
        duration = time.monotonic() - started
        shown = _printable(path)
        log.info("%s %s %d %.3fs", _printable(method), shown, status, duration,
                 extra={"action": "http.request", "instance": None,
                        "method": _printable(method), "path": shown, "status": status,
                        "duration": round(duration, 6)})

    def _dispatch(self, method, path, environ, body):
        self._check_host(environ.get("HTTP_HOST"))
        if path == LOGIN_PATH:
            return self._login_form(method, environ, body)
        handlers, kwargs = self.routes.match(path)
        handler = handlers.get(method)
        if handler is None:
            allow = ", ".join(sorted(handlers))
            raise HttpError(405, "method %s not allowed on %s (allowed: %s)" % (
                method, path, allow), "method", method, headers=[("Allow", allow)])
        if path == "/" and "token" in parse_qs(environ.get("QUERY_STRING") or ""):
            return self._login_link(environ)
        if method in MUTATING:
            self._authenticate(environ)
            _check_json_type(environ.get("CONTENT_TYPE"))
        elif self.token_for_reads and path.rstrip("/") not in OPEN_PATHS \
                and not self._has_read_cookie(environ):
            if path == "/" and not environ.get("HTTP_AUTHORIZATION"):
                return Response(401, page.login_document(), page.HTML_TYPE,
                                page.LOGIN_HEADERS)
            self._authenticate(environ)
        if method != "PUT" or not body.expected:
            body.done()  # only a PUT reads its body: the request is in (?wait=1 may last)
        request = Request(method, path, environ.get("QUERY_STRING"),
                          environ.get("CONTENT_TYPE"), body.read)
        return handler(request, **kwargs)

    def _check_host(self, header):
        """HttpError 400/421 unless the ``Host`` header names this server (DNS
        rebinding: a web page's requests carry the attacker's name)."""
        if "*" in self.allowed_hosts:
            return
        if not header:
            raise HttpError(400, "a Host header is required", "Host", None)
        name = _host_name(header)
        if name is None:
            raise HttpError(400, "malformed Host header %r" % header, "Host", header)
        if name not in self.allowed_hosts and not is_loopback(name) \
                and not name.endswith(".localhost"):
            raise HttpError(421, "Host %r is not this server's name (add it to [http] "
                            "allowed_hosts)" % header, "Host", header)

    # -- a browser's way in (token_for_reads) ---------------------------------------------

    def _login_link(self, environ):
        """``GET /?token=...``: the read cookie and a redirect to the page without the
        token in its address (the access log never shows a query string)."""
        given = parse_qs(environ.get("QUERY_STRING") or "")["token"][-1]
        return self._logged_in(environ, given)

    def _login_form(self, method, environ, body):
        """``POST /login`` of the login page's form (``token=...``, form-encoded)."""
        if method != "POST":
            raise HttpError(405, "method %s not allowed on %s (allowed: POST)" % (
                method, LOGIN_PATH), "method", method, headers=[("Allow", "POST")])
        kind = (environ.get("CONTENT_TYPE") or "").split(";")[0].strip().lower()
        if kind != FORM_TYPE:
            raise HttpError(415, "Content-Type must be %s on %s, got %r" % (
                FORM_TYPE, LOGIN_PATH, environ.get("CONTENT_TYPE") or None),
                "Content-Type", environ.get("CONTENT_TYPE") or None)
        form = parse_qs(body.read().decode("utf-8", "replace"))
        return self._logged_in(environ, (form.get("token") or [""])[-1])

    def _logged_in(self, environ, given):
        """303 to the page with the read cookie when ``given`` is the token, else the
        login page again (401)."""
        if not hmac.compare_digest(given.strip().encode("utf-8", "replace"), self._token):
            return Response(401, page.login_document(wrong=True), page.HTML_TYPE,
                            page.LOGIN_HEADERS)
        cookie = "%s=%s; Path=/; HttpOnly; SameSite=Strict" % (READ_COOKIE, self._cookie)
        if environ.get("wsgi.url_scheme") == "https":
            cookie += "; Secure"
        return Response(303, b"", "text/plain; charset=utf-8",
                        [("Location", "./"), ("Set-Cookie", cookie)])

    def _has_read_cookie(self, environ):
        """True when the request carries the :attr:`read_cookie`."""
        for part in (environ.get("HTTP_COOKIE") or "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == READ_COOKIE and hmac.compare_digest(
                    value.strip().encode("utf-8", "replace"), self._cookie.encode()):
                return True
        return False

    def _authenticate(self, environ):
        scheme, _, given = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), self._token)
        if not ok:
            raise HttpError(401, "missing or wrong bearer token (send 'Authorization: "
                            "Bearer <token>')", "Authorization", None,
                            headers=[("WWW-Authenticate", 'Bearer realm="pgvisor"')])

    def _encode(self, response):
        if isinstance(response.body, bytes):
            payload = response.body
        else:
            body = scrub_body(response.body, self._secrets())
            text = json.dumps(body, default=_jsonable, ensure_ascii=False, indent=1) + "\n"
            # A lone surrogate (echoed from bad input) becomes its JSON escape \udXXX.
            payload = text.encode("utf-8", "backslashreplace")
        headers = [("Content-Type", response.content_type),
                   ("Content-Length", str(len(payload))),
                   ("Cache-Control", "no-store"),
                   ("X-Content-Type-Options", "nosniff")] + response.headers
        return payload, headers

    def _secrets(self):
        """Fragments that must not appear in any answer: the DSN passwords we know and the
        registry file's path (an answer names instances, never the service's files)."""
        dsns = [getattr(self.supervisor, "dsn", None)]
        dsns += [spec.dsn for spec in self.supervisor.registry]
        found = set()
        for dsn in dsns:
            if isinstance(dsn, Mapping):
                dsn = dict(dsn)
            if isinstance(dsn, (str, dict)):
                found.update(secret_fragments(dsn))
        path = getattr(self.supervisor.registry, "path", None)
        if isinstance(path, str):
            found.add(path)
        return sorted((f for f in found if len(f) >= MIN_SCRUBBED), key=len, reverse=True)


def _internal_error(method, path):
    """The 500 answer of an unexpected exception (being handled), logged under an id."""
    error_id = uuid.uuid4().hex[:12]
    log.exception("internal error %s answering %s %s", error_id, _printable(method),
                  _printable(path), extra={"action": "http.internal_error", "instance": None,
                                           "error_id": error_id})
    return Response(500, {"error": "internal error", "id": error_id})


def _check_json_type(content_type):
    """HttpError 415 unless a mutation says it sends JSON (an HTML form cannot)."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind != JSON_TYPE:
        raise HttpError(415, "Content-Type must be %s on PUT, POST and DELETE, got %r" % (
            JSON_TYPE, content_type or None), "Content-Type", content_type or None)


def _host_set(listen_host, allowed):
    names = {name.strip().lower().rstrip(".") for name in allowed}
    names.update(LOOPBACK_NAMES)
    if listen_host not in ("", "0.0.0.0", "::"):
        names.add(listen_host.lower())
    return frozenset(names)


def _host_name(header):
    """The name of a ``Host`` header (``name``, ``name:port``, ``[v6]:port``), lower case
    and without a trailing dot; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, rest = header[1:].partition("]")
        if not bracket or (rest and not (rest[:1] == ":" and rest[1:].isdigit())):
            return None
        return name
    name, colon, port = header.partition(":")
    if (colon and not port.isdigit()) or not name or any(
            c in name for c in "/@ \t\\") or not name.isascii():
        return None
    return name.rstrip(".")


def _printable(text):
    """``text`` with control characters and backslashes escaped (``\\x0a``): one log
    line per request, whatever a client sends."""
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), str(text))


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


_DEADLINE_KEY = "pgvisor.request_deadline"


class _Server(gevent.pywsgi.WSGIServer):
    """pywsgi's server with a socket timeout per connection (pywsgi sets none) and a pool
    that makes room for a new connection by dropping the longest idle one."""

    idle_timeout = None
    request_timeout = None

    def __init__(self, *args, **kwargs):
        #: Handlers waiting for a request line, oldest first (the ones to drop first).
        self.idle = {}
        super().__init__(*args, **kwargs)

    def set_spawn(self, spawn):
        super().set_spawn(spawn)
        if self.pool is not None:
            self.full = self._full

    def _full(self):
        """Called before each accept: when the pool is full, drop the longest idle
        connection (its greenlet ends and frees a slot; accepting resumes then)."""
        if not self.pool.full():
            return False
        if self.idle:
            oldest = next(iter(self.idle))
            del self.idle[oldest]
            oldest.hang_up()
        return True

    def handle(self, sock, address):
        sock.settimeout(self.idle_timeout)
        super().handle(sock, address)


class _Handler(gevent.pywsgi.WSGIHandler):
    """One connection: every request must arrive whole within the server's
    ``request_timeout`` (a timer from the moment it is awaited to the moment its body has
    been read), and the connection counts as idle until its request line is in."""

    _deadline = None

    def handle_one_request(self):
        self._deadline = gevent.Timeout(self.server.request_timeout)
        self._deadline.start()
        self.server.idle[self] = True
        try:
            return super().handle_one_request()
        except gevent.Timeout as exc:
            if exc is not self._deadline:
                raise
            self.close_connection = True
            return None  # no request (or only part of one) within the deadline: hang up
        finally:
            self.server.idle.pop(self, None)
            self._deadline.close()

    def read_requestline(self):
        line = super().read_requestline()
        self.server.idle.pop(self, None)
        return line

    def get_environ(self):
        environ = super().get_environ()
        environ[_DEADLINE_KEY] = self._deadline
        return environ

    def hang_up(self):
        """Drop this idle connection: its pending read ends (EOF), the greenlet ends."""
        sock = getattr(self, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Body:
    """The request body, read at most once, never beyond ``limit`` bytes, and within the
    request's ``deadline`` (a started gevent.Timeout, closed once the body is in)."""

    def __init__(self, environ, limit, deadline=None):
        self.input = environ.get("wsgi.input")
        self.limit = limit
        self.deadline = deadline
        self.chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        raw_length = environ.get("CONTENT_LENGTH") or ""
        self.length = int(raw_length) if raw_length.isdigit() and len(raw_length) < 19 \
            else None
        self.bad_length = bool(raw_length) and self.length is None
        self.consumed = False
        #: True when the body could not be read whole (bad framing, too slow).
        self.abandoned = False

    @property
    def expected(self):
        """True when the request announces a body."""
        return self.chunked or bool(self.length) or self.bad_length

    def done(self):
        """The request is in: its deadline no longer applies."""
        if self.deadline is not None:
            self.deadline.close()

    def read(self):
        """The body's bytes; HttpError 400 (bad Content-Length, short or malformed body)
        or 413 (over the limit)."""
        if self.bad_length:
            raise HttpError(400, "invalid Content-Length", "Content-Length", None)
        if self.length is not None and self.length > self.limit:
            raise HttpError(413, "body of %d bytes is over the limit of %d bytes" % (
                self.length, self.limit), "Content-Length", self.length, limit=self.limit)
        if self.input is None or (self.length is None and not self.chunked):
            self.consumed = True
            return b""
        try:
            data = self._read_all()
        except (OSError, ValueError) as exc:  # pywsgi's framing errors, a reset, a timeout
            self.abandoned = True
            raise HttpError(400, "malformed or incomplete request body: %s" % (
                _printable(str(exc) or type(exc).__name__)[:200]), "body", None) from None
        self.done()
        return data

    def _read_all(self):
        if self.length is not None:
            try:
                data = self.input.read(self.length)
            except OSError:  # pywsgi: the client closed before the announced end
                data = None
            got = len(data) if data is not None else getattr(self.input, "position", 0)
            if got < self.length:
                raise ValueError("the body has %d of the %d bytes Content-Length announced"
                                 % (got, self.length))
            self.consumed = True
            return data
        data = self.input.read(self.limit + 1)
        if len(data) > self.limit:
            raise HttpError(413, "body is over the limit of %d bytes" % self.limit,
                            "body", None, limit=self.limit)
        self.consumed = not self.input.read(1)
        return data

    def refuse_rest(self):
        """If a body was sent and not read to its end, stop pywsgi from reading the rest
        (it would otherwise discard it by reading it all) and return True: the connection
        must then be closed."""
        if not self.abandoned and (self.consumed or not (self.chunked or self.length)):
            return False
        if self.input is None:
            return True
        # gevent.pywsgi.Input discards an unread body after the response by reading up to
        # content_length (or the last chunk); make it believe the body is finished.
        self.input.content_length = getattr(self.input, "position", 0)
        self.input.chunked_input = False
        return True


class _ErrorLog:
    """File-like sink for pywsgi's own error messages (bad request lines, socket errors)."""

    def write(self, text):
        text = _printable(text.rstrip())
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
