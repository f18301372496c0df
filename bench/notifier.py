"""What the shared notifier costs the user's database, and what it delivers.

``python -m bench.notifier [--smoke] [--results FILE]`` starts a throwaway cluster and,
interleaved over the repetitions, measures:

- producer NOTIFY tps (pgbench, NOTIFY-only transactions on a channel nobody listens to)
  while a pgvisor node runs 1 instance, 100 instances on the shared notifier, and 100
  instances with ``connection = "own"`` (today's per-instance listeners): PostgreSQL
  signals every listening backend on every NOTIFY commit;
- pgvisor's backends for those nodes (``pg_stat_activity`` client backends while pgbench
  does not run: the notifier(s) or listeners, and the database monitor);
- memory per instance at 1,000 instances, each subscribed and connected (RSS of the node
  process after all are connected minus before the first started, per instance);
- a fast instance's p99 latency at 1,000/s offered, alone and beside a slow instance on
  the same channel whose queue overflows (its handler takes 5 ms, its queue holds 100):
  the fast one's delivery must stay complete and ordered, its p99 within 2x of alone;
- fan-out: one transaction of N notifications on one channel with 100 subscribers: time
  from just before the transaction is sent until every subscriber handled all N, as
  notifications/s per subscriber.

The node is a separate process (``python -m gevent.monkey --module bench.notifier node
...``, a real Supervisor, monkey-patched, logging at WARNING) that prints ``READY {json}``
once every instance is connected and ``RESULT {json}`` when told so on stdin. The report
is appended to ``bench/RESULTS.md`` as its own section (or written to ``--results``).
"""
import argparse
import gc
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {
    "full": dict(reps=3, pgbench_s=8, clients=4, instances=100, memory_n=1000,
                 fanout_subscribers=100, fanout_n=5000, latency_s=3.0),
    "smoke": dict(reps=1, pgbench_s=1, clients=2, instances=10, memory_n=50,
                  fanout_subscribers=10, fanout_n=200, latency_s=0.3),
}
LATENCY = "bench_latency"
NOBODY = "bench_nobody_listens"
FANOUT = "bench_fanout"
MARKER = "<!-- notifier figures (python -m bench.notifier) -->"

# -- the node process ------------------------------------------------------------------------
#: Live notifications handled in this process (by every instance together).
handled = {"notify": 0}


def handle(notification):
    """The instances' handler: counts live notifications, nothing else."""
    if notification.kind == "notify":
        handled["notify"] += 1


def slow(notification):
    """The slow instance's handler: 5 ms per notification (200/s at most)."""
    import gevent
    gevent.sleep(0.005)


def _latency_specs(with_slow):
    from instances import InstanceSpec
    specs = [InstanceSpec(name="fast", channels=(LATENCY,), handler="bench.sink:handle",
                          resolve=False)]
    if with_slow:
        specs.append(InstanceSpec(name="slow", channels=(LATENCY,), queue_size=100,
                                  handler="bench.notifier:slow", resolve=False))
    return specs


def _rss_kb():
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def node(args):
    """Run ``--instances`` instances under a Supervisor until stdin says ``stop``."""
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from instances import InstanceSpec, Registry
    from supervisor import Supervisor
    from supervisor.testing import wait_for

    workdir = tempfile.mkdtemp(prefix="pgvisor-bench-notifier-")
    path = os.path.join(workdir, "registry.json")
    handler = "bench.notifier:handle"
    specs = [InstanceSpec(
        name="i%05d" % i, channels=(FANOUT if args.fanout else "c%05d" % i,),
        handler=handler, connection=args.connection, resolve=False)
        for i in range(args.instances)]
    if args.latency:
        specs = _latency_specs(args.with_slow)
        args.instances = len(specs)
    specs = [spec.to_dict() for spec in specs]
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"format": 1, "version": 1, "instances": specs}, f)
    del specs
    gc.collect()
    before = _rss_kb()
    sup = Supervisor(Registry(path), args.dsn, set_as_current=False).start()
    wait_for(lambda: sum(1 for r in list(sup.records.values())
                         if r.instance is not None and r.instance.connected)
             == args.instances, timeout=600, interval=0.1, message="all connected")
    gc.collect()
    kb = (_rss_kb() - before) / args.instances
    print("READY %s" % json.dumps({"kb_per_instance": kb}), flush=True)
    from gevent.fileobject import FileObjectPosix
    stdin = FileObjectPosix(sys.stdin.fileno(), "r", close=False)  # reads cooperatively
    for line in stdin:
        command = line.split()
        if command[:1] == ["wait"]:  # wait N: until every instance handled N notifies
            wanted = int(command[1]) * args.instances
            began = time.perf_counter()
            wait_for(lambda wanted=wanted: _handled() >= wanted, timeout=300, interval=0.002)
            print("RESULT %s" % json.dumps({"elapsed_s": time.perf_counter() - began}),
                  flush=True)
        elif command[:1] == ["collect"]:  # collect N: the fast instance's figures
            print("RESULT %s" % json.dumps(_collect(sup, int(command[1]))), flush=True)
        elif command[:1] == ["stop"]:
            break
    sup.stop(timeout=10)


