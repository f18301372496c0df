"""Instance (listener + queue + processors) against a real Postgres: delivery after the
catch_up, health, failing and overrunning handlers, kill/stop and the death callback, live
changes, the queue across a restart, drain, autoscale. The hub is never blocked (the
``hub_heartbeat`` fixture, tests/integration/conftest.py)."""
import logging
import time

import gevent
import gevent.event
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from supervisor.testing import holds, wait_for
from tests import handlers

pytestmark = pytest.mark.usefixtures("hub_heartbeat")

HERE = "tests.integration.test_instance"

# -- handlers of this module (``tests.integration.test_instance:...``) ---------------------
state = {"running": 0, "peak": 0, "done": [], "interrupted": []}


def _reset_state():
    state.update(running=0, peak=0, done=[], interrupted=[])


def sleepy(notification):
    """Payload ``hang``: sleep a minute (the handler timeout must cut it); else record."""
    if notification.payload == "hang":
        try:
            gevent.sleep(60)
        except BaseException as error:
            state["interrupted"].append(type(error).__name__)
            raise
    state["done"].append(notification.payload)


def slow(notification):
    """Take 0.1 s cooperatively; count how many run at the same time."""
    state["running"] += 1
    state["peak"] = max(state["peak"], state["running"])
    try:
        gevent.sleep(0.1)
    finally:
        state["running"] -= 1
    state["done"].append(notification.payload)


stubborn_release = gevent.event.Event()


def stubborn(notification):
    """Count how many run at once; payload ``stuck``: ignore every interrupt (a kill
    included) until ``stubborn_release`` is set, as a handler swallowing BaseException
    would; else take 20 ms."""
    state["running"] += 1
    state["peak"] = max(state["peak"], state["running"])
    try:
        if notification.payload == "stuck":
            while not stubborn_release.is_set():
                try:
                    stubborn_release.wait()
                except BaseException as error:  # noqa: B036 -- what this handler is for
                    state["interrupted"].append(type(error).__name__)
        else:
            gevent.sleep(0.02)
    finally:
        state["running"] -= 1
    state["done"].append(notification.payload or notification.kind)


def blip(notification):
    """Payload ``blip`` fails on its first try (a database blip); record what succeeds."""
    if notification.payload == "blip" and "blip" not in state["interrupted"]:
        state["interrupted"].append("blip")
        raise ConnectionError("database blip")
    state["done"].append(notification.payload or notification.kind)


# -- helpers ---------------------------------------------------------------------------
def _spec(handler="tests.handlers:record", **fields):
    values = {"name": "river", "channels": ["doc_changed"], "handler": handler}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _notify(dsn, *items):
    """One transaction of NOTIFYs; an item is a payload (on doc_changed) or (channel,
    payload). One transaction arrives together and in order."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for item in items:
                channel, payload = item if isinstance(item, tuple) else ("doc_changed", item)
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


def _payloads(kind="notify"):
    return [n.payload for n in handlers.seen if n.kind == kind]


def _ended_parts(instance):
    """A list that gets each part (listener, pool) when it ends: linked after the
    instance's own links, so when both are in, the instance has heard of both ends."""
    ended = []
    instance.listener.link(ended.append)
    instance.pool.link(ended.append)
    return ended


@pytest.fixture
def running(pg_dsn):
    """``start(spec, **kwargs)`` -> a started, connected Instance; all stopped after."""
    handlers.reset()
    _reset_state()
    made = []

    def start(spec, **kwargs):
        instance = Instance(spec, pg_dsn, **kwargs).start()
        made.append(instance)
        wait_for(lambda: instance.connected, 10, message="instance never connected")
        return instance

    yield start
    if handlers.blocking["event"] is not None:
        handlers.blocking["event"].set()
    for instance in made:
        instance.stop(5)


@pytest.fixture
def gate(running):
    """The event tests.handlers:block waits on (set by the ``running`` teardown too)."""
    handlers.blocking["event"] = event = gevent.event.Event()
    return event


