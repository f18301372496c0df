"""The log line formats of pgvisor and the redaction of every record, shared by the service
(:mod:`supervisor.logs` installs them) and its worker processes
(:mod:`instances.isolation.child`, which gets :func:`current` from its parent).

Every record leaving pgvisor's handler goes through :class:`RedactingFilter` first, which
scrubs passwords from the message, its arguments, string ``extra`` values and the traceback
(:func:`instances.dsn.redact_text`) and every value given to :func:`register_secret`.
Text: ``<ts> <LEVEL> <logger> action=.. instance=..  <message>``; JSON: one object per
line. Handlers are thread-safe (logging's own lock); redaction is pure string work.
"""
import json
import logging
import sys
import time

from instances.dsn import redact_text

#: Level names and their numbers.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO,
          "warning": logging.WARNING, "error": logging.ERROR}
FORMATS = ("text", "json")


_secrets = set()


def register_secret(value):
    """Redact ``value`` wherever it appears in a log record from now on. Empty: ignored."""
    if value:
        _secrets.add(str(value))


def unregister_secret(value):
    """Stop redacting ``value`` (for tests and credential rotation)."""
    _secrets.discard(str(value))


def redact(text):
    """Return ``text`` with passwords, URI credentials and registered secrets masked
    (:func:`instances.dsn.redact_text`)."""
    return redact_text(text, _secrets)


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record in place; never drops a record.

    The message is formatted with its args and the result redacted (``args`` become
    empty); the traceback is formatted into ``exc_text`` and redacted; string ``extra``
    values are redacted too. Called under the handler's lock, from any thread or greenlet.
    """

    _exc_formatter = logging.Formatter()

    def filter(self, record):
        try:
            message = record.getMessage()
        except Exception as exc:  # a bad format string still reaches the log, without
            # its arguments: nothing says which of them holds a secret
            message = "%s (arguments not shown: %s)" % (record.msg, exc)
        record.msg, record.args = redact(str(message)), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def _timestamp(record):
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return "%s.%03dZ" % (seconds, int(record.msecs))


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> action=.. instance=..  <message>`` then the traceback."""

    def format(self, record):
        keys = "".join(" %s=%s" % (key, getattr(record, key)) for key in ("action", "instance")
                       if getattr(record, key, None) is not None)
        line = "%s %-5s %s%s  %s" % (_timestamp(record), record.levelname, record.name,
                                     keys, record.getMessage())
        exc = _exception_text(self, record)
        return line + "\n" + exc if exc else line


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record):
        obj = {"ts": _timestamp(record), "level": record.levelname, "logger": record.name,
               "action": getattr(record, "action", None),
               "instance": getattr(record, "instance", None),
               "message": record.getMessage(), "exc": _exception_text(self, record) or None}
        for key, value in vars(record).items():
            if key in _STANDARD or key in obj:
                continue
            try:
                json.dumps(value)
            except (TypeError, ValueError):
                continue
            obj[key] = value
        return json.dumps(obj, default=str)


def _exception_text(formatter, record):
    if record.exc_info and not record.exc_text:
        record.exc_text = formatter.formatException(record.exc_info)
    parts = [p for p in (record.exc_text, record.stack_info) if p]
    return "\n".join(parts)


def install(level="info", fmt="text", stream=None):
    """Install pgvisor's handler (format ``fmt``, redacting) first on the root logger,
    replacing one a previous call installed; set the root level; return the handler.
    ``level`` and ``fmt`` must be valid (see LEVELS, FORMATS)."""
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter())
    handler._pgvisor = fmt
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_pgvisor", False)]:
        root.removeHandler(old)
    # First in line: the filter rewrites the record in place, so handlers installed by
    # others (error reporters, pytest's capture) see it redacted too.
    root.handlers.insert(0, handler)
    root.setLevel(LEVELS[level])
    return handler


def current():
    """What a worker process needs to log like this one: ``{"level", "format",
    "secrets"}`` (send it over a private pipe, never on a command line)."""
    root = logging.getLogger()
    fmt = next((h._pgvisor for h in root.handlers if getattr(h, "_pgvisor", False)), "text")
    level = next((name for name, number in LEVELS.items()
                  if number == root.getEffectiveLevel()), "warning")
    return {"level": level, "format": fmt if fmt in FORMATS else "text",
            "secrets": sorted(_secrets)}


def install_from(settings):
    """:func:`install` with a :func:`current` dict from a parent (None: warnings, text),
    registering its secrets first."""
    settings = settings or {}
    for secret in settings.get("secrets", ()):
        register_secret(secret)
    level = settings.get("level") if settings.get("level") in LEVELS else "warning"
    fmt = settings.get("format") if settings.get("format") in FORMATS else "text"
    return install(level, fmt)
