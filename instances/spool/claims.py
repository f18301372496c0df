"""The claims of one consumer: :class:`Claims` takes the oldest file of ``incoming/`` into
``pending/<owner>/``, hands its messages out (one by one, or in chunks), and settles the
file once every message has an outcome.

Life of a claimed file (every arrow one atomic ``rename`` or an ``unlink``)::

    incoming/X ──claim──▶ pending/<owner>/X ──every message done──▶ deleted (just after)
                            │  │  └──close, none in a handler──▶ incoming/X (attempts unchanged;
                            │  │     a batch with some outcomes: only its messages without one,
                            │  │     each as incoming/X_<index>)
                            │  └──failed (one message file) / max_attempts / undecodable──▶ errors/X
                            └──failed (one message of a batch)──▶ errors/X_<index> (the rest stays)

The rename is the only lock between consumers: the loser of a race (``FileNotFoundError``)
moves on to the next name. Names of ``incoming/`` are listed, sorted (FIFO) and kept in
memory; the directory is listed again only when they are used up, so a busy queue is not
listed once per message, and the listing runs in gevent's threadpool (one at a time: a
greenlet that needs names while another lists waits for that listing). Every file claimed
or given back is counted in the directory's :class:`~instances.spool.backlog.Backlog`.
Undecodable files (not
UTF-8, not JSON, nested too deeply, not objects), files over ``max_file_bytes`` and files
already delivered ``max_attempts`` times go to ``errors/`` with the reason instead of
being handed out. A file the queue's :class:`~instances.spool.readthrough.ReadThrough`
kept is renamed all the same, then handed out from the kept messages when it has the size
written (its first delivery: only such names are kept), else read.

A file the queue's own group commit wrote while a getter waited with nothing to claim is
written straight into ``pending/<owner>/`` and taken here at once (:meth:`Claims.idle`,
:meth:`Claims.take_written`): claimed at birth, with no listing and no rename, and left by a
crash or a stop exactly as a claimed file is.

Bookkeeping in runs: the messages ready to hand out are kept as runs of one claimed file
(``[claim, first, end]``), a chunk handed out is one :class:`_Chunk` per file it spans, and
``done_many`` settles a run of a file at once (a slice of its outcome bytes): profiling the
drain showed the per-message entries (a tuple, a dict entry, a deque entry and a settle
call per message) as a tenth of the spool's work. What leaves a chunk on its own (a
failure, a release) is marked in the chunk; the chunk finds an item by identity through an
index it builds the first time it is asked.

Concurrency: one Claims belongs to one :class:`~instances.spool.FileQueue` and its hub
thread; every method runs on the caller's greenlet. Only :meth:`Claims.next_item` yields
(while ``incoming/`` is listed, and to fsync in durable mode) and, in durable mode,
outcomes that write a file (a failure, a release after close). The unlink of a file whose
messages are all settled is left to a greenlet of its own (:meth:`Claims.flush_deletes`
waits for it), so ``done`` never waits for the threadpool.
"""
import collections
import itertools
import logging
import os

from gevent import get_hub, getcurrent, spawn
from gevent.event import Event

from instances.spool import codec, errors, layout, names, offload

log = logging.getLogger(__name__)


class Claim:
    """One claimed file of ``pending/<owner>/`` and the bookkeeping of its messages."""

    __slots__ = ("attempts", "base", "inflight", "items", "name", "open", "outcome", "path",
                 "size")

    def __init__(self, name, path, size, items=()):
        self.name, self.path, self.size = name, path, size
        self.base, self.attempts = names.split(name)
        self.attempts += 1  # this delivery
        self.open = size  # messages not yet done or failed
        self.inflight = 0  # messages handed out, not yet done or failed
        self.items = items  # a list, or a codec.Columns (it builds what is sliced)
        self.outcome = bytearray(size)  # 1 at the index of each message with an outcome

    def settle(self, first, end):
        """Messages ``first`` .. ``end - 1`` have their outcome; how many stay open."""
        self.outcome[first:end] = b"\x01" * (end - first)
        self.open -= end - first
        return self.open


