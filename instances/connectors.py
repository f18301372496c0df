"""The Postgres adapter: :class:`PostgresConnector` and driver-error translation.

This is the only module of pgvisor that imports psycopg2 and psycogreen. Importing it makes
psycopg2 cooperative for gevent (psycogreen's wait callback, wrapped, see
:func:`_green_wait`), with or without monkey-patching. Every error leaving it is an
:class:`instances.exceptions.DatabaseError` subclass whose message never contains the
password; classification is by SQLSTATE and exception class (:func:`translate_error`).

Connect-time failures: libpq reports the server's ``FATAL`` during the startup handshake
(wrong password 28P01, unknown database 3D000, starting up 57P03, ...) only as message
text, and psycopg2 leaves ``pgcode`` None. The wait callback therefore switches libpq's
error verbosity to ``PQERRORS_VERBOSE`` while a connection is being established, so libpq
writes the server's SQLSTATE field into the message in its fixed ``SEVERITY:  CODE:`` format,
and reads that code back (:data:`_VERBOSE_SQLSTATE`). That is the one place where a message
is parsed, and it parses libpq's machine field, never English words. libpq's own client-side
failures (refused, DNS, timeout) have no SQLSTATE at all and count as connection loss; a
missing password is detected with ``PQconnectionNeedsPassword``.
"""
import _socket  # the resolver threads' getaddrinfo (see _getaddrinfo)
import codecs
import contextlib
import ctypes
import encodings.idna  # noqa: F401  (see _getaddrinfo)
import logging
import os
import random
import re

import gevent
import gevent.threadpool
import psycopg2
import psycopg2._psycopg
import psycopg2.errors  # noqa: F401  (registers the SQLSTATE subclasses)
import psycopg2.extensions
import psycopg2.extras
from psycogreen.gevent import gevent_wait_callback

from instances import dsn as _dsn
from instances.dsn import quote_ident, redact_dsn
from instances.episodes import one_line
from instances.exceptions import (
    ConnectionLost,
    DatabaseError,
    FatalDatabaseError,
    InvalidConfigurationException,
    RoleChanged,
)

__all__ = ["PostgresConnector", "translate_error", "is_database_error", "parse_dsn",
           "quote_ident"]

log = logging.getLogger(__name__)

# -- connect-time SQLSTATE (see the module docstring) ---------------------------------------

_PQERRORS_DEFAULT, _PQERRORS_VERBOSE = 1, 2
_CONNECTION_OK = 0
#: libpq's verbose error line: ``SEVERITY:  SQLSTATE: message`` (severity may be localized).
_VERBOSE_SQLSTATE = re.compile(r"(?:^|\s)[^\s:]+:  ([0-9A-Z]{5}): ", re.MULTILINE)
#: The source-location line verbose connect errors carry: noise in an operator's log.
_VERBOSE_LOCATION = re.compile(r"^LOCATION:  .*$\n?", re.MULTILINE)
#: Attribute set on a connect-time psycopg2 error carrying the SQLSTATE libpq reported.
CONNECT_SQLSTATE_ATTR = "pgvisor_connect_sqlstate"


def _load_libpq():
    """The libpq psycopg2 is linked against (symbols resolved through its extension module,
    so never a different copy), or None when that is not possible on this platform."""
    try:
        lib = ctypes.CDLL(psycopg2._psycopg.__file__)
        lib.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.PQconnectionNeedsPassword.argtypes = [ctypes.c_void_p]
        lib.PQstatus.argtypes = [ctypes.c_void_p]
        return lib
    except (OSError, AttributeError):  # pragma: no cover - non-ELF platforms
        return None


_libpq = _load_libpq()


# -- the text codec of pgvisor's own connections (the listener's hot path) -------------------

#: The codec name pgvisor's connections decode UTF-8 text with (see :func:`_fast_utf8`).
FAST_UTF8 = "pgvisor_utf_8"


def _find_fast_utf8(name):
    """codecs search function: UTF-8 whose decoder is the C function ``utf_8_decode``."""
    if name != FAST_UTF8:
        return None
    utf8 = codecs.lookup("utf_8")
    return codecs.CodecInfo(utf8.encode, codecs.utf_8_decode, name=FAST_UTF8)