# -- delivery and health ---------------------------------------------------------------
@pytest.mark.timeout(30)
def test_start_delivers_the_catch_up_then_notifications_in_order(pg_dsn, running):
    instance = running(_spec())
    wait_for(lambda: len(handlers.seen) == 1, 5, message="no catch_up")
    assert handlers.seen[0].kind == "catch_up"
    _notify(pg_dsn, "a", "b", "c")
    wait_for(lambda: len(handlers.seen) == 4, 5, message="notifications not handled")
    assert _payloads() == ["a", "b", "c"]
    assert all(n.channel == "doc_changed" and n.pid > 0 for n in handlers.seen[1:])
    assert instance.alive and instance.exit is None


@pytest.mark.timeout(30)
def test_health_reports_connection_heartbeat_backlog_counters_and_last_error(
        pg_dsn, running):
    instance = running(_spec("tests.handlers:fail_on_bad"))
    _notify(pg_dsn, "ok1", "bad1", "ok2")
    wait_for(lambda: instance.health()["processed"] == 3, 5, message="not processed")
    health = instance.health()
    assert health["alive"] is True and health["connected"] is True and health["exit"] is None
    assert 0 <= health["heartbeat_age"] < 5
    assert health["backlog"] == 0
    assert (health["received"], health["catch_ups"], health["reconnects"]) == (3, 1, 0)
    assert (health["processed"], health["failed"], health["timed_out"]) == (3, 1, 0)
    assert health["concurrency"] == 1
    assert "bad payload 'bad1'" in health["last_error"]
    instance.stop(5)
    stopped = instance.health()
    assert stopped["alive"] is False and stopped["connected"] is False
    assert stopped["heartbeat_age"] is None and stopped["exit"] == "normal"


@pytest.mark.timeout(30)
def test_health_backlog_counts_what_waits_behind_a_busy_handler(pg_dsn, running, gate):
    instance = running(_spec("tests.handlers:block"))  # the catch_up blocks the handler
    _notify(pg_dsn, "w1", "w2")
    wait_for(lambda: instance.health()["backlog"] == 2, 5, message="backlog not 2")
    assert instance.health()["processed"] == 0
    gate.set()
    wait_for(lambda: instance.health()["processed"] == 3, 5, message="backlog not handled")
    assert instance.health()["backlog"] == 0


@pytest.mark.timeout(30)
def test_the_backlog_counts_what_a_worker_took_but_has_not_started(pg_dsn, running, gate):
    """A worker takes a whole read as one chunk: the items behind the one in its handler
    left the queue but still wait, and the backlog an operator sees counts them (it showed
    0 with two waiting)."""
    instance = running(_spec("tests.handlers:hold_on_hold"))
    wait_for(lambda: [n.kind for n in handlers.seen] == ["catch_up"], 5, message="no catch_up")
    _notify(pg_dsn, "hold-1", "b", "c")  # one read: one chunk, taken whole by the worker
    wait_for(lambda: len(handlers.seen) == 2, 5, message="hold-1 never started")
    assert instance.health()["backlog"] == 2  # b and c, in the worker's hand or queued
    gate.set()
    wait_for(lambda: len(handlers.seen) == 4, 5, message="b, c never ran")
    wait_for(lambda: instance.health()["backlog"] == 0, 5)
    assert [n.payload for n in handlers.seen[1:]] == ["hold-1", "b", "c"]


# -- handler failures --------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_a_handler_that_raises_is_counted_sent_to_the_error_path_and_the_instance_goes_on(
        pg_dsn, running):
    instance = running(_spec("tests.handlers:fail_on_bad"))
    _notify(pg_dsn, "bad1", "ok1")
    wait_for(lambda: "ok1" in _payloads(), 5, message="ok1 not handled after bad1")
    assert instance.health()["failed"] == 1
    [error] = instance.queue.errors
    assert error["item"].payload == "bad1"
    assert error["error"].startswith("ValueError(")
    assert "bad payload 'bad1'" in error["traceback"] and "Traceback" in error["traceback"]
    _notify(pg_dsn, "ok2")
    wait_for(lambda: "ok2" in _payloads(), 5, message="the instance stopped handling")
    assert instance.alive and instance.health()["processed"] == 3


