"""How a spool stores what it writes: every JSON read and write of a spool goes through here.

Message files hold one JSON object, or a JSON list of them (a batch), or a batch of
notifications in **columns** (below). Messages are dicts; a
:class:`~instances.notification.Notification` is stored as its ``to_dict()`` and comes
back as a Notification (any stored dict with a ``channel`` does). The key ``"id"`` holds
the stable message id: kept when set, else ``<base>#<index>``. The ``.meta`` file beside a
message in ``errors/`` is one JSON object, indented for people. Pure functions, and
:class:`Columns`, what a columns batch decodes to.

Columns: a batch made only of Notifications (what a listener spools) is stored one field
after the other: a JSON document on one line, then, after its newline, the appended
section::

    {"pgvisor_columns": ["channel", "payload", "kind", "pid", "received_at", "id"],
     "base": "<base>", "count": 2,
     "columns": [{"same": "doc_changed"}, {"appended": 5}, {"same": "notify"},
                 {"same": 1234}, {"float64": 16}, {"same": null}]}
    42\x0043<16 bytes>

A column is a JSON list of its ``count`` values, or ``{"same": value}`` when every row has
that value (one channel, one kind, one backend, no ids: the usual read), or it is in the
appended section, whose parts follow in column order: the payloads, when all are strings
without NUL (what Postgres sends), as ``{"appended": size}``, ``size`` bytes of UTF-8 with
a NUL between two payloads; the receipt times, when all are floats, as ``{"float64": size}``,
``size = 8 * count`` bytes of little-endian IEEE doubles (exact). (``{"float64": "<base64>"}``
in the document, the same doubles, is read too.)

Why: profiling the spool's drain (instruction counts, callgrind, spool minus memory queue
per notification) showed the codec as its largest cost: the float receipt times written
and parsed as decimal text, a Python type check per row, one Python call per
Notification, then json's escaping of every payload character (a quarter of the rest) and
its parsing back. Here every step runs at C speed or as a copy: the columns are cut with
``zip``, each column's types are checked with one ``set(map(type, column))`` (a file
dropped into ``incoming/`` still cannot hand a handler a field of another type), the
payloads are joined and split, the times packed and unpacked, the ids made with ``map``
and the Notifications built with ``map`` over ``zip``, a chunk at a time when the handler
takes them (:class:`Columns`). So no third-party codec: it would
still escape and parse each payload and time, which the appended section skips. Older
files in **rows** (``{"pgvisor_rows": [fields], "rows": [[channel, payload, kind, pid,
received_at, id], ...]}``, written by earlier versions) are still read. Every reader of a
spool reads every form (and files of other writers, in dicts); top-level objects with the
key ``pgvisor_columns`` or ``pgvisor_rows`` are reserved.

What a group commit keeps of a file it writes (:func:`written_batch`, made of the columns
it joined to write them, for the read-through cache) is what :func:`decode` gives of that
file, or nothing when a value would not come back as it is.
"""
import array
import binascii
import collections.abc
import itertools
import json
import operator
import struct
import sys

from instances.notification import (
    _FIELDS,
    NOTIFICATION_TYPES,
    Notification,
    fields_of,
    notifications_from,
    of_types,
    untracked,
)
from instances.spool import names

#: The key (and the field list) of a batch stored as columns.
COLUMNS = "pgvisor_columns"
#: The key (and the field list) of a batch stored as rows (read only: older files).
ROWS = "pgvisor_rows"
_ROW_FIELDS = list(_FIELDS)
_dumps = json.JSONEncoder(separators=(",", ":")).encode
_BIG_ENDIAN = sys.byteorder == "big"
_FLOAT = (float,)
#: The types each Notification field may have in a stored batch, the usual one first:
#: exactly what a file gives back (JSON and the appended section make a str, an int, a
#: float or None of a value).
_FIELD_KINDS = ((str, type(None)), (str, type(None)), (str,), (int, type(None)), (float, int),
                (str, type(None)))
_FIELD_TYPES = tuple(map(set, _FIELD_KINDS))


def encode(item):
    """One message as file content (bytes)."""
    return json.dumps(as_dict(item)).encode()


def encode_batch(items):
    """Several messages as the content of ONE file (bytes): columns when all are
    Notifications, else a list of dicts."""
    if all_notifications(items):
        return encode_columns([columns_of(items)], len(items))
    return json.dumps([as_dict(i) for i in items]).encode()


