"""The throwaway Postgres kit does what it promises: lifecycle, DSNs, authentication,
backend termination, standby/promote, cleanup (the proxy: test_kit_proxy.py)."""
import atexit
import os
import pwd
import shutil
import socket
import sys

import gevent
import gevent.os
import gevent.subprocess
import psycopg2
import pytest

from supervisor.testing import ClusterError, PostgresCluster, processes, wait_for


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
    pid = gevent.os.fork()  # gevent's: its child watcher would reap a plain fork's child
    if pid == 0:  # the child runs the exit hooks of a normal exit (finalizers are among them)
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    assert gevent.os.waitpid(pid, 0)[1] == 0
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


# -- nobody else is trusted ------------------------------------------------------------------

def _psql_as(user, cluster, host, extra_env=None):
    """``psql -w`` as the OS ``user`` (None: ourselves) to the superuser; CompletedProcess."""
    psql = os.path.join(cluster.bindir, "psql")
    args = [psql, "-w", "-X", "-h", host, "-p", str(cluster.port), "-U", "postgres",
            "-d", "postgres", "-Atc", "SELECT 1"]
    env = {"PATH": "/usr/bin:/bin", "PGCONNECT_TIMEOUT": "5", **(extra_env or {})}
    options = {"user": user, "group": pwd.getpwnam(user).pw_gid} if user else {}
    return gevent.subprocess.run(args, env=env, capture_output=True, text=True, timeout=30,
                                 cwd="/", **options)


@pytest.mark.timeout(60)
def test_no_password_no_superuser_over_tcp(pg_cluster):
    refused = _psql_as(None, pg_cluster, "127.0.0.1")
    assert refused.returncode != 0 and "password" in refused.stderr, refused
    from supervisor.testing.datadir import SUPERUSER_PASSWORD
    allowed = _psql_as(None, pg_cluster, "127.0.0.1", {"PGPASSWORD": SUPERUSER_PASSWORD})
    assert allowed.stdout.strip() == "1", allowed.stderr
    assert _select_one(pg_cluster.tcp_dsn) == 1  # the kit's TCP DSNs carry it
    assert _select_one(pg_cluster.dsn) == 1      # and on the socket we are peer-mapped


@pytest.mark.timeout(60)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another local user")
def test_another_local_user_cannot_be_the_superuser(pg_cluster):
    """While a kit cluster runs, another account on the machine (here: nobody) reaches the
    socket (its directory is 0711) and 127.0.0.1, but is refused both ways: it cannot
    ``COPY ... TO PROGRAM`` as the server account."""
    for host in (pg_cluster.host, "127.0.0.1"):
        refused = _psql_as("nobody", pg_cluster, host)
        assert refused.returncode != 0, (host, refused.stdout)
        assert "authentication failed" in refused.stderr or "password" in refused.stderr, \
            refused.stderr
