"""instances.migrations against a real server: first run, idempotence, two processes
migrating at once, refusal of a newer or diverged schema, a failed step rolled back whole,
the transaction helper of the connector."""
import json
import subprocess
import sys

import psycopg2
import pytest

from instances import migrations
from instances.connectors import PostgresConnector
from instances.exceptions import DatabaseError, InvalidConfigurationException
from instances.migrations import MIGRATIONS, Migration, SchemaError, migrate
from supervisor.testing import wait_for

ODD = 'odd "schema" name'


@pytest.fixture
def connector(pg_dsn):
    connector = PostgresConnector(pg_dsn, application_name="migrations-test")
    yield connector
    connector.disconnect()


def versions(pg_database, schema="pgvisor"):
    return pg_database.execute('SELECT version, name FROM "%s".schema_version ORDER BY 1'
                               % schema.replace('"', '""'))


def test_first_run_creates_the_schema_and_records_every_step(pg_dsn, pg_database):
    assert migrate(pg_dsn) == [m.version for m in MIGRATIONS]
    assert versions(pg_database) == [(m.version, m.name) for m in MIGRATIONS]
    assert pg_database.execute("SELECT version FROM pgvisor.registry_version") == [(0,)]


def test_a_second_run_changes_nothing_and_takes_no_lock(connector, pg_database):
    migrate(connector)
    before = pg_database.execute("SELECT applied_at FROM pgvisor.schema_version")
    assert migrate(connector) == []
    assert pg_database.execute("SELECT applied_at FROM pgvisor.schema_version") == before
    assert migrations.current_version(connector, "pgvisor") == migrations.latest()


def test_any_schema_name_is_a_quoted_identifier(connector, pg_database):
    assert migrate(connector, ODD) == [m.version for m in MIGRATIONS]
    assert versions(pg_database, ODD) == [(m.version, m.name) for m in MIGRATIONS]
    assert migrations.applied(connector, "pgvisor") == {}  # the default one is untouched


@pytest.mark.parametrize("schema", ["", "x\x00y", "s" * 55, None])
def test_a_bad_schema_name_is_refused_naming_the_field(schema):
    with pytest.raises(InvalidConfigurationException) as caught:
        migrations.check_schema(schema)
    assert caught.value.field == "registry.schema"
    assert "registry.schema=%r" % (schema,) in str(caught.value)


_MIGRATE_PROGRAM = """
import json, sys
from instances.migrations import migrate
print(json.dumps(migrate(sys.argv[1])))
"""


@pytest.mark.timeout(60)
def test_two_processes_migrating_at_once_apply_each_step_once(pg_dsn, pg_database):
    """Both processes are held on the schema's lock (the test holds it), so both have
    seen an empty database when they get it: each step is applied by exactly one of them
    (which one takes a later step is a race), the other finds it applied."""
    holder = psycopg2.connect(pg_dsn)
    try:
        with holder.cursor() as cursor:
            cursor.execute(*migrations.lock_key("pgvisor"))
        racers = [subprocess.Popen([sys.executable, "-c", _MIGRATE_PROGRAM, pg_dsn],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for _ in range(2)]
        wait_for(lambda: pg_database.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )[0][0] == 2, timeout=30, message="both processes waiting on the migration lock")
    finally:
        holder.rollback()
        holder.close()
    results = []
    for racer in racers:
        out, err = racer.communicate(timeout=30)
        assert racer.returncode == 0, err
        results.append(json.loads(out))
    applied = sorted(results[0] + results[1])
    assert applied == [m.version for m in MIGRATIONS]  # each step once, none twice
    assert versions(pg_database) == [(m.version, m.name) for m in MIGRATIONS]


def test_a_schema_newer_than_the_code_is_refused_and_left_alone(connector, pg_database):
    migrate(connector)
    pg_database.execute("INSERT INTO pgvisor.schema_version (version, name) VALUES (99, 'x')")
    with pytest.raises(SchemaError, match="version 99, newer than this pgvisor knows"):
        migrate(connector)
    steps = MIGRATIONS + (Migration(migrations.latest() + 1, "more",
                                    "CREATE TABLE {schema}.more (i int)"),)
    with pytest.raises(SchemaError):
        migrate(connector, migrations=steps)
    assert pg_database.execute("SELECT to_regclass('pgvisor.more')") == [(None,)]


def test_a_step_known_under_another_name_is_refused(connector):
    migrate(connector)
    renamed = (Migration(1, "something-else", MIGRATIONS[0].sql),) + MIGRATIONS[1:]
    with pytest.raises(SchemaError, match="migration 1 was applied as registry"):
        migrate(connector, migrations=renamed)


def test_later_steps_are_applied_in_order_and_a_failed_step_rolls_back_whole(
        connector, pg_database):
    migrate(connector)
    n = migrations.latest()
    steps = MIGRATIONS + (
        Migration(n + 1, "two", "CREATE TABLE {schema}.two (i int)"),
        Migration(n + 2, "three", "CREATE TABLE {schema}.three (i int); SELECT no_such_fn()"))
    with pytest.raises(DatabaseError):
        migrate(connector, migrations=steps)
    assert versions(pg_database) == [(m.version, m.name) for m in MIGRATIONS] + [
        (n + 1, "two")]
    assert pg_database.execute("SELECT to_regclass('pgvisor.three')") == [(None,)]
    steps = steps[:n + 1] + (Migration(n + 2, "three", "CREATE TABLE {schema}.three (i int)"),)
    assert migrate(connector, migrations=steps) == [n + 2]
    assert connector.execute("SELECT 1") == [[1]]  # the connection is usable again


def test_steps_must_be_numbered_without_gaps():
    with pytest.raises(ValueError, match="numbered 1..N"):
        migrations.check_steps((Migration(1, "a", ""), Migration(3, "b", "")))
    with pytest.raises(ValueError, match="unique"):
        migrations.check_steps((Migration(1, "a", ""), Migration(2, "a", "")))
    migrations.check_steps()


def test_transaction_commits_or_rolls_back(connector, pg_database):
    connector.execute("CREATE TABLE t (i int)")
    with connector.transaction():
        connector.execute("INSERT INTO t VALUES (1)")
        assert pg_database.execute("SELECT count(*) FROM t") == [(0,)]  # not yet visible
    with pytest.raises(RuntimeError):
        with connector.transaction():
            connector.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("abandon")
    assert pg_database.execute("SELECT i FROM t") == [(1,)]
    assert connector.execute("SELECT 1") == [[1]]
