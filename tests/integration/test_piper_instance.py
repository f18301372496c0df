"""A spool-source instance (``channels=[]``, a spool queue): mentat's piper as a registry
instance. Real files, a real Supervisor over a Registry in tmp_path; Postgres only for the
supervisor's monitor (and the listener case)."""
import json
import os

import psycopg2
import pytest
from gevent.queue import Empty

from instances import InstanceSpec
from instances.exceptions import InvalidConfigurationException
from instances.instance import Instance
from instances.spool import FileQueue
from instances.spool.layout import stats
from supervisor import Supervisor
from supervisor.testing import wait_for

pytestmark = pytest.mark.timeout(60)


def text_result(message):
    """A handler whose return value no spool can take (a str)."""
    return "not a message"


def _source(tmp_path, name="piper", **fields):
    values = {"name": name, "channels": [], "handler": "tests.handlers:shout",
              "queue": {"spool": str(tmp_path / "in"), "queue_out_dir": str(tmp_path / "out")}}
    values.update(fields)
    return InstanceSpec.from_dict(values)


def _put(directory, *payloads):
    queue = FileQueue(directory)
    try:
        return [queue.put({"payload": p}) for p in payloads]
    finally:
        queue.close()


def _taken(directory):
    """Every message in ``directory``'s spool (claimed, then settled: the spool empties)."""
    queue, messages = FileQueue(directory), []
    try:
        while True:
            try:
                item = queue.get(block=False)
            except Empty:
                return messages
            messages.append(item)
            queue.done(item)
    finally:
        queue.close()


def _waiting_files(directory):
    return stats(str(directory))["incoming"] if os.path.isdir(directory) else 0


@pytest.fixture
def supervise(registry):
    made = []

    def start(dsn):
        sup = Supervisor(registry, dsn, interval=3600, wait_after_db_revived=0.5,
                         probe_interval=0.2, set_as_current=False)
        made.append(sup)
        return sup.start() or sup
    yield start
    for sup in made:
        sup.stop(timeout=5)


def _wait_running(sup, name):
    wait_for(lambda: sup.status()[name]["state"] == "running", 10,
             message="%s never ran: %r" % (name, sup.status().get(name)))


