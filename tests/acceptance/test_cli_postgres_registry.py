"""``[registry] backend = "postgres"`` with the real CLI and two ``pgvisor run`` processes on
one database: edits through the CLI and through HTTP reach both nodes (within a second,
through the NOTIFY), ``pgvisor instances export`` / ``import`` round-trip, an invalid
import writes nothing, and a schema newer than this pgvisor is refused by run and CLI."""
import json
import time

import pytest

from supervisor.testing import wait_for
from tests.acceptance.service_process import ServiceProcess, run_cli

HANDLERS = "tests.acceptance.handlers"
#: The issue's bound: an edit on one node reaches every node within this many seconds.
REACH = 1.0


def _node(directory, dsn, schema="pgvisor"):
    return ServiceProcess(directory, {
        "database": {"dsn": dsn},
        # The periodic verify (and the registry's fallback poll) an hour away: only the
        # NOTIFY of an edit can bring it in time.
        "supervisor": {"interval": 3600.0, "probe_interval": 0.2,
                       "wait_after_db_revived": 1.0},
        "registry": {"backend": "postgres", "schema": schema},
    })


@pytest.fixture
def nodes(pg_database, tmp_path):
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
    made = [_node(tmp_path / name, pg_database.dsn) for name in ("one", "two")]
    try:
        for node in made:
            node.start()
        yield made
    finally:
        for node in made:
            node.stop()


def _spec_of(node, name):
    status, body = node.call("GET", "/instances/%s" % name)
    return body if status == 200 else None


@pytest.mark.timeout(120)
def test_edits_through_the_cli_and_http_of_one_node_reach_both(nodes, pg_database):
    one, two = nodes
    result = one.cli("instances", "add", "river", "-c", one.config, "--channel", "river_ch",
                     "--handler", HANDLERS + ":record")
    assert result.returncode == 0, result.stderr
    assert "schema pgvisor on" in result.stdout and "NOTIFY" in result.stdout
    one.wait_state("river", "running")
    two.wait_state("river", "running")
    # An HTTP edit on node two: node one answers with it within a second.
    status, _ = two.call("PUT", "/instances/river", {"channels": ["river_ch"],
                                                      "handler": HANDLERS + ":record",
                                                      "max_concurrency": 3})
    assert status == 200
    started = time.monotonic()
    wait_for(lambda: (_spec_of(one, "river") or {}).get("max_concurrency") == 3, REACH,
             0.005, "node one sees node two's edit")
    print("HTTP edit on two reached one in %.1f ms" % ((time.monotonic() - started) * 1000))
    listed = json.loads(two.cli("instances", "list", "-c", two.config, "--json").stdout)
    assert [(v["name"], v["max_concurrency"]) for v in listed] == [("river", 3)]
    assert pg_database.execute("SELECT name FROM pgvisor.registry") == [("river",)]
    registry = one.get("/status")["registry"]
    assert (registry["backend"], registry["channel"], registry["following"],
            registry["last_error"]) == ("postgres", "pgvisor_registry", True, None)
    result = two.cli("instances", "disable", "river", "-c", two.config)
    assert result.returncode == 0, result.stderr
    one.wait_state("river", "disabled")
    two.wait_state("river", "disabled")


def _config(tmp_path, name, dsn, schema):
    node = _node(tmp_path / name, dsn, schema)
    return node.config, node.env


