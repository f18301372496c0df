"""Multi-node: the :class:`Cluster` of one pgvisor node, coordinated through Postgres.

Several nodes share one database; each instance runs on exactly one node. Three tables in
the schema of pgvisor's tables (``[registry] schema``; migration step 2 of
:mod:`instances.migrations` creates them; docs/multinode.rst has the failure model)::

    nodes        name, incarnation, role, heartbeat_at, lease_expires_at, running, ...
                 one row per live node: its heartbeat and its lease (Oban's peers)
    leader       one row: term, holder, expires_at (River's elector, with a term)
    assignments  instance -> node, epoch, prev_node, not_before (Wolverine's assignments)

Every time is the database's: ``clock_timestamp()`` sets and compares every lease, never a
node's wall clock. Session advisory locks are not used for anything that matters: a
terminated backend frees them while its client still believes it holds them.

**One round trip per tick.** Every ``tick`` seconds (``lease_ttl / 4``) a node sends ONE
statement (:data:`TICK_SQL`): it renews its lease (``UPDATE nodes ... WHERE name AND
incarnation``), tries for the leadership when the last lease seen has expired (or renews it
when it holds it: the same term), reports the instances it released, and reads back its own
assignments, the nodes and a fingerprint of all assignments. At rest that is the only
query: ``4 / lease_ttl`` per second per node (0.4 at the default).

**The leader** (the holder of the leader row's current term) writes assignments only: the
instances of the registry over the live nodes, balanced by count, moving as few as possible,
``run_on`` respected (:func:`balance`). It plans when something changed: the desired set,
the nodes, their roles, the assignments' fingerprint, a node silent for ``node_grace``. Its
write is one statement (:data:`WRITE_SQL`) fenced by its term: the same statement renews the
leader row ``WHERE term = mine``, so a deposed leader writes nothing. A dead node's row is
deleted in that statement (``WHERE heartbeat_at < clock_timestamp() - node_grace``,
re-checked under the row lock): if the node renewed meanwhile, it is not dead and nothing of
it moves; if it renews later, it finds its row gone and knows it lost everything.

**Exactly one.** A node runs an instance only while it holds that assignment's current
epoch: granted by a tick whose renewal succeeded, until ``sent + lease_ttl - margin`` on
the node's own monotonic clock, ``sent`` being the moment before the tick was sent. Past
``deadline - margin`` without a newer grant it stops the instance through the Supervisor,
at the deadline it kills what is still alive. A new owner starts an instance only once the
database's clock passes the assignment's ``not_before``: the old lease's expiry plus
``margin`` for a dead node; ``lease_ttl + margin`` after the move for a live one (a tick
read before the move cannot grant beyond that), or as soon as the old owner reports it
released the instance (stopped it). An assignment's epoch comes from one sequence, so it
never repeats, even across instances: a handler fences its writes with it.

**Outage.** While the database is unreachable no tick succeeds: every node lets its grants
run out and stops its instances (a partitioned node cannot tell an outage from a
partition); nobody can write, so nothing moves. After a revival a leader judges no node
dead for ``wait_after_db_revived`` (measured from its own first successful tick), and the
instances granted again are admitted in waves (:attr:`Cluster.start_batch` every
:attr:`Cluster.start_interval`, jittered): no herd.

Concurrency: the Cluster's greenlet owns its connection and its state; :meth:`allowed`,
:meth:`placement`, :meth:`epoch`, :meth:`status` and :meth:`nodes` read snapshots and are
safe from any greenlet of the hub's thread. The callbacks it is given (``changed``) must
not block.
"""
import dataclasses
import hashlib
import json
import logging
import os
import random
import socket
import time
import typing
import uuid

import gevent
import gevent.event
import gevent.pool

from instances import migrations
from instances.connectors import PostgresConnector
from instances.episodes import one_line
from instances.exceptions import DatabaseError, InvalidConfigurationException
from supervisor.config.settings import BY_NAME

log = logging.getLogger(__name__)

#: Register (or take back after a restart) this node's row: only when the row is free or
#: its lease expired ``margin`` ago (a live process of the same name keeps it). A new
#: incarnation inherits the name's assignments with new epochs: the old process's late
#: writes carry an older epoch than the new one's.
REGISTER_SQL = """
WITH reg AS (
    INSERT INTO {schema}.nodes AS n (name, incarnation, role, heartbeat_at,
                                     lease_expires_at, info)
    VALUES (%(name)s, %(incarnation)s, %(role)s, clock_timestamp(),
            clock_timestamp() + make_interval(secs => %(ttl)s), %(info)s)
    ON CONFLICT (name) DO UPDATE SET
        incarnation = excluded.incarnation, role = excluded.role,
        started_at = clock_timestamp(), heartbeat_at = excluded.heartbeat_at,
        lease_expires_at = excluded.lease_expires_at, info = excluded.info
    WHERE n.lease_expires_at + make_interval(secs => %(margin)s) < clock_timestamp()
    RETURNING name),
bumped AS (
    UPDATE {schema}.assignments SET epoch = nextval('{schema}.epochs'),
        assigned_at = clock_timestamp()
    WHERE node = %(name)s AND EXISTS (SELECT 1 FROM reg)
    RETURNING instance)
SELECT (SELECT name FROM reg), (SELECT count(*) FROM bumped)
"""

