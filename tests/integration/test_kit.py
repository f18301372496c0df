"""The throwaway Postgres kit does what it promises: lifecycle, DSNs, authentication,
backend termination, standby/promote, fault proxy, cleanup."""
import atexit
import os
import shutil
import socket
import sys
import time

import gevent
import gevent.subprocess
import psycogreen.gevent
import psycopg2
import pytest

from supervisor.testing import (
    FaultProxy,
    PostgresCluster,
    binaries,
    processes,
    pytest_plugin,
    wait_for,
)
from supervisor.testing.binaries import BinariesNotFound, ClusterError, find_bindir


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


@pytest.mark.timeout(60)
def test_cluster_survives_stop_fast_immediate_restart_and_kill(pg_private_cluster):
    cluster = pg_private_cluster
    port = cluster.port
    cluster.execute("CREATE TABLE kept (n int)")
    cluster.execute("INSERT INTO kept VALUES (1)")
    for action in (lambda: cluster.stop("fast"), lambda: cluster.stop("immediate"),
                   cluster.kill):
        pid = cluster.pid
        action()
        assert not cluster.running and not processes.alive(pid)
        with pytest.raises(psycopg2.OperationalError):
            _select_one(cluster.dsn)
        cluster.start()
        assert cluster.execute("SELECT n FROM kept") == [(1,)]
    pid = cluster.pid
    cluster.restart()
    assert cluster.pid != pid and cluster.execute("SELECT 1") == [(1,)]
    assert cluster.port == port != 5432


@pytest.mark.timeout(30)
def test_start_moves_to_another_port_when_its_port_was_taken():
    cluster = PostgresCluster(name="kit-port")
    try:
        with socket.socket() as squatter:
            squatter.bind(("127.0.0.1", cluster.port))
            squatter.listen()
            taken = cluster.port
            cluster.start()
        assert cluster.port not in (taken, 5432)
        assert _select_one(cluster.tcp_dsn) == 1
    finally:
        cluster.cleanup()


@pytest.mark.timeout(30)
def test_forked_child_exit_leaves_the_parents_cluster_alone(pg_private_cluster):
    pid = os.fork()
    if pid == 0:  # the child runs the exit hooks of a normal exit (finalizers are among them)
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    wait_for(lambda: os.waitpid(pid, os.WNOHANG)[0] == pid, message="child did not exit")
    assert pg_private_cluster.running and pg_private_cluster.execute("SELECT 1") == [(1,)]


@pytest.mark.timeout(30)
def test_kill_takes_the_server_processes_down_too(pg_private_cluster):
    conn = pg_private_cluster.connect()
    backend = conn.get_backend_pid()
    pg_private_cluster.kill()
    assert not processes.alive(backend)
    with pytest.raises(psycopg2.Error):
        conn.cursor().execute("SELECT 1")


@pytest.mark.timeout(30)
def test_dsn_dsn_dict_and_tcp_dsn_connect(pg_cluster):
    assert _select_one(pg_cluster.dsn) == 1
    assert _select_one(pg_cluster.tcp_dsn) == 1
    conn = psycopg2.connect(**pg_cluster.dsn_dict)
    try:
        assert conn.info.dbname == "postgres" and conn.info.user == "postgres"
        assert conn.info.host == pg_cluster.host and conn.info.port == pg_cluster.port
    finally:
        conn.close()
    assert "host=127.0.0.1" in pg_cluster.tcp_dsn


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tcp", [False, True], ids=["unix-socket", "tcp"])
def test_password_user_must_give_its_password(pg_cluster, tcp):
    pg_cluster.create_user("kit_pw_user", "s3cret 'pw'")
    try:
        with pytest.raises(psycopg2.OperationalError, match="password"):
            _select_one(pg_cluster.dsn_for(user="kit_pw_user", tcp=tcp))
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            _select_one(pg_cluster.dsn_for(user="kit_pw_user", tcp=tcp, password="wrong"))
        good = pg_cluster.dsn_for(user="kit_pw_user", tcp=tcp, password="s3cret 'pw'")
        assert _select_one(good) == 1
    finally:
        pg_cluster.drop_user("kit_pw_user")


