"""Spool-backed instances (``queue={"spool": DIR, ...}``) against a real Postgres: the
listener spools notifications (and the catch_up), processors consume the spool, failures
go to errors/, and a kill -9 of the whole service process loses nothing."""
import json
import os
import signal
import subprocess
import sys

import gevent
import psycopg2
import pytest

from instances import InstanceSpec
from instances.instance import Instance, make_queue
from instances.spool.layout import stats
from supervisor.testing import wait_for
from tests import handlers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _spec(spool, handler="tests.handlers:record", **fields):
    values = {"name": "river", "channels": ["doc_changed"], "handler": handler,
              "queue": {"spool": str(spool)}}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _notify(dsn, *payloads):
    """All ``payloads`` in one transaction: delivered together, read in one go."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for payload in payloads:
                cursor.execute("SELECT pg_notify('doc_changed', %s)", (payload,))
    finally:
        conn.close()


@pytest.fixture
def running(pg_dsn):
    handlers.reset()
    made = []

    def start(spec):
        instance = Instance(spec, pg_dsn).start()
        made.append(instance)
        wait_for(lambda: instance.connected, 10)
        return instance
    yield start
    for instance in made:
        instance.stop(5)
    if handlers.blocking["event"] is not None:
        handlers.blocking["event"].set()


def test_spec_queue_options_reach_the_file_queue(tmp_path):
    spec = _spec(tmp_path / "spool", queue={
        "spool": str(tmp_path / "spool"), "fsync": True, "max_attempts": 7, "mode": "0o750",
        "queue_out_dir": str(tmp_path / "next"), "queue_out_limit": 12,
        "queue_out_wait": 0.5})
    queue = make_queue(spec, owner="river")
    try:
        assert queue.directory == str(tmp_path / "spool") and queue.writer.fsync is True
        assert queue.max_attempts == 7 and queue.mode == 0o750
        assert queue.owner.startswith("river@")
        assert (queue.output.directory, queue.output.limit, queue.output.wait) == (
            str(tmp_path / "next"), 12, 0.5)
        assert os.stat(tmp_path / "spool" / "incoming").st_mode & 0o777 == 0o750
    finally:
        queue.close()


@pytest.mark.timeout(30)
def test_listener_spools_catch_up_and_each_read_as_one_batch_file(tmp_path, pg_dsn, running):
    spool = tmp_path / "spool"
    handlers.blocking["event"] = gevent.event.Event()
    instance = running(_spec(spool, handler="tests.handlers:block"))
    wait_for(lambda: [n.kind for n in handlers.seen] == ["catch_up"], 5)
    assert handlers.seen[0].id.endswith("#0")  # it went through the spool
    _notify(pg_dsn, *["n%d" % i for i in range(5)])
    wait_for(lambda: instance.listener.received == 5, 5)
    # five notifications, one file (written by the group commit just after the read)
    wait_for(lambda: stats(str(spool))["incoming"] == 1, 5)
    handlers.blocking["event"].set()
    wait_for(lambda: len(handlers.seen) == 6, 5)
    batch = handlers.seen[1:]
    assert [n.payload for n in batch] == ["n%d" % i for i in range(5)]
    assert [n.id.split("#")[1] for n in batch] == [str(i) for i in range(5)]
    assert len({n.id.split("#")[0] for n in batch}) == 1
    wait_for(lambda: not any(stats(str(spool))["pending"].values()), 5)
    assert stats(str(spool))["incoming"] == 0


@pytest.mark.timeout(30)
def test_failing_message_of_a_batch_goes_alone_to_errors_and_the_instance_goes_on(
        tmp_path, pg_dsn, running):
    spool = tmp_path / "spool"
    instance = running(_spec(spool, handler="tests.handlers:fail_on_bad"))
    _notify(pg_dsn, "good-1", "bad-2", "good-3")
    wait_for(lambda: [n.payload for n in handlers.seen if n.kind == "notify"]
             == ["good-1", "good-3"], 5)
    names = sorted(os.listdir(spool / "errors"))
    assert len(names) == 2 and names[1] == names[0] + ".meta"
    assert json.loads((spool / "errors" / names[0]).read_text())["payload"] == "bad-2"
    meta = json.loads((spool / "errors" / names[1]).read_text())
    assert meta["reason"] == "failed" and "bad payload" in meta["error"]
    assert meta["message_id"] == handlers.failures[0].id
    _notify(pg_dsn, "good-4")
    wait_for(lambda: handlers.seen[-1].payload == "good-4", 5)
    assert instance.alive and instance.health()["failed"] == 1


SERVICE = """
from gevent import monkey; monkey.patch_all()
import json, os, sys
import gevent, gevent.event
from instances import InstanceSpec
from instances.instance import Instance
instance = Instance(InstanceSpec.from_dict(json.loads(sys.argv[1])), sys.argv[2]).start()
while not instance.connected:
    gevent.sleep(0.01)
if os.environ.get("PGVISOR_TEST_HANG"):  # a write cut short by the crash: a tmp/ file
    fd, path, base = instance.queue.writer.reserve()
    os.write(fd, b'{"channel": "doc_changed", "payload": "half-writ')
