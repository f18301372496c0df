"""The :class:`HubHeartbeat`: proof that nothing blocks the gevent hub.

A greenlet sleeps ``tick`` seconds in a loop and records how much later than asked each
tick came. Use it around code under test (a handler, a listener, a supervisor) to assert
the hub never stalled: ``with HubHeartbeat() as beat: ...; assert beat.max_stall < 0.05``.
"""
import time

import gevent


class HubHeartbeat:
    """A greenlet that sleeps ``tick`` seconds in a loop and keeps the worst lateness.

    Concurrency: start() and stop() from any greenlet of the hub's thread; the loop runs
    in its own greenlet and never raises.
    """

    #: Seconds between two ticks.
    tick = 0.005

    def __init__(self, tick=None):
        if tick is not None:
            self.tick = tick
        #: Seconds the latest tick came later than asked, at worst.
        self.max_stall = 0.0
        self.ticks = 0
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)
        return self

    def stop(self):
        """Kill the loop (blocks the caller until it is dead); return the worst stall."""
        if self._greenlet is not None:
            self._greenlet.kill()
        return self.max_stall

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    def _run(self):
        clock, last = time.perf_counter, time.perf_counter()
        while True:
            gevent.sleep(self.tick)
            now = clock()
            stall = now - last - self.tick
            if stall > self.max_stall:
                self.max_stall = stall
            last = now
            self.ticks += 1
