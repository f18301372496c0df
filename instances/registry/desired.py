"""The desired state every registry backend shares: :class:`DesiredState`.

It holds the specs in force, by name, and every way of changing them (add, update, enable,
disable, remove, merge), with one validation and one set of errors whatever the storage.
A change is a read-modify-write of the stored state inside the backend's exclusive section
(:meth:`DesiredState._locked`: a file lock, a database row lock): the stored state is read
afresh, the change applied to a copy (raising leaves everything as it was), written, and
only then adopted in memory and told to the :meth:`~DesiredState.on_change` listeners.
Reads (:meth:`~DesiredState.get`, iteration) never touch the storage: they answer from the
state last read or written, so an unavailable storage leaves the last known desired state
in force.

Storage hooks a backend fills: ``location`` (what messages call it), ``_locked()``,
``_read() -> (specs, version, stamp, enables)`` and ``_write(specs, version, enables, old)
-> stamp`` (``old``: the ``(specs, enables)`` read in the same section), and
:meth:`~DesiredState.reload`. ``stamp`` is the backend's cheap change detector (a file's
fingerprint, the table's version).
"""
import collections
import contextlib
import logging

from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.spec import InstanceSpec

log = logging.getLogger(__name__)
_MISSING = object()


class UnknownInstance(RegistryError, KeyError):
    """No instance of that name is registered (also a KeyError)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


class InstanceExists(RegistryError, ValueError):
    """An instance of that name is already registered."""


class RegistryUnavailable(RegistryError):
    """The store cannot be reached now (its database is down): nothing was changed, and
    the last desired state read stays in force."""


class DesiredState:
    """The desired instances: specs by name, changed atomically through the backend.

    ``resolve``: add() and update() import changed handlers to check them; stored specs are
    checked for syntax only (an unimportable handler fails its instance when it starts, not
    the whole registry). Callbacks registered with :meth:`on_change` run synchronously in
    the caller's greenlet after the change is stored.
    """

    #: The ``[registry] backend`` this class is.
    backend = None

    def __init__(self, resolve=True):
        self.resolve = resolve
        self._specs = {}
        self._version = 0
        self._stat = None
        self._enables = {}
        self._callbacks = []
        self._enable_callbacks = []

    @property
    def location(self):
        """What messages call this registry (a file's path, a schema)."""
        raise NotImplementedError

    # -- reading ----------------------------------------------------------------------------

    @property
    def version(self):
        """Grows on every change (stored with the specs)."""
        return self._version

    def get(self, name, default=_MISSING):
        """The spec named ``name``; ``default`` if given, else raise UnknownInstance."""
        spec = self._specs.get(name)
        if spec is None:
            if default is not _MISSING:
                return default
            raise UnknownInstance("no instance named %r in registry %s (known: %s)" % (
                name, self.location, ", ".join(self.names()) or "none"))
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
        return "<%s %s version=%d instances=%d>" % (type(self).__name__, self.location,
                                                    self._version, len(self))

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
                                     % (spec.name, self.location))
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
        was enabled already (an operator's enable clears a supervisor's parking): the store
        counts enables, so a registry in another process (the service, when the CLI
        enables) tells its listeners on reload too."""
        result = []

        def change(specs):
            specs[name] = self._known(specs, name).replace(resolve=False, enabled=True)
            result.append(specs[name])
        self._change(change, "registry.enable", name, enable=True)
        return result[0]

    def disable(self, name):
        return self.update(name, enabled=False)

    def merge(self, specs, replace=False):
        """Store ``specs`` (an iterable of InstanceSpec) in one atomic change: each replaces
        the instance of its name or is added; with ``replace`` every other instance is
        removed (the registry becomes exactly ``specs``). Return ``{"added": [...],
        "updated": [...], "removed": [...], "unchanged": [...]}`` (names, sorted).

        Handlers are checked only as :attr:`resolve` says; a spec list with a name twice
        raises InvalidConfigurationException and nothing changes."""
        specs = list(specs)
        twice = sorted(n for n, count in collections.Counter(
            spec.name for spec in specs).items() if count > 1)
        if twice:
            raise InvalidConfigurationException(
                "duplicate instance name(s) %s" % ", ".join(map(repr, twice)), "name",
                twice[0])
        if self.resolve:
            for spec in specs:
                spec.resolve_handler()
        report = {}

        def change(stored):
            report.update(_merge_report(stored, specs, replace))
            if replace:
                stored.clear()
            stored.update((spec.name, spec) for spec in specs)
        self._change(change, "registry.import", None)
        return report

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
        """Re-read the stored state; return True if the specs changed. Raise RegistryError
        naming the store and every problem when it is invalid or unavailable: the previous
        state stays in force."""
        specs, version, stat, enables = self._read()
        return self._adopt(specs, version, stat, enables)

    def follow(self, notifiers, interval):
        """Start keeping this registry in line with edits made elsewhere, when the backend
        does it itself; return the follower (``stop(timeout)``), or None when the caller
        watches the store (a file: the service's file watcher)."""
        return None

    def status(self):
        """``{"backend", "version", "instances"}`` (JSON-ready; for a table also
        ``schema``, ``channel`` and ``loaded``). No file path: HTTP answers never name the
        service's files."""
        return {"backend": self.backend, "version": self._version,
                "instances": len(self._specs)}

    def close(self):
        """Let go of what the backend holds open (a connection); nothing for a file."""

    # -- internals --------------------------------------------------------------------------

    def _known(self, specs, name):
        if name not in specs:
            raise UnknownInstance("no instance named %r in registry %s (known: %s)" % (
                name, self.location, ", ".join(sorted(specs)) or "none"))
        return specs[name]

    def _serialized(self):
        """Held around a whole change or reload, adoption included (one process's own
        greenlets); nothing by default."""
        return contextlib.nullcontext()

    def _change(self, change, action, name, enable=False):
        """Read-modify-write in the exclusive section: ``change(specs)`` edits a copy of the
        stored specs in place (or raises, and nothing is written); ``enable`` counts an
        enable of ``name``."""
        with self._serialized():
            with self._locked():
                specs, version, stat, enables = self._read()
                new = dict(specs)
                change(new)
                new_enables = {n: c for n, c in enables.items() if n in new}
                if enable:
                    new_enables[name] = new_enables.get(name, 0) + 1
                if new != specs or new_enables != enables:
                    version = max(version, self._version) + 1
                    stat = self._write(new, version, new_enables, (specs, enables))
                    log.info("%s %s: registry version %d", action, name or "", version,
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

    def _locked(self):
        raise NotImplementedError

    def _read(self):
        raise NotImplementedError

    def _write(self, specs, version, enables, old):
        raise NotImplementedError


def _merge_report(stored, specs, replace):
    given = {spec.name: spec for spec in specs}
    report = {"added": [n for n in given if n not in stored],
              "updated": [n for n in given if n in stored and stored[n] != given[n]],
              "unchanged": [n for n in given if stored.get(n) == given[n]],
              "removed": [n for n in stored if n not in given] if replace else []}
    return {key: sorted(names) for key, names in report.items()}
