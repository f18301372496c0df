"""The Supervisor and server roles on a real primary + streaming standby: run_on against
the role, promotion, a server refusing LISTEN during recovery, identity warnings, and
failover files triggering an immediate role check."""
import logging
import time

import gevent.queue
import psycopg2
import pytest

from instances import InstanceSpec
from supervisor import Supervisor
from supervisor.testing import wait_for
from tests import handlers


def _spec(name, **fields):
    values = {"name": name, "channels": ["ch_" + name], "handler": "tests.handlers:record"}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _notify(dsn, channel, payload):
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


def _payloads(channel):
    return [n.payload for n in handlers.seen if n.channel == channel]


@pytest.fixture
def make_supervisor():
    made = []

    def make(registry, dsn, **options):
        options = dict(dict(interval=3600, wait_after_db_revived=1.0, probe_interval=0.2,
                            probe_timeout=1.0, set_as_current=False), **options)
        sup = Supervisor(registry, dsn, **options)
        made.append(sup)
        return sup.start()

    yield make
    for sup in made:
        sup.stop(timeout=5)


def _states(sup, *names):
    status = sup.status()
    return {name: status[name]["state"] for name in names}


def _wait_states(sup, wanted, timeout=10):
    wait_for(lambda: _states(sup, *wanted) == wanted, timeout,
             message="never %r: %r" % (wanted, sup.status()))


@pytest.mark.timeout(60)
def test_standby_runs_only_what_fits_then_promotion_swaps(
        registry, make_supervisor, pg_pair, caplog):
    caplog.set_level(logging.INFO)
    registry.add(_spec("prim", run_on="primary"))
    # LISTEN is refused during recovery: a standby instance listens on the primary.
    registry.add(_spec("stby", run_on="standby", dsn=pg_pair.primary.dsn))
    registry.add(_spec("anywhere", run_on="any"))
    sup = make_supervisor(registry, pg_pair.standby.dsn)
    _wait_states(sup, {"prim": "waiting", "stby": "running", "anywhere": "waiting"})
    assert sup.database_status()["role"] == "standby"
    assert sup.instance("prim") is None  # never started on a standby
    refused = sup.status()["anywhere"]
    assert "recovery" in refused["last_error"] and refused["restarts"] == 0
    # Refused by the role: it waits, a verify does not retry it against the same role.
    assert sup.verify(ratelimit=True).get(timeout=5)["anywhere"] == "waiting"
    assert sup.counters["restarts"] == sup.counters["restarts_rate_limited"] == 0
    assert sup.budget.remaining("anywhere") == 1

    pg_pair.standby.promote()
    _wait_states(sup, {"prim": "running", "stby": "waiting", "anywhere": "running"})
    assert sup.database_status()["role"] == "primary"
    assert sup.counters["role_changes"] == 1 and sup.counters["restarts"] == 0
    assert not sup.instance("stby").alive
    _notify(pg_pair.standby.dsn, "ch_prim", "on the promoted server")
    wait_for(lambda: _payloads("ch_prim") == ["on the promoted server"], 5)
    changed = [r.getMessage() for r in caplog.records
               if getattr(r, "action", None) == "monitor.identity_changed"]
    assert len(changed) == 1 and "timeline 1 -> 2" in changed[0], changed
    assert sup.database_status()["timeline"] == 2


@pytest.mark.timeout(60)
def test_second_supervisor_on_a_promoted_standby_starts_the_instances_there(
        registry, make_supervisor, pg_pair):
    registry.add(_spec("prim"))
    first = make_supervisor(registry, pg_pair.primary.dsn)
    _wait_states(first, {"prim": "running"})
    pg_pair.standby.promote()
    second = make_supervisor(registry, pg_pair.standby.dsn)
    _wait_states(second, {"prim": "running"})
    assert second.database_status()["role"] == "primary"
    assert second.instance("prim") is not first.instance("prim")
    _notify(pg_pair.standby.dsn, "ch_prim", "new")
    _notify(pg_pair.primary.dsn, "ch_prim", "old")
    wait_for(lambda: sorted(_payloads("ch_prim")) == ["new", "old"], 5)
    assert _states(first, "prim") == {"prim": "running"}


@pytest.mark.timeout(30)
def test_explicit_restart_of_a_refused_instance_tries_once_more(
        registry, make_supervisor, pg_pair):
    registry.add(_spec("anywhere", run_on="any"))
    sup = make_supervisor(registry, pg_pair.standby.dsn)
    _wait_states(sup, {"anywhere": "waiting"})
    refused = sup.instance("anywhere")
    assert sup.restart(["anywhere"]).get(timeout=5) == {"anywhere": "started"}
    wait_for(lambda: sup.instance("anywhere") is not refused, 5)
    _wait_states(sup, {"anywhere": "waiting"})
    assert sup.counters["deaths"] == 2 and sup.counters["restarts_rate_limited"] == 0


class RecordingQueue(gevent.queue.Queue):
    """The supervisor's request queue, remembering the kind of every request put."""

    def __init__(self):
        super().__init__()
        self.kinds = []

    def put(self, item, *args, **kwargs):
        self.kinds.append(item[0].kind)
        return super().put(item, *args, **kwargs)


@pytest.mark.timeout(30)
def test_failover_file_triggers_an_immediate_role_check_through_the_queue(
        registry, make_supervisor, pg_dsn, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="supervisor.actor")
    watched = tmp_path / "pgdata"
    watched.mkdir()
    requests = RecordingQueue()
    sup = make_supervisor(registry, pg_dsn, probe_interval=3600, watch_path=str(watched),
                          failover_debounce=0.05, queue=requests)
    wait_for(lambda: sup.database_status()["state"] == "up", 5)
    probes = sup.monitor.probes
    assert "role_check" not in requests.kinds
    created_at = time.monotonic()
    (watched / "standby.signal").write_text("")
    wait_for(lambda: sup.monitor.probes > probes, 10,
             message="no probe after standby.signal (probe_interval is an hour)")
    assert time.monotonic() - created_at < 10.0  # the file's event, not the hourly probe
    assert requests.kinds.count("role_check") == 1
    events = [r for r in caplog.records
              if getattr(r, "action", None) == "supervisor.failover_event"]
    assert len(events) == 1 and "standby.signal" in events[0].getMessage()
    # The server is still a primary: a file alone changes nothing.
    assert sup.database_status()["role"] == "primary"
    assert sup.counters["role_changes"] == 0