@pytest.mark.timeout(30)
def test_terminate_backends_by_application_name(pg_database):
    cluster = pg_database.cluster
    victim = psycopg2.connect(pg_database.dsn, application_name="kit-victim")
    bystander = psycopg2.connect(pg_database.dsn, application_name="kit-bystander")
    try:
        assert cluster.terminate_backends(application_name="kit-victim") == 1
        with pytest.raises(psycopg2.OperationalError):
            victim.cursor().execute("SELECT 1")
        with bystander.cursor() as cur:
            cur.execute("SELECT 1")
        assert cluster.terminate_backends(application_name="kit-victim") == 0
    finally:
        victim.close()
        bystander.close()


@pytest.mark.timeout(30)
def test_pg_database_is_a_fresh_database_of_its_own(pg_database, pg_dsn):
    assert pg_dsn == pg_database.dsn and "dbname=%s" % pg_database.name in pg_dsn
    assert _select_one(pg_dsn) == 1
    assert pg_database.execute("SELECT current_database()") == [(pg_database.name,)]
    pg_database.execute("CREATE TABLE mine (n int)")
    assert pg_database.execute("SELECT count(*) FROM mine") == [(0,)]


@pytest.mark.timeout(30)
def test_drop_database_succeeds_while_sessions_are_open(pg_cluster):
    pg_cluster.create_database("kit dropped db")
    held = psycopg2.connect(pg_cluster.dsn_for("kit dropped db"))
    try:
        pg_cluster.drop_database("kit dropped db")
        assert not pg_cluster.execute(
            "SELECT 1 FROM pg_database WHERE datname = 'kit dropped db'")
    finally:
        held.close()


@pytest.mark.timeout(60)
def test_standby_streams_and_promote_makes_it_writable(pg_pair):
    primary, standby = pg_pair.primary, pg_pair.standby
    assert standby.is_in_recovery() and not primary.is_in_recovery()
    primary.execute("CREATE TABLE replicated (n int)")
    primary.execute("INSERT INTO replicated VALUES (42)")

    def replicated():
        try:
            return standby.execute("SELECT n FROM replicated")
        except psycopg2.errors.UndefinedTable:
            return None
    assert wait_for(replicated, timeout=10, message="row not replicated") == [(42,)]
    with pytest.raises(psycopg2.errors.ReadOnlySqlTransaction):
        standby.execute("INSERT INTO replicated VALUES (1)")
    standby.promote()
    assert not standby.is_in_recovery()
    standby.execute("INSERT INTO replicated VALUES (7)")
    assert standby.execute("SELECT n FROM replicated ORDER BY n") == [(7,), (42,)]


def _shm_ids():
    with open("/proc/sysvipc/shm", encoding="ascii") as f:
        return {line.split()[1] for line in f.read().splitlines()[1:]}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("crashed", [False, True], ids=["running", "killed"])
def test_cleanup_removes_directory_process_and_shared_memory(crashed):
    cluster = PostgresCluster(name="kit-cleanup").start()
    pid, tempdir = cluster.pid, cluster.host
    with open(os.path.join(cluster.datadir, "postmaster.pid"), encoding="ascii") as f:
        shmid = f.read().splitlines()[6].split()[1]
    assert shmid in _shm_ids()
    if crashed:
        cluster.kill()
    cluster.cleanup()
    assert not processes.alive(pid) and not os.path.exists(tempdir)
    assert shmid not in _shm_ids()
    cluster.cleanup()  # idempotent
    assert cluster.removed and "removed" in repr(cluster)
    with pytest.raises(ClusterError, match="cleaned up"):
        cluster.start()


