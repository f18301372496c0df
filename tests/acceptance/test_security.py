"""Secure by default, end to end: the real ``pgvisor run`` and CLI in subprocesses, HTTP on
127.0.0.1, a real Postgres, real files (docs/operations.rst, "Security").

A service started with no token configured generates one (0600, in its state directory,
the path logged, the token never); the CLI given the same ``-c`` finds it; mutations
without it, without a JSON content type, or from a foreign ``Host`` change nothing; a
handler outside ``[security] handler_modules`` is refused and never imported.
"""
import json
import os
import stat

import pytest

from tests.acceptance.service_process import ServiceProcess, run_cli

HANDLERS = "tests.acceptance.handlers"


@pytest.fixture(scope="module")
def service(pg_cluster, tmp_path_factory):
    directory = tmp_path_factory.mktemp("secure")
    svc = ServiceProcess(directory, {
        "database": {"dsn": pg_cluster.dsn_for("postgres")},
        "supervisor": {"probe_interval": 0.2},
        "security": {"handler_modules": ["tests.acceptance."]},
    }, env={"POISON_MARKER": str(directory / "poisoned")})
    added = svc.cli("instances", "add", "river", "-c", svc.config, "--channel", "sec_ch",
                    "--handler", HANDLERS + ":record")
    assert added.returncode == 0, added.stderr
    svc.start()
    svc.wait_state("river", "running")
    yield svc
    svc.stop()


@pytest.mark.timeout(60)
def test_the_service_generates_a_private_token_and_logs_its_path_only(service):
    path = os.path.join(service.directory, "api.token")
    info = os.stat(path)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    token = service.api_token()
    assert len(token) >= 40
    assert "action=http.token" in service.log() and path in service.log()
    assert token not in service.log()


@pytest.mark.timeout(60)
def test_the_cli_finds_the_generated_token_through_the_config(service):
    restarted = service.cli("restart", "river", "--wait", "-c", service.config)
    assert (restarted.returncode, restarted.stdout.strip()) == (0, "restart river: restarted")
    assert "warning" not in restarted.stderr
    service.wait_state("river", "running")


@pytest.mark.timeout(60)
def test_without_the_token_the_cli_is_refused_with_the_ways_to_give_it(service, tmp_path):
    refused = service.cli("restart", "river", "--url", service.url)
    assert refused.returncode == 2
    assert "-c" in refused.stderr and "--token-file" in refused.stderr
    token_file = tmp_path / "token"
    token_file.write_text(service.api_token() + "\n")
    by_file = service.cli("verify", "river", "--wait", "--url", service.url,
                          "--token-file", token_file)
    assert by_file.returncode == 0, by_file.stderr
    by_env = service.cli("verify", "river", "--url", service.url)
    assert by_env.returncode == 2
    env = dict(service.env, PGVISOR_HTTP_TOKEN=service.api_token())
    assert run_cli("verify", "river", "--url", service.url, env=env).returncode == 0


@pytest.mark.timeout(60)
def test_a_token_on_the_command_line_works_but_warns(service):
    given = service.cli("verify", "river", "--url", service.url, "--token",
                        service.api_token())
    assert given.returncode == 0, given.stderr
    assert "--token shows in the process list" in given.stderr
    assert service.api_token() not in given.stderr + given.stdout


@pytest.mark.timeout(60)
def test_mutations_without_token_json_type_or_own_host_change_nothing(service):
    before = open(service.registry, "rb").read()
    body = {"channels": ["x"], "handler": HANDLERS + ":record"}
    assert service.call("PUT", "/instances/lake", body, token="")[0] == 401
    assert service.call("PUT", "/instances/lake", body, token="wrong")[0] == 401
    status, answer = service.call("PUT", "/instances/lake", body,
                                  headers={"Content-Type": "text/plain"})
    assert (status, answer["field"]) == (415, "Content-Type")
    status, answer = service.call("DELETE", "/instances/river",
                                  headers={"Host": "attacker.example:%d" % service.port})
    assert (status, answer["field"]) == (421, "Host")
    assert open(service.registry, "rb").read() == before
    assert service.status()["river"]["state"] == "running"


@pytest.mark.timeout(60)
def test_a_handler_outside_handler_modules_is_refused_and_never_imported(service):
    before = open(service.registry, "rb").read()
    for handler in ("tests.poison:handle", "subprocess:getoutput"):
        status, answer = service.call("PUT", "/instances/lake",
                                      {"channels": ["x"], "handler": handler})
        assert (status, answer["field"], answer["value"]) == (403, "handler", handler)
        assert "handler_modules" in answer["error"]
    assert not os.path.exists(os.path.join(service.directory, "poisoned"))
    assert open(service.registry, "rb").read() == before
    status, answer = service.call("PUT", "/instances/lake",
                                  {"channels": ["lake_ch"], "handler": HANDLERS + ":record"})
    assert status == 201, answer
    assert service.call("DELETE", "/instances/lake")[0] == 200


@pytest.mark.timeout(90)
def test_token_for_reads_and_allowed_hosts_come_from_the_config(pg_cluster, tmp_path):
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_cluster.dsn_for("postgres")},
        "http": {"token_for_reads": True, "allowed_hosts": ["pgvisor.internal"]},
    })
    svc.start()
    try:
        assert svc.call("GET", "/status", token="")[0] == 401
        assert svc.call("GET", "/status")[0] == 200
        assert svc.call("GET", "/health", token="")[0] == 200
        status, _ = svc.call("GET", "/health", headers={"Host": "pgvisor.internal:80"})
        assert status == 200
        status, answer = svc.call("GET", "/health", headers={"Host": "other.internal"})
        assert (status, answer["field"]) == (421, "Host")
        shown = svc.cli("status", "-c", svc.config, "--json")
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["database"]["state"] == "up"
    finally:
        svc.stop()
