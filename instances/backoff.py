"""The :class:`Backoff`: exponential reconnect delays with a cap, jitter and a reset.

Pure policy: no clock, no sleeping, no greenlets. Callers sleep the delay themselves (the
component loop does so interruptibly). hermes never reset its backoff after a successful
reconnect, so a service that had one bad night waited 16 s on every later blip; here the
owner calls :meth:`Backoff.reset` after every success.
"""
import random

from instances.exceptions import InvalidConfigurationException


class Backoff:
    """Delays ``initial, initial*factor, ...`` capped at ``max_delay``, each +/- ``jitter``.

    ``rng`` is a callable returning a float in ``[0, 1)`` (``random.random``); inject a
    fixed one for deterministic tests. Not shared between greenlets: one owner each.

    >>> b = Backoff(jitter=0)
    >>> [b.next() for _ in range(7)]
    [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0]
    """

    #: Seconds of the first delay after a failure.
    initial = 1.0
    #: Multiplier applied to the delay after each further failure.
    factor = 2.0
    #: Seconds: the delay never grows beyond this (before jitter).
    max_delay = 32.0
    #: Fraction of the delay added or removed at random (0.1 = +/-10 %); 0 disables it.
    jitter = 0.1

    def __init__(self, initial=None, factor=None, max_delay=None, jitter=None, rng=None):
        self.initial = float(self.initial if initial is None else initial)
        self.factor = float(self.factor if factor is None else factor)
        self.max_delay = float(self.max_delay if max_delay is None else max_delay)
        self.jitter = float(self.jitter if jitter is None else jitter)
        self._rng = random.random if rng is None else rng
        #: Failures since the last :meth:`reset` (0 after a success).
        self.attempts = 0
        self._validate()

    def _validate(self):
        checks = (
            ("initial", self.initial, self.initial >= 0),
            ("factor", self.factor, self.factor >= 1),
            ("max_delay", self.max_delay, self.max_delay >= self.initial),
            ("jitter", self.jitter, 0 <= self.jitter < 1),
        )
        for field, value, ok in checks:
            if not ok:
                raise InvalidConfigurationException(
                    "invalid backoff %s: %r (initial=%r, max_delay=%r)"
                    % (field, value, self.initial, self.max_delay), field, value)

    def peek(self):
        """The base delay (seconds, no jitter) :meth:`next` would use now."""
        if self.attempts == 0:
            return self.initial
        # min() per step keeps the float from overflowing after many failures.
        delay = self.initial
        for _ in range(self.attempts):
            delay = min(delay * self.factor, self.max_delay)
            if delay >= self.max_delay:
                break
        return delay

    def next(self):
        """Count one failure and return the seconds to wait before the next attempt."""
        delay = self.peek()
        self.attempts += 1
        if self.jitter:
            delay *= 1.0 + self.jitter * (2.0 * self._rng() - 1.0)
        return max(0.0, delay)

    def reset(self):
        """Forget the failures: the next delay is ``initial`` again. Call after a success."""
        self.attempts = 0

    def __repr__(self):
        return "<Backoff attempts=%d next=%.3gs max=%.3gs>" % (
            self.attempts, self.peek(), self.max_delay)
