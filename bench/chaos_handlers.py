"""The chaos run's handlers (:mod:`bench.chaos`), run inside the real service.

Each instance records the ids it saw in a file of its own in ``$CHAOS_OUT``, one line per
id: ``n ID TIME`` for a live notification, ``c ID TIME`` for an id found by re-reading the
table on ``catch_up`` (only ids not seen yet: an application would upsert). A payload
``ID:poison`` is refused (the handler raises): it must end on the error path, never block
the instance. The ids already recorded are read back from the file when the module is
imported, so a restarted service does not re-add them on its first catch_up.
"""
import os
import time

import psycopg2

from instances import connectors  # noqa: F401  (psycopg2 cooperative under gevent)


class Refused(Exception):
    """A poison row: the handler refuses it."""


class _Recorder:
    def __init__(self, name):
        self.path = os.path.join(os.environ["CHAOS_OUT"], "%s.ids" % name)
        self.seen = set()
        if os.path.exists(self.path):
            with open(self.path, encoding="ascii") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3:
                        self.seen.add(int(parts[1]))

    def write(self, kind, ids):
        now = time.time()
        with open(self.path, "a", encoding="ascii") as f:
            f.write("".join("%s %d %.6f\n" % (kind, i, now) for i in ids))
        self.seen.update(ids)

    def __call__(self, notification):
        if notification.kind == "catch_up":
            self.catch_up()
            return
        payload = notification.payload or ""
        if payload.endswith(":poison"):
            raise Refused("poison row %s refused" % payload)
        self.write("n", [int(payload)])

    def catch_up(self):
        conn = psycopg2.connect(os.environ["CHAOS_HANDLER_DSN"], connect_timeout=5,
                                application_name="chaos-catch-up")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT id FROM chaos_events WHERE NOT poison ORDER BY id")
                ids = [row[0] for row in cur.fetchall()]
        finally:
            conn.close()
        unseen = [i for i in ids if i not in self.seen]
        if unseen:
            self.write("c", unseen)


_recorders = {}


def _recorder(name):
    if name not in _recorders:
        _recorders[name] = _Recorder(name)
    return _recorders[name]


def memory(notification):
    _recorder("memory")(notification)


def spool(notification):
    _recorder("spool")(notification)