class _Chunk:
    """Messages ``first`` .. ``end - 1`` of ``claim`` handed out at once to one greenlet
    as ``items`` (the objects handed out: the claim's from index ``start``; ``first``
    moves on as ``done_many`` settles them); ``gone``: indexes that left it on their own
    (failed, released, done one by one)."""

    __slots__ = ("claim", "end", "first", "gone", "items", "start", "_index")

    def __init__(self, claim, first, end, items):
        self.claim, self.first, self.end, self.items = claim, first, end, items
        self.start = first
        self.gone = set()
        self._index = None

    def find(self, item):
        """The index of ``item`` (by identity) if it is in this chunk and still here."""
        if self._index is None:
            self._index = {id(one): self.start + i for i, one in enumerate(self.items)}
        index = self._index.get(id(item))
        if index is None or not self.first <= index < self.end or index in self.gone or \
                self.items[index - self.start] is not item:
            return None
        return index


class Claims:
    """The files claimed for the owner whose pending directory is ``pending_dir``, and
    their messages: ready (decoded, not handed out) and handed out (until an outcome)."""

    def __init__(self, writer, pending_dir, owner, max_attempts, mode, max_file_bytes=None,
                 backlog=None, readthrough=None):
        self.writer = writer
        self.backlog = backlog
        #: The queue's :class:`~instances.spool.readthrough.ReadThrough`, or None.
        self.readthrough = readthrough
        self.max_file_bytes = max_file_bytes
        self.mode = mode
        self.incoming = os.path.join(writer.directory, "incoming")
        self.pending_dir = pending_dir
        self.owner = owner
        self.max_attempts = max_attempts
        self.closed = False
        self._known = collections.deque()  # names of incoming/ seen, oldest first
        self._ready = collections.deque()  # runs [claim, first, end] decoded, not handed out
        self._ready_count = 0  # messages in those runs
        self._handed_out = {}  # id(item) -> (item, claim, index), handed out one by one
        self._held = {}  # greenlet -> deque of the _Chunks handed out to it
        self._listing = None  # an Event while a greenlet lists incoming/
        self._settled = []  # paths of files all of whose messages are settled, to delete
        self._deleter = None  # the greenlet deleting them
        #: Files the queue's writer put straight into this reader's claims.
        self.direct = 0

    def __len__(self):
        """Messages claimed and decoded but not handed out yet."""
        return self._ready_count

    def busy(self):
        """Whether messages are claimed here and not settled yet (ready or handed out)."""
        return bool(self._ready_count or self._held or self._handed_out)

    # -- handing out -------------------------------------------------------------------

    def next_item(self):
        """Hand out the oldest message (claiming the next files when none is ready), or
        return None when ``incoming/`` has nothing deliverable."""
        if not self.claim_next():
            return None
        return self._hand_out()

    def claim_next(self):
        """Claim files until a message is ready; False when ``incoming/`` has nothing
        deliverable."""
        while not self._ready:
            if not self._claim_some():
                return False
        return True

    def idle(self):
        """Whether nothing is ready, known or being listed: a reader that waits now waits
        for a new file (its own queue's writer may put one straight into its claims:
        :meth:`take_written`)."""
        return not (self.closed or self._ready or self._known or self._listing is not None)

    def take_written(self, name, size, batch):
        """The file ``name`` (``size`` bytes, its messages ``batch`` as decoding it gives
        them) was just written straight into ``pending/<owner>/`` for this reader, claimed
        at birth: its messages become ready, as a claim's of ``incoming/`` would. After
        :meth:`close` it goes to ``incoming/`` instead (in the threadpool), unclaimed."""
        if self.closed:
            offload.call(_give_back, os.path.join(self.pending_dir, name),
                         os.path.join(self.incoming, name))
            return False
        self.direct += 1
        self._take_file(name, size, _UNREAD, (size, batch))
        return True

    def _hand_out(self):
        run = self._ready[0]
        claim, index = run[0], run[1]
        if index + 1 == run[2]:
            self._ready.popleft()
        else:
            run[1] = index + 1
        self._ready_count -= 1
        claim.inflight += 1
        item = claim.items[index]
        self._handed_out[id(item)] = (item, claim, index)
        return item

    def hand_out_chunk(self, limit):
        """Hand out up to ``limit`` ready messages at once to the calling greenlet (its
        :meth:`done_many` settles them); the list (a claimed batch in columns builds its
        Notifications now, see :class:`~instances.spool.codec.Columns`)."""
        ready, left = self._ready, min(limit, self._ready_count)
        self._ready_count -= left
        chunks = []
        while left:
            run = ready[0]
            claim, first, end = run
            end = min(end, first + left)
            if end == run[2]:
                ready.popleft()
            else:
                run[1] = end
            claim.inflight += end - first
            left -= end - first
            chunks.append(_Chunk(claim, first, end, claim.items[first:end]))
        held = self._held.get(getcurrent())
        if held is None:
            if len(self._held) > 64:  # workers come and go: forget the dead ones
                for glet in [g for g in self._held if g.dead]:
                    del self._held[glet]
            held = self._held[getcurrent()] = collections.deque()
        held.extend(chunks)
        if len(chunks) == 1:
            return chunks[0].items  # its own list (nobody mutates a chunk)
        return list(itertools.chain.from_iterable(chunk.items for chunk in chunks))

    def done_many(self, count):
        """The ``count`` oldest messages handed out in chunks to the calling greenlet and
        still without an outcome are done. More than it holds: the rest is logged and
        left (given back at close: delivered again, never lost)."""
        me = getcurrent()
        self._settle_held(me, self._held.get(me), count)

    def _settle_held(self, me, held, count, quiet=False):
        """Settle as done the ``count`` oldest messages of ``held`` still handed out:
        a run of a chunk at once, one by one only in a chunk that lost some."""
        settled = 0
        while count and held:
            chunk = held[0]
            claim, first = chunk.claim, chunk.first
            if not chunk.gone:
                end = min(chunk.end, first + count)
            else:  # some left on their own: the run up to the next of them
                end = first
                while end < chunk.end and end - first < count and end not in chunk.gone:
                    end += 1
            chunk.first = end
            while chunk.first in chunk.gone:
                chunk.first += 1
            if chunk.first >= chunk.end:
                held.popleft()
            if end > first:
                claim.inflight -= end - first
                count -= end - first
                settled += end - first
                self._settle(claim, first, end)
        if held is not None and not held:
            del self._held[me]
        if count > 0 and not quiet:
            log.warning("spool %s: done_many: %d more than the calling greenlet holds",
                        self.pending_dir, count, extra={"action": "spool.done_many"})
        return settled

    def attempts(self, item):
        """How many times ``item``'s file has been delivered, this delivery included."""
        return self._entry(item)[1].attempts

    def check(self, item):
        """Raise ValueError unless ``item`` is handed out and has no outcome yet."""
        self._entry(item)

    # -- outcomes ----------------------------------------------------------------------

    def done(self, item):
        """``item`` has its outcome: its file is deleted once all its messages have one
        (after :meth:`close`, a file whose other messages are not in a handler goes back)."""
        _, claim, index = self._take(item)
        self._settle(claim, index)

    def release(self, item):
        """``item`` was handed out but will get no outcome here (its handler was killed, its
        worker dropped it): it is handed out again first, before any other message; after
        :meth:`close`, its file goes back to ``incoming/`` once no message of it is in a
        handler (attempts unchanged: a clean stop is not a crash)."""
        entry = self._take(item)
        if self.closed:
            claim = entry[1]
            if claim.inflight == 0 and claim.open:
                self._release(claim)
        else:  # first in line again (the chunk that held it marked it gone)
            self._ready.appendleft([entry[1], entry[2], entry[2] + 1])
            self._ready_count += 1

    def failed(self, item, error, tb_text):
        """``item`` goes alone to ``errors/`` with a ``.meta`` (a batch's other messages are
        unaffected); returns its message id."""
        _, claim, index = self._take(item)
        message = codec.as_dict(item)
        meta = errors.make_meta("failed", error, tb_text, claim.attempts, self.owner,
                                [message["id"]])
        if claim.size == 1:
            try:
                errors.banish_file(self.writer, claim.path, claim.base, meta)
            except FileNotFoundError:  # taken from under us (requeued by an operator)
                errors.banish_message(self.writer, message, claim.base, meta)
            claim.open = 0
        else:
            errors.banish_message(self.writer, message,
                                  names.part_name(claim.base, index, claim.size), meta)
            self._settle(claim, index)
        self._banished(1)
        return message["id"]

    def close(self):
        """Hand out nothing more: claimed files with no message in a handler go back to
        ``incoming/`` at once, the others when their last handed-out message settles.

        Messages handed out in chunks to greenlets that are dead now and still without an
        outcome ran: a processor runs its chunk in order and gives back (``release``)
        what it did not finish, the message in a handler when it was killed included;
        what it finished waited for the chunk's ``done_many``, which a kill never sends.
        They are done, so a clean stop never delivers them again."""
        for glet, held in list(self._held.items()):
            if glet.dead:
                self._settle_held(glet, held, sum(c.end - c.first for c in held), quiet=True)
        self.closed = True
        for claim in {id(run[0]): run[0] for run in self._ready}.values():
            if claim.inflight == 0 and claim.open:
                self._release(claim)
        self._ready.clear()
        self._ready_count = 0

    # -- internals ---------------------------------------------------------------------

    def _entry(self, item):
        """``(item, claim, index, chunk)`` of a handed-out item without an outcome (chunk:
        None when handed out alone); ValueError else."""
        entry = self._handed_out.get(id(item))
        if entry is not None and entry[0] is item:
            return entry + (None,)
        me = getcurrent()
        mine = self._held.get(me, ())
        for held in [mine] + [h for g, h in self._held.items() if g is not me]:
            for chunk in held:
                index = chunk.find(item)
                if index is not None:
                    return item, chunk.claim, index, chunk
        raise ValueError("%r was not handed out by this queue (or already settled)" % (item,))

    def _take(self, item):
        entry = self._entry(item)
        chunk = entry[3]
        if chunk is None:
            del self._handed_out[id(item)]
        else:
            chunk.gone.add(entry[2])
        entry[1].inflight -= 1
        return entry[:3]

    def _settle(self, claim, first, end=None):
        """Messages ``first`` .. ``end - 1`` (``first`` alone) of ``claim`` have an
        outcome: the file is deleted once all have one (given back after close once none
        is in a handler)."""
        if not claim.settle(first, first + 1 if end is None else end):
            self._delete(claim.path)
        elif self.closed and claim.inflight == 0:
            self._release(claim)

    def _delete(self, path):
        """Delete the claimed file ``path``, all of whose messages are settled: in the
        threadpool, by a greenlet of its own (:meth:`_delete_settled`), so the processor
        that settled it goes on with the next file at once (it waited for the unlink's
        round trip through the threadpool, 7 to 60 ms while the hub reads a burst: a stall
        of the drain per file). A crash before the unlink leaves the file in
        ``pending/<owner>/``: delivered again (at least once), never lost;
        :meth:`flush_deletes` (a clean stop) waits for the unlinks."""
        self._settled.append(path)
        if self._deleter is None:
            self._deleter = spawn(self._delete_settled)

    def _delete_settled(self):
        """Unlink the settled files, those that gathered meanwhile in one threadpool call;
        a failure is logged (the file stays: delivered again after a restart)."""
        try:
            while self._settled:
                paths, self._settled = self._settled, []
                try:
                    offload.call(_unlink_all, paths)
                except OSError as error:
                    log.error("spool %s: deleting %d settled file(s) failed (%s): they stay "
                              "in pending/ and are delivered again after a restart",
                              self.pending_dir, len(paths), error,
                              extra={"action": "spool.delete_failed"})
        finally:
            self._deleter = None

    def flush_deletes(self):
        """Wait until the settled files are deleted. On the hub (a link callback closing
        the queue), which cannot wait, what was not handed to the threadpool yet is
        unlinked inline, and an unlink already in the threadpool ends on its own."""
        if getcurrent() is get_hub():
            paths, self._settled = self._settled, []
            _unlink_all(paths)
            return
        deleter = self._deleter
        if deleter is not None and getcurrent() is not deleter:
            deleter.join()

    def _claim_some(self):
        """Claim the oldest file of ``incoming/`` (its rename and read in ONE threadpool
        call); True once messages are ready, False when nothing is deliverable. One file
        at a time: a file claimed is a delivery, and a consumer that dies redelivers (and
        counts an attempt for) every file it held."""
        while True:
            if not self._known:
                self._refill()
                if not self._known or self.closed:
                    return False
            name = self._known.popleft()
            # A kill while the rename runs waits for it, so the claim is recorded (its
            # messages ready, first in line, in order) before the kill goes on: left in
            # pending/<owner>/ unrecorded nobody would deliver it, and given back later a
            # restarted pool would run the key's later messages first.
            kept = None if self.readthrough is None else self.readthrough.take(name)
            (outcome, size, data), thrown = offload.call_through(
                _claim_file, self.incoming, self.pending_dir, name, self.max_file_bytes,
                None if kept is None else kept[0])
            if outcome is _CLAIMED:
                if kept is not None:
                    self._count_kept(data is _UNREAD)
                self._take_file(name, size, data, kept)
            elif outcome is _VANISHED:
                self._left(names.message_count(name), 0)
            elif outcome is _NO_DIR:  # pending/<owner>/ was removed under us: make it again
                layout.make_dir(self.pending_dir, self.mode)
                self._known.appendleft(name)
            if thrown is not None:  # every outcome recorded first: the counters stay true
                raise thrown
            if self._ready:
                return True

    def _take_file(self, name, size, data, kept=None):
        """A file just claimed (``data``: its content, None when over max_file_bytes,
        :data:`_UNREAD` when ``kept``, the read-through cache's ``(size, batch)`` of it,
        stands for it): its messages become ready, or it goes to ``errors/``."""
        self._left(names.message_count(name), size)
        path = os.path.join(self.pending_dir, name)
        if data is None:
            self._banish(Claim(name, path, 1), "oversized",
                         "%d bytes: over the spool's max_file_bytes=%d"
                         % (size, self.max_file_bytes))
            return
        if data is _UNREAD:
            items = kept[1]
        else:
            try:
                items = codec.decode(data, names.split(name)[0])
            except ValueError as error:  # includes UnicodeDecodeError and JSONDecodeError
                self._banish(Claim(name, path, 1), "undecodable", error)
                return
        claim = Claim(name, path, len(items), items)
        if claim.attempts > self.max_attempts:
            self._banish(claim, "max_attempts",
                         "delivered %d times without an outcome" % (claim.attempts - 1))
            return
        if not items:
            self._delete(path)
            return
        self._ready.append([claim, 0, len(items)])
        self._ready_count += len(items)

    def _refill(self):
        """Names of ``incoming/`` into ``_known`` from a listing made in the threadpool; a
        greenlet that comes while another lists waits for that listing instead."""
        listing = self._listing
        if listing is not None:
            listing.wait()
            return
        self._listing = listing = Event()
        try:
            self._known.extend(offload.listing(self.incoming))
        finally:
            self._listing = None
            listing.set()

    def _banish(self, claim, reason, error):
        """Move the whole claimed file to ``errors/`` with a ``.meta``."""
        ids = [names.message_id(claim.base, i) for i in range(claim.size)]
        meta = errors.make_meta(reason, error, None, claim.attempts, self.owner, ids)
        errors.banish_file(self.writer, claim.path, claim.base, meta)
        claim.open = 0
        self._banished(1)

    def _count_kept(self, used):
        """A claim of a file the read-through cache kept: it ``used`` the kept batch, or
        read the file (its size was not the size written)."""
        if used:
            self.readthrough.hits += 1
        else:
            self.readthrough.misses += 1

    def _left(self, messages, nbytes):
        if self.backlog is not None:
            self.backlog.left(1, messages, nbytes)

    def _entered(self, messages, nbytes):
        if self.backlog is not None:
            self.backlog.entered(1, messages, nbytes)

    def _banished(self, messages):
        if self.backlog is not None:
            self.backlog.errors += messages

    def _release(self, claim):
        """Give an unfinished claim back to ``incoming/`` (its attempts unchanged): the file
        as it is when none of its messages has an outcome, else its messages without one,
        each as its own file named as recovery names a batch's parts (same ids, same place
        in the FIFO), so a clean stop never delivers a done message again."""
        claim.open = 0
        if not claim.outcome.count(1) or not claim.items:
            try:
                size = offload.call(_give_back, claim.path,
                                    os.path.join(self.incoming, claim.name))
            except FileNotFoundError:
                pass  # taken from under us (requeued by an operator): nothing to give back
            else:
                self._entered(names.message_count(claim.name), size)
            return
        for index in [i for i, settled in enumerate(claim.outcome) if not settled]:
            name = names.with_attempts(names.part_name(claim.base, index, claim.size),
                                       claim.attempts - 1)
            data = codec.encode(claim.items[index])
            self.writer.put_file(data, "incoming", name)
            self._entered(1, len(data))
        offload.call(_unlink_all, [claim.path])  # after every part is safely in incoming/