@pytest.mark.timeout(30)
def test_a_handler_over_its_timeout_is_killed_counted_and_the_instance_goes_on(
        pg_dsn, running):
    instance = running(_spec(HERE + ":sleepy", handler_timeout=0.3))
    _notify(pg_dsn, "hang", "after")
    wait_for(lambda: "after" in state["done"], 5, message="nothing handled after the hang")
    assert state["interrupted"] == ["HandlerTimeout"]
    assert "hang" not in state["done"]
    health = instance.health()
    assert (health["timed_out"], health["failed"]) == (1, 0)
    assert "TimeoutError" in health["last_error"]
    [error] = instance.queue.errors
    assert error["item"].payload == "hang" and "TimeoutError" in error["error"]
    assert instance.alive


# -- ends ------------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_kill_calls_on_death_once_with_exit_abnormal(running):
    deaths = []
    instance = running(_spec(), on_death=deaths.append)
    ended = _ended_parts(instance)
    instance.kill()
    wait_for(lambda: len(ended) == 2, 5, message="parts did not end")
    assert deaths == [instance]
    assert instance.exit == "abnormal" and not instance.alive


@pytest.mark.timeout(30)
def test_stop_ends_normal_without_calling_on_death(running):
    deaths = []
    instance = running(_spec(), on_death=deaths.append)
    ended = _ended_parts(instance)
    assert instance.stop(5) is True
    wait_for(lambda: len(ended) == 2, 5, message="parts did not end")
    assert deaths == []
    assert instance.exit == "normal" and not instance.alive


# -- live changes ------------------------------------------------------------------------
def _deliver_until_seen(dsn, items, wanted, rounds=50):
    """Send ``items`` (one transaction) until ``wanted`` payload arrives: a LISTEN the
    listener applies between two reads has no other outside sign. Returns the rounds."""
    for round_ in range(rounds):
        tag = "%s-%d" % (wanted, round_)
        _notify(dsn, *[(channel, "%s-%d" % (payload, round_)) for channel, payload in items])
        try:
            wait_for(lambda tag=tag: tag in _payloads(), 0.5)
            return round_
        except AssertionError:
            continue
    raise AssertionError("%r never arrived" % wanted)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connection", ["shared", "own"])
def test_apply_changes_channels_and_concurrency_live_without_reconnecting(pg_dsn, running,
                                                                          connection):
    instance = running(_spec(channels=["a"], connection=connection))
    spec = instance.spec
    changed = instance.apply(spec.replace(channels=("a", "b"), min_concurrency=2,
                                          max_concurrency=3))
    assert changed == {"channels", "min_concurrency", "max_concurrency"}
    _deliver_until_seen(pg_dsn, [("b", "b")], "b")
    wait_for(lambda: instance.health()["concurrency"] == 2, 5, message="pool not at min 2")
    assert instance.pool.max_concurrency == 3
    # Drop "a": a transaction on a and b delivers only b's notification.
    instance.apply(instance.spec.replace(channels=("b",)))
    last = _deliver_until_seen(pg_dsn, [("a", "gone"), ("b", "kept")], "kept")
    assert "gone-%d" % last not in _payloads()
    # One catch_up at the start, one for the channel added live (none for one removed).
    assert (instance.listener.reconnects, instance.listener.catch_ups) == (0, 2)
    assert _payloads("catch_up") == ["", ""]
    assert instance.alive and instance.spec.channels == ("b",)


@pytest.mark.timeout(30)
def test_apply_of_a_restart_only_field_raises_and_changes_nothing(running):
    instance = running(_spec())
    before = instance.spec
    with pytest.raises(ValueError, match="handler"):
        instance.apply(before.replace(handler="tests.handlers:noop"))
    with pytest.raises(ValueError, match="queue_size"):
        instance.apply(before.replace(queue_size=5, max_concurrency=2))
    assert instance.spec is before and instance.pool.max_concurrency == 1
    assert instance.alive


