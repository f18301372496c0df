"""The :class:`Notification`: one event handed from a listener to a handler."""
import time


class Notification:
    """One notification as a handler sees it.

    ``channel`` the channel name; ``payload`` the payload (``str``, may be empty);
    ``kind`` is ``"notify"`` for a NOTIFY from the server and ``"catch_up"`` for the one
    synthetic notification put after every (re)LISTEN (NOTIFY is not durable: re-read your
    tables); ``pid`` the notifying backend's pid (0 for a catch_up); ``received_at`` the
    ``time.time()`` of receipt; ``id`` a stable message id when the notification went
    through a spool (None otherwise).
    """

    __slots__ = ("channel", "payload", "kind", "pid", "received_at", "id")

    NOTIFY = "notify"
    CATCH_UP = "catch_up"

    def __init__(self, channel, payload="", kind="notify", pid=0, received_at=None, id=None):
        self.channel = channel
        self.payload = payload
        self.kind = kind
        self.pid = pid
        self.received_at = time.time() if received_at is None else received_at
        self.id = id

    def to_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}

    @classmethod
    def from_dict(cls, data):
        return cls(**{name: data.get(name) for name in cls.__slots__ if name in data})

    def __eq__(self, other):
        if not isinstance(other, Notification):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    def __hash__(self):
        return hash((self.channel, self.payload, self.kind, self.pid, self.received_at))

    def __repr__(self):
        payload = self.payload if len(self.payload or "") <= 40 else self.payload[:37] + "..."
        return "<Notification %s channel=%r payload=%r pid=%s>" % (
            self.kind, self.channel, payload, self.pid)
