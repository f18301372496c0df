"""What a repeating failure looks like in the log: an :class:`Episode`, and a
:class:`LogLimiter` for failures that each concern a different item.

An operator reading the log at 3 a.m. needs the change ("database down: ..."), how long it
lasts and how often it was tried, and the end -- not one multi-line warning per attempt
(a monitor probing every second printed 3,600 an hour). So:

* an :class:`Episode` is one run of failures of the same thing (the database, a listener's
  connection): the first failure is logged once, then a summary every
  ``summary_interval`` seconds while it lasts ("still down for 5m12s, 310 attempts, last
  error: ..."), and its end once, with the same figures;
* a :class:`LogLimiter` lets ``burst`` lines per ``window`` seconds through for one key (an
  instance's handler failures) and counts the rest, which the next line let through
  reports ("12 more suppressed").

:func:`one_line` folds a multi-line message (libpq's tab-indented continuation lines) into
one line, and :func:`shorten` truncates what an item's repr may put in a log line.

Pure bookkeeping over an injectable monotonic clock: no logging, no greenlets. One owner
each (not shared between greenlets without the owner's say).
"""
import re
import time

#: Characters of an item's repr kept in a log line.
ITEM_CHARS = 200

_LINE_BREAKS = re.compile(r"\s*[\r\n]+\s*")


def one_line(text):
    """``text`` on one line: each line break and the indentation around it become one
    space (libpq's ``...failed: Connection refused\\n\\tIs the server running...``)."""
    return _LINE_BREAKS.sub(" ", str(text)).strip()


def shorten(text, limit=ITEM_CHARS):
    """``text`` (one line) cut to ``limit`` characters, marked with how much was cut."""
    text = one_line(text)
    if len(text) <= limit:
        return text
    return "%s... (%d more characters)" % (text[:limit], len(text) - limit)


def duration(seconds):
    """``seconds`` for people: ``850ms``, ``12s``, ``5m12s``, ``2h03m``."""
    if seconds < 1:
        return "%dms" % (seconds * 1000)
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % (seconds // 3600, seconds % 3600 // 60)


class Episode:
    """One run of failures of the same thing, from its first failure to its end.

    ``failed(error)`` answers what to log now: ``"started"`` (the first failure: log the
    change), ``"summary"`` (``summary_interval`` passed since the start or the last
    summary) or None (counted only). ``ended()`` closes the episode and answers whether
    one was open. :meth:`describe` gives the figures for either line.
    """

    #: Seconds between two summaries of a failure that goes on.
    summary_interval = 300.0

    def __init__(self, summary_interval=None, clock=time.monotonic):
        if summary_interval is not None:
            self.summary_interval = summary_interval
        self._clock = clock
        #: Failures in the current episode (0: none open).
        self.attempts = 0
        #: The last failure's text (one line), or None.
        self.last_error = None
        self.since = None
        self._summarized = None

    @property
    def open(self):
        return self.attempts > 0

    def failed(self, error):
        now = self._clock()
        self.attempts += 1
        self.last_error = one_line(error)
        if self.attempts == 1:
            self.since = self._summarized = now
            return "started"
        if now - self._summarized >= self.summary_interval:
            self._summarized = now
            return "summary"
        return None

    def ended(self):
        """Close the episode; True if one was open (then log its end with describe())."""
        was_open = self.attempts > 0
        self.attempts, self.since, self._summarized = 0, None, None
        return was_open

    def describe(self):
        """``for 5m12s, 310 attempts, last error: ...`` of the open episode."""
        if not self.open:
            return "no failure"
        return "for %s, %d attempt%s, last error: %s" % (
            duration(self._clock() - self.since), self.attempts,
            "" if self.attempts == 1 else "s", self.last_error)

    def snapshot(self):
        """``(seconds, attempts)`` of the open episode, for the line telling its end."""
        return (self._clock() - self.since if self.open else 0.0), self.attempts


class LogLimiter:
    """At most ``burst`` lines per ``window`` seconds for each key; the rest counted.

    ``allow(key)`` -> ``(allowed, suppressed)``: ``allowed`` says whether to log this one;
    ``suppressed`` (when allowed) is how many lines of ``key`` were held back since the
    last one logged, to say in this line. Keys are kept while their window is open.
    """

    #: Lines let through per key and window.
    burst = 5
    #: Seconds of one window.
    window = 60.0

    def __init__(self, burst=None, window=None, clock=time.monotonic):
        if burst is not None:
            self.burst = burst
        if window is not None:
            self.window = window
        self._clock = clock
        self._keys = {}  # key -> [window start, lines logged in it, suppressed]

    def allow(self, key):
        now = self._clock()
        entry = self._keys.get(key)
        if entry is None or now - entry[0] >= self.window:
            suppressed = entry[2] if entry is not None else 0
            self._keys[key] = [now, 1, 0]
            self._forget_old(now)
            return True, suppressed
        if entry[1] < self.burst:
            entry[1] += 1
            suppressed, entry[2] = entry[2], 0
            return True, suppressed
        entry[2] += 1
        return False, 0

    def _forget_old(self, now):
        if len(self._keys) > 1000:  # many keys: drop closed windows with nothing held
            for key in [k for k, e in self._keys.items()
                        if now - e[0] >= self.window and not e[2]]:
                del self._keys[key]
