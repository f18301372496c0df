"""Multi-node at scale: N ``pgvisor run`` nodes sharing the instances of one registry table.

``python -m bench.cluster [--smoke] [--results FILE]`` starts a throwaway cluster, writes
``instances`` instances (one channel, the shared notifier, a handler that does nothing) into
the registry table, starts ``nodes`` separate ``pgvisor run`` processes with clustering on
(the default ``lease_ttl`` 10 s and ``node_grace`` 30 s unless ``--fast``), and measures:

- time to a full assignment: from the start of the processes until every instance is
  assigned (the table) and until every instance runs on exactly one node (the nodes'
  ``GET /status``);
- coordination queries per second per node at rest: the Cluster's ``queries`` counter
  (every coordination round trip, ``GET /nodes``) over a quiet window;
- time to reassign a dead node's share: from a ``kill -9`` of a node until each of its
  instances runs on exactly one survivor (minus ``node_grace``, the wait by design, too);
- instances running twice or nowhere, sampled from every node's ``GET /status`` about once
  a second the whole time (running twice must be 0 in every sample; nowhere must be 0
  after the takeover). Sampling bounds what it can see; the exact proof is the acceptance
  test's exclusion constraint (tests/acceptance/test_cluster.py).

The report goes into ``bench/RESULTS.md`` as its own section (between its marker and the
next one), or to ``--results``.
"""
import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = {"full": dict(nodes=10, instances=1000, rest_s=30.0),
         "smoke": dict(nodes=3, instances=30, rest_s=3.0)}
MARKER = "<!-- cluster figures (python -m bench.cluster) -->"
CHANNEL = "bench_cluster"


def noop(notification):
    """The instances' handler: nothing."""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Node:
    """One ``pgvisor run`` in ``directory``."""

    def __init__(self, directory, name, dsn, lease_ttl, node_grace):
        os.makedirs(directory)
        self.name, self.port = name, free_port()
        self.config = os.path.join(directory, "pgvisor.toml")
        with open(self.config, "w") as f:
            f.write('[database]\ndsn = "%s"\n[registry]\nbackend = "postgres"\n'
                    'path = "registry.json"\n[http]\nlisten = "127.0.0.1:%d"\n'
                    '[logging]\nlevel = "warning"\n[cluster]\nenabled = true\n'
                    'node_name = "%s"\nlease_ttl = %r\nnode_grace = %r\n'
                    % (dsn, self.port, name, lease_ttl, node_grace))
        self.log = open(os.path.join(directory, "service.log"), "ab")
        self.process = None

    def start(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "supervisor.cli", "run", "-c", self.config],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)

    def get(self, path):
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.port, path),
                                    timeout=10) as answer:
            return json.loads(answer.read())

    def running(self):
        """The instances this node runs, or None when it does not answer."""
        try:
            body = self.get("/status")
        except OSError:
            return None
        return {v["name"] for v in body["instances"] if v.get("state") == "running"}

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def stop(self):
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


class Watch:
    """Samples where every instance runs: counts the worst double runs seen."""

    def __init__(self, nodes, names):
        self.nodes, self.names = nodes, set(names)
        self.samples = self.twice_max = 0

    def sample(self):
        """``{instance: [nodes]}`` over the live nodes (one GET /status each)."""
        where = {}
        for node in self.nodes:
            if not node.alive():
                continue
            for name in node.running() or ():
                where.setdefault(name, []).append(node.name)
        self.samples += 1
        self.twice_max = max(self.twice_max, sum(1 for v in where.values() if len(v) > 1))
        return where

    def wait_placed(self, deadline, among=None):
        """Seconds until every instance runs exactly once on ``among`` (default all live
        nodes); raises RuntimeError past ``deadline`` (time.monotonic())."""
        while time.monotonic() < deadline:
            where = self.sample()
            ok = set(where) == self.names and all(len(v) == 1 for v in where.values())
            if ok and (among is None or all(v[0] in among for v in where.values())):
                return where
            time.sleep(0.5)
        raise RuntimeError("instances not placed in time")


def measure(size, fast=False, verbose=False):
    from instances import InstanceSpec
    from instances.registry.table import PostgresRegistry
    from supervisor.testing import PostgresCluster

    lease_ttl, node_grace = (2.0, 6.0) if fast else (10.0, 30.0)
    figures = dict(size, lease_ttl=lease_ttl, node_grace=node_grace)
    cluster = PostgresCluster(name="bench-cluster", settings={"max_connections": "300"})
    tmp = tempfile.mkdtemp(prefix="bench-cluster-")
    nodes = []
    try:
        cluster.start()
        cluster.create_database("bench")
        dsn = cluster.dsn_for("bench")
        figures["postgres"] = cluster.execute("SHOW server_version")[0][0]
        registry = PostgresRegistry(dsn)
        names = ["i%04d" % i for i in range(size["instances"])]
        registry.merge(InstanceSpec(name=name, channels=[CHANNEL], run_on="any",
                                    handler="bench.cluster:noop") for name in names)
        registry.close()
        nodes = [Node(os.path.join(tmp, "n%d" % i), "n%d" % i, dsn, lease_ttl, node_grace)
                 for i in range(size["nodes"])]
        watch = Watch(nodes, names)
        started = time.monotonic()
        for node in nodes:
            node.start()
        figures["assigned_s"] = _wait_assigned(cluster, len(names), size["nodes"], started)
        placed = watch.wait_placed(started + 300)
        figures["running_s"] = time.monotonic() - started
        counts = {}
        for where in placed.values():
            counts[where[0]] = counts.get(where[0], 0) + 1
        figures["per_node"] = sorted(counts.values())
        figures.update(_at_rest(nodes, size["rest_s"]))
        victim = max(nodes, key=lambda n: (counts.get(n.name, 0), n.name))
        share = sorted(i for i, where in placed.items() if where[0] == victim.name)
        killed = time.monotonic()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(10)
        survivors = {n.name for n in nodes if n is not victim}
        after = watch.wait_placed(killed + node_grace + 120, among=survivors)
        figures["reassign_s"] = time.monotonic() - killed
        figures["share"] = len(share)
        figures["moved_others"] = sum(1 for i, where in placed.items()
                                      if where[0] != victim.name and after[i] != where)
        final = watch.sample()
        figures["nowhere_after"] = len(set(names) - set(final))
        figures["twice_max"] = watch.twice_max
        figures["samples"] = watch.samples
        figures["total_s"] = time.monotonic() - started
    finally:
        for node in nodes:
            node.stop()
        cluster.cleanup()
    if verbose:
        print(json.dumps(figures, indent=2), file=sys.stderr)
    return figures