#: The tick: renew, lead (or try to), release, read. One statement, one round trip.
TICK_SQL = """
WITH me AS (
    UPDATE {schema}.nodes SET heartbeat_at = clock_timestamp(),
        lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s),
        role = %(role)s, running = %(running)s
    WHERE name = %(name)s AND incarnation = %(incarnation)s
    RETURNING name),
lead AS (
    INSERT INTO {schema}.leader AS l (only_row, term, holder, elected_at, expires_at)
    SELECT true, 1, %(name)s, clock_timestamp(),
           clock_timestamp() + make_interval(secs => %(ttl)s)
    FROM me WHERE %(lead)s
    ON CONFLICT (only_row) DO UPDATE SET
        term = CASE WHEN l.holder = excluded.holder AND l.term = %(term)s
                    THEN l.term ELSE l.term + 1 END,
        elected_at = CASE WHEN l.holder = excluded.holder AND l.term = %(term)s
                          THEN l.elected_at ELSE excluded.elected_at END,
        holder = excluded.holder, expires_at = excluded.expires_at
    WHERE (l.holder = excluded.holder AND l.term = %(term)s)
       OR l.expires_at < clock_timestamp()
    RETURNING l.term),
released AS (
    UPDATE {schema}.assignments SET not_before = clock_timestamp()
    WHERE instance = ANY(%(released)s) AND prev_node = %(name)s
      AND node IS DISTINCT FROM %(name)s AND not_before > clock_timestamp()
      AND EXISTS (SELECT 1 FROM me)
    RETURNING instance)
SELECT EXISTS (SELECT 1 FROM me),
       (SELECT term FROM lead),
       (SELECT json_build_object(
            'term', term, 'holder', holder,
            'expires_in', extract(epoch FROM expires_at - clock_timestamp()))
        FROM {schema}.leader),
       (SELECT coalesce(json_agg(json_build_object(
            'name', name, 'role', role, 'running', running,
            'age', extract(epoch FROM clock_timestamp() - heartbeat_at),
            'lease_left', extract(epoch FROM lease_expires_at - clock_timestamp()))
            ORDER BY name), '[]')
        FROM {schema}.nodes),
       (SELECT json_build_array(count(*), coalesce(max(epoch), 0), count(node))
        FROM {schema}.assignments),
       (SELECT coalesce(json_agg(json_build_array(
            instance, epoch, extract(epoch FROM not_before - clock_timestamp()))), '[]')
        FROM {schema}.assignments WHERE node = %(name)s)
"""

#: Every assignment (the leader plans over them; statuses name an instance's node).
ASSIGNMENTS_SQL = "SELECT instance, node, epoch FROM {schema}.assignments"

#: The leader's write, fenced by its term: dead nodes out, then the moves, new rows and
#: the garbage. ``plan`` rows: (instance, new node or NULL, old epoch or NULL: no row).
WRITE_SQL = """
WITH fence AS (
    UPDATE {schema}.leader SET expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
    WHERE only_row AND term = %(term)s AND holder = %(name)s
    RETURNING term),
dead AS (
    DELETE FROM {schema}.nodes
    WHERE name = ANY(%(dead)s) AND EXISTS (SELECT 1 FROM fence)
      AND heartbeat_at < clock_timestamp() - make_interval(secs => %(grace)s)
    RETURNING name, lease_expires_at),
plan AS (
    SELECT * FROM unnest(%(instances)s::text[], %(nodes)s::text[], %(epochs)s::bigint[])
        AS p(instance, node, old_epoch)),
moved AS (
    UPDATE {schema}.assignments a SET
        node = p.node, epoch = nextval('{schema}.epochs'), prev_node = a.node,
        assigned_at = clock_timestamp(),
        not_before = CASE
            WHEN a.node IS NULL THEN greatest(a.not_before, clock_timestamp())
            WHEN a.node = ANY(%(dead)s) THEN greatest(clock_timestamp(),
                (SELECT d.lease_expires_at FROM dead d WHERE d.name = a.node)
                + make_interval(secs => %(margin)s))
            WHEN NOT EXISTS (SELECT 1 FROM {schema}.nodes n WHERE n.name = a.node)
                THEN clock_timestamp() + make_interval(secs => %(margin)s)
            ELSE clock_timestamp() + make_interval(secs => %(ttl)s + %(margin)s) END
    FROM plan p
    WHERE a.instance = p.instance AND a.epoch = p.old_epoch
      AND EXISTS (SELECT 1 FROM fence)
      AND (a.node IS NULL OR NOT a.node = ANY(%(dead)s)
           OR EXISTS (SELECT 1 FROM dead d WHERE d.name = a.node))
    RETURNING a.instance),
added AS (
    INSERT INTO {schema}.assignments (instance, node, epoch, assigned_at, not_before)
    SELECT p.instance, p.node, nextval('{schema}.epochs'), clock_timestamp(),
           clock_timestamp()
    FROM plan p WHERE p.old_epoch IS NULL AND EXISTS (SELECT 1 FROM fence)
    ON CONFLICT (instance) DO NOTHING
    RETURNING instance),
gone AS (
    DELETE FROM {schema}.assignments a
    WHERE a.node IS NULL AND NOT a.instance = ANY(%(desired)s)
      AND a.not_before < clock_timestamp() AND EXISTS (SELECT 1 FROM fence)
    RETURNING instance)
SELECT (SELECT count(*) FROM fence), (SELECT count(*) FROM moved),
       (SELECT count(*) FROM added), (SELECT count(*) FROM gone),
       (SELECT coalesce(array_agg(name), '{{}}') FROM dead)
"""

