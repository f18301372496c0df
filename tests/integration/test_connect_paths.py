"""How the connector reaches the server: host names resolved off the hub and handed to
libpq as ``hostaddr`` (``host`` kept), an object-form ``dsn`` on a spec, and a timed-out
connect that leaves no socket behind (issue 16, items 1, 12 and 15)."""
import gc
import os

import gevent
import psycopg2
import psycopg2.extensions
import pytest

from instances import InstanceSpec
from instances.connectors import PostgresConnector
from instances.exceptions import ConnectionLost
from instances.instance import Instance
from supervisor.testing import FaultProxy, wait_for
from tests import handlers


@pytest.mark.usefixtures("hub_heartbeat")
def test_a_host_name_reaches_libpq_as_hostaddr_with_the_name_kept(pg_database):
    params = psycopg2.extensions.parse_dsn(pg_database.tcp_dsn)
    assert params["host"] == "127.0.0.1"
    params["host"] = "localhost"
    connector = PostgresConnector(params, application_name="resolve-test")
    try:
        connector.execute("SELECT 1")
        info = connector.pg_connection.info
        assert info.host == "localhost"  # what TLS verifies and ~/.pgpass matches
        assert connector.pg_connection.get_dsn_parameters()["hostaddr"] in (
            "127.0.0.1", "::1")
    finally:
        connector.disconnect()


def test_a_name_that_does_not_resolve_is_connection_lost_naming_the_host():
    connector = PostgresConnector("host=nowhere.invalid dbname=x connect_timeout=5")
    with pytest.raises(ConnectionLost, match="cannot resolve host nowhere.invalid"):
        connector.execute("SELECT 1")


@pytest.mark.usefixtures("hub_heartbeat")
def test_an_instance_with_an_object_form_dsn_runs(pg_database):
    """Issue 16, item 12: the table form of ``dsn`` (concepts.rst) parked the instance."""
    handlers.reset()
    fields = dict(pg_database.cluster.dsn_dict, database=pg_database.name)
    spec = InstanceSpec.from_dict({"name": "objdsn", "channels": ["c"],
                                   "handler": "tests.handlers:record", "dsn": fields})
    instance = Instance(spec, "dbname=unused_default").start()
    try:
        wait_for(lambda: instance.connected, 10, message="never connected: %s" % (
            instance.health()["last_error"],))
        pg_database.execute("SELECT pg_notify('c', 'hello')")
        wait_for(lambda: [n.payload for n in handlers.seen if n.kind == "notify"] == ["hello"],
                 10)
    finally:
        instance.stop(5)


def _sockets_to(port):
    """This process's TCP sockets whose peer is 127.0.0.1:``port`` (from /proc)."""
    inodes = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(path) as table:
            for line in list(table)[1:]:
                fields = line.split()
                if int(fields[2].rsplit(":", 1)[1], 16) == port:
                    inodes.add(fields[9])
    mine = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in inodes:
            mine += 1
    return mine


@pytest.mark.usefixtures("hub_heartbeat")
@pytest.mark.timeout(60)
def test_timed_out_connects_leave_no_socket_behind(pg_cluster):
    """Issue 16, item 15: ten connects into a blackhole, each timing out, their errors
    kept (as a listener keeps ``last_error``): no socket of ours stays open, without
    waiting for a gc pass."""
    with FaultProxy(pg_cluster.port) as proxy:
        proxy.blackhole()
        connector = PostgresConnector(proxy.dsn_for(pg_cluster), connect_timeout=1)
        kept = []
        gc.disable()  # the sockets must close deterministically, not by a collection
        try:
            for _attempt in range(10):
                with pytest.raises(ConnectionLost) as caught:
                    connector.execute("SELECT 1")
                kept.append(caught.value)
                assert _sockets_to(proxy.port) == 0, "a timed-out connect left its socket"
        finally:
            gc.enable()
        assert all("timed out" in str(error) for error in kept)


