"""The :class:`SpoolWriter`: the enqueue side of a spool directory (mentat's filer protocol).

Every file enters the spool the same way: created in ``tmp/`` with ``O_CREAT|O_EXCL``,
written in full, optionally ``fsync``-ed, then atomically renamed into its target
directory (``incoming/`` or ``errors/``), whose directory entry is ``fsync``-ed too in
durable mode. Readers therefore only ever see complete files.

Every write runs in gevent's threadpool (:mod:`instances.spool.offload`) as ONE call: the
reservation in ``tmp/``, the count against a limit, the write, the ``fsync`` (durable
mode), the rename and the ``fsync`` of the directory. On a busy disk even a rename or a
file creation can wait for the file system's journal for tens of milliseconds; the hub
goes on meanwhile.

Back-pressure: :meth:`SpoolWriter.write` with a ``limit`` first *reserves* its ``tmp/``
file, then counts ``tmp/`` + ``incoming/`` (its own reservation included). Over the limit it
gives the reservation back and waits. Every writer that proceeds has counted every earlier
reservation, so the directory never holds more than ``limit`` files plus the ones writers
reserved between counting and renaming (at most one per concurrent writer).
"""
import errno
import os
import time

import gevent
from gevent.queue import Full

from instances.spool import names, offload


class SpoolWriter:
    """Writes files into the spool ``directory`` (which must already have its subdirectories).

    ``owner`` is the owner id put in ``tmp/`` names, ``fsync`` the durability mode,
    ``file_mode`` the permission bits of new files. Writes block the calling greenlet on
    back-pressure (:func:`gevent.sleep`) and while the threadpool writes; never the hub. :meth:`put_file` and :meth:`commit` may also be called from a
    threadpool thread (recovery runs there).
    """

    def __init__(self, directory, owner, fsync=False, file_mode=0o600):
        self.directory = directory
        self.owner = owner
        self.fsync = fsync
        self.file_mode = file_mode
        self.tmp_dir = os.path.join(directory, "tmp")
        self._dir_fds = {}
        if fsync:  # opened here, once: commits in the threadpool only read this dict
            for target in ("incoming", "errors"):
                self._dir_fds[target] = os.open(os.path.join(directory, target),
                                                os.O_RDONLY | os.O_DIRECTORY)

    def reserve(self, count=1, base=None):
        """Create an empty, exclusively owned file in ``tmp/`` for ``count`` messages:
        ``(fd, tmp_path, base)``; named ``base`` when given (a :func:`names.new_base`
        made earlier) and free, else a fresh name."""
        while True:
            if base is None:
                base = names.new_base(count)
            path = os.path.join(self.tmp_dir, names.tmp_name(base, self.owner))
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, self.file_mode)
            except FileExistsError:  # pragma: no cover  (random part collided)
                base = None
                continue
            if self.file_mode & 0o077:
                os.fchmod(fd, self.file_mode)  # the umask may have cut group/other bits
            return fd, path, base

    def discard(self, fd, tmp_path):
        os.close(fd)
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass

    def commit(self, fd, tmp_path, data, target, name):
        """Write ``data`` (bytes) into the reserved file and rename it to ``target/name``
        (in the threadpool, blocking the calling greenlet only)."""
        return offload.call(self._commit, fd, tmp_path, data, target, name)

    def _commit(self, fd, tmp_path, data, target, name):
        try:
            if type(data) is list:  # parts: one writev (no copy to join them)
                written = os.writev(fd, data)
                data = b"" if written == sum(map(len, data)) else b"".join(data)[written:]
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except BaseException:
            self.discard(fd, tmp_path)
            raise
        os.close(fd)
        os.rename(tmp_path, os.path.join(self.directory, target, name))
        if self.fsync:
            self.sync_dir(target)
        return name

    def sync_dir(self, target):
        """``fsync`` the directory ``target`` so that a rename into it survives a crash."""
        fd = self._dir_fds.get(target)
        if fd is None:
            fd = self._dir_fds[target] = os.open(
                os.path.join(self.directory, target), os.O_RDONLY | os.O_DIRECTORY)
        offload.call(os.fsync, fd)

    def put_file(self, data, target, name):
        """Write ``data`` as ``target/name`` through ``tmp/`` (no limit), in the
        threadpool."""
        return offload.call(self._put_file, data, target, name)

    def _put_file(self, data, target, name):
        fd, tmp_path, _ = self.reserve()
        return self._commit(fd, tmp_path, data, target, name)

    def count(self):
        """Files in ``tmp/`` + ``incoming/`` (scanned in the threadpool). ``tmp/`` is
        listed first, so a file renamed between the two listings is counted twice, never
        missed."""
        return offload.call(self._count)

    def _count(self):
        return _count(self.tmp_dir) + _count(os.path.join(self.directory, "incoming"))

    def write(self, data, limit=None, wait=10.0, block=True, timeout=None, count=1,
              target="incoming", base=None):
        """Enqueue ``data`` (bytes, or a list of bytes-like parts written one after the
        other; ``count`` messages) into ``incoming/`` (or ``target``, a directory of the
        spool: a :meth:`add_target`); return the new file's base name: ``base`` when
        given and free (see :meth:`reserve`).

        With ``limit``, wait while the queue holds more than ``limit`` files, re-checking
        every ``wait`` seconds (blocks the calling greenlet). Raises
        :class:`gevent.queue.Full` if not ``block`` or after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            name = offload.call(self._write_once, data, limit, count, target, base)
            if name is not None:
                return name
            remaining = None if deadline is None else deadline - time.monotonic()
            if not block or (remaining is not None and remaining <= 0):
                raise Full()
            gevent.sleep(wait if remaining is None else min(wait, remaining))

    def _write_once(self, data, limit, count, target="incoming", base=None):
        """One try of :meth:`write` (in the threadpool): the base name, or None when the
        queue is over ``limit`` (the reservation given back)."""
        fd, tmp_path, base = self.reserve(count, base)
        if limit is not None and self._count() > limit:
            self.discard(fd, tmp_path)
            return None
        self._commit(fd, tmp_path, data, target, base)
        return base

    def add_target(self, target):
        """Let :meth:`write` put files into ``target`` (a directory of the spool, relative)
        too: in durable mode its fd is opened here, on the caller's thread, as
        ``incoming/``'s is (commits in the threadpool only read the dict)."""
        if self.fsync and target not in self._dir_fds:
            self._dir_fds[target] = os.open(os.path.join(self.directory, target),
                                            os.O_RDONLY | os.O_DIRECTORY)

    def close(self):
        fds, self._dir_fds = self._dir_fds, {}
        for fd in fds.values():
            os.close(fd)


def _count(path):
    try:
        with os.scandir(path) as entries:
            return sum(1 for _ in entries)
    except OSError as error:
        if error.errno == errno.ENOENT:
            return 0
        raise