def columns_of(items):
    """The fields of Notifications ``items`` as six sequences (at C speed:
    :func:`~instances.notification.fields_of`)."""
    return fields_of(items)


def encode_columns(parts, count, base=None, joined=True):
    """The ``count`` Notifications of ``parts`` (several :func:`columns_of`, one after
    the other: the reads of a group commit) as ONE columns file; with ``base`` their
    message ids are ``<base>#<index>`` whatever the file's own name (a group commit names
    its ids before it names its file). Not ``joined``: the file's content as a list of
    bytes-like parts, one after the other (what
    :meth:`~instances.spool.writer.SpoolWriter.write` takes too: no copy of a whole file
    to join them). A field is joined across the parts only when its values differ (the
    payloads, the times): a ``{"same": ...}`` field is found part by part."""
    return encode_joined(joined_columns(parts, count), count, base, joined)


def joined_columns(parts, count):
    """The six columns of the ``count`` Notifications of ``parts`` (as
    :func:`encode_columns` takes them), each ``{"same": value}`` or every value: what
    :func:`encode_joined` writes and :func:`written_batch` keeps."""
    return [_column([part[i] for part in parts]) for i in range(len(_FIELDS))] \
        if count else [[]] * len(_FIELDS)


def encode_joined(columns, count, base=None, joined=True):
    """The columns file of :func:`joined_columns` ``columns`` (not changed), as
    :func:`encode_columns` makes it."""
    columns = list(columns)
    appended = []
    payloads = _payload_section(columns[1])
    if payloads is not None:
        columns[1] = {"appended": len(payloads)}
        appended.append(payloads)
    times = columns[4]
    if type(times) is not dict and of_types(times, _FLOAT):
        columns[4] = {"float64": 8 * count}
        appended.append(struct.pack("<%dd" % count, *times))  # little-endian doubles
    document = {COLUMNS: _ROW_FIELDS, "count": count, "columns": columns}
    if base is not None:
        document["base"] = base
    head = _dumps(document).encode()
    if not joined:
        return [head + b"\n"] + appended if appended else [head]
    return b"".join([head, b"\n"] + appended) if appended else head


def written_batch(columns, count, base):
    """What :func:`decode` makes of the file that :func:`encode_joined` writes of
    ``columns`` and ``base`` (a :class:`Columns`: the same Notifications, fields of the
    same types, the same ids), made of ``columns`` themselves: what the read-through
    cache keeps (:mod:`instances.spool.readthrough`). None when a value's type would not
    come back from the file as it is (a str subclass comes back a str, a bool pid makes
    the file undecodable): that file must be read from disk."""
    kept = []
    for column, types in zip(columns, _FIELD_KINDS, strict=True):
        if type(column) is dict:
            if type(column["same"]) not in types:
                return None
            kept.append(_Same(column["same"], count))
            continue
        if not of_types(column, types):
            return None
        kept.append(column)
    return _batch(kept, columns[5], count, base)


def _payload_section(payloads):
    """The payloads' appended section (UTF-8, a NUL between two), or None when they
    cannot have one (a payload that is not a string, one with a NUL: Postgres text has
    none, a lone surrogate: JSON writes them)."""
    if type(payloads) is dict:
        return None
    try:
        if "\0" in "".join(payloads):  # memchr speed; a count of the NULs is not
            return None
        return "\0".join(payloads).encode()
    except (TypeError, UnicodeEncodeError):
        return None


def _unpacked(code, view):
    """The values of array type ``code`` packed little-endian in ``view``: a list."""
    packed = array.array(code)
    packed.frombytes(view)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tolist()


def _column(pieces):
    """One field of every row, from its ``pieces`` (one sequence per part):
    ``{"same": value}`` when all rows have that value (and type: ``1 == 1.0 ==
    True``; a str or None equals only its own kind), else the values one after the other
    (a list or a tuple: the encoder writes it as a list)."""
    first = pieces[0][0]
    # A piece's last value first: a column of payloads or times differs there at once (a
    # count would compare every value of the first piece).
    if all(piece[-1] == first and piece.count(first) == len(piece) for piece in pieces) and (
            type(first) is str or first is None or
            all(of_types(piece, (type(first),)) for piece in pieces)):
        return {"same": first}
    if len(pieces) == 1:
        return pieces[0]
    joined = []
    for piece in pieces:  # list.extend copies a list's slots (a chain went value by value)
        joined.extend(piece)
    return untracked(joined)


