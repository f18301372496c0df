"""``pgvisor run`` start-up, signals and systemd: each test runs a service of its own.

The drain contract under test (supervisor/service.py): on SIGTERM the memory-queue
backlog is worked off within shutdown_grace, the handler in flight finishes, exit 0;
what cannot finish in time is killed and the dropped count is logged; a second signal
exits at once with 1.
"""
import json
import os
import signal
import socket
import time

import pytest

from supervisor.testing import wait_for
from tests.acceptance.service_process import ServiceProcess, run_cli

HANDLERS = "tests.acceptance.handlers"


def make_service(tmp_path, pg_dsn, handler="gated", grace=10.0, env=None, **supervisor):
    svc = ServiceProcess(tmp_path, {
        "database": {"dsn": pg_dsn},
        "supervisor": dict({"probe_interval": 0.2, "shutdown_grace": grace}, **supervisor),
    }, env=env)
    added = svc.cli("instances", "add", "gate", "--registry", svc.registry,
                    "--channel", "gate_ch", "--handler", "%s:%s" % (HANDLERS, handler))
    assert added.returncode == 0, added.stderr
    return svc


def notify(pg_database, *payloads):
    for payload in payloads:
        pg_database.execute("SELECT pg_notify('gate_ch', %s)", [payload])


def block_three(svc, pg_database):
    """g1 in the handler (blocked on the gate), g2 and g3 queued behind it."""
    svc.wait_state("gate", "running")
    notify(pg_database, "g1", "g2", "g3")
    svc.wait_handled("start g1")
    wait_for(lambda: svc.status()["gate"]["backlog"] == 2, 10, 0.02, "g2, g3 queued")


@pytest.mark.timeout(90)
def test_sigterm_drains_the_memory_queue_nothing_lost(tmp_path, pg_dsn, pg_database):
    svc = make_service(tmp_path, pg_dsn, grace=20.0).start()
    try:
        block_three(svc, pg_database)
        svc.signal(signal.SIGTERM)
        svc.wait_log("action=service.drain")
        assert svc.process.poll() is None  # waiting for the handler, not gone
        svc.open_gate()
        assert svc.wait_exit(30) == 0
    finally:
        svc.stop()
    handled = svc.handled()
    for payload in ("g1", "g2", "g3"):
        assert "done %s" % payload in handled
    assert "dropped at shutdown" not in svc.log()


@pytest.mark.timeout(90)
def test_sigterm_past_the_grace_kills_and_logs_what_was_dropped(tmp_path, pg_dsn,
                                                                pg_database):
    svc = make_service(tmp_path, pg_dsn, grace=0.5).start()
    try:
        block_three(svc, pg_database)
        started = time.monotonic()
        svc.signal(signal.SIGINT)
        assert svc.wait_exit(30) == 0
        assert time.monotonic() - started < 15
    finally:
        svc.stop()
    log = svc.log()
    assert "action=service.drain_timeout" in log
    # g1's handler was killed: it goes back to the queue unhandled, with g2 and g3.
    assert "instance gate: 3 queued notification(s) not handled, dropped at shutdown" in log
    assert "done g1" not in svc.handled()


@pytest.mark.timeout(90)
def test_a_second_signal_exits_at_once_with_1(tmp_path, pg_dsn, pg_database):
    svc = make_service(tmp_path, pg_dsn, grace=60.0).start()
    try:
        block_three(svc, pg_database)
        svc.signal(signal.SIGTERM)
        svc.wait_log("action=service.drain")
        started = time.monotonic()
        svc.signal(signal.SIGTERM)
        assert svc.wait_exit(30) == 1
        assert time.monotonic() - started < 10
    finally:
        svc.stop()
    assert "action=service.abort" in svc.log()


