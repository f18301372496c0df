"""The restart budget: how many automatic restarts each instance may spend per window.

The only module that imports ``limits``. A :class:`RestartBudget` keeps one moving window
per instance name (``restart_max_rate``, default ``"1/m"``: one automatic restart in any
60 seconds), with a per-instance override (``InstanceSpec.restart_max_rate``). Rates are
cyme's short forms (``"1/m"``, ``"10/s"``, ``"2/h"``) or limits' strings (``"3 per 5
minutes"``), parsed by :func:`instances.rates.parse_rate`; a count of 0 means no automatic
restarts at all. Keyed by the instance *name*, never by an object (cyme keyed by a bound
method, which on Python 3 gave every pass a fresh bucket and never tripped).

Time comes from an injected clock (default :func:`time.monotonic`, immune to wall-clock
jumps). limits' ``MemoryStorage`` reads ``time.time()`` itself and expires entries in a
background ``threading.Timer``; :class:`_ClockedStorage` is the one seam: it reads the
injected clock, trims expired entries when it writes, and runs no timer.

Not thread-safe and never blocks: use it from the supervisor's own greenlet.
"""
import time

from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter

from instances.rates import parse_rate
from supervisor.config.settings import BY_NAME


class _ClockedStorage(MemoryStorage):
    """limits' memory storage for the moving-window strategy, on an injected clock.

    Overrides the two moving-window calls (``acquire_entry``, ``get_moving_window``); the
    rest (``clear``, ``reset``, ``check``) is MemoryStorage's. ``events[key]`` is a list of
    acquisition times, newest first, trimmed to the window on every write. An entry counts
    for exactly ``expiry`` seconds: "1/m" allows the next restart 60 s after the last.
    """

    def __init__(self, clock):
        super().__init__()
        self.timer.cancel()  # no expiry thread: acquire_entry trims what it reads
        self._clock = clock

    def _in_window(self, key, expiry, now):
        return [at for at in self.events.get(key, ()) if at > now - expiry]

    def acquire_entry(self, key, limit, expiry, amount=1):
        now = self._clock()
        events = self._in_window(key, expiry, now)
        allowed = len(events) + amount <= limit
        if allowed:
            events[:0] = [now] * amount
        self.events[key] = events
        return allowed

    def get_moving_window(self, key, limit, expiry):
        now = self._clock()
        events = self._in_window(key, expiry, now)
        return (events[-1] if events else now), len(events)


class RestartBudget:
    """Per-instance restart allowance over a moving window.

    ``default_rate`` applies to instances without an override; ``clock`` returns seconds
    (monotonic). Raises InvalidConfigurationException (naming ``restart_max_rate`` and the
    value) for a rate it cannot parse.
    """

    #: Automatic restarts allowed per instance: "N/s|m|h|d" or a limits string (the
    #: settings table's ``supervisor.restart_max_rate``).
    default_rate = BY_NAME["supervisor.restart_max_rate"].default
    #: Field named in errors about an invalid rate.
    field = "restart_max_rate"

    def __init__(self, default_rate=None, clock=None):
        self._clock = clock or time.monotonic
        self._limiter = MovingWindowRateLimiter(_ClockedStorage(self._clock))
        self._items = {}  # rate text -> RateLimitItem (parsed once)
        self._current = {}  # name -> the item its window is kept under
        self.default_rate = default_rate if default_rate is not None else self.default_rate
        self._default = self._item(self.default_rate)

    def _item(self, rate):
        if rate is None:
            return self._default
        item = self._items.get(rate)
        if item is None:
            count, seconds = parse_rate(rate, self.field)
            item = self._items[rate] = RateLimitItemPerSecond(count, seconds)
        return item

    def _window(self, name, rate):
        """The item for ``name`` at ``rate``; a changed rate starts a fresh window."""
        item = self._item(rate)
        previous = self._current.get(name)
        if previous is not None and previous != item:
            self._limiter.clear(previous, name)
        self._current[name] = item
        return item

    def try_spend(self, name, rate=None):
        """Spend one restart of ``name``'s budget: True if allowed (and counted), False
        when the window is full or the rate's count is 0. ``rate`` overrides the default
        for this instance (pass the spec's ``restart_max_rate``; None: the default)."""
        item = self._window(name, rate)
        return item.amount > 0 and self._limiter.hit(item, name)

    def remaining(self, name, rate=None):
        """Restarts ``name`` may still spend now (without spending any)."""
        item = self._current.get(name) if rate is None else self._item(rate)
        item = item or self._default
        return max(0, self._limiter.get_window_stats(item, name).remaining)

    def reset(self, name):
        """Give ``name`` its full budget again (an operator's restart or enable)."""
        item = self._current.get(name)
        if item is not None:
            self._limiter.clear(item, name)

    def forget(self, name):
        """Drop everything kept for ``name`` (the instance was removed)."""
        self.reset(name)
        self._current.pop(name, None)

    def __contains__(self, name):
        return name in self._current

    def __repr__(self):
        return "RestartBudget(default_rate=%r, instances=%d)" % (
            self.default_rate, len(self._current))
