"""The :class:`Supervisor`: keeps the registry's instances running, as an actor.

One greenlet (the actor) owns every record and instance and serves a request queue:
restart, verify, shutdown, instance died, registry changed, database state changed,
role check (a failover file changed), grace over, periodic tick, stop. Callers never touch that state; they put a request and
get a greenlet back whose value is ``{name: outcome}``. Identical requests waiting in the
queue are merged (the second caller gets the first caller's greenlet). No locks.

What the actor does with a request is decided by the pure policy :func:`supervisor.plan.plan`
and carried out by :class:`~supervisor.execution.Executor`; the database's state comes from
:class:`~supervisor.monitor.DatabaseMonitor`, failover-file events from
:class:`~supervisor.watch.FileWatcher`, hub blocks from :class:`~supervisor.hubwatch.HubWatch`.
"""
import logging
import time

import gevent
import gevent.event
import gevent.queue

from supervisor.budget import RestartBudget
from supervisor.current import set_current
from supervisor.execution import Executor
from supervisor.hubwatch import HubWatch
from supervisor.monitor import DatabaseMonitor
from supervisor.plan import PlanState, plan
from supervisor.records import database_status_of, observed_of, status_of

log = logging.getLogger(__name__)

#: The failover files of PostgreSQL 12+ and of older releases.
DEFAULT_FAILOVER_FILES = ("standby.signal", "recovery.signal", "recovery.conf", "recovery.done")


