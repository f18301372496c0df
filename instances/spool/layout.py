"""The layout of a spool directory: creating its four subdirectories, checking them, and
counting them.

``tmp/``, ``incoming/``, ``pending/<owner>/``, ``errors/`` (see :mod:`instances.spool`).
Directories are created with the spool's ``mode`` (the umask does not cut it). Whoever may
write ``incoming/`` chooses what the handler is given, so a ``mode`` writable by group or
others is refused, and an existing directory is used only if it is a real directory (not a
symlink) of this process's user, not writable by group or others; its mode is otherwise
left as it is (an operator's choice). Does not yield.
"""
import os
import stat
import time

from instances.exceptions import InvalidConfigurationException
from instances.spool import errors, names

SUBDIRS = ("tmp", "incoming", "pending", "errors")
#: Permission bits a spool directory must not have: write for group or others.
UNSAFE_BITS = 0o022


def make_dirs(directory, mode=0o700):
    """Check ``mode``, then create the spool ``directory`` and its four subdirectories
    (existing ones are checked, see the module). Raise InvalidConfigurationException."""
    check_mode(mode)
    make_dir(directory, mode)
    for sub in SUBDIRS:
        make_dir(os.path.join(directory, sub), mode)


def check_mode(mode, field="queue.mode"):
    """Refuse a directory ``mode`` writable by group or others."""
    if mode & UNSAFE_BITS:
        raise InvalidConfigurationException(
            "%s=0o%o: a spool must not be writable by group or others (they could drop "
            "messages for the handler into incoming/); use 0o700 or 0o750" % (field, mode),
            field, "0o%o" % mode)


def make_dir(path, mode):
    """Create ``path`` (and parents) with exactly ``mode`` unless it exists; an existing
    one is checked (:func:`check_dir`)."""
    try:
        os.makedirs(path)
    except FileExistsError:
        check_dir(path)
        return
    os.chmod(path, mode)  # makedirs' mode is cut by the umask


def check_dir(path):
    """Raise InvalidConfigurationException unless ``path`` is a directory (not a symlink)
    owned by this process's user and not writable by group or others."""
    info = os.lstat(path)
    why = None
    if stat.S_ISLNK(info.st_mode):
        why = "is a symlink (give the real directory)"
    elif not stat.S_ISDIR(info.st_mode):
        why = "is not a directory"
    elif info.st_uid != os.geteuid():
        why = "is owned by uid %d, not by this process's user (uid %d)" % (
            info.st_uid, os.geteuid())
    elif stat.S_IMODE(info.st_mode) & UNSAFE_BITS:
        why = "has mode 0o%o, writable by group or others (chmod go-w it)" % (
            stat.S_IMODE(info.st_mode))
    if why is not None:
        raise InvalidConfigurationException("spool directory %s %s" % (path, why),
                                            "queue.spool", path)


def stats(directory):
    """Counts of the spool ``directory`` without opening it as a queue: ``{"incoming": n,
    "pending": {owner: n}, "errors": n, "tmp": n, "oldest_age": seconds or None}``
    (``oldest_age``: of the oldest file in ``incoming/``)."""
    incoming = os.listdir(os.path.join(directory, "incoming"))
    pending_dir = os.path.join(directory, "pending")
    oldest = names.enqueued_at(min(incoming)) if incoming else None
    return {
        "incoming": len(incoming),
        "pending": {o: len(os.listdir(os.path.join(pending_dir, o)))
                    for o in sorted(os.listdir(pending_dir))},
        "errors": len(errors.error_names(directory)),
        "tmp": len(os.listdir(os.path.join(directory, "tmp"))),
        "oldest_age": None if oldest is None else max(0.0, time.time() - oldest),
    }
