"""Inotify watches on spools' ``incoming/``: wake idle readers when another process renames
a file into it.

A put made in this process wakes its readers directly (:mod:`instances.spool.backlog`);
what the process cannot see are files that other processes (an external producer, a piper
upstream, ``pgvisor queue requeue``) rename into ``incoming/``. Without a watch an idle
reader would have to look at the directory every few milliseconds. Linux's inotify
reports them: the process's one inotify descriptor becomes readable, the hub's loop calls
back, and the readers of that directory are woken. Every event is a wake-up only (nothing
is counted from it): the backlog's periodic recount is what counts other processes' files.

One inotify instance serves the whole process (the kernel allows few per user, 128 by
default, and watchdog needs some too), with one watch per directory: :func:`watch` adds
one, :meth:`Watch.close` removes it. A watch holds its callback weakly-owned by its
caller: a queue that is dropped without being closed costs one idle watch, not a
descriptor.

inotify is reached through :mod:`ctypes` (glibc's ``inotify_init1``,
``inotify_add_watch`` and ``inotify_rm_watch``), so nothing is installed and no thread
runs. Where it is missing (not Linux, a file system without inotify, the watch limit
reached) :func:`watch` returns None and readers fall back to polling.

Concurrency: the hub's thread only; callbacks run as hub callbacks and MUST NOT block or
raise.
"""
import ctypes
import logging
import os
import struct

import gevent

log = logging.getLogger(__name__)

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
#: Bytes read from the descriptor at once.
READ_SIZE = 65536
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then len bytes of name)

_inotify = None  # the process's _Inotify, False where inotify cannot work


class Watch:
    """One directory watched; :meth:`close` removes the watch (idempotent)."""

    def __init__(self, inotify, wd, callback):
        self._inotify, self.wd, self.callback = inotify, wd, callback

    def close(self):
        inotify, self._inotify = self._inotify, None
        if inotify is not None:
            inotify.remove(self)


def watch(path, callback):
    """Call ``callback()`` on the hub whenever a file is created in or renamed into the
    directory ``path``; the :class:`Watch`, or None when inotify cannot watch it (logged
    at debug level: polling is the fallback, not an error)."""
    global _inotify
    if _inotify is None:
        _inotify = _Inotify.open() or False
    if not _inotify:
        return None
    return _inotify.add(path, callback)


class _Inotify:
    """The process's inotify descriptor and its watches by watch descriptor."""

    def __init__(self, libc, fd):
        self.libc, self.fd = libc, fd
        self.watches = {}  # wd -> Watch
        self._io = gevent.get_hub().loop.io(fd, 1)
        self._io.start(self._readable)

    @classmethod
    def open(cls):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.inotify_init1.argtypes = [ctypes.c_int]
            libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
            libc.inotify_rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]
        except (OSError, AttributeError):
            return None
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            log.debug("inotify_init1: %s", os.strerror(ctypes.get_errno()))
            return None
        return cls(libc, fd)

    def add(self, path, callback):
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(path), IN_MOVED_TO | IN_CREATE)
        if wd < 0:
            log.debug("inotify_add_watch %s: %s", path, os.strerror(ctypes.get_errno()))
            return None
        self.watches[wd] = entry = Watch(self, wd, callback)
        return entry

    def remove(self, entry):
        if self.watches.get(entry.wd) is entry:
            del self.watches[entry.wd]
            self.libc.inotify_rm_watch(self.fd, entry.wd)

    def _readable(self):
        woken = set()
        try:
            while True:
                data = os.read(self.fd, READ_SIZE)
                if not data:
                    break
                woken.update(self._wds(data))
        except BlockingIOError:
            pass  # drained
        if None in woken:  # the kernel's queue overflowed: wake every watch
            woken = set(self.watches)
        for wd in woken:
            entry = self.watches.get(wd)
            if entry is None:
                continue
            try:
                entry.callback()
            except Exception:  # a hub callback never raises
                log.exception("spool watch callback failed",
                              extra={"action": "spool.watch_failed"})

    @staticmethod
    def _wds(data):
        offset, size = 0, _EVENT.size
        while offset + size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            yield None if mask & IN_Q_OVERFLOW else wd
            offset += size + length