# -- the queue across a restart, drain ---------------------------------------------------
@pytest.mark.timeout(30)
def test_queued_notifications_survive_a_restart_inside_the_process(pg_dsn, running, gate):
    old = running(_spec("tests.handlers:block"))  # the catch_up holds the only handler
    _notify(pg_dsn, "q1", "q2")
    wait_for(lambda: old.health()["backlog"] == 2, 5, message="q1, q2 not queued")
    old.stop(0.2)  # the blocked handler is killed: its catch_up goes back, first in line
    assert old.queue.qsize() == 3
    gate.set()
    new = running(_spec("tests.handlers:block"), queue=old.queue)
    wait_for(lambda: len(handlers.seen) == 5, 5, message="queue not taken over")
    assert [(n.kind, n.payload) for n in handlers.seen] == [
        ("catch_up", ""), ("catch_up", ""), ("notify", "q1"), ("notify", "q2"),
        ("catch_up", "")]
    assert handlers.seen[0] is handlers.seen[1]  # the same one, handed out again
    assert new.health()["processed"] == 4


@pytest.mark.timeout(60)
def test_a_full_queue_never_makes_an_own_listener_stop_spend_the_grace(pg_dsn, running, gate,
                                                                       caplog):
    instance = running(_spec("tests.handlers:block", connection="own", queue_size=1))
    wait_for(lambda: len(handlers.seen) == 1, 5, message="the catch_up is not held")
    _notify(pg_dsn, "a", "b", "c", "d", "e")  # one read: "a" fits, the listener waits
    wait_for(lambda: instance.queue.qsize() == 1 and instance.listener.received == 5, 5,
             message="the listener is not blocked on the full queue")
    listener = instance.listener
    stopper = gevent.spawn(instance.stop, 30)  # a listener waiting for room would take 30 s
    wait_for(lambda: not listener.is_alive(), 10, message="the listener waited for room")
    gate.set()  # the handler in flight finishes within the grace the pool still has
    assert stopper.get(timeout=20) is True  # clean: nothing killed
    assert listener.exit == "normal" and instance.exit == "normal"
    assert [n.kind for n in handlers.seen] == ["catch_up"]
    assert instance.queue.qsize() == 1  # "a" stays for the next instance on the queue
    [record] = [r for r in caplog.records
                if getattr(r, "action", None) == "listener.dropped_at_stop"]
    assert record.dropped == 4


@pytest.mark.timeout(30)
def test_a_restart_never_runs_two_handlers_while_the_old_one_ignores_its_kill(pg_dsn,
                                                                             running):
    stubborn_release.clear()
    spec = _spec(HERE + ":stubborn", max_concurrency=1)
    old = running(spec)
    _notify(pg_dsn, "stuck", "x")
    wait_for(lambda: state["interrupted"] == [] and "catch_up" in state["done"]
             and state["running"] == 1, 5, message="the stuck handler does not run")
    assert old.stop(0.2) is False  # the kill is swallowed: the stop gives up on it
    assert state["interrupted"] and state["running"] == 1
    new = running(spec, queue=old.queue)
    wait_for(lambda: new.queue.qsize() >= 1, 5, message="no catch_up for the new one")
    holds(lambda: state["running"] == 1, 0.3, message="a second handler started")
    stubborn_release.set()
    wait_for(lambda: state["done"].count("catch_up") == 2, 10, message="nothing more ran")
    assert state["done"] == ["catch_up", "stuck", "x", "catch_up"]
    assert state["peak"] == 1
    assert new.pool.alive and new.health()["processed"] == 2


@pytest.mark.timeout(30)
def test_a_stop_during_a_retry_wait_keeps_the_notification_for_the_next_instance(pg_dsn,
                                                                                  running):
    old = running(_spec(HERE + ":blip"))
    old.pool.retry_delay = 30.0  # the stop comes during the wait
    _notify(pg_dsn, "blip", "after")
    wait_for(lambda: old.pool.retried == 1, 5, message="no retry wait")
    assert old.stop(5) is True  # clean: the wait is interrupted, nothing killed
    assert old.queue.qsize() == 2 and old.queue.failed_count == 0  # given back, in order
    new = running(_spec(HERE + ":blip"), queue=old.queue)
    wait_for(lambda: state["done"].count("catch_up") == 2, 5, message="not taken over")
    assert state["done"] == ["catch_up", "blip", "after", "catch_up"]
    assert new.health()["failed"] == 0


