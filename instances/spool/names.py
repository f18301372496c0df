"""File and owner names of a spool (:mod:`instances.spool`): what a name encodes, and
whether the process behind an owner name is still alive.

A message file is named ``<base>[.<attempts>]``:

* ``base`` = ``<time_ns:020d>-<pid>-<seq:010d>-<random>[n<count>]`` (``n<count>``: a batch
  file of ``count`` messages, so a listing alone tells how many messages wait; optionally
  ``_<index>`` when one message was split off a batch: the index zero-padded to the width
  of the batch's last index, so the parts of one batch sort in batch order). Names sort by enqueue time, then writer pid, then the
  writer's sequence number, so sorting a directory listing gives FIFO order. The base never
  changes while a message lives in the spool, so it gives a stable message id.
* ``attempts`` = how many deliveries of this file ended without an outcome (the consumer
  died). Absent means 0. Recovery renames ``X.2`` to ``X.3``; requeue resets it.

An owner id is ``[<label>@]<host>-<boot>.<pidns>-<pid>-<start>``: ``boot`` is the first 12
hex digits of the kernel's boot id, ``pidns`` the inode of the process's pid namespace
and ``start`` the process start time (field 22 of ``/proc/<pid>/stat``), so neither a
reused pid nor the same pid in another container (another pid namespace) on a shared
spool is mistaken for the original process. Ids of the older form
``<host>-<pid>-<start>`` are still judged as before. A temporary file in ``tmp/`` is named ``<base>@<owner>`` so that the files of dead
writers can be recognised and removed.

Pure functions, and :class:`MessageIds` (a list of ids made when first read); safe
from any greenlet or thread.
"""
import collections.abc
import itertools
import operator
import os
import re
import socket
import time
import uuid

import gevent.monkey

#: Characters allowed in an owner label (it becomes part of a directory name).
_LABEL = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
#: A base written by a spool, with its message count when it is a batch.
_BASE = re.compile(r"^\d{20}-\d+-\d{10}-[0-9a-f]{8}(?:n(\d+))?$")

_last_time = 0
_seq = 0
#: A real lock (not a greenlet one): bases are also made in the threadpool (recovery).
_lock = gevent.monkey.get_original("_thread", "allocate_lock")()


def new_base(count=1):
    """Return a fresh base name for a file of ``count`` messages; strictly increasing
    within this process (from any thread)."""
    global _last_time, _seq
    with _lock:
        now = max(time.time_ns(), _last_time + 1)  # wall clocks may step back; FIFO may not
        _last_time = now
        _seq += 1
        seq = _seq
    base = "%020d-%d-%010d-%s" % (now, os.getpid(), seq, uuid.uuid4().hex[:8])
    return base + "n%d" % count if count > 1 else base


def message_count(name):
    """Messages in the file ``name`` as its name tells (a batch base says ``n<count>``;
    a part split off a batch, or any other name, holds one)."""
    base = name.partition(".")[0]
    if "n" not in base:  # the common case, without a regex (a recount asks per file)
        return 1
    match = _BASE.match(base)
    return int(match.group(1)) if match is not None and match.group(1) else 1


def split(name):
    """``"X.3"`` -> ``("X", 3)``; ``"X"`` -> ``("X", 0)``."""
    base, _, attempts = name.partition(".")
    return base, int(attempts) if attempts.isdigit() else 0


def with_attempts(base, attempts):
    """The file name of ``base`` after ``attempts`` unfinished deliveries."""
    return "%s.%d" % (base, attempts) if attempts else base


def part_name(base, index, count):
    """The base name of message ``index`` of the ``count`` messages of the batch ``base``
    when it is split off on its own: ``<base>_<index>``, the index zero-padded to the
    width of ``count - 1`` so that a listing sorted as strings keeps the batch's order
    (``_00 .. _11``, never ``_0, _1, _10, _11, _2``)."""
    return "%s_%0*d" % (base, len(str(max(count - 1, 0))), index)


def message_id(base, index):
    """The stable id of message ``index`` of the file ``base``."""
    return "%s#%d" % (base, index)


#: ``"#0"``, ``"#1"``, ...: the id suffixes, made once up to this many.
_SUFFIXES_KEPT = 100_000
_suffixes = []


def message_ids(base, first, count):
    """The ids of messages ``first`` .. ``first + count - 1`` of the file ``base`` (a
    list, made at C speed: a group commit names thousands at once; ``operator.add`` over
    a repeat costs a quarter less than ``base.__add__``, a method wrapper)."""
    end = first + count
    if end > len(_suffixes):
        if end > _SUFFIXES_KEPT:
            return ["%s#%d" % (base, i) for i in range(first, end)]
        with _lock:
            _suffixes.extend(map("#%d".__mod__, range(len(_suffixes), end)))
    return list(map(operator.add, itertools.repeat(base), _suffixes[first:end]))


