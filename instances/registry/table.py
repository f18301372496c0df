"""The :class:`PostgresRegistry`: the desired instances in a table that several nodes share.

The tables live in the schema ``schema`` (``[registry] schema``, default ``pgvisor``) and
are created and upgraded by :mod:`instances.migrations` (step 1)::

    registry          name (primary key), spec (jsonb: one element of the JSON document's
                      "instances"), enables, version (the registry version of its last
                      change), updated_at
    registry_version  one row: the registry's version, raised by every edit

An edit is one transaction (:meth:`PostgresRegistry._locked`): the ``registry_version`` row
is locked ``FOR UPDATE``, so edits from every node and every CLI queue there; the rows are
read afresh, the change is applied to a copy and checked (raising rolls back: nothing
changes), only the rows that differ are written, the version is raised, and
``pg_notify('<schema>_registry', version)`` is sent inside the transaction: Postgres
delivers it at COMMIT, so no node hears of an edit that did not happen, and every node
LISTENing (:class:`~instances.registry.follower.RegistryFollower`) reloads at once. A
reload reads the version (one row) and the rows only when it moved; the rows are checked
by the same codec as the file (:func:`instances.registry.codec.from_document`), so a bad
row written by hand is reported with every problem and the previous state stays.

Database outage: reads (``get``, iteration) answer from memory, so the last desired state
read stays in force; an edit or reload raises :class:`RegistryUnavailable` and changes
nothing.

Concurrency: one connection per registry, used by one greenlet at a time (a gevent lock
around every use, adoption and callbacks included); every method blocks only the calling
greenlet (psycogreen). Host names are resolved off the hub by the connector.
"""
import contextlib
import json
import logging

import gevent
import gevent.lock

from instances import migrations
from instances.connectors import PostgresConnector, redact_dsn
from instances.exceptions import ConnectionLost, DatabaseError, RegistryError
from instances.registry.codec import raise_problems, specs_of
from instances.registry.desired import DesiredState, RegistryUnavailable
from instances.registry.follower import RegistryFollower

log = logging.getLogger(__name__)


def channel_of(schema):
    """The NOTIFY channel of the registry in ``schema``: ``<schema>_registry``."""
    return migrations.check_schema(schema) + "_registry"