def all_notifications(items):
    """Whether every item of the list ``items`` is a Notification (then columns can hold
    them): one of :data:`~instances.notification.NOTIFICATION_TYPES`, no other subclass;
    False for none."""
    return bool(items) and of_types(items, NOTIFICATION_TYPES)


def as_dict(item):
    if isinstance(item, Notification):
        return item.to_dict()
    if isinstance(item, dict):
        return item
    raise TypeError("spool messages are dicts or Notifications, not %r" % (type(item),))


def encode_meta(meta):
    """The ``.meta`` dict of a message in ``errors/`` as file content (bytes)."""
    return json.dumps(meta, indent=1).encode()


def messages(data):
    """File content -> its stored message dicts, as written (a batch: several). Raises
    ValueError when the content is not JSON, not UTF-8, nested too deeply to decode, or
    holds something other than JSON objects."""
    loaded, appended = _load(data)
    if _is_columns(loaded) or _is_rows(loaded):
        base = loaded.get("base")
        rows = zip(*_checked_columns(loaded, appended), strict=True) if _is_columns(loaded) \
            else _checked_rows(loaded)
        stored = [dict(zip(_FIELDS, row, strict=True)) for row in rows]
        if type(base) is str:
            for index, message in enumerate(stored):
                message["id"] = message["id"] or names.message_id(base, index)
        return stored
    stored = loaded if isinstance(loaded, list) else [loaded]
    if not all(isinstance(m, dict) for m in stored):
        raise ValueError("a message is not a JSON object")
    return stored


#: How a columns file starts (its JSON document is one line: an appended section may follow).
_COLUMNS_START = b'{"' + COLUMNS.encode() + b'"'


def _load(data):
    """``(document, appended section or None)`` of a file's content (the section: a
    memoryview of ``data``, not a copy)."""
    try:
        if data[:len(_COLUMNS_START)] == _COLUMNS_START:
            newline = data.find(b"\n")
            if newline >= 0:
                try:
                    loaded = json.loads(data[:newline])
                except ValueError:  # not one line: one JSON document over several
                    loaded = None
                if type(loaded) is dict:  # trailing white space is no section
                    blank = newline + 1 >= len(data.rstrip())
                    return loaded, None if blank else memoryview(data)[newline + 1:]
        return json.loads(data), None
    except RecursionError:  # a file of "[[[[...": its decoding must not kill a consumer
        raise ValueError("JSON nested too deeply to decode") from None


def _is_rows(loaded):
    return type(loaded) is dict and ROWS in loaded


def _is_columns(loaded):
    return type(loaded) is dict and COLUMNS in loaded


def decode(data, base):
    """File content -> the list of its items with ids set. Raises ValueError as
    :func:`messages` does."""
    loaded, appended = _load(data)
    if _is_columns(loaded):
        named = loaded.get("base")
        return _from_columns(loaded, appended, named if type(named) is str else base)
    if appended is not None:
        raise ValueError("extra data after the JSON document")
    if _is_rows(loaded):
        named = loaded.get("base")
        return _notifications(_checked_rows(loaded), named if type(named) is str else base)
    items = []
    stored = loaded if isinstance(loaded, list) else [loaded]
    if not all(isinstance(m, dict) for m in stored):
        raise ValueError("a message is not a JSON object")
    for index, message in enumerate(stored):
        if not message.get("id"):
            message["id"] = names.message_id(base, index)
        if "channel" in message:
            check_notification(message)
            items.append(Notification.from_dict(message))
        else:
            items.append(message)
    return items


def _checked_rows(loaded):
    """The rows of a rows batch, each checked (the hot path: one test per row, the
    precise message only for a bad one). Raises ValueError."""
    if loaded.get(ROWS) != _ROW_FIELDS or type(loaded.get("rows")) is not list:
        raise ValueError("a %s batch must have the fields %s and a list of rows"
                         % (ROWS, _ROW_FIELDS))
    rows = loaded["rows"]
    for row in rows:
        if not (type(row) is list and len(row) == 6
                and (type(row[0]) is str or row[0] is None)
                and (type(row[1]) is str or row[1] is None) and type(row[2]) is str
                and (type(row[3]) is int or row[3] is None)
                and (type(row[4]) is float or type(row[4]) is int)
                and (type(row[5]) is str or row[5] is None)):
            if type(row) is not list or len(row) != 6:
                raise ValueError("a row must be a list of the %d fields %s, not %.80r"
                                 % (len(_FIELDS), _ROW_FIELDS, row))
            check_notification(dict(zip(_FIELDS, row, strict=True)))
            raise ValueError("message field kind=%.80r: must be str" % (row[2],))
    return rows


