"""hermes' documented program (tests/acceptance/hermes_program.py, only its imports changed)
runs as a process of its own against a real primary and against a standby that is then
promoted, and ends cleanly on SIGTERM."""
import os
import signal
import subprocess
import sys

import gevent
import pytest

from supervisor.testing import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


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
    """hermes_program.py with the values its docs leave to the reader filled in: the port
    of ``cluster`` (the docs' 5432 is never used here) and its data directory as the
    watch_path. Nothing else of the program changes."""
    with open(os.path.join(HERE, "hermes_program.py"), encoding="utf-8") as source:
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
