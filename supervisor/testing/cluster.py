"""PostgresCluster: one throwaway PostgreSQL server in a temporary directory.

Lifecycle::

    PostgresCluster() --start()--> running --stop()/kill()--> stopped --start()--> running
           |                                                                     |
           +------------------------- cleanup() (idempotent) --------------------+--> gone

Layout of the temporary directory (``tempfile.mkdtemp`` in ``/dev/shm`` when possible, see
:func:`supervisor.testing.datadir.base_directory`): ``data/`` (the data directory),
``postgres.log`` (the server log), and the unix socket (the directory *is* ``host``). The
server listens on 127.0.0.1 at a free port (never 5432) and on the socket.

Every cluster is released when its object is garbage collected or the process exits (a
``weakref.finalize``): the postmaster is stopped (SIGQUIT, then SIGKILL) and the directory
removed. On Linux the postmaster also dies with the process that started it.

Methods block the calling greenlet (cooperatively: other greenlets keep running) and are
not meant to be called concurrently on one cluster from several greenlets.
"""
import os
import shutil
import signal
import time
import weakref

import gevent
from gevent import subprocess

from supervisor.testing import datadir as datadirs
from supervisor.testing import processes
from supervisor.testing.binaries import ClusterError, find_bindir, program
from supervisor.testing.sql import ClusterSQL

_STOP_SIGNALS = {"smart": signal.SIGTERM, "fast": signal.SIGINT, "immediate": signal.SIGQUIT}
_PORT_TAKEN = ("Address already in use", "could not create any TCP/IP sockets")


class _Resources:
    """What a cluster must give back, kept apart from it so a finalizer can hold it."""

    def __init__(self, tempdir):
        self.tempdir = tempdir
        self.proc = None
        self.owner_pid = os.getpid()

    def release(self):
        """Stop the postmaster (blocking: may run at interpreter exit) and remove the dir.

        Does nothing in a forked child (its exit hooks must not take the parent's clusters).
        """
        if os.getpid() != self.owner_pid:
            return
        proc, self.proc = self.proc, None
        if proc is not None and processes.alive(proc.pid):
            children = processes.children_of(proc.pid)
            processes.signal_quietly(proc.pid, signal.SIGQUIT)
            left = processes.wait_gone([proc.pid] + children, 5.0, blocking=True)
            for pid in left:
                processes.signal_quietly(pid, signal.SIGKILL)
            processes.wait_gone(left, 5.0, blocking=True)
        datadirs.remove_crashed_shared_memory(os.path.join(self.tempdir, "data"))
        shutil.rmtree(self.tempdir, ignore_errors=True)