codecs.register(_find_fast_utf8)
_fast_utf8_depth = 0  # blocks of _fast_utf8 running (greenlets connecting at once)
_fast_utf8_saved = {}  # what extensions.encodings mapped UTF8 and UNICODE to before


@contextlib.contextmanager
def _fast_utf8():
    """While the block runs, a psycopg2 connection set up to a UTF-8 client encoding gets
    :data:`FAST_UTF8` as its codec (psycopg2 reads ``extensions.encodings`` once, when it
    sets the connection up; the mapping is put back afterwards).

    Why: psycopg2 decodes the channel and the payload of every notification with the
    connection's Python codec, and for UTF-8 that is ``encodings.utf_8.decode``, a Python
    function around ``codecs.utf_8_decode``: two Python calls per NOTIFY, about a sixth of
    a raw psycopg2 drain's instructions (callgrind). The C function decodes valid UTF-8
    (all PostgreSQL sends: it validates text) exactly as the wrapper does; the only
    difference, a truncated sequence at the very end of a string, is dropped instead of
    replaced by U+FFFD. Query results are not concerned (psycopg2 decodes them in C).
    Other code connecting meanwhile in another greenlet may get the same codec: it decodes
    the same way. Nested blocks (greenlets connecting at once) restore once, at the end of
    the last one."""
    global _fast_utf8_depth
    encodings = psycopg2.extensions.encodings
    if _fast_utf8_depth == 0:
        _fast_utf8_saved.update((key, encodings.get(key)) for key in ("UTF8", "UNICODE"))
        encodings.update(dict.fromkeys(("UTF8", "UNICODE"), FAST_UTF8))
    _fast_utf8_depth += 1
    try:
        yield
    finally:
        _fast_utf8_depth -= 1
        if _fast_utf8_depth == 0:
            for key, value in _fast_utf8_saved.items():
                if value is None:
                    encodings.pop(key, None)
                else:
                    encodings[key] = value


def _green_wait(conn, timeout=None):
    """psycogreen's gevent wait callback, plus SQLSTATEs for connect-time failures.

    A connect that fails here -- a libpq error, or a gevent.Timeout / kill thrown into the
    waiting greenlet -- closes the half-made connection at once: the exception's traceback
    references ``conn`` (this frame), and whoever keeps the error (a listener's
    ``last_error``, an exception's ``__context__``) would otherwise keep its socket open
    until a gc pass (issue 16, item 15). Runs in the greenlet using ``conn``; blocks only
    that greenlet."""
    ptr = conn.pgconn_ptr if _libpq is not None else None
    if not ptr or _libpq.PQstatus(ptr) == _CONNECTION_OK:
        return gevent_wait_callback(conn, timeout)
    _libpq.PQsetErrorVerbosity(ptr, _PQERRORS_VERBOSE)
    try:
        gevent_wait_callback(conn, timeout)
    except psycopg2.OperationalError as exc:
        codes = _VERBOSE_SQLSTATE.findall(str(exc))
        if codes:
            setattr(exc, CONNECT_SQLSTATE_ATTR, codes[-1])
        elif _libpq.PQconnectionNeedsPassword(ptr):
            setattr(exc, CONNECT_SQLSTATE_ATTR, "28000")
        conn.close()
        raise
    except BaseException:
        conn.close()
        raise
    if _libpq.PQstatus(ptr) == _CONNECTION_OK:
        _libpq.PQsetErrorVerbosity(ptr, _PQERRORS_DEFAULT)


psycopg2.extensions.set_wait_callback(_green_wait)

# -- error translation -----------------------------------------------------------------------

_CODE_OF_CLASS = {cls: code for code, cls in psycopg2._psycopg.sqlstate_errors.items()}
#: SQLSTATEs meaning "the connection is gone or the server is unavailable": reconnect.
CONNECTION_SQLSTATES = frozenset(["57P01", "57P02", "57P03", "57P05", "53300", "25P03"])
#: SQLSTATEs meaning "the server is read-only / in recovery": the role changed.
ROLE_SQLSTATES = frozenset(["25006"])
#: SQLSTATEs retrying cannot fix (plus class 28, authorization).
FATAL_SQLSTATES = frozenset(["3D000", "57P04"])


