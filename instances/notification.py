"""The :class:`Notification`: one event handed from a listener to a handler."""
import collections
import operator
import time
from itertools import repeat

_FIELDS = ("channel", "payload", "kind", "pid", "received_at", "id")

#: The tuple layout underneath: a namedtuple's fields are read by its C accessors, as fast
#: as psycopg2's own ``Notify`` members (a ``property(itemgetter)`` took twice as long, on
#: every field a handler reads).
_Layout = collections.namedtuple("_Layout", _FIELDS)
for _name, _doc in (("channel", "the channel name"), ("payload", "the payload (str)"),
                    ("kind", '"notify" or "catch_up"'),
                    ("pid", "the notifying backend's pid (0: catch_up)"),
                    ("received_at", "time.time() of receipt"),
                    ("id", "stable message id (spooled), else None")):
    getattr(_Layout, _name).__doc__ = _doc
del _name, _doc


_channel_of = operator.attrgetter("channel")
_payload_of = operator.attrgetter("payload")
_pid_of = operator.attrgetter("pid")


class Notification(_Layout):
    """One notification as a handler sees it (immutable).

    ``channel`` the channel name (None for a catch_up); ``payload`` the payload (``str``,
    may be empty); ``kind`` is ``"notify"`` for a NOTIFY from the server and ``"catch_up"``
    for the one synthetic notification put after every (re)LISTEN (NOTIFY is not durable:
    re-read your tables); ``pid`` the notifying backend's pid (0 for a catch_up);
    ``received_at`` the ``time.time()`` of receipt; ``id`` a stable message id when the
    notification went through a spool (None otherwise).

    A tuple underneath: the listener builds one per NOTIFY at C speed with
    :meth:`from_fields`, and handlers read the fields at C speed, which matters on the
    hot path (see bench/).
    """

    __slots__ = ()

    NOTIFY = "notify"
    CATCH_UP = "catch_up"

    def __new__(cls, channel, payload="", kind="notify", pid=0, received_at=None, id=None):
        return tuple.__new__(cls, (channel, payload, kind, pid,
                                   time.time() if received_at is None else received_at, id))

    #: ``Notification.from_fields((channel, payload, kind, pid, received_at, id))``: no
    #: defaults, no checks; for hot paths that have every field at hand. It is the class
    #: ``_Made`` (set below): one C call, ``map`` it over rows.
    from_fields = None

    @classmethod
    def from_notifies(cls, notifies, received_at, channel=None):
        """A list of "notify" Notifications, one per item of ``notifies`` (a list of
        objects with ``channel``, ``payload`` and ``pid``, as psycopg2's ``Notify``), all
        received at ``received_at``; with ``channel`` given, every one gets that channel
        (the read's one channel: one string shared by all). The hot path of every read:
        built by map/zip at C speed, no bytecode per notification (measured: a fifth fewer
        instructions than a comprehension of ``from_fields``), or, where the optional C
        part is built (:data:`ACCELERATED`), by one C call for the whole read. The list is
        a :class:`LiveRead`: a batch worker knows it holds no catch_up without a look."""
        if _fill is not None and type(notifies) is list:
            made = LiveRead()
            _fill(made, notifies, received_at, channel, _Made, _NOTIFY)
            return made
        channels = repeat(channel) if channel is not None else map(_channel_of, notifies)
        return LiveRead(map(_Made, zip(
            channels, map(_payload_of, notifies), repeat(_NOTIFY),
            map(_pid_of, notifies), repeat(received_at), repeat(None))))

    def to_dict(self):
        return dict(zip(_FIELDS, self, strict=True))

    @classmethod
    def from_dict(cls, data):
        return cls(**{name: data[name] for name in _FIELDS if name in data})

    def __getnewargs__(self):
        return tuple(self)

    def __repr__(self):
        payload = self.payload
        if len(payload or "") > 40:
            payload = payload[:37] + "..."
        return "<Notification %s channel=%r payload=%r pid=%s>" % (
            self.kind, self.channel, payload, self.pid)


_NOTIFY = Notification.NOTIFY


class _TupleNew(tuple):
    """A tuple subclass whose constructor is tuple's own C one: ``cls(fields)``."""

    __slots__ = ()
    __new__ = tuple.__new__


class _Made(_TupleNew, Notification):
    """The Notifications pgvisor builds on its hot paths (a listener's read, a spool's
    file): a :class:`Notification` in every way a handler sees (``isinstance``, fields,
    equality, repr; a copy or a pickle is a plain Notification), built by ``_Made(fields)``
    through tuple's own C constructor. ``Notification(...)`` (its keyword defaults, a
    Python ``__new__``) and ``tuple.__new__(Notification, fields)`` (a slot wrapper that
    copies its arguments twice) each cost a tenth more per notification (callgrind)."""

    __slots__ = ()

    def __reduce__(self):
        return Notification, tuple(self)


