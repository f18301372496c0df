"""Handlers for the multi-node tests: a running instance proves "this instance runs on this
node, with this epoch, now" every 0.2 s, in a table whose EXCLUSION constraint refuses two
nodes' intervals of one instance that overlap.

``tests.cluster_handlers:interval_<instance>`` (one handler per instance, made on first
import) is called with the instance's first catch_up and never returns: it holds the
instance's processor for as long as the instance runs (a stop or a kill ends it, as it ends
any handler), upserting the row ``(instance, node, epoch)`` of :data:`INTERVALS_SQL` every
:data:`PERIOD` and extending its ``during`` range to ``clock_timestamp()`` (the database's
clock, the same for every node). So the proof does not depend on the node reaching its
database: a node cut off from it keeps writing here for as long as its instance runs. A
second node running the instance at the same time extends a range that overlaps: the write
fails with an exclusion violation, which the handler records in ``violations`` (the tests
assert there are none). A start without a grant (``epoch`` None) is recorded there too.

The handlers write through ``$PGVISOR_TEST_INTERVALS_DSN``, a connection that bypasses
whatever fault the test injects into the node's own database path, so the record is
written when the call happens, never later (a held write delivered after a heal would be
dated then, not when the handler ran). The node's name comes from
``$PGVISOR_CLUSTER_NODE_NAME`` (which also configures the node).
"""
import os

import gevent

from instances.connectors import PostgresConnector
from instances.exceptions import DatabaseError

#: The tables the handlers write (the test creates them).
INTERVALS_SQL = """
CREATE EXTENSION IF NOT EXISTS btree_gist;
CREATE TABLE intervals (
    instance text NOT NULL, node text NOT NULL, epoch bigint NOT NULL,
    during tstzrange NOT NULL,
    UNIQUE (instance, node, epoch),
    EXCLUDE USING gist (instance WITH =, during WITH &&));
CREATE TABLE violations (instance text, node text, epoch bigint, error text,
                         at timestamptz DEFAULT clock_timestamp());
"""

_UPSERT = """
INSERT INTO intervals (instance, node, epoch, during)
VALUES (%s, %s, %s, tstzrange(clock_timestamp(), clock_timestamp(), '[]'))
ON CONFLICT (instance, node, epoch) DO UPDATE
SET during = tstzrange(lower(intervals.during), clock_timestamp(), '[]')
"""

#: Seconds between two writes of a running handler: the resolution of the proof.
PERIOD = 0.2


def __getattr__(name):
    if not name.startswith("interval_"):
        raise AttributeError(name)
    instance = name[len("interval_"):]

    def handler(notification):
        run(instance)

    handler.__name__ = name
    globals()[name] = handler
    return handler


def run(instance):
    """Hold the instance's processor for as long as the instance runs (until a stop or a
    kill ends this greenlet), extending its interval every :data:`PERIOD` seconds."""
    from supervisor import get_current

    node = os.environ["PGVISOR_CLUSTER_NODE_NAME"]
    cluster = get_current().cluster
    epoch = cluster.epoch(instance) if cluster is not None else None
    # A connection per run: a kill may leave the last one in the middle of a query.
    connector = PostgresConnector(os.environ["PGVISOR_TEST_INTERVALS_DSN"],
                                  application_name="intervals")
    try:
        if epoch is None:
            _violation(connector, instance, node, None, "handler called without a grant")
            return
        while True:
            try:
                connector.execute(_UPSERT, (instance, node, epoch))
            except DatabaseError as error:
                if error.sqlstate != "23P01":
                    raise
                _violation(connector, instance, node, epoch, str(error))
            gevent.sleep(PERIOD)
    finally:
        connector.disconnect()


def _violation(connector, instance, node, epoch, error):
    connector.execute("INSERT INTO violations (instance, node, epoch, error) "
                      "VALUES (%s, %s, %s, %s)", (instance, node, epoch, error))
