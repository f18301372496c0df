"""Versioned migrations of pgvisor's own tables in Postgres (multi-node).

Several nodes share one database schema (``[registry] schema``, default ``pgvisor``): the
registry table, and the cluster's tables. Each node brings the schema to the version its
code knows when it starts (:func:`migrate`), so the service creates and upgrades its tables
itself. The rules, after River (a ``river_migration`` table of applied versions) and Oban
(a version per schema, upgrades in order, never skipped):

- :data:`MIGRATIONS` is an ordered tuple of numbered steps (1, 2, 3, ... without gaps), each
  a SQL text with ``{schema}`` standing for the quoted schema name. A step is never edited
  once released: a change is a new step.
- ``<schema>.schema_version`` records each applied step (version, name, applied_at).
- Each step runs in one transaction of its own, together with its ``schema_version`` row,
  under a transaction-level advisory lock of the schema (:func:`lock_key`): a crash leaves
  the schema at one version or the next, never between; several nodes starting at once
  queue on the lock, and the later ones find the step applied and skip it. A
  transaction-level lock is released by COMMIT, ROLLBACK or a lost connection: never
  stacked, never left behind by a backend the client thinks it still holds.
- A schema newer than the code (a version this code does not know, or a known version under
  another name) is refused with :class:`SchemaError`: an old node must not run against
  tables a newer one changed. Nothing is written then.
- A schema already at the code's version is checked with one read, no lock and no DDL (a
  node's role may lack CREATE once the tables exist).

Blocks the calling greenlet for the database round trips (psycogreen); the connector is
the caller's and used from that greenlet only. Importing this module imports no driver
(the config checks schema names with :func:`check_schema`).
"""
import dataclasses
import logging

from instances.dsn import MAX_IDENTIFIER_BYTES, quote_ident
from instances.exceptions import InvalidConfigurationException, RegistryError

log = logging.getLogger(__name__)

#: The schema of pgvisor's tables when the config names none.
DEFAULT_SCHEMA = "pgvisor"
#: First key of the two-key advisory lock taken while migrating ("pgvm" in ASCII); the
#: second key is ``hashtext(schema)``.
LOCK_CLASS = 0x7067766D
#: The longest schema name accepted, in UTF-8 bytes: the server truncates longer names,
#: and the registry's NOTIFY channel (``<schema>_registry``) must stay an identifier too.
MAX_SCHEMA_BYTES = MAX_IDENTIFIER_BYTES - len("_registry")


class SchemaError(RegistryError):
    """The database schema does not match this pgvisor's migrations (newer, or diverged)."""


@dataclasses.dataclass(frozen=True)
class Migration:
    """One step: ``version`` (1, 2, ...), a short ``name``, and ``sql`` (``{schema}`` is
    replaced by the quoted schema name; several statements are fine)."""

    version: int
    name: str
    sql: str

    def statements(self, schema):
        return self.sql.replace("{schema}", quote_schema(schema))


#: Every step, in order. Append new steps; never edit or renumber a released one.
MIGRATIONS = (
    Migration(1, "registry", """
CREATE TABLE {schema}.registry (
    name text PRIMARY KEY,
    spec jsonb NOT NULL CHECK (spec->>'name' = name),
    enables bigint NOT NULL DEFAULT 0 CHECK (enables >= 0),
    version bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {schema}.registry_version (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    version bigint NOT NULL CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO {schema}.registry_version (version) VALUES (0);
"""),
    # The cluster (supervisor/nodes.py): the nodes' heartbeats and leases, the leader's
    # termed lease, the assignments with their epochs (one sequence: never reused).
    Migration(2, "cluster", """
CREATE TABLE {schema}.nodes (
    name text PRIMARY KEY,
    incarnation text NOT NULL,
    role text,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    heartbeat_at timestamptz NOT NULL,
    lease_expires_at timestamptz NOT NULL,
    running integer NOT NULL DEFAULT 0,
    info jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE {schema}.leader (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    term bigint NOT NULL,
    holder text NOT NULL,
    elected_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE SEQUENCE {schema}.epochs;
CREATE TABLE {schema}.assignments (
    instance text PRIMARY KEY,
    node text,
    epoch bigint NOT NULL,
    prev_node text,
    assigned_at timestamptz NOT NULL,
    not_before timestamptz NOT NULL
);
CREATE INDEX ON {schema}.assignments (node);
"""),
)


def schema_problem(schema):
    """Why ``schema`` is not a usable schema name, or None. Any string is a quoted
    identifier, but not an empty one, one with a NUL byte, or one longer than
    :data:`MAX_SCHEMA_BYTES`."""
    if not isinstance(schema, str) or not schema:
        return "must be a non-empty string"
    if "\x00" in schema:
        return "must not contain a NUL byte"
    if len(schema.encode("utf-8")) > MAX_SCHEMA_BYTES:
        return "must be at most %d bytes (UTF-8)" % MAX_SCHEMA_BYTES
    return None


