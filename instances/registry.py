"""The :class:`Registry`: the desired instances, kept in one JSON file.

The file is the truth, shared by the service and the ``pgvisor instances`` verbs (which work
with the service down) and editable by hand::

    {"format": 1, "version": 7, "instances": [{"name": "river", ...}, ...]}

Guarantees: writes are atomic (temp file in the same directory, fsync, rename, fsync of the
directory), so a crash leaves the old file or the new one, never a torn one; every
read-modify-write happens under ``flock`` on ``<path>.lock`` and re-reads the file first, so
two processes editing never lose each other's changes; an invalid file (hand edit) is
rejected with an error naming the file and every problem, and the previous state stays in
force.

This module owns the file's format (:func:`dump`, :func:`parse`), its atomic replacement,
the lock, and the specs in force (:class:`Registry`). ``enables`` (optional in the file)
counts the operator's enables per instance, so an enable that changes no spec (the instance
was enabled already, but parked by the supervisor) still reaches a service that only sees
the file. Pure file I/O (milliseconds): no gevent requirement.
"""
import collections
import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time

from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.spec import InstanceSpec

log = logging.getLogger(__name__)
_MISSING = object()
#: The file format this pgvisor reads and writes (the file's ``format`` key).
FORMAT = 1


class UnknownInstance(RegistryError, KeyError):
    """No instance of that name is registered (also a KeyError)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class InstanceExists(RegistryError, ValueError):
    """An instance of that name is already registered."""


class Registry:
    """The desired state: specs by name, persisted in the JSON file at ``path``.

    Every method blocks the calling thread for file I/O (milliseconds) and, for changes,
    while another process holds the lock (at most ``lock_timeout``). Callbacks registered with
    :meth:`on_change` run synchronously in the caller's greenlet after the change is on disk
    and the lock released. Not meant to be changed from several threads at once; greenlets
    are fine (no method yields while holding the lock unless time.sleep is patched, and then
    the file lock still serializes).
    """

    #: Seconds to wait for ``<path>.lock`` held by another process before RegistryError.
    lock_timeout = 10.0
    #: Seconds between attempts to take the lock.
    lock_poll_interval = 0.01
    #: Permissions of a newly created registry file (it may hold DSN passwords).
    file_mode = 0o600

    def __init__(self, path, resolve=True):
        """Open the registry at ``path``, creating the file (and its directory) if missing.

        ``resolve``: add() and update() import changed handlers to check them; the file's
        specs are checked for syntax only (an unimportable handler fails its instance when it
        starts, not the whole registry). Raise RegistryError if the file is invalid; it is
        never overwritten.
        """
        self.path = os.path.abspath(os.fspath(path))
        self.lock_path = self.path + ".lock"
        self.resolve = resolve
        self._specs = {}
        self._version = 0
        self._stat = None
        self._enables = {}
        self._callbacks = []
        self._enable_callbacks = []
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
        except OSError as exc:
            raise RegistryError("cannot create the directory of registry %s: %s"
                                % (self.path, exc)) from exc
        with self._locked():
            if not os.path.exists(self.path):
                self._stat = self._write({}, 0)
                log.info("created registry %s", self.path,
                         extra={"action": "registry.create", "instance": None})
            else:
                self._specs, self._version, self._stat, self._enables = self._read()

    # -- reading ----------------------------------------------------------------------------

    @property
    def version(self):
        """Grows on every change (persisted in the file as ``version``)."""
        return self._version

    def get(self, name, default=_MISSING):
        """The spec named ``name``; ``default`` if given, else raise UnknownInstance."""
        spec = self._specs.get(name)
        if spec is None:
            if default is not _MISSING:
                return default
            raise UnknownInstance("no instance named %r in registry %s (known: %s)" % (
                name, self.path, ", ".join(self.names()) or "none"))
        return spec

    def names(self):
        return sorted(self._specs)

    def __iter__(self):
        return iter([self._specs[name] for name in self.names()])

    def __len__(self):
        return len(self._specs)

    def __contains__(self, name):
        return name in self._specs

    def __repr__(self):
        return "<Registry %s version=%d instances=%d>" % (self.path, self._version, len(self))

    # -- changing ---------------------------------------------------------------------------

    def add(self, spec):
        """Register ``spec``; raise InstanceExists if its name is taken. Return the spec."""
        if not isinstance(spec, InstanceSpec):
            raise InvalidConfigurationException(
                "spec=%r: must be an InstanceSpec" % (spec,), "spec", spec)
        if self.resolve:
            spec.resolve_handler()

        def change(specs):
            if spec.name in specs:
                raise InstanceExists("an instance named %r already exists in registry %s"
                                     % (spec.name, self.path))
            specs[spec.name] = spec
        self._change(change, "registry.add", spec.name)
        return spec

    def update(self, name, /, **fields):
        """Change fields of ``name`` (validated; renaming is refused); return the new spec.

        Raise UnknownInstance or InvalidConfigurationException; nothing changes then.
        """
        if "name" in fields and fields["name"] != name:
            raise InvalidConfigurationException(
                "name=%r: an instance cannot be renamed (remove %r and add it under the new "
                "name)" % (fields["name"], name), "name", fields["name"])
        resolve = self.resolve and "handler" in fields
        result = []

        def change(specs):
            specs[name] = self._known(specs, name).replace(resolve=resolve, **fields)
            result.append(specs[name])
        self._change(change, "registry.update", name)
        return result[0]

    def remove(self, name):
        """Unregister ``name``; return its spec. Raise UnknownInstance."""
        result = []
        self._change(lambda specs: result.append(specs.pop(self._known(specs, name).name)),
                     "registry.remove", name)
        return result[0]

    def enable(self, name):
        """Enable ``name``; return its spec. Tells :meth:`on_enable` listeners even when it
        was enabled already (an operator's enable clears a supervisor's parking): the file
        counts enables, so a Registry in another process (the service, when the CLI
        enables) tells its listeners on reload too."""
        result = []

        def change(specs):
            specs[name] = self._known(specs, name).replace(resolve=False, enabled=True)
            result.append(specs[name])
        self._change(change, "registry.enable", name, enable=True)
        return result[0]

    def disable(self, name):
        return self.update(name, enabled=False)

    def on_change(self, callback):
        """Call ``callback(registry)`` after every change (also a decorator).

        A callback that raises is logged with its traceback; the change stands.
        """
        self._callbacks.append(callback)
        return callback

    def on_enable(self, callback):
        """Call ``callback(name)`` after every :meth:`enable`, changed or not, here or (seen
        on :meth:`reload`) in another process; enables seen together are told once."""
        self._enable_callbacks.append(callback)
        return callback

    def reload(self):
        """Re-read the file (after a hand edit); return True if the specs changed.

        Raise RegistryError naming the file and every problem if it is invalid: the
        previous state stays in force.
        """
        specs, version, stat, enables = self._read()
        return self._adopt(specs, version, stat, enables)

    def changed_on_disk(self):
        """Cheap poll: True if the file's inode, size or mtime differ from the last read."""
        try:
            return fingerprint(os.stat(self.path)) != self._stat
        except FileNotFoundError:
            return True

    # -- internals --------------------------------------------------------------------------

    def _known(self, specs, name):
        if name not in specs:
            raise UnknownInstance("no instance named %r in registry %s (known: %s)" % (
                name, self.path, ", ".join(sorted(specs)) or "none"))
        return specs[name]

    def _change(self, change, action, name, enable=False):
        """Read-modify-write under the lock: ``change(specs)`` edits a copy of the file's
        specs in place (or raises, and nothing is written); ``enable`` counts an enable."""
        with self._locked():
            specs, version, stat, enables = self._read()
            new = dict(specs)
            change(new)
            new_enables = {n: c for n, c in enables.items() if n in new}
            if enable:
                new_enables[name] = new_enables.get(name, 0) + 1
            if new != specs or new_enables != enables:
                version = max(version, self._version) + 1
                stat = self._write(new, version, new_enables)
                log.info("%s %s: registry version %d", action, name, version,
                         extra={"action": action, "instance": name})
        self._adopt(new, version, stat, new_enables)

    def _adopt(self, specs, version, stat, enables):
        changed = specs != self._specs
        enabled = sorted(n for n, count in enables.items()
                         if n in specs and count > self._enables.get(n, 0))
        self._version = max(version, self._version + 1 if changed else self._version)
        self._specs, self._stat, self._enables = specs, stat, enables
        if changed:
            self._tell(self._callbacks, self, "registry.callback_failed")
        for name in enabled:
            self._tell(self._enable_callbacks, name, "registry.callback_failed")
        return changed

    @staticmethod
    def _tell(callbacks, argument, action):
        for callback in list(callbacks):
            try:
                callback(argument)
            except Exception:
                log.exception("registry callback %r failed", callback,
                              extra={"action": action, "instance": None})

    @contextlib.contextmanager
    def _locked(self):
        try:
            fd = os.open(self.lock_path, os.O_RDONLY | os.O_CREAT, 0o644)
        except OSError as exc:
            raise RegistryError("cannot open lock file %s: %s" % (self.lock_path, exc)) from exc
        try:
            deadline = time.monotonic() + self.lock_timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise RegistryError("registry %s is locked by another process (lock "
                                            "file %s held for over %.0f s)" % (
                                                self.path, self.lock_path,
                                                self.lock_timeout)) from None
                    time.sleep(self.lock_poll_interval)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read(self):
        """Parse the file: ``(specs, version, fingerprint, enables)``; raise RegistryError."""
        return _read_file(self.path)

    def _write(self, specs, version, enables=None):
        """Atomically replace the file; return its fingerprint. Raise RegistryError."""
        return _write_file(self.path, specs, version, self.file_mode, enables)


