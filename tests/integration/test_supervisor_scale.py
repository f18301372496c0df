"""The Supervisor stays responsive with 1,000 instances, and reports hub blocking.

The 1,000 instances are :class:`StandIn` objects: real Instance-shaped runtimes that need
no database connection (the supervisor's own monitor still probes a real Postgres)."""
import logging
import time

import gevent
import psycopg2
import pytest

from instances import InstanceSpec, Registry
from instances.queues import MemoryQueue
from instances.registry import dump
from supervisor import Supervisor
from supervisor.testing import wait_for

COUNT = 1000


class StandIn:
    """An instance without a database: alive from start() until stop() or kill(),
    connected at once; kill() reports the death from the hub as a crash would."""

    def __init__(self, spec, dsn, on_death=None, on_connection_lost=None, queue=None):
        self.spec, self.dsn, self.on_death = spec, dsn, on_death
        self.queue = queue if queue is not None else MemoryQueue(spec.queue_size)
        self.alive = self.connected = False
        self.exit = self.exception = None
        self.started_at = None

    @property
    def name(self):
        return self.spec.name

    def start(self):
        self.alive = self.connected = True
        self.exit = self.exception = None
        self.started_at = time.time()
        return self

    def stop(self, timeout=10.0):
        self.alive = self.connected = False
        self.exit = "normal"
        return True

    def kill(self):
        if self.alive:
            self.alive = self.connected = False
            self.exit, self.exception = "abnormal", RuntimeError("killed")
            gevent.get_hub().loop.run_callback(self.on_death, self)

    def apply(self, spec):
        self.spec = spec

    def heartbeat_age(self):
        return 0.0 if self.alive else None

    def health(self):
        return {"alive": self.alive, "connected": self.connected, "exit": self.exit,
                "heartbeat_age": self.heartbeat_age(), "backlog": self.queue.qsize(),
                "concurrency": 1 if self.alive else 0, "last_error": None}


def spin_handler(notification):
    """Hold the hub for 1 s without a single switch (a CPU-bound handler): long enough
    for gevent's monitor thread, which needs a CPU too, to look twice on a loaded machine."""
    spin(1.0)


def spin(seconds):
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@pytest.fixture
def make_supervisor():
    made = []

    def make(registry, dsn, **options):
        options = dict(dict(interval=3600, probe_interval=0.2, set_as_current=False),
                       **options)
        made.append(Supervisor(registry, dsn, **options))
        return made[-1].start()

    yield make
    for sup in made:
        sup.stop(timeout=5)


@pytest.mark.timeout(60)
def test_a_thousand_instances_answer_a_verify_within_a_second(tmp_path, make_supervisor,
                                                              pg_dsn):
    path = tmp_path / "big.json"
    path.write_text(dump([InstanceSpec(name="i%04d" % n, channels=("c%d" % n,),
                                       handler="tests.handlers:noop") for n in range(COUNT)], 1))
    registry = Registry(path)
    started_at = time.monotonic()
    sup = make_supervisor(registry, pg_dsn, instance_factory=StandIn)
    wait_for(lambda: len(sup.records) == COUNT
             and all(r.instance is not None and r.instance.alive for r in sup.records.values()),
             20)
    print("\nstarting %d instances: %.3f s" % (COUNT, time.monotonic() - started_at))
    for _ in range(3):
        asked = time.monotonic()
        outcome = sup.verify().get(timeout=5)
        took = time.monotonic() - asked
        print("verify of %d instances answered in %.3f s" % (COUNT, took))
        assert took < 1.0
        assert len(outcome) == COUNT and set(outcome.values()) == {"unchanged"}
    asked = time.monotonic()
    status = sup.status()
    print("status() of %d instances: %.3f s" % (COUNT, time.monotonic() - asked))
    assert {s["state"] for s in status.values()} == {"running"}
    # Deaths are still handled at once among a thousand.
    victim = sup.instance("i0500")
    victim.kill()
    wait_for(lambda: sup.instance("i0500") is not victim, 10)  # the check is hourly
    assert sup.counters["restarts"] == 1


@pytest.mark.timeout(30)
def test_a_greenlet_holding_the_hub_is_counted_and_logged_once(registry, make_supervisor,
                                                               pg_dsn, caplog):
    caplog.set_level(logging.WARNING, logger="supervisor.hubwatch")
    sup = make_supervisor(registry, pg_dsn)
    assert sup.hubwatch.max_blocking_time == Supervisor.max_blocking_time == 0.1
    blocks = sup.counters["hub_blocks"]
    gevent.spawn(spin, 1.0).join()  # the monitor thread must get a CPU twice in it
    wait_for(lambda: sup.counters["hub_blocks"] > blocks, 2)
    lines = [r for r in caplog.records if r.action == "hub.blocked"
             and r.getMessage().endswith(" spin")]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    assert lines[0].instance is None


@pytest.mark.timeout(30)
def test_a_hub_block_in_a_handler_is_attributed_to_its_instance(registry, make_supervisor,
                                                                pg_dsn, caplog):
    caplog.set_level(logging.WARNING, logger="supervisor.hubwatch")
    registry.add(InstanceSpec(name="spinner", channels=("spin",),
                              handler="tests.integration.test_supervisor_scale:spin_handler"))
    sup = make_supervisor(registry, pg_dsn)
    wait_for(lambda: sup.status()["spinner"]["state"] == "running", 10)
    wait_for(lambda: sup.status()["spinner"]["processed"] == 1, 5)  # the catch_up
    conn = psycopg2.connect(pg_dsn)
    try:
        conn.autocommit = True
        conn.cursor().execute("NOTIFY spin")
    finally:
        conn.close()
    wait_for(lambda: any(r.action == "hub.blocked" and r.instance == "spinner"
                         for r in caplog.records), 5)
    assert sup.counters["hub_blocks"] >= 1


@pytest.mark.timeout(10)
def test_without_the_hub_monitor_nothing_is_watched(registry, make_supervisor, pg_dsn):
    sup = make_supervisor(registry, pg_dsn, hub_monitor=False)
    assert sup.hubwatch.hub is None