class PostgresCluster(ClusterSQL):
    """A throwaway PostgreSQL cluster; see the module docstring for its lifecycle.

    ``settings`` (dict) adds or overrides postgresql.conf settings. ``bindir`` picks the
    server programs (see :func:`supervisor.testing.binaries.find_bindir`). Raises
    :class:`~supervisor.testing.binaries.BinariesNotFound` at once when there are none.
    """

    #: Seconds start() waits for the server to accept connections (crash recovery included).
    start_timeout = 60.0
    #: Seconds stop() waits for the postmaster to exit before it SIGKILLs it.
    stop_timeout = 60.0
    #: Seconds kill() waits for the orphaned server processes to notice and exit.
    orphan_timeout = 10.0
    #: How many fresh ports start() tries when someone else took the chosen one.
    port_attempts = 5
    #: Seconds between two looks at postmaster.pid while starting.
    poll_interval = 0.005

    def __init__(self, name="pgvisor-test", bindir=None, settings=None):
        self.name = name
        self.bindir = find_bindir(bindir)
        self.settings = dict(settings or {})
        self.port = processes.free_port()
        self._resources = _Resources(datadirs.make_tempdir("%s-" % name))
        self._finalizer = weakref.finalize(self, self._resources.release)
        self._initialized = False
        self._password_group_made = False
        self._standbys = []

    # -- where things are -------------------------------------------------------------

    @property
    def host(self):
        """The unix socket directory (libpq ``host``); also the temporary directory."""
        return self._resources.tempdir

    @property
    def datadir(self):
        """The data directory (``PGDATA``)."""
        return os.path.join(self._resources.tempdir, "data")

    @property
    def log_path(self):
        """The server log file."""
        return os.path.join(self._resources.tempdir, "postgres.log")

    @property
    def pid(self):
        """The postmaster's pid while running, else None."""
        proc = self._resources.proc
        return proc.pid if proc is not None and self.running else None

    @property
    def running(self):
        """True while the postmaster started by this object is alive."""
        proc = self._resources.proc
        return proc is not None and proc.poll() is None and processes.alive(proc.pid)

    @property
    def removed(self):
        """True once cleanup() ran: the object cannot be started again."""
        return not self._finalizer.alive

    # -- lifecycle --------------------------------------------------------------------

    def start(self):
        """Start the server and wait until it accepts connections; returns self.

        Creates the data directory on the first call. A no-op when already running. Works
        after kill() (the server does crash recovery). Raises ClusterError with the log's
        path and last lines when the server does not come up.
        """
        if self.removed:
            raise ClusterError("%s was cleaned up and cannot start again" % self.name)
        if self.running:
            return self
        if not self._initialized:
            datadirs.create(self.bindir, self.datadir, self.settings)
            self._initialized = True
        self._remove_reused_pidfile()
        for _attempt in range(self.port_attempts):
            log_offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            proc = processes.spawn(self._postgres_args(), self.log_path, die_with_parent=True)
            self._resources.proc = proc
            if self._wait_started(proc, log_offset):
                break
            self.port = processes.free_port()
        else:
            raise ClusterError("%s: no free port after %d attempts; see %s" % (
                self.name, self.port_attempts, self.log_path))
        if not self._password_group_made:
            self._make_password_group()
            self._password_group_made = True
        return self

    def stop(self, mode="fast"):
        """Stop the server: ``fast`` (roll back, disconnect), ``immediate`` (like a crash:
        recovery on next start) or ``smart`` (wait for clients). Waits until the postmaster
        exited (SIGKILL after :attr:`stop_timeout`). A no-op when not running."""
        if mode not in _STOP_SIGNALS:
            raise ValueError("stop mode must be one of %s, not %r" % (sorted(_STOP_SIGNALS), mode))
        proc = self._resources.proc
        if not self.running:
            return
        processes.signal_quietly(proc.pid, _STOP_SIGNALS[mode])
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self, mode="fast"):
        """stop(mode) then start(); returns self."""
        self.stop(mode)
        return self.start()

    def kill(self):
        """SIGKILL the postmaster, as a crash would, and wait until it and its server
        processes are gone (orphans exit on postmaster death; stragglers get SIGKILL)."""
        proc = self._resources.proc
        if proc is None or not processes.alive(proc.pid):
            return
        children = processes.children_of(proc.pid)
        processes.signal_quietly(proc.pid, signal.SIGKILL)
        proc.wait(timeout=self.stop_timeout)
        left = processes.wait_gone(children, self.orphan_timeout)
        for pid in left:
            processes.signal_quietly(pid, signal.SIGKILL)
        processes.wait_gone(left, self.orphan_timeout)

    def cleanup(self):
        """Stop (immediate) and remove everything, standbys made from it included.
        Idempotent; also runs at garbage collection and at process exit."""
        for standby in self._standbys:
            standby.cleanup()
        del self._standbys[:]
        if self._finalizer.alive:
            self.stop("immediate")
            self._finalizer()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.cleanup()

    def __repr__(self):
        state = "removed" if self.removed else "running" if self.running else "stopped"
        return "<PostgresCluster %s port=%s %s>" % (self.name, self.port, state)

    # -- replication ------------------------------------------------------------------

    def create_standby(self, name=None):
        """Make, start and return a streaming standby of this (running) cluster.

        Copies the data with ``pg_basebackup -R -X stream`` over the unix socket, starts it
        on its own port and waits until its WAL receiver streams. Cleaned up with this one.
        """
        standby = PostgresCluster(name or "%s-standby" % self.name, self.bindir, self.settings)
        processes.run(
            [program(self.bindir, "pg_basebackup"), "-D", standby.datadir, "-R", "-X", "stream",
             "-c", "fast", "--no-sync", "-h", self.host, "-p", str(self.port),
             "-U", datadirs.SUPERUSER, "-w"],
            standby.log_path, timeout=self.start_timeout, what="pg_basebackup")
        standby._initialized = standby._password_group_made = True
        self._standbys.append(standby)
        standby.start()
        standby.wait_streaming()
        return standby

    # -- internals --------------------------------------------------------------------

    def _postgres_args(self):
        return [program(self.bindir, "postgres"), "-D", self.datadir,
                "-c", "port=%d" % self.port,
                "-c", "listen_addresses=127.0.0.1",
                "-c", "unix_socket_directories=%s" % self.host]

    def _pidfile_lines(self):
        try:
            with open(os.path.join(self.datadir, "postmaster.pid"), encoding="utf-8") as f:
                return f.read().splitlines()
        except OSError:
            return []

    def _remove_reused_pidfile(self):
        # postgres itself replaces a pid file whose pid is dead (and checks shared memory);
        # it refuses one whose pid now belongs to an unrelated process: drop only that one.
        lines = self._pidfile_lines()
        if lines and lines[0].strip().isdigit() and processes.alive(int(lines[0])):
            os.unlink(os.path.join(self.datadir, "postmaster.pid"))

    def _wait_started(self, proc, log_offset):
        """True once ready; False if the port was taken; ClusterError otherwise."""
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            lines = self._pidfile_lines()
            if len(lines) >= 8 and lines[0] == str(proc.pid) and lines[7].strip() == "ready":
                return True
            if proc.poll() is not None or not processes.alive(proc.pid):
                proc.wait()
                with open(self.log_path, "rb") as f:
                    f.seek(log_offset)
                    new_log = f.read().decode("utf-8", "replace")
                if any(marker in new_log for marker in _PORT_TAKEN):
                    return False
                raise ClusterError("%s: postgres exited with code %s while starting; log %s:\n%s"
                                   % (self.name, proc.returncode, self.log_path,
                                      processes.log_tail(self.log_path)))
            gevent.sleep(self.poll_interval)
        self.kill()
        raise ClusterError("%s: not ready within %ss; log %s:\n%s" % (
            self.name, self.start_timeout, self.log_path, processes.log_tail(self.log_path)))
