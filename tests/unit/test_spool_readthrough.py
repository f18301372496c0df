"""The spool's read-through cache: what the group commit keeps of a file it wrote is what
decoding that file gives."""
import pytest

from instances.notification import Notification
from instances.spool import codec


def fields_and_types(notifications):
    return [(tuple(n), tuple(map(type, n)), type(n)) for n in notifications]


def _notes(prefix, count):
    return [Notification("ch", "%s%d" % (prefix, i), "notify", 1, 1.0) for i in range(count)]


class _Text(str):
    """A str subclass: JSON gives it back as a str."""


#: Every field type a Notification may have in a stored batch, and payloads that keep a
#: file's payloads out of its appended section.
ODD = [Notification("a", "x", "notify", 1, 5, "given-id"),  # an int time, an id
       Notification("b", None, "notify", None, 6.25),
       Notification("a", "\u00e9\"\\", "notify", 2, float("inf"), ""),
       Notification(None, "", Notification.CATCH_UP, 0, -0.0)]


@pytest.mark.parametrize("parts", [
    [_notes("p", 3), _notes("q", 2)],
    [ODD, ODD[::-1]],
    [[Notification("a", "\udc80", "notify", 1, 1.0), Notification("a", "n\x00", "x", 2, 3)]],
], ids=["same", "odd", "unappended"])
def test_a_written_batch_is_what_decoding_its_file_gives(parts):
    columns = codec.joined_columns([codec.columns_of(part) for part in parts],
                                   sum(map(len, parts)))
    count = sum(map(len, parts))
    data = codec.encode_joined(columns, count, "base")
    kept = codec.written_batch(columns, count, "base")
    assert fields_and_types(kept[:]) == fields_and_types(codec.decode(data, "other")[:])
    assert [n.id for n in kept] == [n.id or "base#%d" % i for i, n in enumerate(
        [n for part in parts for n in part])]
    assert codec.encode_joined(columns, count, "base") == data  # columns not changed


@pytest.mark.parametrize("odd", [
    Notification("ch", _Text("sub"), "notify", 1, 1.0),  # comes back a str
    Notification(_Text("ch"), "p", "notify", 1, 1.0),
    Notification("ch", "p", "notify", True, 1.0),  # makes the file undecodable
    Notification("ch", "p", "notify", 1, False),
])
def test_a_batch_with_a_value_its_file_gives_back_otherwise_is_not_made(odd):
    for part in ([odd], [odd, Notification("ch", "p", "notify", 2, 2.0)]):
        columns = codec.joined_columns([codec.columns_of(part)], len(part))
        assert codec.written_batch(columns, len(part), "base") is None
