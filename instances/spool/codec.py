"""How a spool stores what it writes: every JSON read and write of a spool goes through here.

Message files hold one JSON object, or a JSON list of them (a batch). Messages are dicts;
a :class:`~instances.notification.Notification` is stored as its ``to_dict()`` and comes
back as a Notification (any stored dict with a ``channel`` does). The key ``"id"`` holds
the stable message id: kept when set, else ``<base>#<index>``. The ``.meta`` file beside a
message in ``errors/`` is one JSON object, indented for people. Pure functions.
"""
import json

from instances.notification import Notification
from instances.spool import names


def encode(item):
    """One message as file content (bytes)."""
    return json.dumps(as_dict(item)).encode()


def encode_batch(items):
    """Several messages as the content of ONE file (bytes)."""
    return json.dumps([as_dict(i) for i in items]).encode()


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
    try:
        loaded = json.loads(data)
    except RecursionError:  # a file of "[[[[...": its decoding must not kill a consumer
        raise ValueError("JSON nested too deeply to decode") from None
    stored = loaded if isinstance(loaded, list) else [loaded]
    if not all(isinstance(m, dict) for m in stored):
        raise ValueError("a message is not a JSON object")
    return stored


def decode(data, base):
    """File content -> the list of its items with ids set. Raises ValueError as
    :func:`messages` does."""
    items = []
    for index, message in enumerate(messages(data)):
        if not message.get("id"):
            message["id"] = names.message_id(base, index)
        if "channel" in message:
            check_notification(message)
            items.append(Notification.from_dict(message))
        else:
            items.append(message)
    return items


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