class PostgresRegistry(DesiredState):
    """The desired state in the tables of ``schema`` on the database ``dsn`` (a libpq
    string or a hermes dict), with the same API, validation and errors as the file's
    :class:`~instances.registry.Registry`.

    ``connect``: migrate the schema and read the rows now (raising RegistryUnavailable when
    the database cannot be reached, :class:`~instances.migrations.SchemaError` for a schema
    newer than this pgvisor, RegistryError for invalid rows); False: start empty and do it
    at the first :meth:`reload`.
    """

    backend = "postgres"
    #: Seconds an edit waits for another edit's lock before RegistryError.
    lock_timeout = 10.0
    #: Seconds a read, an edit or a migration may take in all (a database that stopped
    #: answering, e.g. a cut network, is then RegistryUnavailable, the connection closed).
    timeout = 20.0
    #: Rows checked (or written) between two yields to the hub (checking one spec takes
    #: about 0.15 ms).
    parse_chunk = 50
    #: ``application_name`` of the registry's connection.
    application_name = "pgvisor-registry"

    def __init__(self, dsn, schema=migrations.DEFAULT_SCHEMA, resolve=True, connect=True):
        super().__init__(resolve)
        self.schema = migrations.check_schema(schema)
        self.dsn = dsn
        #: The channel every edit NOTIFYs (payload: the new version).
        self.channel = channel_of(schema)
        self._quoted = migrations.quote_schema(schema)
        # Plain tuples: a DictRow per row costs more than the rest of a reload.
        self._connector = PostgresConnector(dsn, cursor_factory=None,
                                            application_name=self.application_name)
        self._mutex = gevent.lock.RLock()
        self._parsed = {}  # md5 of a row's spec text -> its InstanceSpec (the rows last read)
        #: True once the schema is migrated and the rows were read at least once.
        self.loaded = False
        if connect:
            self.reload()

    @property
    def location(self):
        """``schema S on <dsn>`` (password redacted)."""
        return "schema %s on %s" % (self.schema, redact_dsn(self.dsn))

    def reload(self):
        """Read the rows when the version moved (first: migrate); True if the specs changed.
        Raise RegistryUnavailable (database down), SchemaError, or RegistryError naming
        every invalid row; the previous state stays in force."""
        with self._serialized():
            if not self.loaded:
                with self._database("migrating"):
                    migrations.migrate(self._connector, self.schema)
            elif self._stored_version() == self._stat:
                return False
            specs, version, stat, enables = self._read()
            changed = self._adopt(specs, version, stat, enables)
            self.loaded = True
            return changed

    def follow(self, notifiers, interval):
        """A started :class:`~instances.registry.follower.RegistryFollower`: reload on
        every NOTIFY of :attr:`channel` (through ``notifiers``) and every ``interval``."""
        return RegistryFollower(self, notifiers, interval).start()

    def status(self):
        return dict(super().status(), schema=self.schema, channel=self.channel,
                    loaded=self.loaded)

    def close(self):
        """Close the connection (a later use reconnects)."""
        with self._serialized():
            self._connector.disconnect()

    # -- storage (see instances.registry.desired) ------------------------------------------

    def _serialized(self):
        return self._mutex

    @contextlib.contextmanager
    def _locked(self):
        """The edit's transaction (migrating first if never loaded), its lock timeout, and
        the lock of the version row that every edit takes."""
        with self._database("editing"):
            if not self.loaded:
                migrations.migrate(self._connector, self.schema)
            with self._connector.transaction():
                self._connector.execute("SELECT set_config('lock_timeout', %s, true)",
                                        ("%dms" % (self.lock_timeout * 1000),))
                self._connector.execute("SELECT version FROM %s.registry_version FOR UPDATE"
                                        % self._quoted)
                yield
        self.loaded = True

    def _stored_version(self):
        with self._database("reading"):
            rows = self._connector.execute("SELECT version FROM %s.registry_version"
                                           % self._quoted)
        if len(rows) != 1:
            raise RegistryError("registry %s: %s.registry_version must hold one row, it holds "
                                "%d" % (self.location, self.schema, len(rows)))
        return rows[0][0]

    def _read(self):
        """The rows, in one statement (one snapshot): ``(specs, version, version,
        enables)``. Only the rows whose spec this registry has not parsed yet (by the md5 of
        its JSON text) are sent and checked: a reload after one edit costs one row's parse,
        not the registry's. (``LIMIT 1``: the version table holds one row by its key; a
        planner guessing more once costed this query into a JIT compile of a second.)
        Raise RegistryError naming every invalid row."""
        with self._database("reading"):
            rows = self._connector.execute(
                "WITH r AS MATERIALIZED (SELECT name, spec::text AS spec,"
                "  md5(spec::text) AS md5, enables FROM %s.registry),"
                " k AS MATERIALIZED"
                "  (SELECT DISTINCT unnest(string_to_array(%%s, ' ')) AS md5)"
                " SELECT v.version, r.name, r.md5, CASE WHEN k.md5 IS NULL THEN r.spec END,"
                " r.enables FROM (SELECT version FROM %s.registry_version LIMIT 1) v"
                " LEFT JOIN r ON true"
                " LEFT JOIN k ON k.md5 = r.md5 ORDER BY r.name"
                % (self._quoted, self._quoted), (" ".join(self._parsed),))
        if len({row[0] for row in rows}) != 1:
            raise RegistryError("registry %s: %s.registry_version must hold one row"
                                % (self.location, self.schema))
        version = rows[0][0]
        rows = [row for row in rows if row[1] is not None]
        fresh = [row for row in rows if row[3] is not None]
        found, problems = [], []
        for start in range(0, len(fresh), self.parse_chunk):
            if start:
                gevent.sleep(0)  # thousands of new rows: let the hub breathe between chunks
            chunk = specs_of([("row %r" % row[1], json.loads(row[3]))
                              for row in fresh[start:start + self.parse_chunk]])
            found += chunk[0]
            problems += chunk[1]
        if problems:
            raise_problems(self.location, problems)
        parsed = {row[2]: spec for row, spec in zip(fresh, found, strict=True)}
        parsed.update((row[2], self._parsed[row[2]]) for row in rows if row[3] is None)
        self._parsed = parsed
        specs = {row[1]: parsed[row[2]] for row in rows}
        return specs, version, version, {row[1]: row[4] for row in rows if row[4]}

    def _write(self, specs, version, enables, old):
        """Write the rows that differ from ``old``, raise the version, NOTIFY (inside the
        edit's transaction). Return the version."""
        old_specs, old_enables = old
        removed = sorted(n for n in old_specs if n not in specs)
        changed = [n for n, spec in sorted(specs.items())
                   if old_specs.get(n) != spec or old_enables.get(n, 0) != enables.get(n, 0)]
        execute = self._connector.execute
        if removed:
            execute("DELETE FROM %s.registry WHERE name = ANY(%%s)" % self._quoted, (removed,))
        for start in range(0, len(changed), self.parse_chunk):  # each chunk yields on I/O
            rows = [{"name": n, "spec": specs[n].to_dict(), "enables": enables.get(n, 0)}
                    for n in changed[start:start + self.parse_chunk]]
            execute("INSERT INTO %s.registry (name, spec, enables, version)"
                    " SELECT x->>'name', x->'spec', (x->>'enables')::bigint, %%s"
                    " FROM jsonb_array_elements(%%s::jsonb) x"
                    " ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec,"
                    " enables = EXCLUDED.enables, version = EXCLUDED.version,"
                    " updated_at = now()" % self._quoted, (version, json.dumps(rows)))
        execute("UPDATE %s.registry_version SET version = %%s, updated_at = now()"
                % self._quoted, (version,))
        execute("SELECT pg_notify(%s, %s)", (self.channel, str(version)))
        return version

    @contextlib.contextmanager
    def _database(self, doing):
        """Database errors as registry errors: a lost connection, or one silent past
        :attr:`timeout` (closed then), is RegistryUnavailable."""
        timer = gevent.Timeout(self.timeout)
        timer.start()
        try:
            yield
        except gevent.Timeout as exc:
            if exc is not timer:
                raise
            self._connector.disconnect()
            raise RegistryUnavailable("registry %s unavailable while %s: no answer within "
                                      "%.0f s" % (self.location, doing, self.timeout)) from None
        except ConnectionLost as exc:
            raise RegistryUnavailable("registry %s unavailable while %s: %s" % (
                self.location, doing, exc)) from None
        except DatabaseError as exc:
            raise RegistryError("registry %s: %s failed: %s" % (
                self.location, doing, exc)) from None
        except BaseException as exc:
            if not isinstance(exc, Exception):  # a kill mid-query: the connection is unusable
                self._connector.disconnect()
            raise
        finally:
            timer.close()
