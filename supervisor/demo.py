"""``pgvisor demo``: the whole story on a throwaway local PostgreSQL, in under a minute.

A table ``documents`` whose trigger NOTIFYs ``doc_changed``; two instances:

- ``river`` indexes documents into ``search_index`` (the search-index river): its handler
  re-reads every document not yet indexed, so a notification is only a wake-up and the
  ``catch_up`` after every reconnect closes any gap: nothing is lost, whatever happens;
- ``audit`` counts the notifications it sees into ``audit_log``.

A producer inserts documents all along while the demo kills ``river``, restarts the
database, and edits the registry (a new channel, disable and enable ``audit``). A status
line shows what the supervisor does, and the HTTP API serves the status page (its URL is
printed first; it stays up until the story and its summary are over, ``--linger`` seconds
more if asked): watch it in a browser. The summary proves every produced row was indexed.
Ctrl-C ends it cleanly at any point.
"""
import argparse
import logging
import os
import secrets
import signal
import sys
import tempfile
import time

import gevent
import gevent.event

from instances import InstanceSpec, Registry
from instances.connectors import PostgresConnector
from instances.exceptions import ConnectionLost, DatabaseError
from supervisor.actor import Supervisor
from supervisor.http import HttpApi
from supervisor.testing import PostgresCluster

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE documents (id bigserial PRIMARY KEY, body text NOT NULL,
                        created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE search_index (id bigint PRIMARY KEY, body text NOT NULL,
                           indexed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE audit_log (seen_at timestamptz NOT NULL DEFAULT now(), kind text, payload text);
CREATE FUNCTION documents_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('doc_changed', NEW.id::text); RETURN NEW; END $$;
CREATE TRIGGER documents_notify AFTER INSERT ON documents
    FOR EACH ROW EXECUTE FUNCTION documents_notify();
"""
INDEX_SQL = ("INSERT INTO search_index (id, body) SELECT d.id, upper(d.body) FROM documents d"
             " WHERE NOT EXISTS (SELECT 1 FROM search_index s WHERE s.id = d.id)"
             " ON CONFLICT (id) DO NOTHING")

#: Environment variable carrying the demo database's DSN to the handlers.
DSN_VARIABLE = "PGVISOR_DEMO_DSN"
_connectors = {}


def _connector(purpose):
    """One connection per processor greenlet (never shared between greenlets)."""
    key = (purpose, id(gevent.getcurrent()))
    if key not in _connectors:
        _connectors[key] = PostgresConnector(os.environ[DSN_VARIABLE],
                                             application_name="demo-" + purpose)
    return _connectors[key]


def _execute(purpose, sql, params=None):
    """Run ``sql``; once more on a fresh connection if the old one died with the server."""
    try:
        return _connector(purpose).execute(sql, params)
    except ConnectionLost:  # the connector reconnects on its next use
        return _connector(purpose).execute(sql, params)


def index_documents(notification):
    """river's handler: index whatever is not indexed yet (idempotent)."""
    _execute("river", INDEX_SQL)


def audit(notification):
    """audit's handler: record the notification."""
    _execute("audit", "INSERT INTO audit_log (kind, payload) VALUES (%s, %s)",
             (notification.kind, notification.payload))


class Producer:
    """Inserts documents at ``rate`` per second; rows refused during the outage are retried."""

    def __init__(self, dsn, rate):
        self.connector = PostgresConnector(dsn, application_name="demo-producer")
        self.rate, self.produced, self.refused = rate, 0, 0
        self._greenlet = None

    def start(self):
        self._greenlet = gevent.spawn(self._run)

    def stop(self):
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=5)

    def _run(self):
        while True:
            try:
                self.connector.execute("INSERT INTO documents (body) VALUES (%s)",
                                       ("document %d" % (self.produced + 1),))
                self.produced += 1
            except DatabaseError:
                self.refused += 1
                gevent.sleep(0.2)
            gevent.sleep(1.0 / self.rate)


class Demo:
    """The scripted story; every step prints what it does and what the supervisor did."""

    def __init__(self, workdir, pace, out=sys.stdout, listen=("127.0.0.1", 0)):
        self.workdir, self.pace, self.out, self.listen = workdir, pace, out, listen
        self.stopped = gevent.event.Event()
        self.cluster = self.supervisor = self.producer = self.http = None

    def say(self, text):
        self.out.write("[%5.1fs] %s\n" % (time.monotonic() - self.t0, text))
        self.out.flush()

    def wait(self, seconds):
        """Let time pass while showing the status; False if Ctrl-C ended the demo."""
        deadline = time.monotonic() + seconds * self.pace
        while time.monotonic() < deadline:
            if self.stopped.wait(min(1.0 * self.pace, deadline - time.monotonic())):
                return False
            self.show_status()
        return True

    def show_status(self):
        db = self.supervisor.database_status()
        parts = ["db %s%s" % (db["state"], " (paused: %s)" % db["paused_by"]
                              if db["paused"] else "")]
        for name, status in self.supervisor.status().items():
            parts.append("%s %s restarts=%d processed=%d" % (
                name, status["state"], status["restarts"], status["processed"]))
        self.say(" | ".join(parts) + " | produced=%d" % self.producer.produced)

    def setup(self):
        self.t0 = time.monotonic()
        self.say("starting a throwaway PostgreSQL cluster")
        self.cluster = PostgresCluster(name="pgvisor-demo")
        self.cluster.start()
        self.cluster.execute(SCHEMA)
        dsn = os.environ[DSN_VARIABLE] = self.cluster.dsn
        registry = Registry(os.path.join(self.workdir, "registry.json"))
        registry.add(InstanceSpec(name="river", channels=("doc_changed",),
                                  handler="supervisor.demo:index_documents"))
        registry.add(InstanceSpec(name="audit", channels=("doc_changed",),
                                  handler="supervisor.demo:audit"))
        self.registry = registry
        self.supervisor = Supervisor(registry, dsn, interval=5.0, wait_after_db_revived=3.0,
                                     probe_interval=0.5, set_as_current=False)
        self.supervisor.start()
        self.serve_status_page()
        self.producer = Producer(dsn, rate=100)
        self.producer.start()
        self.say("supervisor started with instances river and audit; producer inserting "
                 "100 documents/s")

    def serve_status_page(self):
        """The HTTP API with the status page, on ``listen``; its token in a 0600 file."""
        token_file = os.path.join(self.workdir, "api.token")
        token = secrets.token_hex(16)
        with open(os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(token + "\n")
        self.http = HttpApi(self.supervisor, listen=self.listen, token=token)
        self.http.start()
        host, port = self.http.address[:2]
        self.say("status page: http://%s:%d/ (the API token, for its buttons, is in %s)"
                 % (host, port, token_file))

    def linger(self, seconds):
        """Keep the service (and its status page) up ``seconds`` more, or until Ctrl-C."""
        if seconds > 0:
            self.say("the story is over; the status page stays up %.0f s more (Ctrl-C ends "
                     "it)" % seconds)
            self.stopped.wait(seconds)

    def story(self):
        steps = [
            (5, "killing river as a crash would", self.kill_river),
            (6, "restarting the database (fast shutdown, then start)", self.restart_db),
            (8, "registry edit: river also listens on doc_deleted; audit disabled",
             self.edit_registry),
            (4, "registry edit: audit enabled again", self.enable_audit),
            (4, "stopping the producer", self.producer.stop),
        ]
        for seconds, text, step in steps:
            if not self.wait(seconds):
                return False
            self.say(text)
            step()
        return True

    def kill_river(self):
        self.supervisor.instance("river").kill()

    def restart_db(self):
        self.cluster.stop(mode="fast")
        self.wait(2)
        self.cluster.start()

    def edit_registry(self):
        self.registry.update("river", channels=["doc_changed", "doc_deleted"])
        self.registry.disable("audit")

    def enable_audit(self):
        self.registry.enable("audit")

    def summary(self):
        """Wait for the index to catch up; print the proof. True when nothing was lost."""
        deadline = time.monotonic() + 20 * max(self.pace, 0.5)
        produced = indexed = None
        while time.monotonic() < deadline and not self.stopped.is_set():
            produced, indexed = self.counts()
            if produced == indexed:
                break
            gevent.sleep(0.2)
        status = self.supervisor.status()
        self.say("summary: %s documents in the table, %s in the index; river restarts=%d; "
                 "%d inserts refused during the outage (retried by the producer)" % (
                     produced, indexed, status["river"]["restarts"], self.producer.refused))
        ok = produced is not None and produced == indexed >= self.producer.produced
        self.say("every produced row reached the index" if ok else
                 "MISSING ROWS: %s of %s indexed" % (indexed, produced))
        return ok

    def counts(self):
        rows = self.cluster.execute("SELECT (SELECT count(*) FROM documents),"
                                    " (SELECT count(*) FROM search_index)")
        return tuple(rows[0])

    def teardown(self):
        if self.producer is not None:
            self.producer.stop()
        if self.http is not None:
            self.http.stop(timeout=2)
        if self.supervisor is not None:
            self.supervisor.stop(timeout=5)
        if self.cluster is not None:
            self.cluster.cleanup()
        self.say("demo cluster removed")


def main(argv=None):
    """Run the demo; exit code 0 when every produced row was indexed."""
    parser = argparse.ArgumentParser(prog="pgvisor demo", description=__doc__.split("\n")[0])
    parser.add_argument("--pace", type=float, default=1.0,
                        help="time scale of the story (0.5: twice as fast)")
    parser.add_argument("--listen", default="127.0.0.1:0", type=_address,
                        help="HOST:PORT of the HTTP API and status page (port 0: any free "
                             "port; default %(default)s)")
    parser.add_argument("--linger", type=float, default=0.0, metavar="SECONDS",
                        help="keep the service up this long after the summary (default 0)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="pgvisor-demo-") as workdir:
        demo = Demo(workdir, args.pace, listen=args.listen)
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, demo.stopped.set)
        try:
            demo.setup()
            finished = demo.story()
            ok = demo.summary() if finished else False
            if finished:
                demo.linger(args.linger)
        finally:
            demo.teardown()
    if demo.stopped.is_set():
        return 130
    return 0 if ok else 1


def _address(text):
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("%r: must be HOST:PORT, e.g. 127.0.0.1:7390" % text)
    return host, int(port)


if __name__ == "__main__":
    from gevent import monkey
    monkey.patch_all()
    sys.exit(main())
