"""The line protocol between the orchestrator (:mod:`bench.run`) and a contender process.

A contender is started as ``python [-m gevent.monkey --module] bench.contender_X ARGS``::

    contender: connects, LISTENs, then prints   READY
    orchestrator: produces the load (bench.producer)
    contender: handles `--expected` notifications, then prints   RESULT {json}
               and exits 0 (on `--timeout` it prints what it has with "timeout": true)

With :data:`HANDSHAKE` set in its environment (:mod:`bench.instructions`), a contender also
prints ``DRAINED`` once it handled what it expected, and waits for a line on stdin before
it shuts down: the orchestrator switches callgrind's instrumentation off meanwhile, so
what it counts is the drain, not the start-up, the shutdown or the summary.

Everything else a contender writes goes to stderr (the orchestrator keeps it in a log file).
"""
import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile


def arguments(description, extra=None):
    """Parse the common contender arguments (plus ``extra(parser)`` ones)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dsn", required=True, help="libpq DSN of the benchmark database")
    parser.add_argument("--channel", default="bench")
    parser.add_argument("--expected", type=int, required=True,
                        help="notifications to handle before reporting")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for them before reporting what arrived")
    if extra is not None:
        extra(parser)
    return parser.parse_args()


def ready():
    """Tell the orchestrator the contender listens (it starts producing then)."""
    sys.stdout.write("READY\n")
    sys.stdout.flush()


#: The environment variable that asks a contender for the ``DRAINED`` handshake.
HANDSHAKE = "PGVISOR_BENCH_HANDSHAKE"


def counting():
    """True under :mod:`bench.instructions`: valgrind runs the contender some 50 times
    slower, so pgvisor's own hub monitor would see every read as a blocked hub and log its
    stacks (which a real run never does); the contenders turn it off then."""
    return bool(os.environ.get(HANDSHAKE))


def drained():
    """With :data:`HANDSHAKE` set: say ``DRAINED`` and wait for the orchestrator's line
    (blocking the whole process, on purpose: nothing else should run meanwhile)."""
    if os.environ.get(HANDSHAKE):
        sys.stdout.write("DRAINED\n")
        sys.stdout.flush()
        sys.stdin.readline()


def result(figures, timed_out=False, **more):
    """Print the contender's figures as the last line."""
    figures = dict(figures, timeout=timed_out, **more)
    sys.stdout.write("RESULT %s\n" % json.dumps(figures))
    sys.stdout.flush()


def parse_result(line):
    """The figures of a ``RESULT`` line, or None for any other line."""
    if line.startswith("RESULT "):
        return json.loads(line[len("RESULT "):])
    return None


def workdir(prefix):
    """A temporary directory for this contender process, removed when it exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, True)
    return path