@pytest.mark.timeout(30)
def test_drain_stops_listening_and_handles_the_backlog(pg_dsn, running, gate, caplog):
    deaths = []
    instance = running(_spec("tests.handlers:block"), on_death=deaths.append)
    _notify(pg_dsn, "d1", "d2", "d3")
    wait_for(lambda: instance.health()["backlog"] == 3, 5, message="backlog not 3")
    drain = gevent.spawn(instance.drain, 10)
    wait_for(lambda: not instance.connected, 5, message="the listener still listens")
    assert not drain.ready()  # waiting for the backlog
    gate.set()
    assert drain.get(timeout=10) == 0
    assert _payloads() == ["d1", "d2", "d3"]
    assert instance.exit == "normal" and not instance.alive and deaths == []
    assert not [r for r in caplog.records
                if getattr(r, "action", None) == "instance.dropped_at_shutdown"]


@pytest.mark.timeout(30)
def test_drain_past_its_timeout_kills_and_logs_what_it_dropped(pg_dsn, running, gate,
                                                               caplog):
    instance = running(_spec("tests.handlers:block"))
    _notify(pg_dsn, "x1", "x2")
    wait_for(lambda: instance.health()["backlog"] == 2, 5, message="backlog not 2")
    caplog.set_level(logging.INFO, logger="instances.instance")
    started = time.monotonic()
    assert instance.drain(0.3) == 3  # x1, x2 and the killed handler's catch_up
    assert time.monotonic() - started < 3
    assert instance.exit == "abnormal"
    [record] = [r for r in caplog.records
                if getattr(r, "action", None) == "instance.dropped_at_shutdown"]
    assert record.dropped == 3 and record.instance == "river"
    assert "3 queued notification(s) not handled" in record.getMessage()


@pytest.mark.timeout(30)
def test_drain_of_a_spool_drops_nothing_the_backlog_stays_on_disk(pg_dsn, running, gate,
                                                                  tmp_path, caplog):
    spec = _spec("tests.handlers:block", queue={"spool": str(tmp_path / "spool")})
    old = running(spec)
    _notify(pg_dsn, "s1", "s2")
    wait_for(lambda: old.health()["backlog"] >= 1, 5, message="nothing spooled")
    caplog.set_level(logging.INFO, logger="instances.instance")
    assert old.drain(0.3) == 0
    [record] = [r for r in caplog.records
                if getattr(r, "action", None) == "instance.kept_at_shutdown"]
    assert "nothing dropped" in record.getMessage()
    old.queue.close()
    gate.set()
    running(spec)  # a new FileQueue on the same directory
    wait_for(lambda: {"s1", "s2"} <= set(_payloads()), 10, message="spool backlog lost")


# -- autoscale ---------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_autoscale_grows_under_a_real_backlog_and_shrinks_after_idling(pg_dsn, running):
    instance = running(_spec(HERE + ":slow", max_concurrency=4))
    instance.pool.idle_timeout = 0.3
    sizes = []

    def watch():
        while True:
            sizes.append(instance.pool.size)
            gevent.sleep(0.02)

    watcher = gevent.spawn(watch)
    try:
        _notify(pg_dsn, *["p%d" % i for i in range(30)])
        wait_for(lambda: len(state["done"]) == 31, 20, message="backlog not handled")
        assert max(sizes) > 1 and state["peak"] > 1
        assert max(sizes) <= 4 and state["peak"] <= 4
        wait_for(lambda: instance.pool.size == 1, 5, message="the pool did not shrink")
    finally:
        watcher.kill()
    assert instance.health()["concurrency"] == 1 and instance.alive
