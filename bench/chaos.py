"""The published chaos run: ``python -m bench.chaos [--smoke] [--report PATH]``.

Runs the real service (``pgvisor run`` in a subprocess) on a throwaway primary + streaming
standby (supervisor.testing), with a producer inserting rows whose trigger NOTIFYs, and two
instances whose handlers record ids (:mod:`bench.chaos_handlers`): ``memory`` (memory
queue) and ``spool`` (a FileQueue). The service reaches the database through two
FaultProxy ports with a multi-host DSN (``target_session_attrs=read-write``). Faults, in
sequence, each followed by a wait until both instances have every committed row:

backend terminations, a Postgres crash (kill -9 of the postmaster) and restart, repeated
instance restarts over the HTTP API, a half-open connection (proxy blackhole), kill -9 of
the service and restart, SIGHUP, registry edits (HTTP PUT, an invalid hand edit), poison
rows, and a failover (the primary killed, the standby promoted).

Then it checks that every committed row reached both instances (missing must be 0) and
writes the figures into docs/reliability.rst (``make chaos``) or, with ``--smoke``, into a
temporary file (or ``--report PATH``). Exit status 1 when something is missing or a phase
failed.
"""
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import collections  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script: bench/chaos.py
    sys.path.insert(0, ROOT)

import gevent  # noqa: E402
import psycopg2  # noqa: E402

from instances import connectors  # noqa: E402,F401  (psycopg2 cooperative)
from supervisor.testing import FaultProxy, PostgresCluster, wait_for  # noqa: E402
from supervisor.testing.datadir import SUPERUSER, SUPERUSER_PASSWORD  # noqa: E402
from tests.acceptance.service_process import ServiceProcess  # noqa: E402

DOC = os.path.join(ROOT, "docs", "reliability.rst")
CHANNEL = "chaos"
INSTANCES = ("memory", "spool")

SIZES = {
    "full": dict(rate=300, settle=5.0, terminations=10, outage=10.0, kills=10, burst=5000, bursts=3,
                 poison=10, blackhole=2.0, service_down=3.0, converge=120.0),
    "smoke": dict(rate=100, settle=0.5, terminations=2, outage=1.5, kills=2, burst=1000, bursts=1,
                  poison=1, blackhole=0.5, service_down=0.5, converge=45.0),
}

SCHEMA = """
CREATE TABLE chaos_events (id bigserial PRIMARY KEY, poison boolean NOT NULL DEFAULT false);
CREATE FUNCTION chaos_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('chaos', NEW.id::text || CASE WHEN NEW.poison THEN ':poison' ELSE '' END);
  RETURN NEW;
END $$;
CREATE TRIGGER chaos_notify AFTER INSERT ON chaos_events
  FOR EACH ROW EXECUTE FUNCTION chaos_notify();
"""


def multi_dsn(ports, **extra):
    parts = ["host=%s" % ",".join("127.0.0.1" for _ in ports),
             "port=%s" % ",".join(str(p) for p in ports), "dbname=postgres",
             "user=%s" % SUPERUSER, "password=%s" % SUPERUSER_PASSWORD,
             "target_session_attrs=read-write"]
    parts += ["%s=%s" % item for item in extra.items()]
    return " ".join(parts)


class PhaseFailed(Exception):
    pass


# -- the producer ----------------------------------------------------------------------