def _collect(sup, sent):
    """Wait until the fast instance handled ``sent``; its latencies, completeness, order,
    and what the slow one dropped."""
    from bench import sink
    from supervisor.testing import wait_for
    try:
        wait_for(lambda: len(sink.state.records) >= sent, timeout=60, interval=0.01)
    except AssertionError:
        pass
    sequence = [int(payload.split(":")[1]) for _, payload in sink.state.records]
    figures = sink.summary()
    status = sup.status()
    figures.update(complete=len(sequence) == sent, ordered=sequence == sorted(sequence),
                   slow_dropped=status.get("slow", {}).get("dropped", 0),
                   slow_overflows=status.get("slow", {}).get("overflows", 0))
    sink.state.reset(0, lambda: None)
    return figures


def _handled():
    """Run with ``--module`` this file is ``__main__``, while the supervisor resolves the
    handler in ``bench.notifier``: read that module's count."""
    from bench import notifier
    return notifier.handled["notify"]


# -- the orchestrator --------------------------------------------------------------------------
class Node:
    """A node process: started, READY read, stopped."""

    def __init__(self, dsn, instances, connection="shared", fanout=False, logdir=None,
                 latency=None):
        argv = [sys.executable, "-m", "gevent.monkey", "--module", "bench.notifier", "node",
                "--dsn", dsn, "--instances", str(instances), "--connection", connection]
        if fanout:
            argv.append("--fanout")
        if latency is not None:
            argv += ["--latency"] + (["--with-slow"] if latency else [])
        log = open(os.path.join(logdir, "node-%d-%s.log" % (instances, connection)), "a")
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, cwd=ROOT, env=env)
        log.close()
        self.ready = self.read("READY")

    def read(self, kind):
        for line in self.proc.stdout:
            if line.startswith(kind + " "):
                return json.loads(line[len(kind) + 1:])
        raise RuntimeError("node exited (%s) before %s" % (self.proc.wait(), kind))

    def ask(self, command, answer=None):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self.read(answer) if answer else None

    def stop(self):
        try:
            self.ask("stop")
            self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def pgbench_tps(cluster, seconds, clients, workdir):
    """NOTIFY-only transactions on a channel nobody listens to, for ``seconds``."""
    script = os.path.join(workdir, "notify.sql")
    with open(script, "w", encoding="ascii") as f:
        f.write("SELECT pg_notify('%s', 'x');\n" % NOBODY)
    from supervisor.testing.binaries import program
    argv = [program(cluster.bindir, "pgbench"), "-n", "-f", script, "-T", str(seconds),
            "-c", str(clients), "-j", str(clients), "-h", cluster.host, "-p",
            str(cluster.port), "-U", "postgres", "postgres"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60)
    match = re.search(r"tps = ([0-9.]+)", out.stdout)
    if match is None:
        raise RuntimeError("no tps in pgbench's output: %s" % out.stdout[-500:])
    return float(match.group(1))


def backends(cluster):
    """pgvisor's backends: every client backend but this query's (pgbench is not running)."""
    return cluster.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = "
                           "'client backend' AND pid <> pg_backend_pid()")[0][0]