print("ready", flush=True)
gevent.event.Event().wait()
"""


def _service(spec, dsn, hang):
    env = dict(os.environ)
    env.pop("PGVISOR_TEST_HANG", None)
    if hang:
        env["PGVISOR_TEST_HANG"] = "1"
    proc = subprocess.Popen([sys.executable, "-c", SERVICE, json.dumps(spec.to_dict()), dsn],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    with gevent.Timeout(20, AssertionError("the service did not start")):
        assert proc.stdout.readline().strip() == "ready"
    return proc


def _recorded(out):
    return sorted(line.split()[0] for line in out.read_text().splitlines())


@pytest.mark.timeout(90)
def test_kill_9_of_the_service_with_messages_everywhere_loses_nothing(
        tmp_path, pg_dsn, monkeypatch):
    spool, out = tmp_path / "spool", tmp_path / "out.txt"
    out.touch()
    monkeypatch.setenv("PGVISOR_TEST_OUT", str(out))
    spec = _spec(spool, handler="tests.handlers:job")
    first = _service(spec, pg_dsn, hang=True)
    try:
        _notify(pg_dsn, "bad-0")                              # -> errors/
        wait_for(lambda: stats(str(spool))["errors"] == 1, 10)
        _notify(pg_dsn, "hang-1")                             # -> pending/, in the handler
        wait_for(lambda: sum(stats(str(spool))["pending"].values()) == 1, 10)
        _notify(pg_dsn, *["ok-%d" % i for i in range(1, 6)])  # -> incoming/, one batch
        # written before the next commit: a read that takes both makes them one group file
        wait_for(lambda: stats(str(spool))["incoming"] == 1, 10)
        _notify(pg_dsn, "ok-6")                               # -> incoming/
        wait_for(lambda: stats(str(spool))["incoming"] == 2, 10)
        before = stats(str(spool))
        assert before["tmp"] == 1 and before["errors"] == 1
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        first.stdout.close()
    assert _recorded(out) == ["catch_up"]
    second = _service(spec, pg_dsn, hang=False)
    try:
        expected = sorted(["catch_up", "catch_up", "hang-1"] + ["ok-%d" % i for i in range(1, 7)])
        wait_for(lambda: _recorded(out) == expected, 20,
                 message="after the restart: %s" % _recorded(out))
        wait_for(lambda: not any(stats(str(spool))["pending"].values()), 5)
        after = stats(str(spool))
        assert (after["incoming"], after["tmp"], after["errors"]) == (0, 0, 1)
        assert "half-writ" not in out.read_text()
    finally:
        second.send_signal(signal.SIGKILL)
        second.wait(10)
        second.stdout.close()


@pytest.mark.timeout(60)
def test_a_clean_drain_gives_claims_back_unchanged_and_done_messages_are_not_resent(
        tmp_path, pg_dsn):
    from instances.spool import FileQueue

    handlers.reset()
    handlers.blocking["event"] = gevent.event.Event()
    spool = tmp_path / "spool"
    instance = Instance(_spec(spool, handler="tests.handlers:hold_on_hold"), pg_dsn).start()
    try:
        wait_for(lambda: instance.connected, 10)
        wait_for(lambda: [n.kind for n in handlers.seen] == ["catch_up"], 10)
        _notify(pg_dsn, "a", "hold", "c")  # one batch file; its handler hangs on "hold"
        wait_for(lambda: [n.payload for n in handlers.seen][1:] == ["a", "hold"], 10)
        assert instance.drain(0.5) == 0  # a SIGTERM's drain: the hung handler is killed
    finally:
        handlers.blocking["event"].set()
    counts = stats(str(spool))
    assert not any(counts["pending"].values()), counts  # nothing left looking like a crash
    assert instance.queue.closed
    assert not any("." in name for name in os.listdir(spool / "incoming"))  # attempts: 0
    queue = FileQueue(spool)  # the next start
    items = []
    while queue.qsize():
        items.append(queue.get(block=False))
    assert [i.payload for i in items] == ["hold", "c"]  # "a" was done: not sent again
    assert [queue.attempts(i) for i in items] == [1, 1]
    queue.close()


@pytest.mark.timeout(60)
def test_a_removed_instance_closes_its_spool_and_gives_its_claims_back(
        tmp_path, pg_dsn, registry):
    from supervisor import Supervisor

    handlers.blocking["event"] = gevent.event.Event()
    spool = tmp_path / "spool"
    sup = Supervisor(registry, pg_dsn, interval=3600, probe_interval=0.2,
                     shutdown_grace=0.5, set_as_current=False)  # the hung handler: killed
    sup.start()
    try:
        registry.add(_spec(spool, handler="tests.handlers:hold_on_hold"))
        wait_for(lambda: sup.status().get("river", {}).get("state") == "running", 20)
        instance = sup.instance("river")
        wait_for(lambda: instance.connected, 10)
        _notify(pg_dsn, "hold")
        wait_for(lambda: "hold" in [n.payload for n in handlers.seen], 10)
        registry.remove("river")
        wait_for(lambda: "river" not in sup.status(), 30)
        assert instance.queue.closed  # its directory fds closed
        assert instance.queue.writer._dir_fds == {}
        wait_for(lambda: not any(stats(str(spool))["pending"].values()), 10)
        assert not any("." in name for name in os.listdir(spool / "incoming"))
    finally:
        handlers.blocking["event"].set()
        sup.stop(timeout=5)


@pytest.mark.timeout(30)
def test_a_handler_error_is_retried_and_a_blip_sends_nothing_to_errors(
        tmp_path, pg_dsn, running):
    spool = tmp_path / "spool"
    instance = running(_spec(spool, handler="tests.handlers:flaky"))
    _notify(pg_dsn, "a", "b")
    wait_for(lambda: [n.payload for n in handlers.seen if n.kind == "notify"] == ["a", "b"],
             10)
    assert [n.payload for n in handlers.failures if n.kind == "notify"] == [
        "a"] * 3 + ["b"] * 3  # two failures each, then the try that worked
    assert instance.health()["failed"] == 0
    assert not os.listdir(spool / "errors")
