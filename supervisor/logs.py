"""Logging of the service: :func:`configure_logging` installs the text or JSON-lines format
and the password redaction of :mod:`instances.logformat` (shared with the worker processes
and ``pgvisor piper``, so every line any pgvisor process writes is formatted and redacted
alike; import those names from there).

Every record leaving pgvisor's handler goes through ``RedactingFilter`` first, which
scrubs passwords from the message, its arguments, string ``extra`` values and the traceback:
``password=...`` in libpq strings, ``scheme://user:secret@host`` URIs, ``"password": "..."``
dict reprs, and every value given to ``register_secret`` (the service registers the
database password and the HTTP token at start-up).

Text format::

    2026-11-22T14:00:00.123Z INFO  supervisor.actor action=instance.restart instance=river  restarted

JSON format: one object per line with ``ts``, ``level``, ``logger``, ``action``,
``instance``, ``message``, ``exc`` and every other JSON-serializable ``extra`` key.
Handlers are thread-safe (logging's own lock); redaction is pure string work.
"""
from instances.exceptions import InvalidConfigurationException
from instances.logformat import FORMATS, LEVELS, install


def configure_logging(level="info", fmt="text", stream=None):
    """Install pgvisor's handler first on the root logger; return it. Idempotent.

    Replaces the handler a previous call installed (other handlers stay, after it). ``level`` is one
    of debug/info/warning/error, ``fmt`` text or json; anything else raises
    InvalidConfigurationException. ``stream`` defaults to sys.stderr. Call from the main
    greenlet at start-up or on reload.
    """
    if level not in LEVELS:
        raise InvalidConfigurationException(
            "logging level %r: must be one of %s" % (level, ", ".join(LEVELS)), "level", level)
    if fmt not in FORMATS:
        raise InvalidConfigurationException(
            "log format %r: must be text or json" % (fmt,), "format", fmt)
    return install(level, fmt, stream)
