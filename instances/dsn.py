"""Pure DSN helpers: hermes dicts, libpq keyword strings, identifiers, and the one
redaction of passwords and secrets.

Redaction lives here and only here: :data:`REDACTED` is how every secret is shown;
:func:`redact_dsn` is how a DSN is shown (reprs, logs, errors, the HTTP API and the CLI
alike: a dict stays a dict, a string stays a string); :func:`redact_text` masks what looks
like a password in free text (log lines, messages) and the registered secrets;
:func:`secret_fragments` and :func:`scrub` take a DSN's secrets out of messages that quote
it (libpq's). Nothing here talks to a server or imports the driver; parsing a libpq
*string* is done by libpq itself in :func:`instances.connectors.parse_dsn`. These
functions are safe to call from any greenlet and never block. Host resolution (:func:`with_hostaddr`) takes the resolver as an argument: the connector
hands it one that runs off the hub.
"""
import ipaddress
import re
from collections.abc import Mapping

from instances.exceptions import InvalidConfigurationException

#: What a password or any other secret is shown as, everywhere.
REDACTED = "***"
#: A key whose value is a secret (dict DSNs, JSON bodies, dict reprs) contains one of these.
SECRET_KEY_PARTS = ("password", "passwd", "token")

#: Longest identifier Postgres keeps (NAMEDATALEN - 1, in bytes); longer ones are truncated.
MAX_IDENTIFIER_BYTES = 63

#: hermes-style dict keys and their libpq names.
HERMES_KEYS = {"database": "dbname"}

# A password inside a DSN string, parsed or not: ``password=value`` (quoted, or up to the
# next ``key=``: a malformed unquoted value may hold spaces) or the userinfo of a URI. Only
# used to hide it, never to connect.
_PASSWORD_VALUE = re.compile(
    r"((?:ssl)?password\s*=\s*)('(?:[^'\\]|\\.)*'?|.*?)(?=\s+\w+\s*=|\s*$)",
    re.IGNORECASE | re.DOTALL)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@]*)(@)")
# What looks like a secret in free text, where a value ends at a space: (pattern, repl).
_TEXT_PATTERNS = (
    # libpq key=value and keyword reprs: password='quoted', password=unquoted
    (re.compile(r"""(\b(?:(?:ssl)?password|passwd|pgpassword)\s*=\s*)"""
                r"""('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^\s'"&,;)]+)""",
                re.IGNORECASE), r"\1" + REDACTED),
    # URIs: scheme://user:secret@host
    (re.compile(r"([a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@\s/]*@", re.IGNORECASE),
     r"\1" + REDACTED + "@"),
    # dict reprs and JSON: 'password': 'secret' / "password": "secret"
    (re.compile(r"""((['"])(?:(?:ssl)?password|passwd|token)\2\s*:\s*)(['"])(?:\\.|(?!\3).)*\3""",
                re.IGNORECASE), r"\1\3" + REDACTED + r"\3"),
)


def normalize_dict(params):
    """A hermes dict (``database``/``host``/``port``/``user``/``password``, or libpq keys such
    as ``dbname``) as a dict of libpq keywords to strings; None values are dropped. Any
    mapping will do: a spec keeps its object-form ``dsn`` as a read-only mapping."""
    if not isinstance(params, Mapping):
        raise InvalidConfigurationException(
            "dsn must be a libpq string or a dict, got %s" % type(params).__name__,
            "dsn", type(params).__name__)
    out = {}
    for key, value in params.items():
        if value is None:
            continue
        key = HERMES_KEYS.get(key, key)
        if not isinstance(key, str) or not key:
            raise InvalidConfigurationException("dsn key %r is not a name" % (key,), "dsn", key)
        out[key] = value if isinstance(value, str) else str(value)
    return out


def format_dsn(params):
    """A dict of libpq keywords as a libpq ``key=value`` string, quoting values as libpq
    requires (empty, spaces, quotes or backslashes)."""
    return " ".join("%s=%s" % (key, _quote_value(value)) for key, value in params.items())


def _quote_value(value):
    value = str(value)
    if value and not re.search(r"[\s'\\]", value):
        return value
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


def is_secret_key(key):
    """True when ``key`` names a secret (``password``, ``sslpassword``, ``token``...)."""
    key = str(key).lower()
    return any(part in key for part in SECRET_KEY_PARTS)


