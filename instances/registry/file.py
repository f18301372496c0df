"""The :class:`Registry`: the desired instances, kept in one JSON file.

The file is the truth, shared by the service and the ``pgvisor instances`` verbs (which work
with the service down) and editable by hand::

    {"format": 1, "version": 7, "instances": [{"name": "river", ...}, ...]}

Guarantees: writes are atomic (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one, never a torn one; every
read-modify-write happens under ``flock`` on ``<path>.lock`` and re-reads the file first, so
two processes editing never lose each other's changes; an invalid file (hand edit) is
rejected with an error naming the file and every problem, and the previous state stays in
force.

This module owns the file's atomic replacement and the lock; the format is
:mod:`instances.registry.codec`'s, the edits :class:`~instances.registry.desired.DesiredState`'s.
``enables`` (optional in the file) counts the operator's enables per instance, so an enable
that changes no spec (the instance was enabled already, but parked by the supervisor) still
reaches a service that only sees the file. Pure file I/O (milliseconds): no gevent
requirement.
"""
import contextlib
import fcntl
import logging
import os
import tempfile
import time

import gevent

from instances.exceptions import RegistryError
from instances.registry.codec import dump, parse
from instances.registry.desired import DesiredState

log = logging.getLogger(__name__)


class Registry(DesiredState):
    """The desired state: specs by name, persisted in the JSON file at ``path``.

    Every method blocks the calling thread for file I/O (milliseconds) and, for changes,
    while another process holds the lock (at most ``lock_timeout``). Callbacks registered with
    :meth:`on_change` run synchronously in the caller's greenlet after the change is on disk
    and the lock released. Not meant to be changed from several threads at once; greenlets
    are fine (no method yields while holding the lock unless time.sleep is patched, and then
    the file lock still serializes).
    """

    backend = "file"
    #: Seconds to wait for ``<path>.lock`` held by another process before RegistryError.
    lock_timeout = 10.0
    #: Seconds between attempts to take the lock.
    lock_poll_interval = 0.01
    #: Permissions of a newly created registry file (it may hold DSN passwords).
    file_mode = 0o600

    def __init__(self, path, resolve=True):
        """Open the registry at ``path``, creating the file (and its directory) if missing.

        ``resolve``: add() and update() import changed handlers to check them; the file's
        specs are checked for syntax only (an unimportable handler fails its instance when it
        starts, not the whole registry). Raise RegistryError if the file is invalid; it is
        never overwritten.
        """
        super().__init__(resolve)
        self.path = os.path.abspath(os.fspath(path))
        self.lock_path = self.path + ".lock"
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as exc:
            raise RegistryError("cannot create the directory of registry %s: %s"
                                % (self.path, exc)) from exc
        with self._locked():
            if not os.path.exists(self.path):
                self._stat = self._write({}, 0, None, None)
                log.info("created registry %s", self.path,
                         extra={"action": "registry.create", "instance": None})
            else:
                self._specs, self._version, self._stat, self._enables = self._read()

    @property
    def location(self):
        """The file's path."""
        return self.path

    def changed_on_disk(self):
        """Cheap poll: True if the file's inode, size or mtime differ from the last read."""
        try:
            return fingerprint(os.stat(self.path)) != self._stat
        except FileNotFoundError:
            return True

    # -- storage (see instances.registry.desired) ------------------------------------------

    @contextlib.contextmanager
    def _locked(self):
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RegistryError("cannot open lock file %s: %s" % (self.lock_path, exc)) from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RegistryError("registry %s is locked by another process (lock "
                                            "file %s held for over %.0f s)" % (
                                                self.path, self.lock_path,
                                                self.lock_timeout)) from None
                    time.sleep(self.lock_poll_interval)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self):
        """Parse the file: ``(specs, version, fingerprint, enables)``; raise RegistryError."""
        return _read_file(self.path)

    def _write(self, specs, version, enables, old):
        """Atomically replace the file; return its fingerprint. Raise RegistryError."""
        return _write_file(self.path, specs, version, self.file_mode, enables)


# -- the file -------------------------------------------------------------------------

def _read_file(path):
    """Parse the file at ``path``: ``(specs, version, fingerprint, enables)``; raise
    RegistryError."""
    try:
        with open(path, "rb") as f:
            stat = fingerprint(os.fstat(f.fileno()))
            raw = f.read()
    except OSError as exc:
        raise RegistryError("cannot read registry %s: %s" % (path, exc)) from exc
    specs, version, enables = parse(raw, path)
    return specs, version, stat, enables


def _write_file(path, specs, version, file_mode, enables=None):
    """Atomically replace the file at ``path`` with ``specs`` (a new file gets ``file_mode``,
    an existing one keeps its mode and owner); return its fingerprint. Raise RegistryError.

    The file work (temp file, write, fsync, rename, the directory's fsync) runs in gevent's
    threadpool, the calling greenlet waiting: a write throttled by a busy disk or an fsync
    holds that greenlet, never the hub (a 34 ms write stall was seen on a loaded machine)."""
    text = dump(specs.values(), version, enables)
    stat, error = _off_hub(_replace_file, path, text, file_mode)
    if error is not None:
        raise RegistryError("cannot write registry %s: %s" % (path, error)) from None
    return stat


def _replace_file(path, text, file_mode):
    """``(fingerprint, None)`` or ``(None, OSError)``: returned, not raised (gevent reports
    a raise in its threadpool to the hub)."""
    directory = os.path.dirname(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                                   prefix="." + os.path.basename(path) + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _copy_ownership(f.fileno(), path, file_mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            stat = fingerprint(os.fstat(f.fileno()))
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)
        return None, exc
    return stat, None


def fingerprint(stat):
    """``(inode, size, mtime)`` of ``stat``: changes whenever the file is replaced or edited."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _copy_ownership(fd, path, default_mode):
    """Give the new file the old one's mode (and owner, when allowed)."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        os.fchmod(fd, default_mode)
        return
    os.fchmod(fd, old.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.fchown(fd, old.st_uid, old.st_gid)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _off_hub(function, *args):
    """``function(*args)`` in gevent's threadpool, the calling greenlet waiting; called in
    the hub itself (no greenlet to wait), right there."""
    hub = gevent.get_hub()
    if gevent.getcurrent() is hub:
        return function(*args)
    return hub.threadpool.apply(function, args)
