"""systemd notify protocol: datagrams on a real unix socket, and the no-systemd no-op."""
import os
import socket

import gevent
import gevent.event
import pytest

from supervisor.sdnotify import Notifier, Watchdog
from supervisor.testing import wait_for


def test_without_notify_socket_nothing_is_sent():
    notifier = Notifier.from_environ({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


@pytest.mark.timeout(10)
def test_states_reach_the_socket_in_one_datagram(tmp_path):
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(path)
        sock.settimeout(5)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval == 2.0
        assert notifier.notify("READY=1", "STATUS=ok")
        assert sock.recv(100) == b"READY=1\nSTATUS=ok"
        notifier.close()


def test_a_watchdog_meant_for_another_pid_is_ignored():
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1000", "WATCHDOG_PID": str(os.getpid() + 1)}
    notifier = Notifier.from_environ(env)
    assert notifier.address == "\0x" and notifier.watchdog_interval is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path, caplog):
    notifier = Notifier(str(tmp_path / "gone"))
    assert notifier.notify("READY=1") is False
    assert "cannot notify systemd" in caplog.text


class Loop:
    """A working fake of the supervisor's actor loop: ping() answers while it runs."""

    def __init__(self):
        self.running = True
        self.blocked = gevent.event.Event()

    def ping(self):
        if self.running:
            return gevent.spawn(lambda: {})
        return gevent.spawn(self.blocked.wait)  # queued behind a request that never ends


class CountingNotifier(Notifier):
    def __init__(self):
        super().__init__("\0unused", 200000)
        self.sent = []

    def notify(self, *states):
        self.sent.extend(states)
        return True


@pytest.mark.timeout(10)
def test_the_watchdog_pings_only_while_the_actor_loop_answers(caplog):
    """Issue 16, item 11: a stuck supervisor loop must stop the pings (systemd then
    restarts the service); they resume when it answers again."""
    loop, notifier = Loop(), CountingNotifier()
    watchdog = Watchdog(notifier, loop.ping, interval=0.05).start()
    try:
        wait_for(lambda: watchdog.pings >= 3, 5)
        loop.running = False
        wait_for(lambda: watchdog.missed >= 1, 5)
        stuck = watchdog.pings
        wait_for(lambda: watchdog.missed >= 3, 5)
        assert watchdog.pings == stuck  # no ping while the loop does not answer
        loop.running = True
        loop.blocked.set()
        wait_for(lambda: watchdog.pings > stuck and watchdog.missed == 0, 5)
    finally:
        watchdog.stop()
    actions = [r.action for r in caplog.records if r.name == "supervisor.sdnotify"]
    assert actions == ["systemd.watchdog_missed", "systemd.watchdog_resumed"]
    assert set(notifier.sent) == {"WATCHDOG=1"}


@pytest.mark.timeout(10)
def test_while_draining_the_watchdog_pings_as_long_as_the_hub_runs():
    loop, notifier = Loop(), CountingNotifier()
    loop.running = False
    watchdog = Watchdog(notifier, loop.ping, interval=0.05).start()
    try:
        wait_for(lambda: watchdog.missed >= 1, 5)
        watchdog.hub_only()
        pings = watchdog.pings
        wait_for(lambda: watchdog.pings >= pings + 3, 5)
    finally:
        watchdog.stop()
        loop.blocked.set()


def test_without_a_watchdog_interval_nothing_runs():
    watchdog = Watchdog(Notifier(), lambda: None).start()
    assert watchdog._greenlet is None
