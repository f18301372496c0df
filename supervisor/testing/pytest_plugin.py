"""pytest fixtures of the throwaway Postgres kit.

Load with ``-p supervisor.testing.pytest_plugin`` (pgvisor's tox.ini does) or
``pytest_plugins = ["supervisor.testing.pytest_plugin"]`` in a conftest.py.

======================  ========  ========================================================
fixture                 scope     gives
======================  ========  ========================================================
``pg_cluster``          session   the shared primary PostgresCluster (never stop it)
``pg_database``         function  a fresh database on it: :class:`PostgresDatabase`
``pg_dsn``              function  that database's libpq DSN string
``pg_private_cluster``  function  a primary of your own: stop, kill, restart it at will
``pg_pair``             function  :class:`PostgresPair`: ``.primary``, streaming ``.standby``
======================  ========  ========================================================

When the server programs are missing the fixtures *fail* (never skip) with how to get them.
"""
import itertools
import re

import pytest

from supervisor.testing.binaries import BinariesNotFound
from supervisor.testing.cluster import PostgresCluster

_database_numbers = itertools.count(1)


class PostgresDatabase:
    """A database of its own on a cluster, for one test."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name

    @property
    def dsn(self):
        """libpq DSN of this database (superuser, unix socket)."""
        return self.cluster.dsn_for(self.name)

    @property
    def tcp_dsn(self):
        """libpq DSN of this database over TCP to 127.0.0.1."""
        return self.cluster.dsn_for(self.name, tcp=True)

    @property
    def dsn_dict(self):
        """hermes-style dict DSN of this database."""
        return dict(self.cluster.dsn_dict, database=self.name)

    def dsn_for(self, tcp=False, user=None, password=None):
        """DSN of this database with other connection options."""
        return self.cluster.dsn_for(self.name, tcp=tcp, user=user, password=password)

    def execute(self, sql, params=None):
        """Run one statement in this database; rows or None (see ClusterSQL.execute)."""
        return self.cluster.execute(sql, params, dbname=self.name)

    def __repr__(self):
        return "<PostgresDatabase %s on %r>" % (self.name, self.cluster)


class PostgresPair:
    """A primary and a standby streaming from it."""

    def __init__(self, primary, standby):
        self.primary = primary
        self.standby = standby


def _cluster(name):
    try:
        return PostgresCluster(name=name)
    except BinariesNotFound as exc:
        pytest.fail(str(exc), pytrace=False)


def _short_name(request, prefix):
    base = re.sub(r"[^a-z0-9]+", "_", request.node.name.lower()).strip("_")
    return "%s%d_%s" % (prefix, next(_database_numbers), base)[:63]


@pytest.fixture(scope="session")
def pg_cluster():
    """The session-wide primary. Shared: create databases on it, never stop it."""
    cluster = _cluster("pgvisor-session")
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@pytest.fixture
def pg_database(request, pg_cluster):
    """A fresh database on ``pg_cluster``; its sessions are terminated and it is dropped
    after the test."""
    if not pg_cluster.running:  # a test stopped the shared cluster: bring it back
        pg_cluster.start()
    database = PostgresDatabase(pg_cluster, _short_name(request, "t"))
    pg_cluster.create_database(database.name)
    yield database
    if not pg_cluster.running:
        pg_cluster.start()
    pg_cluster.drop_database(database.name)


@pytest.fixture
def pg_dsn(pg_database):
    """libpq DSN string of a fresh per-test database (see ``pg_database``)."""
    return pg_database.dsn


@pytest.fixture
def pg_private_cluster(request):
    """A started primary for this test alone; removed after it."""
    cluster = _cluster("pgvisor-private")
    try:
        yield cluster.start()
    finally:
        cluster.cleanup()


@pytest.fixture
def pg_pair(request):
    """A fresh primary and a streaming standby for this test alone; removed after it."""
    primary = _cluster("pgvisor-primary")
    try:
        primary.start()
        yield PostgresPair(primary, primary.create_standby())
    finally:
        primary.cleanup()
