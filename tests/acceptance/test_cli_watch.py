"""``pgvisor status --watch [SECONDS]``: in place on a terminal (a pty here), one table per
interval through a pipe, JSON lines with ``--json``; Ctrl-C ends it with 0; an unreachable
service is reported and retried, not fatal."""
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from instances import InstanceSpec, Registry
from tests.acceptance.service_process import REPO, environ, free_port
from tests.acceptance.status_screenshot import service

pytestmark = pytest.mark.timeout(90)
DEADLINE = 30  # seconds a test waits for output


@pytest.fixture
def svc(pg_dsn, tmp_path):
    svc = service(tmp_path, pg_dsn)
    Registry(svc.registry, resolve=False).add(InstanceSpec(
        name="river", channels=["river_ch"], handler="tests.acceptance.page_handlers:idle",
        resolve=False))
    svc.start()
    svc.wait_state("river", "running")
    yield svc
    svc.stop()


def watch(env, *args, stdout=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "supervisor.cli", "status", *args],
                            env=dict(env, COLUMNS="160"), cwd=REPO, stdout=stdout,
                            stderr=subprocess.PIPE)


def read_until(fd, done):
    """Bytes read from ``fd`` until ``done(bytes so far)`` or the deadline."""
    data, deadline = b"", time.monotonic() + DEADLINE
    while not done(data):
        left = deadline - time.monotonic()
        assert left > 0, "no such output in %ds: %r" % (DEADLINE, data[-2000:])
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 65536)
            assert chunk, "the output ended: %r" % data[-2000:]
            data += chunk
    return data


def interrupt(proc):
    """Ctrl-C: the watch ends with exit code 0."""
    proc.send_signal(signal.SIGINT)
    try:
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        proc.kill()


def test_watch_through_a_pipe_prints_one_table_per_interval(svc):
    proc = watch(svc.env, "-c", svc.config, "--watch", "0.2")
    try:
        out = read_until(proc.stdout.fileno(), lambda d: d.count(b"pgvisor status ") >= 3)
    finally:
        interrupt(proc)
    text = out.decode()
    assert "\x1b[" not in text  # no terminal codes into a pipe
    frames = [frame for frame in text.split("pgvisor status ")[1:] if frame.strip()]
    for frame in frames[:3]:
        assert "every 0.2s" in frame and "database: up, role primary" in frame, frame
        row = next(line for line in frame.splitlines() if line.startswith("river "))
        assert "running" in row
    assert svc.token not in text


def test_watch_on_a_terminal_redraws_in_place_with_rates(svc):
    master, slave = pty.openpty()
    proc = watch(svc.env, "-c", svc.config, "--watch", "0.2", stdout=slave)
    os.close(slave)
    try:
        out = read_until(master, lambda d: d.count(b"\x1b[H") >= 3)
    finally:
        interrupt(proc)
        os.close(master)
    text = out.decode()
    assert text.startswith("\x1b[2J\x1b[H")  # cleared once, then home for every frame
    frames = text.split("\x1b[H")[1:]
    for frame in frames[:2]:
        assert frame.endswith("\x1b[J") or frame == frames[-1]
        lines = frame.split("\x1b[K\r\n")
        assert lines[0].startswith("pgvisor status http://127.0.0.1:")
        assert any(line.startswith("river ") and "running" in line for line in lines)
        assert all(len(line) <= 160 for line in lines)
    assert "RATE/S" in frames[1]


def test_watch_json_prints_one_document_per_line(svc):
    proc = watch(svc.env, "-c", svc.config, "--watch", "0.2", "--json")
    try:
        out = read_until(proc.stdout.fileno(), lambda d: d.count(b"\n") >= 3)
    finally:
        interrupt(proc)
    for line in out.decode().splitlines()[:3]:
        data = json.loads(line)
        assert data["database"]["state"] == "up"
        assert [v["state"] for v in data["instances"]] == ["running"]


def test_watch_keeps_trying_while_the_service_is_unreachable(tmp_path):
    proc = watch(environ(tmp_path), "--url", "http://127.0.0.1:%d" % free_port(),
                 "--watch", "0.2")
    try:
        err = read_until(proc.stderr.fileno(), lambda d: d.count(b"cannot reach") >= 3)
        assert proc.poll() is None  # still watching
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        proc.kill()
    assert err.decode().startswith("pgvisor: cannot reach the pgvisor service at")


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan"])
def test_watch_refuses_an_interval_that_is_not_seconds(tmp_path, value):
    proc = watch(environ(tmp_path), "--watch", value)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and value in err.decode(), err