#: What :func:`_claim_file` did with a name.
_CLAIMED, _LOST, _VANISHED, _NO_DIR = "claimed", "lost", "vanished", "no pending dir"
#: The ``data`` of a claimed file left unread: it has the size the read-through cache expects.
_UNREAD = "unread"


def _claim_file(incoming, pending_dir, name, max_file_bytes, kept_size=None):
    """Rename ``name`` from ``incoming`` into ``pending_dir`` and read it (runs in the
    threadpool): ``(outcome, size, data)``, ``data`` None when over ``max_file_bytes``,
    :data:`_UNREAD` when the file has ``kept_size`` bytes (the read-through cache holds
    its messages: the rename, the claim's lock, is all it takes)."""
    path = os.path.join(pending_dir, name)
    try:
        os.rename(os.path.join(incoming, name), path)
    except FileNotFoundError:
        if not os.path.isdir(pending_dir):
            return _NO_DIR, 0, None
        return _LOST, 0, None  # another consumer was faster
    try:
        if kept_size is not None:
            size = os.stat(path).st_size
            if size == kept_size and (max_file_bytes is None or size <= max_file_bytes):
                return _CLAIMED, size, _UNREAD
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            over = max_file_bytes is not None and size > max_file_bytes
            return _CLAIMED, size, None if over else f.read()
    except FileNotFoundError:  # taken from under us (requeued by an operator)
        return _VANISHED, 0, None


def _give_back(path, target):
    """Rename a claimed file back to ``incoming/``; its size (runs in the threadpool)."""
    size = os.stat(path).st_size
    os.rename(path, target)
    return size


def _unlink_all(paths):
    """Delete ``paths`` (runs in the threadpool); one already gone is fine."""
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