def _checked_columns(loaded, appended):
    """The six columns of a columns batch as sequences of ``count`` values each, every
    column's types checked at once (the hot path: no Python per row); ``appended``: the
    file's appended section (the payloads), None when it has none. Raises ValueError
    naming the field."""
    count, columns = loaded.get("count"), loaded.get("columns")
    if loaded.get(COLUMNS) != _ROW_FIELDS or type(count) is not int or count < 0 or \
            type(columns) is not list or len(columns) != len(_FIELDS):
        raise ValueError("a %s batch must have the fields %s, a count and one column each"
                         % (COLUMNS, _ROW_FIELDS))
    checked, at = [], 0
    for field, column, types in zip(_FIELDS, columns, _FIELD_TYPES, strict=True):
        section = _section_size(field, column, count)
        if section is None:
            checked.append(_checked_column(field, column, count, types))
            continue
        if appended is None or at + section > len(appended):
            raise ValueError("message field %s: %d bytes appended, the columns say more"
                             % (field, 0 if appended is None else len(appended)))
        view, at = appended[at:at + section], at + section
        checked.append(_appended_payloads(view, count) if field == "payload"
                       else _unpacked("d", view))
    if at != (0 if appended is None else len(appended)):
        raise ValueError("%d bytes appended, the columns use %d" % (len(appended), at))
    return checked


def _section_size(field, column, count):
    """The bytes of the appended section that ``column`` announces, None for a column
    written in the JSON document."""
    if type(column) is not dict or len(column) != 1:
        return None
    if field == "payload" and "appended" in column:
        size = column["appended"]
        if type(size) is not int or size < 0:
            raise ValueError("message field payload: {\"appended\": %.80r}" % (size,))
        return size
    if field == "received_at" and type(column.get("float64")) is int:
        if column["float64"] != 8 * count:
            raise ValueError("message field received_at: %d bytes for %d messages"
                             % (column["float64"], count))
        return 8 * count
    return None


def _appended_payloads(view, count):
    """The ``count`` payloads of their appended section (UTF-8, a NUL between two)."""
    payloads = str(view, "utf-8").split("\0") if count else []
    if len(payloads) != count:
        raise ValueError("message field payload: %d payloads appended for %d messages"
                         % (len(payloads), count))
    return payloads


def _checked_column(field, column, count, types):
    if type(column) is list:
        if len(column) != count:
            raise ValueError("message field %s: %d values for %d messages"
                             % (field, len(column), count))
        wrong = set(map(type, column)) - types
        if wrong:
            raise ValueError("message field %s=%.80r: must be %s" % (
                field, next(v for v in column if type(v) in wrong), _type_names(types)))
        return column
    if type(column) is dict and len(column) == 1:
        if "same" in column:
            value = column["same"]
            if type(value) not in types:
                raise ValueError("message field %s=%.80r: must be %s"
                                 % (field, value, _type_names(types)))
            return _Same(value, count)
        if "float64" in column and field == "received_at" and type(column["float64"]) is str:
            raw = binascii.a2b_base64(column["float64"].encode("ascii"), strict_mode=True)
            if len(raw) != 8 * count:
                raise ValueError("message field received_at: %d bytes for %d messages"
                                 % (len(raw), count))
            packed = array.array("d", raw)
            if _BIG_ENDIAN:
                packed.byteswap()
            return packed.tolist()
    raise ValueError("message field %s: a column is a list, {\"same\": value}, "
                     "{\"float64\": size or base64} (received_at) or {\"appended\": size} "
                     "(payload), not %.80r" % (field, column))


def _type_names(types):
    return " or ".join(sorted("null" if t is type(None) else t.__name__ for t in types))


def _from_columns(loaded, appended, base):
    """The Notifications of a columns batch (checked) as a :class:`Columns`; a message
    without an id gets ``<base>#<index>`` (the usual case: the whole column is
    ``{"same": null}``, and the ids are made a slice at a time)."""
    return _batch(_checked_columns(loaded, appended), loaded["columns"][5], loaded["count"],
                  base)