def _wait_assigned(cluster, instances, nodes, started):
    """Seconds until every instance is assigned, the counts within one (the table)."""
    while time.monotonic() < started + 300:
        try:
            rows = cluster.execute("SELECT node, count(*) FROM pgvisor.assignments"
                                   " WHERE node IS NOT NULL GROUP BY node", dbname="bench")
        except Exception:  # the table does not exist before the first node migrated
            rows = []
        counts = [c for _, c in rows]
        if sum(counts) == instances and len(counts) == nodes and \
                max(counts) - min(counts) <= 1:
            return time.monotonic() - started
        time.sleep(0.2)
    raise RuntimeError("not assigned in time")


def _at_rest(nodes, seconds):
    """Coordination queries per second per node over ``seconds`` of rest."""
    before = {n.name: n.get("/nodes")["counters"]["queries"] for n in nodes}
    begun = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - begun
    rates = sorted((n.get("/nodes")["counters"]["queries"] - before[n.name]) / elapsed
                   for n in nodes)
    return {"rest_rate_median": rates[len(rates) // 2], "rest_rate_max": rates[-1],
            "rest_rate_min": rates[0], "rest_window_s": elapsed}


def report(f):
    met = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    rows = [
        ("time to a full assignment (every instance assigned, counts within one)",
         "%.1f s" % f["assigned_s"], ""),
        ("time until every instance runs on exactly one node", "%.1f s" % f["running_s"],
         "instances per node: %s" % ", ".join(map(str, f["per_node"]))),
        ("coordination queries per second per node at rest (median / max over nodes, "
         "%.0f s)" % f["rest_window_s"], "%.2f / %.2f" % (f["rest_rate_median"],
                                                     f["rest_rate_max"]),
         "< 1 per second per node: %s" % met(f["rest_rate_max"] < 1.0)),
        ("time to reassign a killed node's share (%d instances), from the kill -9"
         % f["share"], "%.1f s" % f["reassign_s"],
         "node_grace %.0f s + %.1f s; other instances moved: %d"
         % (f["node_grace"], f["reassign_s"] - f["node_grace"], f["moved_others"])),
        ("instances running on two nodes at once, worst sample (%d samples)" % f["samples"],
         str(f["twice_max"]), "0: %s" % met(f["twice_max"] == 0)),
        ("instances running nowhere after the takeover", str(f["nowhere_after"]),
         "0: %s" % met(f["nowhere_after"] == 0)),
    ]
    lines = ["## Multi-node", "",
             "Generated by `python -m bench.cluster` on %s (%.0f s), against PostgreSQL %s: "
             "%d `pgvisor run` nodes, %s instances in the registry table (one channel, the "
             "shared notifier, a handler that does nothing), lease_ttl %.0f s, node_grace "
             "%.0f s, on this machine's 2 shared cores. Where instances run is sampled "
             "from every node's `GET /status`; the exact exactly-once proof is the "
             "acceptance test's exclusion constraint." % (
                 time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), f["total_s"],
                 f["postgres"], f["nodes"], "{:,}".format(f["instances"]), f["lease_ttl"],
                 f["node_grace"]), "",
             "| figure | value | target / note |", "|---|---|---|"]
    lines += ["| %s | %s | %s |" % row for row in rows]
    return "\n".join(lines) + "\n"


def write_section(path, text):
    """Put ``text`` after MARKER in ``path``, replacing an older section up to the next
    marker; a new section goes before the other generated ones (they keep what precedes
    their marker)."""
    try:
        with open(path, encoding="utf-8") as f:
            content = f.read()
    except FileNotFoundError:
        content = ""
    section = MARKER + "\n" + text
    if MARKER in content:
        head, tail = content.split(MARKER, 1)
        rest = tail.find("<!-- ")
        content = head + section + ("\n" + tail[rest:] if rest >= 0 else "")
    elif "<!-- " in content:
        at = content.index("<!-- ")
        content = content[:at] + section + "\n" + content[at:]
    else:
        content = content.rstrip("\n") + "\n\n" + section
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--fast", action="store_true",
                        help="lease_ttl 2 s, node_grace 6 s (default: the defaults)")
    parser.add_argument("--results", help="default: bench/RESULTS.md (not with --smoke)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(SIZES["smoke" if args.smoke else "full"], args.fast, args.verbose)
    text = report(figures)
    print(text)
    path = args.results or (None if args.smoke else os.path.join(ROOT, "bench", "RESULTS.md"))
    if path:
        write_section(path, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