def fanout(cluster, size, logdir):
    import psycopg2
    n, subscribers = size["fanout_n"], size["fanout_subscribers"]
    node_ = Node(cluster.dsn, subscribers, fanout=True, logdir=logdir)
    try:
        node_.ask("wait %d" % n)  # the node's clock starts before the transaction is sent
        conn = psycopg2.connect(cluster.dsn)
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, g::text) FROM generate_series(1, %s) g",
                           (FANOUT, n))
        conn.close()
        elapsed = node_.read("RESULT")["elapsed_s"]
    finally:
        node_.stop()
    return n / elapsed


def latency(cluster, size, with_slow, logdir):
    from bench.producer import Producer
    node_ = Node(cluster.dsn, 1, logdir=logdir, latency=with_slow)
    try:
        producer = Producer(cluster.dsn, LATENCY)
        sent = producer.paced(1000, size["latency_s"])
        producer.close()
        return node_.ask("collect %d" % sent, "RESULT")
    finally:
        node_.stop()


def measure(size, verbose=False):
    from supervisor.testing import PostgresCluster
    logdir = tempfile.mkdtemp(prefix="pgvisor-bench-notifier-logs-")
    workdir = tempfile.mkdtemp(prefix="pgvisor-bench-notifier-")
    results = {"tps": {}, "backends": {}, "kb": [], "fanout": [], "alone": [], "beside": []}
    shapes = [("1 instance", 1, "shared"), ("%d shared" % size["instances"], size["instances"],
                                            "shared"),
              ("%d own" % size["instances"], size["instances"], "own")]
    with PostgresCluster("pgvisor-bench-notifier",
                         settings={"max_connections": 300}) as cluster:
        server = cluster.execute("SELECT version()")[0][0]
        for rep in range(size["reps"]):
            for label, count, connection in shapes:
                node_ = Node(cluster.dsn, count, connection, logdir=logdir)
                try:
                    results["backends"].setdefault(label, []).append(backends(cluster))
                    results["tps"].setdefault(label, []).append(pgbench_tps(
                        cluster, size["pgbench_s"], size["clients"], workdir))
                finally:
                    node_.stop()
                if verbose:
                    print("  done: %s rep %d: %.0f tps" % (
                        label, rep + 1, results["tps"][label][-1]), file=sys.stderr)
            node_ = Node(cluster.dsn, size["memory_n"], logdir=logdir)
            results["kb"].append(node_.ready["kb_per_instance"])
            node_.stop()
            results["fanout"].append(fanout(cluster, size, logdir))
            results["alone"].append(latency(cluster, size, False, logdir))
            results["beside"].append(latency(cluster, size, True, logdir))
            if verbose:
                print("  done: memory and fan-out rep %d" % (rep + 1), file=sys.stderr)
    return results, server, shapes


def table(results, size, shapes):
    """The markdown table of ``results`` (see :func:`measure`), targets judged."""
    rows = ["| figure | runs | median | min | max | target |", "|---|---|---|---|---|---|"]
    rows += _tps_rows(results, size, shapes) + _backend_rows(results, shapes)
    kb, med = results["kb"], statistics.median
    rows.append("| memory per instance (KB RSS) at {:,} subscribed instances | {} | {:.1f} | "
                "{:.1f} | {:.1f} | < 100 KB: {} |".format(
                    size["memory_n"], len(kb), med(kb), min(kb), max(kb),
                    "met" if med(kb) < 100 else "MISSED"))
    rows += _latency_rows(results, size)
    fan = results["fanout"]
    rows.append("| fan-out: {:,} notifications to {} subscribers of one channel, delivered "
                "per subscriber (notifications/s) | {} | {} | {} | {} | total {} deliveries/s |"
                .format(size["fanout_n"], size["fanout_subscribers"], len(fan), _n(med(fan)),
                        _n(min(fan)), _n(max(fan)), _n(med(fan) * size["fanout_subscribers"])))
    return "\n".join(rows)


