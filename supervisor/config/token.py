"""The HTTP API's bearer token in force: the configured one, or the one the service generates.

Every mutating API request needs a token, always (docs/operations.rst, "Security"). With
``[http] token_file`` (or ``PGVISOR_HTTP_TOKEN``) configured, that token is used. Without,
the service generates a random token at its first start into ``api.token`` in its state
directory (``[supervisor] state_dir``, by default the registry file's directory), created
0600 and never overwritten; the CLI, given the same config (``-c``), reads that file.
:func:`generated_token_path` is the one place that names the file.

Blocking file I/O (a few bytes): call at start-up from the main greenlet.
"""
import os
import secrets
import stat

from instances.exceptions import InvalidConfigurationException

#: The generated token's file name, in the state directory.
FILE_NAME = "api.token"
#: Random bytes of a generated token (URL-safe base64 text of about 43 characters).
TOKEN_BYTES = 32


def new_token():
    """A random token (URL-safe base64) that never starts with ``-``: given on a command
    line (``--token TOKEN``) one that did would read as an option."""
    while True:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        if not token.startswith("-"):
            return token


def generated_token_path(cfg):
    """Where the service keeps the token it generates for the :class:`Config` ``cfg``."""
    state_dir = cfg.supervisor.state_dir or os.path.dirname(cfg.registry.path)
    return os.path.join(state_dir, FILE_NAME)


def api_token(cfg, create=False):
    """``(token, path)``: the configured token (``path`` its file, or None from the
    environment), else the generated one. ``create``: the service's start: generate the
    file when missing. Without ``create`` a missing file gives ``(None, path)``. Raise
    InvalidConfigurationException naming the file when it cannot be created or read."""
    if cfg.http.token:
        return cfg.http.token, cfg.http.token_file
    path = generated_token_path(cfg)
    if create:
        _create(path)
    return read_token_file(path, missing_ok=not create, private=create), path


def _create(path):
    """Write a new random token into ``path`` (0600) unless the file exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return
    except OSError as exc:
        raise _error(path, "cannot create the API token file: %s (set [supervisor] "
                     "state_dir to a directory the service may write, or [http] token_file)"
                     % (exc.strerror or exc)) from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(new_token() + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_token_file(path, missing_ok=False, private=False):
    """The token in ``path`` (its first line); None if missing and ``missing_ok``.
    Anything but a regular file is refused; with ``private`` (the service reading the token
    it generated) also a file of another owner or open to group or others (someone else
    could have planted or read it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise _error(path, "no such file") from None
    except OSError as exc:
        raise _error(path, "cannot read: %s" % (exc.strerror or exc)) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise _error(path, "not a regular file")
        if private and info.st_uid != os.geteuid():
            raise _error(path, "owned by uid %d, not by the service's user (uid %d): remove "
                         "it, the service makes a new one" % (info.st_uid, os.geteuid()))
        if private and stat.S_IMODE(info.st_mode) & 0o077:
            raise _error(path, "open to group or others (mode %04o): chmod 600 it, or "
                         "remove it (the service makes a new one)"
                         % stat.S_IMODE(info.st_mode))
        raw = f.read(4096)
    try:
        token = raw.decode("ascii").splitlines()[0].strip() if raw.strip() else ""
    except UnicodeDecodeError:
        raise _error(path, "not a token (not ASCII text)") from None
    if not token:
        raise _error(path, "the file is empty")
    return token


def _error(path, why):
    return InvalidConfigurationException("%s: %s" % (path, why), "http.token_file", path)
