"""Process isolation: :class:`WorkerProcesses` runs an instance's processors as child
processes that share its spool, and :func:`main` is such a child.

::

    parent (the service)                       child (python -m gevent.monkey --module
                                                      instances.workers, one per worker)
    listener ─▶ FileQueue(DIR) ─ files ─▶ FileQueue(DIR, own owner) ─▶ ProcessorPool(1) ─▶ handler
    WorkerProcesses ◀── beat pipe: "processed failed timed_out\\n" every beat_interval ──┘
                    ─── stdin: the spec as one JSON line, then held open (EOF: stop) ──▶

Children are new interpreters (``subprocess``, never ``fork``): nothing of the parent's hub
is inherited, and the spec (which may hold a password) goes through stdin, never argv.

Watching (no polling of pids):

* **death**: EOF on a child's beat pipe means the child is gone; the parent reaps it at
  once, gives its claimed files back to ``incoming/`` (one more attempt each; at
  ``max_attempts`` they go to ``errors/``), and ends the pool "abnormal" with
  :class:`WorkerDied`. The instance then dies, and its owner (the supervisor) restarts it
  under its restart budget. The other children are asked to stop (SIGTERM: finish the
  current message, give claims back, exit), and SIGKILLed after ``stop_timeout``.
* **hang**: a child silent for ``heartbeat_timeout`` seconds (a handler holding the CPU
  without yielding: its hub cannot beat), or without a first beat ``start_timeout``
  seconds after its start, is SIGKILLed, then handled as a death.

Concurrency: ``min_concurrency`` children at start, one more (up to ``max_concurrency``)
each ``scale_interval`` while the spool backlog exceeds their number; never fewer until a
restart. Each child runs one processor greenlet. Every parent method is for greenlets of
the hub's thread; ``stop`` and a blocking ``kill`` block the caller; links run in the hub.
"""
import argparse
import json
import logging
import os
import signal
import sys
import time

import gevent
import gevent.event
import gevent.os
from gevent import subprocess

from instances.components import ComponentKilled
from instances.links import Links
from instances.processors import ProcessorPool

log = logging.getLogger(__name__)


class WorkerDied(Exception):
    """A worker process ended while its pool was running (crash, SIGKILL or hang)."""


class _Child:
    __slots__ = ("proc", "fd", "last_beat", "counts", "retiring", "stuck", "reader")

    def __init__(self, proc, fd):
        self.proc, self.fd = proc, fd
        self.last_beat = time.monotonic()
        self.counts = None  # (processed, failed, timed_out) of the last beat; None: not ready
        self.retiring = self.stuck = False
        self.reader = None


