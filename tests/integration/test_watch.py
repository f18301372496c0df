"""FileWatcher with real files and a real watchdog observer: filtering, renames, debouncing,
threads (observer off the hub, callback on it), stop, and a hub that never blocks."""
import json
import logging
import os
import subprocess
import sys
import textwrap

import gevent
import gevent.event
import gevent.hub
import pytest

from instances.exceptions import InvalidConfigurationException
from supervisor.testing import HubHeartbeat, wait_for
from supervisor.watch import FileWatcher, real_thread_ident

pytestmark = pytest.mark.timeout(30)

FAILOVER_FILES = {"standby.signal", "recovery.signal", "recovery.conf", "recovery.done"}
DEADLINE = 5.0  # seconds an event may take to arrive (it normally takes ~debounce)


class Recorder:
    """A callback that records each call and where it ran, and sets an event per call."""

    def __init__(self, fail_first=False):
        self.calls = []
        self.threads = []
        self.greenlets = []
        self.called = gevent.event.Event()
        self.fail_first = fail_first

    def __call__(self, names):
        self.calls.append(names)
        self.threads.append(real_thread_ident())
        self.greenlets.append(gevent.getcurrent())
        self.called.set()
        if self.fail_first and len(self.calls) == 1:
            raise RuntimeError("callback broke")

    def next_call(self, timeout=DEADLINE):
        """Wait for the next call and return its names (AssertionError if none came)."""
        assert self.called.wait(timeout), "no callback within %.1f s" % timeout
        self.called.clear()
        return self.calls[-1]

    def no_call(self, timeout):
        """True if no call comes within ``timeout`` seconds."""
        return not self.called.wait(timeout)


@pytest.fixture
def watched(tmp_path):
    """A started FileWatcher on tmp_path for the failover files; stopped afterwards."""
    recorder = Recorder()
    watcher = FileWatcher(tmp_path, FAILOVER_FILES, recorder, debounce=0.1)
    watcher.start()
    yield watcher, recorder
    watcher.stop()


def write(path, text="x"):
    with open(path, "w") as f:
        f.write(text)


def test_creating_standby_signal_calls_back_once(watched, tmp_path):
    watcher, recorder = watched
    write(tmp_path / "standby.signal", "")
    with open(tmp_path / "standby.signal", "a") as f:
        f.write("more")  # modify and close again: same debounce window
    assert recorder.next_call() == {"standby.signal"}
    assert recorder.no_call(watcher.debounce * 4)
    assert len(recorder.calls) == 1


def test_unrelated_files_are_ignored(watched, tmp_path):
    watcher, recorder = watched
    for name in ("postgresql.conf", "standby.signal.bak", "xstandby.signal", "pg_wal"):
        write(tmp_path / name)
    (tmp_path / "subdir").mkdir()
    write(tmp_path / "subdir" / "standby.signal")  # not recursive
    assert recorder.no_call(watcher.debounce * 4)
    write(tmp_path / "recovery.signal")
    write(tmp_path / "another.conf")
    assert recorder.next_call() == {"recovery.signal"}


def test_rename_into_a_watched_name_counts(watched, tmp_path):
    watcher, recorder = watched
    write(tmp_path / "standby.signal.tmp")
    assert recorder.no_call(watcher.debounce * 4)
    os.rename(tmp_path / "standby.signal.tmp", tmp_path / "standby.signal")
    assert recorder.next_call() == {"standby.signal"}


def test_removing_and_renaming_away_a_watched_file_count(watched, tmp_path):
    watcher, recorder = watched
    write(tmp_path / "recovery.conf")
    write(tmp_path / "standby.signal")
    assert recorder.next_call() == {"recovery.conf", "standby.signal"}
    os.rename(tmp_path / "recovery.conf", tmp_path / "recovery.conf.old")
    assert recorder.next_call() == {"recovery.conf"}
    os.unlink(tmp_path / "standby.signal")
    assert recorder.next_call() == {"standby.signal"}


