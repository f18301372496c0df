"""Process isolation: an instance's processors as child processes sharing its spool.

Public: :class:`WorkerProcesses` (the parent's pool of worker processes) and
:class:`WorkerDied`. ``parent`` runs in the service; ``child`` is the worker process's own
program (``python -m gevent.monkey --module instances.isolation.child``), which builds its
spool queue and processor pool without importing the instance runtime.
"""
__all__ = ["WorkerDied", "WorkerProcesses"]


def __getattr__(name):
    # Lazy: the child process imports this package too, and must not load the parent.
    if name in __all__:
        from instances.isolation import parent
        return getattr(parent, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
