"""pgvisor's supervised side: instance specs, the registry, and the instance runtime.

``from instances import InstanceSpec, Registry, Notification``. Exports are lazy, so that
``import instances`` imports no socket, threading or driver before the command line's
``patch_all()``.
"""
_EXPORTS = {"InstanceSpec": "instances.spec", "Notification": "instances.notification",
            "Registry": "instances.registry"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
