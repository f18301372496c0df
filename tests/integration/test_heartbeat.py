"""Liveness (issue 16, items 3 and 11). Slow is not hung: an instance whose handler runs
longer than the listener's ping period but within ``handler_timeout`` keeps a fresh
heartbeat; one whose handler overran ``handler_timeout`` and ignores the interrupt stops
beating. The supervisor answers the watchdog's ping through its actor loop."""
import gevent
import gevent.event
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance
from instances.listeners import PostgresNotificationListener
from supervisor import Supervisor
from supervisor.testing import wait_for

pytestmark = pytest.mark.usefixtures("hub_heartbeat")

state = {"release": None, "started": 0, "interrupts": 0}


def slow(notification):
    """Run 4 s cooperatively (the supervisor's check would see no handler start meanwhile)."""
    if notification.kind == "notify":
        state["started"] += 1
        gevent.sleep(4)


def deaf(notification):
    """Swallow every interrupt until the test releases it."""
    if notification.kind != "notify":
        return
    state["started"] += 1
    while not state["release"].is_set():
        try:
            state["release"].wait()
        except BaseException:  # noqa: B036 -- the point of this handler
            state["interrupts"] += 1


def _run(pg_dsn, handler, handler_timeout, connection="shared"):
    state.update(release=gevent.event.Event(), started=0, interrupts=0)
    spec = InstanceSpec.from_dict({"name": "beat", "channels": ["beat"],
                                   "handler": "tests.integration.test_heartbeat:" + handler,
                                   "handler_timeout": handler_timeout,
                                   "connection": connection})
    instance = Instance(spec, pg_dsn).start()
    wait_for(lambda: instance.connected, 10, message="never connected")
    conn = psycopg2.connect(pg_dsn)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT pg_notify('beat', 'x')")
    conn.close()
    wait_for(lambda: state["started"], 10, message="the handler never started")
    return instance


def _ages(instance, seconds, step=0.1):
    ages = []
    for _ in range(int(seconds / step)):
        gevent.sleep(step)
        ages.append(instance.heartbeat_age())
    return ages


@pytest.mark.timeout(30)
@pytest.mark.parametrize("connection", ["shared", "own"])
def test_a_slow_handler_within_handler_timeout_keeps_the_instance_beating(pg_dsn,
                                                                         connection):
    instance = _run(pg_dsn, "slow", 30, connection)
    try:
        ages = _ages(instance, 3.5)  # the handler runs all that time
        assert instance.pool.busy_since is not None
        # An own listener beats at least every ping_interval (2 s), a shared notifier is
        # judged by itself; a pool judged by its newest handler start would reach 3.5 s.
        limit = PostgresNotificationListener.ping_interval + 1.0
        assert max(ages) < limit, ages
    finally:
        instance.stop(5)


@pytest.mark.timeout(30)
def test_a_handler_deaf_to_its_timeout_stops_the_heartbeat(pg_dsn):
    instance = _run(pg_dsn, "deaf", 0.5)
    try:
        wait_for(lambda: state["interrupts"], 5, message="the handler was never interrupted")
        wait_for(lambda: instance.heartbeat_age() > 3.0, 10,
                 message="a hung pool kept a fresh heartbeat")
    finally:
        state["release"].set()
        instance.stop(5)


@pytest.mark.timeout(30)
def test_the_supervisor_answers_a_ping_through_its_actor_loop_only_while_it_runs(
        registry, pg_dsn):
    """What the systemd watchdog asks before each WATCHDOG=1 (issue 16, item 11)."""
    sup = Supervisor(registry, pg_dsn, interval=3600, probe_interval=0.2,
                     set_as_current=False)
    sup.start()
    try:
        assert sup.ping().get(timeout=10) == {}
    finally:
        sup.stop(timeout=5)
    late = sup.ping()
    late.join(0.5)
    assert not late.ready()  # a stopped loop answers nothing: the pings stop
    late.kill()

