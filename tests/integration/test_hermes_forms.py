"""hermes' documented constructor of PostgresNotificationListener (its docs, 4.4) against a
real server: one channel string, a PostgresConnector built by the program, fire_on_start,
the error_queue reports, next to pgvisor's own form."""
import gevent.queue
import psycopg2
import pytest

from instances.components import Component
from instances.connectors import PostgresConnector
from instances.exceptions import InvalidConfigurationException
from instances.listeners import PostgresNotificationListener
from instances.strategies import TERMINATE, CommonErrorStrategy
from supervisor.testing import wait_for

pytestmark = pytest.mark.usefixtures("hub_heartbeat")


def _notify(dsn, channel, payload):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


@pytest.fixture
def started():
    made = []

    def start(listener):
        listener.backoff.initial = listener.backoff.max_delay = 0.05  # fast reconnects
        made.append(listener.start())
        return listener

    yield start
    for listener in made:
        listener.stop(5)


def _hermes_listener(form, dsn_dict, queue, errors, fire_on_start):
    connector, strategy = PostgresConnector(dsn_dict), CommonErrorStrategy()
    if form == "positional":
        return PostgresNotificationListener(connector, "doc_changed", queue, strategy, errors,
                                            fire_on_start)
    return PostgresNotificationListener(pg_connector=connector, notif_channel="doc_changed",
                                        notif_queue=queue, error_strategy=strategy,
                                        error_queue=errors, fire_on_start=fire_on_start)


@pytest.mark.parametrize("form", ["positional", "keyword"])
@pytest.mark.timeout(60)
def test_fire_on_start_false_skips_only_the_first_catch_up(form, pg_cluster, pg_database,
                                                           started):
    queue, errors = gevent.queue.Queue(), gevent.queue.Queue()
    listener = _hermes_listener(form, pg_database.dsn_dict, queue, errors, False)
    assert isinstance(listener, Component) and listener.channels == ("doc_changed",)
    assert listener.backoff.max_delay == Component.hermes_backoff_limit
    started(listener)
    wait_for(lambda: listener.connected, 10, message="never listened")
    _notify(pg_database.dsn, "doc_changed", "first")
    note = queue.get(timeout=10)  # no catch_up before it: fire_on_start=False
    assert (note.kind, note.payload) == ("notify", "first")
    assert pg_cluster.terminate_backends(dbname=pg_database.name) == 1
    # A reconnect may have missed notifications: its LISTEN gets the catch_up.
    assert queue.get(timeout=15).kind == "catch_up"
    assert listener.reconnects == 1 and listener.catch_ups == 1
    _notify(pg_database.dsn, "doc_changed", "after")
    assert queue.get(timeout=10).payload == "after"
    assert errors.empty()  # retried errors are not reports


@pytest.mark.timeout(60)
def test_fire_on_start_default_puts_the_first_catch_up(pg_database, started):
    queue = gevent.queue.Queue()
    listener = started(PostgresNotificationListener(
        PostgresConnector(pg_database.dsn_dict), "doc_changed", queue, None, None))
    assert queue.get(timeout=10).kind == "catch_up"
    assert listener.fire_on_start is True


@pytest.mark.timeout(60)
def test_an_error_that_ends_the_listener_is_reported_on_the_error_queue(pg_database, started):
    errors = gevent.queue.Queue()
    missing = dict(pg_database.dsn_dict, database="pgvisor_no_such_database")
    listener = started(PostgresNotificationListener(
        PostgresConnector(missing), "doc_changed", gevent.queue.Queue(), CommonErrorStrategy(),
        errors))
    assert listener.join(10) and listener.exit == "abnormal"
    report = errors.get(timeout=5)
    expected, message = report  # hermes' Client read this pair
    assert expected is False and "pgvisor_no_such_database" in message
    assert (report.action, report.name) == (TERMINATE, "fatal")


def test_pgvisor_form_still_takes_a_list_and_refuses_one_string_by_keyword(pg_dsn):
    queue = gevent.queue.Queue()
    listener = PostgresNotificationListener(pg_dsn, ["a", "b"], queue, "mine")
    assert (listener.name, listener.channels, listener.error_queue) == ("mine", ("a", "b"), None)
    assert listener.backoff.max_delay == 32.0  # pgvisor's default cap
    with pytest.raises(InvalidConfigurationException, match="channels='a'"):
        PostgresNotificationListener(pg_dsn, channels="a", queue=queue)
    with pytest.raises(InvalidConfigurationException, match="notif_channel=\\['a'\\]"):
        PostgresNotificationListener(pg_dsn, notif_channel=["a"], notif_queue=queue)
    with pytest.raises(TypeError, match="hermes' form"):
        PostgresNotificationListener(pg_dsn, "a", queue, None, None, True, "extra")