#: Leave the cluster (a clean shutdown, every instance stopped): the row goes, the leader
#: hands this node's instances to the others without waiting for a lease.
LEAVE_SQL = "DELETE FROM {schema}.nodes WHERE name = %(name)s AND incarnation = %(incarnation)s"


def default_node_name(state_dir=None):
    """The host name plus a short id stable for this host and state directory (a restart
    keeps its name and its assignments; two services on one host differ)."""
    host = socket.gethostname().split(".")[0] or "node"
    where = os.path.abspath(state_dir or os.getcwd())
    return "%s-%s" % (host, hashlib.sha1(("%s:%s" % (host, where)).encode()).hexdigest()[:6])


def role_fits(run_on, role):
    """True when an instance of ``run_on`` may run on a node whose database plays ``role``
    ("primary", "standby", None: not known yet): any runs anywhere, the others only on
    their role."""
    return run_on == "any" or (role is not None and run_on == role)


def balance(desired, nodes, current):
    """``{instance: node or None}``: where each instance of ``desired`` should run.

    ``desired``: ``{instance: run_on}``; ``nodes``: ``{node: role}`` of the live nodes;
    ``current``: ``{instance: node or None}``. Keeps every instance where it is while its
    node is live, fits its ``run_on`` and is not over its share; places the others on the
    least loaded fitting node (the most constrained first); then moves instances from the
    most to the least loaded fitting node while the two differ by more than one. So the
    counts end within one of each other where ``run_on`` allows, and only the excess
    moves. None: no live node fits. Pure and deterministic (ties by name).
    """
    fits = {name: sorted(n for n, role in nodes.items() if role_fits(run_on, role))
            for name, run_on in desired.items()}
    load = dict.fromkeys(nodes, 0)
    result = {}
    for name in sorted(desired):
        node = current.get(name)
        if node in load and node in fits[name]:
            result[name] = node
            load[node] += 1
    for name in sorted((n for n in desired if n not in result),
                       key=lambda n: (len(fits[n]), n)):
        result[name] = min(fits[name], key=lambda n: (load[n], n)) if fits[name] else None
        if result[name] is not None:
            load[result[name]] += 1
    _even_out(result, fits, load)
    return result


def _even_out(result, fits, load):
    """Move instances from the most loaded nodes while some fitting node has 2 fewer."""
    on = {}
    for name in sorted(result):
        if result[name] is not None:
            on.setdefault(result[name], []).append(name)
    moved = True
    while moved:
        moved = False
        for source in sorted(load, key=lambda n: (-load[n], n)):
            for name in list(on.get(source, ())):
                target = min(fits[name], key=lambda n: (load[n], n))
                if load[target] < load[source] - 1:
                    on[source].remove(name)
                    on.setdefault(target, []).append(name)
                    result[name] = target
                    load[source] -= 1
                    load[target] += 1
                    moved = True
                    break
            if moved:
                break


def plan_writes(target, assignments):
    """The leader's rows for :data:`WRITE_SQL`: ``[(instance, node, old_epoch)]`` for every
    instance whose ``target`` node differs from its assignment (``{instance: (node,
    epoch)}``); an instance no longer wanted gets node None (its row stays, unassigned,
    until the old owner's grant has run out)."""
    rows = []
    for name in sorted(set(target) | set(assignments)):
        node = target.get(name)
        old = assignments.get(name)
        if old is None:
            if node is not None:
                rows.append((name, node, None))
        elif old[0] != node:
            rows.append((name, node, old[1]))
    return rows


