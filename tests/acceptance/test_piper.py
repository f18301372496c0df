"""``python -m supervisor.piper`` (``pgvisor piper``) on real spool directories, run as a
real process: messages flow IN -> handler -> OUT, failures go to errors/ with a .meta,
SIGTERM stops it cleanly, bad options are refused."""
import json
import os
import signal
import subprocess
import sys

import pytest

from instances.queues import Empty
from instances.spool import FileQueue
from instances.spool.layout import stats
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
])
def test_bad_options_are_refused_naming_the_field(tmp_path, args, named):
    args = [str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = run_piper("--queue-in-dir", tmp_path / "in", "--once", *args)
    assert result.returncode == 2
    assert named in result.stderr
