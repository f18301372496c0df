"""The :class:`Supervisor`: keeps the registry's instances running, as an actor.

One greenlet (the actor) owns every record and instance and serves a queue of typed
:class:`Request` s (:class:`Kind`: restart, verify, shutdown, reload, enabled, instance
died, database state changed, role check, grace over, periodic tick, registry changed,
stop), each dispatched through the :data:`HANDLERS` table. Callers never touch that state;
they put a request and get a greenlet back whose value is ``{name: outcome}``
(:class:`~supervisor.plan.Outcome`, the same strings on the wire). Identical requests
waiting in the queue are merged (the second caller gets the first caller's greenlet). No
locks.

What the actor does with a request is decided by the pure policy :func:`supervisor.plan.plan`
and carried out by :class:`~supervisor.execution.Executor`, which the Supervisor hands its
collaborators (records, budget, counters, callbacks), never itself; the database's state
comes from :class:`~supervisor.monitor.DatabaseMonitor`, failover-file events from
:class:`~supervisor.watch.FileWatcher`, hub blocks from :class:`~supervisor.hubwatch.HubWatch`.

Defaults are class attributes (cyme's ``interval``, ``restart_max_rate``, ``paused``,
``wait_after_broker_revived`` among them) whose values come from the settings table
(:mod:`supervisor.config.settings`); a constructor argument left None takes the class
attribute, so a subclass or an assignment to the class changes the default.
"""
import dataclasses
import enum
import functools
import logging
import time
import typing

import gevent
import gevent.event
import gevent.queue

from instances.components import check_heartbeat_timeout
from instances.listeners import PostgresNotificationListener
from instances.notifier import Notifiers
from supervisor.budget import RestartBudget
from supervisor.config.settings import BY_NAME
from supervisor.current import set_current
from supervisor.execution import Executor, make_instance
from supervisor.hubwatch import HubWatch
from supervisor.monitor import DatabaseMonitor
from supervisor.plan import Outcome, PlanState, plan
from supervisor.records import Record, database_status_of, observed_of, status_of

log = logging.getLogger(__name__)


def _default(name):
    """The settings table's default of ``name`` ("section.key"): the one home of every
    service default."""
    return BY_NAME[name].default


class Kind(enum.StrEnum):
    """What a :class:`Request` asks the actor."""

    RESTART = "restart"
    VERIFY = "verify"
    SHUTDOWN = "shutdown"
    RELOAD = "reload"
    ENABLED = "enabled"
    DIED = "died"
    DATABASE = "database"
    ROLE_CHECK = "role_check"
    GRACE_OVER = "grace_over"
    TICK = "tick"
    REGISTRY = "registry"
    STOP = "stop"
    PING = "ping"
    NODES = "nodes"


#: Kinds never merged with a waiting twin: each carries its own event.
UNMERGED = frozenset((Kind.DIED, Kind.DATABASE))


@dataclasses.dataclass(frozen=True)
class Request:
    """One request to the actor. ``names``: the instances (None: all); ``ratelimit``: a
    verify's restarts spend budget; ``state``: the monitor's DatabaseState (DATABASE);
    ``instance``: the instance that died (DIED); ``generation``: the grace (GRACE_OVER)."""

    kind: Kind
    names: typing.Optional[tuple] = None
    ratelimit: bool = False
    state: typing.Any = None
    instance: typing.Any = None
    generation: int = 0

    @property
    def key(self):
        """Requests with equal keys are merged while waiting."""
        names = None if self.names is None else tuple(sorted(set(self.names)))
        return (self.kind, names, self.ratelimit, self.generation)


