"""The ``errors/`` directory of a spool: messages set aside, each with a ``.meta`` JSON.

A message lands in ``errors/`` when its handler failed (:meth:`FileQueue.failed`), when it
was delivered ``max_attempts`` times without an outcome (its consumers kept dying), or when
its file cannot be decoded. ``errors/<base>`` holds the message exactly as it would be
delivered again; ``errors/<base>.meta`` says why::

    {"error": "...", "traceback": "...", "attempts": 2, "time": 1700000000.0,
     "owner": "host-<boot>.<pidns>-1234-5678", "message_id": "<base>#0", "reason": "failed"}

The ``.meta`` file is written first, so a message in ``errors/`` always has one (a crash
between the two steps leaves at most an orphan ``.meta``, ignored and overwritten later).
Functions run on the caller's greenlet and do not yield.
"""
import json
import os
import time

from instances.spool import codec, names, offload

#: Lines of a handler's traceback kept in ``.meta`` (the last ones: where it failed).
TRACEBACK_LINES = 30

META_SUFFIX = ".meta"


def make_meta(reason, error, tb_text, attempts, owner, message_ids):
    lines = (tb_text or "").rstrip("\n").splitlines()[-TRACEBACK_LINES:]
    return {
        "reason": reason,
        "error": None if error is None else (error if isinstance(error, str) else repr(error)),
        "traceback": "\n".join(lines),
        "attempts": attempts,
        "time": time.time(),
        "owner": owner,
        "message_id": message_ids[0] if len(message_ids) == 1 else message_ids,
    }


def banish_file(writer, path, base, meta):
    """Move the claimed file ``path`` to ``errors/<base>`` (``writer`` writes the meta)."""
    _write_meta(writer, base, meta)
    os.rename(path, os.path.join(writer.directory, "errors", base))
    if writer.fsync:
        writer.sync_dir("errors")


def banish_message(writer, message, base, meta):
    """Write one ``message`` (a dict carrying its ``id``) alone as ``errors/<base>``."""
    _write_meta(writer, base, meta)
    writer.put_file(codec.encode(message), "errors", base)


def _write_meta(writer, base, meta):
    writer.put_file(codec.encode_meta(meta), "errors", base + META_SUFFIX)


def error_names(directory):
    """Names of the message files in ``errors/`` (no ``.meta``), oldest first."""
    return offload.sort_names([name for name in os.listdir(os.path.join(directory, "errors"))
                               if not name.endswith(META_SUFFIX)])


def _meta_of(directory, name):
    """The ``.meta`` dict of ``errors/<name>``; ``{}`` when it is missing or unreadable."""
    try:
        with open(os.path.join(directory, "errors", name + META_SUFFIX), "rb") as f:
            meta = json.loads(f.read())
    except (OSError, ValueError, RecursionError):
        return {}
    return meta if isinstance(meta, dict) else {}


def matches(meta, reason=None, error_contains=None):
    """Whether a message whose ``.meta`` is ``meta`` passes the requeue filter: its reason
    is ``reason`` (when given) and its error holds ``error_contains`` (when given)."""
    if reason is not None and meta.get("reason") != reason:
        return False
    if error_contains is not None and error_contains not in str(meta.get("error") or ""):
        return False
    return True


def requeue_errors(writer, reason=None, error_contains=None):
    """Move the messages of ``errors/`` back to ``incoming/`` with their attempts reset
    (same base name, so the same message id and FIFO position); drop their ``.meta``
    files. With ``reason`` / ``error_contains`` only the messages whose ``.meta`` passes
    :func:`matches` (a message without a readable ``.meta`` passes no filter). Returns the
    number of messages requeued."""
    directory = writer.directory
    moved = 0
    filtered = reason is not None or error_contains is not None
    for name in error_names(directory):
        if filtered and not matches(_meta_of(directory, name), reason, error_contains):
            continue
        base, _ = names.split(name)
        try:
            os.rename(os.path.join(directory, "errors", name),
                      os.path.join(directory, "incoming", base))
        except FileNotFoundError:
            continue  # someone else requeued it
        moved += 1
        _unlink(os.path.join(directory, "errors", name + META_SUFFIX))
    if moved and writer.fsync:
        writer.sync_dir("incoming")
    return moved


def _unlink(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