Notification.from_fields = staticmethod(_Made)

try:  # the C part of the hot path (setup.py builds it where a C compiler is at hand)
    from instances._hotpath import columns as _columns
    from instances._hotpath import fill as _fill
    from instances._hotpath import of_types as _of_types
    from instances._hotpath import rows as _rows
    from instances._hotpath import take as _take
    from instances._hotpath import untracked as _untracked
except ImportError:  # the same in Python: correct, and about a tenth slower on the drain
    _fill = _rows = _columns = _of_types = _take = _untracked = None

#: True where :meth:`Notification.from_notifies` runs in C (``instances/_hotpath.c``); the
#: Notifications are the same either way (tested), only the cost differs: the C part
#: builds a read without a call per notification, and leaves its Notifications (strings
#: and numbers: never in a reference cycle) out of the cyclic collector's walks.
ACCELERATED = _fill is not None


def notifications_of(rows):
    """A list of Notifications, one per row of ``rows`` (an iterable of tuples of the six
    fields in order: channel, payload, kind, pid, received_at, id): ``list(map(
    Notification.from_fields, rows))``, in one C call where the C part is built (a
    spool's columns, zipped, become a chunk this way)."""
    if _rows is None:
        return list(map(_Made, rows))
    made = []
    _rows(made, rows, _Made)
    return made


def notifications_from(sources, offsets, count):
    """``count`` Notifications from six columns: field ``i`` of the ``j``-th is
    ``sources[i][offsets[i] + j]`` (a list or a tuple), or ``sources[i]`` itself where
    ``offsets[i]`` is negative (every Notification has that value). One C call where the
    C part is built, without slicing or zipping the columns (a spool's chunk)."""
    if _take is not None:
        made = []
        _take(made, tuple(sources), tuple(offsets), count, _Made)
        return made
    return notifications_of(zip(*[
        repeat(source, count) if offset < 0 else source[offset:offset + count]
        for source, offset in zip(sources, offsets, strict=True)], strict=True))


def fields_of(notifications):
    """The six fields of the list ``notifications`` (tuples of six) as six sequences, in
    order: ``list(zip(*notifications, strict=True))``, lists in one C call where the C
    part is built (a spool's group commit writes a read's fields column by column; a list
    of atomic values only is :func:`untracked`); a ValueError for an item that is not a
    tuple of six."""
    if not notifications:
        return [()] * len(_FIELDS)
    if _columns is None or type(notifications) is not list:
        return list(zip(*notifications, strict=True))
    return _columns(notifications)


def untracked(values):
    """The list ``values`` itself (a ``list``, no subclass: TypeError where the C part
    is built), no longer tracked by the cyclic collector when its items are all atomic
    (exact ``str``, ``int``, ``float``, ``bool`` or None: no cycle can go through it) and
    the C part is built; unchanged otherwise.

    Why: a spool's columns (a file's payloads and times, thousands of values in a list)
    wait for the group commit's write or for the handler, and every pass of the cyclic
    collector walked each of them: the collector was a sixth of the CPU time the spool's
    drain costs over the memory queue's (perf, bench/profiles/spool-instructions.txt).
    CPython leaves tuples and dicts of such values out of its passes by itself, never a
    list. Only for lists that are not changed afterwards: a container appended to one
    later is not seen by the collector (a cycle through it would never be freed)."""
    return values if _untracked is None else _untracked(values)


def of_types(values, types):
    """Whether the exact type of every value of the list or tuple ``values`` is one of the
    tuple ``types`` (a subclass is not; True for none): one C call where the C part is
    built, else a count of the types (``set(map(type, ...))`` costs twice as much)."""
    if _of_types is not None:
        return _of_types(values, types)
    kinds, left = list(map(type, values)), len(values)
    for kind in types:  # the usual type first: alone, it ends the loop
        left -= kinds.count(kind)
        if not left:
            break
    return not left


#: The exact types of the Notifications pgvisor makes and handles: what its hot paths
#: build, and ``Notification(...)``. A spool stores a batch of these as columns.
NOTIFICATION_TYPES = (_Made, Notification)


class LiveRead(list):
    """The Notifications of one read, every one a NOTIFY (none a catch_up): what
    :meth:`Notification.from_notifies` returns. A plain list in every other way; a slice
    or a copy is a plain list again (its kinds are unknown to the reader then)."""

    __slots__ = ()