def _classify(code, exc, connecting):
    if code:
        if code[:2] in ("08", "53") and (connecting or code[:2] == "08"):
            return ConnectionLost
        if code in CONNECTION_SQLSTATES:
            return ConnectionLost
        if code in ROLE_SQLSTATES and not connecting:
            return RoleChanged
        if code[:2] == "28" or code in FATAL_SQLSTATES or connecting:
            return FatalDatabaseError
        return DatabaseError
    if isinstance(exc, psycopg2.ProgrammingError) and connecting:
        return FatalDatabaseError  # libpq rejected the DSN itself
    if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError, OSError)):
        return ConnectionLost
    return DatabaseError


def translate_error(exc, connecting=False, secrets=()):
    """``exc`` (a psycopg2 error, an OSError, or anything) as a DatabaseError subclass.

    ``connecting`` says the error came from establishing a connection (a ProgrammingError
    there is an invalid DSN; any server SQLSTATE there but "unavailable" ones is fatal).
    ``secrets`` are strings to redact from the message, which is one line (libpq's
    continuation lines folded in). Pure; never raises."""
    if isinstance(exc, DatabaseError):
        return exc
    try:
        code = (getattr(exc, "pgcode", None) or getattr(exc, CONNECT_SQLSTATE_ATTR, None)
                or _CODE_OF_CLASS.get(type(exc)))
        connecting = connecting or hasattr(exc, CONNECT_SQLSTATE_ATTR)
        cls = _classify(code, exc, connecting)
        text = one_line(_VERBOSE_LOCATION.sub("", str(exc) or type(exc).__name__))
        message = "%s%s: %s" % (type(exc).__name__, " [%s]" % code if code else "",
                                _dsn.scrub(text, secrets))
        return cls(message, sqlstate=code)
    except Exception:  # pragma: no cover - defensive: translation must not raise
        return DatabaseError("untranslatable %s" % type(exc).__name__)


def is_database_error(exc):
    """True for driver errors and translated :class:`DatabaseError` s (the strategy's test)."""
    return isinstance(exc, (psycopg2.Error, DatabaseError))


# -- DSNs ------------------------------------------------------------------------------------

def parse_dsn(dsn):
    """A libpq string (keywords or URI, parsed by libpq) or a hermes dict as a dict of libpq
    keywords. Raises :class:`InvalidConfigurationException` (field ``dsn``, value redacted)."""
    if not isinstance(dsn, str):
        return _dsn.normalize_dict(dsn)
    try:
        return psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        detail = _dsn.scrub(str(exc).strip(), _dsn.secret_fragments(dsn))
        raise InvalidConfigurationException(
            "dsn %s is invalid: %s" % (redact_dsn(dsn), detail),
            "dsn", redact_dsn(dsn)) from None


def _secrets_of(dsn):
    """What to redact from messages about ``dsn``: its password, or when it cannot be parsed,
    everything that looks like part of one."""
    try:
        password = parse_dsn(dsn).get("password")
    except InvalidConfigurationException:
        return _dsn.secret_fragments(dsn)
    return [password] if password else []


# -- host names, resolved off the hub -------------------------------------------------------

#: Threads resolving names (a pool of its own: a resolver that never answers holds one
#: thread per pending lookup, and must not starve the hub's threadpool of fsyncs).
RESOLVER_THREADS = 4
_resolver_pool = None


def _getaddrinfo(host, port):
    """In a resolver thread: the addresses, or the OSError (an error raised in a pool thread
    would be reported to the hub as a crash; a name that does not resolve is not one).

    The C library's getaddrinfo itself (``_socket``): gevent's monkey-patched one, called in
    a thread, made that thread a gevent hub of its own and ran the lookup in yet another
    thread of that hub's pool (importing gevent's resolver meanwhile). Its first call encodes
    the name with the ``idna`` codec: ``encodings.idna`` is imported with this module, not
    in the thread, where the import held the GIL the hub was waiting for (12 ms on a quiet
    machine; the likely cause of a 218 ms stall of the hub under load)."""
    try:
        return [info[4][0] for info in _socket.getaddrinfo(host, port, 0, _socket.SOCK_STREAM)]
    except OSError as exc:
        return exc


