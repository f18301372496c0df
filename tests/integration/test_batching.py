"""Batch handlers (``batch = N``) against a real Postgres: a drained read arrives in lists
of up to N in commit order after the catch_up alone; on a spool a poison notification goes
to ``errors/`` alone and the rest of its batch is acked; worker processes batch too."""
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from instances.spool.layout import stats
from supervisor.testing import wait_for

pytestmark = [pytest.mark.usefixtures("hub_heartbeat"), pytest.mark.timeout(60)]

HERE = "tests.integration.test_batching"
calls = []


def bulk(notifications):
    """Record each call's payloads; raise when one of them starts with ``bad``."""
    payloads = [n.payload if n.kind == "notify" else "catch_up" for n in notifications]
    calls.append(payloads)
    if any(p.startswith("bad") for p in payloads):
        raise ValueError("cannot index %r" % [p for p in payloads if p.startswith("bad")])


def _notify(dsn, payloads, channel="docs"):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT count(pg_notify(%s, p)) FROM unnest(%s::text[]) AS p",
                           (channel, list(payloads)))
    finally:
        conn.close()


def _spec(**fields):
    return InstanceSpec.from_dict(dict({"name": "bulk", "channels": ["docs"],
                                        "handler": HERE + ":bulk", "batch": 50}, **fields))


@pytest.fixture
def started(pg_dsn):
    del calls[:]
    made = []

    def start(spec):
        instance = Instance(spec, pg_dsn).start()
        made.append(instance)
        wait_for(lambda: instance.connected and calls, 10, message="connected, catch_up in")
        return instance

    yield start
    for instance in made:
        instance.stop(5)


def test_a_drained_read_arrives_in_lists_of_up_to_n_in_commit_order(pg_dsn, started):
    instance = started(_spec())
    payloads = ["doc%d" % i for i in range(500)]
    _notify(pg_dsn, payloads)
    wait_for(lambda: instance.health()["processed"] == 501, 20)
    assert calls[0] == ["catch_up"]
    assert [p for call in calls[1:] for p in call] == payloads
    assert max(len(call) for call in calls) == 50 and len(calls) < 100


def test_a_spool_sends_the_poison_one_to_errors_and_acks_the_rest(pg_dsn, started, tmp_path):
    spool = str(tmp_path / "spool")
    instance = started(_spec(queue={"spool": spool}, batch=20))
    payloads = ["doc%d" % i for i in range(20)]
    payloads[7] = "bad7"
    _notify(pg_dsn, payloads)
    wait_for(lambda: stats(spool)["errors"] == 1 and instance.health()["processed"] == 20, 20)
    handled = [call[0] for call in calls if len(call) == 1 and call[0] != "catch_up"]
    assert sorted(set(handled)) == sorted(payloads)  # each alone after the batch failed
    assert instance.health()["failed"] == 1
    wait_for(lambda: not any(stats(spool)["pending"].values()) and stats(spool)["incoming"] == 0,
             10, message="every message acked or set aside")


def test_worker_processes_make_their_own_batches(pg_dsn, tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    out.touch()
    monkeypatch.setenv("PGVISOR_TEST_OUT", str(out))
    spool = str(tmp_path / "spool")
    spec = InstanceSpec.from_dict({"name": "bulk", "channels": ["docs"],
                                   "handler": "tests.handlers:bulk_job", "batch": 25,
                                   "isolation": "process", "queue": {"spool": spool}})
    instance = Instance(spec, pg_dsn).start()
    try:
        wait_for(lambda: instance.connected, 20)
        _notify(pg_dsn, ["m%d" % i for i in range(48)] + ["bad"])
        wait_for(lambda: stats(spool)["errors"] == 1 and sum(
            int(line.split()[1]) for line in out.read_text().splitlines()
            if "catch_up" not in line) == 48, 30, message="48 handled, the bad one aside")
        sizes = [int(line.split()[1]) for line in out.read_text().splitlines()]
        assert max(sizes) > 1 and max(sizes) <= 25
    finally:
        instance.stop(10)
