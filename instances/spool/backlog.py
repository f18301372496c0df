"""The :class:`Backlog` of one spool directory as this process knows it: files, messages and
bytes waiting in ``incoming/`` and messages in ``errors/``, kept as counters, and the
readers of the directory to wake when files arrive.

Status pages, metrics scrapes and every autoscale tick ask for a queue's size; listing a
directory of 100,000 files for each answer held the hub for tens of milliseconds. So the
counts are counters: every put, claim, release, requeue and failure of this process
changes them at once (a batch file's name tells its message count, see
:func:`instances.spool.names.message_count`). What other processes do to the directory (a
worker process claiming, an external producer) is caught by a **recount**: a scan of
``incoming/`` and ``errors/`` in gevent's threadpool, never on the hub. A recount runs
when a queue opens, then when someone asks for the counts and the last one is older than
:attr:`Backlog.recount_interval` (1 s) or twenty times its own duration, whichever is
longer (a scan of a huge directory costs at most 5 % of the time). Between two recounts
the counts are exact for this process's own work and may lag others' by one interval.

Wake-ups: one Backlog is shared by every :class:`~instances.spool.FileQueue` of its
directory in this process. A file entering ``incoming/`` from this process wakes them
(:meth:`Backlog.entered`); files of other processes wake them through an inotify watch
(:mod:`instances.spool.watcher`) while at least one queue is open.

Concurrency: the hub's thread only; no method yields but :meth:`recount` (the scan) and
:meth:`wait_for_room`.
"""
import os
import time
import weakref

import gevent
from gevent.event import Event

from instances.spool import errors, names, offload, watcher

#: The Backlog of each directory open in this process (kept alive by its queues).
_backlogs = weakref.WeakValueDictionary()


def of(directory):
    """The Backlog of ``directory`` (an absolute path), made on first use."""
    backlog = _backlogs.get(directory)
    if backlog is None:
        backlog = _backlogs[directory] = Backlog(directory)
    return backlog


def known(directory):
    """The Backlog of ``directory`` if this process has one, else None."""
    return _backlogs.get(directory)


