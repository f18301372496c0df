"""A cyme-style supervisor script, written from cyme's documentation (the
``cyme.branch.supervisor`` page): only cyme's documented names are used on the supervisor
(the class attributes ``interval``, ``restart_max_rate``, ``paused``,
``wait_after_broker_revived``; ``Supervisor(interval=..., queue=..., set_as_current=...)``;
``get_current`` / ``set_current``; ``restart`` / ``verify`` / ``shutdown`` returning
greenlets; ``pause`` / ``resume``). What pgvisor adds is what cyme took from its model and
broker: the registry and the DSN, and ``start()`` / ``stop()``.

Run as ``python -m tests.acceptance.cyme_program DSN WORKDIR``; prints one JSON document
of what it saw and exits 0 (1 with the error when something failed).
"""
import json
import os
import sys

from gevent import monkey

monkey.patch_all()

import gevent.queue  # noqa: E402

from instances.registry import Registry  # noqa: E402
from instances.spec import InstanceSpec  # noqa: E402
from supervisor import Supervisor, get_current, set_current  # noqa: E402
from supervisor.testing import wait_for  # noqa: E402

TIMEOUT = 20


class BranchSupervisor(Supervisor):
    """cyme's way to change the defaults: class attributes."""

    interval = 30.0
    restart_max_rate = "5/m"
    wait_after_broker_revived = 2.0


def state(sup, name):
    return sup.status()[name]["state"]


def main(dsn, workdir):
    seen = {"defaults": {"interval": Supervisor.interval,
                         "restart_max_rate": Supervisor.restart_max_rate,
                         "paused": Supervisor.paused,
                         "wait_after_broker_revived": Supervisor.wait_after_broker_revived}}
    registry = Registry(os.path.join(workdir, "registry.json"))
    registry.add(InstanceSpec(name="river", channels=("river",),
                              handler="tests.handlers:record"))
    sup = BranchSupervisor(registry, dsn, interval=None, queue=gevent.queue.Queue(),
                           set_as_current=True)
    seen["current"] = get_current() is sup
    seen["subclass"] = {"interval": sup.interval, "restart_max_rate": sup.restart_max_rate,
                        "wait_after_broker_revived": sup.wait_after_broker_revived,
                        "budget": sup.budget.default_rate}
    sup.start()
    try:
        wait_for(lambda: state(sup, "river") == "running", TIMEOUT, message="river never ran")
        seen["paused_when_running"] = sup.paused
        seen["verify"] = sup.verify(["river"]).get(timeout=TIMEOUT)
        seen["restart"] = sup.restart(["river"]).get(timeout=TIMEOUT)
        wait_for(lambda: state(sup, "river") == "running", TIMEOUT, message="not back")
        seen["shutdown"] = sup.shutdown(["river"]).get(timeout=TIMEOUT)
        seen["after_shutdown"] = state(sup, "river")
        sup.pause()
        seen["paused_after_pause"] = sup.paused
        seen["restart_while_paused"] = sup.restart(["river"]).get(timeout=TIMEOUT)
        sup.resume()
        seen["paused_after_resume"] = sup.paused
        wait_for(lambda: state(sup, "river") == "running", TIMEOUT, message="not resumed")
        seen["final_state"] = state(sup, "river")
        set_current(None)
        seen["current_after_set_current"] = get_current()
    finally:
        sup.stop(timeout=5)
    return seen


if __name__ == "__main__":
    try:
        result = main(sys.argv[1], sys.argv[2])
    except Exception as error:
        print(json.dumps({"error": "%s: %s" % (type(error).__name__, error)}))
        sys.exit(1)
    print(json.dumps(result, sort_keys=True))