def _batch(columns, ids, count, base):
    """The :class:`Columns` of six checked ``columns``; ``ids``: the id column as stored
    (``{"same": value}`` or the values), whose missing ids become ``<base>#<index>``."""
    if type(ids) is dict:
        if not ids["same"]:  # no message has an id (null or "")
            columns[5] = _Ids(base)
    elif None in ids or "" in ids:
        columns[5] = [v or names.message_id(base, i) for i, v in enumerate(ids)]
    return Columns(columns, count)


class Columns(collections.abc.Sequence):
    """The Notifications of one columns batch, kept as its six checked columns and built
    when asked for: ``batch[first:end]`` is a list of new Notifications (at C speed: one
    call of :func:`~instances.notification.notifications_from` reads the columns in place),
    ``batch[index]`` one. Built by the C part (``instances/_hotpath.c``) they are not
    tracked by the cyclic collector at all.

    Why: a claimed file's messages wait for the handler as columns (strings and floats in
    a few lists, :func:`~instances.notification.untracked`: the cyclic GC does not walk
    them) and become Notifications a chunk at a time
    (:meth:`instances.spool.FileQueue.get_chunk`), so only a chunk's worth of tracked
    tuples is alive at once. Decoded whole, a file of 10,000 waited as 10,000
    tracked tuples: the cyclic GC walking them again and again was the spool's largest
    cost per notification (callgrind, bench/profiles/spool-instructions.txt). Each
    slice builds new objects: equal, not identical, to an earlier slice's."""

    __slots__ = ("_columns", "_count")

    def __init__(self, columns, count):
        for column in columns:  # checked values, never changed: out of the GC's passes
            if type(column) is list:
                untracked(column)
        self._columns, self._count = columns, count

    def __len__(self):
        return self._count

    def __getitem__(self, key):
        if type(key) is slice:
            first, end, step = key.indices(self._count)
            if step != 1:
                return [self[i] for i in range(first, end, step)]
            return self._take(first, max(0, end - first))
        index = operator.index(key)
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("batch index out of range")
        return self[index:index + 1][0]

    def __iter__(self):
        return iter(self[:])

    def _take(self, first, count):
        """Notifications ``first`` .. ``first + count - 1`` (the hot path's constructor:
        :func:`~instances.notification.notifications_from`, in C where built)."""
        sources, offsets = [], []
        for column in self._columns:
            kind = type(column)
            if kind is _Same:
                sources.append(column.value)
                offsets.append(-1)
            elif kind is list or kind is tuple:
                sources.append(column)
                offsets.append(first)
            else:  # the ids of _Ids, made for the slice; any other sequence, sliced
                sources.append(list(column[first:first + count]))
                offsets.append(0)
        return notifications_from(sources, offsets, count)

    def __repr__(self):
        return "<Columns of %d notifications>" % self._count


class _Same:
    """A column whose ``count`` values are all ``value`` (``{"same": value}``): iterable,
    and sliced as a repeat."""

    __slots__ = ("count", "value")

    def __init__(self, value, count):
        self.value, self.count = value, count

    def __iter__(self):
        return itertools.repeat(self.value, self.count)

    def __getitem__(self, key):
        first, end, _ = key.indices(self.count)
        return itertools.repeat(self.value, max(0, end - first))


class _Ids:
    """The id column of a batch whose messages have none: ``<base>#<index>``, made a
    slice at a time."""

    __slots__ = ("base",)

    def __init__(self, base):
        self.base = base

    def __getitem__(self, key):
        first, end, _ = key.indices(sys.maxsize)
        return names.message_ids(self.base, first, max(0, end - first))


def _notifications(rows, base):
    make = Notification.from_fields
    return [make((r[0], r[1], r[2], r[3], r[4], r[5] or "%s#%d" % (base, i)))
            for i, r in enumerate(rows)]


#: The types of a stored Notification's fields (None allowed where listed).
_TYPES = {"channel": ((str,), True), "payload": ((str,), True), "kind": ((str,), False),
          "pid": ((int,), True), "received_at": ((float, int), False), "id": ((str,), True)}


def check_notification(message):
    """Raise ValueError naming the field unless every Notification field of ``message``
    has its type (channel/payload/kind str, pid int, received_at a number, id str): a file
    dropped into ``incoming/`` must not hand the handler something else."""
    for field, (types, nullable) in _TYPES.items():
        if field not in message or (message[field] is None and nullable):
            continue
        value = message[field]
        if not isinstance(value, types) or isinstance(value, bool):
            raise ValueError("message field %s=%.80r: must be %s" % (
                field, value, " or ".join(t.__name__ for t in types)))
