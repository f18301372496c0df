"""Instructions per notification under callgrind: ``python -m bench.instructions``.

Wall-clock rates and even CPU times swing on a shared, loaded machine; the number of
instructions a drain executes does not. Each contender (the labels of :data:`CONTENDERS`)
drains a backlog of ``--n1`` and of ``--n2`` notifications under ``valgrind
--tool=callgrind`` (the producer as in :mod:`bench.run`), instrumented only from the
contender's READY to its DRAINED (the :data:`bench.protocol.HANDSHAKE`): the drain, not the
start-up, the shutdown or the summary. The difference of the two totals divided by ``n2 -
n1`` is what one more notification costs, what the window holds besides the drain
cancelled out. The handler's record (:mod:`bench.sink`, the same for every contender) is in
it, and so is pgvisor's periodic work (its hub monitor is off under valgrind, whose 50x
slowdown made every read look like a blocked hub: :func:`bench.protocol.counting`). Two
runs of the same code agree within a few instructions per notification. Needs valgrind;
slow (minutes). The callgrind files stay in the printed directory (``callgrind_annotate``
them).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile

from bench import protocol
from bench.producer import Producer
from bench.run import CONTENDERS, GEVENT, ROOT, SPOOL_BASE, Bench
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
    """Instructions of one callgrind drain of ``n`` notifications by ``label``: counted from
    the contender's READY to its DRAINED (:func:`bench.protocol.drained`), so start-up,
    shutdown and the summary are left out."""
    out = os.path.join(directory, "%s-%d.callgrind" % (label, n))
    argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
            "--callgrind-out-file=" + out] + COMMANDS[label] + [
        "--dsn", dsn, "--expected", str(n), "--timeout", "900"]
    spool = None
    if label in SPOOLS:
        spool = tempfile.mkdtemp(prefix="pgvisor-bench-spool-", dir=SPOOL_BASE)
        argv += ["--spool", spool] + (["--fsync"] if SPOOLS[label] else [])
    try:
        with open(os.path.join(directory, "%s-%d.log" % (label, n)), "w") as log:
            _drive(argv, log, dsn, n, dict(bench.env, **{protocol.HANDSHAKE: "1"}))
    finally:
        if spool is not None:
            shutil.rmtree(spool, ignore_errors=True)
    with open(out, encoding="utf-8") as f:  # "summary:" is 0 with --instr-atstart=no
        totals = [int(line.split()[1]) for line in f if line.startswith("totals:")]
    if not totals:
        raise RuntimeError("no totals in %s" % out)
    return totals[-1]


def _drive(argv, log, dsn, n, env):
    """Run the contender: instrumentation on at READY, the backlog, off at DRAINED."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            text=True, cwd=ROOT, env=env)
    try:
        _expect(proc, "READY", log)
        _instrument(proc.pid, "on")
        producer = Producer(dsn)
        producer.backlog(n)
        producer.close()
        _expect(proc, "DRAINED", log)
        _instrument(proc.pid, "off")
        out, _ = proc.communicate("\n", timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0 or '"timeout": false' not in out:
        raise RuntimeError("exit %s, output %r; see %s" % (proc.returncode, out, log.name))


def _expect(proc, word, log):
    line = proc.stdout.readline()
    while line and line.strip() != word:
        log.write(line)
        line = proc.stdout.readline()
    if not line:
        raise RuntimeError("no %s from the contender; see %s" % (word, log.name))


def _instrument(pid, state):
    subprocess.run(["callgrind_control", "--instr=" + state, str(pid)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


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
