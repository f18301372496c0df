"""Pure DSN helpers: hermes dicts, libpq keyword strings, password redaction, identifiers.

Nothing here talks to a server or imports the driver; parsing a libpq *string* is done by
libpq itself in :func:`instances.connectors.parse_dsn`. These functions are safe to call
from any greenlet and never block.
"""
import re

from instances.exceptions import InvalidConfigurationException

#: What a password is shown as in reprs, logs and messages.
REDACTED = "***"

#: Longest identifier Postgres keeps (NAMEDATALEN - 1, in bytes); longer ones are truncated.
MAX_IDENTIFIER_BYTES = 63

#: hermes-style dict keys and their libpq names.
HERMES_KEYS = {"database": "dbname"}

# A password inside a DSN string that libpq could not parse: ``password=value`` (quoted or
# up to the next ``key=``) or the userinfo of a URI. Only used to hide it, never to connect.
_PASSWORD_VALUE = re.compile(
    r"(password\s*=\s*)('(?:[^'\\]|\\.)*'?|.*?)(?=\s+\w+\s*=|\s*$)", re.IGNORECASE | re.DOTALL)
_URI_PASSWORD = re.compile(r"(://[^:/@\s]*:)([^@]*)(@)")


def normalize_dict(params):
    """A hermes dict (``database``/``host``/``port``/``user``/``password``, or libpq keys such
    as ``dbname``) as a dict of libpq keywords to strings; None values are dropped."""
    if not isinstance(params, dict):
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


def redact_params(params):
    """A copy of a libpq keyword dict with the password replaced by :data:`REDACTED`."""
    return {key: (REDACTED if key == "password" else value) for key, value in params.items()}


def redact_unparsed(text):
    """Hide the password in a DSN string that could not be parsed (best effort, regex)."""
    text = _URI_PASSWORD.sub(r"\1%s\3" % REDACTED, text)
    return _PASSWORD_VALUE.sub(lambda m: m.group(1) + REDACTED, text)


def secret_fragments(dsn):
    """The strings that must never appear in a message about ``dsn``: the password and, when
    the DSN is malformed, each word of what looks like one (libpq quotes fragments of a
    malformed DSN in its error messages)."""
    if isinstance(dsn, dict):
        password = dsn.get("password")
        return [str(password)] if password not in (None, "") else []
    found = [m.group(2) for m in _PASSWORD_VALUE.finditer(dsn or "")]
    found += [m.group(2) for m in _URI_PASSWORD.finditer(dsn or "")]
    fragments = set()
    for value in found:
        fragments.add(value)
        fragments.update(value.strip("'").split())
    return sorted((f for f in fragments if f), key=len, reverse=True)


def scrub(text, fragments):
    """``text`` with every fragment replaced by :data:`REDACTED` (longest first)."""
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
