"""The Supervisor against a real Postgres: starts, deaths, the restart budget, registry
changes, async operations."""
import time

import psycopg2
import pytest

from instances import InstanceSpec
from supervisor import Supervisor, get_current
from supervisor.testing import wait_for
from tests import handlers


def _spec(name="river", **fields):
    values = {"name": name, "channels": ["doc_changed"], "handler": "tests.handlers:record"}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _notify(dsn, channel, payload):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


@pytest.fixture
def supervisor(registry, pg_dsn):
    sup = Supervisor(registry, pg_dsn, interval=3600, wait_after_db_revived=0.5,
                     probe_interval=0.2)
    yield sup
    sup.stop(timeout=5)


def _state(sup, name):
    return sup.status()[name]["state"]


def _wait_state(sup, name, state, timeout=10):
    wait_for(lambda: _state(sup, name) == state, timeout,
             message="%s never became %s: %r" % (name, state, sup.status().get(name)))


@pytest.mark.timeout(30)
def test_registered_instance_runs_and_handles_notifications(registry, supervisor, pg_dsn):
    registry.add(_spec())
    supervisor.start()
    assert get_current() is supervisor
    _wait_state(supervisor, "river", "running")
    _notify(pg_dsn, "doc_changed", "42")
    wait_for(lambda: [n.payload for n in handlers.seen if n.kind == "notify"] == ["42"], 5)
    assert handlers.seen[0].kind == "catch_up"


@pytest.mark.timeout(30)
def test_killed_instance_restarts_at_once_then_parks_over_budget(registry, supervisor):
    registry.add(_spec())
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    first = supervisor.instance("river")
    killed_at = time.monotonic()
    first.kill()
    wait_for(lambda: supervisor.instance("river") is not first
             and supervisor.instance("river").alive, 5)
    # At once: the death itself restarts it (the periodic check runs hourly here); 5 s of
    # margin for a loaded machine still tells the two apart.
    assert time.monotonic() - killed_at < 5.0
    assert supervisor.status()["river"]["restarts"] == 1
    # A second death inside the 1/m window: parked with a reason, not restarted.
    second = supervisor.instance("river")
    second.kill()
    _wait_state(supervisor, "river", "disabled_by_supervisor")
    status = supervisor.status()["river"]
    assert "restart budget 1/m spent" in status["parked_reason"]
    assert supervisor.counters["restarts_rate_limited"] == 1
    # An operator's restart clears it.
    assert supervisor.restart(["river"]).get(timeout=10) == {"river": "started"}
    _wait_state(supervisor, "river", "running")


@pytest.mark.timeout(30)
def test_enable_clears_parking(registry, supervisor):
    registry.add(_spec(restart_max_rate="0/m"))
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    supervisor.instance("river").kill()
    _wait_state(supervisor, "river", "disabled_by_supervisor")
    registry.enable("river")
    _wait_state(supervisor, "river", "running")


@pytest.mark.timeout(30)
def test_registry_changes_are_reflected_within_one_request(registry, supervisor):
    supervisor.start()
    registry.add(_spec("a"))
    registry.add(_spec("b"))
    _wait_state(supervisor, "a", "running")
    _wait_state(supervisor, "b", "running")
    registry.update("a", channels=["one", "two"], max_concurrency=3)
    wait_for(lambda: supervisor.instance("a").listener.active == ("one", "two"), 5)
    assert supervisor.instance("a").pool.max_concurrency == 3
    registry.disable("b")
    _wait_state(supervisor, "b", "disabled")
    assert not supervisor.instance("b").alive
    registry.remove("a")
    wait_for(lambda: "a" not in supervisor.status(), 5)


@pytest.mark.timeout(30)
def test_async_operations_report_outcomes_and_merge_duplicates(registry, supervisor):
    registry.add(_spec())
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    first = supervisor.verify(["river"])
    second = supervisor.verify(["river"])
    assert first is second
    assert first.get(timeout=5) == {"river": "unchanged"}
    assert supervisor.restart(["river", "nope"]).get(timeout=10) == {
        "river": "restarted", "nope": "unknown instance"}
    assert supervisor.shutdown(["river"]).get(timeout=10) == {"river": "stopped"}
    assert _state(supervisor, "river") == "stopped"
    # A verify leaves an operator's shutdown alone; a restart brings it back.
    assert supervisor.verify().get(timeout=5) == {"river": "unchanged"}
    assert supervisor.restart("river").get(timeout=10) == {"river": "started"}
    _wait_state(supervisor, "river", "running")


