"""The Supervisor through database outages on a private real Postgres: pause within 2 s,
no restarts and no budget spent (also for an instance killed meanwhile), instances
reconnect by themselves, the revive grace, restarts after it free of budget."""
import time

import pytest

from instances import InstanceSpec
from instances.backoff import Backoff
from instances.instance import Instance
from supervisor import Supervisor
from supervisor.testing import wait_for

GRACE = 1.0


class SlowToReconnect(Instance):
    """A real Instance whose listener, once its connection is lost, waits a minute before
    reconnecting, and is deaf to the supervisor's "the database is back": it is still away
    when the revive grace is over."""

    def start(self):
        super().start()
        self.listener.backoff = Backoff(initial=60.0, max_delay=60.0, jitter=0)
        return self

    def reconnect_now(self):
        return False


def factory(spec, dsn, on_death, on_connection_lost, queue=None):
    cls = SlowToReconnect if spec.name == "late" else Instance
    return cls(spec, dsn, on_death=on_death, on_connection_lost=on_connection_lost, queue=queue)


def _spec(name, **fields):
    values = {"name": name, "channels": ["ch_" + name], "handler": "tests.handlers:record"}
    values.update(fields)
    return InstanceSpec.from_dict(values)


@pytest.fixture
def fast_backoff(monkeypatch):
    """Instances retry every 0.1..0.4 s (the defaults are 1..32 s)."""
    monkeypatch.setattr(Backoff, "initial", 0.1)
    monkeypatch.setattr(Backoff, "max_delay", 0.4)


@pytest.fixture
def supervisor(registry, pg_private_cluster, fast_backoff):
    sup = Supervisor(registry, pg_private_cluster.dsn, interval=3600,
                     wait_after_db_revived=GRACE, probe_interval=0.2, probe_timeout=1.0,
                     instance_factory=factory, set_as_current=False)
    yield sup
    sup.stop(timeout=5)


def _state(sup, name):
    return sup.status()[name]["state"]


def _wait_states(sup, wanted, timeout=10):
    wait_for(lambda: all(_state(sup, n) == s for n, s in wanted.items()), timeout,
             message="never %r: %r" % (wanted, {n: _state(sup, n) for n in wanted}))


def _budget_view(sup, names):
    counters = {k: sup.counters[k] for k in ("restarts", "restarts_rate_limited")}
    return counters, {name: sup.budget.remaining(name) for name in names}


def _start_three(registry, supervisor):
    for name in ("steady", "victim"):
        registry.add(_spec(name))
    registry.add(_spec("late", connection="own"))  # its own listener is slow to reconnect
    supervisor.start()
    _wait_states(supervisor, {"steady": "running", "victim": "running", "late": "running"})
    return {name: supervisor.instance(name) for name in ("steady", "victim", "late")}


def _wait_paused(supervisor, within):
    wait_for(lambda: supervisor.database_status()["paused_by"] == "outage", within,
             message="not paused: %r" % supervisor.database_status())
    status = supervisor.database_status()
    assert status["paused"] and status["state"] == "down"


def _check_outage_then_revival(supervisor, cluster, before, stopped_at):
    names = sorted(before)
    _wait_paused(supervisor, within=2.0 - (time.monotonic() - stopped_at))
    _wait_states(supervisor, {name: "waiting" for name in names})
    assert all(supervisor.instance(n) is before[n] and before[n].alive for n in names)
    budget = _budget_view(supervisor, names)

    before["victim"].kill()  # a death during the outage: no restart, no budget
    wait_for(lambda: not before["victim"].alive, 5)
    wait_for(lambda: supervisor.counters["deaths"] == 1, 5)
    assert _state(supervisor, "victim") == "waiting"
    assert supervisor.instance("victim") is before["victim"]
    assert _budget_view(supervisor, names) == budget
    assert supervisor.counters["outages"] == 1

    cluster.start()
    # steady reconnects by itself: same instance, a second catch_up, running, not restarted.
    _wait_states(supervisor, {"steady": "running"})
    steady = supervisor.status()["steady"]
    assert supervisor.instance("steady") is before["steady"]
    assert steady["catch_ups"] == 2 and steady["reconnects"] == 1
    # victim (dead) and late (still in its backoff) come back only after the grace, free.
    wait_for(lambda: supervisor.instance("victim") is not before["victim"]
             and supervisor.instance("late") is not before["late"], GRACE + 5)
    revived_at = supervisor.database_status()["since"]
    for name in ("victim", "late"):
        assert supervisor.instance(name).started_at - revived_at >= GRACE - 0.05
    _wait_states(supervisor, {name: "running" for name in names})
    counters, remaining = _budget_view(supervisor, names)
    assert counters == {"restarts": budget[0]["restarts"] + 2,
                        "restarts_rate_limited": 0}
    assert remaining == budget[1]
    assert supervisor.database_status()["paused"] is False
    assert supervisor.verify().get(timeout=5) == {name: "unchanged" for name in names}


