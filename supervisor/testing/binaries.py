"""Where the kit finds the PostgreSQL server programs, and the kit's errors.

Discovery order (the first that holds ``initdb`` wins):

1. the ``bindir`` given to :class:`~supervisor.testing.PostgresCluster`;
2. the environment variable ``PGVISOR_PG_BINDIR``;
3. ``pg_config --bindir`` (often only the client package is installed: then it is skipped);
4. the newest ``/usr/lib/postgresql/*/bin`` (Debian and Ubuntu), newest by version number.
"""
import glob
import os
import subprocess

#: Environment variable naming a directory with initdb, postgres, pg_ctl, pg_basebackup.
BINDIR_ENV = "PGVISOR_PG_BINDIR"

#: Glob of the Debian/Ubuntu per-version server directories.
DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"

#: Programs the kit needs in the chosen directory.
REQUIRED = ("initdb", "postgres", "pg_basebackup")


_discovered = []  # the automatic discovery's answer, kept for the life of the process


class ClusterError(RuntimeError):
    """A throwaway cluster could not be created, started, stopped or queried."""


class BinariesNotFound(ClusterError):
    """No directory with the PostgreSQL server programs was found."""


def _has_server(bindir):
    return bool(bindir) and all(
        os.access(os.path.join(bindir, name), os.X_OK) for name in REQUIRED)


def _pg_config_bindir():
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return out or None


def _version_key(path):
    version = path.split(os.sep)[-2]
    return tuple(int(part) if part.isdigit() else 0 for part in version.split("."))


def _debian_bindirs():
    return sorted(glob.glob(DEBIAN_GLOB), key=_version_key, reverse=True)


def find_bindir(explicit=None):
    """Return the directory holding the server programs, or raise :class:`BinariesNotFound`.

    An explicit directory (argument or ``PGVISOR_PG_BINDIR``) that lacks the programs is an
    error rather than silently falling back to another installation. Blocks briefly (runs
    ``pg_config``); call it from any greenlet.
    """
    for given, origin in ((explicit, "bindir argument"), (os.environ.get(BINDIR_ENV), BINDIR_ENV)):
        if given:
            if _has_server(given):
                return given
            raise BinariesNotFound(
                "%s=%r does not contain %s" % (origin, given, ", ".join(REQUIRED)))
    if _discovered and _has_server(_discovered[0]):
        return _discovered[0]
    for bindir in [_pg_config_bindir()] + _debian_bindirs():
        if _has_server(bindir):
            _discovered[:] = [bindir]
            return bindir
    raise BinariesNotFound(
        "PostgreSQL server binaries (initdb, postgres) not found: looked at %s, "
        "`pg_config --bindir` and %s. Install them (Debian/Ubuntu: "
        "`apt-get install postgresql`) or set %s to the directory holding initdb."
        % (BINDIR_ENV, DEBIAN_GLOB, BINDIR_ENV))


def program(bindir, name):
    """Full path of the program ``name`` in ``bindir``."""
    return os.path.join(bindir, name)
