"""Each class of database failure, provoked against a real server, is translated to its
pgvisor error and mapped by CommonErrorStrategy to its action (table-driven)."""
import gevent
import pytest

from instances.connectors import PostgresConnector
from instances.exceptions import ConnectionLost, DatabaseError, FatalDatabaseError, RoleChanged
from instances.strategies import CommonErrorStrategy
from supervisor.testing import wait_for

APP = "error-class-test"


def server_stopped(cluster, tcp):
    cluster.stop()
    PostgresConnector(cluster.tcp_dsn if tcp else cluster.dsn).execute("SELECT 1")


def unix_socket_server_stopped(pg_private_cluster):
    server_stopped(pg_private_cluster, tcp=False)


def tcp_server_stopped(pg_private_cluster):
    server_stopped(pg_private_cluster, tcp=True)


def backend_terminated(pg_database):
    connector = PostgresConnector(pg_database.dsn, application_name=APP)
    connector.execute("SELECT 1")
    assert pg_database.cluster.terminate_backends(application_name=APP) == 1
    connector.execute("SELECT 1")


def fast_shutdown_during_a_query(pg_private_cluster):
    connector = PostgresConnector(pg_private_cluster.dsn, application_name=APP)

    def query_returning_its_error():
        try:
            connector.execute("SELECT pg_sleep(60)")
        except DatabaseError as exc:
            return exc

    query = gevent.spawn(query_returning_its_error)
    wait_for(lambda: pg_private_cluster.execute(
        "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND state = 'active'",
        (APP,)), 10)
    pg_private_cluster.stop("fast")
    # libpq reports the server's FATAL 57P01 together with the closed socket, as text only:
    # psycopg2 gives no pgcode, so this is classified by class (OperationalError), not code.
    raise query.get(timeout=10)


def wrong_password(pg_database):
    pg_database.cluster.create_user("pgv_wrong_pw", "the-right-one")
    PostgresConnector(pg_database.dsn_for(user="pgv_wrong_pw", password="not-it")) \
        .execute("SELECT 1")


def unknown_database(pg_cluster):
    PostgresConnector(pg_cluster.dsn_for("no_such_database")).execute("SELECT 1")


def bad_dsn_syntax(pg_cluster):
    PostgresConnector(pg_cluster.dsn + " password=half quoted'").execute("SELECT 1")


def listen_on_standby(pg_pair):
    PostgresConnector(pg_pair.standby.dsn).listen(["events"])


def insert_on_standby(pg_pair):
    pg_pair.primary.execute("CREATE TABLE t (i int)")
    wait_for(lambda: pg_pair.standby.execute("SELECT to_regclass('t')")[0][0], 20)
    PostgresConnector(pg_pair.standby.dsn).execute("INSERT INTO t VALUES (1)")


def syntax_error(pg_database):
    PostgresConnector(pg_database.dsn).execute("SELEC 1")


CASES = [
    # provoke(fixture)             translated class    sqlstate  strategy action
    (unix_socket_server_stopped, ConnectionLost, None, "reconnect"),
    (tcp_server_stopped, ConnectionLost, None, "reconnect"),
    (backend_terminated, ConnectionLost, None, "reconnect"),
    (fast_shutdown_during_a_query, ConnectionLost, None, "reconnect"),
    (wrong_password, FatalDatabaseError, "28P01", "fatal"),
    (unknown_database, FatalDatabaseError, "3D000", "fatal"),
    (bad_dsn_syntax, FatalDatabaseError, None, "fatal"),
    (listen_on_standby, RoleChanged, "25006", "role_changed"),
    (insert_on_standby, RoleChanged, "25006", "role_changed"),
    (syntax_error, DatabaseError, "42601", "retry"),
]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("provoke, cls, sqlstate, action", CASES,
                         ids=[case[0].__name__ for case in CASES])
def test_each_failure_class_is_translated_and_handled(request, provoke, cls, sqlstate, action):
    fixture = provoke.__code__.co_varnames[0]
    with pytest.raises(DatabaseError) as info:
        provoke(request.getfixturevalue(fixture))
    error = info.value
    assert type(error) is cls, str(error)
    assert error.sqlstate == sqlstate, str(error)
    assert CommonErrorStrategy().action(error) == action
    assert CommonErrorStrategy().handle_exception(error).name == action
