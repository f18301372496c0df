"""ClusterSQL: what a throwaway cluster offers through SQL — DSNs, short connections,
databases, users, backends and the recovery role.

A mixin of :class:`~supervisor.testing.PostgresCluster`; it needs ``host``, ``port``,
``running`` and ``start()`` from it. Every call opens its own short psycopg2 connection
(autocommit) and closes it: nothing is shared between greenlets. Calls are cooperative when
psycogreen's wait callback is installed (importing ``instances.connectors`` does it) and
simply block otherwise.
"""
import re

import psycopg2
from psycopg2 import sql

from supervisor.testing.datadir import PASSWORD_GROUP, SUPERUSER, SUPERUSER_PASSWORD
from supervisor.testing.waiting import wait_for

_BARE_VALUE = re.compile(r"^[A-Za-z0-9_./:-]+$")


def _dsn_value(value):
    value = str(value)
    if _BARE_VALUE.match(value):
        return value
    return "'%s'" % value.replace("\\", "\\\\").replace("'", "\\'")


class ClusterSQL:
    """DSNs and SQL conveniences of a cluster (see the module docstring)."""

    #: application_name of the kit's own short connections.
    application_name = "pgvisor-testing-kit"
    #: Seconds a connection attempt of the kit may take.
    connect_timeout = 10
    #: Seconds promote(), wait_streaming() and wait_ready() wait by default.
    role_timeout = 60.0

    # -- DSNs -------------------------------------------------------------------------

    def dsn_for(self, dbname="postgres", tcp=False, user=None, password=None, port=None):
        """A libpq DSN string: the unix socket, or 127.0.0.1 when ``tcp``. ``port``
        overrides the cluster's (e.g. a :class:`~supervisor.testing.FaultProxy` port).
        Over TCP the superuser needs its password (:data:`SUPERUSER_PASSWORD`, added here);
        on the socket it is authenticated as the OS user (peer)."""
        parts = [("host", "127.0.0.1" if tcp else self.host), ("port", port or self.port),
                 ("dbname", dbname), ("user", user or SUPERUSER)]
        if password is None and tcp and (user or SUPERUSER) == SUPERUSER:
            password = SUPERUSER_PASSWORD
        if password is not None:
            parts.append(("password", password))
        return " ".join("%s=%s" % (key, _dsn_value(value)) for key, value in parts)

    @property
    def dsn(self):
        """DSN of the ``postgres`` database as the superuser over the unix socket."""
        return self.dsn_for()

    @property
    def tcp_dsn(self):
        """Like :attr:`dsn` but over TCP to 127.0.0.1."""
        return self.dsn_for(tcp=True)

    @property
    def dsn_dict(self):
        """:attr:`dsn` as a hermes-style dict (``database``, ``host``, ``port``, ``user``)."""
        return {"database": "postgres", "host": self.host, "port": self.port, "user": SUPERUSER}

    # -- queries ----------------------------------------------------------------------

    def connect(self, dbname="postgres", **kwargs):
        """A new psycopg2 connection (autocommit) to ``dbname``; the caller closes it.
        ``kwargs`` go to :func:`dsn_for` (``tcp``, ``user``, ``password``)."""
        conn = psycopg2.connect(self.dsn_for(dbname, **kwargs),
                                connect_timeout=self.connect_timeout,
                                application_name=self.application_name)
        conn.autocommit = True
        return conn

    def execute(self, sql_text, params=None, dbname="postgres"):
        """Run one statement on a short connection; returns the rows (list of tuples), or
        None for a statement without a result. ``sql_text`` may be a psycopg2.sql object."""
        conn = self.connect(dbname)
        try:
            with conn.cursor() as cur:
                cur.execute(sql_text, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def create_database(self, name):
        """CREATE DATABASE ``name`` (any name: it is quoted)."""
        self.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))

    def drop_database(self, name):
        """Drop ``name`` if it exists, terminating its sessions first."""
        self.terminate_backends(dbname=name)
        self.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(name)))

    def create_user(self, name, password, superuser=False):
        """Create (or reset the password of) a login role that must authenticate with
        scram-sha-256, also over the unix socket: a member of the password group."""
        exists = self.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [name])
        statement = "ALTER ROLE {} LOGIN {} PASSWORD %s" if exists else \
            "CREATE ROLE {} LOGIN {} PASSWORD %s"
        self.execute(sql.SQL(statement).format(
            sql.Identifier(name), sql.SQL("SUPERUSER" if superuser else "NOSUPERUSER")),
            [password])
        self.execute(sql.SQL("GRANT {} TO {}").format(
            sql.Identifier(PASSWORD_GROUP), sql.Identifier(name)))

    def drop_user(self, name):
        """Drop the role ``name`` if it exists (it must own nothing)."""
        self.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))

    def terminate_backends(self, application_name=None, dbname=None):
        """Terminate client sessions (all, or those matching ``application_name`` and/or
        ``dbname``) except the kit's own; waits until each is gone (up to 5 s apiece).
        Returns how many were terminated."""
        rows = self.execute(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
            "FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' "
            "AND (%(app)s::text IS NULL OR application_name = %(app)s) "
            "AND (%(db)s::text IS NULL OR datname = %(db)s)",
            {"app": application_name, "db": dbname})
        return rows[0][0]

    # -- role and readiness -----------------------------------------------------------

    def is_in_recovery(self):
        """True on a standby (``pg_is_in_recovery()``)."""
        return self.execute("SELECT pg_is_in_recovery()")[0][0]

    def promote(self, timeout=None):
        """Promote this standby and wait until it accepts writes (not in recovery)."""
        timeout = self.role_timeout if timeout is None else timeout
        self.execute("SELECT pg_promote(true, %s)", [max(1, int(timeout))])
        wait_for(lambda: not self.is_in_recovery(), timeout,
                 message="%s still in recovery after promote" % self.name)

    def wait_streaming(self, timeout=None):
        """Wait until this standby's WAL receiver is streaming from its primary."""
        wait_for(lambda: self.execute(
            "SELECT 1 FROM pg_stat_wal_receiver WHERE status = 'streaming'"),
            self.role_timeout if timeout is None else timeout, interval=0.02,
            message="%s: WAL receiver not streaming" % self.name)

    def wait_ready(self, timeout=None):
        """Wait until a connection succeeds and runs ``SELECT 1``; returns self."""
        def accepting():
            try:
                return self.execute("SELECT 1") == [(1,)]
            except psycopg2.OperationalError:
                return False
        wait_for(accepting, self.role_timeout if timeout is None else timeout, interval=0.02,
                 message="%s does not accept connections" % self.name)
        return self

    def _make_password_group(self):
        self.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) THEN "
            "CREATE ROLE " + PASSWORD_GROUP + " NOLOGIN; END IF; END $$", [PASSWORD_GROUP])
