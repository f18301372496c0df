"""The benchmark orchestrator: ``python -m bench.run [--smoke]``.

Starts one throwaway cluster (supervisor.testing), runs every contender in a process of its
own, interleaved (A B C ... A B C ...), produces the load from this process
(:mod:`bench.producer`), runs the supervisor-cost figures, prints one table and (not with
``--smoke`` unless ``--results`` is given) regenerates ``bench/RESULTS.md``.

``--only memory`` runs the memory-queue hand-off alone (:mod:`bench.handoff`): raw psycopg2
and pgvisor memory, interleaved, on the four contender figures (``--reps``, default 3),
py-spy profiles of both drains into ``bench/profiles/``, and only its own section of
``bench/RESULTS.md`` rewritten.

Exit status 1 if any run failed (a contender that timed out, crashed or never listened).
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

from bench import figures, handoff, notes, protocol, report
from bench.producer import Producer
from supervisor.testing import PostgresCluster

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GEVENT = [sys.executable, "-m", "gevent.monkey", "--module"]
#: Where spool directories go: a real disk (fsync on tmpfs would prove nothing).
SPOOL_BASE = os.environ.get("PGVISOR_BENCH_SPOOL_DIR", "/var/tmp")

SIZES = {
    "full": dict(reps=5, drain_reps=9, drain=100_000, stream=100_000, fsync_n=10_000,
                 latency_s=3.0,
                 restart_reps=15, scale=(100, 1_000, 10_000), scale_reps=7, outage_reps=3,
                 isolation_n=2_000, figures=("drain", "e2e", "lat1000", "lat10000")),
    "smoke": dict(reps=1, drain_reps=1, drain=2_000, stream=2_000, fsync_n=300, latency_s=0.3,
                  restart_reps=3, scale=(20,), scale_reps=2, outage_reps=1,
                  isolation_n=50, figures=("drain", "lat1000")),
}

# (label, command, spool mode): spool None = no spool, else the fsync flag.
CONTENDERS = [
    (report.RAW, [sys.executable, "-m", "bench.contender_raw"], None),
    ("asyncpg", [sys.executable, "-m", "bench.contender_asyncpg"], None),
    ("pgvisor memory", GEVENT + ["bench.contender_pgvisor"], None),
    ("pgvisor spool fsync=off", GEVENT + ["bench.contender_pgvisor"], False),
    ("pgvisor spool fsync=on", GEVENT + ["bench.contender_pgvisor"], True),
]

FIGURES = [  # (key, title, producer shape, rate)
    ("drain", "drain rate, backlog in one transaction (notifications/s)", "backlog", None),
    ("e2e", "end-to-end rate, concurrent producer (notifications/s)", "stream", None),
    ("lat1000", "latency at 1,000/s offered: p99 (ms)", "paced", 1_000),
    ("lat10000", "latency at 10,000/s offered: p99 (ms)", "paced", 10_000),
]


class Bench:
    def __init__(self, args):
        self.args = args
        self.size = SIZES["smoke" if args.smoke else "full"]
        self.logdir = tempfile.mkdtemp(prefix="pgvisor-bench-logs-")
        self.failures = []
        self.env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get(
            "PYTHONPATH", ""))

    def finish(self, began):
        """Say how it went; the contenders' logs are kept only when something failed (a
        directory left in /tmp per run otherwise)."""
        if self.failures:
            print("\n%d failure(s); %.0f s; logs in %s" % (
                len(self.failures), time.monotonic() - began, self.logdir))
        else:
            print("\n0 failure(s); %.0f s" % (time.monotonic() - began))
            shutil.rmtree(self.logdir, ignore_errors=True)

    # -- one contender run --------------------------------------------------------------
    def count_for(self, key, label, spool):
        if key.startswith("lat"):
            return int(dict(lat1000=1_000, lat10000=10_000)[key] * self.size["latency_s"])
        n = self.size["drain" if key == "drain" else "stream"]
        return min(n, self.size["fsync_n"]) if spool is True else n

    def run_contender(self, dsn, figure, label, command, spool, n=None):
        key, _, shape, rate = figure
        n = n or self.count_for(key, label, spool)
        argv = command + ["--dsn", dsn, "--expected", str(n), "--timeout", str(60 + n / 500)]
        spool_dir = None
        if spool is not None:
            spool_dir = tempfile.mkdtemp(prefix="pgvisor-bench-spool-", dir=SPOOL_BASE)
            argv += ["--spool", spool_dir] + (["--fsync"] if spool else [])
        if self.args.profile_run:
            argv += ["--profile", self.args.profile_run]
        log_path = os.path.join(self.logdir, "%s-%s.log" % (key, label.replace(" ", "_")))
        try:
            return self._drive(argv, log_path, dsn, shape, rate, n)
        finally:
            if spool_dir:
                shutil.rmtree(spool_dir, ignore_errors=True)

    def _drive(self, argv, log_path, dsn, shape, rate, n):
        with open(log_path, "a", encoding="utf-8") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                    cwd=ROOT, env=self.env)
            try:
                line = proc.stdout.readline()
                while line and line.strip() != "READY":  # a profiler's banner, say
                    log.write(line)
                    line = proc.stdout.readline()
                if not line:
                    raise RuntimeError("never listened; see %s" % log_path)
                log.flush()
                producer = Producer(dsn)
                if shape == "backlog":
                    producer.backlog(n)
                elif shape == "stream":
                    producer.stream(n)
                else:
                    producer.paced(rate, n / rate)
                producer.close()
                out, _ = proc.communicate(timeout=120 + n / 500)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        figures = next((protocol.parse_result(x) for x in out.splitlines()
                        if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or figures is None or figures.get("timeout"):
            raise RuntimeError("exit %s, result %r; see %s" % (proc.returncode, figures, log_path))
        return figures

    # -- figures -------------------------------------------------------------------------
    def contenders(self, dsn, contenders=CONTENDERS):
        """Every figure, contenders interleaved within each repetition."""
        chosen = [f for f in FIGURES if f[0] in self.size["figures"]]
        results = {f[0]: {c[0]: [] for c in contenders} for f in chosen}
        # The drain figure runs ``drain_reps`` repetitions, the others ``reps`` (why: README).
        size = self.size
        for rep in range(max(size["reps"], size["drain_reps"])):
            for figure in chosen:
                if rep >= size["drain_reps" if figure[0] == "drain" else "reps"]:
                    continue
                for label, command, spool in contenders:
                    try:
                        results[figure[0]][label].append(
                            self.run_contender(dsn, figure, label, command, spool))
                    except Exception as error:
                        self.fail("%s / %s / rep %d: %s" % (figure[0], label, rep + 1, error))
                    self.progress("%s %s rep %d" % (figure[0], label, rep + 1))
        return results

    def isolation(self, dsn):
        """The CPU-bound handler with 1 and 2 worker processes, interleaved."""
        results = {1: [], 2: []}
        for rep in range(self.size["reps"]):
            for workers in results:
                command = GEVENT + ["bench.isolation", "--workers", str(workers)]
                label = "isolation %d" % workers
                try:
                    results[workers].append(self.run_contender(
                        dsn, FIGURES[0], label, command, False, self.size["isolation_n"]))
                except Exception as error:
                    self.fail("%s / rep %d: %s" % (label, rep + 1, error))
                self.progress("%s rep %d" % (label, rep + 1))
        return results

    def costs(self, figure, *extra):
        argv = GEVENT + ["bench.supervisor_costs", figure] + list(extra)
        log_path = os.path.join(self.logdir, "costs-%s.log" % "-".join([figure] + list(extra[-1:])))
        with open(log_path, "a", encoding="utf-8") as log:
            proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=log, text=True,
                                  cwd=ROOT, env=self.env, timeout=600)
        figures = next((protocol.parse_result(x) for x in proc.stdout.splitlines()
                        if x.startswith("RESULT ")), None)
        if proc.returncode != 0 or figures is None:
            self.fail("supervisor costs %s %s: exit %s; see %s" % (
                figure, " ".join(extra), proc.returncode, log_path))
            return None
        self.progress("costs %s" % " ".join([figure] + list(extra)))
        return figures

    def supervisor_costs(self, dsn):
        size = self.size
        return {
            "restart": self.costs("restart", "--dsn", dsn, "--reps", str(size["restart_reps"])),
            "scale": [self.costs("scale", "--dsn", dsn, "--reps", str(size["scale_reps"]),
                                 "--size", str(n)) for n in size["scale"]],
            "outage": self.costs("outage", "--reps", str(size["outage_reps"])),
        }

    def profile(self, dsn):
        """One more pgvisor memory drain, under cProfile; returns the text."""
        path = os.path.join(self.logdir, "pgvisor-drain.prof.txt")
        self.args.profile_run = path
        try:
            self.run_contender(dsn, FIGURES[0], "pgvisor memory", CONTENDERS[2][1], None)
            with open(path, encoding="utf-8") as f:
                return f.read()
        except Exception as error:
            self.fail("profile run: %s" % error)
            return ""
        finally:
            self.args.profile_run = None

    def fail(self, message):
        self.failures.append(message)
        print("FAILED: %s" % message, file=sys.stderr, flush=True)

    def progress(self, message):
        if self.args.verbose:
            print("  done: %s" % message, file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--results", help="write the report here (default: bench/RESULTS.md, "
                                          "not written with --smoke)")
    parser.add_argument("--verbose", "-v", action="store_true")
    parser.add_argument("--only", choices=("memory",),
                        help="memory: the memory-queue hand-off alone (bench.handoff)")
    parser.add_argument("--reps", type=int, help="repetitions (default: the size's)")
    args = parser.parse_args(argv)
    args.profile_run = None
    bench = Bench(args)
    if args.reps:
        bench.size = dict(bench.size, reps=args.reps, drain_reps=args.reps)
    if args.only == "memory":
        return only_memory(bench, args)
    began = time.monotonic()
    with PostgresCluster("pgvisor-bench") as cluster:
        server = cluster.execute("SELECT version()")[0][0]
        results = bench.contenders(cluster.dsn)
        costs = bench.supervisor_costs(cluster.dsn)
        costs["isolation"] = bench.isolation(cluster.dsn)
        profile_text = bench.profile(cluster.dsn)
    table = figures.build_table(results, costs, bench.size)
    print(table.markdown())
    print()
    print(table.verdicts_markdown())
    bench.finish(began)
    path = args.results or (None if args.smoke else os.path.join(ROOT, "bench", "RESULTS.md"))
    if path:
        command = "make bench-smoke" if args.smoke else "make bench"
        report.write_results(path, report.machine(server, SPOOL_BASE), table,
                             notes.text(bench.size, SPOOL_BASE), profile_text, command)
        print("wrote %s" % path)
    return 1 if bench.failures else 0


def only_memory(bench, args):
    """``--only memory``: see the module and :mod:`bench.handoff`."""
    began = time.monotonic()
    chosen = handoff.contenders(CONTENDERS)
    bench.size = dict(bench.size, figures=("drain", "e2e", "lat1000", "lat10000"))
    with PostgresCluster("pgvisor-bench") as cluster:
        server = cluster.execute("SELECT version()")[0][0]
        machine = report.machine(server, SPOOL_BASE)
        results = bench.contenders(cluster.dsn, chosen)
        profiles = [] if args.smoke else handoff.profile_drains(
            bench, cluster.dsn, chosen, os.path.join(ROOT, "bench", "profiles"))
    command = "python -m bench.run --only memory" + (
        " --reps %d" % args.reps if args.reps else "") + (" --smoke" if args.smoke else "")
    text = handoff.section(results, bench.size, machine, profiles, command)
    print(text)
    bench.finish(began)
    path = args.results or (None if args.smoke else os.path.join(ROOT, "bench", "RESULTS.md"))
    if path:
        handoff.write(path, text)
        print("wrote %s" % path)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