def redact_dsn(dsn):
    """``dsn`` as shown anywhere: a dict (hermes or libpq keys) as a copy with every secret
    value :data:`REDACTED`; a libpq string or URI, parsed or not, with its password hidden;
    anything else unchanged (it holds no password to hide). Never raises."""
    if isinstance(dsn, Mapping):
        return {key: REDACTED if is_secret_key(key) and value is not None else value
                for key, value in dsn.items()}
    if not isinstance(dsn, str):
        return dsn
    text = _URI_PASSWORD.sub(r"\1%s\3" % REDACTED, dsn)
    return _PASSWORD_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


def redact_text(text, secrets=()):
    """``text`` with whatever looks like a password (libpq ``password=``, URI userinfo,
    ``'password': ...`` in reprs and JSON) and each of ``secrets`` :data:`REDACTED`."""
    for pattern, replacement in _TEXT_PATTERNS:
        text = pattern.sub(replacement, text)
    return scrub(text, sorted((str(s) for s in secrets if s), key=len, reverse=True))


def secret_fragments(dsn):
    """The strings that must never appear in a message about ``dsn``: the password and, when
    the DSN is malformed, each word of what looks like one (libpq quotes fragments of a
    malformed DSN in its error messages)."""
    if isinstance(dsn, Mapping):
        return [str(value) for key, value in dsn.items()
                if is_secret_key(key) and value not in (None, "")]
    found = [m.group(2) for m in _PASSWORD_VALUE.finditer(dsn or "")]
    found += [m.group(2) for m in _URI_PASSWORD.finditer(dsn or "")]
    fragments = set()
    for value in found:
        fragments.add(value)
        fragments.update(value.strip("'").split())
    return sorted((f for f in fragments if f), key=len, reverse=True)


def scrub(text, fragments):
    """``text`` with every fragment replaced by :data:`REDACTED`, in the order given (give
    the longest first)."""
    for fragment in fragments:
        text = text.replace(fragment, REDACTED)
    return text


def quote_ident(name):
    """``name`` as a double-quoted SQL identifier (``a"b`` -> ``"a""b"``).

    A channel called ``a"; DROP TABLE x; --`` stays one channel. Raises
    :class:`InvalidConfigurationException` for a non-string, an empty name, a NUL byte, or a
    name longer than :data:`MAX_IDENTIFIER_BYTES` (the server would silently truncate it,
    and ``pg_notify`` to the full name would then fail)."""
    if not isinstance(name, str) or not name:
        raise InvalidConfigurationException(
            "channel name must be a non-empty string, got %r" % (name,), "channel", name)
    if "\x00" in name:
        raise InvalidConfigurationException(
            "channel name %r contains a NUL byte" % (name,), "channel", name)
    if len(name.encode("utf-8")) > MAX_IDENTIFIER_BYTES:
        raise InvalidConfigurationException(
            "channel name %r is longer than %d bytes" % (name, MAX_IDENTIFIER_BYTES),
            "channel", name)
    return '"%s"' % name.replace('"', '""')


# -- host resolution (pure: the caller supplies the resolver) -------------------------------
#
# libpq resolves ``host`` names with a blocking getaddrinfo() inside the C library, which
# would freeze the whole gevent hub for the resolver's timeout. The connector resolves the
# names itself, off the hub, and hands libpq the addresses as ``hostaddr``; ``host`` stays
# as given, so TLS still verifies the server's name and ~/.pgpass still matches it.

def host_entries(params, environ):
    """The ``(host, port)`` entries libpq would try for ``params`` (libpq keywords, with
    ``PGHOST``/``PGPORT`` from ``environ`` as fallbacks), or () when nothing needs resolving
    here: no host (the default unix socket), a ``service`` (hosts come from a service file)
    or ``hostaddr`` given already."""
    if params.get("hostaddr") or params.get("service") or (
            environ.get("PGHOSTADDR") or environ.get("PGSERVICE")):
        return ()
    hosts = (params.get("host") or environ.get("PGHOST") or "").split(",")
    if hosts == [""]:
        return ()
    ports = (params.get("port") or environ.get("PGPORT") or "").split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    if len(ports) != len(hosts):
        return ()  # libpq itself reports the mismatch, naming both lists
    return tuple(zip(hosts, ports, strict=True))


def is_socket_path(host):
    """True for a unix-socket directory (``/run/postgresql``) or an abstract one (``@x``)."""
    return host.startswith(("/", "@"))


