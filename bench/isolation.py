"""Process isolation: throughput of a CPU-bound handler with N worker processes.

One instance with ``isolation="process"`` and a spool (fsync off), min = max = ``--workers``
child processes, under a real Supervisor. The handler (:func:`burn`) spends about
``BURN_MS`` of pure-Python CPU per notification and never yields. The rate is
``--expected`` / (first notification received by the listener -> all processed, as the
workers' beats report them); the bench sets ``WorkerProcesses.beat_interval`` to 20 ms so
the beats do not round the figure.

Run monkey-patched: ``python -m gevent.monkey --module bench.isolation --dsn DSN
--expected N --workers W --spool DIR`` (the :mod:`bench.protocol` contender protocol).
"""
import os
import time

import gevent

from bench import protocol
from instances import InstanceSpec, Registry
from instances.isolation.parent import WorkerProcesses
from supervisor import Supervisor
from supervisor.logs import configure_logging
from supervisor.testing import wait_for

NAME = "isolated"
#: Iterations of the CPU-bound loop (a few ms of CPU; the run reports the measured time).
BURN_LOOPS = 20_000
#: Seconds between the workers' beats (their processed counts) in this bench.
BEAT_INTERVAL = 0.02


def burn(notification):
    """The CPU-bound handler: a pure-Python loop, no I/O, no yield."""
    total = 0
    for i in range(BURN_LOOPS):
        total += i * i
    return total


def options(parser):
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--spool", required=True)
    parser.add_argument("--fsync", action="store_true")
    parser.add_argument("--profile", help="ignored (the handler runs in other processes)")


def main():
    args = protocol.arguments(__doc__, options)
    configure_logging("warning", "text")
    WorkerProcesses.beat_interval = BEAT_INTERVAL
    registry = Registry(os.path.join(protocol.workdir("pgvisor-bench-iso-"), "r.json"))
    registry.add(InstanceSpec(name=NAME, channels=(args.channel,), handler="bench.isolation:burn",
                              queue={"spool": args.spool}, isolation="process",
                              min_concurrency=args.workers, max_concurrency=args.workers))
    sup = Supervisor(registry, args.dsn).start()
    wait_for(lambda: sup.instance(NAME) is not None and sup.instance(NAME).connected,
             timeout=60, message="the isolated instance listens")
    instance = sup.instance(NAME)
    # Every worker process up (it beat once) and the catch_up handled: then produce.
    wait_for(lambda: instance.pool.ready and instance.health()["processed"] >= 1,
             timeout=60, message="the worker processes serve")
    protocol.ready()
    deadline = time.monotonic() + args.timeout
    while instance.listener.received == 0 and time.monotonic() < deadline:
        gevent.sleep(0.001)
    began = time.time()
    while instance.health()["processed"] < args.expected + 1 and time.monotonic() < deadline:
        gevent.sleep(0.005)  # + 1: the catch_up, handled before the producer started
    ended = time.time()
    processed = instance.health()["processed"] - 1
    sup.stop(timeout=10)
    protocol.result({"count": processed, "drain_rate": processed / max(ended - began, 1e-9),
                     "workers": args.workers, "handler_ms": handler_ms()},
                    timed_out=processed < args.expected)


def handler_ms(calls=50):
    """Milliseconds one :func:`burn` takes here and now (the machine may be loaded)."""
    began = time.perf_counter()
    for _ in range(calls):
        burn(None)
    return (time.perf_counter() - began) * 1000.0 / calls


if __name__ == "__main__":
    main()