def resolve_host(host, port=None):
    """The addresses of ``host`` (TCP), in the resolver's order. Blocks only this greenlet:
    getaddrinfo runs in a thread of :data:`RESOLVER_THREADS`, never on the hub; a gevent
    timeout around the call ends the wait (the lookup finishes in its thread). Raises
    OSError (``socket.gaierror``) when the name does not resolve."""
    global _resolver_pool
    if _resolver_pool is None:
        _resolver_pool = gevent.threadpool.ThreadPool(RESOLVER_THREADS)
    found = _resolver_pool.apply(_getaddrinfo, (host, port or None))
    if isinstance(found, OSError):
        raise found
    return found


def resolved_parameters(params, resolve=resolve_host, environ=os.environ):
    """``params`` (libpq keywords) with every host name resolved into ``hostaddr`` by
    ``resolve`` (:func:`instances.dsn.with_hostaddr`): libpq then never calls the blocking
    getaddrinfo itself. Raises :class:`ConnectionLost` naming the host when nothing
    resolves."""
    try:
        return _dsn.with_hostaddr(params, resolve, environ)
    except OSError as exc:
        raise ConnectionLost("cannot resolve host %s: %s" % (
            params.get("host") or environ.get("PGHOST"), exc)) from None


def _where(params):
    """The host one connect attempt goes to, as shown in errors: ``host[ (addr)]:port``."""
    host = params.get("host") or params.get("hostaddr") or "the default socket"
    addr = params.get("hostaddr")
    shown = host if not addr or addr == host else "%s (%s)" % (host, addr)
    return "%s:%s" % (shown, params["port"]) if params.get("port") else shown


# -- the connector ---------------------------------------------------------------------------

_IDENTITY_SQL = (
    "SELECT s.system_identifier::text, pg_is_in_recovery(),"
    " CASE WHEN pg_is_in_recovery() THEN (SELECT timeline_id FROM pg_control_checkpoint())"
    " ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END"
    " FROM pg_control_system() s")