class Producer:
    """A greenlet inserting one row per transaction at ``rate``/s through ``dsn``
    (reconnecting on any error); ``pause()``/``resume()`` around a failover."""

    def __init__(self, dsn, rate):
        self.dsn, self.rate = dsn, rate
        self.acked = 0
        self.errors = 0
        self.running = gevent.event.Event()
        self.running.set()
        self.idle = gevent.event.Event()
        self.greenlet = None
        self._stop = False

    def start(self):
        self.greenlet = gevent.spawn(self._run)
        return self

    def pause(self):
        self.running.clear()
        self.idle.wait(timeout=30)

    def resume(self):
        self.running.set()

    def stop(self):
        self._stop = True
        self.running.set()
        self.greenlet.join(timeout=30)

    def _run(self):
        conn = None
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop:
            if not self.running.is_set():
                if conn is not None:
                    conn.close()
                    conn = None
                self.idle.set()
                self.running.wait()
                self.idle.clear()
                next_at = time.monotonic()
                continue
            try:
                if conn is None:
                    conn = psycopg2.connect(self.dsn, connect_timeout=3,
                                            application_name="chaos-producer")
                    conn.autocommit = True
                with conn.cursor() as cur:
                    cur.execute("INSERT INTO chaos_events DEFAULT VALUES")
                self.acked += 1
            except psycopg2.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
                gevent.sleep(0.1)
                next_at = time.monotonic()
                continue
            next_at += period
            gevent.sleep(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()
        self.idle.set()


# -- what the handlers recorded ----------------------------------------------------------


class Recorded:
    """Tails one instance's ids file: ids seen, live deliveries per id, times."""

    def __init__(self, path):
        self.path = path
        self.offset = 0
        self.ids = set()
        self.live = collections.Counter()
        self.catch_up = 0
        self.lines = []  # (kind, id, time) in file order

    def refresh(self):
        if not os.path.exists(self.path):
            return self
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.offset += end
        for line in data[:end].decode("ascii").splitlines():
            kind, ident, at = line.split()
            ident = int(ident)
            self.ids.add(ident)
            if kind == "n":
                self.live[ident] += 1
            else:
                self.catch_up += 1
            self.lines.append((kind, ident, float(at)))
        return self

    def duplicates(self):
        return sum(count - 1 for count in self.live.values() if count > 1)


def proc_usage(pid):
    """(open fds, RSS in KB) of a process."""
    fds = len(os.listdir("/proc/%d/fd" % pid))
    rss = 0
    with open("/proc/%d/status" % pid, encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, rss


# -- the run -----------------------------------------------------------------------------


class Chaos:
    def __init__(self, args):
        self.args = args
        self.size = SIZES["smoke" if args.smoke else "full"]
        self.work = tempfile.mkdtemp(prefix="pgvisor-chaos-")
        self.figures = collections.OrderedDict()
        self.phases = []  # (name, seconds, note)
        self.failures = []
        self.primary = self.standby = self.service = self.producer = None
        self.proxies = []

    # -- helpers ---------------------------------------------------------------------
    def say(self, text):
        print("[chaos %6.1fs] %s" % (time.monotonic() - self.t_start, text), flush=True)

    def db(self, sql_text, params=None):
        conn = psycopg2.connect(self.direct_dsn, connect_timeout=5,
                                application_name="chaos-driver")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(sql_text, params)
                return cur.fetchall() if cur.description is not None else None
        finally:
            conn.close()

    def committed(self):
        return {row[0] for row in self.db("SELECT id FROM chaos_events WHERE NOT poison")}

    def recorded(self):
        return {name: self.records[name].refresh() for name in INSTANCES}

    def wait_caught_up(self, what, timeout=None):
        """Wait until every row committed now reached both instances."""
        timeout = self.size["converge"] if timeout is None else timeout
        target = self.committed()
        started = time.monotonic()

        def complete():
            return all(not target - rec.ids for rec in self.recorded().values())
        try:
            wait_for(complete, timeout, 0.05, "caught up after %s" % what)
        except Exception:
            missing = {name: len(target - rec.ids) for name, rec in self.recorded().items()}
            self.failures.append("%s: not caught up within %ss, missing %r" % (
                what, timeout, missing))
            self.say("NOT caught up after %s: missing %r" % (what, missing))
            return None
        return time.monotonic() - started

    def phase(self, name, run):
        self.say("phase: %s" % name)
        started = time.monotonic()
        try:
            note = run() or ""
        except Exception as exc:  # a phase that fails is reported, the run goes on
            note = "FAILED: %r" % (exc,)
            self.failures.append("%s: %r" % (name, exc))
        caught = self.wait_caught_up(name)
        elapsed = time.monotonic() - started
        self.phases.append((name, elapsed, note, caught))
        self.say("  done in %.1fs %s (caught up %s)" % (
            elapsed, note, "in %.1fs" % caught if caught is not None else "NEVER"))
        gevent.sleep(self.size["settle"])

    def log_offset(self):
        return os.path.getsize(self.service.log_path)

    def log_since(self, offset):
        with open(self.service.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def spec(self, name, **fields):
        spec = {"name": name, "channels": [CHANNEL],
                "handler": "bench.chaos_handlers:%s" % name}
        if name == "spool":
            spec["queue"] = {"spool": os.path.join(self.work, "spool")}
        spec.update(fields)
        return spec

    def put(self, name, **fields):
        status, body = self.service.call("PUT", "/instances/%s" % name, self.spec(name, **fields))
        if status >= 300:
            raise PhaseFailed("PUT %s: %s %r" % (name, status, body))

    def wait_running(self, timeout=30):
        wait_for(lambda: all(self.service.status().get(n, {}).get("state") == "running"
                             for n in INSTANCES), timeout, 0.05, "both instances running")

    # -- setup -----------------------------------------------------------------------
    def setup(self):
        self.primary = PostgresCluster("pgvisor-chaos-primary").start()
        self.primary.execute(SCHEMA)
        self.standby = self.primary.create_standby()
        self.server_version = self.primary.execute("SHOW server_version")[0][0]
        self.proxies = [FaultProxy(self.primary.port).start(),
                        FaultProxy(self.standby.port).start()]
        self.direct_dsn = multi_dsn([self.primary.port, self.standby.port])
        service_dsn = multi_dsn([p.port for p in self.proxies])
        out = os.path.join(self.work, "out")
        os.makedirs(out)
        self.records = {name: Recorded(os.path.join(out, "%s.ids" % name)) for name in INSTANCES}
        self.service = ServiceProcess(out, {
            "database": {"dsn": service_dsn, "connect_timeout": 2},
            "supervisor": {"interval": 5.0, "wait_after_db_revived": 5.0,
                           "probe_interval": 0.5, "probe_timeout": 1.0},
            "http": {"token": "chaos-run-token-%d" % os.getpid()},
        }, env={"CHAOS_OUT": out, "CHAOS_HANDLER_DSN": self.direct_dsn})
        self.service.start()
        for name in INSTANCES:
            self.put(name)
        self.wait_running()
        self.producer = Producer(self.direct_dsn, self.size["rate"]).start()
        wait_for(lambda: self.producer.acked >= 10, 30, 0.05, "producer committing")
        self.wait_caught_up("warm-up")
        self.usage_start = proc_usage(self.service.process.pid)

    def teardown(self):
        if self.producer is not None and self.producer.greenlet is not None:
            self.producer.stop()
        if self.service is not None:
            self.service.stop()
        for proxy in self.proxies:
            proxy.stop()
        if self.primary is not None:
            self.primary.cleanup()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- the faults ------------------------------------------------------------------
    def terminations(self):
        killed = 0
        for _ in range(self.size["terminations"]):
            killed += self.db(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) "
                "FROM pg_stat_activity WHERE application_name LIKE 'pgvisor%%' "
                "AND backend_type = 'client backend'")[0][0]
            self.wait_caught_up("a backend termination")
        return "%d backends terminated in %d rounds" % (killed, self.size["terminations"])

    def burst_rate(self, what):
        """Insert a backlog of ``burst`` rows in one transaction; the memory instance's
        delivery rate (rows/s from commit to the last one handled)."""
        n = self.size["burst"]
        rows = self.db("INSERT INTO chaos_events SELECT FROM generate_series(1, %s) "
                       "RETURNING id", [n])
        ids = {row[0] for row in rows}
        started = time.monotonic()
        rec = self.records["memory"]
        wait_for(lambda: not ids - rec.refresh().ids, self.size["converge"], 0.01,
                 "burst %s delivered" % what)
        return n / (time.monotonic() - started)

    def burst_rates(self, what):
        """The median of ``bursts`` burst rates (one burst is noisy on a shared machine)."""
        rates = sorted(self.burst_rate(what) for _ in range(self.size["bursts"]))
        return rates[len(rates) // 2]

    def postgres_crash(self):
        before = self.burst_rates("before the crash")
        self.wait_caught_up("the first burst")
        offset = self.log_offset()
        self.primary.kill()
        down_at = time.monotonic()
        gevent.sleep(self.size["outage"])
        outage_log = self.log_since(offset)
        outage = time.monotonic() - down_at
        self.primary.start()
        up_at = time.time()
        rec = self.records["memory"]

        def first_live():
            return next((at for kind, _i, at in rec.refresh().lines
                         if kind == "n" and at > up_at), None)
        first = wait_for(first_live, self.size["converge"], 0.01, "a live notification")
        self.figures["first_live"] = first - up_at
        self.wait_caught_up("the restart")
        after = self.burst_rates("after the restart")
        self.figures["burst_before"] = before
        self.figures["burst_after"] = after
        lines = outage_log.count("\n")
        self.figures["outage_log_rate"] = lines / outage
        self.figures["outage_log_lines"] = lines
        self.figures["outage_seconds"] = outage
        return "down %.1fs, %d log lines; first live notification %.2fs after start" % (
            outage, lines, first - up_at)

    def instance_kills(self):
        for i in range(self.size["kills"]):
            name = INSTANCES[i % 2]
            status, body = self.service.call("POST", "/instances/%s/restart" % name)
            if status >= 300:
                raise PhaseFailed("restart %s: %s %r" % (name, status, body))
            gevent.sleep(0.3)
        self.wait_running()
        return "%d restarts over the HTTP API" % self.size["kills"]

    def half_open(self):
        """Blackhole the proxy in front of the primary until the notifier (the LISTEN
        connection) notices; when the database probe noticed is reported too (both from
        the log lines' timestamps)."""
        offset = self.log_offset()
        proxy = self.proxies[0]
        proxy.blackhole()
        started = time.time()
        try:
            notifier = wait_for(lambda: self.logged_at(
                offset, "action=component.reconnect instance=pgvisor-notifier"), 60, 0.05,
                "the notifier noticing the half-open connection")
            self.figures["half_open_detect"] = notifier - started
            probe = self.logged_at(offset, "action=monitor.change")
            if probe:
                self.figures["half_open_probe"] = probe - started
        finally:
            gevent.sleep(self.size["blackhole"])
            proxy.heal()
            proxy.reset()
        self.wait_running()
        return "the LISTEN connection noticed after %.2fs" % self.figures["half_open_detect"]

    def logged_at(self, offset, marker):
        """The time (epoch) of the first log line after ``offset`` containing ``marker``."""
        for line in self.log_since(offset).splitlines():
            if marker in line:
                stamp = datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%fZ")
                return stamp.replace(tzinfo=datetime.timezone.utc).timestamp()
        return None

    def service_kill(self):
        pid = self.service.process.pid
        self.usage_before_kill = proc_usage(pid)
        self.service.process.kill()
        self.service.process.wait(timeout=30)
        gevent.sleep(self.size["service_down"])
        ready = self.service.log().count("action=service.ready")
        self.service.start(ready=False)
        self.service.wait_log("action=service.ready", count=ready + 1, timeout=30)
        self.wait_running()
        self.usage_after_restart = proc_usage(self.service.process.pid)
        return "pid %d killed, restarted as %d" % (pid, self.service.process.pid)

    def sighup(self):
        count = self.service.log().count("action=service.reload")
        self.service.signal(signal.SIGHUP)
        self.service.wait_log("action=service.reload", count=count + 1, timeout=30)
        self.wait_running()
        return "reloaded"

    def registry_edits(self):
        self.put("memory", max_concurrency=2)
        self.put("spool", max_concurrency=2)
        self.wait_running()
        with open(self.service.registry, encoding="utf-8") as f:
            good = f.read()
        rejected = self.service.log().count("action=registry.reload_rejected")
        with open(self.service.registry, "w", encoding="utf-8") as f:
            f.write(good[: len(good) // 2])  # a truncated hand edit: must be rejected
        self.service.wait_log("action=registry.reload_rejected", count=rejected + 1,
                              timeout=30)
        with open(self.service.registry, "w", encoding="utf-8") as f:
            f.write(good)
        self.put("memory")
        self.put("spool")
        self.wait_running()
        return "2 PUTs, a truncated file rejected, restored, 2 PUTs back"

    def poison(self):
        n = self.size["poison"]
        rows = self.db("INSERT INTO chaos_events (poison) SELECT true FROM "
                       "generate_series(1, %s) RETURNING id", [n])
        ids = [row[0] for row in rows]
        errors = os.path.join(self.work, "spool", "errors")

        def on_error_path():
            return [f for f in os.listdir(errors) if not f.endswith(".meta")] \
                if os.path.isdir(errors) else []

        def parked_on_error_path():
            return len(on_error_path()) >= n
        wait_for(parked_on_error_path, self.size["converge"], 0.1,
                 "%d poison messages in the spool's errors/" % n)
        self.figures["poison"] = n
        self.poison_ids = ids
        return "%d poison rows, %d in the spool's errors/" % (n, len(on_error_path()))

    def failover(self):
        self.producer.pause()
        lsn = self.db("SELECT pg_current_wal_lsn()")[0][0]
        wait_for(lambda: self.standby.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [lsn])[0][0], 30, 0.02,
            "standby replayed everything committed")
        self.primary.kill()
        # The dead primary's proxy goes on accepting TCP and closes each connection during
        # startup (a proxy or load balancer in front of a dead server): libpq alone would
        # not go on to the next host there; the service must.
        started = time.monotonic()
        self.standby.promote()
        self.producer.resume()
        self.wait_running(timeout=60)
        self.wait_caught_up("the failover")
        self.figures["failover_seconds"] = time.monotonic() - started
        return "caught up on the promoted standby %.1fs after the kill" % (
            self.figures["failover_seconds"])

    # -- the whole run ---------------------------------------------------------------
    def run(self):
        self.t_start = time.monotonic()
        self.say("work directory %s" % self.work)
        try:
            self.setup()
            self.phase("backend terminations", self.terminations)
            self.phase("Postgres crash (kill -9) and restart", self.postgres_crash)
            self.phase("instance restarts over the HTTP API", self.instance_kills)
            self.phase("half-open connection (proxy blackhole)", self.half_open)
            self.phase("kill -9 of the service and restart", self.service_kill)
            self.phase("SIGHUP", self.sighup)
            self.phase("registry edits", self.registry_edits)
            self.phase("poison rows", self.poison)
            self.phase("failover (standby promoted)", self.failover)
            self.finish()
        finally:
            self.teardown()
        return 1 if self.failures else 0

    def finish(self):
        self.producer.stop()
        committed = self.committed()
        deadline = self.size["converge"]
        try:
            wait_for(lambda: all(not committed - rec.ids for rec in self.recorded().values()),
                     deadline, 0.1, "final convergence")
        except Exception:
            pass
        recorded = self.recorded()
        status = self.service.status()
        log = self.service.log()
        usage_end = proc_usage(self.service.process.pid)
        self.results = {
            "committed": len(committed),
            "poison": self.figures.get("poison", 0),
            "missing": {n: len(committed - recorded[n].ids) for n in INSTANCES},
            "duplicates": {n: recorded[n].duplicates() for n in INSTANCES},
            "catch_up": {n: recorded[n].catch_up for n in INSTANCES},
            "restarts": {n: status[n]["restarts"] for n in INSTANCES},
            "states": {n: status[n]["state"] for n in INSTANCES},
            "parks": log.count("action=supervisor.park"),
            "operator_restarts": sum(1 for line in log.splitlines()
                                     if "action=supervisor.restarted" in line
                                     and "(operator request)" in line),
            "automatic_restarts": sum(1 for line in log.splitlines()
                                      if "action=supervisor.restarted" in line
                                      and "(operator request)" not in line),
            "producer_errors": self.producer.errors,
            "usage": [self.usage_start, getattr(self, "usage_before_kill", None),
                      getattr(self, "usage_after_restart", None), usage_end],
        }
        for name, missing in self.results["missing"].items():
            if missing:
                self.failures.append("%s: %d committed rows never handled" % (name, missing))
        self.say("committed %d rows (+%d poison); missing %s; duplicates %s" % (
            len(committed), self.results["poison"],
            " ".join("%s=%d" % kv for kv in self.results["missing"].items()),
            " ".join("%s=%d" % kv for kv in self.results["duplicates"].items())))


# -- the report --------------------------------------------------------------------------


def machine(server_version):
    return [
        ("date", time.strftime("%Y-%m-%d %H:%M:%S %Z")),
        ("cores", "%d logical CPUs (usable: %d), load average at start %.2f" % (
            os.cpu_count() or 0, len(os.sched_getaffinity(0)), os.getloadavg()[0])),
        ("kernel", "%s %s" % (platform.system(), platform.release())),
        ("Python", "%s %s" % (platform.python_implementation(), sys.version.split()[0])),
        ("PostgreSQL", server_version),
    ]


def table(rows, header=("figure", "value")):
    widths = [max(len(str(r[i])) for r in list(rows) + [header]) for i in range(len(header))]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True)), line]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    out.append(line)
    return "\n".join(out)


def render(chaos, command):
    r, f = chaos.results, chaos.figures
    start, before_kill, after_restart, end = r["usage"]

    def growth(a, b):
        if a is None or b is None:
            return "n/a"
        return "%+d fds, %+d KB RSS (%d -> %d fds, %d -> %d KB)" % (
            b[0] - a[0], b[1] - a[1], a[0], b[0], a[1], b[1])
    figures = [
        ("rows committed", "%d (+%d poison rows)" % (r["committed"], r["poison"])),
        ("missing, memory instance", r["missing"]["memory"]),
        ("missing, spool instance", r["missing"]["spool"]),
        ("duplicates (live deliveries), memory", r["duplicates"]["memory"]),
        ("duplicates (live deliveries), spool", r["duplicates"]["spool"]),
        ("ids found by catch_up re-reads, memory / spool", "%d / %d" % (
            r["catch_up"]["memory"], r["catch_up"]["spool"])),
        ("half-open connection: noticed by the LISTEN connection", "%.2f s" % f.get(
            "half_open_detect", -1)),
        ("half-open connection: noticed by the database probe", "%.2f s" % f.get(
            "half_open_probe", -1)),
        ("database start to first live notification", "%.2f s" % f.get("first_live", -1)),
        ("drain rate after a Postgres restart / before", "%.2f (%.0f / %.0f rows/s)" % (
            f["burst_after"] / f["burst_before"], f["burst_after"], f["burst_before"])
         if "burst_after" in f else "n/a"),
        ("instance restarts: operator requests / automatic", "%d / %d" % (
            r["operator_restarts"], r["automatic_restarts"])),
        ("parks (disabled_by_supervisor)", r["parks"]),
        ("log lines per second during the outage", "%.1f (%d lines in %.1f s)" % (
            f.get("outage_log_rate", -1), f.get("outage_log_lines", -1),
            f.get("outage_seconds", -1))),
        ("failover: primary killed to caught up", "%.1f s" % f.get("failover_seconds", -1)),
        ("fd and RSS growth, first process", growth(start, before_kill)),
        ("fd and RSS growth, second process", growth(after_restart, end)),
        ("final states", ", ".join("%s %s" % kv for kv in r["states"].items())),
        ("producer errors (reconnects)", r["producer_errors"]),
    ]
    phases = [(name, "%.1f s" % secs, "%.1f s" % caught if caught is not None else "NEVER",
               note.replace("|", "/")) for name, secs, note, caught in chaos.phases]
    parts = [
        "Reliability",
        "===========",
        "",
        ".. This file is generated by ``%s``; do not edit it, run the command again." % command,
        "",
        "The published chaos run: the real service (``pgvisor run``) on a throwaway primary",
        "and streaming standby, a producer inserting rows whose trigger NOTIFYs, and two",
        "instances whose handlers record every id and re-read the table on ``catch_up``:",
        "``memory`` (memory queue) and ``spool`` (a FileQueue). The service reaches the",
        "database through two fault-injecting proxies with a multi-host DSN",
        "(``target_session_attrs=read-write``). Faults are injected one after the other;",
        "after each one the run waits until both instances have every committed row.",
        "Regenerate with ``make chaos`` (source: ``bench/chaos.py``).",
        "",
        "Machine",
        "-------",
        "",
    ]
    parts += ["- %s: %s" % kv for kv in machine(chaos.server_version)]
    parts += ["", "Results", "-------", "", table(figures), "",
              "Verdict: %s." % ("every committed row reached both instances"
                                if not chaos.failures else
                                "FAILED: " + "; ".join(chaos.failures)), "",
              "Faults", "------", "", table(phases, ("fault", "took", "caught up in",
                                                      "what happened")), "",
              "How it was measured", "-------------------", "", NOTES.strip(), ""]
    return "\n".join(parts)


NOTES = """
- *missing*: committed non-poison rows (read from the final primary) whose id neither
  instance's handler recorded, live or by a ``catch_up`` re-read. Must be 0.
- *duplicates*: live deliveries of an id beyond the first (at-least-once after a crash);
  ids both re-read by ``catch_up`` and then notified are not counted.
- *half-open*: the proxy in front of the primary forwards nothing (connections stay open);
  the figure is the time until the service logs the loss.
- *first live notification*: from the moment the restarted server accepts connections to
  the first live notification handled. The supervisor wakes the notifier out of its
  reconnect backoff (1 s doubling, capped at 32 s) as soon as its probe sees the database
  back, so it is bounded by how soon the probe sees it (its interval backs off to 5 s
  while down), not by the rest of a backoff step.
- *restarts*: ``supervisor.restarted`` log lines of both service processes; *automatic*
  ones are the supervisor's own (a dead or hung instance), the rest were asked for over
  the HTTP API. *parks*: ``supervisor.park`` lines (an instance over its restart budget).
- *drain rate*: a backlog of rows inserted in one transaction, from commit until the
  memory instance handled all of them; the median of 3 such bursts (1 with ``--smoke``)
  before the crash and after the restart. On a shared machine it varies from run to run.
- *failover*: the producer pauses until the standby replayed everything committed (so no
  acknowledged row is lost by asynchronous replication), the primary is killed, the
  standby promoted; the service finds it through the multi-host DSN. The dead primary's
  proxy keeps accepting TCP and closes each connection during startup (a TCP proxy or load
  balancer in front of a dead server), where libpq alone gives up on the whole host list:
  the service's connector hands libpq one host at a time and goes on to the next.
- *fd and RSS growth*: ``/proc`` of the service, from after the warm-up to just before its
  kill -9, and from its restart to the end of the run.
"""


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a short run of every fault")
    parser.add_argument("--report", help="where to write the report (default: "
                        "docs/reliability.rst, or a temporary file with --smoke)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    chaos = Chaos(args)
    status = chaos.run()
    if not hasattr(chaos, "results"):
        print("chaos run failed before the end: %s" % "; ".join(chaos.failures))
        return 1
    command = "python -m bench.chaos --smoke" if args.smoke else "make chaos"
    text = render(chaos, command)
    path = args.report
    if path is None:
        path = DOC if not args.smoke else os.path.join(
            tempfile.mkdtemp(prefix="pgvisor-chaos-report-"), "reliability.rst")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    print("report written to %s" % path)
    for failure in chaos.failures:
        print("FAILURE: %s" % failure)
    return status


if __name__ == "__main__":
    sys.exit(main())