@pytest.mark.timeout(60)
def test_a_connect_cut_by_an_outer_timeout_closes_its_socket_too(pg_cluster):
    """The monitor's own deadline (a gevent.Timeout around the probe) may fire first."""
    with FaultProxy(pg_cluster.port) as proxy:
        proxy.blackhole()
        connector = PostgresConnector(proxy.dsn_for(pg_cluster), connect_timeout=30)
        gc.disable()
        try:
            for _attempt in range(3):
                with pytest.raises(gevent.Timeout):
                    with gevent.Timeout(0.3):
                        connector.execute("SELECT 1")
                assert _sockets_to(proxy.port) == 0
        finally:
            gc.enable()


# -- multi-host DSNs: one host at a time --------------------------------------------------

def _closed_port():
    """A TCP port of 127.0.0.1 nothing listens on (bound, then released)."""
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_hosts(first_port, cluster, **extra):
    """libpq keywords reaching ``cluster`` over TCP as the second of two hosts."""
    params = psycopg2.extensions.parse_dsn(cluster.dsn_for("postgres", tcp=True))
    params.update(dict({"host": "127.0.0.1,127.0.0.1",
                        "port": "%d,%d" % (first_port, cluster.port)}, **extra))
    return params


@pytest.mark.usefixtures("hub_heartbeat")
@pytest.mark.timeout(60)
@pytest.mark.parametrize("attrs", [None, "read-write", "prefer-standby"])
def test_a_first_host_that_accepts_then_closes_passes_the_turn_to_the_next(pg_cluster,
                                                                          attrs):
    """A proxy in front of a dead primary accepts TCP and closes during startup: libpq
    alone fails the whole connect there; the connector goes on to the second host."""
    extra = {"target_session_attrs": attrs} if attrs else {}
    with FaultProxy(_closed_port()) as dead_primary:
        connector = PostgresConnector(_two_hosts(dead_primary.port, pg_cluster, **extra),
                                      connect_timeout=5)
        try:
            assert connector.execute("SELECT 1") == [[1]]
            assert connector.pg_connection.info.port == pg_cluster.port
        finally:
            connector.disconnect()
        # libpq given both hosts at once does not get there (what the connector avoids)
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(**_two_hosts(dead_primary.port, pg_cluster, **extra)).close()


@pytest.mark.usefixtures("hub_heartbeat")
@pytest.mark.timeout(60)
def test_each_host_gets_its_own_connect_timeout(pg_cluster):
    """A first host that accepts and then says nothing (a blackhole) costs its
    connect_timeout, then the second host answers: the deadline is per host."""
    with FaultProxy(pg_cluster.port) as silent:
        silent.blackhole()
        connector = PostgresConnector(_two_hosts(silent.port, pg_cluster), connect_timeout=1)
        try:
            assert connector.execute("SELECT 1") == [[1]]
            assert connector.pg_connection.info.port == pg_cluster.port
        finally:
            connector.disconnect()
            silent.heal()


@pytest.mark.timeout(60)
def test_when_no_host_answers_the_error_names_each_host(pg_cluster):
    with FaultProxy(_closed_port()) as first:
        connector = PostgresConnector(_two_hosts(first.port, pg_cluster, port="%d,%d" % (
            first.port, _closed_port())), connect_timeout=2)
        with pytest.raises(ConnectionLost) as caught:
            connector.execute("SELECT 1")
    message = str(caught.value)
    assert message.startswith("no host of ") and message.count("127.0.0.1:") == 2, message


@pytest.mark.timeout(120)
def test_read_write_skips_a_standby_listed_first(pg_pair):
    params = psycopg2.extensions.parse_dsn(pg_pair.primary.dsn_for("postgres", tcp=True))
    params.update(host="127.0.0.1,127.0.0.1", target_session_attrs="read-write",
                  port="%d,%d" % (pg_pair.standby.port, pg_pair.primary.port))
    connector = PostgresConnector(params, connect_timeout=5)
    try:
        assert connector.is_server_master()
        assert connector.pg_connection.info.port == pg_pair.primary.port
    finally:
        connector.disconnect()
