"""Handlers for the service run as a subprocess by the acceptance tests.

They report to files in the directory named by the ``ACCEPTANCE_OUT`` environment variable
(the test reads them): ``handled.log`` gets one line per event, ``<kind> <channel>
<payload>``. :func:`gated` blocks each live notification until the file ``gate`` exists
in that directory, so a test decides when handlers may finish.
"""
import os

import gevent


def _out(name):
    return os.path.join(os.environ["ACCEPTANCE_OUT"], name)


def _write(line):
    with open(_out("handled.log"), "a", encoding="utf-8") as f:
        f.write(line + "\n")


def record(notification):
    """Write ``<kind> <channel> <payload>``."""
    _write("%s %s %s" % (notification.kind, notification.channel or "-",
                         notification.payload or "-"))


def gated(notification):
    """catch_up: recorded at once; notify: ``start``, wait for the gate file, ``done``."""
    if notification.kind != "notify":
        record(notification)
        return
    _write("start %s" % notification.payload)
    while not os.path.exists(_out("gate")):
        gevent.sleep(0.01)
    _write("done %s" % notification.payload)


#: What :func:`exits` raises for a payload.
_EXITS = {"exit": SystemExit, "interrupt": KeyboardInterrupt, "generator": GeneratorExit}


def exits(notification):
    """Raise SystemExit, KeyboardInterrupt or GeneratorExit for the payloads ``exit``,
    ``interrupt``, ``generator``; record anything else."""
    error = _EXITS.get(notification.payload or "")
    if error is not None:
        _write("raising %s" % notification.payload)
        raise error(3) if error is SystemExit else error()
    record(notification)


def log_secret(notification):
    """Log a line quoting ``$LEAK_ME`` (a secret the service knows) and ``password=...``,
    then record the notification: the line must come out redacted."""
    import logging
    logging.getLogger("tests.acceptance.handlers").warning(
        "handling with %s and password=%s", os.environ.get("LEAK_ME"), "hunter2-pw")
    record(notification)
