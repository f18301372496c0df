"""hermes compatibility: a hermes-style program (listener + processor Components added to a
Client) runs against a real primary and standby after changing its imports."""
import os
import signal
import subprocess
import sys

import psycopg2
import pytest
from watchdog.events import FileCreatedEvent

from instances.components import Component
from instances.exceptions import InvalidConfigurationException
from instances.listeners import PostgresNotificationListener
from instances.queues import MemoryQueue
from supervisor import Client
from supervisor.testing import wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class RecordingProcessor(Component):
    """What a hermes user wrote: a Component taking work off the listener's queue."""

    interruptible_pre_execute = True

    def __init__(self, queue):
        super().__init__(name="processor")
        self.queue = queue
        self.seen = []

    def pre_execute(self):
        return self.queue.get()

    def execute(self, notification):
        self.seen.append((notification.kind, notification.payload))


def _hermes_program(dsn, watch_path=None):
    queue = MemoryQueue()
    client = Client(dsn, watch_path=watch_path, failover_files=["standby.signal"],
                    probe_interval=0.2)
    client.add_listener(PostgresNotificationListener(dsn, ["doc_changed"], queue,
                                                     name="hermes-listener"))
    processor = RecordingProcessor(queue)
    client.add_processor(processor)
    return client.start(), processor


def _notify(dsn, payload):
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute("SELECT pg_notify('doc_changed', %s)", (payload,))
    finally:
        conn.close()


def test_only_components_are_accepted():
    client = Client("dbname=x")
    with pytest.raises(InvalidConfigurationException, match="listener"):
        client.add_listener(object())
    with pytest.raises(InvalidConfigurationException, match="processor"):
        client.add_processor("not a component")
    with pytest.raises(InvalidConfigurationException, match="listener is missing"):
        client.start()


@pytest.mark.timeout(90)
def test_hermes_program_runs_on_primary_waits_on_standby_and_follows_promotion(
        pg_pair, tmp_path):
    primary_dsn, standby_dsn = pg_pair.primary.dsn, pg_pair.standby.dsn
    on_primary, primary_processor = _hermes_program(primary_dsn)
    on_standby, standby_processor = _hermes_program(standby_dsn, watch_path=str(tmp_path))
    try:
        wait_for(on_primary.is_alive, 10, message="components never started on the primary")
        wait_for(lambda: ("catch_up", "") in primary_processor.seen, 10)
        _notify(primary_dsn, "hello")
        wait_for(lambda: ("notify", "hello") in primary_processor.seen, 10)
        # On the standby the components stay stopped (hermes: only on the master).
        wait_for(lambda: on_standby.supervisor.database_status()["role"] == "standby", 10)
        assert on_standby.execute_role_based_procedure().get(timeout=10)
        assert not on_standby.is_alive()
        assert on_standby.supervisor.status()["hermes"]["state"] == "waiting"
        # Promotion: a failover event makes the standby's client start its components.
        pg_pair.standby.promote()
        on_standby.on_any_event(FileCreatedEvent(str(tmp_path / "standby.signal")))
        wait_for(on_standby.is_alive, 15, message="components never started after promotion")
        # The catch_up follows the LISTEN: from then on nothing sent is missed.
        wait_for(lambda: ("catch_up", "") in standby_processor.seen, 10)
        _notify(standby_dsn, "promoted")
        wait_for(lambda: ("notify", "promoted") in standby_processor.seen, 10)
    finally:
        on_primary.terminate()
        on_standby.terminate()
    assert on_primary.join(0) and not on_primary.is_alive()


_AT_EXIT_PROGRAM = """
import sys
from gevent.queue import Queue
from instances.components import Component
from instances.listeners import PostgresNotificationListener
from supervisor import Client

class Processor(Component):
    def execute(self, pre_exec_value):
        print(pre_exec_value.kind, flush=True)

client = Client(sys.argv[1])
client.daemon = sys.argv[2] == "daemon"
queue = Queue()
client.add_listener(PostgresNotificationListener(sys.argv[1], "doc_changed", queue))
client.add_processor(Processor())
client.start()
"""


def _catches(pid, signum):
    """Whether process ``pid`` has a handler for ``signum`` (/proc/PID/status SigCgt)."""
    with open("/proc/%d/status" % pid) as status:
        caught = next(line for line in status if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) & (1 << (signum - 1)))


@pytest.mark.parametrize("mode, signum", [("daemon", None), ("default", signal.SIGTERM),
                                          ("default", signal.SIGINT)])
@pytest.mark.timeout(60)
def test_a_started_client_holds_the_programs_end_until_a_signal_unless_daemon(
        pg_dsn, mode, signum):
    proc = subprocess.Popen([sys.executable, "-c", _AT_EXIT_PROGRAM, pg_dsn, mode], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        if signum is None:  # a daemonic Client ends with the program
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0, err
            return
        assert proc.stdout.readline().strip() == "catch_up"
        # Running past the module's end: its atexit hold has installed its signal handlers
        # (a catch_up can come before, while start() yields: a signal then is the
        # program's own KeyboardInterrupt, as in any program).
        wait_for(lambda: _catches(proc.pid, signal.SIGTERM), 20,
                 message="the program never reached its end's hold")
        assert proc.poll() is None
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
