"""``python -m supervisor.piper`` (``pgvisor piper``) on real spool directories, run as a
real process: messages flow IN -> handler -> OUT, failures go to errors/ with a .meta,
SIGTERM stops it cleanly, bad options are refused, and a piper started with every option
mentat documents (its docs: the piper's configuration) honours each of them."""
import json
import os
import signal
import stat
import subprocess
import sys

import gevent
import pytest

from instances.queues import Empty
from instances.spool import FileQueue
from instances.spool.layout import SUBDIRS, stats
from supervisor.testing import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def piper(*args, **kwargs):
    return [sys.executable, "-m", "supervisor.piper"] + [str(a) for a in args]


def run_piper(*args):
    return subprocess.run(piper(*args), cwd=ROOT, capture_output=True, text=True, timeout=30)


def fill(directory, *messages):
    queue = FileQueue(directory)
    ids = [queue.put(m) for m in messages]
    queue.close()
    return ids


def drain(directory):
    queue = FileQueue(directory)
    items = []
    try:
        while True:
            item = queue.get(block=False)
            items.append(item.to_dict() if hasattr(item, "to_dict") else dict(item))
            queue.done(item)
    except Empty:
        return items
    finally:
        queue.close()


@pytest.mark.timeout(60)
def test_demo_handler_prints_each_message_and_passes_it_on(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    ids = fill(src, {"n": 1}, {"n": 2}, {"channel": "doc_changed", "payload": "42"})
    result = run_piper("--queue-in-dir", src, "--queue-out-dir", dst,
                       "--handler", "supervisor.piper:print_message", "--once")
    assert result.returncode == 0, result.stderr
    printed = [json.loads(line) for line in result.stdout.splitlines()]
    assert [p["id"] for p in printed] == ids  # FIFO, ids kept
    assert [p.get("n") for p in printed[:2]] == [1, 2] and printed[2]["payload"] == "42"
    assert stats(str(src))["incoming"] == 0 and not any(stats(str(src))["pending"].values())
    passed_on = drain(dst)
    assert [m["id"] for m in passed_on] == ids


@pytest.mark.timeout(60)
def test_chain_of_two_pipers_with_a_failing_message_set_aside(tmp_path):
    src, mid, dst = tmp_path / "in", tmp_path / "mid", tmp_path / "out"
    fill(src, {"payload": "one"}, {"payload": "bad-two"}, {"payload": "three"})
    first = run_piper("--queue-in-dir", src, "--queue-out-dir", mid, "--queue-out-limit", 10,
                      "--queue-out-wait", 0.05, "--handler", "tests.handlers:shout", "--once")
    assert first.returncode == 0, first.stderr
    second = run_piper("--queue-in-dir", mid, "--queue-out-dir", dst,
                       "--handler", "supervisor.piper:print_message", "--once")
    assert second.returncode == 0, second.stderr
    assert [m["payload"] for m in drain(dst)] == ["ONE", "THREE"]
    errors = sorted(os.listdir(src / "errors"))
    assert len(errors) == 2 and errors[1].endswith(".meta")
    meta = json.loads((src / "errors" / errors[1]).read_text())
    assert meta["reason"] == "failed" and "bad payload 'bad-two'" in meta["error"]
    assert json.loads((src / "errors" / errors[0]).read_text())["payload"] == "bad-two"


@pytest.mark.timeout(60)
def test_sigterm_stops_a_running_piper_cleanly(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    proc = subprocess.Popen(piper("--queue-in-dir", src, "--queue-out-dir", dst,
                                  "--handler", "tests.handlers:shout"),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (src / "incoming").is_dir(), 15)
        fill(src, {"payload": "live"})  # picked up while it runs
        wait_for(lambda: (dst / "incoming").is_dir() and os.listdir(dst / "incoming"), 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
    assert [m["payload"] for m in drain(dst)] == ["LIVE"]
    assert not any(stats(str(src))["pending"].values())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args, named", [
    (["--handler", "no.such.module:fn"], "no.such.module"),
    (["--handler", "tests.handlers:job", "--queue-out-limit", "0",
      "--queue-out-dir", "OUT"], "queue_out_limit"),
    (["--handler", "tests.handlers:job", "--concurrency", "0"], "concurrency"),
    (["--handler", "tests.handlers:job", "--queue-in-perms", "rwx"], "queue.queue_in_perms"),
    (["--handler", "tests.handlers:job", "--queue-in-wait", "0"], "queue.queue_in_wait"),
])
def test_bad_options_are_refused_naming_the_field(tmp_path, args, named):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = run_piper("--queue-in-dir", tmp_path / "in", "--once", *args)
    assert result.returncode == 2
    assert named in result.stderr


@pytest.mark.timeout(60)
def test_piper_runs_with_every_mentat_option(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    stderr_path = tmp_path / "piper.stderr"
    printed = []
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(piper(
            "--queue-in-dir", src, "--queue-in-perms", "0750", "--queue-in-wait", 0.1,
            "--queue-out-dir", dst, "--queue-out-limit", 2, "--queue-out-wait", 0.1,
            "--handler", "supervisor.piper:print_message"),
            cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True)
    reader = gevent.spawn(lambda: printed.extend(json.loads(line)["id"] for line in proc.stdout))

    def log():
        return stderr_path.read_text()

    try:
        wait_for(lambda: "piper %s -> " % src in log() or proc.poll() is not None, 20)
        assert proc.poll() is None, log()
        # queue_in_perms: the mode of the spool directories it made.
        for sub in ("",) + SUBDIRS:
            assert stat.S_IMODE(os.stat(src / sub).st_mode) == 0o750, sub
        # queue_in_wait: the idle piper looks again and finds another process's files.
        ids = fill(src, *({"n": n} for n in range(5)))
        # queue_out_limit: two files in the next spool, then the third's forward waits
        # (re-checking every queue_out_wait), its message still claimed, its handler done.
        wait_for(lambda: len(printed) >= 3, 20, message=log())
        assert stats(str(dst))["incoming"] == 2
        wait_for(lambda: sum(stats(str(src))["pending"].values()) == 1, 10,
                 message="the files forwarded are deleted, the third waits: " + log())
        assert printed[:3] == ids[:3]
        got = []
        wait_for(lambda: got.extend(m["id"] for m in drain(dst)) or len(got) == 5, 30,
                 message="the next spool never received all five")
        assert got == ids  # FIFO through the chain, ids kept
        wait_for(lambda: len(printed) == 5, 10)
        assert printed == ids
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log()
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
    assert ("queue_in_perms 0o750, queue_in_wait 0.1 s, queue_out_limit 2, queue_out_wait "
            "0.1 s") in log()
