"""Subscription and Notifier logic without a database: offering never blocks, an overflow
drops for that subscription only and ends with ONE catch_up, catch_ups coalesce, spools
take a read as batches, the queue usage warning fires once per crossing, DSNs share."""
import copy
import itertools
import logging
import pickle

import pytest

from instances import InstanceSpec, Notification
from instances import notifier as notifier_module
from instances.exceptions import InvalidConfigurationException
from instances.notification import LiveRead
from instances.notifier import Notifier, Subscription, _key
from instances.queues import MemoryQueue
from instances.spool import codec
from supervisor.testing import holds, wait_for

pytestmark = pytest.mark.timeout(10)


class FakeNotifier:
    """What a subscription needs of its notifier: connected, last_error, name, changed()."""

    name = "fake-notifier"
    connected = True
    last_error = None

    def __init__(self):
        self.changes = 0

    def changed(self):
        self.changes += 1


class FakeNotifiers:
    """A working Notifiers stand-in: one FakeNotifier, subscribers recorded."""

    def __init__(self):
        self.notifier = FakeNotifier()
        self.subscribed = []

    def subscribe(self, dsn, subscription):
        self.subscribed.append(subscription)
        return self.notifier

    def unsubscribe(self, subscription, notifier):
        self.subscribed.remove(subscription)


