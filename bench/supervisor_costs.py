"""What supervising costs: restart after a kill, verify pass time and memory per instance,
and an outage (database stop -> paused, start -> processing again).

Run monkey-patched, one figure per process (memory figures need a fresh interpreter)::

    python -m gevent.monkey --module bench.supervisor_costs restart --dsn DSN --reps 9
    python -m gevent.monkey --module bench.supervisor_costs scale --dsn DSN --size 1000 --reps 5
    python -m gevent.monkey --module bench.supervisor_costs outage --reps 3

Each prints one ``RESULT {json}`` line (see :mod:`bench.protocol`); logging at WARNING.
``outage`` makes a private throwaway cluster (it stops and starts it).
"""
import argparse
import gc
import json
import logging
import os
import time

import gevent
import gevent.event

from bench import protocol
from bench.pool_instance import PoolInstance
from instances import InstanceSpec, Registry
from supervisor import Supervisor
from supervisor.testing import PostgresCluster, wait_for

NAME = "costs"
CHANNEL = "bench_costs"
#: Handled catch_up / live notifications, set by :func:`handle` (this process only).
caught_up = gevent.event.Event()
notified = gevent.event.Event()


def handle(notification):
    """The handler of the costs' instance: flags what it saw, nothing else."""
    (caught_up if notification.kind == "catch_up" else notified).set()


def _flags():
    """The events :func:`handle` sets. Run with ``--module`` this file is ``__main__``, while
    the supervisor resolves the handler in ``bench.supervisor_costs``: use that module's."""
    from bench import supervisor_costs
    return supervisor_costs.caught_up, supervisor_costs.notified


def one_instance_supervisor(dsn, workdir):
    registry = Registry(os.path.join(workdir, "registry.json"))
    registry.add(InstanceSpec(name=NAME, channels=(CHANNEL,), restart_max_rate="10000/m",
                              handler="bench.supervisor_costs:handle"))
    return Supervisor(registry, dsn).start()


def restart(args, workdir):
    """Kill the instance; time until its replacement handled its catch_up (it LISTENs)."""
    caught_up, _ = _flags()
    sup = one_instance_supervisor(args.dsn, workdir)
    if not caught_up.wait(30):
        raise RuntimeError("the instance never listened")
    times = []
    for _ in range(args.reps):
        caught_up.clear()
        old = sup.instance(NAME)
        began = time.perf_counter()
        old.kill()
        if not caught_up.wait(10):
            raise RuntimeError("no restart within 10 s")
        times.append((time.perf_counter() - began) * 1000.0)
        if sup.instance(NAME) is old:
            raise RuntimeError("the same instance answered: no restart happened")
    sup.stop(timeout=5)
    return {"restart_ms": times, "restarts": sup.counters["restarts"]}


def rss_kb():
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def scale(args, workdir):
    """``size`` connection-less instances (:class:`PoolInstance`): RSS per instance, and
    the time of one ``verify(None)`` pass over all of them."""
    gc.collect()
    before = rss_kb()
    path = os.path.join(workdir, "registry.json")
    specs = [InstanceSpec(name="i%05d" % i, channels=("c%05d" % i,),
                          handler="bench.supervisor_costs:handle", resolve=False).to_dict()
             for i in range(args.size)]
    with open(path, "w", encoding="utf-8") as f:  # one write, not `size` registry.add()s
        json.dump({"format": 1, "version": 1, "instances": specs}, f)
    del specs
    sup = Supervisor(Registry(path), args.dsn, instance_factory=PoolInstance).start()
    began = time.perf_counter()
    wait_for(lambda: sum(1 for r in list(sup.records.values())
                         if r.instance is not None and r.instance.alive) == args.size,
             timeout=300, interval=0.05, message="every instance started")
    started_s = time.perf_counter() - began
    times = []
    for _ in range(args.reps):
        began = time.perf_counter()
        sup.verify(None).get(timeout=120)
        times.append((time.perf_counter() - began) * 1000.0)
    gc.collect()
    per_instance = (rss_kb() - before) / args.size
    sup.stop(timeout=30)
    return {"size": args.size, "verify_ms": times, "kb_per_instance": per_instance,
            "start_all_s": started_s}


def outage(args, workdir):
    """Stop the (private) database: time to ``paused``; start it: time to the first
    live notification handled again (a notifier sends one every 10 ms meanwhile)."""
    cluster = PostgresCluster("pgvisor-bench-outage").start()
    try:
        caught_up, _ = _flags()
        sup = one_instance_supervisor(cluster.dsn, workdir)
        if not caught_up.wait(30):
            raise RuntimeError("the instance never listened")
        figures = {"paused_ms": [], "start_s": [], "first_processed_ms": []}
        for _ in range(args.reps):
            one_outage(cluster, sup, figures)
        sup.stop(timeout=5)
        return figures
    finally:
        cluster.cleanup()


def one_outage(cluster, sup, figures):
    _, notified = _flags()
    wait_for(lambda: not sup.paused, timeout=60, message="supervisor resumed")
    began = time.perf_counter()
    cluster.stop("fast")
    wait_for(lambda: sup.paused, timeout=30, interval=0.001, message="supervisor paused")
    figures["paused_ms"].append((time.perf_counter() - began) * 1000.0)
    notified.clear()
    began = time.perf_counter()
    cluster.start()
    ready = time.perf_counter()
    figures["start_s"].append(ready - began)
    notifier = gevent.spawn(notify_forever, cluster)
    try:
        if not notified.wait(120):
            raise RuntimeError("nothing processed within 120 s of the restart")
        figures["first_processed_ms"].append((time.perf_counter() - ready) * 1000.0)
    finally:
        notifier.kill()


def notify_forever(cluster):
    while True:
        try:
            cluster.execute("SELECT pg_notify(%s, 'outage')", (CHANNEL,))
        except Exception:  # the server is still starting: try again
            pass
        gevent.sleep(0.01)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("figure", choices=("restart", "scale", "outage"))
    parser.add_argument("--dsn")
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = protocol.workdir("pgvisor-bench-costs-")
    figures = {"restart": restart, "scale": scale, "outage": outage}[args.figure](args, workdir)
    protocol.result(figures)


if __name__ == "__main__":
    main()