def test_many_events_are_merged_into_one_call(watched, tmp_path):
    watcher, recorder = watched
    for _ in range(20):
        for name in FAILOVER_FILES:
            write(tmp_path / name)
    assert recorder.next_call() == FAILOVER_FILES
    assert recorder.no_call(watcher.debounce * 4)
    assert len(recorder.calls) == 1


def test_observer_runs_in_a_real_thread_and_the_callback_on_the_hub(watched, tmp_path):
    watcher, recorder = watched
    hub_thread = real_thread_ident()
    assert watcher.observer_thread_ident not in (None, hub_thread)
    assert watcher.observer_thread_ident in sys._current_frames(), "a real OS thread"
    write(tmp_path / "standby.signal")
    recorder.next_call()
    assert recorder.threads == [hub_thread]
    greenlet = recorder.greenlets[0]
    assert not isinstance(greenlet, gevent.hub.Hub), "runs in its own greenlet, not the hub"
    assert greenlet is not gevent.getcurrent()


def test_stop_ends_the_observer_thread_and_the_callbacks(tmp_path):
    recorder = Recorder()
    watcher = FileWatcher(tmp_path, {"standby.signal"}, recorder, debounce=0.05)
    watcher.start()
    thread = watcher.observer_thread_ident
    assert watcher.running
    watcher.stop(timeout=5)
    assert not watcher.running
    wait_for(lambda: thread not in sys._current_frames(), timeout=5,
             message="observer thread still running after stop()")
    write(tmp_path / "standby.signal")
    assert recorder.no_call(0.5)
    watcher.stop()  # a second stop is harmless


def test_stop_drops_names_still_being_debounced(tmp_path):
    recorder = Recorder()
    watcher = FileWatcher(tmp_path, None, recorder, debounce=0.5)
    watcher.start()
    write(tmp_path / "file")
    wait_for(lambda: watcher.pending, timeout=DEADLINE, message="event collected")
    watcher.stop()
    assert recorder.no_call(1.0)


#: Files the writer creates: a burst the observer works through for a while, and under
#: the kernel's inotify queue (16,384 events; about 3 per file here): an unpaced writer
#: running for a second made tens of thousands and the overflow lost some.
FILES = 2000
WRITER = textwrap.dedent("""
    import sys
    for n in range(int(sys.argv[2])):
        with open("%s/f%04d" % (sys.argv[1], n), "w") as f:
            f.write("x")
""")


def test_the_hub_keeps_running_while_files_change(tmp_path):
    """The property is the worst stall of the hub (HubHeartbeat: less the time the kernel
    ran other processes), with the gap ending after the last delivery measured; a count of
    heartbeat ticks is a timing figure that two busy cores broke at random (issue 16).

    The files change in another process, as a failover's do (pg_ctl, an operator): written
    by the test on the hub, a create that waited for the file system's journal (another
    test's fsync) counted as the watcher's stall."""
    recorder = Recorder()
    expected = {"f%04d" % i for i in range(FILES)}
    with FileWatcher(tmp_path, None, recorder, debounce=0.05):
        beat = HubHeartbeat(0.005).start()
        try:
            writer = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), str(FILES)],
                                    capture_output=True, text=True, timeout=DEADLINE * 2)
            assert writer.returncode == 0, writer.stderr
            wait_for(lambda: set().union(*recorder.calls) == expected, timeout=DEADLINE,
                     message="every created file reported")
            ticks = beat.ticks
            wait_for(lambda: beat.ticks >= ticks + 2, timeout=DEADLINE)
        finally:
            beat.stop()  # a failure above must not leave its switch tracer installed
    assert len(recorder.calls) < FILES, "debounced into fewer calls than files"
    # watchdog's observer is a real thread competing for the GIL: on a loaded machine a
    # holder the kernel preempts keeps the hub waiting a scheduler slice (53 ms seen at
    # load 10). A hub that waited on the observer (the defect) stalls for the whole burst.
    assert beat.max_stall < 0.15, "hub blocked for %.3f s: %s" % (beat.max_stall, beat.worst)


