"""The data directory of a throwaway cluster: initdb once, copy, configure.

``initdb`` costs about a second, so the kit runs it once per test process and server version
into a *template* directory and gives every new cluster a copy of it (a fraction of that
time). The template is removed when the process exits.

Configuration written into every data directory:

- ``postgresql.conf``: settings for speed over durability (no fsync), replication enabled so
  a standby can be made from any cluster, the server log on stderr (the kit sends it to a
  file next to the data directory), and the caller's ``settings`` last;
- ``pg_hba.conf`` and ``pg_ident.conf``: nobody is trusted. Over the unix socket, ``peer``
  authentication maps only the OS user running the kit (and the server account) to the
  superuser; over TCP (127.0.0.1, ::1) everyone needs scram-sha-256, the superuser with
  :data:`SUPERUSER_PASSWORD` (random per process, set by initdb; the kit's TCP DSNs carry
  it). Members of the group role :data:`PASSWORD_GROUP` need their password on the socket
  too. So another local user cannot connect as the superuser (and run ``COPY ... TO
  PROGRAM`` as the server account) while a kit cluster runs.
"""
import atexit
import ctypes
import os
import pwd
import secrets
import shutil
import tempfile

import gevent.lock

from supervisor.testing import processes
from supervisor.testing.binaries import program

#: Environment variable naming the directory that holds the clusters' temporary directories.
TMPDIR_ENV = "PGVISOR_PG_TMPDIR"

#: Preferred parent of the temporary directories: memory-backed, so copies and writes are fast.
MEMORY_TMPDIR = "/dev/shm"

#: Bytes that must be free in MEMORY_TMPDIR before the kit uses it.
MEMORY_TMPDIR_MIN_FREE = 1 << 30

#: Group role whose members must give a password (scram-sha-256), even on the unix socket.
PASSWORD_GROUP = "pgvisor_password_users"

#: The cluster's superuser (initdb -U): peer on the unix socket, this password over TCP.
SUPERUSER = "postgres"

#: The superuser's password in every cluster this process makes (random per process).
SUPERUSER_PASSWORD = secrets.token_urlsafe(24)

#: The pg_ident.conf map of the unix socket's peer authentication.
IDENT_MAP = "pgvisor_kit"

#: Settings of every throwaway cluster (before the caller's own ``settings``).
DEFAULT_SETTINGS = {
    "fsync": False,
    "synchronous_commit": False,
    "full_page_writes": False,
    "shared_buffers": "32MB",
    "max_connections": 200,
    "wal_level": "replica",
    "max_wal_senders": 5,
    "max_replication_slots": 5,
    "wal_keep_size": "64MB",
    "hot_standby": True,
    "wal_retrieve_retry_interval": "100ms",  # a standby reconnects at once after a restart
    "password_encryption": "scram-sha-256",
    # segments as files in the data directory: removed with it even after a crash
    "dynamic_shared_memory_type": "mmap",
    "logging_collector": False,
    "log_destination": "stderr",
    "log_line_prefix": "%m [%p] %q%a@%d ",
    "log_min_messages": "warning",
}

_HBA = """\
# written by supervisor.testing: nobody is trusted; the socket maps the kit's OS users
local   all          +{group}                  scram-sha-256
host    all          +{group}   127.0.0.1/32   scram-sha-256
host    all          +{group}   ::1/128        scram-sha-256
local   all          all                       peer map={map}
host    all          all        127.0.0.1/32   scram-sha-256
host    all          all        ::1/128        scram-sha-256
local   replication  all                       peer map={map}
host    replication  all        127.0.0.1/32   scram-sha-256
host    replication  all        ::1/128        scram-sha-256
"""

_templates = {}
_template_lock = gevent.lock.RLock()