@pytest.mark.timeout(40)
def test_database_stop_pauses_without_restarts_then_grace_then_back(
        registry, supervisor, pg_private_cluster):
    before = _start_three(registry, supervisor)
    stopped_at = time.monotonic()
    pg_private_cluster.stop()
    _check_outage_then_revival(supervisor, pg_private_cluster, before, stopped_at)


@pytest.mark.timeout(40)
def test_postmaster_killed_pauses_without_restarts_then_grace_then_back(
        registry, supervisor, pg_private_cluster):
    before = _start_three(registry, supervisor)
    killed_at = time.monotonic()
    pg_private_cluster.kill()
    _check_outage_then_revival(supervisor, pg_private_cluster, before, killed_at)


@pytest.mark.timeout(30)
def test_grace_holds_back_restarts_and_reports_paused_by_grace(
        registry, supervisor, pg_private_cluster):
    before = _start_three(registry, supervisor)
    pg_private_cluster.stop()
    _wait_paused(supervisor, within=2.0)
    before["victim"].kill()
    wait_for(lambda: supervisor.counters["deaths"] == 1, 5)
    pg_private_cluster.start()
    wait_for(lambda: supervisor.database_status()["state"] == "up", 5)
    status = supervisor.database_status()
    assert status["paused_by"] == "grace" and status["in_grace"]
    # A verify inside the grace leaves the dead alone (it waits) ...
    assert supervisor.verify(["victim"], ratelimit=True).get(timeout=5) == {
        "victim": "unchanged"}
    assert supervisor.instance("victim") is before["victim"]
    assert _state(supervisor, "victim") == "waiting"
    # ... and the grace's end restarts it.
    wait_for(lambda: supervisor.instance("victim") is not before["victim"], GRACE + 5)
    wait_for(lambda: supervisor.database_status()["paused_by"] is None, 5)


@pytest.mark.timeout(30)
def test_operator_pause_holds_restarts_and_resume_restarts_free(registry, supervisor):
    registry.add(_spec("steady"))
    supervisor.start()
    _wait_states(supervisor, {"steady": "running"})
    first = supervisor.instance("steady")
    supervisor.pause()
    assert supervisor.database_status()["paused_by"] == "operator"
    first.kill()
    wait_for(lambda: supervisor.counters["deaths"] == 1, 5)
    assert supervisor.verify().get(timeout=5) == {"steady": "unchanged"}
    assert supervisor.instance("steady") is first
    remaining = supervisor.budget.remaining("steady")
    supervisor.resume()
    _wait_states(supervisor, {"steady": "running"})
    assert supervisor.instance("steady") is not first
    assert supervisor.budget.remaining("steady") == remaining


class MinuteBackoff(Instance):
    """A real Instance whose source waits a minute between reconnect attempts: its own
    listener's backoff, or the shared notifier's."""

    def start(self):
        super().start()
        source = getattr(self.listener, "notifier", self.listener)
        source.backoff = Backoff(initial=60.0, max_delay=60.0, jitter=0)
        return self


@pytest.mark.timeout(60)
@pytest.mark.parametrize("connection", ["shared", "own"])
def test_a_revived_database_wakes_listeners_out_of_their_reconnect_backoff(
        registry, pg_private_cluster, connection):
    """The monitor says "up": the notifier (or an own listener) reconnects at once, not at
    the end of its backoff (here a minute, far past the test's deadlines)."""
    from tests import handlers
    sup = Supervisor(registry, pg_private_cluster.dsn, interval=3600,
                     wait_after_db_revived=30.0, probe_interval=0.2, probe_timeout=1.0,
                     set_as_current=False, instance_factory=lambda spec, dsn, on_death,
                     on_connection_lost, queue=None: MinuteBackoff(
                         spec, dsn, on_death=on_death, on_connection_lost=on_connection_lost,
                         queue=queue, notifiers=sup.notifiers))
    registry.add(_spec("woken", connection=connection))
    sup.start()
    try:
        _wait_states(sup, {"woken": "running"})
        instance = sup.instance("woken")
        pg_private_cluster.stop()
        _wait_paused(sup, 10)
        source = getattr(instance.listener, "notifier", instance.listener)
        wait_for(lambda: source.backoff.attempts >= 1, 10,
                 message="the source lost its connection and waits to retry")
        pg_private_cluster.start()
        wait_for(lambda: sup.db_up, 15, message="the monitor saw the database back")
        wait_for(lambda: instance.connected, 10,
                 message="reconnected within its minute of backoff")
        assert sup.instance("woken") is instance  # the same instance: no restart
        del handlers.seen[:]
        pg_private_cluster.execute("SELECT pg_notify('ch_woken', 'first')")
        wait_for(lambda: "first" in [n.payload for n in handlers.seen], 10)
    finally:
        sup.stop(timeout=5)