class Backlog:
    """Counts of one spool directory's ``incoming/`` and ``errors/`` (see the module)."""

    #: Seconds between two recounts at least (other processes' files are seen this late).
    recount_interval = 1.0
    #: A recount waits this many times the last one's duration at least.
    recount_spacing = 20.0

    def __init__(self, directory):
        self.directory = directory
        #: Files, messages and bytes in ``incoming/``; messages in ``errors/``.
        self.files = self.messages = self.bytes = self.errors = 0
        #: Recounts done (the first one when a queue opens).
        self.recounts = 0
        self.queues = weakref.WeakSet()
        self._room = Event()
        self._next_recount = self._last_recount_end = 0.0
        self._recounter = None
        self._watch = self._unwatch = None

    # -- the queues of the directory -------------------------------------------------------
    def join(self, queue):
        """``queue`` (a FileQueue of this directory) is open: wake it on arrivals."""
        self.queues.add(queue)
        if self._watch is None:
            ref = weakref.ref(self)

            def woken():  # holds the backlog weakly: a dropped one lets its watch go
                backlog = ref()
                if backlog is not None:
                    backlog.wake()
            self._watch = watcher.watch(os.path.join(self.directory, "incoming"), woken)
            if self._watch is not None:
                self._unwatch = weakref.finalize(self, self._watch.close)

    def leave(self, queue):
        """``queue`` closed: the last one out stops the watch and any recount."""
        self.queues.discard(queue)
        if not self.queues:
            if self._watch is not None:
                self._watch, unwatch = None, self._unwatch
                unwatch()
            recounter, self._recounter = self._recounter, None
            if recounter is not None:
                recounter.kill(block=False)

    @property
    def watched(self):
        """True while an inotify watch wakes the readers (else they poll)."""
        return self._watch is not None

    def wake(self):
        """Wake the readers of every queue of the directory (a hub callback may call it)."""
        for queue in list(self.queues):
            queue.wake()

    # -- counting --------------------------------------------------------------------------
    def entered(self, files, messages, nbytes):
        """Files came into ``incoming/`` from this process: count them, wake the readers
        and the queues' put listeners."""
        self.files += files
        self.messages += messages
        self.bytes += nbytes
        for queue in list(self.queues):
            queue.arrived()

    def left(self, files, messages, nbytes):
        """Files left ``incoming/`` (claimed by this process): room for writers."""
        self.files = max(0, self.files - files)
        self.messages = max(0, self.messages - messages)
        self.bytes = max(0, self.bytes - nbytes)
        self._made_room()

    def fits(self, messages, nbytes, max_messages, max_bytes):
        """Whether ``messages`` more (``nbytes`` bytes) stay within the bounds (0: no
        bound). An empty ``incoming/`` takes any one file, so a file bigger than a bound
        is never refused forever."""
        if not self.files:
            return True
        return ((not max_messages or self.messages + messages <= max_messages)
                and (not max_bytes or self.bytes + nbytes <= max_bytes))

    def wait_for_room(self, timeout):
        """Block the calling greenlet until files leave ``incoming/`` (or a recount finds
        fewer), at most ``timeout`` seconds; a recount is started if one is due."""
        room = self._room
        self.maybe_recount(urgent=True)
        room.wait(timeout)

    @property
    def room(self):
        """An Event set when files next leave ``incoming/`` (a claim, a recount that
        found fewer): what a writer waiting for room, or a group held, waits on."""
        return self._room

    def _made_room(self):
        room, self._room = self._room, Event()
        room.set()

    # -- recounts --------------------------------------------------------------------------
    def maybe_recount(self, urgent=False):
        """Start a recount in the background if one is due; never blocks. ``urgent``
        (a writer finds the bound reached): due after ``recount_interval`` whatever the
        spacing."""
        if self._recounter is not None or not self.queues:
            return
        now = time.monotonic()
        due = self._next_recount
        if urgent:
            due = min(due, self._last_recount_end + self.recount_interval)
        if now >= due:
            self._recounter = gevent.spawn(self._background_recount)

    def _background_recount(self):
        try:
            self.recount()
        except OSError:
            pass  # the directory went away (a test's tmp dir, an operator): next time
        finally:
            self._recounter = None

    def recount(self):
        """Scan ``incoming/`` and ``errors/`` in the threadpool and take the counts from the
        scan. Blocks the calling greenlet for the scan."""
        started = time.monotonic()
        files, messages, nbytes, errors_count = offload.call(scan, self.directory)
        ended = time.monotonic()
        shrank = messages < self.messages or nbytes < self.bytes
        self.files, self.messages, self.bytes, self.errors = (files, messages, nbytes,
                                                              errors_count)
        self.recounts += 1
        self._last_recount_end = ended
        self._next_recount = ended + max(self.recount_interval,
                                         self.recount_spacing * (ended - started))
        if shrank:
            self._made_room()


def scan(directory):
    """``(files, messages, bytes)`` of ``directory/incoming`` and the messages of
    ``directory/errors``. Runs in the threadpool (file system calls only)."""
    files = messages = nbytes = 0
    with os.scandir(os.path.join(directory, "incoming")) as entries:
        for entry in entries:
            try:
                size = entry.stat(follow_symlinks=False).st_size
            except FileNotFoundError:
                continue  # claimed meanwhile
            files += 1
            messages += names.message_count(entry.name)
            nbytes += size
    try:
        with os.scandir(os.path.join(directory, "errors")) as entries:
            errors_count = sum(1 for e in entries if not e.name.endswith(errors.META_SUFFIX))
    except FileNotFoundError:
        errors_count = 0
    return files, messages, nbytes, errors_count
