"""The C part of the hot path (instances/_hotpath.c): the same Notifications as the Python
code, out of the cyclic collector's lists, no reference leaked, clear errors; and built
wherever a C compiler and Python's headers are at hand."""
import gc
import os
import shutil
import sys
import sysconfig

import psycopg2.extensions
import pytest

from instances import notification
from instances.notification import LiveRead, Notification

pytestmark = pytest.mark.timeout(30)

accelerated = pytest.mark.skipif(not notification.ACCELERATED, reason="C part not built")


def _notifies():
    return [psycopg2.extensions.Notify(100 + i, "ch", payload)
            for i, payload in enumerate(["1", "", "é ü 𝄞", "x" * 8000])]


def _python_path(monkeypatch):
    monkeypatch.setattr(notification, "_fill", None)


def test_the_c_part_is_built_wherever_a_compiler_and_the_headers_are():
    headers = os.path.join(sysconfig.get_paths()["include"], "Python.h")
    if shutil.which("cc") is None or not os.path.exists(headers):
        pytest.skip("no C compiler or no Python.h here: the Python code runs")
    assert notification.ACCELERATED, "setup.py did not build instances._hotpath"


@accelerated
@pytest.mark.parametrize("channel", [None, "ch"])
def test_both_paths_build_the_same_notifications(monkeypatch, channel):
    fast = Notification.from_notifies(_notifies(), 12.5, channel)
    _python_path(monkeypatch)
    slow = Notification.from_notifies(_notifies(), 12.5, channel)
    assert type(fast) is type(slow) is LiveRead and fast == slow
    assert [type(n) for n in fast] == [type(n) for n in slow]
    assert [(n.channel, n.kind, n.pid, n.received_at, n.id) for n in fast] == [
        ("ch", "notify", 100 + i, 12.5, None) for i in range(4)]
    assert fast[2].payload == "é ü 𝄞" and fast[0].kind is Notification.NOTIFY
    assert Notification.from_notifies([], 1.0) == [] and type(
        Notification.from_notifies([], 1.0)) is LiveRead


@accelerated
def test_c_built_notifications_stay_out_of_the_cyclic_collectors_lists():
    made = Notification.from_notifies(_notifies(), 1.0, "ch")
    assert not any(gc.is_tracked(n) for n in made)
    assert gc.is_tracked(Notification("ch", "x"))  # as CPython leaves a tuple subtype


@accelerated
def test_building_and_dropping_leaks_no_reference():
    payload = "a payload of its own %d" % os.getpid()
    notifies = [psycopg2.extensions.Notify(1, "ch", payload) for _ in range(10)]
    before = sys.getrefcount(payload)
    for _ in range(1000):
        Notification.from_notifies(notifies, 1.0)
        Notification.from_notifies(notifies, 1.0, "ch")
    assert sys.getrefcount(payload) == before


class _Broken:
    channel, payload = "ch", "p"

    @property
    def pid(self):
        raise AttributeError("pid")


