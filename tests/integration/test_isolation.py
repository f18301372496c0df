"""Process isolation (``isolation="process"``): the processors as child processes sharing
the spool. Real processes, real files, real Postgres; deaths and hangs are provoked with
real signals and handlers that kill or wedge their own process (tests.handlers:job)."""
import json
import os
import signal
import time

import psycopg2
import pytest

from instances import InstanceSpec, Registry
from instances.instance import Instance, make_queue
from instances.spool_layout import stats
from instances.workers import WorkerDied, WorkerProcesses
from supervisor import Supervisor
from supervisor.testing import wait_for


def _spec(spool, name="river", **fields):
    values = {"name": name, "channels": ["doc_changed"], "handler": "tests.handlers:job",
              "isolation": "process", "queue": {"spool": str(spool), "max_attempts": 3}}
    values.update(fields)
    return InstanceSpec.from_dict(values)


@pytest.fixture
def out(tmp_path, monkeypatch):
    """The file worker processes report to (``<payload> <pid>`` lines)."""
    path = tmp_path / "out.txt"
    path.touch()
    monkeypatch.setenv("PGVISOR_TEST_OUT", str(path))
    return path


def _lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def _payloads(path):
    return sorted(fields[0] for fields in _lines(path))


def _notify(dsn, channel, *payloads):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            for payload in payloads:
                cursor.execute("SELECT pg_notify(%s, %s)", (channel, payload))
    finally:
        conn.close()


def _alive(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


@pytest.fixture
def pools():
    """Stops every WorkerProcesses a test made (no child outlives its test)."""
    made = []
    yield made
    for pool in made:
        pool.kill(block=True, timeout=10)


def _pool(pools, spec, queue=None):
    pool = WorkerProcesses(queue if queue is not None else make_queue(spec), spec)
    pools.append(pool)
    return pool


@pytest.mark.timeout(60)
def test_children_consume_the_shared_spool_with_the_specs_handler(tmp_path, out, pools):
    spec = _spec(tmp_path / "spool", min_concurrency=2, max_concurrency=2)
    queue = make_queue(spec)
    pool = _pool(pools, spec, queue).start()
    for n in range(40):
        queue.put({"payload": "m%d" % n})
    wait_for(lambda: len(_lines(out)) == 40, 20, message="not all handled: %s" % _lines(out))
    assert _payloads(out) == sorted("m%d" % n for n in range(40))
    pids = {int(fields[1]) for fields in _lines(out)}
    assert os.getpid() not in pids and pids <= set(pool.pids)
    assert len(pool.pids) == 2
    wait_for(lambda: pool.stats()["processed"] == 40, 5)  # counted from the children's beats
    assert pool.stop(10) is True
    assert pool.exit == "normal" and not any(_alive(pid) for pid in pids)
    assert not any(stats(str(tmp_path / "spool"))["pending"].values())


@pytest.mark.timeout(60)
def test_sigkilled_worker_ends_the_instance_at_once(tmp_path, out, pg_dsn):
    spec = _spec(tmp_path / "spool", min_concurrency=2, max_concurrency=2)
    deaths = []
    instance = Instance(spec, pg_dsn, on_death=deaths.append).start()
    try:
        wait_for(lambda: instance.connected and instance.pool.ready, 15)
        victim, other = instance.pool.pids
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: deaths, 5)
        assert time.monotonic() - killed_at < 1.0  # the pipe's EOF, not a periodic check
        assert deaths == [instance] and instance.exit == "abnormal"
        assert isinstance(instance.exception, WorkerDied)
        assert "signal 9" in str(instance.exception)
        wait_for(lambda: not _alive(other), 10, message="the sibling was not stopped")
        assert not instance.alive and instance.health()["last_error"]
    finally:
        instance.stop(5)