@pytest.mark.timeout(30)
def test_context_manager_cleans_up_when_the_body_fails():
    with pytest.raises(ZeroDivisionError):
        with PostgresCluster(name="kit-ctx") as cluster:
            pid, tempdir = cluster.pid, cluster.host
            raise ZeroDivisionError("the test body failed")
    assert not processes.alive(pid) and not os.path.exists(tempdir)


@pytest.mark.timeout(10)
def test_explicit_bindir_without_programs_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(BinariesNotFound, match="does not contain"):
        find_bindir(str(tmp_path))
    monkeypatch.setenv("PGVISOR_PG_BINDIR", str(tmp_path))
    with pytest.raises(BinariesNotFound, match="PGVISOR_PG_BINDIR"):
        PostgresCluster()


def _fake_bindir(path):
    path.mkdir(parents=True)
    for name in binaries.REQUIRED:
        (path / name).write_text("#!/bin/sh\n")
        (path / name).chmod(0o755)
    return str(path)


@pytest.mark.timeout(10)
def test_discovery_picks_the_newest_debian_version_numerically(tmp_path, monkeypatch):
    for version in ("9.6", "16", "10"):
        _fake_bindir(tmp_path / version / "bin")
    monkeypatch.delenv("PGVISOR_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config
    monkeypatch.setattr(binaries, "_discovered", [])
    monkeypatch.setattr(binaries, "DEBIAN_GLOB", str(tmp_path / "*" / "bin"))
    assert find_bindir() == str(tmp_path / "16" / "bin")
    assert find_bindir(_fake_bindir(tmp_path / "mine")) == str(tmp_path / "mine")


@pytest.mark.timeout(10)
def test_missing_binaries_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("PGVISOR_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "_discovered", [])
    monkeypatch.setattr(binaries, "DEBIAN_GLOB", str(tmp_path / "*" / "bin"))
    with pytest.raises(BinariesNotFound, match="apt-get install postgresql.*PGVISOR_PG_BINDIR"):
        find_bindir()


@pytest.mark.timeout(10)
def test_fixtures_fail_rather_than_skip_without_binaries(tmp_path, monkeypatch):
    monkeypatch.setenv("PGVISOR_PG_BINDIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="PGVISOR_PG_BINDIR"):
        pytest_plugin._cluster("kit-no-binaries")


@pytest.mark.timeout(10)
def test_wait_for_returns_the_value_or_raises_at_the_deadline():
    calls = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3 and "done") == "done"
    with pytest.raises(AssertionError, match=r"never true: not true within 0.05s"):
        wait_for(lambda: 0, timeout=0.05, message="never true")


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
        started = time.monotonic()
        cur.execute("SELECT 1")
        assert time.monotonic() - started < 0.1
    finally:
        conn.close()


_ABANDON = """
import os, signal, sys
from supervisor.testing import PostgresCluster, datadir
cluster = PostgresCluster(name="kit-abandoned").start()
template = os.path.dirname(datadir._templates[cluster.bindir])
print(cluster.pid, cluster.host, template, flush=True)
if sys.argv[1] == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ending", ["normal-exit", "sigkill"])
def test_no_cluster_outlives_the_process_that_made_it(ending, tmp_path):
    script = tmp_path / "abandon.py"
    script.write_text(_ABANDON)
    proc = gevent.subprocess.run([sys.executable, str(script), ending],
                                 stdout=gevent.subprocess.PIPE, timeout=50)
    pid, tempdir, template = proc.stdout.split()
    wait_for(lambda: not processes.alive(int(pid)), timeout=10,
             message="postmaster %s outlived its process" % int(pid))
    if ending == "normal-exit":
        assert proc.returncode == 0
        assert not os.path.exists(tempdir) and not os.path.exists(template)
    else:  # SIGKILL leaves the directories: nothing can remove them
        shutil.rmtree(tempdir)
        shutil.rmtree(template)
