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
from instances.isolation import child
from instances.isolation.parent import WorkerDied, WorkerProcesses
from instances.spool.layout import stats
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
    wait_for(lambda: not any(stats(str(tmp_path / "spool"))["pending"].values()), 10,
             message="the settled files are deleted")


@pytest.mark.timeout(60)
def test_an_idle_worker_process_is_woken_by_the_services_put_not_by_its_polling(
        tmp_path, out, pools, monkeypatch):
    monkeypatch.setenv("PGVISOR_TEST_SPOOL_POLL", "3600")  # the children look hourly
    spec = InstanceSpec.from_dict({  # not resolved here: the env var is for the children
        "name": "river", "channels": ["doc_changed"], "handler": "tests.handlers:job",
        "isolation": "process", "queue": {"spool": str(tmp_path / "spool")}}, resolve=False)
    queue = make_queue(spec)
    pool = _pool(pools, spec, queue).start()
    wait_for(lambda: pool.ready, 30)
    queue.put({"payload": "first"})
    wait_for(lambda: len(_lines(out)) == 1, 20)
    queue.put({"payload": "second"})  # the child waits in get: only a wake-up is in time
    wait_for(lambda: len(_lines(out)) == 2, 20, message="the idle child was not woken")
    assert _payloads(out) == ["first", "second"]
    assert pool.stop(10) is True


def test_a_child_reads_its_config_line_even_with_wake_ups_behind_it():
    read_fd, write_fd = os.pipe()
    try:
        os.write(write_fd, json.dumps({"spec": {}, "path": []}).encode() + b"\n\n\n")
        assert json.loads(child._read_line(read_fd)) == {"spec": {}, "path": []}
    finally:
        os.close(read_fd)
        os.close(write_fd)


@pytest.mark.timeout(60)
def test_sigkilled_worker_ends_the_instance_at_once(tmp_path, out, pg_dsn):
    spec = _spec(tmp_path / "spool", min_concurrency=2, max_concurrency=2)
    deaths = []
    instance = Instance(spec, pg_dsn, on_death=deaths.append).start()
    try:
        wait_for(lambda: instance.connected and instance.pool.ready, 15)
        assert instance.health()["backlog"] >= 0  # a pool of processes has a status too
        victim, other = instance.pool.pids
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: deaths, 5)
        # The pipe's EOF, not a missed beat (heartbeat_timeout: 30 s); margin for load.
        assert time.monotonic() - killed_at < 5.0
        assert deaths == [instance] and instance.exit == "abnormal"
        assert isinstance(instance.exception, WorkerDied)
        assert "signal 9" in str(instance.exception)
        wait_for(lambda: not _alive(other), 10, message="the sibling was not stopped")
        assert not instance.alive and instance.health()["last_error"]
    finally:
        instance.stop(5)


@pytest.fixture
def supervised(tmp_path, pg_dsn):
    """A Supervisor with a generous restart budget over a fresh registry."""
    registry = Registry(tmp_path / "registry.json")
    sup = Supervisor(registry, pg_dsn, interval=3600, restart_max_rate="100/m",
                     wait_after_db_revived=0.5, probe_interval=0.2)
    yield sup
    sup.stop(timeout=10)


def _errors_meta(spool):
    errors = spool / "errors"
    return [json.loads((errors / name).read_text())
            for name in sorted(os.listdir(errors)) if name.endswith(".meta")]


def _restarts(sup):
    return sup.status()["river"]["restarts"]


@pytest.mark.timeout(90)
def test_handler_killing_its_process_is_retried_then_set_aside(tmp_path, out, pg_dsn,
                                                               supervised):
    spool = tmp_path / "spool"
    supervised.registry.add(_spec(spool))
    supervised.start()
    wait_for(lambda: supervised.status()["river"]["state"] == "running"
             and supervised.instance("river").pool.ready, 15)
    _notify(pg_dsn, "doc_changed", "ok-1")
    wait_for(lambda: "ok-1" in _payloads(out), 10)
    _notify(pg_dsn, "doc_changed", "crash-1")
    # Three deliveries (max_attempts=3), each kills its worker: three restarts, then errors/.
    wait_for(lambda: _errors_meta(spool), 30, message="crash-1 never reached errors/")
    [meta] = _errors_meta(spool)
    assert meta["reason"] == "max_attempts" and meta["attempts"] == 3
    # running = alive and LISTENing again: a NOTIFY before the LISTEN would be gone.
    wait_for(lambda: _restarts(supervised) == 3
             and supervised.status()["river"]["state"] == "running", 15)
    _notify(pg_dsn, "doc_changed", "ok-2")
    wait_for(lambda: "ok-2" in _payloads(out), 10)
    assert "crash-1" not in _payloads(out)
    assert "worker" in supervised.status()["river"]["last_error"]
    assert supervised.status()["river"]["state"] == "running"


@pytest.mark.timeout(90)
def test_worker_stuck_in_a_cpu_loop_is_killed_and_restarted(tmp_path, out, pg_dsn,
                                                            supervised, monkeypatch):
    monkeypatch.setattr(WorkerProcesses, "heartbeat_timeout", 1.0)
    monkeypatch.setattr(WorkerProcesses, "beat_interval", 0.1)
    spool = tmp_path / "spool"
    supervised.registry.add(_spec(spool, queue={"spool": str(spool), "max_attempts": 2}))
    supervised.start()
    wait_for(lambda: supervised.status()["river"]["state"] == "running"
             and supervised.instance("river").pool.ready, 15)
    first = supervised.instance("river")
    _notify(pg_dsn, "doc_changed", "spin-1")
    wait_for(lambda: supervised.instance("river") is not first, 10,
             message="the hung worker was not killed")
    assert "hung" in str(first.exception) and first.pool.hangs == 1
    wait_for(lambda: _errors_meta(spool), 20, message="spin-1 never reached errors/")
    assert _errors_meta(spool)[0]["reason"] == "max_attempts"
    wait_for(lambda: _restarts(supervised) == 2
             and supervised.status()["river"]["state"] == "running", 15)
    _notify(pg_dsn, "doc_changed", "ok-1")
    wait_for(lambda: "ok-1" in _payloads(out), 10)


@pytest.mark.timeout(120)
def test_two_processes_handle_a_cpu_bound_backlog_side_by_side(tmp_path, out, monkeypatch):
    """What isolation must give a CPU-bound handler: both worker processes take part, and
    items of the two are in flight at the same moment. Asserted as that, not as a speed-up:
    how much faster two processes are depends on what else the machine runs (two busy cores
    made "two outrun one" fail at random, issue 16); ``bench/isolation.py`` measures it."""
    monkeypatch.setattr(WorkerProcesses, "beat_interval", 0.02)  # counts come with beats
    spool = tmp_path / "spool"
    spec = _spec(spool, handler="tests.handlers:burn_5ms_timed", min_concurrency=2,
                 max_concurrency=2)
    queue = make_queue(spec)
    pool = WorkerProcesses(queue, spec).start()
    try:
        wait_for(lambda: pool.ready, 15)
        for n in range(200):
            queue.put({"payload": str(n)})
        wait_for(lambda: pool.stats()["processed"] == 200, 60, interval=0.02)
    finally:
        pool.stop(10)
    runs = sorted((float(start), float(end), pid) for _, pid, start, end in _lines(out))
    assert len(runs) == 200 and len({pid for _, _, pid in runs}) == 2
    overlapping = any(later[0] < earlier[1] and later[2] != earlier[2]
                      for earlier, later in zip(runs, runs[1:], strict=False))
    assert overlapping, "the two workers never had an item in flight at the same time"