class PostgresConnector:
    """One shared autocommit connection (hermes API) plus the listener's primitives.

    ``dsn`` is a libpq string or a hermes dict (``database``/``dbname``, ``host``, ``port``,
    ``user``, ``password``). Connection parameters come from, in order of precedence: the
    ``application_name`` / ``connect_timeout`` arguments, the DSN, the class attributes.

    Concurrency: every method blocks only the calling greenlet (psycogreen). A connection
    serves one greenlet at a time: the listener's greenlet owns a connector; other greenlets
    use :meth:`is_server_master` / :meth:`server_identity`, which open their own connection.
    Every error raised is a translated :class:`~instances.exceptions.DatabaseError`; after
    :class:`~instances.exceptions.ConnectionLost` the next use reconnects.
    """

    #: Seconds allowed to establish a connection (libpq's and, when green, gevent's timer).
    connect_timeout = 5
    #: 1: TCP keepalives on.
    keepalives = 1
    #: Seconds of silence before the first TCP keepalive probe.
    keepalives_idle = 10
    #: Seconds between unanswered keepalive probes.
    keepalives_interval = 5
    #: Unanswered probes before the peer is dead: noticed after 10 + 5 * 3 = 25 seconds.
    keepalives_count = 3
    #: ``application_name`` (shown in ``pg_stat_activity``) when neither caller nor DSN set one.
    application_name = "pgvisor"

    def __init__(self, dsn, cursor_factory=psycopg2.extras.DictCursor, application_name=None,
                 connect_timeout=None):
        self.dsn = dsn
        self.cursor_factory = cursor_factory
        self._overrides = {"application_name": application_name,
                           "connect_timeout": connect_timeout}
        if application_name is not None:
            self.application_name = application_name
        self._secrets = _secrets_of(dsn)
        self._conn = None

    def __repr__(self):
        return "<%s %s (%s)>" % (type(self).__name__, redact_dsn(self.dsn),
                                 "connected" if self.connected else "not connected")

    __str__ = __repr__

    @property
    def connected(self):
        """True when the shared connection is open (as far as the client knows)."""
        return self._conn is not None and not self._conn.closed

    def connection_parameters(self):
        """The keyword arguments given to libpq (contains the password: never log it).
        Raises :class:`FatalDatabaseError` for an invalid DSN."""
        params = {key: getattr(self, key) for key in (
            "connect_timeout", "keepalives", "keepalives_idle", "keepalives_interval",
            "keepalives_count")}
        params["application_name"] = type(self).application_name
        try:
            params.update(parse_dsn(self.dsn))
        except InvalidConfigurationException as exc:
            raise FatalDatabaseError(str(exc)) from None
        params.update((k, v) for k, v in self._overrides.items() if v is not None)
        return params

    def _open(self):
        """A new autocommit connection. Blocks this greenlet: name resolution (up to
        connect_timeout), then each host in turn (:func:`instances.dsn.host_attempts`) up
        to connect_timeout each. A host that refuses, closes during startup, times out
        or does not fit ``target_session_attrs`` passes the turn to the next; an error
        no other host could cure (authentication, a missing database) ends the tries,
        as libpq's own multi-host connect does."""
        params = self.connection_parameters()
        timeout = float(params["connect_timeout"] or 0) or None
        with gevent.Timeout(timeout, False):
            resolved = None
            resolved = resolved_parameters(params)
        if resolved is None:
            raise ConnectionLost("resolving the hosts of %s timed out after %s s" % (
                redact_dsn(self.dsn), timeout))
        attempts = _dsn.host_attempts(resolved, os.environ, random.shuffle)
        failures = []
        for attempt in attempts:
            try:
                return self._connect(attempt, timeout)
            except ConnectionLost as error:
                if len(attempts) == 1:
                    raise
                failures.append("%s: %s" % (_where(attempt), error))
        raise ConnectionLost("no host of %s accepted the connection: %s" % (
            redact_dsn(self.dsn), "; ".join(failures)))

    def _connect(self, params, timeout):
        """One connect with ``params`` as they are, within ``timeout`` seconds."""
        timer = gevent.Timeout(timeout)
        timer.start()
        try:
            with _fast_utf8():
                conn = psycopg2.connect(**params)
            conn.autocommit = True
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            raise ConnectionLost("connecting to %s timed out after %s s" % (
                redact_dsn(self.dsn), timeout)) from None
        except psycopg2.Error as exc:
            error = translate_error(exc, connecting=True, secrets=self._secrets)
            # Debug only: the caller owns the story (the monitor logs the outage once and
            # a summary every 5 min; a listener logs its reconnect episode the same way).
            log.debug("cannot connect to %s: %s", redact_dsn(self.dsn), error,
                      extra={"action": "connector.connect_failed",
                             "instance": params["application_name"]})
            raise error from None
        finally:
            timer.close()
        return conn

    @property
    def pg_connection(self):
        """The shared autocommit connection, (re)connected lazily when missing or closed."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = self._conn = self._open()
            log.debug("connected to %s", redact_dsn(self.dsn), extra={
                "action": "connector.connect", "instance": self.application_name})
        return conn

    @property
    def pg_cursor(self):
        """A new cursor (``cursor_factory``) on :attr:`pg_connection`. Errors raised by the
        cursor itself are psycopg2's: wrap its use in :meth:`translated_errors`."""
        return self.pg_connection.cursor(cursor_factory=self.cursor_factory)

    def disconnect(self):
        """Close the shared connection; idempotent, never raises."""
        conn, self._conn = self._conn, None
        if conn is not None and not conn.closed:
            try:
                conn.close()
            except psycopg2.Error:  # pragma: no cover - close of a broken connection
                pass
            log.debug("disconnected", extra={
                "action": "connector.disconnect", "instance": self.application_name})

    def _failed(self, exc):
        """Translate ``exc``; forget the shared connection when it is gone."""
        error = translate_error(exc, secrets=self._secrets)
        if isinstance(error, ConnectionLost):
            self.disconnect()
        return error

    @contextlib.contextmanager
    def translated_errors(self):
        """Context manager turning psycopg2 errors into translated ones (for pg_cursor users)."""
        try:
            yield
        except psycopg2.Error as exc:
            raise self._failed(exc) from None

    def execute(self, sql, params=None):
        """Run ``sql`` on the shared connection: the rows, or None for a statement without
        a result."""
        with self.translated_errors():
            with self.pg_connection.cursor(cursor_factory=self.cursor_factory) as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description is not None else None

    @contextlib.contextmanager
    def transaction(self):
        """``BEGIN`` on the shared connection, ``COMMIT`` when the block ends, ``ROLLBACK``
        when it raises (a lost connection rolled back by itself and is forgotten). A
        timeout or kill thrown into the block (not an ``Exception``) closes the connection
        instead of waiting for a ROLLBACK on it: the server rolls back a closed session's
        transaction. The block runs :meth:`execute` on this connector; only its owning
        greenlet may use it. A COMMIT that fails raises the translated error: the outcome
        is then unknown only when it is :class:`ConnectionLost`."""
        self.execute("BEGIN")
        try:
            yield self
        except Exception:
            if self.connected:
                try:
                    self.execute("ROLLBACK")
                except DatabaseError:
                    self.disconnect()
            raise
        except BaseException:
            self.disconnect()
            raise
        self.execute("COMMIT")

    def _query_once(self, sql):
        """Rows of ``sql`` on a connection of its own, closed afterwards."""
        conn = self._open()
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                return cursor.fetchall()
        except psycopg2.Error as exc:
            raise translate_error(exc, secrets=self._secrets) from None
        finally:
            conn.close()

    def is_server_master(self):
        """True when the server is a primary (not in recovery). Own short connection."""
        return not self._query_once("SELECT pg_is_in_recovery()")[0][0]

    def server_identity(self, shared=False):
        """``{"system_identifier": str, "timeline": int, "in_recovery": bool}`` of the server
        (on a standby the timeline of its last restartpoint). Own short connection, or with
        ``shared`` the connector's long-lived one (only its owning greenlet may say so: the
        database monitor probes this way, one connection for its whole life)."""
        rows = self.execute(_IDENTITY_SQL) if shared else self._query_once(_IDENTITY_SQL)
        system_identifier, in_recovery, timeline = rows[0]
        return {"system_identifier": system_identifier, "timeline": int(timeline),
                "in_recovery": bool(in_recovery)}

    # -- listener primitives (hot path) ---------------------------------------------------

    def listen(self, channels):
        """LISTEN on each channel (quoted identifiers) in one round trip."""
        if channels:
            self.execute("".join("LISTEN %s;" % quote_ident(c) for c in channels))

    def unlisten(self, channels=None):
        """UNLISTEN each channel; None: every channel (``UNLISTEN *``)."""
        if channels is None:
            self.execute("UNLISTEN *")
        elif channels:
            self.execute("".join("UNLISTEN %s;" % quote_ident(c) for c in channels))

    def fileno(self):
        """The socket of the shared connection (connecting if needed), to wait on."""
        return self.pg_connection.fileno()

    def poll_notifies(self):
        """Read what arrived: a list of notifies, oldest first, each with ``pid``,
        ``channel`` and ``payload`` attributes; never blocks. The list is handed over, not
        copied (the connection starts a new one): this is the listener's hot path."""
        conn = self._conn if self._conn is not None else self.pg_connection
        try:
            conn.poll()
        except psycopg2.Error as exc:
            raise self._failed(exc) from None
        notifies = conn.notifies
        if not notifies:
            return []
        conn.notifies = []
        return notifies

    def notify(self, channel, payload=None):
        """``pg_notify(channel, payload)`` on the shared connection."""
        self.execute("SELECT pg_notify(%s, %s)", (channel, payload))
