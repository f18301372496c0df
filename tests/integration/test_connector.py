"""PostgresConnector against a real server: connections, roles, parameters, cooperation,
redaction, LISTEN/NOTIFY."""
import codecs
import logging
import socket
import time

import gevent
import psycopg2.extensions
import psycopg2.extras
import pytest

from instances.connectors import FAST_UTF8, PostgresConnector
from instances.dsn import quote_ident
from instances.exceptions import ConnectionLost, FatalDatabaseError
from supervisor.testing import HubHeartbeat, wait_for

HOSTILE = 'a"; DROP TABLE victim; --'


@pytest.fixture
def connector(pg_dsn):
    connector = PostgresConnector(pg_dsn, application_name="connector-test")
    yield connector
    connector.disconnect()


def backend_pid(connector):
    return connector.execute("SELECT pg_backend_pid()")[0][0]


def test_connects_lazily_and_reconnects_after_disconnect(connector):
    assert not connector.connected
    first = backend_pid(connector)
    assert connector.connected and connector.pg_connection.autocommit
    connector.disconnect()
    connector.disconnect()  # idempotent
    assert not connector.connected
    assert backend_pid(connector) != first


@pytest.mark.timeout(30)
def test_terminated_backend_raises_connection_lost_then_reconnects(connector, pg_database):
    first = backend_pid(connector)
    assert pg_database.cluster.terminate_backends(application_name="connector-test") == 1
    with pytest.raises(ConnectionLost):
        connector.execute("SELECT 1")
    assert not connector.connected
    assert backend_pid(connector) != first


def test_autocommit_makes_each_statement_visible_at_once(connector, pg_database):
    connector.execute("CREATE TABLE t (i int)")
    connector.execute("INSERT INTO t VALUES (%s)", (7,))
    assert pg_database.execute("SELECT i FROM t") == [(7,)]


def test_rows_are_dict_rows_and_statements_without_result_give_none(connector):
    row = connector.execute("SELECT 1 AS a, 'x' AS b")[0]
    assert (row["a"], row["b"], row[0]) == (1, "x", 1)
    assert connector.execute("SET search_path = public") is None
    cursor = connector.pg_cursor
    assert isinstance(cursor, psycopg2.extras.DictCursor)
    cursor.close()


@pytest.mark.timeout(90)
def test_role_and_identity_on_primary_standby_and_after_promotion(pg_pair):
    primary = PostgresConnector(pg_pair.primary.dsn)
    standby = PostgresConnector(pg_pair.standby.dsn)
    shared = primary.pg_connection
    assert primary.is_server_master() is True
    assert standby.is_server_master() is False
    assert primary.pg_connection is shared and not shared.closed  # own connection used
    assert not standby.connected
    mine, theirs = primary.server_identity(), standby.server_identity()
    assert mine["system_identifier"] == theirs["system_identifier"]
    assert mine["system_identifier"].isdigit()
    assert (mine["in_recovery"], theirs["in_recovery"]) == (False, True)
    assert mine["timeline"] == theirs["timeline"] == 1
    pg_pair.standby.promote()
    assert standby.is_server_master() is True
    promoted = standby.server_identity()
    assert (promoted["in_recovery"], promoted["timeline"]) == (False, 2)
    primary.disconnect()


def test_keepalive_timeout_and_name_reach_libpq(connector):
    params = connector.pg_connection.get_dsn_parameters()
    assert {k: params.get(k) for k in ("connect_timeout", "keepalives", "keepalives_idle",
                                       "keepalives_interval", "keepalives_count",
                                       "application_name")} == {
        "connect_timeout": "5", "keepalives": "1", "keepalives_idle": "10",
        "keepalives_interval": "5", "keepalives_count": "3",
        "application_name": "connector-test"}


def test_tcp_socket_has_the_keepalive_options(pg_database):
    connector = PostgresConnector(pg_database.tcp_dsn)
    with socket.fromfd(connector.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 10
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 5
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 3
    connector.disconnect()


def test_application_name_is_visible_in_pg_stat_activity(connector, pg_database):
    pid = backend_pid(connector)
    assert pg_database.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)) == \
        [("connector-test",)]