def check_schema(schema, field="registry.schema"):
    """``schema`` if it is a usable schema name (:func:`schema_problem`), else
    InvalidConfigurationException naming ``field`` and the value."""
    problem = schema_problem(schema)
    if problem is None:
        return schema
    raise InvalidConfigurationException("%s=%r: %s (a schema name, used as a quoted "
                                        "identifier)" % (field, schema, problem), field, schema)


def quote_schema(schema):
    """``schema`` checked and double-quoted for SQL."""
    return quote_ident(check_schema(schema))


def latest(migrations=MIGRATIONS):
    """The version the code knows: that of the last step (0 without steps)."""
    return migrations[-1].version if migrations else 0


def check_steps(migrations=MIGRATIONS):
    """Raise ValueError unless the steps are numbered 1, 2, ... in order with unique names
    (a programming error: two branches that both added a step 3)."""
    versions = [m.version for m in migrations]
    if versions != list(range(1, len(migrations) + 1)):
        raise ValueError("migrations must be numbered 1..N in order, got %s" % versions)
    names = [m.name for m in migrations]
    if len(set(names)) != len(names):
        raise ValueError("migration names must be unique, got %s" % names)


def lock_key(schema):
    """SQL and parameters of the schema's transaction-level advisory lock."""
    return "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, schema)


def applied(connector, schema):
    """``{version: name}`` of the steps recorded in the schema (empty when the schema or
    its ``schema_version`` table does not exist). One round trip."""
    table = "%s.schema_version" % quote_schema(schema)
    rows = connector.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
    if not rows[0][0]:
        return {}
    return dict(connector.execute("SELECT version, name FROM %s" % table))


def current_version(connector, schema):
    """The highest version applied to ``schema`` (0: none)."""
    return max(applied(connector, schema), default=0)


def migrate(db, schema=DEFAULT_SCHEMA, migrations=MIGRATIONS):
    """Bring ``schema`` up to the last of ``migrations``; return the versions applied now
    (empty when it was up to date). ``db``: a :class:`PostgresConnector` (the caller's,
    used from this greenlet) or a DSN (a connection of its own, closed afterwards).

    Raise :class:`SchemaError` when the schema is newer than the code or diverged (nothing
    written), InvalidConfigurationException for a bad schema name,
    :class:`~instances.exceptions.DatabaseError` when the database refuses or goes away
    (a step either committed whole or not at all)."""
    # Imported here: the schema checks above are used by the config (no driver there).
    from instances.connectors import PostgresConnector
    check_schema(schema)
    check_steps(migrations)
    own = not isinstance(db, PostgresConnector)
    connector = PostgresConnector(db, application_name="pgvisor-migrate") if own else db
    try:
        found = applied(connector, schema)
        _check_known(found, schema, migrations)
        done = [m.version for m in migrations
                if m.version not in found and _apply(connector, schema, m, migrations)]
    finally:
        if own:
            connector.disconnect()
    if done:
        log.info("schema %s migrated to version %d (applied %s)", schema, latest(migrations),
                 ", ".join(map(str, done)),
                 extra={"action": "migrations.applied", "instance": None, "schema": schema})
    return done


def _apply(connector, schema, migration, migrations):
    """Apply one step in its own transaction under the lock, unless it is applied
    already; True if this call applied it."""
    quoted = quote_schema(schema)
    with connector.transaction():
        connector.execute(*lock_key(schema))
        if migration.version == 1:
            _bootstrap(connector, quoted)
        found = applied(connector, schema)
        _check_known(found, schema, migrations)
        if migration.version in found:
            return False
        connector.execute(migration.statements(schema))
        connector.execute("INSERT INTO %s.schema_version (version, name) VALUES (%%s, %%s)"
                          % quoted, (migration.version, migration.name))
    log.info("schema %s: applied migration %d (%s)", schema, migration.version,
             migration.name, extra={"action": "migrations.step", "instance": None,
                                    "schema": schema, "version": migration.version})
    return True


def _bootstrap(connector, quoted):
    """The schema and its version table (under the lock: concurrent IF NOT EXISTS races)."""
    connector.execute(
        "CREATE SCHEMA IF NOT EXISTS %s;"
        " CREATE TABLE IF NOT EXISTS %s.schema_version ("
        " version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())" % (quoted, quoted))


def _check_known(found, schema, migrations):
    """Raise SchemaError if ``found`` ({version: name}) has a version the code does not
    know or a known version under another name."""
    known = {m.version: m.name for m in migrations}
    newer = sorted(v for v in found if v not in known)
    if newer:
        raise SchemaError(
            "schema %s is at version %d, newer than this pgvisor knows (%d): upgrade "
            "pgvisor on this node (or use another [registry] schema)"
            % (schema, max(found), latest(migrations)))
    diverged = sorted(v for v, name in found.items() if known[v] != name)
    if diverged:
        raise SchemaError(
            "schema %s: migration %s was applied as %s, this pgvisor knows it as %s: the "
            "schema was migrated by a different pgvisor" % (
                schema, diverged[0], found[diverged[0]], known[diverged[0]]))
