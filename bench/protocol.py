"""The line protocol between the orchestrator (:mod:`bench.run`) and a contender process.

A contender is started as ``python [-m gevent.monkey --module] bench.contender_X ARGS``::

    contender: connects, LISTENs, then prints   READY
    orchestrator: produces the load (bench.producer)
    contender: handles `--expected` notifications, then prints   RESULT {json}
               and exits 0 (on `--timeout` it prints what it has with "timeout": true)

Everything else a contender writes goes to stderr (the orchestrator keeps it in a log file).
"""
import argparse
import atexit
import json
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
