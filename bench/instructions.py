"""Instructions per notification under callgrind: ``python -m bench.instructions``.

Wall-clock rates and even CPU times swing on a shared, loaded machine; the number of
instructions a drain executes does not. Each contender (the labels of :data:`CONTENDERS`)
drains a backlog of ``--n1`` and of ``--n2`` notifications under ``valgrind
--tool=callgrind`` (the producer and the orchestration as in :mod:`bench.run`); the
difference of the two totals divided by ``n2 - n1`` is what one more notification costs,
start-up and shutdown cancelled out. The figure covers the whole process: the handler's
record and the summary's payload parsing (:mod:`bench.sink`, the same for every contender,
about 8,500 instructions per notification with this sink) included, and pgvisor's periodic
work too, which valgrind's 50x slowdown inflates (a hub "blocked" report of gevent's
monitor thread walks the heap: compare several runs). Needs valgrind; slow (minutes).
The callgrind files stay in the printed directory (``callgrind_annotate`` them).
"""
import argparse
import os
import shutil
import sys
import tempfile

from bench.run import CONTENDERS, GEVENT, SPOOL_BASE, Bench
from supervisor.testing import PostgresCluster

#: label -> the contender's command (bench.run's and bench.delivery's batch pair).
COMMANDS = {
    "raw": CONTENDERS[0][1],
    "memory": CONTENDERS[2][1],
    "raw-batch": [sys.executable, "-m", "bench.delivery", "--contender", "raw-batch"],
    "pgvisor-batch": GEVENT + ["bench.delivery", "--contender", "pgvisor-batch"],
    "spool": CONTENDERS[3][1],  # pgvisor with a spool, fsync off (bench.spool's drain)
    "spool-fsync": CONTENDERS[4][1],
}
#: The labels that drain through a spool directory: their fsync flag.
SPOOLS = {"spool": False, "spool-fsync": True}


def instructions(bench, dsn, label, n, directory):
    """Total instructions of one callgrind drain of ``n`` notifications by ``label``."""
    out = os.path.join(directory, "%s-%d.callgrind" % (label, n))
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out] + COMMANDS[label] + [
        "--dsn", dsn, "--expected", str(n), "--timeout", "900"]
    spool = None
    if label in SPOOLS:
        spool = tempfile.mkdtemp(prefix="pgvisor-bench-spool-", dir=SPOOL_BASE)
        argv += ["--spool", spool] + (["--fsync"] if SPOOLS[label] else [])
    try:
        bench._drive(argv, os.path.join(directory, "%s-%d.log" % (label, n)), dsn,
                     "backlog", None, n)
    finally:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
    with open(out, encoding="utf-8") as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in %s" % out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n1", type=int, default=20_000)
    parser.add_argument("--n2", type=int, default=60_000)
    parser.add_argument("--which", default=",".join(c for c in COMMANDS if c not in SPOOLS),
                        help="comma-separated labels of %s (default: all but the spools)"
                        % ", ".join(COMMANDS))
    args = parser.parse_args(argv)
    bench = Bench(argparse.Namespace(smoke=False, verbose=False, profile_run=None))
    directory = tempfile.mkdtemp(prefix="pgvisor-bench-callgrind-")
    with PostgresCluster("pgvisor-bench-callgrind") as cluster:
        for label in args.which.split(","):
            first = instructions(bench, cluster.dsn, label, args.n1, directory)
            second = instructions(bench, cluster.dsn, label, args.n2, directory)
            print("%-14s %8.0f instructions per notification" % (
                label, (second - first) / (args.n2 - args.n1)), flush=True)
    print("callgrind files in %s" % directory)
    return 0


if __name__ == "__main__":
    sys.exit(main())
