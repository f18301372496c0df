"""systemd notify protocol: datagrams on a real unix socket, and the no-systemd no-op."""
import os
import socket

import pytest

from supervisor.sdnotify import Notifier


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