@dataclasses.dataclass(frozen=True)
class Grant:
    """This node may run ``instance`` with ``epoch`` until ``until`` (time.monotonic())."""

    instance: str
    epoch: int
    until: float


@dataclasses.dataclass(frozen=True)
class Release:
    """Why this node gave up an instance of the registry (:meth:`Cluster.release`): the
    Supervisor logs it once, ``action=cluster.release``, when it stops or forgets the
    instance (instead of "removed from the registry", which it is not).

    ``why``: "moved" (the leader assigned it to ``to_node`` with ``epoch``), "unassigned"
    (the leader assigned it to no node: none fits its ``run_on``), "lease_ended" (this
    node's grant ran out: its lease was not renewed in time), "lease_lost" (this node's row
    was gone or taken: judged dead, or its name taken over), "stopping" (this node leaves
    the cluster). ``node``: this node;
    ``held_epoch``: the epoch it ran with here (None: not known).
    """

    why: str
    node: str
    held_epoch: typing.Optional[int] = None
    to_node: typing.Optional[str] = None
    epoch: typing.Optional[int] = None

    def message(self):
        """The log line after the instance's name, e.g. ``moved from node n0 to node n1
        (epoch 42; it ran on n0 with epoch 17)``."""
        held = "; it ran on %s with epoch %s" % (self.node, self.held_epoch) \
            if self.held_epoch is not None else ""
        if self.why == "moved":
            return "moved from node %s to node %s (epoch %s%s)" % (
                self.node, self.to_node, self.epoch, held)
        what = {"unassigned": "the leader assigned it to no node (none fits its run_on)",
                "lease_ended": "the node's lease was not renewed in time",
                "lease_lost": "the node lost its lease (judged dead, or its name taken "
                              "over)",
                "stopping": "the node is stopping"}.get(self.why, "not assigned to it any more")
        return "stopped on node %s: %s%s" % (self.node, what, " (%s)" % held[2:] if held
                                             else "")

    def __str__(self):
        return self.message()

    def fields(self):
        """The structured keys of its log line (JSON format)."""
        return {"why": self.why, "node": self.node, "held_epoch": self.held_epoch,
                "to_node": self.to_node, "epoch": self.epoch}


@dataclasses.dataclass(frozen=True)
class NodeView:
    """One row of ``nodes`` as the last tick read it; ages in seconds on the database's
    clock."""

    name: str
    role: typing.Optional[str]
    age: float
    lease_left: float
    running: int


