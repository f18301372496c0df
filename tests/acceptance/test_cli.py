"""The real ``pgvisor`` CLI against one running service (module-scoped) on a real Postgres.

The service connects as a role that must authenticate with a password, written into the
config's DSN on purpose (the worst place): no log line, CLI output or HTTP answer may
show it. The HTTP API requires a bearer token (from a token file); the CLI finds it
through ``-c``.
"""
import json
import os
import uuid

import pytest

from tests.acceptance.service_process import ServiceProcess, free_port, run_cli

PASSWORD = "Acc3pt-S3cret-%s" % uuid.uuid4().hex[:8]
TOKEN = "tok-%s" % uuid.uuid4().hex
HANDLERS = "tests.acceptance.handlers"


@pytest.fixture(scope="module")
def database(pg_cluster):
    name = "pgvisor_acc_%s" % uuid.uuid4().hex[:8]
    pg_cluster.create_database(name)
    pg_cluster.create_user("pgvisor_acc", PASSWORD)
    yield name
    pg_cluster.drop_database(name)


@pytest.fixture(scope="module")
def service(pg_cluster, database, tmp_path_factory):
    directory = tmp_path_factory.mktemp("service")
    (directory / "api.token").write_text(TOKEN + "\n")
    os.chmod(directory / "api.token", 0o600)
    dsn = pg_cluster.dsn_for(database, user="pgvisor_acc", password=PASSWORD)
    svc = ServiceProcess(directory, {
        "database": {"dsn": dsn},
        "supervisor": {"interval": 2.0, "probe_interval": 0.2, "wait_after_db_revived": 1.0},
        "http": {"token_file": "api.token"},
    })
    result = svc.cli("instances", "add", "river", "-c", svc.config, "--channel", "river_ch",
                     "--handler", HANDLERS + ":record")
    assert result.returncode == 0, result.stderr
    svc.start()
    svc.wait_state("river", "running")
    yield svc
    svc.stop()
    assert PASSWORD not in svc.log()


def notify(pg_cluster, database, channel, payload):
    pg_cluster.execute("SELECT pg_notify(%s, %s)", [channel, payload], dbname=database)


@pytest.mark.timeout(60)
def test_run_starts_the_registered_instance_and_it_handles_a_notify(service, pg_cluster,
                                                                     database):
    notify(pg_cluster, database, "river_ch", "hello")
    service.wait_handled("notify river_ch hello")
    assert "catch_up - -" in service.handled()  # the catch_up came first, on LISTEN


@pytest.mark.timeout(60)
def test_status_prints_a_table_and_json(service):
    table = service.cli("status", "-c", service.config)
    assert table.returncode == 0, table.stderr
    assert "database: up, role primary" in table.stdout
    header = table.stdout.splitlines()[1].split()
    assert header[:3] == ["NAME", "STATE", "ENABLED"]  # no NODE, EPOCH: not a cluster
    row = next(line for line in table.stdout.splitlines() if line.startswith("river "))
    assert "running" in row and "river_ch" in row
    data = json.loads(service.cli("status", "-c", service.config, "--json").stdout)
    assert data["database"]["state"] == "up"
    assert {v["name"]: v["state"] for v in data["instances"]}["river"] == "running"


@pytest.mark.timeout(90)
def test_registry_edits_through_the_cli_reach_the_running_service(service, pg_cluster,
                                                                  database):
    added = service.cli("instances", "add", "second", "-c", service.config,
                        "--channel", "second_ch", "--handler", HANDLERS + ":record")
    assert added.returncode == 0, added.stderr
    service.wait_state("second", "running")
    notify(pg_cluster, database, "second_ch", "via-cli")
    service.wait_handled("notify second_ch via-cli")

    updated = service.cli("instances", "update", "second", "-c", service.config,
                          "--channel", "second_ch", "--channel", "third_ch")
    assert updated.returncode == 0, updated.stderr
    from supervisor.testing import wait_for
    wait_for(lambda: service.status()["second"]["channels"] == ["second_ch", "third_ch"],
             20, 0.05, "second listens on both channels")
    notify(pg_cluster, database, "third_ch", "new-channel")
    service.wait_handled("notify third_ch new-channel")

    assert service.cli("instances", "disable", "second", "-c", service.config).returncode == 0
    service.wait_state("second", "disabled")
    assert service.cli("instances", "remove", "second", "-c", service.config).returncode == 0
    wait_for(lambda: "second" not in service.status(), 20, 0.05, "second is gone")
    listed = service.cli("instances", "list", "-c", service.config, "--json")
    assert [v["name"] for v in json.loads(listed.stdout)] == ["river"]


@pytest.mark.timeout(90)
def test_restart_verify_shutdown_over_http_with_wait(service):
    restarted = service.cli("restart", "river", "--wait", "-c", service.config)
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip() == "restart river: restarted"
    verified = service.cli("verify", "river", "--wait", "-c", service.config, "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["river"]["result"] == {"river": "unchanged"}

    stopped = service.cli("shutdown", "river", "--wait", "-c", service.config)
    assert (stopped.returncode, stopped.stdout.strip()) == (0, "shutdown river: stopped")
    assert service.status()["river"]["state"] == "stopped"
    started = service.cli("restart", "river", "--wait", "-c", service.config)
    assert started.stdout.strip() == "restart river: started"
    service.wait_state("river", "running")

    accepted = service.cli("verify", "river", "-c", service.config)
    assert accepted.returncode == 0
    assert "accepted (operation " in accepted.stdout


@pytest.mark.timeout(60)
def test_unknown_instance_exits_4_and_a_wrong_token_exits_2(service):
    unknown = service.cli("restart", "nosuch", "--wait", "-c", service.config)
    assert unknown.returncode == 4
    assert "no instance named 'nosuch'" in unknown.stderr
    shown = service.cli("instances", "show", "nosuch", "-c", service.config)
    assert shown.returncode == 4
    refused = service.cli("restart", "river", "--url", service.url, "--token", "wrong")
    assert refused.returncode == 2
    assert "bearer token" in refused.stderr
    assert "wrong" not in refused.stderr  # the given token is a secret too


@pytest.mark.timeout(60)
def test_an_unreachable_service_exits_3_with_a_clear_message(tmp_path):
    url = "http://127.0.0.1:%d" % free_port()
    for args in (("status",), ("restart", "river", "--wait"), ("shutdown", "river")):
        result = run_cli(*args, "--url", url, "--timeout", "5")
        assert result.returncode == 3, (args, result.stderr)
        assert "cannot reach the pgvisor service at %s" % url in result.stderr


@pytest.mark.timeout(60)
def test_the_password_appears_in_no_log_line_output_or_answer(service):
    outputs = [service.log()]
    for args in (("status", "--json"), ("instances", "list"), ("instances", "show", "river"),
                 ("restart", "river", "--wait")):
        result = service.cli(*args, "-c", service.config)
        outputs += [result.stdout, result.stderr]
    for path in ("/status", "/instances", "/instances/river", "/health"):
        outputs.append(json.dumps(service.get(path)))
    leaked = [text for text in outputs if PASSWORD in text or TOKEN in text]
    assert not leaked
    assert "password=***" in service.log()  # the DSN was logged, masked