def test_for_file_sees_an_atomic_replace(tmp_path):
    recorder = Recorder()
    registry = tmp_path / "registry.json"
    write(registry, "{}")
    with FileWatcher.for_file(registry, recorder, debounce=0.05) as watcher:
        assert watcher.names == {"registry.json"}
        write(tmp_path / "registry.json.tmp", '{"a": 1}')
        os.replace(tmp_path / "registry.json.tmp", registry)
        assert recorder.next_call() == {"registry.json"}
        write(tmp_path / "other.json")
        assert recorder.no_call(0.3)


def test_reading_a_watched_file_is_not_a_change(tmp_path):
    recorder = Recorder()
    registry = tmp_path / "registry.json"
    write(registry, "{}")
    with FileWatcher.for_file(registry, recorder, debounce=0.05):
        for _ in range(5):
            registry.read_text()
        assert recorder.no_call(0.5)


def test_any_file_mode_sees_a_spool_enqueue_by_rename(tmp_path):
    incoming, scratch = tmp_path / "incoming", tmp_path / "tmp"
    incoming.mkdir()
    scratch.mkdir()
    recorder = Recorder()
    with FileWatcher(incoming, None, recorder, debounce=0.05):
        write(scratch / "0001.msg")
        os.rename(scratch / "0001.msg", incoming / "0001.msg")
        assert recorder.next_call() == {"0001.msg"}


def test_a_failing_callback_is_logged_and_watching_goes_on(tmp_path, caplog):
    recorder = Recorder(fail_first=True)
    with caplog.at_level(logging.ERROR, logger="supervisor.watch"):
        with FileWatcher(tmp_path, {"standby.signal"}, recorder, debounce=0.05):
            write(tmp_path / "standby.signal")
            recorder.next_call()
            os.unlink(tmp_path / "standby.signal")
            assert recorder.next_call() == {"standby.signal"}
    failed = [r for r in caplog.records if getattr(r, "action", None) == "watch.callback_failed"]
    assert len(failed) == 1 and "callback broke" in failed[0].exc_text


def test_missing_watch_path_names_the_field_and_path(tmp_path):
    missing = tmp_path / "not-there"
    with pytest.raises(InvalidConfigurationException) as caught:
        FileWatcher(missing, FAILOVER_FILES, Recorder())
    assert caught.value.field == "watch_path"
    assert caught.value.value == str(missing)
    assert "watch_path" in str(caught.value) and str(missing) in str(caught.value)


def test_a_file_is_not_a_directory_to_watch(tmp_path):
    write(tmp_path / "file")
    with pytest.raises(InvalidConfigurationException, match="not a directory"):
        FileWatcher(tmp_path / "file", None, Recorder())
    with pytest.raises(InvalidConfigurationException) as caught:
        FileWatcher.for_file(tmp_path / "no-dir" / "registry.json", Recorder())
    assert caught.value.field == "path"


def test_a_directory_removed_before_start_is_reported_at_start(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    watcher = FileWatcher(target, FAILOVER_FILES, Recorder())
    target.rmdir()
    with pytest.raises(InvalidConfigurationException):
        watcher.start()
    assert not watcher.running


SCRIPT = textwrap.dedent("""
    import json, os, sys
    import gevent.event, gevent.monkey
    from supervisor.watch import FileWatcher, real_thread_ident
    directory, got = sys.argv[1], gevent.event.AsyncResult()
    with FileWatcher(directory, {"standby.signal"}, got.set, debounce=0.05) as watcher:
        open(os.path.join(directory, "standby.signal"), "w").close()
        names = got.get(timeout=10)
        observer = watcher.observer_thread_ident
    print(json.dumps({"patched": gevent.monkey.is_module_patched("threading"),
                      "names": sorted(names), "observer_off_hub": observer != real_thread_ident()}))
""")


def test_works_without_monkey_patching(tmp_path):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True,
                         text=True, timeout=25, cwd=repo)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"patched": False, "names": ["standby.signal"],
                                      "observer_off_hub": True}
