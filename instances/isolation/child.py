"""One worker process of :class:`~instances.isolation.parent.WorkerProcesses`, from both
ends of its pipes: :class:`WorkerChild` is the parent's handle on it (start it, hand it the spec, read
its beats, signal it, reap it), and :func:`main` is what runs inside it
(``python -m gevent.monkey --module instances.isolation.child``).

The protocol between the two lives here alone::

    argv:      --beat-fd N --beat-interval S --stop-timeout S   (never a secret)
    stdin:     {"spec": {...}, "path": [...]} as one JSON line, then held open: each
               further "\\n" is a wake-up (the parent put files into incoming/); EOF: stop
    beat pipe: "processed failed timed_out\\n" at once ("0 0 0", ready), then every
               beat_interval; EOF: the child is gone

The wake-ups are the child's spool watcher (:meth:`FileQueue.attach_watcher
<instances.spool.FileQueue.attach_watcher>`): an idle child gets the service's puts at
once, and looks at ``incoming/`` by itself only every ``watched_poll_interval`` (files
that other processes put there, such as a requeue from the command line).

Children are new interpreters (``subprocess``, never ``fork``): nothing of the parent's hub
is inherited, and the spec (which may hold a password) goes through stdin, never argv.

Concurrency: :class:`WorkerChild` methods are for greenlets of the parent hub's thread;
``read_beats`` blocks its greenlet until the child is gone. In the child, :func:`main`
blocks until SIGTERM, EOF on stdin or the end of its pool.
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

from instances import logformat
from instances.processors import ProcessorPool

log = logging.getLogger(__name__)


class WorkerChild:
    """The parent's handle on one worker process (``proc``, a gevent Popen)."""

    __slots__ = ("counts", "fd", "last_beat", "proc", "reader", "retiring", "stuck")

    def __init__(self, proc, fd):
        self.proc, self.fd = proc, fd
        self.last_beat = time.monotonic()
        self.counts = None  # (processed, failed, timed_out) of the last beat; None: not ready
        self.retiring = self.stuck = False
        self.reader = None  # the parent's greenlet running read_beats

    @classmethod
    def start(cls, beat_interval, stop_timeout):
        """Start a child process with its beat pipe; it waits for :meth:`send`."""
        read_fd, write_fd = os.pipe()
        command = [sys.executable, "-m", "gevent.monkey", "--module", "instances.isolation.child",
                   "--beat-fd", str(write_fd), "--beat-interval", str(beat_interval),
                   "--stop-timeout", str(stop_timeout)]
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, pass_fds=(write_fd,))
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        return cls(proc, read_fd)

    def send(self, config):
        """Write ``config`` (the spec and sys.path) as the one JSON line on its stdin."""
        try:
            self.proc.stdin.write(json.dumps(config).encode() + b"\n")
            self.proc.stdin.flush()
            gevent.os.make_nonblocking(self.proc.stdin.fileno())  # for wake()
        except OSError:
            pass  # it died at once: its reader sees the EOF

    def wake(self):
        """Tell the child that ``incoming/`` changed. Never blocks, never raises: a full
        pipe already holds a wake-up the child has not read, and a closed one means the
        child is gone (its reader sees the EOF)."""
        try:
            os.write(self.proc.stdin.fileno(), b"\n")
        except (OSError, ValueError):
            pass

    def read_beats(self, name):
        """Record beats until EOF, then SIGKILL and reap the child; returns its exit code
        (negative: the signal). ``name`` (the instance) is for the logs."""
        gevent.os.make_nonblocking(self.fd)
        pending = b""
        try:
            while True:
                data = gevent.os.nb_read(self.fd, 4096)
                if not data:
                    break
                self.last_beat = time.monotonic()
                lines = (pending + data).split(b"\n")
                pending = lines.pop()
                if lines:
                    self.counts = tuple(int(n) for n in lines[-1].split()[:3])
        except (OSError, ValueError):
            log.exception("pool %s: bad beat from worker %d", name, self.proc.pid,
                          extra={"action": "workers.bad_beat", "instance": name})
        finally:
            os.close(self.fd)
        self.signal(signal.SIGKILL)  # no pipe, no watch: never leave one running
        return self.proc.wait()

    def signal(self, signum):
        try:
            self.proc.send_signal(signum)
        except OSError:
            pass  # already gone (not yet reaped: the reader does that)


# -- the child ---------------------------------------------------------------------------

def main(argv=None):
    """A worker process: read the spec from stdin, consume the spool until SIGTERM or
    EOF on stdin (the parent is gone), beating on ``--beat-fd``. Returns the exit code."""
    parser = argparse.ArgumentParser(prog="instances.isolation.child")
    parser.add_argument("--beat-fd", type=int, required=True)
    parser.add_argument("--beat-interval", type=float, required=True)
    parser.add_argument("--stop-timeout", type=float, required=True)
    args = parser.parse_args(argv)
    logformat.install_from(None)
    line = _read_line(0)  # wake-ups may follow it: only the first line is the config
    if line is None:
        log.error("no spec on stdin", extra={"action": "workers.no_spec"})
        return 2
    config = json.loads(line)
    logformat.install_from(config.get("log"))  # the service's format and secrets
    sys.path.extend(p for p in config["path"] if p not in sys.path)
    from instances import connectors  # noqa: F401  (psycogreen for handlers using psycopg2)
    from instances.spec import InstanceSpec
    from instances.spool import FileQueue
    spec = InstanceSpec.from_dict(config["spec"], resolve=False)
    handler = spec.resolve_handler()  # before the spool: a bad handler touches no file
    queue = FileQueue.from_spec(spec.queue, owner=spec.name)
    wakers = []
    queue.attach_watcher(wakers.append)
    pool = ProcessorPool(queue, handler, 1, 1, spec.handler_timeout, spec.name,
                         batch=spec.batch)
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the parent's to handle
    pool.link(lambda _: stop.set())
    os.write(args.beat_fd, b"0 0 0\n")  # ready: from now on the heartbeat_timeout applies
    pool.start()
    watchers = [gevent.spawn(_beat, args.beat_fd, args.beat_interval, pool, stop),
                gevent.spawn(_watch_stdin, stop, wakers)]
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
    return data.split(b"\n", 1)[0]


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


def _watch_stdin(stop, wakers):
    """Wake the spool's getters for every read of wake-ups; stop at EOF."""
    gevent.os.make_nonblocking(0)
    try:
        while gevent.os.nb_read(0, 4096):
            for wake in wakers:
                wake()
    except OSError:
        pass
    stop.set()


if __name__ == "__main__":
    sys.exit(main())