# -- the file -------------------------------------------------------------------------

def _read_file(path):
    """Parse the file at ``path``: ``(specs, version, fingerprint, enables)``; raise
    RegistryError."""
    try:
        with open(path, "rb") as f:
            stat = fingerprint(os.fstat(f.fileno()))
            raw = f.read()
    except OSError as exc:
        raise RegistryError("cannot read registry %s: %s" % (path, exc)) from exc
    specs, version, enables = parse(raw, path)
    return specs, version, stat, enables


def _write_file(path, specs, version, file_mode, enables=None):
    """Atomically replace the file at ``path`` with ``specs`` (a new file gets ``file_mode``,
    an existing one keeps its mode and owner); return its fingerprint. Raise RegistryError."""
    text = dump(specs.values(), version, enables)
    directory = os.path.dirname(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp",
                                   prefix="." + os.path.basename(path) + ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            _copy_ownership(f.fileno(), path, file_mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
            stat = fingerprint(os.fstat(f.fileno()))
        os.replace(tmp, path)
        _fsync_directory(directory)
    except OSError as exc:
        with contextlib.suppress(OSError, TypeError):
            os.unlink(tmp)
        raise RegistryError("cannot write registry %s: %s" % (path, exc)) from exc
    return stat


def dump(specs, version, enables=None):
    """The file's text for ``specs`` (sorted by name), pretty-printed for humans."""
    doc = {"format": FORMAT, "version": version,
           "instances": [s.to_dict() for s in sorted(specs, key=lambda s: s.name)]}
    if enables:
        doc["enables"] = dict(sorted(enables.items()))
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def parse(raw, path="<registry>"):
    """Parse the file's bytes into ``({name: spec}, version, {name: enables})``; handlers
    are not imported.

    Raise RegistryError naming ``path`` and every problem, one per line.
    """
    try:
        doc = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError as exc:
        raise RegistryError("registry %s is not UTF-8: %s" % (path, exc)) from exc
    except json.JSONDecodeError as exc:
        raise RegistryError("registry %s: invalid JSON at line %d column %d: %s"
                            % (path, exc.lineno, exc.colno, exc.msg)) from exc
    except ValueError as exc:
        raise RegistryError("registry %s: %s" % (path, exc)) from exc
    problems = _document_problems(doc)
    specs, seen = {}, collections.defaultdict(list)
    for index, data in enumerate(doc.get("instances", []) if not problems else []):
        try:
            spec = InstanceSpec.from_dict(data, resolve=False)
        except InvalidConfigurationException as exc:
            name = data.get("name") if isinstance(data, dict) else None
            label = "instances[%d]%s" % (index, " (%r)" % name if isinstance(name, str) else "")
            problems.append("%s: %s" % (label, str(exc).replace("\n", "\n  ")))
            continue
        seen[spec.name].append(index)
        specs[spec.name] = spec
    problems += ["duplicate instance name %r (instances[%s])" % (
        name, "], [".join(map(str, where))) for name, where in seen.items() if len(where) > 1]
    if problems:
        raise RegistryError("invalid registry %s:\n%s" % (
            path, "\n".join("  " + p for p in problems)))
    return specs, doc.get("version", 0), dict(doc.get("enables", {}))


def _document_problems(doc):
    if not isinstance(doc, dict):
        return ['must be an object {"format": %d, "version": N, "instances": [...]}' % FORMAT]
    problems = ["unknown key %r (known: format, version, instances, enables)" % key
                for key in doc if key not in ("format", "version", "instances", "enables")]
    enables = doc.get("enables", {})
    if not isinstance(enables, dict) or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and v >= 0
            for k, v in enables.items()):
        problems.append("enables=%r: must map instance names to counts >= 0" % (enables,))
    if doc.get("format") != FORMAT:
        problems.append("format=%r: this pgvisor reads format %d" % (doc.get("format"), FORMAT))
    version = doc.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        problems.append("version=%r: must be an integer >= 0" % (version,))
    if not isinstance(doc.get("instances"), list):
        problems.append("instances=%r: must be a list of instance objects"
                        % (doc.get("instances"),))
    return problems


def _no_duplicate_keys(pairs):
    keys = [key for key, _ in pairs]
    duplicates = sorted({key for key in keys if keys.count(key) > 1})
    if duplicates:
        raise ValueError("duplicate key(s) %s in one object" % ", ".join(map(repr, duplicates)))
    return dict(pairs)


def fingerprint(stat):
    """``(inode, size, mtime)`` of ``stat``: changes whenever the file is replaced or edited."""
    return (stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _copy_ownership(fd, path, default_mode):
    """Give the new file the old one's mode (and owner, when allowed)."""
    try:
        old = os.stat(path)
    except FileNotFoundError:
        os.fchmod(fd, default_mode)
        return
    os.fchmod(fd, old.st_mode & 0o7777)
    with contextlib.suppress(PermissionError):
        if (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
            os.fchown(fd, old.st_uid, old.st_gid)


def _fsync_directory(directory):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