@pytest.mark.parametrize("fast", [True, False])
def test_a_notify_without_a_field_fails_the_read_clearly(monkeypatch, fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        _python_path(monkeypatch)
    payload = "kept %d" % os.getpid()
    ok = psycopg2.extensions.Notify(1, "ch", payload)
    before = sys.getrefcount(payload)
    with pytest.raises(AttributeError, match="pid"):
        Notification.from_notifies([ok, _Broken()], 1.0)
    assert sys.getrefcount(payload) == before


@accelerated
def test_fill_refuses_what_it_cannot_build():
    from instances._hotpath import fill
    with pytest.raises(TypeError, match="6 arguments"):
        fill([], [])
    with pytest.raises(TypeError, match="lists"):
        fill([], (), 1.0, None, notification._Made, "notify")
    with pytest.raises(TypeError, match="subtype of tuple"):
        fill([], [], 1.0, None, tuple, "notify")


def test_a_read_that_is_no_list_takes_the_python_code():
    made = Notification.from_notifies(tuple(_notifies()), 2.0, "ch")
    assert type(made) is LiveRead and [n.pid for n in made] == [100, 101, 102, 103]


@pytest.mark.parametrize("fast", [True, False])
def test_rows_become_the_notifications_from_fields_makes(monkeypatch, fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        monkeypatch.setattr(notification, "_rows", None)
    rows = [("ch", "p%d" % i, "notify", i, 1.5, "m#%d" % i) for i in range(3)]
    columns = list(zip(*rows, strict=True))
    made = notification.notifications_of(zip(*columns, strict=True))  # as a spool's chunk
    assert type(made) is list and made == [Notification.from_fields(r) for r in rows]
    assert {type(n) for n in made} == {type(Notification.from_fields(rows[0]))}
    assert made[2].id == "m#2" and notification.notifications_of([]) == []
    assert all(gc.is_tracked(n) is not fast for n in made)


@pytest.mark.parametrize("fast", [True, False])
def test_fields_of_gives_the_columns_zip_gives(monkeypatch, fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        monkeypatch.setattr(notification, "_columns", None)
    made = list(Notification.from_notifies(_notifies(), 1.5))
    columns = notification.fields_of(made)
    assert len(columns) == 6
    assert [list(c) for c in columns] == [list(c) for c in zip(*made, strict=True)]
    assert all(type(c) is (list if fast else tuple) for c in columns)
    assert columns[1][3] is made[3].payload  # the same objects, not copies
    assert notification.fields_of([]) == [()] * 6
    with pytest.raises(ValueError):
        notification.fields_of([made[0], ("ch", "short")])


@accelerated
def test_columns_leaks_nothing_and_refuses_what_is_not_a_list_of_six_tuples():
    from instances._hotpath import columns
    payload = "a column's payload %d" % os.getpid()
    items = [("ch", payload, "notify", 1, 1.0, None)] * 3
    before = sys.getrefcount(payload)
    got = columns(items)
    assert sys.getrefcount(payload) == before + 3
    assert got[1] == [payload] * 3 and got[5] == [None] * 3
    del got, items
    before = sys.getrefcount(payload)
    with pytest.raises(ValueError, match="item 1 is not a tuple of 6 fields"):
        columns([("ch", payload, "notify", 1, 1.0, None), ["ch", payload, "x", 1, 1.0, None]])
    assert sys.getrefcount(payload) == before
    with pytest.raises(TypeError, match="must be a list"):
        columns(iter([]))
    assert notification.fields_of(tuple(Notification.from_notifies(_notifies(), 1.5)))[3] \
        == (100, 101, 102, 103)  # a sequence that is no list takes the Python code


class _Text(str):
    """A str subclass: not of type str for of_types."""


@pytest.mark.parametrize("fast", [True, False])
def test_untracked_takes_lists_of_atomic_values_out_of_the_collectors_passes(monkeypatch,
                                                                              fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        monkeypatch.setattr(notification, "_untracked", None)
    atomic = ["a", 1, 2.5, True, None, ""]
    assert gc.is_tracked(atomic)
    assert notification.untracked(atomic) is atomic and atomic == ["a", 1, 2.5, True, None, ""]
    assert gc.is_tracked(atomic) is not fast
    for odd in ([], ("a",), {}, Notification("ch", "x"), _Text("sub"), object()):
        kept = ["a", odd]  # a container (a cycle could go through it) or a subclass
        assert notification.untracked(kept) is kept and gc.is_tracked(kept)
    empty = []
    notification.untracked(empty)
    assert gc.is_tracked(empty) is not fast  # nothing in it: no cycle either


@accelerated
def test_an_untracked_list_is_still_freed_and_untracked_leaks_nothing():
    from instances._hotpath import untracked
    payload = "an untracked payload %d" % os.getpid()
    values = [payload] * 3
    before = sys.getrefcount(values), sys.getrefcount(payload)
    assert untracked(values) is values
    assert (sys.getrefcount(values), sys.getrefcount(payload)) == before
    del values
    assert sys.getrefcount(payload) == before[1] - 3  # freed by its reference count
    for odd in (("a",), LiveRead(["a"])):  # a subclass may hold more in its attributes
        with pytest.raises(TypeError, match="must be a list"):
            untracked(odd)


@accelerated
def test_columns_of_atomic_fields_are_untracked_and_others_are_not():
    from instances._hotpath import columns
    got = columns([("ch", "p", "notify", 1, 1.0, None), ("ch", "q", "notify", 2, 2.0, None)])
    assert not any(gc.is_tracked(column) for column in got)
    assert gc.is_tracked(got)  # the list of the six columns itself
    odd = columns([("ch", _Text("sub"), "notify", 1, 1.0, None)])
    assert gc.is_tracked(odd[1]) and not gc.is_tracked(odd[0])



@pytest.mark.parametrize("fast", [True, False])
def test_of_types_compares_exact_types(monkeypatch, fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        monkeypatch.setattr(notification, "_of_types", None)
    of_types = notification.of_types
    assert of_types(["a", "b"], (str,)) and of_types(("a", None), (str, type(None)))
    assert not of_types(["a", _Text("b")], (str,))  # a subclass is not its base
    assert not of_types([1.0, 2], (float,)) and of_types([1.0, 2], (float, int))
    assert not of_types([True], (int,))  # bool is an int subclass: a bool pid is refused
    assert of_types([], (str,)) and of_types((), ())
    assert not of_types([1], ())
    made = Notification.from_notifies(_notifies(), 1.5)
    assert of_types(made, notification.NOTIFICATION_TYPES)
    assert not of_types(made + [("ch", "p", "notify", 1, 1.0, None)],
                        notification.NOTIFICATION_TYPES)


@accelerated
def test_of_types_refuses_what_it_cannot_check():
    from instances._hotpath import of_types
    with pytest.raises(TypeError, match="a list or a tuple"):
        of_types(iter([]), (str,))
    with pytest.raises(TypeError, match="types must be a tuple"):
        of_types([], [str])
    with pytest.raises(TypeError, match="takes 2 arguments"):
        of_types([])


@accelerated
def test_rows_refuses_a_row_of_another_size_and_leaks_nothing():
    from instances._hotpath import rows
    payload = "a row's payload %d" % os.getpid()
    before = sys.getrefcount(payload)
    out = []
    with pytest.raises(ValueError, match="5 fields, not 6"):
        rows(out, [("ch", payload, "notify", 1, 1.0, None), ("ch", payload, "x", 1, 1.0)],
             notification._Made)
    assert len(out) == 1
    del out
    assert sys.getrefcount(payload) == before
    with pytest.raises(TypeError, match="subtype of tuple"):
        rows([], [], tuple)
    with pytest.raises(TypeError):
        rows([], 5, notification._Made)  # not iterable
    made = []
    rows(made, [("ch", [], "notify", 1, 1.0, None)], notification._Made)  # a list: tracked
    assert gc.is_tracked(made[0])


class _Plain:
    """A notify of instance attributes (no descriptors), as tests' fakes are."""

    def __init__(self, channel, payload, pid):
        self.channel, self.payload, self.pid = channel, payload, pid


class _Shadowed(_Plain):
    """Class attributes that are no data descriptors: the instance's values win."""

    channel, payload, pid = "class", "class", -1


@pytest.mark.parametrize("fast", [True, False])
def test_a_read_of_notifies_of_several_types_reads_each_the_way_getattr_does(monkeypatch,
                                                                            fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:
        _python_path(monkeypatch)
    notifies = [psycopg2.extensions.Notify(1, "a", "1"), _Plain("b", "2", 2),
                _Shadowed("c", "3", 3), psycopg2.extensions.Notify(4, "d", "4"),
                _Plain("e", "5", 5)]
    made = Notification.from_notifies(notifies, 1.0)
    assert [(n.channel, n.payload, n.pid) for n in made] == [
        ("a", "1", 1), ("b", "2", 2), ("c", "3", 3), ("d", "4", 4), ("e", "5", 5)]


def test_a_spools_chunk_is_built_by_the_same_constructor():
    from instances.spool.codec import Columns
    columns = [["ch"] * 3, ["1", "2", "3"], ["notify"] * 3, [5, 6, 7], [1.0, 2.0, 3.0],
               ["m#0", "m#1", "m#2"]]
    chunk = Columns(columns, 3)[1:3]
    assert chunk == [Notification.from_fields(("ch", p, "notify", pid, t, i))
                     for p, pid, t, i in (("2", 6, 2.0, "m#1"), ("3", 7, 3.0, "m#2"))]
    assert all(gc.is_tracked(n) is not notification.ACCELERATED for n in chunk)


@pytest.mark.parametrize("fast", [True, False])
def test_notifications_from_reads_columns_in_place_and_repeats_one_value(monkeypatch, fast):
    if fast and not notification.ACCELERATED:
        pytest.skip("C part not built")
    if not fast:  # the Python code all the way
        monkeypatch.setattr(notification, "_take", None)
        monkeypatch.setattr(notification, "_rows", None)
    payloads, times = ["p0", "p1", "p2", "p3"], (1.0, 2.0, 3.0, 4.0)
    made = notification.notifications_from(
        ["ch", payloads, "notify", 7, times, ["m#2", "m#3"]], [-1, 2, -1, -1, 2, 0], 2)
    assert made == [Notification.from_fields(("ch", "p2", "notify", 7, 3.0, "m#2")),
                    Notification.from_fields(("ch", "p3", "notify", 7, 4.0, "m#3"))]
    assert {type(n) for n in made} == {type(Notification.from_fields(tuple(made[0])))}
    assert made[0].payload is payloads[2]  # the column's own objects
    assert all(gc.is_tracked(n) is not fast for n in made)
    assert notification.notifications_from([None] * 6, [-1] * 6, 0) == []
    with pytest.raises(ValueError):  # a column shorter than the rows asked for
        notification.notifications_from(["ch", payloads, "notify", 7, times, ["m#2"]],
                                        [-1, 2, -1, -1, 2, 0], 2)


@accelerated
def test_take_leaks_nothing_and_refuses_what_it_cannot_build():
    from instances._hotpath import take
    payload = "a taken payload %d" % os.getpid()
    column = [payload, payload]
    before = sys.getrefcount(payload)
    out = []
    take(out, (payload, column, "k", 1, 1.0, None), (-1, 0, -1, -1, -1, -1), 2,
         notification._Made)
    assert len(out) == 2 and sys.getrefcount(payload) == before + 4
    del out
    assert sys.getrefcount(payload) == before
    out = []
    with pytest.raises(ValueError, match="column 1 has 2 values, row 2 wanted"):
        take(out, ("ch", column, "k", 1, 1.0, None), (-1, 1, -1, -1, -1, -1), 2,
             notification._Made)
    assert len(out) == 1
    del out
    assert sys.getrefcount(payload) == before
    sources, offsets = ("ch", column, "k", 1, 1.0, None), (-1, 0, -1, -1, -1, -1)
    with pytest.raises(TypeError, match="column 0 is not a list or a tuple"):
        take([], sources, (0,) + offsets[1:], 1, notification._Made)
    with pytest.raises(TypeError, match="tuples of 6"):
        take([], list(sources), offsets, 1, notification._Made)
    with pytest.raises(TypeError, match="subtype of tuple"):
        take([], sources, offsets, 1, tuple)
    with pytest.raises(ValueError, match="must not be negative"):
        take([], sources, offsets, -1, notification._Made)
    with pytest.raises(TypeError, match="out must be a list"):
        take((), sources, offsets, 1, notification._Made)