@pytest.mark.timeout(20)
def test_connect_timeout_bounds_a_server_that_never_answers():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts; nobody ever answers
    connector = PostgresConnector(
        "host=127.0.0.1 port=%d dbname=x user=u password=pw sslmode=disable"
        % silent.getsockname()[1], connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(ConnectionLost) as info:
        connector.fileno()
    assert 0.9 < time.monotonic() - started < 3
    assert "timed out" in str(info.value) and "pw" not in str(info.value).split("password")[1]
    silent.close()


@pytest.mark.timeout(20)
def test_a_waiting_query_lets_other_greenlets_run(connector):
    with HubHeartbeat() as beat:
        connector.execute("SELECT pg_sleep(2)")
    # Blocking would show one stall of 2 s; the margin absorbs a loaded 2-core CI machine.
    assert beat.ticks > 100 and beat.max_stall < 0.25


@pytest.mark.timeout(30)
def test_password_never_shown_in_repr_logs_or_errors(pg_database, caplog):
    cluster = pg_database.cluster
    cluster.create_user("pgv_redact", "Corr3ct-h0rse")
    good = PostgresConnector(pg_database.dsn_for(user="pgv_redact", password="Corr3ct-h0rse"))
    assert good.execute("SELECT current_user")[0][0] == "pgv_redact"
    bad_dsns = [pg_database.dsn_for(user="pgv_redact", password="Wr0ng-h0rse"),
                "host=127.0.0.1 port=1 dbname=x user=u password=Wr0ng-h0rse",
                "host=127.0.0.1 password=Wr0ng h0rse port"]
    errors = []
    with caplog.at_level(logging.DEBUG):
        for dsn in bad_dsns:
            with pytest.raises((FatalDatabaseError, ConnectionLost)) as info:
                PostgresConnector(dsn).execute("SELECT 1")
            errors.append(info.value)
    shown = [repr(good), str(good), caplog.text] + [str(e) for e in errors] + \
        [r.getMessage() for r in caplog.records]
    for text in shown:
        for secret in ("Corr3ct", "Wr0ng", "h0rse"):
            assert secret not in text
    assert any(r.action == "connector.connect_failed" for r in caplog.records)
    good.disconnect()


@pytest.mark.timeout(30)
def test_listen_notify_round_trip_with_a_hostile_channel_name(connector, pg_dsn):
    connector.execute("CREATE TABLE victim (i int)")
    connector.listen([HOSTILE, "plain"])
    sender = PostgresConnector(pg_dsn, application_name="sender")
    sender.notify(HOSTILE, "payload ü")
    sender.notify("plain")
    received = []
    wait_for(lambda: received.extend(connector.poll_notifies()) or len(received) >= 2, 10)
    pid = backend_pid(sender)
    assert [(n.pid, n.channel, n.payload) for n in received] == [
        (pid, HOSTILE, "payload ü"), (pid, "plain", "")]
    assert connector.pg_connection.notifies == []
    connector.unlisten([HOSTILE])
    sender.notify(HOSTILE, "not heard")
    sender.notify("plain", "marker")
    received = []
    wait_for(lambda: received.extend(connector.poll_notifies()) or received, 10)
    assert [(n.pid, n.channel, n.payload) for n in received] == [(pid, "plain", "marker")]
    assert connector.execute("SELECT count(*) FROM victim")[0][0] == 0  # table still there
    connector.unlisten()
    assert connector.execute("SELECT count(*) FROM pg_listening_channels()")[0][0] == 0
    sender.disconnect()


@pytest.mark.timeout(30)
def test_notifications_decode_utf8_in_c_and_the_codec_map_is_put_back(connector, pg_dsn,
                                                                       monkeypatch):
    """The connector's connections decode notification text with the C UTF-8 decoder (no
    Python codec wrapper per channel and payload), the same text as psycopg2's own codec;
    psycopg2's encoding map is as it was once the connect is over."""
    before = dict(psycopg2.extensions.encodings)
    seen, real_connect = [], psycopg2.connect

    def connect(**params):  # what psycopg2 reads while it sets the connection up
        seen.append(psycopg2.extensions.encodings["UTF8"])
        return real_connect(**params)

    monkeypatch.setattr(psycopg2, "connect", connect)
    channel, payload = "kanäl ✓", "payload ü ß 漢字 🎉 " + "é" * 500
    connector.listen([channel])
    assert seen == [FAST_UTF8] and psycopg2.extensions.encodings == before
    plain = real_connect(pg_dsn)  # psycopg2's own codec, for comparison
    plain.autocommit = True
    plain.cursor().execute("LISTEN %s" % quote_ident(channel))
    PostgresConnector(pg_dsn, application_name="sender").notify(channel, payload)
    received = []
    wait_for(lambda: received.extend(connector.poll_notifies()) or received, 10)
    wait_for(lambda: plain.poll() or plain.notifies, 10)
    assert [(n.channel, n.payload) for n in received] == [(channel, payload)]
    assert [(n.channel, n.payload) for n in plain.notifies] == [(channel, payload)]
    plain.close()
    used = codecs.lookup(FAST_UTF8)
    assert used.decode is codecs.utf_8_decode and used.encode is codecs.utf_8_encode


@pytest.mark.timeout(30)
def test_poll_notifies_on_a_terminated_backend_raises_connection_lost(connector, pg_database):
    connector.listen(["c"])
    fd = connector.fileno()
    pg_database.cluster.terminate_backends(application_name="connector-test")
    lost = []

    def poll_as_the_listener_does():
        # The server's FATAL arrives first (psycopg2 files it as a notice, poll() succeeds);
        # the socket stays readable and the next poll() sees the closed connection.
        gevent.socket.wait_read(fd, timeout=5)
        try:
            assert connector.poll_notifies() == []
        except ConnectionLost as exc:
            lost.append(exc)
        return lost

    wait_for(poll_as_the_listener_does, 10)
    assert not connector.connected
    connector.listen(["c"])  # usable again
    assert connector.poll_notifies() == []