class Supervisor:
    """Supervise the instances of ``registry`` against the database ``dsn``.

    See DESIGN.md for the meaning of every argument; ``options`` (keyword only):
    heartbeat_timeout, shutdown_grace, probe_interval, probe_timeout, failover_debounce,
    instance_factory, hub_monitor, max_blocking_time.

    Outage and grace: the database monitor's reports arrive as ``database`` requests; a
    report of "down" pauses supervision, the next "up" starts the grace (a generation
    number and a timer that queues ``grace_over``); only the newest grace's timer ends it.
    """

    #: Seconds between periodic verifies of every instance.
    interval = 60.0
    #: Seconds instances get to reconnect after the database revives before restarts.
    wait_after_db_revived = 35.0
    #: Seconds without a heartbeat after which an alive instance counts as hung.
    heartbeat_timeout = 30.0
    #: Seconds a stopped instance may finish its current notification before it is killed.
    shutdown_grace = 10.0
    #: Seconds failover-file events are collected before one role check.
    failover_debounce = 0.5
    #: Report hub blocking (gevent's monitor thread) as log lines and ``hub_blocks``.
    hub_monitor = True
    #: Seconds one greenlet may hold the hub before it counts as a block.
    max_blocking_time = 0.1

    def __init__(self, registry, dsn, interval=60.0, restart_max_rate="1/m",
                 wait_after_db_revived=35.0, watch_path=None, failover_files=None,
                 queue=None, set_as_current=True, **options):
        self.registry = registry
        self.dsn = dsn
        self.interval = interval
        self.wait_after_db_revived = wait_after_db_revived
        self.watch_path = watch_path
        self.failover_files = tuple(failover_files or DEFAULT_FAILOVER_FILES)
        for key in ("heartbeat_timeout", "shutdown_grace", "failover_debounce",
                    "hub_monitor", "max_blocking_time"):
            value = options.pop(key, None)  # None: the class default
            if value is not None:
                setattr(self, key, value)
        self.budget = RestartBudget(restart_max_rate)
        self.monitor = DatabaseMonitor(dsn, self._database_changed,
                                       options.pop("probe_interval", None),
                                       options.pop("probe_timeout", None))
        self.executor = Executor(self, options.pop("instance_factory", None))
        if options:
            raise TypeError("unknown Supervisor options: %s" % ", ".join(sorted(options)))
        self._requests = queue if queue is not None else gevent.queue.Queue()
        self.records = {}
        self.counters = dict.fromkeys(("restarts", "restarts_rate_limited", "deaths", "outages",
                                       "role_changes", "verifies", "hub_blocks"), 0)
        self.database = None  # the last DatabaseState
        self.last_up = None  # the last DatabaseState that was up
        self._db_since = time.time()
        self._manual_pause = False
        self._grace = 0  # generation of the newest grace; 0: none yet
        self._grace_timer = None  # the greenlet that queues grace_over (None: not in grace)
        self.hubwatch = HubWatch(self._hub_blocked, self.max_blocking_time)
        self._merged = {}
        self._greenlets = []
        self._watcher = None
        self.running = False
        registry.on_change(lambda _registry: self._put("registry", None))
        registry.on_enable(lambda name: self._put("enabled", [name]))
        if set_as_current:
            set_current(self)

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        """Start the actor, the ticker, the database monitor and the failover watcher;
        returns at once."""
        if self.running:
            return self
        self.running = True
        self._greenlets = [gevent.spawn(self._serve), gevent.spawn(self._tick_forever)]
        if self.hub_monitor:
            self.hubwatch.start()
        self.monitor.start()
        if self.watch_path:
            from supervisor.watch import FileWatcher
            self._watcher = FileWatcher(self.watch_path, self.failover_files,
                                        self._failover_event, debounce=self.failover_debounce)
            self._watcher.start()
        log.info("supervisor started: %d instances in the registry", len(self.registry),
                 extra={"action": "supervisor.start", "instance": None})
        return self

    def stop(self, timeout=10.0):
        """Stop every instance (each may finish its current notification within the
        shutdown grace) and the supervisor itself. Blocks the caller."""
        if not self.running:
            return
        done = self._put("stop", None)
        done.join(timeout + self.shutdown_grace)
        self.running = False
        if self._watcher is not None:
            self._watcher.stop()
        self.monitor.stop()
        if self._grace_timer is not None:
            self._grace_timer.kill(block=False)
        self.hubwatch.stop()
        gevent.killall(self._greenlets, block=True, timeout=timeout)
        log.info("supervisor stopped", extra={"action": "supervisor.stop", "instance": None})

    # -- async operations (any greenlet) -----------------------------------------------
    def restart(self, names):
        """Restart ``names`` (bypasses the restart budget and clears parking)."""
        return self._put("restart", names)

    def verify(self, names=None, ratelimit=False):
        """Bring ``names`` (None: all) in line with the registry."""
        return self._put("verify", names, ratelimit=ratelimit)

    def shutdown(self, names):
        """Stop ``names``; they stay stopped until restarted (or the registry changes them)."""
        return self._put("shutdown", names)

    def reload_registry(self):
        """Re-read the registry file now; greenlet value: True if something changed."""
        return self._put("reload", None)

    def pause(self):
        """Hold back every start and restart until :meth:`resume` (operator's pause)."""
        self._manual_pause = True
        log.warning("supervisor paused by operator", extra={"action": "supervisor.pause",
                                                            "instance": None})

    def resume(self):
        self._manual_pause = False
        log.info("supervisor resumed by operator", extra={"action": "supervisor.resume",
                                                          "instance": None})
        self._put("verify", None, ratelimit=True)

    @property
    def paused(self):
        return self._manual_pause or not self.db_up

    @property
    def db_up(self):
        return self.database is not None and self.database.up

    @property
    def role(self):
        """The server's role as last probed ("primary", "standby"), None when unknown."""
        return self.database.role if self.database is not None else None

    @property
    def in_grace(self):
        """True from a revival until its ``wait_after_db_revived`` is over."""
        return self._grace_timer is not None

    # -- reading (any greenlet; snapshots only) ----------------------------------------
    def instance(self, name):
        record = self.records.get(name)
        return record.instance if record is not None else None

    def status(self):
        """``{name: status dict}`` for every instance known to the registry or running."""
        desired = {spec.name: spec for spec in self.registry}
        names = sorted(set(desired) | set(self.records))
        return {name: status_of(self.records.get(name) or self.executor.blank(name),
                                desired.get(name), self.db_up) for name in names}

    def database_status(self):
        """The database as the supervisor sees it (see CONVENTIONS: database_status)."""
        return database_status_of(self.database, self._db_since, self._manual_pause,
                                  self.in_grace)

    def plan_state(self, ratelimit=True):
        db = self.database
        return PlanState(db_up=self.db_up, paused=self._manual_pause,
                         role=db.role if db is not None else None, in_grace=self.in_grace,
                         heartbeat_timeout=self.heartbeat_timeout, ratelimit=ratelimit)

    # -- requests ----------------------------------------------------------------------
    def _put(self, kind, names, **flags):
        """Queue a request; return the greenlet whose value is its outcome. Identical
        requests still waiting are merged. Never raises, never blocks."""
        if isinstance(names, str):
            names = [names]
        key = (kind, None if names is None else tuple(sorted(set(names))),
               tuple(sorted(flags.items())))
        merged = self._merged.get(key)
        if merged is not None and kind not in ("died", "database"):
            return merged[1]
        result = gevent.event.AsyncResult()
        waiter = gevent.spawn(result.get)
        self._merged[key] = (result, waiter)
        self._requests.put((key, kind, names, flags, result))
        return waiter

    def _serve(self):
        while True:
            key, kind, names, flags, result = self._requests.get()
            if self._merged.get(key, (None,))[0] is result:
                del self._merged[key]
            try:
                outcome = self.executor.handle(kind, names, flags)
            except Exception as error:  # the loop's edge: report, keep supervising
                log.exception("request %s %s failed", kind, names,
                              extra={"action": "supervisor.request_failed", "instance": None})
                outcome = {name: "error: %s" % error for name in names or ()}
            result.set(outcome)
            if kind == "stop":
                return

    def _tick_forever(self):
        while True:
            gevent.sleep(self.interval)
            self._put("tick", None)  # merged with a tick still queued: ticks never pile up

    # -- events from elsewhere (hub callbacks: never block, never raise) ---------------
    def _database_changed(self, state):
        self._put("database", None, state=state)

    def _failover_event(self, names):
        log.info("failover files changed: %s: checking the role", ", ".join(sorted(names)),
                 extra={"action": "supervisor.failover_event", "instance": None})
        self._put("role_check", None)

    def _hub_blocked(self, block):
        self.counters["hub_blocks"] += 1

    def _instance_died(self, instance):
        self._put("died", [instance.name], instance=instance)

    def _connection_lost(self, instance, error):
        self.monitor.check_now()

    # -- used by the executor (actor greenlet) -----------------------------------------
    def database_changed(self, state):
        """Record the monitor's report ``state``: count outages and role changes, start a
        grace on a revival. Returns True when the role differs from the last one seen up."""
        previous, last_up = self.database, self.last_up
        was_up = previous is not None and previous.up
        self.database = state
        if not state.up:
            if was_up or previous is None:
                self.counters["outages"] += 1
                self._db_since = time.time()
                log.warning("database down: supervision paused (%s)", state.error,
                            extra={"action": "supervisor.outage", "instance": None})
            return False
        self.last_up = state
        role_changed = last_up is not None and last_up.role != state.role
        if role_changed:
            self.counters["role_changes"] += 1
        if role_changed or not was_up:
            self._db_since = time.time()
        if previous is not None and not was_up:
            self._begin_grace()
        return role_changed

    def _begin_grace(self):
        self._grace += 1
        if self._grace_timer is not None:
            self._grace_timer.kill(block=False)
        self._grace_timer = gevent.spawn_later(self.wait_after_db_revived, self._put,
                                               "grace_over", None, generation=self._grace)
        log.info("database revived: instances have %.1f s to reconnect",
                 self.wait_after_db_revived,
                 extra={"action": "supervisor.revived", "instance": None})

    def end_grace(self, generation):
        """End the grace of ``generation``; False if a newer one (or none) is running."""
        if generation != self._grace or self._grace_timer is None:
            return False
        self._grace_timer = None
        log.info("grace after the revival over: verifying every instance",
                 extra={"action": "supervisor.grace_over", "instance": None})
        return True

    def desired(self, names=None):
        specs = {spec.name: spec for spec in self.registry}
        if names is None:
            return specs
        return {name: specs[name] for name in names if name in specs}

    def observed(self, names=None):
        records = self.records if names is None else {
            n: self.records[n] for n in names if n in self.records}
        return {name: observed_of(record) for name, record in records.items()}

    def plan(self, names=None, ratelimit=True):
        return plan(self.desired(names), self.observed(names), self.plan_state(ratelimit))
