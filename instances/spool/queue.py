"""The :class:`FileQueue`: a durable queue in a directory (mentat's filer protocol, done right).

Layout (created with ``mode``, default owner-only)::

    DIR/tmp/             files being written (``<base>@<owner>``), never delivered
    DIR/incoming/        complete messages, FIFO by name (``<base>[.<attempts>]``)
    DIR/pending/<owner>/ files claimed by one live consumer process
    DIR/errors/          messages set aside, each with a ``.meta`` JSON

Life of a file (every arrow is one atomic ``rename`` on one filesystem)::

    put ──▶ tmp/ ──▶ incoming/ ──get──▶ pending/<owner>/ ──done──▶ deleted
                        ▲                 │  │                    (or written to the
                        │   owner died    │  └──failed / max_attempts──▶ errors/
                        └──(recover)──────┘        out queue first)
                        ▲                                               │
                        └──────────────────requeue──────────────────────┘

Delivery is at least once: a message whose consumer dies is delivered again (and a whole
batch file is, even if some of its messages were done). Every message has a stable id
(``item.id`` / ``item["id"]``: ``<base>#<index>``) for idempotent handlers.

Messages are JSON objects (dicts). :meth:`FileQueue.put` takes a dict or a
:class:`~instances.notification.Notification`; :meth:`FileQueue.get` returns a
``Notification`` when the stored dict has a ``channel``, the dict otherwise; either way
carrying its message id (the key ``"id"`` is reserved for it).

Concurrency: one FileQueue belongs to one process and its hub thread; any number of
greenlets may call it. Only :meth:`get` and a back-pressured :meth:`done` /
:meth:`forward` block (the calling greenlet, never the hub). Several processes may share a
directory: each claims with its own owner id. Create FileQueues after ``fork``.

Nothing blocks the hub: ``fsync`` (durable mode) and every scan of a directory (the
listing of ``incoming/`` that claims the next files, recovery, the periodic sweep of
``pending/``, :meth:`~FileQueue.stats`) run in gevent's threadpool
(:mod:`instances.spool.offload`), and :meth:`~FileQueue.qsize` /
:meth:`~FileQueue.error_count` read counters (:mod:`instances.spool.backlog`), not the
directory.

Bound: ``incoming/`` holds at most :attr:`~FileQueue.max_messages` messages and
:attr:`~FileQueue.max_bytes` bytes (the counters' view; one file alone may exceed them when
``incoming/`` is empty). A put that does not fit waits for room, or raises
:class:`gevent.queue.Full` when not blocking: the shared notifier then treats it as an
overflow (live notifications dropped and counted, then ONE catch_up once there is room,
:mod:`instances.notifier`), as for a full memory queue.

Read-through: the messages of the group-commit files this queue wrote wait in memory too
(a few: :attr:`~FileQueue.read_cache_files`, :attr:`~FileQueue.read_cache_bytes`; none
before its reader first asks for messages) until its own reader claims them: a claim of
such a file for its first delivery still renames it (the lock, and the durable copy stay
the file's) but neither reads nor decodes it (:mod:`instances.spool.readthrough`).

Wake-ups: a getter blocked on an empty spool is woken at once by a put (or a requeue, a
recovery, a release after close, a forward into it as an output queue) made in the same
process, on any FileQueue of that directory. Files another process renames into
``incoming/`` wake it through an inotify watch of ``incoming/``
(:mod:`instances.spool.watcher`); a blocked getter then looks by itself only every
:attr:`~FileQueue.watched_poll_interval` (1 s, a safety net). Where inotify is missing it
looks every :attr:`~FileQueue.poll_interval` (50 ms). A change notifier of one's own can be
plugged in with :meth:`~FileQueue.attach_watcher`; its writer side is
:meth:`~FileQueue.add_put_listener`: process isolation uses the pair, so its worker
processes are woken over a pipe by the service's puts (see
:mod:`instances.isolation.parent`).
"""
import collections
import logging
import os
import time

import gevent
from gevent.event import Event

