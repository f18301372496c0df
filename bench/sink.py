"""The one trivial handler every contender calls, and the statistics of what it saw.

Every contender (raw psycopg2, asyncpg, pgvisor) calls :func:`handle` once per notification
with an object that has ``.payload`` (psycopg2's ``Notify``, pgvisor's ``Notification``, the
asyncpg contender's :class:`Note`), so the ratios measure the framework, not the handler.
The handler records ``(time.time(), payload)``; a producer payload starts with its send
timestamp (see :mod:`bench.producer`), from which latencies are computed afterwards.

Concurrency: one process, one thread; the contender sets :data:`state` up before the first
notification arrives. ``state.done`` is called once, from the handler, when ``expected``
notifications were handled.
"""
import time

_time = time.time
_cpu = time.process_time


class _State:
    def __init__(self):
        self.reset(0, lambda: None)

    def reset(self, expected, done):
        """Forget what was recorded; call ``done()`` after ``expected`` notifications."""
        self.expected = expected
        self.done = done
        self.records = []
        self.first_received = None
        self.cpu = None  # process CPU seconds at the first and at the last record


#: The sink of this process (one contender per process).
state = _State()


class Note:
    """A notification as the asyncpg contender hands it on (pgvisor makes its own)."""

    __slots__ = ("channel", "payload", "received_at")

    def __init__(self, channel, payload, received_at):
        self.channel, self.payload, self.received_at = channel, payload, received_at


def handle(notification):
    """The trivial handler: record the time and the payload; signal when all arrived.

    Empty payloads (pgvisor's ``catch_up``) are ignored. Never blocks, never yields."""
    payload = notification.payload
    if not payload:
        return
    records = state.records
    if not records:
        state.first_received = getattr(notification, "received_at", None)
        state.cpu = [_cpu(), None]
    records.append((_time(), payload))
    if len(records) == state.expected:
        state.cpu[1] = _cpu()
        state.done()


def sent_at(payload):
    """The producer's send timestamp (epoch seconds) carried by ``payload``."""
    return float(payload.split(":", 1)[0])


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an ascending list (fraction in 0..1)."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, int(round(fraction * len(sorted_values))) - 1))
    return sorted_values[index]


def summary(first_received=None):
    """The figures of one run, from :data:`state`, as a JSON-ready dict.

    ``drain_rate``: notifications per second from the first received (the contender's
    ``first_received``, else the first handled) to the last handled. ``e2e_rate``: from the
    first send timestamp to the last handled. Latencies in milliseconds, send to handler.
    ``cpu_us``: the process's CPU time (every thread) from the first record to the last,
    per notification: what a notification costs, whatever the machine's load did to the
    rates. ``first_handled_ms``: from the first received to the first handled (a spool's
    first file, written and claimed, is in it).
    """
    records = state.records
    if not records:
        return {"count": 0}
    cpu = state.cpu
    cpu_us = (None if cpu is None or cpu[1] is None or len(records) < 2
              else (cpu[1] - cpu[0]) * 1e6 / (len(records) - 1))
    first = first_received or state.first_received or records[0][0]
    last = records[-1][0]
    sends = [sent_at(payload) for _, payload in records]
    latencies = sorted((handled - sent) * 1000.0 for (handled, _), sent in zip(records, sends, strict=True))
    span = max(last - first, 1e-9)
    return {
        "count": len(records),
        "drain_rate": len(records) / span,
        "e2e_rate": len(records) / max(last - min(sends), 1e-9),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1],
        "cpu_us": cpu_us,
        "first_handled_ms": (records[0][0] - first) * 1000.0,
    }
