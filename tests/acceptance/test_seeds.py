"""The seed projects' documented programs run on pgvisor with only their imports changed:
hermes' Client program (tests/acceptance/programs/hermes_client.py) against a real primary
and a standby that is then promoted, each as a process of its own, stopped by SIGTERM; and
mentat's piper started with every option mentat documents."""
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
PROGRAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs")


class Program:
    """A program run as a process; its stdout lines are collected as they come."""

    def __init__(self, argv, stderr_path):
        self.lines = []
        self.stderr_path = stderr_path
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable] + [str(a) for a in argv], cwd=ROOT, stdout=subprocess.PIPE,
                stderr=stderr, text=True, env=dict(os.environ, PYTHONPATH=ROOT))
        self._reader = gevent.spawn(self._read)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, line, timeout=30):
        wait_for(lambda: line in self.lines or self.proc.poll() is not None, timeout,
                 message="%r never printed (got %r)" % (line, self.lines))
        assert line in self.lines, "exited %s: %s" % (self.proc.returncode, self.stderr())

    def stop(self, timeout=30):
        """SIGTERM, then the exit code and stderr."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise
        self._reader.join(5)
        return code, self.stderr()

    def stderr(self):
        with open(self.stderr_path, encoding="utf-8", errors="replace") as stderr:
            return stderr.read()


def hermes_program(tmp_path, cluster, name):
    """hermes_client.py with the values its docs leave to the reader filled in: the port
    of ``cluster`` (the docs' 5432 is never used here) and its data directory as the
    watch_path. Nothing else of the program changes."""
    with open(os.path.join(PROGRAMS, "hermes_client.py"), encoding="utf-8") as source:
        text = source.read()
    for docs, ours in (("'port': 5432", "'port': %d" % cluster.port),
                       ("'/var/lib/postgresql/9.4/main/'", repr(cluster.datadir))):
        assert text.count(docs) == 1, docs
        text = text.replace(docs, ours)
    path = tmp_path / ("%s.py" % name)
    path.write_text(text, encoding="utf-8")
    return Program([path], "%s.stderr" % path)


def _sessions_of_example(cluster):
    return sorted(row[0] for row in cluster.execute(
        "SELECT application_name FROM pg_stat_activity WHERE usename = 'example'"))


def _add_doc(cluster):
    cluster.execute("INSERT INTO docs DEFAULT VALUES; NOTIFY doc_changed", dbname="example_db")


@pytest.mark.timeout(120)
def test_hermes_docs_program_runs_on_the_primary_and_on_a_promoted_standby(pg_pair, tmp_path):
    primary, standby = pg_pair.primary, pg_pair.standby
    # The docs' DSN names a database example_db and a user example (password example).
    primary.create_user("example", "example")
    primary.execute("CREATE DATABASE example_db OWNER example")
    primary.execute("CREATE TABLE docs (id serial PRIMARY KEY); ALTER TABLE docs OWNER TO "
                    "example", dbname="example_db")
    wait_for(lambda: standby.execute("SELECT 1 FROM pg_database WHERE datname = 'example_db'"),
             30)
    wait_for(lambda: standby.execute("SELECT to_regclass('docs') IS NOT NULL",
                                     dbname="example_db") == [(True,)], 30)
    on_primary = hermes_program(tmp_path, primary, "on_primary")
    on_standby = hermes_program(tmp_path, standby, "on_standby")
    try:
        on_primary.wait_line("docs: 0")  # the catch_up after the LISTEN: execute() ran
        _add_doc(primary)
        on_primary.wait_line("docs: 1")  # the NOTIFY woke the processor
        # The standby's program checks the role and keeps its components stopped: its
        # only session there is the role probe (no listener, no processor reading).
        wait_for(lambda: "docs: 1" in standby.execute("SELECT 'docs: ' || count(*) FROM docs",
                                                      dbname="example_db")[0], 30)
        wait_for(lambda: _sessions_of_example(standby) == ["pgvisor-monitor"], 30)
        assert on_standby.lines == [] and on_standby.proc.poll() is None
        standby.promote()
        on_standby.wait_line("docs: 1")  # started on promotion; its catch_up re-read
        _add_doc(standby)
        on_standby.wait_line("docs: 2")
        assert on_primary.lines == ["docs: 0", "docs: 1"]
    finally:
        results = [program.stop() for program in (on_primary, on_standby)]
    for code, stderr in results:  # SIGTERM at the program's end: a clean exit
        assert code == 0, stderr
        assert "Traceback" not in stderr, stderr


# -- mentat's piper ------------------------------------------------------------------------

def _put(directory, messages):
    """Enqueue as another process would (its own FileQueue): the piper finds them by looking."""
    queue = FileQueue(directory)
    try:
        return [queue.put(message) for message in messages]
    finally:
        queue.close()


def _take_all(directory):
    queue = FileQueue(directory)
    taken = []
    try:
        while True:
            item = queue.get(block=False)
            taken.append(item["id"])
            queue.done(item)
    except Empty:
        return taken
    finally:
        queue.close()


@pytest.mark.timeout(60)
def test_piper_runs_with_every_mentat_option(tmp_path):
    src, dst = tmp_path / "in", tmp_path / "out"
    piper = Program(["-m", "supervisor.piper", "--queue-in-dir", src, "--queue-in-perms", "0750",
                     "--queue-in-wait", 0.1, "--queue-out-dir", dst, "--queue-out-limit", 2,
                     "--queue-out-wait", 0.1, "--handler", "supervisor.piper:print_message"],
                    str(tmp_path / "piper.stderr"))
    try:
        wait_for(lambda: "piper %s -> " % src in piper.stderr() or piper.proc.poll() is not None,
                 20)
        assert piper.proc.poll() is None, piper.stderr()
        # queue_in_perms: the mode of the spool directories it made.
        for sub in ("",) + SUBDIRS:
            assert stat.S_IMODE(os.stat(src / sub).st_mode) == 0o750, sub
        # queue_in_wait: the idle piper looks again and finds another process's files.
        ids = _put(src, [{"n": n} for n in range(5)])
        # queue_out_limit: two files in the next spool, then the third's forward waits
        # (re-checking every queue_out_wait) while its handler already ran.
        wait_for(lambda: len(piper.lines) >= 3, 20, message=piper.stderr())
        assert stats(str(dst))["incoming"] == 2
        assert sum(stats(str(src))["pending"].values()) == 1  # the third, still claimed
        assert [json.loads(line)["id"] for line in piper.lines] == ids[:3]
        got = []
        wait_for(lambda: got.extend(_take_all(dst)) or len(got) == 5, 30,
                 message="the next spool never received all five")
        assert got == ids  # FIFO through the chain, ids kept
    finally:
        code, stderr = piper.stop()
    assert code == 0, stderr
    assert ("queue_in_perms 0o750, queue_in_wait 0.1 s, queue_out_limit 2, queue_out_wait "
            "0.1 s") in stderr
