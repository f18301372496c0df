"""The HTTP API and the status page (docs/http.rst).

Public: :class:`HttpApi` (the server: ``server``, the only module importing gevent.pywsgi).
``routes`` maps requests to the Supervisor and the registry.
"""
__all__ = ["HttpApi"]


def __getattr__(name):
    # Lazy: importing the package must not import gevent.pywsgi (and socket) before patching.
    if name == "HttpApi":
        from supervisor.http.server import HttpApi
        return HttpApi
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
