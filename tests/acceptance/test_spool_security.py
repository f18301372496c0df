"""Spool directories are trusted only when nobody else can write them, and a message read
from one is type-checked before it becomes a Notification: the real ``pgvisor run`` in a
subprocess, its HTTP API, real directories and files, a real Postgres."""
import json
import os
import time

import pytest

from instances.spool import errors as spool_errors
from instances.spool import names
from supervisor.testing import wait_for
from tests.acceptance.service_process import ServiceProcess

HANDLERS = "tests.acceptance.handlers"


@pytest.fixture(scope="module")
def service(pg_cluster, tmp_path_factory):
    directory = tmp_path_factory.mktemp("spoolsec")
    svc = ServiceProcess(directory, {
        "database": {"dsn": pg_cluster.dsn_for("postgres")},
        "supervisor": {"probe_interval": 0.2, "restart_max_rate": "100/m"},
    })
    svc.start()
    yield svc
    svc.stop()


def _spec(spool, **queue):
    return {"channels": ["spool_sec_ch"], "handler": HANDLERS + ":record",
            "queue": dict({"spool": str(spool)}, **queue)}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["0o777", "0o770", "0o702", 0o666])
def test_a_group_or_world_writable_mode_is_refused_at_once(service, tmp_path, mode):
    before = open(service.registry, "rb").read() if os.path.exists(service.registry) else b""
    status, answer = service.call("PUT", "/instances/wide", _spec(tmp_path / "q", mode=mode))
    assert status == 400, answer
    assert answer["field"] == "queue.mode" and "group or others" in answer["error"]
    assert not (tmp_path / "q").exists()
    after = open(service.registry, "rb").read() if os.path.exists(service.registry) else b""
    assert after == before


def _refused_on_start(service, name, spool, words):
    status, answer = service.call("PUT", "/instances/" + name, _spec(spool))
    assert status == 201, answer
    try:
        wait_for(lambda: all(w in (service.status()[name].get("last_error") or "")
                             for w in words), 30, 0.05,
                 "%s reports %s" % (name, words))
        assert service.status()[name]["state"] != "running"
    finally:
        assert service.call("DELETE", "/instances/" + name)[0] == 200


@pytest.mark.timeout(90)
def test_an_existing_spool_open_to_others_or_a_symlink_is_not_used(service, tmp_path):
    wide = tmp_path / "wide"
    wide.mkdir()
    os.chmod(wide, 0o777)
    _refused_on_start(service, "wide", wide, ["writable by group or others", str(wide)])
    assert not (wide / "incoming").exists()  # nothing was created in it

    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    _refused_on_start(service, "linked", link, ["symlink", str(link)])
    assert os.listdir(real) == []


def drop(spool, message):
    """What another local process could do: write a file, rename it into incoming/."""
    name = names.new_base()
    path = spool / "tmp" / name
    path.write_text(json.dumps(message))
    os.rename(path, spool / "incoming" / name)


@pytest.mark.timeout(90)
def test_a_message_of_the_wrong_types_goes_to_errors_with_the_reason(service, tmp_path):
    spool = tmp_path / "spool"
    status, answer = service.call("PUT", "/instances/typed", _spec(spool))
    assert status == 201, answer
    service.wait_state("typed", "running")
    bad = {"a": {"channel": ["echo", "pwned"], "payload": "x", "kind": "notify"},
           "b": {"channel": "c", "payload": {"cmd": 1}, "kind": "notify"},
           "c": {"channel": "c", "payload": "x", "kind": "notify", "pid": "12"},
           "d": {"channel": "c", "payload": "x", "kind": 7},
           "e": {"channel": "c", "payload": "x", "kind": "notify", "received_at": "now"}}
    for message in list(bad.values()) + [{"channel": "c", "payload": "fine",
                                          "kind": "notify", "pid": 5,
                                          "received_at": time.time()}]:
        drop(spool, message)
    service.wait_handled("notify c fine")
    wait_for(lambda: len(spool_errors.error_names(str(spool))) == len(bad), 20, 0.05,
             "the bad messages are in errors/")
    reasons = [json.loads((spool / "errors" / (n + spool_errors.META_SUFFIX)).read_text())
               for n in spool_errors.error_names(str(spool))]
    assert all(m["reason"] == "undecodable" for m in reasons), reasons
    shown = " ".join(m["error"] for m in reasons)
    for field in ("channel", "payload", "pid", "kind", "received_at"):
        assert "field %s=" % field in shown, shown
    assert [line for line in service.handled() if "pwned" in line or "cmd" in line] == []
    assert service.call("DELETE", "/instances/typed")[0] == 200