def is_address(host):
    """True when ``host`` is an IPv4 or IPv6 literal (nothing to resolve)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def with_hostaddr(params, resolve, environ):
    """A copy of ``params`` with ``hostaddr`` set from ``resolve(host, port) -> [address]``.

    A name with several addresses becomes several entries (``host`` and ``port`` repeated),
    so libpq still tries each address in turn, as it does for a name it resolves itself.
    Socket paths keep an empty ``hostaddr`` entry. An entry whose name cannot be resolved is
    left out, as libpq skips it; when none is left, the first resolver error is raised.
    ``params`` is returned unchanged when :func:`host_entries` finds nothing to resolve.
    """
    entries = host_entries(params, environ)
    if not any(host and not is_socket_path(host) and not is_address(host)
               for host, _port in entries):
        return params
    hosts, addrs, ports, errors = [], [], [], []
    for host, port in entries:
        if not host or is_socket_path(host) or is_address(host):
            found = [host if host and is_address(host) else ""]
        else:
            try:
                found = list(dict.fromkeys(resolve(host, port or None)))
            except OSError as exc:
                errors.append(exc)
                continue
            if not found:
                errors.append(OSError("host %s has no address" % host))
                continue
        hosts += [host] * len(found)
        addrs += found
        ports += [port] * len(found)
    if not hosts:
        raise errors[0]
    out = dict(params, host=",".join(hosts), hostaddr=",".join(addrs))
    if any(ports):
        out["port"] = ",".join(ports)
    return out


# -- one host at a time (pure: the connector tries each attempt in turn) -------------------
#
# libpq moves on to the next host of ``host=a,b`` only when a connection cannot be made (or
# the server's session does not fit ``target_session_attrs``), not when a host accepts TCP
# and then closes the connection during startup, as a TCP proxy or a load balancer in front
# of a dead server does: the whole connect fails there. The connector therefore hands libpq
# one host at a time, each with its own ``connect_timeout``.

#: ``target_session_attrs`` values tried in two passes: hosts that fit first, then any.
_PREFERRED = {"prefer-standby": "standby"}


def host_attempts(params, environ, shuffle=None):
    """``params`` (libpq keywords, hosts already resolved by :func:`with_hostaddr`) as a
    list of parameter dicts of one host each, in the order libpq would try them:
    ``target_session_attrs=prefer-standby`` becomes a pass with ``standby`` then one with
    ``any``; ``load_balance_hosts=random`` orders the hosts by ``shuffle(list)`` (in
    place, e.g. ``random.shuffle``). One host, a ``service``, or host and address lists
    libpq would refuse: ``[params]`` unchanged (libpq reports what is wrong)."""
    entries = _entries(params, environ)
    if len(entries) <= 1:
        return [params]
    if params.get("load_balance_hosts") == "random" and shuffle is not None:
        shuffle(entries)
    single = []
    for host, addr, port in entries:
        one = dict(params, host=host)
        one.pop("hostaddr", None)
        one.pop("port", None)
        one.update((key, value) for key, value in (("hostaddr", addr), ("port", port))
                   if value)
        if not host:
            del one["host"]
        single.append(one)
    attrs = params.get("target_session_attrs")
    if attrs in _PREFERRED:
        return [dict(one, target_session_attrs=_PREFERRED[attrs]) for one in single] + [
            dict(one, target_session_attrs="any") for one in single]
    return single


def _entries(params, environ):
    """``[(host, hostaddr, port)]`` of ``params`` (``PGHOST``, ``PGHOSTADDR``, ``PGPORT``
    from ``environ`` as fallbacks); [] when libpq must decide (a service, lists whose
    lengths differ)."""
    if params.get("service") or environ.get("PGSERVICE"):
        return []
    hosts = _split(params.get("host") or environ.get("PGHOST"))
    addrs = _split(params.get("hostaddr") or environ.get("PGHOSTADDR"))
    count = max(len(hosts), len(addrs))
    hosts, addrs = hosts or [""] * count, addrs or [""] * count
    ports = _split(params.get("port") or environ.get("PGPORT")) or [""]
    if len(ports) == 1:
        ports = ports * count
    if not (len(hosts) == len(addrs) == len(ports)):
        return []
    return list(zip(hosts, addrs, ports, strict=True))


def _split(value):
    return value.split(",") if value else []
