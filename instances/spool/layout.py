"""The layout of a spool directory: creating its four subdirectories, and counting them.

``tmp/``, ``incoming/``, ``pending/<owner>/``, ``errors/`` (see :mod:`instances.spool`).
Directories are created with the spool's ``mode`` (the umask does not cut it); existing
ones are left as they are (an operator's choice). Does not yield.
"""
import os
import time

from instances.spool import errors, names

SUBDIRS = ("tmp", "incoming", "pending", "errors")


def make_dirs(directory, mode=0o700):
    """Create the spool ``directory`` and its four subdirectories (existing ones are left
    as they are)."""
    make_dir(directory, mode)
    for sub in SUBDIRS:
        make_dir(os.path.join(directory, sub), mode)


def make_dir(path, mode):
    """Create ``path`` (and parents) with exactly ``mode`` unless it exists."""
    try:
        os.makedirs(path)
    except FileExistsError:
        return
    os.chmod(path, mode)  # makedirs' mode is cut by the umask


def stats(directory):
    """Counts of the spool ``directory`` without opening it as a queue: ``{"incoming": n,
    "pending": {owner: n}, "errors": n, "tmp": n, "oldest_age": seconds or None}``
    (``oldest_age``: of the oldest file in ``incoming/``)."""
    incoming = sorted(os.listdir(os.path.join(directory, "incoming")))
    pending_dir = os.path.join(directory, "pending")
    oldest = names.enqueued_at(incoming[0]) if incoming else None
    return {
        "incoming": len(incoming),
        "pending": {o: len(os.listdir(os.path.join(pending_dir, o)))
                    for o in sorted(os.listdir(pending_dir))},
        "errors": len(errors.error_names(directory)),
        "tmp": len(os.listdir(os.path.join(directory, "tmp"))),
        "oldest_age": None if oldest is None else max(0.0, time.time() - oldest),
    }