class Cluster:
    """This node's membership: heartbeat, leadership, grants; see the module docstring.

    ``dsn``: the database holding the cluster's tables (``schema``). ``desired()``:
    ``{instance: run_on}`` of the registry (read by the leader), or None while the registry
    has not been read yet (a node started with its database down): the leader then plans
    nothing, where an empty registry would unassign every instance. ``role()``: the role of the
    node's database ("primary", "standby", None). ``instance(name)``: the running Instance
    or None (for the hard kill at a grant's deadline). ``changed()``: called (never blocks)
    when :meth:`allowed` changed: the Supervisor verifies.
    """

    #: Seconds a lease lasts on the database's clock (``[cluster] lease_ttl``).
    lease_ttl = BY_NAME["cluster.lease_ttl"].default
    #: Seconds a node may stay silent before its instances move (``[cluster] node_grace``).
    node_grace = BY_NAME["cluster.node_grace"].default
    #: Seconds after a revival before the leader judges any node dead.
    wait_after_db_revived = BY_NAME["supervisor.wait_after_db_revived"].default
    #: Instances admitted per wave after a takeover or revival.
    start_batch = 50
    #: Seconds between two waves (each jittered by +/-50 %).
    start_interval = 0.25

    def __init__(self, dsn, *, desired, role, instance, changed, node_name=None,
                 schema=migrations.DEFAULT_SCHEMA, lease_ttl=None, node_grace=None,
                 wait_after_db_revived=None, state_dir=None):
        for key, value in (("lease_ttl", lease_ttl), ("node_grace", node_grace),
                           ("wait_after_db_revived", wait_after_db_revived)):
            if value is not None:
                setattr(self, key, float(value))
        check_timing(self.lease_ttl, self.node_grace)
        self.name = node_name or default_node_name(state_dir)
        self.schema_name = migrations.check_schema(schema, "registry.schema")
        self.schema = migrations.quote_schema(schema)
        self._desired, self._role, self._instance, self._changed = (
            desired, role, instance, changed)
        self.connector = PostgresConnector(dsn, application_name="pgvisor-cluster",
                                           connect_timeout=max(1, int(self.tick * 2)))
        self.incarnation = uuid.uuid4().hex[:12]
        #: ``{instance: Grant}`` held now; ``_admitted``: the part handed to the Supervisor.
        self.grants = {}
        self._admitted = set()
        self._released = set()
        self._pending = set()  # granted, waiting for their wave
        #: Revoked, maybe still stopping: ``{name: end of its last grant}``; reported
        #: released once not alive.
        self._lost = {}
        self._killed = {}  # {name: the Instance killed} (killed once, not at every look)
        self._releases = {}  # {name: Release}: why it was revoked (until granted again)
        self.registered = False
        self.term = None  # the leader term this node holds (None: not the leader)
        self.leader = None  # {"term", "holder", "expires_in"} as last read
        self.node_views = ()
        self.assignments = {}  # {instance: (node, epoch)}: all of them, for statuses
        self._fingerprint = None
        self._last_plan = None
        self._revived_at = None  # monotonic time of the first good tick after a failure
        self._failing = False
        self.last_error = None
        self.counters = dict.fromkeys(("queries", "ticks", "tick_failures", "rebalances",
                                       "moves", "lost_leases", "fenced_kills", "terms"), 0)
        self._wake = gevent.event.Event()
        self._fence_wake = gevent.event.Event()
        self._waves = gevent.pool.Group()
        self._greenlets = []

    @property
    def tick(self):
        """Seconds between two ticks: a quarter of the lease."""
        return self.lease_ttl / 4.0

    @property
    def margin(self):
        """Seconds of safety on each side of a lease (clock rates, commit latency): a fifth
        of the lease."""
        return self.lease_ttl / 5.0

    # -- lifecycle ---------------------------------------------------------------------
    def start(self):
        """Start the tick and the fence greenlets; returns at once."""
        if not self._greenlets:
            self._greenlets = [gevent.spawn(self._run), gevent.spawn(self._fence_forever)]
        return self

    def stop(self, timeout=5.0):
        """Stop ticking and leave the cluster (the Supervisor stopped every instance
        first: the others may take them at once). Blocks up to about ``timeout``."""
        # killall(timeout=) raises Timeout when one outlives it: kill, then wait up to it
        gevent.killall(self._greenlets, block=False)
        gevent.joinall(self._greenlets, timeout=timeout)
        self._waves.kill(block=True, timeout=timeout)
        self._greenlets = []
        self.connector.disconnect()  # a tick killed mid-query left it mid-protocol
        if self.registered:
            try:
                with gevent.Timeout(timeout, DatabaseError("leave timed out")):
                    self.connector.execute(LEAVE_SQL.format(schema=self.schema),
                                           {"name": self.name,
                                            "incarnation": self.incarnation})
                log.info("node %s left the cluster", self.name,
                         extra={"action": "cluster.leave", "instance": None})
            except DatabaseError as error:
                log.warning("node %s could not leave the cluster (its instances move after "
                            "node_grace): %s", self.name, error,
                            extra={"action": "cluster.leave_failed", "instance": None})
        self.registered = False
        self._drop_all("stopping", "stopping", notify=False)
        self.connector.disconnect()

    # -- reading (any greenlet) --------------------------------------------------------
    def allowed(self):
        """The instances this node may run now (granted and admitted)."""
        return frozenset(self._admitted)

    def epoch(self, name):
        """The epoch this node holds for instance ``name``: the fencing token a handler
        writes with. Taken away (moved, lease ended), the instance still runs here until
        the Supervisor has stopped it, at the latest until its last grant ends (the fence
        kills it then): meanwhile its handlers keep the epoch they ran with (a new owner
        starts after that end, with a higher epoch). None: it does not run here."""
        grant = self.grants.get(name)
        if grant is not None:
            return grant.epoch
        end = self._lost.get(name)
        if end is None or time.monotonic() >= end or self._dead(name):
            return None
        release = self._releases.get(name)
        return release.held_epoch if release is not None else None

    def release(self, name):
        """Why this node does not run instance ``name`` any more (a :class:`Release`), for
        the Supervisor's log line when it stops or forgets it: as recorded when its grant
        was revoked, else where the assignments last read place it."""
        found = self._releases.get(name)
        return found if found is not None else self._moved(name, None)

    def _moved(self, name, held):
        """The Release of ``name`` taken away by the leader (it held epoch ``held``)."""
        node, epoch = self.assignments.get(name, (None, None))
        if node is None:
            return Release("unassigned", self.name, held)
        return Release("moved", self.name, held, node, epoch)

    def placement(self, name):
        """``(node, epoch)`` of instance ``name`` as last read (``(None, None)``: not
        assigned)."""
        grant = self.grants.get(name)
        if grant is not None:
            return self.name, grant.epoch
        return self.assignments.get(name, (None, None))

    @property
    def is_leader(self):
        return self.term is not None

    def nodes(self):
        """The nodes as last read: a list of dicts (name, leader, role, heartbeat_age,
        lease_left, instances, this) for ``pgvisor nodes`` and ``GET /nodes``."""
        holder = (self.leader or {}).get("holder")
        leader_live = (self.leader or {}).get("expires_in", -1) > 0
        counts = {}
        for node, _ in self.assignments.values():
            counts[node] = counts.get(node, 0) + 1
        return [{"name": v.name, "leader": v.name == holder and leader_live,
                 "role": v.role, "heartbeat_age": round(v.age, 3),
                 "lease_left": round(v.lease_left, 3), "instances": counts.get(v.name, 0),
                 "running": v.running, "this": v.name == self.name}
                for v in self.node_views]

    def status(self):
        """This node's view of the cluster: the JSON of ``GET /nodes``."""
        leader = self.leader or {}
        return {"node": self.name, "registered": self.registered, "leader": leader.get(
            "holder") if leader.get("expires_in", -1) > 0 else None,
            "term": leader.get("term"), "is_leader": self.is_leader,
            "granted": len(self.grants), "running": len(self._admitted),
            "assignments": len(self.assignments), "lease_ttl": self.lease_ttl,
            "node_grace": self.node_grace, "last_error": self.last_error,
            "counters": dict(self.counters), "nodes": self.nodes()}

    # -- the tick (the Cluster's greenlet) ---------------------------------------------
    def _run(self):
        while True:
            delay = self.tick
            try:
                delay = self._step()
            except DatabaseError as error:
                self._failed(error)
            except Exception:  # the loop's edge: log, keep the node's membership going
                log.exception("cluster tick failed unexpectedly",
                              extra={"action": "cluster.error", "instance": None})
                self.connector.disconnect()
            self._wake.wait(max(0.01, delay))
            self._wake.clear()

    def _step(self):
        """One tick: register when needed, renew and read, lead; returns the seconds until
        the next tick."""
        with gevent.Timeout(self.lease_ttl, DatabaseError(
                "no answer within %.1f s" % self.lease_ttl)):
            if not self.registered:
                if not self._register():
                    return self.tick
            sent = time.monotonic()
            row = self._query(TICK_SQL, self._tick_params())[0]
            self._reached()
            delay = self._ticked(sent, row)
            if self.term is not None:
                self._lead()
        self.last_error = None
        return delay

    def _reached(self):
        """A round trip succeeded: after failures, the revival (the leader's wait before
        it judges anyone dead starts now, before this tick's own planning)."""
        if self._failing:
            self._failing = False
            self._revived_at = time.monotonic()
            log.info("node %s reaches the database again", self.name,
                     extra={"action": "cluster.revived", "instance": None})

    def _failed(self, error):
        self.counters["tick_failures"] += 1
        self.last_error = one_line(error)
        self.connector.disconnect()
        if not self._failing:
            self._failing = True
            log.warning("node %s cannot reach the database: its grants run out in %.1f s "
                        "at the latest: %s", self.name, self.lease_ttl - self.margin, error,
                        extra={"action": "cluster.unreachable", "instance": None})

    def _query(self, sql, params=None):
        self.counters["queries"] += 1  # every coordination round trip (bench/cluster.py)
        return self.connector.execute(sql.format(schema=self.schema), params)

    def _register(self):
        self._ensure_schema()
        info = {"pid": os.getpid(), "host": socket.gethostname()}
        rows = self._query(REGISTER_SQL, {
            "name": self.name, "incarnation": self.incarnation, "role": self._role(),
            "ttl": self.lease_ttl, "margin": self.margin, "info": json.dumps(info)})
        if rows[0][0] is None:
            log.warning("node name %s is held by a live node: waiting for its lease to "
                        "expire (two nodes must not share a name)", self.name,
                        extra={"action": "cluster.name_taken", "instance": None})
            return False
        self.registered = True
        log.info("node %s joined the cluster (incarnation %s%s)", self.name, self.incarnation,
                 ", %d instance(s) of its name taken over with new epochs" % rows[0][1]
                 if rows[0][1] else "", extra={"action": "cluster.join", "instance": None})
        return True

    def _ensure_schema(self):
        """Bring the schema's tables to the code's version (instances/migrations.py: one
        read when they are)."""
        migrations.migrate(self.connector, self.schema_name)

    def _tick_params(self):
        leader = self.leader
        try_lead = self.term is not None or leader is None or leader["expires_in"] <= 0
        released = sorted(self._released)
        return {"name": self.name, "incarnation": self.incarnation, "ttl": self.lease_ttl,
                "role": self._role(), "running": len(self._admitted), "lead": try_lead,
                "term": self.term, "released": released}

    def _ticked(self, sent, row):
        """Take one tick's answer; returns the seconds until the next tick."""
        renewed, term, leader, nodes, fingerprint, mine = row
        self.counters["ticks"] += 1
        self._released.clear()
        self.leader = leader
        self.node_views = tuple(NodeView(n["name"], n["role"], float(n["age"]),
                                         float(n["lease_left"]), n["running"])
                                for n in nodes)
        if not renewed:
            self._lease_lost()
            return 0.0
        self._lead_result(term)
        if fingerprint != self._fingerprint:
            self.assignments = {i: (n, e) for i, n, e in self._query(ASSIGNMENTS_SQL)}
            self._fingerprint = fingerprint
        return self._grant(sent, mine)

    def _lead_result(self, term):
        if term is not None and term != self.term:
            self.counters["terms"] += 1
            self._last_plan = None
            log.info("node %s is the leader (term %d)", self.name, term,
                     extra={"action": "cluster.leader", "instance": None, "term": term})
        elif term is None and self.term is not None:
            log.warning("node %s is no longer the leader (term %d)", self.name, self.term,
                        extra={"action": "cluster.deposed", "instance": None})
        self.term = term
        if term is not None and self.leader is not None:
            self.leader = dict(self.leader, term=term, holder=self.name,
                               expires_in=self.lease_ttl)

    def _grant(self, sent, mine):
        """Grants from this tick's assignments; returns the seconds until the next tick
        (sooner when an assignment's ``not_before`` passes before then)."""
        until = sent + self.lease_ttl - self.margin
        grants, delay = {}, self.tick
        for instance, epoch, wait in mine:
            if wait is not None and float(wait) > 0:
                delay = min(delay, float(wait) + 0.01)
                continue
            grants[instance] = Grant(instance, int(epoch), until)
        old = self.grants
        revoked = [n for n, g in old.items() if n not in grants or grants[n].epoch != g.epoch]
        new = [n for n in grants if n not in old or n in revoked]
        self.grants = grants
        self._revoke({n: old[n].until for n in revoked},
                     "not assigned to %s any more" % self.name,
                     {n: self._moved(n, old[n].epoch) for n in revoked})
        for name in new:
            self._releases.pop(name, None)
        for name in list(self._lost):
            if self._dead(name):
                del self._lost[name]
                self._killed.pop(name, None)
                self._released.add(name)
        if new:
            self._admit(new)
        self._fence_wake.set()
        return delay

    def _dead(self, name):
        return quiet(self._instance(name))

    def _revoke(self, until, why, releases, notify=True):
        """Take the instances of ``until`` (``{name: the end of its last grant}``) away
        from the Supervisor; the fence kills what still runs at that end. ``releases``:
        ``{name: Release}``, what the Supervisor logs when it stops each one."""
        names = [n for n in until if n in self._admitted or n in self._pending]
        self._releases.update(releases)
        for name, end in until.items():
            self._admitted.discard(name)
            self._pending.discard(name)
            self._lost[name] = min(end, self._lost.get(name, end))
        if names:
            log.info("node %s stops %d instance(s): %s", self.name, len(names), why,
                     extra={"action": "cluster.revoke", "instance": None,
                            "count": len(names)})
            if notify:
                self._changed()

    def _lease_lost(self):
        """The node's row is gone or another incarnation's: everything it held is void."""
        self.counters["lost_leases"] += 1
        log.warning("node %s lost its lease (judged dead by the leader or replaced): "
                    "stopping everything and joining again", self.name,
                    extra={"action": "cluster.lease_lost", "instance": None})
        self.registered = False
        self.term = None
        self.incarnation = uuid.uuid4().hex[:12]
        self._drop_all("lease lost", "lease_lost")

    def _drop_all(self, why, kind, notify=True):
        """Void every grant now: stop through the Supervisor, kill what still runs;
        ``kind``: the Release's ``why``."""
        now = time.monotonic()
        names = set(self.grants) | self._admitted | self._pending
        releases = {n: Release(kind, self.name, self.epoch(n)) for n in names}
        self.grants = {}
        self._revoke(dict.fromkeys(names, now), why, releases, notify)
        self._kill([n for n, end in self._lost.items() if end <= now])

    # -- admission in waves (greenlets of the Cluster's group) -------------------------
    def _admit(self, names):
        """Hand ``names`` to the Supervisor in waves of start_batch, start_interval apart
        (jittered), so a takeover or a revival is not a herd."""
        fresh = [n for n in names if n not in self._pending]
        self._pending.update(fresh)
        random.shuffle(fresh)
        self._waves.spawn(self._admit_waves, fresh)

    def _admit_waves(self, names):
        gevent.sleep(random.uniform(0, self.start_interval))
        for start in range(0, len(names), self.start_batch):
            wave = [n for n in names[start:start + self.start_batch]
                    if n in self._pending and n in self.grants]
            for name in wave:
                self._pending.discard(name)
                self._admitted.add(name)
            if wave:
                self._changed()
            if start + self.start_batch < len(names):
                gevent.sleep(self.start_interval * random.uniform(0.5, 1.5))

    # -- the fence (the Cluster's fence greenlet) --------------------------------------
    def _fence_forever(self):
        while True:
            now = time.monotonic()
            soonest = self._fence(now)
            self._fence_wake.wait(max(0.005, min(soonest - now, self.tick)))
            self._fence_wake.clear()

    def _fence(self, now):
        """Stop what a grant no longer covers: from ``until - margin`` on through the
        Supervisor, at ``until`` by a kill. Returns when to look again."""
        expiring = {g.instance: g.until for g in self.grants.values()
                    if g.until - self.margin <= now}
        if expiring:
            releases = {n: Release("lease_ended", self.name, self.grants[n].epoch)
                        for n in expiring}
            self.grants = {n: g for n, g in self.grants.items() if n not in expiring}
            self._revoke(expiring, "its lease was not renewed in time", releases)
        self._kill([n for n, end in self._lost.items() if end <= now])
        soonest = now + self.tick
        for grant in self.grants.values():
            soonest = min(soonest, grant.until - self.margin)
        for end in self._lost.values():
            if end > now:
                soonest = min(soonest, end)
        return soonest

    def _kill(self, names):
        for name in names:
            instance = self._instance(name)
            if not quiet(instance) and instance is not self._killed.get(name):
                self._killed[name] = instance
                self.counters["fenced_kills"] += 1
                log.warning("instance %s killed: its grant ran out before it stopped", name,
                            extra={"action": "cluster.fenced_kill", "instance": name})
                instance.kill()

    # -- leading (the Cluster's greenlet, while it holds a term) -----------------------
    def _lead(self):
        """Plan and write the assignments when something changed."""
        if self._revived_at is not None and (
                time.monotonic() - self._revived_at < self.wait_after_db_revived):
            return  # after an outage nobody is judged dead yet, and nothing moves
        desired = self._desired()
        if desired is None:
            return  # the desired state is not known yet (a registry not read): plan nothing
        live, dead = {}, []
        for view in self.node_views:
            if view.age > self.node_grace:
                dead.append(view.name)
            else:
                live[view.name] = view.role
        known = {v.name for v in self.node_views}
        key = (tuple(sorted(desired.items())), tuple(sorted(live.items())), tuple(dead),
               self._fingerprint)
        orphans = any(node is not None and node not in known
                      for node, _ in self.assignments.values())
        if key == self._last_plan and not orphans:
            return
        target = balance(desired, live, {i: n for i, (n, _) in self.assignments.items()})
        rows = plan_writes(target, self.assignments)
        if not rows and not dead:
            self._last_plan = key
            return
        self._write(rows, dead, desired)
        self._last_plan = None  # look again at the next tick (the fingerprint moved)

    def _write(self, rows, dead, desired):
        params = {"ttl": self.lease_ttl, "term": self.term, "name": self.name,
                  "grace": self.node_grace, "margin": self.margin, "dead": dead,
                  "instances": [r[0] for r in rows], "nodes": [r[1] for r in rows],
                  "epochs": [r[2] for r in rows], "desired": sorted(desired)}
        fenced, moved, added, gone, died = self._query(WRITE_SQL, params)[0]
        if not fenced:
            log.warning("node %s is no longer the leader: its assignments were not "
                        "written", self.name,
                        extra={"action": "cluster.deposed", "instance": None})
            self.term = None
            return
        self.counters["rebalances"] += 1
        self.counters["moves"] += moved
        for node in died:
            log.warning("node %s silent for more than %.1f s: judged dead, its instances "
                        "move", node, self.node_grace,
                        extra={"action": "cluster.node_dead", "instance": None, "node": node})
        log.info("assignments written (term %d): %d moved, %d new, %d removed", self.term,
                 moved, added, gone, extra={"action": "cluster.assign", "instance": None,
                                            "moved": moved, "added": added})
        self._wake.set()  # read the result back at once


def quiet(instance):
    """True when nothing of ``instance`` (an Instance or None) runs any more: its source
    ended and no handler greenlet is left (a stopping instance is not ``alive`` while its
    handlers still finish: that is not quiet)."""
    if instance is None:
        return True
    listener, pool = instance.listener, instance.pool
    if listener is not None and listener.is_alive():
        return False
    if pool is None:
        return True
    size = getattr(pool, "size", None)  # worker greenlets, finishing ones included
    return not (pool.alive if size is None else size)


def check_timing(lease_ttl, node_grace):
    """Raise InvalidConfigurationException unless 0 < lease_ttl < node_grace."""
    if not lease_ttl > 0:
        raise InvalidConfigurationException(
            "[cluster] lease_ttl = %r: must be greater than 0" % (lease_ttl,),
            "cluster.lease_ttl", lease_ttl)
    if not node_grace > lease_ttl:
        raise InvalidConfigurationException(
            "[cluster] node_grace = %r: must be greater than lease_ttl (%r): a node is "
            "judged dead only after its lease ran out" % (node_grace, lease_ttl),
            "cluster.node_grace", node_grace)
