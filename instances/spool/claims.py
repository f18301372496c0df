"""Claiming spool files: the :class:`Claimer` moves the oldest file of ``incoming/`` into
``pending/<owner>/`` and decodes it into a :class:`Claim` and its messages.

The rename is the only lock between consumers: the loser of a race (``FileNotFoundError``)
moves on to the next name. Names of ``incoming/`` are listed, sorted (FIFO) and kept in
memory; the directory is listed again only when they are used up, so a busy queue is not
listed once per message. Undecodable files, and files already delivered ``max_attempts``
times, go to ``errors/`` instead of being handed out. Runs on the caller's greenlet and
does not yield.
"""
import collections
import os

from instances.spool import codec, errors, layout, names


class Claim:
    """One claimed file of ``pending/<owner>/`` and the bookkeeping of its messages."""

    __slots__ = ("name", "base", "path", "attempts", "size", "open", "inflight")

    def __init__(self, name, path, size):
        self.name, self.path, self.size = name, path, size
        self.base, self.attempts = names.split(name)
        self.attempts += 1  # this delivery
        self.open = size  # messages not yet done or failed
        self.inflight = 0  # messages handed out, not yet done or failed


class Claimer:
    """Claims files for the owner whose pending directory is ``pending_dir``."""

    def __init__(self, writer, pending_dir, owner, max_attempts, mode=0o700):
        self.writer = writer
        self.mode = mode
        self.incoming = os.path.join(writer.directory, "incoming")
        self.pending_dir = pending_dir
        self.owner = owner
        self.max_attempts = max_attempts
        self._known = collections.deque()  # names of incoming/ seen, oldest first

    def claim_next(self):
        """``(claim, items)`` of the oldest deliverable file, or None if there is none."""
        while True:
            if not self._known:
                self._known.extend(sorted(os.listdir(self.incoming)))
                if not self._known:
                    return None
            name = self._known.popleft()
            path = os.path.join(self.pending_dir, name)
            try:
                os.rename(os.path.join(self.incoming, name), path)
            except FileNotFoundError:
                if not os.path.isdir(self.pending_dir):  # removed under us: make it again
                    layout.make_dir(self.pending_dir, self.mode)
                    self._known.appendleft(name)
                continue  # else another consumer was faster
            opened = self._open(name, path)
            if opened is not None:
                return opened

    def _open(self, name, path):
        try:
            with open(path, "rb") as f:
                items = codec.decode(f.read(), names.split(name)[0])
        except ValueError as error:  # includes UnicodeDecodeError and JSONDecodeError
            self.banish(Claim(name, path, 1), "undecodable", error)
            return None
        claim = Claim(name, path, len(items))
        if claim.attempts > self.max_attempts:
            self.banish(claim, "max_attempts",
                        "delivered %d times without an outcome" % (claim.attempts - 1))
            return None
        if not items:
            os.unlink(path)
            return None
        return claim, items

    def banish(self, claim, reason, error, tb_text=None):
        """Move the whole claimed file to ``errors/`` with a ``.meta``."""
        ids = [names.message_id(claim.base, i) for i in range(claim.size)]
        meta = errors.make_meta(reason, error, tb_text, claim.attempts, self.owner, ids)
        errors.banish_file(self.writer, claim.path, claim.base, meta)
        claim.open = 0

    def release(self, claim):
        """Give an unfinished claim back to ``incoming/`` (its attempts unchanged)."""
        os.rename(claim.path, os.path.join(self.incoming, claim.name))
        claim.open = 0