class Supervisor:
    """Supervise the instances of ``registry`` against the database ``dsn``.

    docs/supervision.rst describes the policy and docs/configuration.rst every default; an
    argument left None takes the class attribute of the same name.
    ``instance_factory(spec, dsn, on_death, on_connection_lost, queue=None)`` builds
    instances (default: :class:`~instances.instance.Instance`). ``queue``: the request queue (cyme's; default
    a fresh :class:`gevent.queue.Queue`).

    Outage and grace: the database monitor's reports arrive as DATABASE requests; a
    report of "down" pauses supervision, the next "up" starts the grace (a generation
    number and a timer that queues GRACE_OVER); only the newest grace's timer ends it.
    """

    #: Seconds between periodic verifies of every instance.
    interval = _default("supervisor.interval")
    #: Automatic restarts allowed per instance ("1/m": one a minute; cyme's rate forms).
    restart_max_rate = _default("supervisor.restart_max_rate")
    #: Seconds instances get to reconnect after the database revives before restarts.
    wait_after_db_revived = _default("supervisor.wait_after_db_revived")
    #: Seconds without a heartbeat after which an alive instance counts as hung.
    heartbeat_timeout = _default("supervisor.heartbeat_timeout")
    #: Seconds a stopped instance may finish its current notification before it is killed.
    shutdown_grace = _default("supervisor.shutdown_grace")
    #: Seconds between the database monitor's probes.
    probe_interval = _default("supervisor.probe_interval")
    #: Seconds after which a database probe counts as failed.
    probe_timeout = _default("supervisor.probe_timeout")
    #: Seconds failover-file events are collected before one role check.
    failover_debounce = _default("failover.debounce")
    #: The failover files watched in ``watch_path`` (PostgreSQL 12+ and older releases).
    failover_files = _default("failover.files")
    #: Start paused (an operator's pause, until :meth:`resume`). On an instance,
    #: ``paused`` is True while an operator's pause or a database outage holds
    #: supervision (cyme: "connection errors pause the supervisor").
    paused = False
    #: Report hub blocking (a :class:`~supervisor.hubwatch.HubWatch`) as log lines and
    #: ``hub_blocks``.
    hub_monitor = True
    #: Seconds one greenlet may hold the hub before it counts as a block.
    max_blocking_time = HubWatch.max_blocking_time

    def __init_subclass__(cls, **kwargs):
        """A subclass that sets cyme's ``wait_after_broker_revived`` sets
        ``wait_after_db_revived``."""
        super().__init_subclass__(**kwargs)
        value = cls.__dict__.get("wait_after_broker_revived")
        if value is not None and not isinstance(value, _Alias):
            cls.wait_after_db_revived = value
            cls.wait_after_broker_revived = _Alias("wait_after_db_revived")

    def __init__(self, registry, dsn, interval=None, restart_max_rate=None,
                 wait_after_db_revived=None, watch_path=None, failover_files=None,
                 queue=None, set_as_current=True, *, heartbeat_timeout=None,
                 shutdown_grace=None, probe_interval=None, probe_timeout=None,
                 failover_debounce=None, paused=None, hub_monitor=None,
                 max_blocking_time=None, instance_factory=None):
        self.registry = registry
        self.dsn = dsn
        self.watch_path = watch_path
        self._override(interval=interval, restart_max_rate=restart_max_rate,
                       wait_after_db_revived=wait_after_db_revived,
                       failover_files=failover_files, heartbeat_timeout=heartbeat_timeout,
                       shutdown_grace=shutdown_grace, probe_interval=probe_interval,
                       probe_timeout=probe_timeout, failover_debounce=failover_debounce,
                       hub_monitor=hub_monitor, max_blocking_time=max_blocking_time)
        check_heartbeat_timeout(self.heartbeat_timeout, (PostgresNotificationListener,))
        self.records = {}
        self.counters = dict.fromkeys(("restarts", "restarts_rate_limited", "deaths", "outages",
                                       "role_changes", "verifies", "hub_blocks"), 0)
        self.budget = RestartBudget(self.restart_max_rate)
        self.monitor = DatabaseMonitor(dsn, self._database_changed, self.probe_interval,
                                       self.probe_timeout)
        #: The node's shared LISTEN connections (one per database); instances subscribe.
        self.notifiers = Notifiers()
        self.executor = Executor(records=self.records, budget=self.budget,
                                 counters=self.counters, dsn=dsn,
                                 on_death=self._instance_died,
                                 on_connection_lost=self._connection_lost,
                                 instance_factory=instance_factory or functools.partial(
                                     make_instance, notifiers=self.notifiers))
        self.hubwatch = HubWatch(self._hub_blocked, self.max_blocking_time)
        self._requests = queue if queue is not None else gevent.queue.Queue()
        self.database = None  # the last DatabaseState
        self.last_up = None  # the last DatabaseState that was up
        self._db_since = time.time()
        self._manual_pause = type(self).paused if paused is None else bool(paused)
        self.paused = True  # no database state yet (see _refresh_paused)
        self._grace = 0  # generation of the newest grace; 0: none yet
        self._grace_timer = None  # the greenlet that queues grace_over (None: not in grace)
        self._merged = {}
        self._greenlets = []
        self._watcher = None
        self._follower = None  # the registry's own follower (a table: its NOTIFY), if any
        self.running = False
        #: A :class:`supervisor.nodes.Cluster` (multi-node): only the instances it allows
        #: run here. None: every instance of the registry (single node).
        self.cluster = None
        registry.on_change(lambda _registry: self._put(Request(Kind.REGISTRY, ratelimit=True)))
        registry.on_enable(lambda name: self._put(Request(Kind.ENABLED, (name,))))
        if set_as_current:
            set_current(self)

    def _override(self, **given):
        """Set the arguments given; one left None keeps the class attribute."""
        for key, value in given.items():
            if value is not None:
                setattr(self, key, value)
        self.failover_files = tuple(self.failover_files)

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
        follow = getattr(self.registry, "follow", None)
        if follow is not None:  # a registry in Postgres reloads on its NOTIFY, off the actor
            self._follower = follow(self.notifiers, self.interval)
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
        done = self._put(Request(Kind.STOP))
        done.join(timeout + self.shutdown_grace)
        self.running = False
        if self._watcher is not None:
            self._watcher.stop()
        self.monitor.stop()
        if self._grace_timer is not None:
            self._grace_timer.kill(block=False)
        self.hubwatch.stop()
        if self._follower is not None:
            self._follower.stop(timeout)
        self.notifiers.stop(timeout)
        # killall(timeout=) raises Timeout when one outlives it: kill, then wait up to it
        gevent.killall(self._greenlets, block=False)
        gevent.joinall(self._greenlets, timeout=timeout)
        log.info("supervisor stopped", extra={"action": "supervisor.stop", "instance": None})

    # -- async operations (any greenlet) -----------------------------------------------
    def restart(self, names):
        """Restart ``names`` (bypasses the restart budget and clears parking)."""
        return self._put(Request(Kind.RESTART, _names(names)))

    def verify(self, names=None, ratelimit=False):
        """Bring ``names`` (None: all) in line with the registry."""
        return self._put(Request(Kind.VERIFY, _names(names), ratelimit=bool(ratelimit)))

    def shutdown(self, names):
        """Stop ``names``; they stay stopped until restarted (or the registry changes them)."""
        return self._put(Request(Kind.SHUTDOWN, _names(names)))

    def nodes_changed(self):
        """Node membership or assignments changed (the Cluster says so): verify. Never
        blocks, never raises (a hub callback may call it)."""
        return self._put(Request(Kind.NODES, ratelimit=True))

    def ping(self):
        """A request that does nothing: its greenlet finishes ({}) once the actor loop has
        got to it. The systemd watchdog pings only after such an answer."""
        return self._put(Request(Kind.PING))

    def reload_registry(self):
        """Re-read the registry now; greenlet value: True if the reload succeeded (a change
        reaches the actor as a registry-changed request). A registry with a follower (in
        Postgres) is read by the follower's greenlet, never by the actor."""
        if self._follower is not None:
            return self._follower.reload_now()
        return self._put(Request(Kind.RELOAD))

    def pause(self):
        """Hold back every start and restart until :meth:`resume` (operator's pause)."""
        self._manual_pause = True
        self._refresh_paused()
        log.warning("supervisor paused by operator", extra={"action": "supervisor.pause",
                                                            "instance": None})

    def resume(self):
        self._manual_pause = False
        self._refresh_paused()
        log.info("supervisor resumed by operator", extra={"action": "supervisor.resume",
                                                          "instance": None})
        self._put(Request(Kind.VERIFY, ratelimit=True))

    def _refresh_paused(self):
        self.paused = self._manual_pause or not self.db_up

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
        statuses = {name: status_of(self.records.get(name) or Record(name),
                                    desired.get(name), self.db_up) for name in names}
        for name, status in statuses.items():  # automatic restarts allowed now
            spec = desired.get(name)
            status["budget_left"] = self.budget.remaining(
                name, spec.restart_max_rate if spec is not None else None)
            if self.cluster is not None:
                status["node"], status["epoch"] = self.cluster.placement(name)
        return statuses

    def database_status(self):
        """The database as the supervisor sees it (docs/http.rst: ``database``), with
        ``notifiers``: the node's shared LISTEN connections (:meth:`notifier_status`)."""
        status = database_status_of(self.database, self._db_since, self._manual_pause,
                                    self.in_grace)
        status["notifiers"] = self.notifier_status()
        return status

    def registry_status(self):
        """The registry (docs/http.rst: ``registry``): backend, version, instances; for a
        table also schema, channel, loaded and its follower's ``following``, ``reloads``,
        ``changes`` and ``last_error`` (a database outage shows there)."""
        status = getattr(self.registry, "status", dict)()
        if self._follower is not None:
            status.update(self._follower.status())
        return status

    def notifier_status(self):
        """A list of dicts, one per shared LISTEN connection: name, dsn (redacted),
        connected, channels, subscribers, backlog, queue_usage, probes, last_error..."""
        return self.notifiers.status()

    def plan_state(self, ratelimit=True, grace_ended=False, elsewhere=None):
        """The situation the policy plans under now (``elsewhere``: see PlanState)."""
        return PlanState(db_up=self.db_up, paused=self._manual_pause, role=self.role,
                         in_grace=self.in_grace, heartbeat_timeout=self.heartbeat_timeout,
                         ratelimit=ratelimit, grace_ended=grace_ended,
                         wait_after_db_revived=self.wait_after_db_revived,
                         restart_max_rate=self.budget.default_rate,
                         elsewhere=elsewhere or {})

    def desired(self, names=None):
        """``{name: spec}`` of the instances that should run here (``names``: of those)."""
        specs = {spec.name: spec for spec in self.registry}
        if self.cluster is not None:
            allowed = self.cluster.allowed()
            specs = {name: spec for name, spec in specs.items() if name in allowed}
        if names is None:
            return specs
        return {name: specs[name] for name in names if name in specs}

    def observed(self, names=None, desired=None):
        """``{name: Observed}``; the restart budget is looked up for what may restart
        (dead, or silent past the heartbeat timeout) against its ``desired`` spec's rate."""
        records = self.records if names is None else {
            n: self.records[n] for n in names if n in self.records}
        desired = self.desired(names) if desired is None else desired
        observed = {}
        for name, record in records.items():
            instance, left = record.instance, None
            if name in desired and (instance is None or not instance.alive or (
                    (instance.heartbeat_age() or 0.0) > self.heartbeat_timeout)):
                left = self.budget.remaining(name, desired[name].restart_max_rate)
            observed[name] = observed_of(record, left)
        return observed

    def plan(self, names=None, ratelimit=True, grace_ended=False):
        """The policy's actions for ``names`` (None: all) now."""
        desired = self.desired(names)
        observed = self.observed(names, desired)
        return plan(desired, observed, self.plan_state(
            ratelimit, grace_ended, self._elsewhere(observed, desired)))

    def _elsewhere(self, observed, desired):
        """``{name: Release}`` of the instances known here that the registry lists but
        the cluster took from this node (their stop is a release, not a removal)."""
        gone = [name for name in observed if name not in desired]
        if self.cluster is None or not gone:
            return {}
        listed = {spec.name for spec in self.registry}
        return {name: self.cluster.release(name) for name in gone if name in listed}

    # -- requests ----------------------------------------------------------------------
    def _put(self, request):
        """Queue ``request``; return the greenlet whose value is its outcome. Identical
        requests still waiting are merged. Never raises, never blocks."""
        merged = self._merged.get(request.key)
        if merged is not None and request.kind not in UNMERGED:
            return merged[1]
        result = gevent.event.AsyncResult()
        waiter = gevent.spawn(result.get)
        self._merged[request.key] = (result, waiter)
        self._requests.put((request, result))
        return waiter

    def _serve(self):
        while True:
            request, result = self._requests.get()
            if self._merged.get(request.key, (None,))[0] is result:
                del self._merged[request.key]
            try:
                outcome = HANDLERS[request.kind](self, request)
            except Exception as error:  # the loop's edge: report, keep supervising
                log.exception("request %s %s failed", request.kind, request.names,
                              extra={"action": "supervisor.request_failed", "instance": None})
                outcome = {name: Outcome.ERROR.detail(error) for name in request.names or ()}
            result.set(outcome)
            if request.kind is Kind.STOP:
                return

    def _tick_forever(self):
        while True:
            gevent.sleep(self.interval)
            self._put(Request(Kind.TICK, ratelimit=True))  # merged with a waiting tick

    # -- events from elsewhere (hub callbacks: never block, never raise) ---------------
    def _database_changed(self, state):
        self._put(Request(Kind.DATABASE, state=state))

    def _failover_event(self, names):
        log.info("failover files changed: %s: checking the role", ", ".join(sorted(names)),
                 extra={"action": "supervisor.failover_event", "instance": None})
        self._put(Request(Kind.ROLE_CHECK))

    def _hub_blocked(self, block):
        self.counters["hub_blocks"] += 1

    def _instance_died(self, instance):
        self._put(Request(Kind.DIED, (instance.name,), instance=instance))

    def _connection_lost(self, instance, error):
        self.monitor.check_now()

    # -- request handlers (actor greenlet; see HANDLERS) -------------------------------
    def _on_verify(self, request):
        return self._verify(request.names, request.ratelimit)

    def _verify(self, names, ratelimit, grace_ended=False):
        self.counters["verifies"] += 1
        outcome = self._unknown(names)
        known = None if names is None else [n for n in names if n not in outcome]
        outcome.update(self.executor.carry_out(self.plan(known, ratelimit, grace_ended),
                                               self.shutdown_grace))
        for name in (known if known is not None else self.desired()):
            outcome.setdefault(name, Outcome.UNCHANGED)
        return outcome

    def _on_role_check(self, request):
        """A failover file changed: the monitor probes now (its report follows as a
        DATABASE request when something changed)."""
        self.monitor.check_now()
        return {}

    def _on_reload(self, request):
        try:
            self.registry.reload()  # on a change, callbacks queue a verify
        except Exception as error:
            log.error("registry reload rejected, previous state stays: %s", error,
                      extra={"action": "registry.reload_rejected", "instance": None})
            return False
        return True

    def _on_enabled(self, request):
        """An operator enabled ``names``: clear parking, refusals and budgets, verify."""
        for name in request.names:
            record = self.records.get(name)
            if record is None:
                self.budget.reset(name)
                continue
            if record.parked:
                record.exit = None  # a fresh start, not a restart
            self.executor.unblock(record)
        return self._on_verify(dataclasses.replace(request, ratelimit=True))

    def _on_restart(self, request):
        outcome = self._unknown(request.names)
        specs = self.desired([n for n in request.names if n not in outcome])
        outcome.update(self.executor.restart(specs, self.shutdown_grace))
        return outcome

    def _on_shutdown(self, request):
        outcome = self._unknown(request.names)
        known = [n for n in request.names if n not in outcome]
        outcome.update(self.executor.shutdown(known, self.shutdown_grace))
        return outcome

    def _on_died(self, request):
        record = self.executor.record_death(request.instance, self.paused or self.in_grace,
                                            self.role)
        if record is None:
            return {}  # an instance we already replaced or stopped
        if record.refused_by or record.fatal or record.died_in_outage:
            self.monitor.check_now()  # the database may have changed under it
        return self._verify([record.name], ratelimit=True)

    def _on_database(self, request):
        """The monitor saw a change: record it (pausing, grace, role) and verify."""
        if self._database_changed_to(request.state) and request.state.up:
            for record in self.records.values():
                record.refused_by = None  # a new role: refused instances may try again
        # Down too: instances that need no database (spool sources) are planned anyway.
        return self._verify(None, ratelimit=True)

    def _on_grace_over(self, request):
        """The grace after a revival is over: the plan restarts instances still not
        connected and the dead, neither spending restart budget."""
        if not self._end_grace(request.generation) or not self.db_up:
            return {}
        return self._verify(None, ratelimit=False, grace_ended=True)

    def _on_ping(self, request):
        return {}

    def _on_stop(self, request):
        return self.executor.stop_everything(self.shutdown_grace)

    def _unknown(self, names):
        if names is None:
            return {}
        known = self.desired(names)
        outcome = {name: Outcome.UNKNOWN for name in names if name not in known}
        for name in outcome if self.cluster is not None else ():
            node, _ = self.cluster.placement(name)
            if node is not None:
                outcome[name] = Outcome.UNKNOWN.detail("runs on node %s" % node)
        return outcome

    # -- the database's state and the grace (actor greenlet) ---------------------------
    def _database_changed_to(self, state):
        """Record the monitor's report ``state``: count outages and role changes, start a
        grace on a revival. Returns True when the role differs from the last one seen up."""
        previous, last_up = self.database, self.last_up
        was_up = previous is not None and previous.up
        self.database = state
        self._refresh_paused()
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
            self._reconnect_now()
        return role_changed

    def _reconnect_now(self):
        """The database is back: listeners and notifiers waiting out their reconnect
        backoff (up to 32 s) try at once, so the first live notification does not wait
        for the rest of it."""
        woken = [record.name for record in self.records.values()
                 if record.instance is not None and record.instance.reconnect_now()]
        if woken:
            log.info("database revived: %d instance(s) reconnect now (%s)", len(woken),
                     ", ".join(sorted(woken)[:10]),
                     extra={"action": "supervisor.reconnect_now", "instance": None})

    def _begin_grace(self):
        self._grace += 1
        if self._grace_timer is not None:
            self._grace_timer.kill(block=False)
        self._grace_timer = gevent.spawn_later(
            self.wait_after_db_revived, self._put,
            Request(Kind.GRACE_OVER, generation=self._grace))
        log.info("database revived: instances have %.1f s to reconnect",
                 self.wait_after_db_revived,
                 extra={"action": "supervisor.revived", "instance": None})

    def _end_grace(self, generation):
        """End the grace of ``generation``; False if a newer one (or none) is running."""
        if generation != self._grace or self._grace_timer is None:
            return False
        self._grace_timer = None
        log.info("grace after the revival over: verifying every instance",
                 extra={"action": "supervisor.grace_over", "instance": None})
        return True