@pytest.mark.timeout(30)
def test_an_instance_dying_while_its_edit_cannot_start_comes_back_on_its_previous_spec(
        registry, supervisor, pg_dsn):
    registry.add(_spec())
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    registry.resolve = False  # as the CLI stores a handler it cannot import
    registry.update("river", handler="no_such_module_pgvisor:handle")
    wait_for(lambda: supervisor.status()["river"]["pending_spec_error"], 10)
    running = supervisor.instance("river")
    assert running.alive and running.spec.handler == "tests.handlers:record"
    running.kill()  # a crash while the edit waits: restarted on the spec that can start
    wait_for(lambda: supervisor.instance("river") is not running
             and supervisor.instance("river").alive, 10)
    status = supervisor.status()["river"]
    assert status["state"] in ("starting", "running") and status["restarts"] == 1
    assert "no_such_module_pgvisor" in status["pending_spec_error"]
    assert supervisor.instance("river").spec.handler == "tests.handlers:record"
    _wait_state(supervisor, "river", "running")
    _notify(pg_dsn, "doc_changed", "still")
    wait_for(lambda: "still" in [n.payload for n in handlers.seen], 5)
    # An operator's restart asks for the new spec again: still refused, still running.
    outcome = supervisor.restart(["river"]).get(timeout=10)["river"]
    assert outcome.startswith("error: restarted on the previous spec"), outcome
    assert supervisor.instance("river").alive
    # Back to a handler that imports: the record forgets the refusal.
    registry.update("river", handler="tests.handlers:into_fixed")
    wait_for(lambda: supervisor.instance("river").spec.handler == "tests.handlers:into_fixed"
             and supervisor.status()["river"]["pending_spec_error"] is None, 10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("queue", ["memory", "spool"])
def test_an_edit_whose_order_key_cannot_be_imported_leaves_the_instance_running(
        registry, supervisor, tmp_path, queue):
    fields = {} if queue == "memory" else {"queue": {"spool": str(tmp_path / "spool")}}
    registry.add(_spec(max_concurrency=2, **fields))
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    running = supervisor.instance("river")
    registry.resolve = False  # as the CLI stores a path it cannot import
    registry.update("river", order_key="no_such_module_pgvisor:key")
    wait_for(lambda: supervisor.status()["river"]["pending_spec_error"], 10)
    error = supervisor.status()["river"]["pending_spec_error"]
    assert "order_key='no_such_module_pgvisor:key'" in error, error
    assert supervisor.instance("river") is running and running.alive
    assert running.spec.order_key is None


@pytest.mark.timeout(30)
def test_new_options_of_the_same_spool_open_after_the_old_queue_closed_or_fall_back(
        registry, supervisor, pg_dsn, tmp_path):
    """A spool directory the running instance holds opens only once that instance closed
    it; when it then fails (here its queue_out_dir is a file), the previous spec starts
    again on the same directory and the error shows."""
    spool = str(tmp_path / "spool")
    registry.add(_spec(queue={"spool": spool}))
    supervisor.start()
    _wait_state(supervisor, "river", "running")
    first = supervisor.instance("river")
    registry.update("river", queue={"spool": spool, "max_attempts": 7})
    wait_for(lambda: supervisor.instance("river") is not first, 10)
    _wait_state(supervisor, "river", "running")
    assert supervisor.instance("river").queue.max_attempts == 7
    _notify(pg_dsn, "doc_changed", "same-dir")
    wait_for(lambda: "same-dir" in [n.payload for n in handlers.seen], 5)

    second = supervisor.instance("river")
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    registry.update("river", queue={"spool": spool, "max_attempts": 7,
                                    "queue_out_dir": str(blocker / "out")})
    wait_for(lambda: supervisor.status()["river"]["pending_spec_error"], 10)
    third = supervisor.instance("river")
    assert third is not second and third.alive  # stopped, then its previous spec again
    assert third.spec == second.spec and third.queue.directory == spool
    _wait_state(supervisor, "river", "running")
    _notify(pg_dsn, "doc_changed", "fallen-back")
    wait_for(lambda: "fallen-back" in [n.payload for n in handlers.seen], 5)


@pytest.mark.timeout(60)
def test_an_edit_of_queue_size_carries_the_queued_notifications_over(registry, pg_dsn):
    """A new queue_size builds a new memory queue: what the old one held (and the item
    whose handler the stop killed) is handled by the new instance, none dropped."""
    import gevent.event
    sup = Supervisor(registry, pg_dsn, interval=3600, shutdown_grace=0.5)
    handlers.blocking["event"] = gevent.event.Event()
    registry.add(_spec(handler="tests.handlers:hold_on_hold", queue_size=100))
    try:
        sup.start()
        _wait_state(sup, "river", "running")
        wait_for(lambda: [n.kind for n in handlers.seen] == ["catch_up"], 10)
        for payload in ("hold", "a", "b", "c"):
            _notify(pg_dsn, "doc_changed", payload)
        old = sup.instance("river")
        wait_for(lambda: "hold" in [n.payload for n in handlers.seen]
                 and old.queue.qsize() == 3, 10, message="hold running, a b c queued")
        registry.update("river", queue_size=50)
        wait_for(lambda: sup.instance("river") is not old and sup.instance("river").alive,
                 10, message="the instance on its new queue")
        handlers.blocking["event"].set()
        wait_for(lambda: {"a", "b", "c"} <= {n.payload for n in handlers.seen}, 10,
                 message="a b c handled after the edit")
        payloads = [n.payload for n in handlers.seen if n.kind == "notify"]
        assert [p for p in payloads if p != "hold"] == ["a", "b", "c"]
        assert sup.instance("river").spec.queue_size == 50
    finally:
        sup.stop(timeout=5)
