"""The registry file: its JSON format, and how it is read and written atomically.

The format, one object with the specs sorted by name, pretty-printed for humans::

    {"format": 1, "version": 7, "instances": [{"name": "river", ...}, ...],
     "enables": {"river": 2}}

``enables`` (optional) counts the operator's enables per instance, so an enable that
changes no spec (the instance was enabled already, but parked by the supervisor) still
reaches a service that only sees the file.

:func:`parse` rejects an invalid file with an error naming it and every problem, one per
line; :func:`write` replaces the file atomically (temp file in the same directory, fsync,
rename, fsync of the directory), so a crash leaves the old file or the new one, never a torn
one. Locking and the in-memory state belong to :class:`instances.registry.Registry`, which
re-exports :func:`dump` and :func:`parse`. Blocking file I/O (milliseconds); no gevent
requirement.
"""
import collections
import contextlib
import json
import os
import tempfile

from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.spec import InstanceSpec

FORMAT = 1


def read(path):
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


def write(path, specs, version, file_mode, enables=None):
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