@pytest.mark.timeout(120)
def test_export_import_round_trip_and_an_invalid_import_changes_nothing(
        pg_database, tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    source, env = _config(tmp_path, "a", pg_database.dsn, "pgvisor")
    target, _ = _config(tmp_path, "b", pg_database.dsn, 'team "b"')
    for name, channel in (("river", "doc_changed"), ("audit", "doc_deleted")):
        result = run_cli("instances", "add", name, "-c", source, "--channel", channel,
                         "--handler", HANDLERS + ":record", "--max", "2", env=env)
        assert result.returncode == 0, result.stderr
    exported = tmp_path / "registry-export.json"
    result = run_cli("instances", "export", str(exported), "-c", source, env=env)
    assert result.returncode == 0, result.stderr
    doc = json.loads(exported.read_text())
    assert [i["name"] for i in doc["instances"]] == ["audit", "river"]
    assert oct(exported.stat().st_mode & 0o777) == "0o600"
    # Into another schema, which already holds an instance the file does not name.
    result = run_cli("instances", "add", "old", "-c", target, "--channel", "x",
                     "--handler", HANDLERS + ":record", env=env)
    assert result.returncode == 0, result.stderr
    result = run_cli("instances", "import", str(exported), "-c", target, "--json", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["added"] == ["audit", "river"]
    names = [v["name"] for v in json.loads(run_cli(
        "instances", "list", "-c", target, "--json", env=env).stdout)]
    assert names == ["audit", "old", "river"]  # merge: "old" stays
    result = run_cli("instances", "import", str(exported), "-c", target, "--replace",
                     "--json", env=env)
    assert json.loads(result.stdout)["removed"] == ["old"]
    again = tmp_path / "again.json"
    run_cli("instances", "export", str(again), "-c", target, env=env)
    assert json.loads(again.read_text())["instances"] == doc["instances"]
    # A file with one bad instance among good ones: every problem named, nothing written.
    bad = dict(doc, instances=doc["instances"] + [
        {"name": "new", "channels": ["c"], "handler": HANDLERS + ":record"},
        {"name": "broken", "channels": ["c"], "handler": "x:y", "max_concurrency": 0}])
    bad_file = tmp_path / "bad.json"
    bad_file.write_text(json.dumps(bad))
    version = pg_database.execute('SELECT version FROM "team ""b""".registry_version')
    result = run_cli("instances", "import", str(bad_file), "-c", target, "--replace",
                     env=env)
    assert result.returncode == 2
    assert "nothing imported" in result.stderr and "'broken'" in result.stderr
    assert "max_concurrency" in result.stderr
    assert pg_database.execute('SELECT version FROM "team ""b""".registry_version') == version
    # Stdout export is the same document.
    result = run_cli("instances", "export", "-c", target, env=env)
    assert json.loads(result.stdout)["instances"] == doc["instances"]


@pytest.mark.timeout(120)
def test_a_schema_newer_than_this_pgvisor_is_refused_by_run_and_cli(pg_database, tmp_path):
    (tmp_path / "n").mkdir()
    node = _node(tmp_path / "n", pg_database.dsn)
    result = node.cli("instances", "list", "-c", node.config)
    assert result.returncode == 0, result.stderr  # creates and migrates the schema
    pg_database.execute("INSERT INTO pgvisor.schema_version (version, name) "
                        "VALUES (999, 'from-the-future')")
    result = node.cli("instances", "list", "-c", node.config)
    assert result.returncode == 1 and "newer than this pgvisor knows" in result.stderr
    node.start(ready=False)
    assert node.wait_exit(timeout=60) == 2
    assert "newer than this pgvisor knows" in node.log()


@pytest.mark.timeout(60)
def test_a_bad_schema_in_the_config_is_refused_naming_the_setting(pg_database, tmp_path):
    (tmp_path / "n").mkdir()
    node = _node(tmp_path / "n", pg_database.dsn, schema="x" * 60)
    result = node.cli("instances", "list", "-c", node.config)
    assert result.returncode == 2
    assert "[registry] schema" in result.stderr and "at most 54 bytes" in result.stderr


@pytest.mark.timeout(120)
def test_a_node_started_while_the_database_is_down_runs_the_table_once_it_answers(
        pg_private_cluster, tmp_path):
    (tmp_path / "n").mkdir()
    node = _node(tmp_path / "n", pg_private_cluster.dsn)
    result = node.cli("instances", "add", "river", "-c", node.config, "--channel",
                      "river_ch", "--handler", HANDLERS + ":record")
    assert result.returncode == 0, result.stderr
    pg_private_cluster.stop()
    try:
        result = node.cli("instances", "list", "-c", node.config)
        assert result.returncode == 3 and "unavailable" in result.stderr
        node.start()  # ready without its database: it waits, as for any outage
        assert "action=registry.unavailable" in node.log()
        pg_private_cluster.start()
        node.wait_state("river", "running", timeout=60)
        node.wait_log("action=registry.available")
    finally:
        node.stop()
