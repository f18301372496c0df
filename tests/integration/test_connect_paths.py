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
