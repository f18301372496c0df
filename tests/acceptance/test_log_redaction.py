"""Worker processes and ``pgvisor piper`` log through the service's redacting formatter:
real subprocesses, a real Postgres, real spool files."""
import os
import subprocess
import sys
import uuid

import pytest

from instances.spool import FileQueue
from tests.acceptance.service_process import REPO, ServiceProcess, environ

HANDLERS = "tests.acceptance.handlers"


@pytest.mark.timeout(90)
def test_a_worker_process_logs_in_the_service_format_with_secrets_masked(
        pg_cluster, tmp_path):
    token = "tok-%s" % uuid.uuid4().hex
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_cluster.dsn_for("postgres")},
        "supervisor": {"probe_interval": 0.2},
    }, env={"PGVISOR_HTTP_TOKEN": token, "LEAK_ME": token})
    added = svc.cli("instances", "add", "iso", "-c", svc.config, "--channel", "iso_ch",
                    "--handler", HANDLERS + ":log_secret", "--isolation", "process",
                    "--queue-spool", tmp_path / "spool")
    assert added.returncode == 0, added.stderr
    svc.start()
    try:
        svc.wait_state("iso", "running")
        pg_cluster.execute("SELECT pg_notify('iso_ch', 'x')")
        svc.wait_handled("notify iso_ch x")
        svc.wait_log("handling with")
    finally:
        svc.stop()
    lines = [ln for ln in svc.log().splitlines() if "handling with" in ln]
    assert lines  # the catch_up and the notify
    assert token not in svc.log() and "hunter2-pw" not in svc.log()
    for line in lines:
        assert "handling with *** and password=***" in line
        assert " WARNING tests.acceptance.handlers  " in line  # pgvisor's text format


@pytest.mark.timeout(60)
def test_piper_logs_in_the_service_format_with_secrets_masked(tmp_path):
    secret = "pw-%s" % uuid.uuid4().hex
    queue = FileQueue(tmp_path / "in")
    queue.put({"channel": "c", "payload": "p", "kind": "notify"})
    queue.close()
    env = environ(tmp_path, PGVISOR_DATABASE_PASSWORD=secret, LEAK_ME=secret)
    result = subprocess.run([sys.executable, "-m", "supervisor.piper", "--queue-in-dir",
                             str(tmp_path / "in"), "--handler", HANDLERS + ":log_secret",
                             "--once"], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0, result.stderr
    assert secret not in result.stderr and "hunter2-pw" not in result.stderr
    assert "handling with *** and password=***" in result.stderr
    assert "action=piper.start" in result.stderr  # pgvisor's text format
    assert os.path.exists(tmp_path / "handled.log")
