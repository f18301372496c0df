"""What the ``pgvisor`` command prints: exit codes, errors, human tables and ``--json``.

Every text leaving the CLI goes through :func:`instances.logformat.redact` (passwords in DSNs,
registered secrets). Tables are plain aligned columns, one row per line, for humans; the
``--json`` form is one JSON document on stdout, for scripts. Errors go to stderr, one line
per problem, prefixed ``pgvisor:``.
"""
import json
import sys

from instances import logformat

#: Exit codes of every ``pgvisor`` command (docs/cli.rst lists them).
OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
UNKNOWN_INSTANCE = 4


class CliError(Exception):
    """Ends a command: ``message`` (one or more lines) to stderr and exit ``code``."""

    def __init__(self, message, code=FAILED):
        super().__init__(message)
        self.code = code


def error(message, stream=None):
    """Print ``message`` to stderr, each line prefixed ``pgvisor:``, redacted."""
    stream = sys.stderr if stream is None else stream
    for line in str(message).splitlines() or [""]:
        print("pgvisor: %s" % logformat.redact(line), file=stream)


def say(text="", stream=None):
    """Print ``text`` (redacted) to stdout."""
    print(logformat.redact(str(text)), file=sys.stdout if stream is None else stream)


def emit_json(value):
    say(json.dumps(value, indent=2, sort_keys=True, default=str))


def table(rows, columns, empty="(none)"):
    """``rows`` (dicts) as aligned text columns; ``columns`` is ``[(header, key or
    function(row))]``."""
    cells = [[_cell(row, key) for _, key in columns] for row in rows]
    if not cells:
        return empty
    headers = [header for header, _ in columns]
    widths = [max(len(text) for text in column) for column in zip(headers, *cells, strict=True)]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True))
             .rstrip() for line in [headers] + cells]
    return "\n".join(lines)


def _cell(row, key):
    value = key(row) if callable(key) else row.get(key)
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, float):
        return "%.1f" % value
    return str(value).replace("\n", " ")


def key_values(data):
    """A dict as ``key: value`` lines (nested dicts in JSON), keys aligned."""
    width = max((len(key) for key in data), default=0)
    lines = []
    for key, value in data.items():
        if isinstance(value, (dict, list)) and not (isinstance(value, list) and all(
                isinstance(item, str) for item in value)):
            shown = json.dumps(value, sort_keys=True, default=str)
        else:
            shown = _cell({key: value}, key)
        lines.append("%s  %s" % ((key + ":").ljust(width + 1), shown))
    return "\n".join(lines)