class _Alias:
    """A second name for a class attribute (read and set through either name)."""

    def __init__(self, name):
        self.name = name

    def __get__(self, obj, owner):
        return getattr(owner if obj is None else obj, self.name)

    def __set__(self, obj, value):
        setattr(obj, self.name, value)


#: cyme's name for the revive grace: the broker there, the database here.
Supervisor.wait_after_broker_revived = _Alias("wait_after_db_revived")


def _names(names):
    """A request's names: None (all) or a tuple; one name may come as a string."""
    if names is None:
        return None
    return (names,) if isinstance(names, str) else tuple(names)


#: What the actor does for each kind of request.
HANDLERS = {
    Kind.RESTART: Supervisor._on_restart,
    Kind.VERIFY: Supervisor._on_verify,
    Kind.SHUTDOWN: Supervisor._on_shutdown,
    Kind.RELOAD: Supervisor._on_reload,
    Kind.ENABLED: Supervisor._on_enabled,
    Kind.DIED: Supervisor._on_died,
    Kind.DATABASE: Supervisor._on_database,
    Kind.ROLE_CHECK: Supervisor._on_role_check,
    Kind.GRACE_OVER: Supervisor._on_grace_over,
    Kind.TICK: Supervisor._on_verify,
    Kind.REGISTRY: Supervisor._on_verify,
    Kind.STOP: Supervisor._on_stop,
    Kind.PING: Supervisor._on_ping,
    Kind.NODES: Supervisor._on_verify,
}
