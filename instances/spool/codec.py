"""How a spool stores what it writes: every JSON read and write of a spool goes through here.

Message files hold one JSON object, or a JSON list of them (a batch), or a batch of
notifications in **rows** (below). Messages are dicts; a
:class:`~instances.notification.Notification` is stored as its ``to_dict()`` and comes
back as a Notification (any stored dict with a ``channel`` does). The key ``"id"`` holds
the stable message id: kept when set, else ``<base>#<index>``. The ``.meta`` file beside a
message in ``errors/`` is one JSON object, indented for people. Pure functions.

Rows: a batch made only of Notifications (what a listener spools) is stored as::

    {"pgvisor_rows": ["channel", "payload", "kind", "pid", "received_at", "id"],
     "rows": [["doc_changed", "42", "notify", 1234, 1700000000.1, null], ...]}

Profiling the spool's drain showed the codec as its largest cost: per message a dict
built on write (``to_dict``), and on read a dict decoded, checked field by field and
turned back into a Notification. A Notification is a tuple, which the C JSON encoder
writes as an array at C speed, and a row comes back as a list that becomes a Notification
at C speed after one type check per row. The standard library's codec is kept: with rows
its own C parts are what is left, and a faster third-party codec would add a dependency
for the remainder. Every reader of a spool reads both forms (and files of other writers,
in dicts); a top-level object with the key ``pgvisor_rows`` is reserved for rows.
"""
import json

from instances.notification import _FIELDS, Notification
from instances.spool import names

#: The key (and the field list) of a batch stored as rows.
ROWS = "pgvisor_rows"
_ROW_FIELDS = list(_FIELDS)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def encode(item):
    """One message as file content (bytes)."""
    return json.dumps(as_dict(item)).encode()


def encode_batch(items):
    """Several messages as the content of ONE file (bytes): rows when all are
    Notifications, else a list of dicts."""
    if all_notifications(items):
        return _dumps({ROWS: _ROW_FIELDS, "rows": items}).encode()
    return json.dumps([as_dict(i) for i in items]).encode()


def encode_rows(items, base):
    """Notifications as ONE rows file whose message ids are ``<base>#<index>`` whatever
    the file's own name (a group commit names its ids before it names its file)."""
    return _dumps({ROWS: _ROW_FIELDS, "base": base, "rows": items}).encode()


def all_notifications(items):
    """Whether every item is a Notification (then rows can hold them)."""
    return set(map(type, items)) == {Notification}


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
    loaded = _load(data)
    if _is_rows(loaded):
        base = loaded.get("base")
        stored = [dict(zip(_FIELDS, row, strict=True)) for row in _checked_rows(loaded)]
        if type(base) is str:
            for index, message in enumerate(stored):
                message["id"] = message["id"] or names.message_id(base, index)
        return stored
    stored = loaded if isinstance(loaded, list) else [loaded]
    if not all(isinstance(m, dict) for m in stored):
        raise ValueError("a message is not a JSON object")
    return stored


def _load(data):
    try:
        return json.loads(data)
    except RecursionError:  # a file of "[[[[...": its decoding must not kill a consumer
        raise ValueError("JSON nested too deeply to decode") from None


def _is_rows(loaded):
    return type(loaded) is dict and ROWS in loaded


def decode(data, base):
    """File content -> the list of its items with ids set. Raises ValueError as
    :func:`messages` does."""
    loaded = _load(data)
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
