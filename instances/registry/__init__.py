"""The registry: the desired instances, in a JSON file or in a Postgres table.

Public API: :class:`Registry` (the file, the single-node default), :class:`PostgresRegistry`
(a table shared by several nodes, :mod:`instances.registry.table`), their common edits and
errors (:class:`~instances.registry.desired.DesiredState`, :class:`UnknownInstance`,
:class:`InstanceExists`, :class:`RegistryUnavailable`) and the JSON document both read and write (:func:`dump`,
:func:`parse`, :data:`FORMAT`; :mod:`instances.registry.codec`).

Private parts: ``desired`` (the specs in force and every edit, over storage hooks), ``codec``
(the document), ``file`` (atomic file replacement and its lock), ``table`` (the rows, the
NOTIFY after each edit) and ``follower`` (reloads on that NOTIFY and periodically).
``PostgresRegistry`` is imported lazily: ``import instances.registry`` brings in no driver.
"""
from instances.exceptions import InvalidConfigurationException
from instances.registry.codec import FORMAT, dump, parse
from instances.registry.desired import (
    DesiredState,
    InstanceExists,
    RegistryUnavailable,
    UnknownInstance,
)
from instances.registry.file import Registry, fingerprint

_LAZY = {"PostgresRegistry": "instances.registry.table",
         "RegistryFollower": "instances.registry.follower"}

__all__ = ["BACKENDS", "FORMAT", "DesiredState", "InstanceExists", "PostgresRegistry",
           "Registry", "RegistryFollower", "RegistryUnavailable", "UnknownInstance", "dump",
           "fingerprint", "open_registry", "parse"]

#: The registry backends (``[registry] backend``).
BACKENDS = ("file", "postgres")


def open_registry(backend, path=None, dsn=None, schema=None, resolve=True, connect=True):
    """The registry of ``backend``: ``"file"``, the :class:`Registry` at ``path``;
    ``"postgres"``, the :class:`PostgresRegistry` in ``schema`` (None: ``pgvisor``) of the
    database ``dsn`` (``connect``: see its constructor). Raise RegistryError as they do."""
    if backend == "file":
        return Registry(path, resolve=resolve)
    if backend == "postgres":
        from instances.migrations import DEFAULT_SCHEMA
        from instances.registry.table import PostgresRegistry
        return PostgresRegistry(dsn, schema or DEFAULT_SCHEMA, resolve=resolve,
                                connect=connect)
    raise InvalidConfigurationException("registry.backend=%r: must be one of %s" % (
        backend, ", ".join(BACKENDS)), "registry.backend", backend)


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