class BatchQueue(MemoryQueue):
    """A memory queue that also takes batches (as a spool does), recording each."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def put_batch(self, items, block=True, timeout=None):
        self.batches.append(list(items))


def _live(payload):
    return Notification("ch", payload, "notify", 1, 0.0)


def _subscription(queue, **kwargs):
    notifiers = FakeNotifiers()
    subscription = Subscription(notifiers, "dbname=x", ["ch"], queue, name="s", **kwargs)
    subscription.start()
    subscription.activated(("ch",))
    return subscription


def _drain(queue):
    items = []
    while queue.qsize():
        items.append(queue.get())
    return items


def test_a_full_queue_drops_then_one_catch_up_once_there_is_room(caplog):
    queue = MemoryQueue(3)
    subscription = _subscription(queue)
    for i in range(10):
        subscription.offer(_live(str(i)))  # never blocks
    assert (subscription.dropped, subscription.overflows, queue.qsize()) == (7, 1, 3)
    subscription.owe_catch_up()  # a reconnect meanwhile: coalesced with the owed one
    with caplog.at_level(logging.WARNING, logger="instances.notifier"):
        assert queue.get().payload == "0"  # room for one: not enough (resume_fill)
        holds(lambda: subscription.catch_ups == 0 and subscription.status()["overflowing"],
              subscription.overflow_poll * 3)
        subscription.offer(_live("still"))
        assert queue.get().payload == "1"  # half full: room again
        wait_for(lambda: subscription.catch_ups == 1, 5)
    subscription.offer(_live("after"))
    got = [(n.kind, n.payload) for n in _drain(queue)]
    assert got == [("notify", "2"), ("catch_up", ""), ("notify", "after")]
    assert subscription.dropped == 8 and subscription.received == 12
    episodes = [r for r in caplog.records if r.action == "subscription.overflow"]
    assert len(episodes) == 1 and episodes[0].dropped == 8


def test_a_catch_up_owed_to_a_full_queue_starts_an_overflow_episode():
    queue = MemoryQueue(1)
    subscription = _subscription(queue)
    subscription.offer(_live("0"))
    subscription.owe_catch_up()
    assert subscription.overflows == 1 and subscription.status()["overflowing"]
    subscription.offer(_live("1"))
    assert subscription.dropped == 1
    queue.get()
    wait_for(lambda: not subscription.status()["overflowing"], 5)
    assert [n.kind for n in _drain(queue)] == ["catch_up"]


def test_ending_a_subscription_in_overflow_stops_its_waiting_greenlet():
    queue = MemoryQueue(1)
    subscription = _subscription(queue)
    subscription.offer(_live("0"))
    subscription.offer(_live("1"))
    owed = subscription._owed
    ended = []
    subscription.link(ended.append)
    subscription.kill()
    wait_for(lambda: owed.dead and ended == [subscription], 5)
    assert subscription.exit == "abnormal" and not subscription.is_alive()
    assert subscription.notifiers.subscribed == []
    queue.get()
    holds(lambda: queue.qsize() == 0 and subscription.catch_ups == 0, 0.1)


def test_a_spool_takes_each_read_as_batches_of_batch_size():
    queue = BatchQueue()
    subscription = _subscription(queue, batch=True)
    subscription.batch_size = 2
    for i in range(5):
        subscription.offer(_live(str(i)))
    assert queue.batches == []  # nothing until the read is complete
    subscription.flush()
    assert [[n.payload for n in batch] for batch in queue.batches] == [["0", "1"], ["2", "3"],
                                                                      ["4"]]


def test_set_channels_asks_the_notifier_and_stop_unsubscribes():
    subscription = _subscription(MemoryQueue())
    notifier = subscription.notifier
    subscription.set_channels(["ch", "other"])
    assert notifier.changes == 1 and subscription.channels == ("ch", "other")
    assert subscription.stop() is True
    assert subscription.exit == "normal" and subscription.notifier is None
    assert not subscription.connected


def test_the_queue_usage_warning_is_logged_once_per_crossing(caplog):
    notifier = Notifier("dbname=x")
    with caplog.at_level(logging.INFO, logger="instances.notifier"):
        for usage in (0.1, 0.6, 0.7, 0.2, 0.8):
            notifier._queue_usage(usage)
    actions = [r.action for r in caplog.records]
    assert actions == ["notifier.queue_usage_high", "notifier.queue_usage_ok",
                       "notifier.queue_usage_high"]
    assert notifier.queue_usage == 0.8


def test_equal_connection_parameters_share_a_notifier_key():
    assert _key("host=db port=5432 dbname=app") == _key({"host": "db", "port": 5432,
                                                         "dbname": "app"})
    assert _key("host=db dbname=app") != _key("host=db dbname=other")


def test_the_spec_validates_connection_and_catch_up_interval():
    spec = InstanceSpec(name="a", channels=["x"], handler="tests.handlers:record")
    assert (spec.connection, spec.catch_up_interval) == ("shared", None)
    assert spec.replace(catch_up_interval=5).catch_up_interval == 5.0
    with pytest.raises(InvalidConfigurationException, match="connection='private'"):
        spec.replace(connection="private")
    with pytest.raises(InvalidConfigurationException, match="catch_up_interval=0"):
        spec.replace(catch_up_interval=0)
    assert "connection" in spec.restart_fields(spec.replace(connection="own"))


class _Notify:
    """A psycopg2 Notify as the connector hands it over: pid, channel, payload."""

    def __init__(self, channel, payload, pid=7):
        self.channel, self.payload, self.pid = channel, payload, pid


def test_a_read_reaches_each_subscriber_as_one_chunk_of_its_channels_in_order():
    notifier = Notifier("dbname=x")
    queues = {name: MemoryQueue() for name in ("a", "ab", "b")}
    subscriptions = {}
    for name, queue in queues.items():
        subscription = Subscription(FakeNotifiers(), "dbname=x", tuple(name), queue, name=name)
        subscription.start()
        subscription.activated(tuple(name))
        notifier.subscriptions[subscription] = None
        subscriptions[name] = subscription
    notifier._routes = notifier._build_routes()
    notifier.post_execute([_Notify("a", "1"), _Notify("b", "2"), _Notify("a", "3"),
                           _Notify("nobody", "4"), _Notify("a", "5")])
    chunks = {name: queue.get_chunk(False) for name, queue in queues.items()}
    assert all(queue.qsize() == 0 for queue in queues.values())  # one chunk each
    assert [n.payload for n in chunks["a"]] == ["1", "3", "5"]
    assert [n.payload for n in chunks["ab"]] == ["1", "2", "3", "5"]
    assert [n.payload for n in chunks["b"]] == ["2"]
    assert chunks["a"][0] is chunks["ab"][0]  # built once, shared
    assert (chunks["b"][0].kind, chunks["b"][0].pid, chunks["b"][0].channel) == ("notify", 7, "b")
    assert notifier.received == 5 and subscriptions["ab"].received == 4


def test_a_read_of_one_channel_is_built_once_for_its_subscribers_and_probes_come_back():
    notifier = Notifier("dbname=x")
    queues = [MemoryQueue(), MemoryQueue()]
    for number, queue in enumerate(queues):
        subscription = Subscription(FakeNotifiers(), "dbname=x", ("a",), queue,
                                    name="s%d" % number)
        subscription.start()
        subscription.activated(("a",))
        notifier.subscriptions[subscription] = None
    notifier._routes = notifier._build_routes()
    notifier.post_execute([_Notify("a", str(i), pid=i) for i in range(5)])
    first, second = (queue.get_chunk(False) for queue in queues)
    assert first is second  # one list, shared: nobody mutates it
    assert type(first) is LiveRead  # a batch worker needs no look for a catch_up
    assert all(isinstance(n, Notification) for n in first)
    assert [tuple(n[:4]) + (n.id,) for n in first] == [
        ("a", str(i), "notify", i, None) for i in range(5)]
    assert len({n.received_at for n in first}) == 1
    notifier._probe_token, notifier._probe_sent = "7", 0.0
    notifier.post_execute([_Notify(notifier.probe_channel, "7")])  # the probe alone
    assert notifier._probe_token is None and notifier.received == 6
    assert all(queue.qsize() == 0 for queue in queues)


def _one_channel_notifier(channel="a"):
    """A notifier LISTENing on ``channel`` alone, with one subscriber: its queue."""
    notifier, queue = Notifier("dbname=x"), MemoryQueue()
    subscription = Subscription(FakeNotifiers(), "dbname=x", (channel,), queue, name="s")
    subscription.start()
    subscription.activated((channel,))
    notifier.subscriptions[subscription] = None
    notifier._routes = notifier._build_routes()
    notifier._listening = frozenset((channel,))
    return notifier, queue


class _NoChannel:
    """A notify whose channel must not be read."""

    def __init__(self, payload):
        self.payload, self.pid = payload, 1

    @property
    def channel(self):
        raise AssertionError("the channel was looked at")


def test_a_one_channel_notifier_reads_no_channel_while_no_probe_is_out():
    notifier, queue = _one_channel_notifier()
    notifier.post_execute([_NoChannel(str(i)) for i in range(3)])
    assert [(n.channel, n.payload) for n in queue.get_chunk(False)] == [
        ("a", "0"), ("a", "1"), ("a", "2")]


def test_a_probe_out_makes_a_one_channel_notifier_look_at_every_channel():
    notifier, queue = _one_channel_notifier()
    notifier._probes_out, notifier._probe_token, notifier._probe_sent = 1, "9", 0.0
    notifier.post_execute([_Notify("a", "1"), _Notify(notifier.probe_channel, "9"),
                           _Notify("a", "2")])
    assert [n.payload for n in queue.get_chunk(False)] == ["1", "2"]  # not the probe
    assert notifier._probes_out == 0 and notifier._probe_token is None
    assert notifier.probe_rtt is not None
    notifier.post_execute([_NoChannel("3")])  # nothing out: no look again
    assert [n.payload for n in queue.get_chunk(False)] == ["3"]


def test_a_stale_probe_answer_is_still_taken_off_the_probes_out():
    notifier, queue = _one_channel_notifier()
    notifier._probes_out, notifier._probe_token = 2, "2"
    notifier.post_execute([_Notify(notifier.probe_channel, "1")])  # an earlier one's
    assert notifier._probes_out == 1 and notifier._probe_token == "2"
    assert queue.qsize() == 0


def test_the_read_after_an_unlisten_is_looked_at_once():
    """The UNLISTEN's round trip may have read notifies of the channel left: they go
    nowhere, not to the channel kept."""
    notifier, queue = _one_channel_notifier()
    notifier._unlistened = True
    notifier.post_execute([_Notify("b", "left"), _Notify("b", "behind")])
    assert queue.qsize() == 0 and not notifier._unlistened
    notifier.post_execute([_NoChannel("kept")])
    assert [n.payload for n in queue.get_chunk(False)] == ["kept"]


def test_the_probe_channel_differs_between_processes_with_one_pid(monkeypatch):
    """Containers on one database all run pgvisor as pid 1: a probe channel of pid and
    counter alone would be every node's, and their probes everyone's notifications."""
    channels = set()
    for _ in range(3):  # three processes of pid 1, each its first notifier
        monkeypatch.setattr(notifier_module.os, "getpid", lambda: 1)
        monkeypatch.setattr(notifier_module, "_probe_ids", itertools.count(1))
        channels.add(Notifier("dbname=x").probe_channel)
    assert len(channels) == 3 and all(c.startswith("pgvisor.probe.1.1.") for c in channels)
    assert all(len(c.encode()) < 64 for c in channels)  # a channel is a name: 63 bytes


def test_notifications_from_notifies_keep_each_channel_unless_one_is_given():
    notifies = [_Notify("a", "1", pid=3), _Notify("b", "", pid=4)]
    made = Notification.from_notifies(notifies, 12.5)
    assert made == [Notification("a", "1", "notify", 3, 12.5), Notification("b", "", "notify",
                                                                            4, 12.5)]
    assert [n.channel for n in Notification.from_notifies(notifies, 1.0, "c")] == ["c", "c"]
    assert Notification.from_notifies([], 1.0) == []


def test_notifications_built_on_the_hot_path_are_notifications_to_whoever_gets_them():
    made = Notification.from_notifies([_Notify("a", "1", pid=3)], 12.5)[0]
    rows = Notification.from_fields(("a", "1", "notify", 3, 12.5, "m-1"))
    assert isinstance(made, Notification) and isinstance(rows, Notification)
    assert (made.channel, made.payload, made.kind, made.pid, made.received_at, made.id) == (
        "a", "1", "notify", 3, 12.5, None)
    assert rows.id == "m-1" and rows.to_dict()["id"] == "m-1"
    assert repr(made) == "<Notification notify channel='a' payload='1' pid=3>"
    for copied in (pickle.loads(pickle.dumps(made)), copy.copy(made), copy.deepcopy(made)):
        assert type(copied) is Notification and copied == made
    with pytest.raises(AttributeError):
        made.payload = "changed"  # immutable, as a Notification


def test_a_spool_stores_a_read_as_columns_whoever_built_its_notifications():
    class Other(Notification):
        __slots__ = ()

    read = Notification.from_notifies([_Notify("a", str(i), pid=i) for i in range(3)], 1.0)
    mixed = read + [Notification("a", "made by hand", pid=9)]
    assert codec.all_notifications(read) and codec.all_notifications(mixed)
    assert codec.encode_batch(mixed).startswith(b"{")  # columns, not a list of dicts
    back = codec.decode(codec.encode_batch(mixed), "0000000001-host-1-1")
    assert [n[:5] for n in back] == [n[:5] for n in mixed]
    assert not codec.all_notifications(read + [Other(("a", "p", "notify", 1, 1.0, None))])
    assert not codec.all_notifications([])


def test_a_read_larger_than_the_room_left_is_taken_in_part_the_rest_dropped_counted():
    queue = MemoryQueue(3)
    subscription = _subscription(queue)
    subscription.offer_many([_live(str(i)) for i in range(5)])
    assert (queue.qsize(), subscription.dropped, subscription.overflows) == (3, 2, 1)
    subscription.offer_many([_live("later")])  # the episode lasts: dropped too
    assert subscription.dropped == 3
    assert [n.payload for n in queue.get_chunk(False)] == ["0", "1", "2"]
    wait_for(lambda: subscription.catch_ups == 1, 5)
    assert [n.kind for n in _drain(queue)] == ["catch_up"]
