"""Suite-wide rules: psycopg2 is cooperative, an error that reaches the gevent hub fails
the test that was running (a greenlet dying with a traceback is never silent), handler
retries wait milliseconds, not seconds, and SIGINT is not left ignored."""
import os
import signal

import gevent
import pytest

import instances.connectors  # noqa: F401  (installs psycogreen's wait callback)
from instances.processors import ProcessorPool

#: Handler retries keep their count (3) and their doubling, on a 10 ms scale instead of
#: 1 s, here and in the service, piper and worker processes tests start (they import
#: tests.handlers, which applies it): a failing handler costs 70 ms, not 7 s.
os.environ.setdefault("PGVISOR_TEST_RETRY_DELAY", "0.01")
ProcessorPool.retry_delay = float(os.environ["PGVISOR_TEST_RETRY_DELAY"])

#: A suite started in the background of a non-interactive shell (``cmd &`` in a script, a CI
#: step, nohup) inherits SIGINT ignored, and so would every program a test starts: the tests
#: that end a service, a watch or a Client with SIGINT (Ctrl-C) then waited in vain. The
#: suite runs as from a terminal wherever it was started.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_hub_errors = []


def _record_hub_error(context, type_, value, tb):
    if type_ is not None and not issubclass(type_, (gevent.GreenletExit, KeyboardInterrupt)):
        _hub_errors.append("%s in %r: %s" % (type_.__name__, context, value))
    _original_handle_error(context, type_, value, tb)


_hub = gevent.get_hub()
_original_handle_error = _hub.handle_error
_hub.handle_error = _record_hub_error


@pytest.fixture(autouse=True)
def no_hub_errors():
    """Fail the test if any greenlet died with an unhandled exception during it."""
    del _hub_errors[:]
    yield
    errors, _hub_errors[:] = list(_hub_errors), []
    assert not errors, "errors reached the gevent hub: %s" % "; ".join(errors)
