"""The read-through cache of one :class:`~instances.spool.FileQueue`: :class:`ReadThrough`
keeps the messages of the group-commit files the queue wrote and has not claimed yet (a
few: see the bound), so that its own reader, claiming one of them, skips reading and
decoding it.

Why: in a drain the reader keeps up with the writer and claims the file this process has
just written; reading it back, splitting the payloads and checking the columns was most
of what the spool costs per notification over the memory queue (callgrind,
bench/profiles/spool-instructions.txt). The group commit joins the columns anyway to
write them (:func:`~instances.spool.codec.joined_columns`); kept, they are the
:class:`~instances.spool.codec.Columns` that decoding the file would give (the same
Notifications, fields of the same types, the same ids).

The file stays the only durable copy, and the claim its only lock: a claim still renames
``incoming/X`` into ``pending/<owner>/X`` (another consumer may win it: the entry is
dropped then), so crash safety and at-least-once delivery are those of a file read from
disk. A kept batch is used only when the claim succeeds, for a first delivery (a name
without attempts: only such names are kept), and when the claimed file has the size that
was written; else the file is read. The spool never rewrites a file in place (files are
only renamed, and a batch given back in parts gets new names), so a file of that name and
size is what this queue wrote; one corrupted on disk without changing its size is not
noticed (our copy is handed out: it is what we wrote).

Bound: at most :attr:`~instances.spool.FileQueue.read_cache_files` files (16) and
:attr:`~instances.spool.FileQueue.read_cache_bytes` (16 MiB) of their estimated memory
(the file's size plus 100 bytes per message: a payload's ``str`` and its slot, a time's
``float``); a file that does not fit is not kept (nor its batch made), and neither is any
before the queue's reader first asks for messages (a queue only written to, as the
service's under process isolation, keeps nothing). The files kept
already stay: the reader claims in FIFO order, so the oldest are claimed first, and in a
burst, where the writer is several files ahead, the newest would be pushed out before the
reader comes to them (measured: no file of a burst was used so). An entry leaves when its
file is claimed (whether the claim uses it or not, or loses the rename), when a claim of a
later name shows another consumer took it (any entry older than the name claimed), and
when the queue closes or the file's write fails. An entry whose file is claimed
elsewhere thus leaves at this queue's next claim; a file of our name that comes back
(given back whole by another consumer, unchanged) may be served again only while its
entry is there. The group writer keeps a file's batch under its name before it writes it:
renamed into ``incoming/``, the file may be claimed before the writer's greenlet resumes
(kept after the write, about half the files of a durable drain were read back).

Concurrency: one ReadThrough belongs to one FileQueue and its hub thread (the group
writer keeps, a getter takes); never yields.
"""


class ReadThrough:
    """The kept batches of files this queue wrote, by file name (oldest first): at most
    ``files`` of them and ``max_bytes`` of their estimated memory."""

    #: Bytes of memory a kept message costs over its share of the file (an estimate).
    per_message = 100

    def __init__(self, files, max_bytes):
        self.files, self.max_bytes = files, max_bytes
        self._kept = {}  # name -> (size, batch, cost), oldest first (insertion order)
        self._bytes = 0
        #: Claims that used a kept batch, and claims of a kept name that read the file.
        self.hits = self.misses = 0

    def __len__(self):
        return len(self._kept)

    @property
    def bytes(self):
        """The estimated memory of the kept batches."""
        return self._bytes

    def fits(self, size, count):
        """Whether a file of ``size`` bytes and ``count`` messages would be kept now (ask
        before making its batch: a full cache keeps nothing new)."""
        return len(self._kept) < self.files and (
            self._bytes + size + self.per_message * count <= self.max_bytes)

    def keep(self, name, size, batch):
        """The file ``name`` of ``size`` bytes is being written into ``incoming/`` (kept
        before its rename makes it claimable); a claim of it for its first delivery may
        use ``batch`` (its messages as decoding it gives them). Kept only if it
        :meth:`fits`: the files kept already are older, so claimed sooner (FIFO)."""
        if self.fits(size, len(batch)):
            self._kept[name] = (size, batch, size + self.per_message * len(batch))
            self._bytes += self._kept[name][2]

    def take(self, name):
        """The kept ``(size, batch)`` of the file ``name``, or None; a claim of it is under
        way, so it leaves, and so do the files kept before it (older names: claimed by
        another consumer, or they would be claimed first)."""
        kept = self._kept
        while kept:
            oldest = next(iter(kept))
            if oldest >= name:
                break
            self._bytes -= kept.pop(oldest)[2]
        entry = kept.pop(name, None)
        if entry is None:
            return None
        self._bytes -= entry[2]
        return entry[:2]

    def discard(self, name):
        """Forget the file ``name`` (its write failed, or it got another name)."""
        entry = self._kept.pop(name, None)
        if entry is not None:
            self._bytes -= entry[2]

    def clear(self):
        self._kept.clear()
        self._bytes = 0

    def __repr__(self):
        return "<ReadThrough %d files, %d bytes>" % (len(self._kept), self._bytes)