from instances.notification import NOTIFICATION_TYPES
from instances.queues import Closed, Empty, Full
from instances.spec import QUEUE_DEFAULTS, check_queue_option
from instances.spool import backlog, codec, layout, names, offload, recovery
from instances.spool.claims import Claims
from instances.spool.errors import requeue_errors
from instances.spool.output import OutputQueue
from instances.spool.readthrough import ReadThrough
from instances.spool.writer import SpoolWriter

log = logging.getLogger(__name__)


#: Raised by get/put of a closed FileQueue (the queue protocol's ``Closed``).
QueueClosed = Closed


class FileQueue:
    """A spool directory as a queue (same interface as the memory queue). See the module."""

    #: Seconds between looks at ``incoming/`` while idle, where no watcher (inotify)
    #: reports other processes' files.
    poll_interval = 0.05
    #: Seconds between looks while a watcher (inotify) reports new files: a safety net.
    watched_poll_interval = 1.0
    #: Seconds between two sweeps of ``pending/`` for dead owners' claims while a getter
    #: waits (a consumer process that died while this one runs: its claims come back
    #: without waiting for the next open).
    sweep_interval = 60.0
    #: Seconds after which a ``tmp/`` file is stale even if its writer looks alive.
    stale_tmp_age = 3600.0
    #: fsync every file written, and the directory it is renamed into (survives power loss).
    fsync = QUEUE_DEFAULTS["fsync"]
    #: Permission bits of the spool directories (files get the same bits without execute).
    mode = QUEUE_DEFAULTS["mode"]
    #: Deliveries of a message whose consumers keep dying before it goes to ``errors/``.
    max_attempts = QUEUE_DEFAULTS["max_attempts"]
    #: Bytes a message file may hold: a bigger one is never read, it goes to ``errors/``
    #: (``"reason": "oversized"``), and ``put`` refuses to write one (ValueError). 64 MiB:
    #: a listener's batch (at most 1,000 notifications of at most 8,000 bytes) fits.
    max_file_bytes = 64 * 1024 * 1024
    #: Messages ``incoming/`` may hold before a put waits (or, not blocking, raises Full:
    #: an overflow for the notifier); 0: no bound.
    max_messages = QUEUE_DEFAULTS["max_messages"]
    #: Bytes of message files ``incoming/`` may hold, the same way (1 GiB); 0: no bound.
    max_bytes = QUEUE_DEFAULTS["max_bytes"]
    #: Most notifications in one file of the group commit (see :meth:`put_batch`).
    group_max = 10000
    #: Seconds the group writer may keep the open group gathering while this queue's
    #: reader is busy and other files wait for it (the reader gains nothing from a file
    #: written sooner; fewer, bigger files cost less per notification); 0: write at once.
    group_hold = 0.05
    #: Most messages one ``get_chunk`` hands out. A claimed file's messages wait as
    #: columns and become Notifications a chunk at a time, so about this many tracked
    #: objects are alive at once for the cyclic GC to walk (chunks the size of a whole
    #: file of 10,000 were the spool's largest cost per notification).
    chunk_max = 500
    #: Group-commit files this queue wrote and has not claimed yet whose messages it
    #: keeps, so that its own reader, claiming one for its first delivery, neither reads
    #: nor decodes it (the read-through cache, :mod:`instances.spool.readthrough`); a file
    #: that does not fit waits on disk only; 0: none. 16: a burst of 100,000 is written
    #: as 14 or 15 files, all kept (with 2, 13 of them were read back and decoded); the
    #: bytes below bound the memory.
    read_cache_files = 16
    #: Bytes of memory those kept files may take, estimated as their size on disk plus
    #: 100 per message (a file bigger alone is never kept): 16 MiB.
    read_cache_bytes = 16 * 1024 * 1024

    def __init__(self, directory, owner=None, fsync=None, mode=None, max_attempts=None,
                 output=None, poll_interval=None, max_messages=None, max_bytes=None):
        """Create the directories if needed, then :meth:`recover`. ``owner`` is an optional
        label of this consumer (the owner id always adds host, pid and start time);
        ``fsync``, ``mode``, ``max_attempts``, ``max_messages``, ``max_bytes`` and
        ``poll_interval`` override the class attributes (checked as the spec's ``queue``
        options are; ``poll_interval`` is mentat's ``queue_in_wait``); ``output`` an
        :class:`OutputQueue`. Blocks the calling greenlet while recovery and the first
        count of ``incoming/`` run in the threadpool."""
        self.directory = os.path.abspath(directory)
        for key, value in (("fsync", fsync), ("mode", mode), ("max_attempts", max_attempts),
                           ("max_messages", max_messages), ("max_bytes", max_bytes)):
            if value is not None:
                setattr(self, key, check_queue_option(key, value, key))
        if poll_interval is not None:
            self.poll_interval = check_queue_option("queue_in_wait", poll_interval,
                                                    "queue_in_wait")
        mode = self.mode
        self.owner = names.current_owner(owner)
        self.output = output
        file_mode = mode & 0o666
        layout.make_dirs(self.directory, mode)
        pending = os.path.join(self.directory, "pending", self.owner)
        layout.make_dir(pending, mode)
        self.writer = SpoolWriter(self.directory, self.owner, self.fsync, file_mode)
        #: Where the group commit writes a file for this queue's waiting reader.
        self._pending = os.path.join("pending", self.owner)
        self.writer.add_target(self._pending)
        self._out = None
        if output is not None:
            layout.make_dirs(output.directory, mode)
            self._out = SpoolWriter(output.directory, self.owner, self.fsync, file_mode)
        if output is None:  # chunks (one outcome call per chunk) when nothing goes on
            self.get_chunk, self.done_many = self._get_chunk, self._done_many
        self._backlog = backlog.of(self.directory)
        #: The read-through cache of the group commit's files (:attr:`read_cache_files`).
        self.readthrough = ReadThrough(self.read_cache_files, self.read_cache_bytes)
        self._claims = Claims(self.writer, pending, self.owner, self.max_attempts, mode,
                              self.max_file_bytes, self._backlog, self.readthrough)
        self._wakeup = Event()
        self._hub = gevent.get_hub()
        self.closed = False
        #: Greenlets blocked in :meth:`get` right now.
        self.waiting = 0
        #: Whether this queue's reader ever asked for messages: a queue only written to (the
        #: service's under process isolation, whose workers read in their own) keeps none.
        self.reading = False
        self._put_listeners = []
        self._groups = collections.deque()  # the group commit's groups, oldest first
        self._committer = None  # the greenlet writing them
        self._group_failed = False
        self._flushing = 0  # greenlets waiting for the groups to be written
        self._unhold = Event()  # set while they wait: no group is held then
        self._row_bytes = 150.0  # bytes per notification in a rows file, as last written
        self._backlog.join(self)
        self.recover()
        self._backlog.recount()
        self._next_sweep = time.monotonic() + self.sweep_interval

    @classmethod
    def from_piper_options(cls, queue_in_dir, queue_out_dir=None, queue_out_limit=None,
                           queue_out_wait=None, queue_in_perms=None, queue_in_wait=None,
                           **options):
        """Build from mentat piper's option names (``pgvisor piper`` uses this):
        ``queue_in_perms`` is ``mode``, ``queue_in_wait`` the ``poll_interval``."""
        output = None
        if queue_out_dir is not None:
            output = OutputQueue(queue_out_dir, queue_out_limit, queue_out_wait)
        if queue_in_perms is not None:
            options["mode"] = queue_in_perms
        return cls(queue_in_dir, output=output, poll_interval=queue_in_wait, **options)

    @classmethod
    def from_spec(cls, options, owner=None):
        """Open the spool of an instance spec's ``queue`` table (``{"spool": DIR, ...}``;
        an option left out takes its default); ``owner`` labels its claims (see the
        constructor)."""
        return cls.from_piper_options(
            options["spool"], options.get("queue_out_dir") or None,
            options.get("queue_out_limit"), options.get("queue_out_wait"),
            options.get("queue_in_perms"), options.get("queue_in_wait"), owner=owner,
            fsync=options.get("fsync"), mode=options.get("mode"),
            max_attempts=options.get("max_attempts"),
            max_messages=options.get("max_messages"), max_bytes=options.get("max_bytes"))

    # -- enqueue ---------------------------------------------------------------------

    def put(self, item, block=True, timeout=None):
        """Enqueue one message (dict or Notification) as one file; return its message id.
        While ``incoming/`` is at its bound (:attr:`max_messages`, :attr:`max_bytes`)
        waits for room, at most ``timeout`` seconds, then raises :class:`Full` (at once
        when not ``block``). Blocks the calling greenlet while the threadpool writes it
        (and to wait for room). A Notification put without ``block`` joins the group
        commit instead (see :meth:`put_batch`)."""
        self._check_open()
        if not block and type(item) in NOTIFICATION_TYPES:
            return self._grouped([item])[0]
        self._flush_groups()
        base = self._write(self._checked(codec.encode(item)), 1, block, timeout)
        return names.message_id(base, 0)

    def put_batch(self, items, block=True, timeout=None):
        """Enqueue ``items`` as ONE file (one write, one fsync, one rename); return their
        message ids. The bound applies to the whole file as in :meth:`put`: it goes in
        whole or not at all. Blocks the calling greenlet until the file is written.

        **Group commit**: Notifications put without ``block`` (the shared notifier, which
        must never wait) are taken at once into the group the spool writes next, and the
        call returns without waiting for the write. One greenlet of the queue writes the
        groups one after the other, each as ONE file (at most :attr:`group_max` messages):
        while a file is written (and fsync-ed) the next reads gather in the next group, so
        a fast producer gets big files and one fsync for thousands of notifications; while
        this queue's reader is behind, the open group gathers for up to :attr:`group_hold`
        too. Their ids are then a sequence made when first read
        (:class:`~instances.spool.names.MessageIds`). A crash of the process in that window
        (one write, or that hold) loses the group, as it loses what is still in the
        connection's socket buffer; the catch_up after the restart covers both. A failed
        group write is logged, and the next put without ``block`` raises :class:`Full`: the
        notifier's overflow rule then owes the instance a catch_up."""
        self._check_open()
        items = list(items)
        if not items:
            return []
        if not block and codec.all_notifications(items):
            return self._grouped(items)
        self._flush_groups()
        base = self._write(self._checked(codec.encode_batch(items)), len(items), block,
                           timeout)
        return names.message_ids(base, 0, len(items))

    def _grouped(self, items):
        """Take ``items`` into the open group (a new one when there is none or it is
        full); their message ids. Never yields."""
        backlog, count = self._backlog, len(items)
        size = int(count * self._row_bytes)
        if self._group_failed or not backlog.fits(count, size, self.max_messages,
                                                  self.max_bytes):
            self._group_failed = False
            backlog.maybe_recount(urgent=True)
            raise Full()
        groups = self._groups
        group = groups[-1] if groups else None
        if group is None or group.count + count > self.group_max or (
                group.estimate + size > self.max_file_bytes // 4):
            group = _Group(names.new_base())
            groups.append(group)
            backlog.files += 1
        first = group.count
        group.parts.append(codec.columns_of(items))  # the Notifications may go now
        group.count += count
        group.estimate += size
        backlog.messages += count
        backlog.bytes += size
        if self._committer is None:
            self._committer = gevent.spawn(self._commit_groups)
        return names.MessageIds(group.base, first, count)  # made if read

    def _commit_groups(self):
        """The group writer: each group in turn as ONE columns file, in the threadpool;
        its messages kept in the read-through cache for this queue's reader, or, when a
        getter waits with nothing to claim, the file written straight into its claims
        (``pending/<owner>/``: claimed at birth, see :mod:`instances.spool.claims`)."""
        backlog = self._backlog
        try:
            while self._groups:
                self._hold()
                group = self._groups.popleft()  # closed: new items start the next group
                count, early = group.count, None
                try:
                    columns = codec.joined_columns(group.parts, count)
                    data = codec.encode_joined(columns, count, group.base, joined=False)
                    size = sum(map(len, data))
                    direct = self.waiting and self._claims.idle()
                    batch = codec.written_batch(columns, count, group.base) \
                        if direct or (self.reading and self.readthrough.fits(size, count)) \
                        else None
                    direct = direct and batch is not None
                    if batch is not None and not direct and not self.closed:
                        # Kept under the file's name before the write: renamed into
                        # incoming/, the file can be claimed before this greenlet resumes
                        # (the pool thread fsyncs the directory, the hub sees it finish
                        # late). Kept after, about half the files of a durable drain were
                        # read back and decoded (measured: 5 and 6 of 11).
                        early = names.new_base(count)
                        self.readthrough.keep(early, size, batch)
                    name = self.writer.write(self._checked(data, size), count=count,
                                             target=self._pending if direct else "incoming",
                                             base=early)
                except Exception as error:
                    if early is not None:
                        self.readthrough.discard(early)
                    self._group_failed = True
                    backlog.left(1, count, group.estimate)
                    log.error("spool %s: writing %d notifications failed (%s): the next put "
                              "is refused, so the notifier owes a catch_up", self.directory,
                              count, error, extra={"action": "spool.group_failed",
                                                       "directory": self.directory})
                    continue
                backlog.bytes += size - group.estimate
                self._row_bytes = size / count
                if direct:
                    if self._claims.take_written(name, size, batch):
                        self._wakeup.set()
                elif early is not None and name != early:  # taken in tmp/: a fresh name
                    self.readthrough.discard(early)
                    if not self.closed:
                        self.readthrough.keep(name, size, batch)
                backlog.entered(0, 0, 0)  # wake the readers and put listeners
        finally:
            self._committer = None

    def _hold(self):
        """Let the open group (the only one) gather more reads while this queue's reader
        is busy with claimed messages and other files wait for it, at most
        :attr:`group_hold` seconds; a claim (room in ``incoming/``) or a flush ends the
        wait early. A crash in that time loses the group, as during its write: the
        catch_up after the restart covers it."""
        deadline = time.monotonic() + self.group_hold
        backlog, claims = self._backlog, self._claims
        while (len(self._groups) == 1 and not self._flushing and not self.closed
               and backlog.files > 1 and claims.busy()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            gevent.wait([backlog.room, self._unhold], timeout=remaining, count=1)

    def _flush_groups(self):
        """Wait until the groups taken so far are written (FIFO: a blocking put goes
        after them)."""
        committer = self._committer
        if committer is not None and gevent.getcurrent() is not committer and \
                gevent.getcurrent() is not self._hub:
            self._flushing += 1
            self._unhold.set()
            try:
                committer.join()
            finally:
                self._flushing -= 1
                if not self._flushing:
                    self._unhold.clear()

    def _write(self, data, count, block, timeout):
        """Wait for room for ``count`` messages, write them, count them; the base name."""
        backlog, size = self._backlog, len(data)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not backlog.fits(count, size, self.max_messages, self.max_bytes):
            remaining = None if deadline is None else deadline - time.monotonic()
            if not block or (remaining is not None and remaining <= 0):
                backlog.maybe_recount(urgent=True)  # other processes may have made room
                raise Full()
            backlog.wait_for_room(1.0 if remaining is None else min(1.0, remaining))
            self._check_open()
        # Counted before the write: a writer that yields (fsync) holds its place.
        backlog.files += 1
        backlog.messages += count
        backlog.bytes += size
        try:
            base = self.writer.write(data, count=count)
        except BaseException:
            backlog.left(1, count, size)
            raise
        backlog.entered(0, 0, 0)  # wake the readers and put listeners
        return base

    def _checked(self, data, size=None):
        """``data`` (of ``size`` bytes, default its length) unless over max_file_bytes."""
        size = len(data) if size is None else size
        if size > self.max_file_bytes:
            raise ValueError("message file of %d bytes: over the spool's max_file_bytes=%d"
                             % (size, self.max_file_bytes))
        return data

    @property
    def maxsize(self):
        """:attr:`max_messages` as a memory queue's ``maxsize`` (0: no bound): the notifier
        waits for :meth:`qsize` to fall under its share of it before an overflow's
        catch_up."""
        return self.max_messages or 0

    # -- dequeue ---------------------------------------------------------------------

    def get(self, block=True, timeout=None):
        """The oldest message. Blocks the calling greenlet until one arrives, ``timeout``
        seconds pass (:class:`gevent.queue.Empty`) or the queue is closed
        (:class:`QueueClosed`)."""
        claims = self._claims
        if not claims._ready or self.closed:
            self._wait_ready(block, timeout)
        return claims._hand_out()

    def _get_chunk(self, block=True, timeout=None, split=1):
        """The memory queue's ``get_chunk`` (a queue without an output queue offers it as
        ``get_chunk``): the next messages of the claimed file(s), at most ``1/split`` of
        them (at least one) and at most :attr:`chunk_max`, handed out to the calling
        greenlet at once; blocks as :meth:`get`. Their outcome: :meth:`failed` /
        :meth:`release` per message, and ``done_many(count)`` for the rest."""
        claims = self._claims
        if not claims._ready or self.closed:
            self._wait_ready(block, timeout)
        ready = len(claims)
        return claims.hand_out_chunk(min(self.chunk_max, ready if split <= 1
                                         else -(-ready // split)))

    def _done_many(self, count):
        """The memory queue's ``done_many`` (offered with ``get_chunk``): the ``count``
        oldest messages handed out to the CALLING greenlet in chunks that have no outcome
        yet are done (a processor settles its own chunk: what failed or went back has its
        outcome already). Never yields: a file whose messages are all done is deleted by a
        greenlet of the queue."""
        self._claims.done_many(count)

    def _wait_ready(self, block, timeout):
        """Until a claimed message is ready (claiming files, sweeping now and then):
        returns, or raises Empty / QueueClosed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        claims = self._claims
        self.reading = True
        while True:
            self._check_open()
            now = time.monotonic()
            if now >= self._next_sweep:
                self._next_sweep = now + self.sweep_interval
                self._sweep()
            # Cleared before the look, not after: the look yields (the listing of incoming/
            # runs in the threadpool), and a put meanwhile must still wake the wait below.
            self._wakeup.clear()
            if claims._ready or claims.claim_next():
                return
            remaining = None if deadline is None else deadline - now
            if not block or (remaining is not None and remaining <= 0):
                raise Empty()
            interval = (self.watched_poll_interval if self._backlog.watched
                        else self.poll_interval)
            self.waiting += 1
            try:
                self._wakeup.wait(interval if remaining is None else min(interval, remaining))
            finally:
                self.waiting -= 1

    def _sweep(self):
        """The periodic sweep of dead owners' claims, in the threadpool (a failure is
        logged, never raised into a getter)."""
        try:
            self.requeue_pending_of_dead_owners()
        except OSError:
            log.exception("spool %s: sweeping pending/ failed", self.directory,
                          extra={"action": "spool.sweep_failed", "directory": self.directory})

    def _check_open(self):
        if self.closed:
            raise QueueClosed("spool %s is closed" % self.directory)

    # -- outcomes --------------------------------------------------------------------

    def done(self, item):
        """``item`` was handled. With an output queue, it is sent on first (may block the
        calling greenlet on back-pressure); the file is deleted once all its messages
        have an outcome (just after, by a greenlet of the queue: :meth:`close` waits for
        it)."""
        self.forward(item, item)

    def forward(self, item, output):
        """``item`` was handled and produced ``output`` (a message, a list of messages
        written as one batch file, or None for nothing) for the output queue (piper
        semantics). Without an output queue, ``output`` is dropped. Blocks the calling
        greenlet while the output queue is over its limit."""
        if self._out is None:  # the hot path: nothing goes on
            self._claims.done(item)
            return
        self._claims.check(item)
        if output is not None:
            # Until the output is written the item is still ours: an output that is not
            # JSON, or a write interrupted, leaves it for done/failed again.
            many = isinstance(output, list)
            data = codec.encode_batch(output) if many else codec.encode(output)
            count = len(output) if many else 1
            self._out.write(data, self.output.limit, self.output.wait, count=count)
            _entered(self.output.directory, count, len(data))
        self._claims.done(item)

    def failed(self, item, error, tb_text):
        """The handler failed on ``item``: it goes alone to ``errors/`` with a ``.meta``
        (a batch's other messages are unaffected). Does not yield."""
        message_id = self._claims.failed(item, error, tb_text)
        log.warning("message %s failed: %s", message_id, error,
                    extra={"action": "spool.failed", "directory": self.directory})

    def release(self, item):
        """``item`` was handed out but gets no outcome here (its handler was killed): it is
        handed out again before anything else, or after :meth:`close` its file goes back to
        ``incoming/`` (attempts unchanged). Raises ValueError for an item that is not
        handed out (or already settled). Does not yield."""
        self._claims.release(item)
        if not self.closed:
            self._wakeup.set()

    def attempts(self, item):
        """How many times ``item`` has been delivered, this delivery included (>= 1)."""
        return self._claims.attempts(item)

    # -- maintenance -----------------------------------------------------------------

    def recover(self):
        """Crash recovery (run by the constructor): requeue claimed files of dead owners
        and delete stale ``tmp/`` files, in the threadpool. Returns ``(requeued, banished,
        tmp_removed)``."""
        requeued, banished = self.requeue_pending_of_dead_owners()
        removed = offload.call(recovery.clean_tmp, self.directory, self.stale_tmp_age)
        if removed:
            log.info("removed %d stale tmp/ files", removed,
                     extra={"action": "spool.clean_tmp", "directory": self.directory})
        return requeued, banished, removed

    def requeue_pending_of_dead_owners(self):
        """``pending/<owner>/`` of dead owners back to ``incoming/`` (in the threadpool):
        ``(requeued, banished)``."""
        recovered = offload.call(recovery.recover_pending, self.writer, self.max_attempts,
                                 self.owner, self.max_file_bytes)
        for owner, requeued, banished in recovered:
            log.warning("recovered %d files of dead owner %s (%d to errors/)",
                        requeued + banished, owner, banished,
                        extra={"action": "spool.recover", "owner": owner})
        result = (sum(r for _, r, _ in recovered), sum(b for _, _, b in recovered))
        self._moved_in(*result)
        return result

    def _moved_in(self, requeued, banished):
        """Files were moved into ``incoming/`` / ``errors/`` by a scan: recount, wake."""
        if requeued or banished:
            self._backlog.recount()
            self._backlog.entered(0, 0, 0)

    def requeue_owner(self, owner):
        """``pending/<owner>/`` back to ``incoming/`` whether or not ``owner`` looks alive,
        as recovery does for a dead one (attempts + 1, ``max_attempts`` to ``errors/``):
        for the claims of a host that will not come back. Returns ``(requeued, banished)``;
        ValueError for this queue's own owner or a name that is not an owner directory."""
        if owner == self.owner:
            raise ValueError("owner=%r is this queue's own owner" % owner)
        if not owner or os.sep in owner or owner in (".", ".."):
            raise ValueError("owner=%r is not an owner of %s/pending" % (owner, self.directory))
        result = offload.call(recovery.recover_owner, self.writer, owner, self.max_attempts,
                              self.max_file_bytes)
        if result[0] or result[1]:
            log.warning("requeued %d files of owner %s (%d to errors/)", sum(result), owner,
                        result[1], extra={"action": "spool.recover", "owner": owner})
        self._moved_in(*result)
        return result

    def requeue(self, errors=True, reason=None, error_contains=None):
        """Move ``errors/`` back to ``incoming/`` (attempts reset): the dead-letter replay.
        With ``reason`` (``"failed"``, ``"max_attempts"``, ``"undecodable"``,
        ``"oversized"``) and/or ``error_contains`` (text of the ``.meta``'s error) only
        the messages that match. Returns the count."""
        moved = 0
        if errors:
            moved = offload.call(requeue_errors, self.writer, reason, error_contains)
        self._moved_in(moved, 0)
        return moved

    def qsize(self):
        """Messages waiting: claimed but not handed out, plus those in ``incoming/`` (the
        counter, see :mod:`instances.spool.backlog`: exact for this process, other
        processes' files as of the last recount). Never yields (a recount that is due
        starts in the background)."""
        self._backlog.maybe_recount()
        return len(self._claims) + self._backlog.messages

    def stats(self):
        """The counts of this spool directory (scanned in the threadpool): see
        :func:`instances.spool.stats`."""
        return offload.call(layout.stats, self.directory)

    def error_count(self):
        """Messages in ``errors/`` (for status pages): the counter, exact for this
        process's failures, other processes' as of the last recount. Never yields."""
        self._backlog.maybe_recount()
        return self._backlog.errors

    # -- wake-up ---------------------------------------------------------------------

    def wake(self):
        """Wake getters blocked in :meth:`get` (new files may be in ``incoming/``). Call
        from the hub thread (a put in this process calls it); :meth:`wake_threadsafe`
        from any other thread."""
        self._wakeup.set()

    def wake_threadsafe(self):
        self._hub.loop.run_callback_threadsafe(self.wake)

    def attach_watcher(self, subscribe):
        """Plug a change notifier: ``subscribe(callback)`` must arrange for ``callback()``
        to be called (from any thread) when ``incoming/`` changes, e.g. an inotify watch,
        or the pipe of :mod:`instances.isolation`. Polling continues as a safety net at
        :attr:`watched_poll_interval`."""
        subscribe(self.wake_threadsafe)
        self.poll_interval = self.watched_poll_interval

    def add_put_listener(self, callback):
        """Call ``callback()`` whenever a file enters ``incoming/`` of this directory from
        this process (a put on any FileQueue of it, a requeue, a recovery, a forward into
        it): the writer's side of a watcher for readers in other processes. Runs in the
        putting greenlet: MUST NOT block or raise."""
        self._put_listeners.append(callback)

    def remove_put_listener(self, callback):
        if callback in self._put_listeners:
            self._put_listeners.remove(callback)

    def arrived(self):
        """Files entered ``incoming/`` from this process (called by the directory's
        backlog): wake the getters, tell the put listeners."""
        self._wakeup.set()
        for callback in self._put_listeners:
            callback()

    def close(self):
        """Stop handing out messages: blocked getters raise :class:`QueueClosed`; claimed
        files with no message in a handler go back to ``incoming/`` at once, the others
        when their last handled message is settled or released (done/failed/release still
        work). Nothing that goes back counts as a delivery (attempts unchanged), and a batch
        some of whose messages were done goes back as its other messages only. Closes the
        directory fds."""
        if self.closed:
            return
        self._flush_groups()  # what the notifier handed over is written first
        self.closed = True
        self._wakeup.set()
        self._claims.close()
        self._claims.flush_deletes()  # a clean stop never delivers a settled file again
        self.readthrough.clear()
        try:
            os.rmdir(self._claims.pending_dir)  # empty: nothing of ours left to judge
        except OSError:
            pass  # messages still in handlers (their outcome comes later), or gone
        self._backlog.leave(self)
        self._backlog.entered(0, 0, 0)  # other readers of this process: files came back
        self.writer.close()
        if self._out is not None:
            self._out.close()

    def __repr__(self):
        return "<FileQueue %s owner=%s>" % (self.directory, self.owner)


class _Group:
    """Notifications taken by the group commit, to be written as ONE file; ``base`` names
    their message ids (``<base>#<index>``) before the file is named."""

    __slots__ = ("base", "count", "estimate", "parts")

    def __init__(self, base):
        self.base, self.parts, self.count, self.estimate = base, [], 0, 0


def _entered(directory, messages, nbytes):
    """A file was written into the spool ``directory`` by this process (a forward into an
    output queue): count it and wake that directory's readers here, if any."""
    known = backlog.known(directory)
    if known is not None:
        known.entered(1, messages, nbytes)
