"""Crash recovery of a spool: claimed files of dead owners, and stale ``tmp/`` files.

* ``pending/<owner>/`` of an owner that is certainly dead
  (:func:`instances.spool.names.owner_alive`) goes back to ``incoming/`` with its attempts
  count raised by one; a file that has now been delivered ``max_attempts`` times goes to
  ``errors/`` instead. A batch file goes back split into one file per message (each keeps
  its message id and the attempts count): if one message of the batch kills its consumer,
  the next crash is that message's alone, and its neighbours are not sent to ``errors/``
  with it. Nothing that reached ``incoming/`` is lost: it is in ``incoming/``,
  in some ``pending/<owner>/``, in ``errors/``, or was finished.
* ``tmp/`` files of dead writers, and any ``tmp/`` file older than ``stale_age`` seconds,
  are deleted. They were never renamed into ``incoming/``, so they were never enqueued:
  their writer did not get a success back.

Safe to run by several processes at once (a lost rename race is skipped). Every function
here scans directories and may fsync, so the spool runs them in gevent's threadpool
(:mod:`instances.spool.offload`): they make file system calls only, and return what they
did for the caller to log on the hub.
"""
import os
import time

from instances.spool import codec, errors, names, offload


def recover_pending(writer, max_attempts, own_owner, max_file_bytes=None):
    """Give back the claimed files of dead owners; returns ``[(owner, requeued,
    banished), ...]`` for each owner that had some."""
    pending = os.path.join(writer.directory, "pending")
    recovered = []
    for owner in sorted(os.listdir(pending)):
        if owner == own_owner or names.owner_alive(owner):
            continue
        r, b = _recover_owner(writer, os.path.join(pending, owner), owner, max_attempts,
                              max_file_bytes)
        if r or b:
            recovered.append((owner, r, b))
    if any(r for _, r, _ in recovered) and writer.fsync:
        writer.sync_dir("incoming")
    return recovered


def recover_owner(writer, owner, max_attempts, max_file_bytes=None):
    """Give back ``pending/<owner>/`` whatever its owner's state (an operator's decision);
    returns ``(requeued, banished)``. ValueError when there is no such directory."""
    owner_dir = os.path.join(writer.directory, "pending", owner)
    if not os.path.isdir(owner_dir):
        raise ValueError("owner=%r has no claims in %s" % (owner, os.path.dirname(owner_dir)))
    result = _recover_owner(writer, owner_dir, owner, max_attempts, max_file_bytes)
    if result[0] and writer.fsync:
        writer.sync_dir("incoming")
    return result


def _recover_owner(writer, owner_dir, owner, max_attempts, max_file_bytes=None):
    requeued = banished = 0
    for name in offload.sort_names(_listdir(owner_dir)):
        base, attempts = names.split(name)
        attempts += 1  # the dead owner's delivery counts
        path = os.path.join(owner_dir, name)
        try:
            if attempts >= max_attempts:
                meta = errors.make_meta(
                    "max_attempts", "delivered %d times without an outcome" % attempts,
                    None, attempts, owner, [names.message_id(base, 0)])
                errors.banish_file(writer, path, base, meta)
                banished += 1
            elif _split_batch(writer, path, base, attempts, max_file_bytes):
                requeued += 1
            else:
                os.rename(path, os.path.join(
                    writer.directory, "incoming", names.with_attempts(base, attempts)))
                requeued += 1
        except FileNotFoundError:
            continue  # another process recovered it first
    try:
        os.rmdir(owner_dir)
    except OSError:
        pass  # not empty (a late rename) or already gone: a later recovery handles it
    return requeued, banished


def _split_batch(writer, path, base, attempts, max_file_bytes=None):
    """Requeue the batch file at ``path`` as one file per message; False when it is not a
    batch (or cannot be read, or is over ``max_file_bytes``: it is requeued whole, and the
    consumer that claims it judges it and sends it to ``errors/``)."""
    try:
        with open(path, "rb") as f:
            if max_file_bytes is not None and os.fstat(f.fileno()).st_size > max_file_bytes:
                return False
            messages = codec.messages(f.read())
    except (OSError, ValueError):
        return False
    if len(messages) < 2:
        return False
    for index, message in enumerate(messages):
        if not message.get("id"):  # a Notification's dict says "id": null
            message["id"] = names.message_id(base, index)
        name = names.with_attempts(names.part_name(base, index, len(messages)), attempts)
        writer.put_file(codec.encode(message), "incoming", name)
    os.unlink(path)  # after every message is safely in incoming/
    return True


def clean_tmp(directory, stale_age):
    """Delete ``tmp/`` files of dead writers or older than ``stale_age`` s; returns count."""
    tmp = os.path.join(directory, "tmp")
    now = time.time()
    removed = 0
    for name in _listdir(tmp):
        owner = names.tmp_owner(name)
        path = os.path.join(tmp, name)
        try:
            stale = (owner is not None and not names.owner_alive(owner)) or (
                now - os.stat(path).st_mtime > stale_age)
            if stale:
                os.unlink(path)
                removed += 1
        except FileNotFoundError:
            continue  # renamed into place or removed meanwhile
    return removed


def _listdir(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []
