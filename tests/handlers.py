"""Importable handlers for tests (``tests.handlers:record`` etc.).

Handlers record what they saw in module-level lists so a test can assert on them; call
:func:`reset` at the start of a test.
"""
import os
import signal
import time

import gevent

seen = []
failures = []
blocking = {"event": None}
#: ``tests.handlers:into_<key>`` records into ``seen_by[key]`` (one handler per instance).
seen_by = {}

if os.environ.get("PGVISOR_TEST_RETRY_DELAY"):  # a process a test started (tests/conftest.py)
    from instances.processors import ProcessorPool
    ProcessorPool.retry_delay = float(os.environ["PGVISOR_TEST_RETRY_DELAY"])

if os.environ.get("PGVISOR_TEST_SPOOL_POLL"):  # a worker process of test_isolation
    from instances.spool import FileQueue
    FileQueue.watched_poll_interval = float(os.environ["PGVISOR_TEST_SPOOL_POLL"])


def reset():
    del seen[:]
    del failures[:]
    blocking["event"] = None
    seen_by.clear()


def __getattr__(name):
    """``into_<key>``: a handler recording into ``seen_by[key]`` (made on first import)."""
    if not name.startswith("into_"):
        raise AttributeError(name)
    key = name[len("into_"):]

    def into(notification):
        seen_by.setdefault(key, []).append(notification)

    into.__name__ = name
    globals()[name] = into
    return into


def record(notification):
    """Remember every notification."""
    seen.append(notification)


def fail_on_bad(notification):
    """Raise for payloads starting with 'bad', record the rest."""
    if (notification.payload or "").startswith("bad"):
        failures.append(notification)
        raise ValueError("bad payload %r" % notification.payload)
    seen.append(notification)


def block(notification):
    """Record, then block until the test sets ``blocking['event']``."""
    seen.append(notification)
    event = blocking["event"]
    if event is not None:
        event.wait()


def hold_on_hold(notification):
    """Record; a payload starting with 'hold' blocks until ``blocking['event']`` is set."""
    seen.append(notification)
    event = blocking["event"]
    if event is not None and (notification.payload or "").startswith("hold"):
        event.wait()


def flaky(notification):
    """Fail the first two calls for each payload (a database blip), then record it."""
    failures.append(notification)
    if sum(1 for n in failures if n.payload == notification.payload) <= 2:
        raise ConnectionError("blip on %r" % notification.payload)
    seen.append(notification)


def noop(notification):
    """Do nothing (benchmarks, smoke tests)."""


# -- handlers for worker processes (tests/integration/test_isolation.py and friends) ------
# They run in other processes: they report by appending lines to the file named by the
# environment variable PGVISOR_TEST_OUT (children inherit the test's environment).

def _payload(message):
    return message.get("payload", "") if isinstance(message, dict) else (message.payload or "")


def _append(line):
    with open(os.environ["PGVISOR_TEST_OUT"], "a") as out:
        out.write(line + "\n")


def job(message):
    """Append ``<payload> <pid>`` to $PGVISOR_TEST_OUT, unless the payload starts with:
    ``bad`` (raise), ``crash`` (SIGKILL this process), ``spin`` (hold the CPU forever),
    ``hang`` (block forever while $PGVISOR_TEST_HANG is set)."""
    payload = _payload(message)
    if payload.startswith("bad"):
        raise ValueError("bad payload %r" % payload)
    if payload.startswith("crash"):
        os.kill(os.getpid(), signal.SIGKILL)
    if payload.startswith("spin"):
        while True:
            pass
    if payload.startswith("hang") and os.environ.get("PGVISOR_TEST_HANG"):
        gevent.sleep(3600)
    _append("%s %d" % (payload or "catch_up", os.getpid()))


def burn_5ms(message):
    """About 5 ms of pure-Python CPU work (a fixed amount of work, not of wall time, so
    a process that shares its core takes longer), never yielding: a CPU-bound handler."""
    total = 0
    for i in range(55000):
        total += i * i % 7
    return total


def burn_5ms_timed(message):
    """:func:`burn_5ms`, reporting ``<payload> <pid> <start> <end>`` (CLOCK_MONOTONIC, the
    same clock in every process) to the test's out file."""
    started = time.monotonic()
    burn_5ms(message)
    _append("%s %d %.6f %.6f" % (_payload(message), os.getpid(), started, time.monotonic()))


def shout(message):
    """Piper handler: the message with its payload upper-cased; raise for ``bad`` payloads."""
    payload = _payload(message)
    if payload.startswith("bad"):
        raise ValueError("bad payload %r" % payload)
    return {"payload": payload.upper(), "source": message["id"] if isinstance(
        message, dict) else message.id}


def bulk_job(messages):
    """A batch handler for other processes: one ``batch <count> <pid> <payloads>`` line
    per call to $PGVISOR_TEST_OUT, after raising if any payload starts with ``bad``."""
    payloads = [_payload(message) or "catch_up" for message in messages]
    if any(payload.startswith("bad") for payload in payloads):
        raise ValueError("bad payload in %r" % payloads)
    _append("batch %d %d %s" % (len(payloads), os.getpid(), " ".join(payloads)))
