"""How the kit runs server programs: as which OS account, and how it watches them die.

PostgreSQL refuses to run as root. When the kit runs as root (CI containers) every server
program (initdb, postgres, pg_basebackup) runs as the ``postgres`` account and the kit's
temporary directories are handed to it; as a normal user the programs run as that user.

Programs are started with :mod:`gevent.subprocess` so waiting for them never blocks the hub,
with or without monkey-patching. On Linux the postmaster gets ``PR_SET_PDEATHSIG`` = SIGKILL:
if the test process dies without running its exit hooks, its clusters die with it.
"""
import ctypes
import os
import pwd
import signal
import socket
import time

import gevent
from gevent import subprocess

from supervisor.testing.binaries import ClusterError

#: Account that runs the server programs when the kit runs as root.
SERVER_ACCOUNT = "postgres"

#: Ports never handed out (5432 belongs to a real local server).
RESERVED_PORTS = frozenset({5432})

_PR_SET_PDEATHSIG = 1


def server_account():
    """``(uid, gid)`` the server programs must run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise ClusterError(
            "running as root, but there is no %r account to run PostgreSQL as "
            "(postgres refuses root): create it, e.g. `apt-get install postgresql`"
            % SERVER_ACCOUNT) from None
    return entry.pw_uid, entry.pw_gid


def hand_over(path):
    """Give ``path`` (recursively) to the server account; a no-op when not root."""
    account = server_account()
    if account is None:
        return
    os.chown(path, *account)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(root, name), *account)


def _die_with_parent():
    # Runs in the child between fork and exec, after the uid change (which would clear it).
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except Exception:  # noqa: BLE001 - best effort, Linux only
        pass


def spawn(args, log_file, die_with_parent=False):
    """Start ``args`` as the server account with stdout/stderr appended to ``log_file``.

    Returns the :class:`gevent.subprocess.Popen`. Never blocks. The child gets its own
    session, so a Ctrl-C at the terminal reaches the test process, not the server.
    """
    kwargs = {}
    account = server_account()
    if account is not None:
        kwargs.update(user=account[0], group=account[1], extra_groups=[])
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
            preexec_fn=_die_with_parent if die_with_parent else None, **kwargs)


def run(args, log_file, timeout=120.0, what=None):
    """Run ``args`` to completion as the server account; raise ClusterError on failure.

    Cooperative: waits with gevent, so other greenlets keep running meanwhile.
    """
    proc = spawn(args, log_file)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise ClusterError("%s timed out after %ss; see %s:\n%s" % (
            what or args[0], timeout, log_file, log_tail(log_file))) from None
    if code != 0:
        raise ClusterError("%s failed with exit code %s; see %s:\n%s" % (
            what or args[0], code, log_file, log_tail(log_file)))


def log_tail(path, lines=20):
    """The last ``lines`` lines of a log file, or a note that it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return "(log %s unreadable: %s)" % (path, exc)
    return "\n".join(text.splitlines()[-lines:])


def free_port(host="127.0.0.1"):
    """A TCP port on ``host`` that was free a moment ago (never a reserved one)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def children_of(pid):
    """Pids whose parent is ``pid`` (Linux /proc; empty elsewhere)."""
    found = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(entry))
    return found


def alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def wait_gone(pids, timeout, blocking=False):
    """Wait until every pid in ``pids`` is gone; return the ones still alive at the deadline.

    Polls with ``gevent.sleep`` (or ``time.sleep`` when ``blocking``: exit hooks).
    """
    pause = time.sleep if blocking else gevent.sleep
    deadline = time.monotonic() + timeout
    remaining = [pid for pid in pids if alive(pid)]
    while remaining and time.monotonic() < deadline:
        pause(0.005)
        remaining = [pid for pid in remaining if alive(pid)]
    return remaining


def signal_quietly(pid, signum):
    """Send ``signum`` to ``pid``; a process that is already gone is fine."""
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