class WorkerProcesses:
    """Child processes consuming ``queue``'s spool directory with ``spec``'s handler.

    Offers the :class:`~instances.processors.ProcessorPool` surface an Instance uses.
    """

    #: Seconds between two beats of a child.
    beat_interval = 1.0
    #: Seconds without a beat after which a child counts as hung and is SIGKILLed.
    heartbeat_timeout = 30.0
    #: Seconds a new child may take to start (import, open the spool) before its first beat.
    start_timeout = 30.0
    #: Seconds a stopping child may finish its message before it is SIGKILLed.
    stop_timeout = 10.0
    #: Seconds between the watcher's looks (hang check, growth).
    scale_interval = 0.5

    def __init__(self, queue, spec):
        self.queue, self.spec, self.name = queue, spec, spec.name
        ProcessorPool._check_concurrency(spec.min_concurrency, spec.max_concurrency)
        self.min_concurrency, self.max_concurrency = spec.min_concurrency, spec.max_concurrency
        #: Passed to children at their start (a live change applies to new children).
        self.handler_timeout = spec.handler_timeout
        self.exit = self.exception = self.last_error = None
        #: Children that died unexpectedly / were killed as hung, since creation.
        self.deaths = self.hangs = 0
        self._children = {}  # pid -> _Child
        self._ended_counts = [0, 0, 0]
        self._gone = gevent.event.Event()
        self._running = False
        self._watcher = None
        self._links = Links("workers")

    # -- owner API ---------------------------------------------------------------------
    @property
    def alive(self):
        return self._running

    @property
    def size(self):
        return len(self._children)

    @property
    def pids(self):
        """Pids of the children serving now (not those retiring)."""
        return [pid for pid, c in self._children.items() if not c.retiring]

    @property
    def ready(self):
        """True when every serving child has beaten at least once."""
        return self._running and all(c.counts is not None for c in self._serving())

    def start(self):
        """Spawn ``min_concurrency`` children and the watcher; returns at once."""
        if self._running:
            return self
        self._running, self.exit, self.exception = True, None, None
        for _ in range(self.min_concurrency):
            self._spawn()
        self._watcher = gevent.spawn(self._watch)
        return self

    def stop(self, timeout=None):
        """SIGTERM every child (each finishes its message and gives claims back), SIGKILL
        those left after ``timeout`` seconds. Blocks the caller; True if all ended cleanly."""
        if not self._running:
            return self.exit != "abnormal"
        timeout = self.stop_timeout if timeout is None else timeout
        self._running = False
        self._signal_all(signal.SIGTERM)
        clean = self._gone.wait(timeout)
        if not clean:
            log.warning("pool %s: workers still running after %.1fs: killing them", self.name,
                        timeout, extra={"action": "workers.stop_timeout", "instance": self.name})
            self._signal_all(signal.SIGKILL)
            self._gone.wait(timeout)
        self._finish("normal" if clean else "abnormal",
                     None if clean else ComponentKilled("workers killed at stop"))
        return clean

    def kill(self, block=True, timeout=None):
        """SIGKILL every child, as a crash would (exit "abnormal"; claims come back from
        ``pending/``). ``block``: wait up to ``timeout`` seconds until they are reaped."""
        if self._running:
            self._running = False
            self._signal_all(signal.SIGKILL)
            self._finish("abnormal", ComponentKilled("pool %s killed" % self.name))
        if block:
            self._gone.wait(timeout)

    def join(self, timeout=None):
        """Block until every child is reaped or ``timeout``; True if the pool ended."""
        self._gone.wait(timeout)
        return not self._running

    def resize(self, min_concurrency, max_concurrency):
        """New bounds: spawn up to the new min, ask children above the new max to stop."""
        ProcessorPool._check_concurrency(min_concurrency, max_concurrency)
        self.min_concurrency, self.max_concurrency = min_concurrency, max_concurrency
        if not self._running:
            return
        while len(self._serving()) < min_concurrency:
            self._spawn()
        for child in self._serving()[max_concurrency:]:
            child.retiring = True
            _signal(child, signal.SIGTERM)

    def link(self, callback):
        """Call ``callback(pool)`` in the hub when the pool ends. MUST NOT block/raise."""
        self._links.add(callback)

    def unlink(self, callback):
        self._links.remove(callback)

    # -- health ------------------------------------------------------------------------
    busy_since = None  # handlers run in the children; hangs are judged by their beats

    @property
    def heartbeat(self):
        """time.monotonic() of the least recent beat among serving children (None if none)."""
        beats = [c.last_beat for c in self._serving()]
        return min(beats) if beats else None

    def stats(self):
        totals = list(self._ended_counts)
        for child in self._children.values():
            for i, count in enumerate(child.counts or (0, 0, 0)):
                totals[i] += count
        return {"size": self.size, "processed": totals[0], "failed": totals[1],
                "timed_out": totals[2], "last_error": self.last_error, "busy_since": None,
                "deaths": self.deaths, "hangs": self.hangs}

    # -- children ----------------------------------------------------------------------
    def _serving(self):
        return [c for c in self._children.values() if not c.retiring]

    def _command(self, beat_fd):
        return [sys.executable, "-m", "gevent.monkey", "--module", "instances.workers",
                "--beat-fd", str(beat_fd), "--beat-interval", str(self.beat_interval),
                "--stop-timeout", str(self.stop_timeout)]

    def _spawn(self):
        read_fd, write_fd = os.pipe()
        try:
            proc = subprocess.Popen(self._command(write_fd), stdin=subprocess.PIPE,
                                    pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        child = self._children[proc.pid] = _Child(proc, read_fd)
        self._gone.clear()
        spec = dict(self.spec.to_dict(), handler_timeout=self.handler_timeout)
        try:
            proc.stdin.write(json.dumps({"spec": spec, "path": sys.path}).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            pass  # it died at once: its reader sees the EOF
        child.reader = gevent.spawn(self._read, child)
        log.info("pool %s: worker %d started", self.name, proc.pid,
                 extra={"action": "workers.spawn", "instance": self.name})
        return child

    def _read(self, child):
        """Reader greenlet of one child: beats until EOF, then the child's end."""
        gevent.os.make_nonblocking(child.fd)
        pending = b""
        try:
            while True:
                data = gevent.os.nb_read(child.fd, 4096)
                if not data:
                    break
                child.last_beat = time.monotonic()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                if lines:
                    child.counts = tuple(int(n) for n in lines[-1].split()[:3])
        except (OSError, ValueError):
            log.exception("pool %s: bad beat from worker %d", self.name, child.proc.pid,
                          extra={"action": "workers.bad_beat", "instance": self.name})
        finally:
            os.close(child.fd)
        _signal(child, signal.SIGKILL)  # no pipe, no watch: never leave one running
        code = child.proc.wait()
        self._child_ended(child, code)

    def _child_ended(self, child, code):
        self._children.pop(child.proc.pid, None)
        try:
            child.proc.stdin.close()
        except OSError:
            pass
        for i, count in enumerate(child.counts or (0, 0, 0)):
            self._ended_counts[i] += count
        try:
            self.queue.requeue_pending_of_dead_owners()  # its claims, at once
        except Exception:
            log.exception("pool %s: requeue after worker end failed", self.name,
                          extra={"action": "workers.requeue_error", "instance": self.name})
        if not self._children:
            self._gone.set()
        if child.retiring or not self._running:
            return
        how = ("hung: no beat for %.1fs" % (time.monotonic() - child.last_beat) if child.stuck
               else "killed by signal %d" % -code if code < 0 else "exit code %d" % code)
        error = WorkerDied("worker %d of %s ended (%s)" % (child.proc.pid, self.name, how))
        self.deaths += 1
        self.last_error = str(error)
        log.error("%s", error, extra={"action": "workers.died", "instance": self.name})
        self._running = False
        self._signal_all(signal.SIGTERM)
        gevent.spawn(self._kill_after, self.stop_timeout)
        self._finish("abnormal", error)

    def _kill_after(self, seconds):
        if not self._gone.wait(seconds):
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, signum):
        for child in list(self._children.values()):
            child.retiring = True
            _signal(child, signum)

    def _watch(self):
        """Watcher greenlet: SIGKILL hung children; grow while the backlog is larger."""
        while self._running:
            now = time.monotonic()
            for child in self._serving():
                limit = self.heartbeat_timeout if child.counts else self.start_timeout
                if not child.stuck and now - child.last_beat > limit:
                    child.stuck = True
                    self.hangs += 1
                    log.error("pool %s: worker %d silent for %.1fs: killing it", self.name,
                              child.proc.pid, now - child.last_beat,
                              extra={"action": "workers.hung", "instance": self.name})
                    _signal(child, signal.SIGKILL)
            serving = len(self._serving())
            if serving < self.max_concurrency and self.queue.qsize() > serving:
                self._spawn()
            gevent.sleep(min(self.scale_interval, self.heartbeat_timeout / 4))

    def _finish(self, exit, exception):
        self.exit, self.exception = exit, exception
        if self._watcher is not None and self._watcher is not gevent.getcurrent():
            self._watcher.kill(block=False)
        log.info("pool %s ended (%s)", self.name, exit,
                 extra={"action": "workers.ended", "instance": self.name})
        self._links.notify_soon(self)

    def __repr__(self):
        return "<WorkerProcesses %s pids=%s %s>" % (
            self.name, sorted(self._children), "alive" if self._running else (self.exit or "new"))


def _signal(child, signum):
    try:
        child.proc.send_signal(signum)
    except OSError:
        pass  # already gone (not yet reaped: the reader does that)


# -- the child ---------------------------------------------------------------------------

def main(argv=None):
    """A worker process: read the spec from stdin, consume the spool until SIGTERM or
    EOF on stdin (the parent is gone), beating on ``--beat-fd``. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="instances.workers")
    parser.add_argument("--beat-fd", type=int, required=True)
    parser.add_argument("--beat-interval", type=float, default=WorkerProcesses.beat_interval)
    parser.add_argument("--stop-timeout", type=float, default=WorkerProcesses.stop_timeout)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker[%(process)d] "
                        "%(levelname)s %(name)s: %(message)s")
    line = _read_line(0)
    if line is None:
        log.error("no spec on stdin", extra={"action": "workers.no_spec"})
        return 2
    config = json.loads(line)
    sys.path.extend(p for p in config["path"] if p not in sys.path)
    from instances import connectors  # noqa: F401  (psycogreen for handlers using psycopg2)
    from instances.instance import make_queue
    from instances.spec import InstanceSpec
    spec = InstanceSpec.from_dict(config["spec"], resolve=False)
    queue = make_queue(spec, owner=spec.name)
    pool = ProcessorPool(queue, spec.resolve_handler(), 1, 1, spec.handler_timeout, spec.name)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to handle
    pool.link(lambda _: stop.set())
    os.write(args.beat_fd, b"0 0 0\n")  # ready: from now on the heartbeat_timeout applies
    pool.start()
    watchers = [gevent.spawn(_beat, args.beat_fd, args.beat_interval, pool, stop),
                gevent.spawn(_watch_stdin, stop)]
    stop.wait()
    clean = pool.stop(args.stop_timeout)
    queue.close()
    gevent.killall(watchers)
    return 0 if clean and pool.exit == "normal" else 1


def _read_line(fd):
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 65536)  # before the hub runs anything: blocking is fine
        if not chunk:
            return None
        data += chunk
    return data


def _beat(fd, interval, pool, stop):
    gevent.os.make_nonblocking(fd)
    while not stop.is_set():
        line = b"%d %d %d\n" % (pool.processed, pool.failed, pool.timed_out)
        try:
            gevent.os.nb_write(fd, line)
        except OSError:  # the parent is gone
            stop.set()
            return
        stop.wait(interval)


def _watch_stdin(stop):
    gevent.os.make_nonblocking(0)
    try:
        while gevent.os.nb_read(0, 4096):
            pass
    except OSError:
        pass
    stop.set()


if __name__ == "__main__":
    sys.exit(main())