@pytest.mark.timeout(90)
def test_sighup_applies_live_settings_reports_restart_ones_and_rejects_bad_files(
        tmp_path, pg_dsn, pg_database):
    svc = make_service(tmp_path, pg_dsn, handler="record").start()
    try:
        svc.wait_state("gate", "running")
        settings = {"database": {"dsn": pg_dsn},
                    "supervisor": {"probe_interval": 0.2, "shutdown_grace": 10.0,
                                   "interval": 5.0},
                    "http": {"listen": "127.0.0.1:%d" % svc.port, "max_body": 1000},
                    "registry": {"path": "registry.json"}}
        svc.write_config(settings)
        svc.signal(signal.SIGHUP)
        svc.wait_log("action=service.reload")
        log = svc.log()
        assert "config supervisor.interval: 60.0 -> 5.0 (applied)" in log
        assert "config http.max_body: 65536 -> 1000 (needs a restart" in log

        settings["supervisor"]["interval"] = -1
        settings["supervisor"]["bogus"] = 1
        svc.write_config(settings)
        svc.signal(signal.SIGHUP)
        svc.wait_log("action=service.reload", count=2)
        assert svc.log().count("action=config.reload_rejected") == 2  # one per problem

        with open(svc.registry) as f:  # a hand edit of the registry, then SIGHUP
            doc = json.load(f)
        doc["instances"][0]["channels"] = ["gate_ch", "hup_ch"]
        with open(svc.registry, "w") as f:
            json.dump(doc, f)
        svc.signal(signal.SIGHUP)
        wait_for(lambda: svc.status()["gate"]["channels"] == ["gate_ch", "hup_ch"], 20, 0.05)
        pg_database.execute("SELECT pg_notify('hup_ch', 'after-hup')")
        svc.wait_handled("notify hup_ch after-hup")
        svc.signal(signal.SIGTERM)
        assert svc.wait_exit(30) == 0
    finally:
        svc.stop()


@pytest.mark.timeout(60)
def test_an_invalid_config_exits_2_with_one_line_per_problem(tmp_path):
    config = tmp_path / "pgvisor.toml"
    config.write_text('[database]\ndsn = "host=x password=Sup3rSecret"\n'
                      '[supervisor]\ninterval = -1\nrestart_max_rate = "often"\n'
                      '[http]\nlisten = "0.0.0.0:7390"\n[bogus]\nx = 1\n')
    result = run_cli("run", "-c", config, timeout=30)
    assert result.returncode == 2
    problems = [line for line in result.stderr.splitlines() if line.startswith("pgvisor: ")]
    assert len(problems) == 4, result.stderr
    assert all(str(config) in line for line in problems)
    assert any("interval = -1" in line for line in problems)
    assert any("restart_max_rate" in line for line in problems)
    assert any("refusing to bind 0.0.0.0:7390" in line for line in problems)
    assert "Sup3rSecret" not in result.stderr + result.stdout
    assert not (tmp_path / "registry.json").exists()  # nothing started

    flagged = run_cli("run", "-c", config, "--interval", "soon", timeout=30)
    assert flagged.returncode == 2
    assert "command line: [supervisor] interval = \"soon\": must be a number" in flagged.stderr
    missing = run_cli("run", "-c", tmp_path / "nope.toml", timeout=30)
    assert missing.returncode == 2 and "cannot load" in missing.stderr


@pytest.mark.timeout(90)
def test_systemd_gets_ready_watchdog_and_stopping(tmp_path, pg_dsn):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(20)
    svc = make_service(tmp_path, pg_dsn, handler="record",
                       env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    received = []

    def expect(state):
        while not any(state in message for message in received):
            received.append(sock.recv(4096).decode())
        return True

    try:
        svc.start(ready=False)
        assert expect("READY=1")
        assert expect("WATCHDOG=1")
        svc.signal(signal.SIGTERM)
        assert expect("STOPPING=1")
        assert svc.wait_exit(30) == 0
    finally:
        svc.stop()
        sock.close()
        os.unlink(path)
