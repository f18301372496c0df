"""Rate strings: parse ``restart_max_rate`` values into (count, seconds).

Accepts cyme's short forms (``"1/m"``, ``"10/s"``, ``"2/h"``, ``"5/d"``) and the strings of
the ``limits`` library (``"1 per minute"``, ``"10/second"``, ``"3 per 5 minutes"``,
``"2/10 seconds"``). Pure: no I/O, no third-party imports, so specs and config can validate a
rate without importing the restart-budget adapter.
"""
import re

from instances.exceptions import InvalidConfigurationException

_UNITS = {
    "s": 1, "sec": 1, "second": 1,
    "m": 60, "min": 60, "minute": 60,
    "h": 3600, "hr": 3600, "hour": 3600,
    "d": 86400, "day": 86400,
    "month": 30 * 86400, "year": 365 * 86400,
}

_RATE = re.compile(
    r"^\s*(?P<count>\d+)\s*(?:/|per)\s*(?P<multiple>\d+)?\s*(?P<unit>[a-z]+?)s?\s*$",
    re.IGNORECASE,
)


def parse_rate(text, field="restart_max_rate"):
    """Return ``(count, seconds)`` for a rate string; raise InvalidConfigurationException.

    ``"1/m"`` -> ``(1, 60)``; ``"3 per 5 minutes"`` -> ``(3, 300)``. A count of 0 is
    allowed and means "no automatic restarts".
    """
    if not isinstance(text, str):
        raise InvalidConfigurationException(
            "%s must be a rate string such as '1/m', got %r" % (field, text), field, text)
    match = _RATE.match(text)
    unit = match and match.group("unit").lower()
    if not match or unit not in _UNITS:
        raise InvalidConfigurationException(
            "%s=%r is not a rate: use N/s, N/m, N/h, N/d or 'N per [M] second|minute|hour|day'"
            % (field, text), field, text)
    multiple = int(match.group("multiple") or 1)
    if multiple == 0:
        raise InvalidConfigurationException(
            "%s=%r: the period must be longer than zero" % (field, text), field, text)
    return int(match.group("count")), multiple * _UNITS[unit]