def test_registry_instance_moves_spooled_messages_through_the_handler_to_the_next_spool(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    ids = _put(tmp_path / "in", "a", "b", "c")
    wait_for(lambda: _waiting_files(tmp_path / "out") == 3, 10)
    out = _taken(tmp_path / "out")
    assert [(m["payload"], m["source"]) for m in out] == list(zip("ABC", ids, strict=True))
    wait_for(lambda: sup.status()["piper"]["processed"] == 3, 5)
    status = sup.status()["piper"]
    assert (status["connected"], status["channels"], status["received"]) == (True, [], 0)
    assert sup.instance("piper").listener is None
    wait_for(lambda: not any(stats(str(tmp_path / "in"))["pending"].values()), 5)
    assert stats(str(tmp_path / "in"))["incoming"] == 0


def test_failing_message_goes_to_the_input_errors_and_the_rest_goes_on(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    _put(tmp_path / "in", "good-1", "bad-2", "good-3")
    wait_for(lambda: _waiting_files(tmp_path / "out") == 2, 10)
    assert [m["payload"] for m in _taken(tmp_path / "out")] == ["GOOD-1", "GOOD-3"]
    errors = tmp_path / "in" / "errors"
    wait_for(lambda: len(os.listdir(errors)) == 2, 5)
    data, meta = sorted(os.listdir(errors))
    assert json.loads((errors / data).read_text())["payload"] == "bad-2"
    assert "bad payload" in json.loads((errors / meta).read_text())["error"]
    status = sup.status()["piper"]
    assert (status["state"], status["failed"], status["restarts"]) == ("running", 1, 0)


def test_handler_result_no_spool_takes_goes_to_errors_not_a_crash(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path, handler="tests.integration.test_piper_instance:text_result"))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    _put(tmp_path / "in", "x")
    wait_for(lambda: len(os.listdir(tmp_path / "in" / "errors")) == 2, 10)
    meta = [n for n in os.listdir(tmp_path / "in" / "errors") if n.endswith(".meta")][0]
    assert "not <class 'str'>" in json.loads((tmp_path / "in" / "errors" / meta).read_text())[
        "error"]
    status = sup.status()["piper"]
    assert (status["state"], status["restarts"], status["failed"]) == ("running", 0, 1)
    assert _waiting_files(tmp_path / "out") == 0


def test_killed_spool_source_is_restarted_by_the_supervisor_and_goes_on(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    first = sup.instance("piper")
    first.kill()
    wait_for(lambda: sup.instance("piper") is not first and sup.instance("piper").alive, 5)
    assert sup.status()["piper"]["restarts"] == 1
    _put(tmp_path / "in", "after")
    wait_for(lambda: _waiting_files(tmp_path / "out") == 1, 10)
    assert [m["payload"] for m in _taken(tmp_path / "out")] == ["AFTER"]


def _nowhere(tmp_path):
    return "host=%s port=1 dbname=nothing user=nobody connect_timeout=1" % tmp_path


def test_spool_source_added_while_the_database_is_down_runs_database_instances_wait(
        tmp_path, registry, supervise):
    sup = supervise(_nowhere(tmp_path))
    wait_for(lambda: sup.database_status()["state"] == "down", 10)
    registry.add(InstanceSpec(name="river", channels=["doc_changed"],
                              handler="tests.handlers:record"))
    registry.add(_source(tmp_path))
    _wait_running(sup, "piper")
    _put(tmp_path / "in", "offline")
    wait_for(lambda: _waiting_files(tmp_path / "out") == 1, 10)
    assert [m["payload"] for m in _taken(tmp_path / "out")] == ["OFFLINE"]
    assert sup.instance("river") is None and sup.status()["river"]["state"] != "running"


@pytest.mark.timeout(20)
def test_spool_source_registered_before_a_start_without_database_runs(
        tmp_path, registry, supervise):
    registry.add(_source(tmp_path))
    sup = supervise(_nowhere(tmp_path))
    wait_for(lambda: sup.database_status()["state"] == "down", 10)
    _wait_running(sup, "piper")


@pytest.mark.timeout(20)
def test_spool_source_killed_while_the_database_is_down_is_restarted(
        tmp_path, registry, supervise):
    sup = supervise(_nowhere(tmp_path))
    wait_for(lambda: sup.database_status()["state"] == "down", 10)
    registry.add(_source(tmp_path))
    _wait_running(sup, "piper")
    first = sup.instance("piper")
    first.kill()
    wait_for(lambda: sup.instance("piper") is not first and sup.instance("piper").alive, 5)


def test_pause_holds_a_spool_source_like_any_instance(tmp_path, registry, supervise, pg_dsn):
    sup = supervise(pg_dsn)
    wait_for(lambda: sup.database_status()["state"] == "up", 10)
    sup.pause()
    registry.add(_source(tmp_path))
    assert sup.verify(["piper"]).get(timeout=10) == {"piper": "unchanged"}
    assert sup.instance("piper") is None
    sup.resume()
    _wait_running(sup, "piper")


def test_channels_to_and_from_none_recreate_the_instance(tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    first = sup.instance("piper")
    registry.update("piper", channels=["doc_changed"])
    wait_for(lambda: sup.instance("piper") is not first
             and sup.instance("piper").listener is not None, 10)
    wait_for(lambda: sup.instance("piper").connected, 10)
    second = sup.instance("piper")
    registry.update("piper", channels=[])
    wait_for(lambda: sup.instance("piper") is not second
             and sup.instance("piper").alive, 10)
    assert sup.instance("piper").listener is None
    assert sup.status()["piper"]["restarts"] == 0


def test_channels_without_a_spool_are_refused_and_the_registry_keeps_its_state(
        tmp_path, registry):
    registry.add(_source(tmp_path))
    with pytest.raises(InvalidConfigurationException) as info:
        registry.add(InstanceSpec.from_dict(
            {"name": "empty", "channels": [], "handler": "tests.handlers:record"}))
    assert info.value.field == "channels,queue"
    with pytest.raises(InvalidConfigurationException):
        registry.update("piper", queue=None)
    assert registry.names() == ["piper"] and registry.get("piper") == _source(tmp_path)


def test_listener_spool_instance_forwards_the_handler_output(tmp_path, pg_dsn):
    spec = _source(tmp_path, name="river", channels=["doc_changed"])
    instance = Instance(spec, pg_dsn).start()
    try:
        wait_for(lambda: instance.connected, 10)
        conn = psycopg2.connect(pg_dsn)
        try:
            with conn, conn.cursor() as cursor:
                cursor.execute("SELECT pg_notify('doc_changed', 'hello')")
        finally:
            conn.close()
        wait_for(lambda: _waiting_files(tmp_path / "out") == 2, 10)  # catch_up + hello
    finally:
        instance.stop(5)
    assert sorted(m["payload"] for m in _taken(tmp_path / "out")) == ["", "HELLO"]


@pytest.mark.timeout(90)
def test_process_isolated_spool_source_forwards_from_its_worker_processes(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(tmp_path, isolation="process", max_concurrency=2))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    _put(tmp_path / "in", "p1", "p2")
    wait_for(lambda: _waiting_files(tmp_path / "out") == 2, 30)
    assert sorted(m["payload"] for m in _taken(tmp_path / "out")) == ["P1", "P2"]


def unencodable_result(message):
    """A dict the spool cannot write as JSON (a set inside)."""
    return {"channel": "out", "payload": "x", "tags": {"a", "b"}}


def test_handler_result_that_is_not_json_fails_that_message_alone(
        tmp_path, registry, supervise, pg_dsn):
    registry.add(_source(
        tmp_path, handler="tests.integration.test_piper_instance:unencodable_result"))
    sup = supervise(pg_dsn)
    _wait_running(sup, "piper")
    _put(tmp_path / "in", "x", "y")
    wait_for(lambda: len(os.listdir(tmp_path / "in" / "errors")) == 4, 10)
    status = sup.status()["piper"]
    assert (status["state"], status["restarts"], status["failed"]) == ("running", 0, 2)
    wait_for(lambda: not any(stats(str(tmp_path / "in"))["pending"].values()), 10,
             message="the settled files are deleted")
