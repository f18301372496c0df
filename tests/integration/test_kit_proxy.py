"""FaultProxy forwards, blackholes (silently, without blocking the hub), resets with RST,
delays and heals."""
import time

import gevent
import psycogreen.gevent
import psycopg2
import pytest

from supervisor.testing import FaultProxy, wait_for


@pytest.fixture(autouse=True)
def cooperative_psycopg2():
    """Proxy tests interrupt queries with gevent.Timeout: psycopg2 must wait in gevent."""
    psycogreen.gevent.patch_psycopg()


@pytest.fixture
def proxy(pg_cluster):
    with FaultProxy(pg_cluster.port) as proxy:
        yield proxy


def _select_one(dsn, **kwargs):
    conn = psycopg2.connect(dsn, connect_timeout=5, **kwargs)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            return cur.fetchone()[0]
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_proxy_forwards_to_the_cluster(pg_cluster, proxy):
    dsn = proxy.dsn_for(pg_cluster, "postgres")
    assert "port=%d" % proxy.port in dsn and proxy.port != pg_cluster.port
    conn = psycopg2.connect(dsn, application_name="kit-proxied")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT application_name FROM pg_stat_activity "
                        "WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == ("kit-proxied",)
            cur.execute("SELECT repeat('x', 1000000)")  # more than one chunk
            assert len(cur.fetchone()[0]) == 1000000
        assert proxy.connections == 1
    finally:
        conn.close()
    wait_for(lambda: proxy.connections == 0, message="proxy kept a closed connection")


@pytest.mark.timeout(30)
def test_blackhole_hangs_queries_silently_and_heal_restores(pg_cluster, proxy):
    conn = psycopg2.connect(proxy.dsn_for(pg_cluster), application_name="kit-blackholed")
    ticks = []
    heartbeat = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    try:
        proxy.blackhole()
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.5):
                conn.cursor().execute("SELECT 1")
        assert len(ticks) >= 10, "the hub was blocked during the blackhole"
        with pytest.raises(gevent.Timeout):
            with gevent.Timeout(0.3):
                psycopg2.connect(proxy.dsn_for(pg_cluster)).close()
        # half-open silence: the server never heard that anything went wrong
        assert pg_cluster.execute("SELECT count(*) FROM pg_stat_activity "
                                  "WHERE application_name = 'kit-blackholed'") == [(1,)]
        proxy.heal()
        assert _select_one(proxy.dsn_for(pg_cluster)) == 1
    finally:
        heartbeat.kill()
        conn.close()


@pytest.mark.timeout(30)
def test_reset_cuts_current_connections_only(pg_cluster, proxy):
    conn = psycopg2.connect(proxy.dsn_for(pg_cluster), application_name="kit-reset")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
        assert proxy.reset() == 1
        with pytest.raises(psycopg2.OperationalError):
            conn.cursor().execute("SELECT 1")
        wait_for(lambda: not pg_cluster.execute(
            "SELECT 1 FROM pg_stat_activity WHERE application_name = 'kit-reset'"),
            message="the server kept the reset session")
        assert _select_one(proxy.dsn_for(pg_cluster)) == 1
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_delay_adds_latency_and_heal_removes_it(pg_cluster, proxy):
    conn = psycopg2.connect(proxy.dsn_for(pg_cluster))
    try:
        cur = conn.cursor()
        proxy.delay(100)
        started = time.monotonic()
        cur.execute("SELECT 1")
        assert time.monotonic() - started >= 0.2  # query and answer: one chunk each
        proxy.heal()
        # Below the delayed round trip (>= 0.2 s) at best of five: a loaded machine may
        # deschedule one round trip for that long, not each of five.
        healed = []
        for _ in range(5):
            started = time.monotonic()
            cur.execute("SELECT 1")
            healed.append(time.monotonic() - started)
        assert min(healed) < 0.19, healed
    finally:
        conn.close()
