"""Contenders 3 and 4: pgvisor as shipped — one instance under a real Supervisor, logging
configured at INFO (text, to stderr), the Prometheus collector registered, the cyclic
collector settled as ``pgvisor run`` does (``supervisor.service.settle_collector``) — with
a memory queue, or with ``--spool DIR`` a FileQueue spool (``--fsync`` for the durable mode).

Run monkey-patched, as the ``pgvisor`` command runs:
``python -m gevent.monkey --module bench.contender_pgvisor ARGS``. ``--profile FILE``
writes pyinstrument's profile of the measured part to FILE: functions by own time
(:mod:`bench.profiling`), then the call tree.
"""
import os

import gevent.event
from prometheus_client import generate_latest

from bench import protocol, sink
from instances import InstanceSpec, Registry
from supervisor import Supervisor
from supervisor.logs import configure_logging
from supervisor.metrics import make_registry
from supervisor.service import settle_collector
from supervisor.testing import wait_for

NAME = "bench"


def options(parser):
    parser.add_argument("--spool", help="spool directory (default: a memory queue)")
    parser.add_argument("--fsync", action="store_true", help="the spool's fsync mode")
    parser.add_argument("--profile", help="write the top cProfile costs to this file")


def make_supervisor(args, workdir):
    queue = None if args.spool is None else {"spool": args.spool, "fsync": args.fsync}
    registry = Registry(os.path.join(workdir, "registry.json"))
    registry.add(InstanceSpec(name=NAME, channels=(args.channel,), handler="bench.sink:handle",
                              queue=queue))
    return Supervisor(registry, args.dsn, hub_monitor=not protocol.counting())


def write_profile(profiler, path):
    from pyinstrument.renderers import ConsoleRenderer

    from bench.profiling import flat_text
    tree = profiler.output(ConsoleRenderer(time="percent_of_total"))
    with open(path, "w", encoding="utf-8") as f:
        f.write(flat_text(profiler.last_session) + "\ncall tree:\n" + tree)


def make_profiler(path):
    if not path:
        return None
    from pyinstrument import Profiler
    return Profiler(interval=0.0005)


def main():
    args = protocol.arguments(__doc__, options)
    configure_logging("info", "text")
    workdir = protocol.workdir("pgvisor-bench-")
    sup = make_supervisor(args, workdir)
    metrics = make_registry(sup)
    finished = gevent.event.Event()
    sink.state.reset(args.expected, finished.set)
    sup.start()
    wait_for(lambda: sup.instance(NAME) is not None and sup.instance(NAME).connected,
             timeout=30, message="the pgvisor instance listens")
    settle_collector()  # as supervisor.service.Service.start does once started
    profiler = make_profiler(args.profile)
    protocol.ready()
    if profiler is not None:
        profiler.start()
    timed_out = not finished.wait(args.timeout)
    protocol.drained()
    if profiler is not None:
        profiler.stop()
        write_profile(profiler, args.profile)
    scraped = len(generate_latest(metrics))
    sup.stop(timeout=5)
    figures = sink.summary()  # after the stop: its CPU would hold the hub of a running one
    protocol.result(figures, timed_out=timed_out, metrics_bytes=scraped)


if __name__ == "__main__":
    main()
