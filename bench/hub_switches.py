"""Greenlet switches per second with the hub watch off, with pgvisor's
:class:`~supervisor.hubwatch.HubWatch`, and with gevent's monitor thread (its greenlet trace
function runs on every switch: what HubWatch used before issue 16).

Run monkey-patched, as the service runs (``nice -n 10`` on a shared machine)::

    python -m gevent.monkey --module bench.hub_switches [--seconds 2] [--reps 5]

Two shapes: ``sleep0``, 10 greenlets yielding with ``gevent.sleep(0)`` (each a switch to
the hub and one back, as a worker that yields between items), and ``raw``, two raw
greenlets switching to each other (yielding to the hub every 2,000 switches). Each mode
runs ``--reps`` times interleaved with the others (the machine's load moves, the best of
each is compared); prints one line per mode and shape: the best rates per wall second and
per CPU second of the process (the watch thread's CPU included), each with its ratio to
"off".
"""
import argparse
import time
import warnings

import gevent
import greenlet

from supervisor.hubwatch import HubWatch


def sleep0_count(seconds, workers=10):
    """Switches in ``seconds`` of ``workers`` greenlets calling gevent.sleep(0) (two each)."""
    count = [0]
    until = time.perf_counter() + seconds

    def work():
        while time.perf_counter() < until:
            for _ in range(100):
                gevent.sleep(0)
            count[0] += 100

    gevent.joinall([gevent.spawn(work) for _ in range(workers)])
    return count[0] * 2


def raw_count(seconds):
    """Switches in ``seconds`` between two raw greenlets."""
    count = [0]
    until = time.perf_counter() + seconds

    def pong(peer):
        while True:
            peer = peer.switch()

    other = greenlet.greenlet(pong)
    peer = greenlet.getcurrent()
    while time.perf_counter() < until:
        for _ in range(1000):
            other.switch(peer)
        count[0] += 2000
        gevent.sleep(0)  # the hub runs now and then: no block to report
    other.throw(greenlet.GreenletExit)
    return count[0]


def rates(count, seconds):
    """``(switches per wall second, switches per CPU second of the process)``: the CPU
    figure holds on a loaded machine (the watch thread's CPU counts in it), the wall one
    does not."""
    wall, cpu = time.perf_counter(), time.process_time()
    switches = count(seconds)
    return switches / (time.perf_counter() - wall), switches / (time.process_time() - cpu)


class GeventMonitor:
    """gevent's monitor thread, as HubWatch ran it before."""

    def start(self):
        gevent.config.monitor_thread = True
        gevent.config.max_blocking_time = 0.1
        gevent.config.print_blocking_reports = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gevent.get_hub().start_periodic_monitoring_thread()
        return self

    def stop(self):
        hub = gevent.get_hub()
        hub.periodic_monitoring_thread.kill()
        hub.periodic_monitoring_thread = None
        gevent.config.monitor_thread = False


class Off:
    def start(self):
        return self

    def stop(self):
        pass


MODES = {"off": Off, "hubwatch": HubWatch, "gevent-monitor": GeventMonitor}
SHAPES = {"sleep0": sleep0_count, "raw": raw_count}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.5)
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args(argv)
    best = {}
    for _ in range(args.reps):
        for mode, make in MODES.items():
            watch = make().start()
            try:
                for shape, count in SHAPES.items():
                    wall, cpu = rates(count, args.seconds)
                    old = best.get((shape, mode), (0.0, 0.0))
                    best[shape, mode] = (max(old[0], wall), max(old[1], cpu))
            finally:
                watch.stop()
    for shape in SHAPES:
        off = best[shape, "off"]
        for mode in MODES:
            wall, cpu = best[shape, mode]
            print("%-7s %-15s %10.0f /s wall (%.3f of off)  %10.0f /s CPU (%.3f of off)" % (
                shape, mode, wall, wall / off[0], cpu, cpu / off[1]))


if __name__ == "__main__":
    main()
