"""pgvisor's supervising side: the Supervisor and everything that runs it.

``from supervisor import Supervisor, Client, get_current, set_current`` (the public
surface of docs/reference.rst). Exports are lazy: ``import supervisor`` imports no socket,
ssl, threading or driver, so the command line's ``patch_all()`` runs before anything it
patches.
"""
_EXPORTS = {"Supervisor": "supervisor.actor", "Client": "supervisor.hermes",
            "get_current": "supervisor.current", "set_current": "supervisor.current"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    import importlib
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value