class MessageIds(collections.abc.Sequence):
    """The ids of messages ``first`` .. ``first + count - 1`` of the file ``base`` as a
    sequence made when it is first read (:func:`message_ids`): what the group commit
    answers a put, which the shared notifier drops unread (making them took a third of
    the spool's write side per notification). Compares equal to the list of the same
    ids; ``+`` with a list or tuple gives a list."""

    __slots__ = ("_args", "_ids")

    def __init__(self, base, first, count):
        self._args, self._ids = (base, first, count), None

    def _list(self):
        if self._ids is None:
            self._ids = message_ids(*self._args)
        return self._ids

    def __len__(self):
        return self._args[2]

    def __getitem__(self, key):
        return self._list()[key]

    def __iter__(self):
        return iter(self._list())

    def __eq__(self, other):
        if isinstance(other, (MessageIds, list, tuple)):
            return self._list() == list(other)
        return NotImplemented

    __hash__ = None

    def __add__(self, other):
        return self._list() + list(other)

    def __radd__(self, other):
        return list(other) + self._list()

    def __repr__(self):
        return repr(self._list())


def enqueued_at(base):
    """The enqueue time (``time.time()`` seconds) encoded in ``base``, or None."""
    head = base.split("-", 1)[0]
    return int(head) / 1e9 if head.isdigit() else None


def tmp_name(base, owner):
    return "%s@%s" % (base, owner)


def tmp_owner(name):
    """The owner id encoded in a ``tmp/`` file name, or None for foreign names."""
    base, sep, owner = name.partition("@")
    return owner if sep else None


def hostname():
    return re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"


def process_start_time(pid):
    """Start time of ``pid`` in clock ticks since boot, "0" when unknown, None if gone
    (a zombie is gone: it will never finish its work)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return "0"
    fields = stat.rsplit(b")", 1)[1].split()  # comm (field 2) may itself hold ')'
    return None if fields[0] in (b"Z", b"X") else fields[19].decode()  # fields 3 and 22


_SCOPED = re.compile(r"^(?P<host>.+)-(?P<boot>[0-9a-f]{12}|0)\.(?P<ns>\d+)-(?P<pid>\d+)-"
                     r"(?P<start>\d+)$")


def boot_id():
    """The first 12 hex digits of this kernel's boot id, "0" when unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")[:12].lower() or "0"
    except OSError:
        return "0"


def pid_namespace():
    """The inode of this process's pid namespace (as a decimal string), "0" when unknown."""
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return "0"
    digits = re.sub(r"\D", "", link)
    return digits or "0"


def scope():
    """``<boot>.<pidns>``: where a pid of this process means this process."""
    return "%s.%s" % (boot_id(), pid_namespace())


def current_owner(label=None):
    """The owner id of this process (with ``label`` if given)."""
    if label is not None and not _LABEL.match(label):
        from instances.exceptions import InvalidConfigurationException
        raise InvalidConfigurationException(
            "owner label %r must match %s" % (label, _LABEL.pattern), "owner", label)
    pid = os.getpid()
    ident = "%s-%s-%d-%s" % (hostname(), scope(), pid, process_start_time(pid) or "0")
    return "%s@%s" % (label, ident) if label else ident


def owner_alive(owner):
    """False only when ``owner`` is certainly dead: same host, and then another boot
    (every process of the last one is gone), or the same boot and pid namespace with its
    pid gone or now belonging to a process started at another time. Unknown formats,
    other hosts and other pid namespaces (another container sharing the spool, whose pids
    mean other processes) count as alive: never steal work we cannot judge."""
    ident = owner.rpartition("@")[2]
    scoped = _SCOPED.match(ident)
    if scoped is not None:
        if scoped["host"] != hostname():
            return True
        boot = boot_id()
        if "0" not in (boot, scoped["boot"]) and boot != scoped["boot"]:
            return False  # this host rebooted since
        if scoped["ns"] != pid_namespace() or "0" in (boot, scoped["boot"]):
            return True
        pid, started = scoped["pid"], scoped["start"]
    else:
        parts = ident.rsplit("-", 2)
        if len(parts) != 3 or not parts[1].isdigit() or parts[0] != hostname():
            return True
        _, pid, started = parts
    start = process_start_time(int(pid))
    if start is None:
        return False
    return start == started or "0" in (start, started)