def format_setting(value):
    """A value as postgresql.conf wants it: on/off, bare numbers, quoted strings."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (int, float)):
        return str(value)
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "''")


def _remove_in_owner(path, owner_pid):
    if os.getpid() == owner_pid:  # not in a forked child: the parent still uses it
        shutil.rmtree(path, ignore_errors=True)


def base_directory():
    """Where temporary cluster directories go: ``PGVISOR_PG_TMPDIR``, else ``/dev/shm`` when
    writable with 1 GiB free (a tmpfs: several times faster than most disks), else the
    ``tempfile`` default (``TMPDIR``)."""
    explicit = os.environ.get(TMPDIR_ENV)
    if explicit:
        return explicit
    try:
        stat = os.statvfs(MEMORY_TMPDIR)
        if os.access(MEMORY_TMPDIR, os.W_OK | os.X_OK) and \
                stat.f_bavail * stat.f_frsize >= MEMORY_TMPDIR_MIN_FREE:
            return MEMORY_TMPDIR
    except OSError:
        pass
    return tempfile.gettempdir()


def make_tempdir(prefix):
    """A new private temporary directory (mode 0711: others may reach a socket in it, not
    list it), owned by the server account."""
    path = tempfile.mkdtemp(prefix=prefix, dir=base_directory())
    os.chmod(path, 0o711)
    processes.hand_over(path)
    return path


def _template(bindir):
    """The initdb'd template for ``bindir``, made on first use (serialised between greenlets)."""
    with _template_lock:
        if bindir not in _templates:
            top = make_tempdir("pgvisor-template-")
            atexit.register(_remove_in_owner, top, os.getpid())
            datadir = os.path.join(top, "data")
            pwfile = os.path.join(top, "superuser.password")
            with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w",
                      encoding="ascii") as f:
                f.write(SUPERUSER_PASSWORD + "\n")
            processes.hand_over(pwfile)
            try:
                processes.run(
                    [program(bindir, "initdb"), "-D", datadir, "-U", SUPERUSER,
                     "--auth-local=peer", "--auth-host=scram-sha-256", "--pwfile", pwfile,
                     "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
                     "--wal-segsize=1"],  # 1 MB WAL segments: smaller copies and base backups
                    os.path.join(top, "initdb.log"), what="initdb")
            finally:
                os.unlink(pwfile)
            _templates[bindir] = datadir
        return _templates[bindir]


def create(bindir, datadir, settings=None):
    """Make ``datadir`` (must not exist) a configured copy of the template. Blocks the
    calling greenlet for the copy (tens of milliseconds)."""
    shutil.copytree(_template(bindir), datadir, symlinks=True)
    processes.hand_over(datadir)
    configure(datadir, settings)


def configure(datadir, settings=None):
    """Write the kit's postgresql.conf additions and pg_hba.conf into ``datadir``.

    Both files already exist (from initdb), so they keep their owner."""
    merged = dict(DEFAULT_SETTINGS, **(settings or {}))
    lines = ["", "# written by supervisor.testing"]
    lines += ["%s = %s" % (key, format_setting(value)) for key, value in merged.items()]
    with open(os.path.join(datadir, "postgresql.conf"), "a", encoding="utf-8") as conf:
        conf.write("\n".join(lines) + "\n")
    with open(os.path.join(datadir, "pg_hba.conf"), "w", encoding="utf-8") as hba:
        hba.write(_HBA.format(group=PASSWORD_GROUP, map=IDENT_MAP))
    with open(os.path.join(datadir, "pg_ident.conf"), "w", encoding="utf-8") as ident:
        ident.write("# written by supervisor.testing: who may be the superuser on the socket\n")
        for os_user in peer_users():
            ident.write("%s  %s  %s\n" % (IDENT_MAP, os_user, SUPERUSER))


def peer_users():
    """The OS users the socket's peer authentication maps to the superuser: the one running
    the kit and the server account the kit runs PostgreSQL as (for pg_basebackup and a
    standby's WAL receiver)."""
    users = [pwd.getpwuid(os.geteuid()).pw_name]
    account = processes.server_account()
    if account is not None:
        users.append(pwd.getpwuid(account[0]).pw_name)
    return list(dict.fromkeys(users))


def remove_crashed_shared_memory(datadir):
    """Remove the System V shared memory segment a crashed (killed) postmaster left behind.

    Only call it once every server process of ``datadir`` is gone. A clean shutdown removes
    both the segment and ``postmaster.pid``; a leftover pid file names the segment (line 7:
    key and id). Never raises.
    """
    try:
        with open(os.path.join(datadir, "postmaster.pid"), encoding="utf-8") as f:
            shmid = int(f.read().splitlines()[6].split()[1])
        ctypes.CDLL(None, use_errno=True).shmctl(shmid, 0, None)  # 0 = IPC_RMID
    except (OSError, IndexError, ValueError, AttributeError):
        pass