def _tps_rows(results, size, shapes):
    med, rows = statistics.median, []
    one = med(results["tps"][shapes[0][0]])
    for label, count, connection in shapes:
        runs = results["tps"][label]
        ratio, target = med(runs) / one, ""
        if connection == "shared" and count > 1:
            target = "ratio to 1 instance %.2fx (>= 0.8: %s)" % (
                ratio, "met" if ratio >= 0.8 else "MISSED")
        elif count > 1:
            target = "ratio to 1 instance %.2fx (today's per-instance listeners)" % ratio
        rows.append("| producer NOTIFY tps, pgvisor with %s | %d x %d s | %s | %s | %s | %s |"
                    % (label, len(runs), size["pgbench_s"], _n(med(runs)), _n(min(runs)),
                       _n(max(runs)), target))
    return rows


def _backend_rows(results, shapes):
    rows = []
    for label, count, connection in shapes:
        runs = results["backends"][label]
        target = ("<= 2: %s" % ("met" if max(runs) <= 2 else "MISSED")
                  if connection == "shared" and count > 1 else "")
        rows.append("| pgvisor backends with %s | %d | %d | %d | %d | %s |" % (
            label, len(runs), statistics.median(runs), min(runs), max(runs), target))
    return rows


def _latency_rows(results, size):
    med, rows = statistics.median, []
    alone = med([r["p99_ms"] for r in results["alone"]])
    for key, label in (("alone", "alone"), ("beside", "beside an overflowing instance")):
        runs = [r["p99_ms"] for r in results[key]]
        sound = all(r["complete"] and r["ordered"] for r in results[key])
        note = "complete and ordered: %s" % ("yes" if sound else "NO")
        if key == "beside":
            ratio = med(runs) / alone
            note += "; %.2fx alone (<= 2x: %s); the slow one dropped %s in %s episode(s)" % (
                ratio, "met" if ratio <= 2 else "MISSED",
                "/".join(str(r["slow_dropped"]) for r in results[key]),
                "/".join(str(r["slow_overflows"]) for r in results[key]))
        rows.append("| fast instance at 1,000/s offered, p99 ms, %s | %d x %.0f s | %.2f | %.2f "
                    "| %.2f | %s |" % (label, len(runs), size["latency_s"], med(runs),
                                       min(runs), max(runs), note))
    return rows


def _n(value):
    return "{:,.0f}".format(value)


def write(path, text):
    """Put ``text`` after MARKER in ``path``, replacing an older section up to the next
    marker line; the sections other commands wrote after it (the spool's, the memory-queue
    hand-off's) are kept, as everything before it."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except FileNotFoundError:
        content = ""
    before, _, after = content.partition(MARKER)
    cut = after.find("\n<!-- ")
    rest = after[cut + 1:] if cut >= 0 else ""
    with open(path, "w", encoding="utf-8") as f:
        f.write(before.rstrip("\n") + "\n\n" + MARKER + "\n" + text.rstrip("\n") + "\n"
                + ("\n" + rest if rest else ""))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    node_args = sub.add_parser("node")
    node_args.add_argument("--dsn", required=True)
    node_args.add_argument("--instances", type=int, required=True)
    node_args.add_argument("--connection", default="shared")
    node_args.add_argument("--fanout", action="store_true")
    node_args.add_argument("--latency", action="store_true")
    node_args.add_argument("--with-slow", action="store_true")
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--results", help="default: bench/RESULTS.md (not with --smoke)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "node":
        return node(args)
    size = SIZES["smoke" if args.smoke else "full"]
    began = time.time()
    results, server, shapes = measure(size, args.verbose)
    text = "\n".join([
        "## The shared notifier", "",
        "Generated by `python -m bench.notifier` on %s UTC (%.0f s), against %s; one "
        "interleaved run of %d repetitions (1 instance, %d shared, %d own, then memory, "
        "fan-out and latency). pgbench: %d clients, NOTIFY-only transactions on a channel nobody "
        "listens to; backends: the client backends in `pg_stat_activity` while pgbench does "
        "not run (the notifier or the listeners, and the database monitor)." % (
            time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(began)), time.time() - began,
            server.split(" on ")[0], size["reps"], size["instances"], size["instances"],
            size["clients"]),
        "", table(results, size, shapes)])
    print(text)
    path = args.results or (None if args.smoke else os.path.join(ROOT, "bench", "RESULTS.md"))
    if path:
        write(path, text)
        print("wrote %s" % path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
