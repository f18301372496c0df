"""Prometheus metrics of a Supervisor, read at scrape time.

:class:`SupervisorCollector` is a ``prometheus_client`` custom collector: every scrape calls
the supervisor's ``status()``, ``database_status()`` and ``counters`` once and turns the
snapshot into metric families, so the notification path pays nothing for metrics. Register
it on a private :class:`prometheus_client.CollectorRegistry` (:func:`make_registry` does),
never on the global default one: two supervisors in one process (tests) do not collide.

The families, their types and labels are listed in :data:`FAMILIES` and documented in
docs/http.rst ("Metrics"); the ``pgvisor_cluster_*`` ones only with clustering on. Concurrency: ``collect`` runs in the scraping greenlet, does not
block (the supervisor's status methods read a snapshot) and never raises for a malformed
latency histogram (it is left out and logged at debug level).
"""
import logging
import math
from collections.abc import Mapping

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from supervisor.plan import STATES  # each is exported, with 0 when no instance has it

log = logging.getLogger(__name__)

#: Database roles reported by ``pgvisor_database_role`` (one is 1, the others 0).
ROLES = ("primary", "standby")

#: Per-instance counters: (metric name without ``_total``, status key, help text).
INSTANCE_COUNTERS = (
    ("pgvisor_restarts", "restarts", "Restarts of the instance by the supervisor."),
    ("pgvisor_notifications_received", "received",
     "NOTIFY notifications read by the instance's listener (catch_up not counted)."),
    ("pgvisor_notifications_processed", "processed",
     "Notifications (catch_up included) the handler finished without an error."),
    ("pgvisor_notifications_failed", "failed",
     "Notifications whose handler raised (sent to the error path)."),
    ("pgvisor_notifications_timed_out", "timed_out",
     "Notifications whose handler ran over handler_timeout and was killed."),
    ("pgvisor_reconnects", "reconnects", "Reconnections of the instance's listener."),
    ("pgvisor_catch_ups", "catch_ups",
     "catch_up notifications emitted after a (re)LISTEN."),
    ("pgvisor_overflow_dropped", "dropped",
     "Live notifications dropped because the instance's memory queue was full (each "
     "overflow episode ends with one catch_up)."),
    ("pgvisor_overflows", "overflows", "Overflow episodes of the instance's queue."),
)

#: Per-notifier families (label ``notifier``): (metric name, type, status key, help text).
NOTIFIER_FAMILIES = (
    ("pgvisor_notifier_up", "gauge", "connected",
     "1 while the shared LISTEN connection is connected and listening, else 0."),
    ("pgvisor_notifier_subscribers", "gauge", "subscribers",
     "Instances subscribed to the shared LISTEN connection."),
    ("pgvisor_notification_queue_usage", "gauge", "queue_usage",
     "pg_notification_queue_usage() of the server (0..1), read by the self-NOTIFY probe."),
    ("pgvisor_notifier_reconnects", "counter", "reconnects",
     "Reconnections of the shared LISTEN connection."),
    ("pgvisor_notifier_probe_failures", "counter", "probe_failures",
     "Self-NOTIFY probes that did not come back in time (each one a reconnect)."),
)

#: Supervisor-wide counters: (metric name without ``_total``, counters key, help text).
SUPERVISOR_COUNTERS = (
    ("pgvisor_restarts_rate_limited", "restarts_rate_limited",
     "Automatic restarts refused by restart_max_rate (the instance was parked)."),
    ("pgvisor_hub_blocks", "hub_blocks",
     "Times the gevent hub was blocked longer than the monitor's threshold."),
    ("pgvisor_instance_deaths", "deaths", "Instance deaths seen by the supervisor."),
    ("pgvisor_database_outages", "outages", "Database outages seen by the supervisor."),
    ("pgvisor_database_role_changes", "role_changes", "Role changes of the database."),
    ("pgvisor_verifies", "verifies", "Verify passes of the supervisor."),
)

#: Cluster counters (multi-node, ``supervisor.cluster.counters``): (metric name without
#: ``_total``, counters key, help text).
CLUSTER_COUNTERS = (
    ("pgvisor_cluster_rebalances", "rebalances",
     "Assignment writes by this node as the leader (each moved or placed instances)."),
    ("pgvisor_cluster_moves", "moves", "Instances this node moved as the leader."),
    ("pgvisor_cluster_lost_leases", "lost_leases",
     "Times this node found its lease gone (judged dead or replaced) and joined again."),
    ("pgvisor_cluster_fenced_kills", "fenced_kills",
     "Instances killed because their grant ran out before they stopped."),
    ("pgvisor_cluster_tick_failures", "tick_failures",
     "Coordination round trips (ticks) that failed."),
)

#: Every family this collector can emit: name -> (type, labels). Used by docs and tests.
FAMILIES = {
    "pgvisor_instances": ("gauge", ("state",)),
    "pgvisor_instance_up": ("gauge", ("instance",)),
    "pgvisor_queue_depth": ("gauge", ("instance",)),
    "pgvisor_database_up": ("gauge", ()),
    "pgvisor_database_role": ("gauge", ("role",)),
    "pgvisor_paused": ("gauge", ()),
    "pgvisor_handler_seconds": ("histogram", ("instance",)),
    **{name: ("counter", ("instance",)) for name, _, _ in INSTANCE_COUNTERS},
    **{name: ("counter", ()) for name, _, _ in SUPERVISOR_COUNTERS},
    **{name: (kind, ("notifier",)) for name, kind, _, _ in NOTIFIER_FAMILIES},
    "pgvisor_cluster_nodes": ("gauge", ()),
    "pgvisor_cluster_leader": ("gauge", ()),
    "pgvisor_cluster_term": ("gauge", ()),
    "pgvisor_cluster_assignments": ("gauge", ("node",)),
    **{name: ("counter", ()) for name, _, _ in CLUSTER_COUNTERS},
}


class SupervisorCollector:
    """A custom collector over ``supervisor`` (anything with ``status()``,
    ``database_status()`` and ``counters``: the Supervisor's API, docs/supervision.rst)."""

    def __init__(self, supervisor):
        self.supervisor = supervisor

    def describe(self):
        # Without describe(), registering calls collect() once to learn the names; the
        # supervisor may not be started yet, so describe nothing (an "unchecked" collector).
        return []

    def collect(self):
        """Yield the metric families of one snapshot; called by the registry per scrape."""
        status = self.supervisor.status()
        database = self.supervisor.database_status()
        counters = dict(self.supervisor.counters)
        yield from self._instance_families(status)
        yield from self._database_families(database)
        yield from self._notifier_families(database.get("notifiers") or ())
        for name, key, text in SUPERVISOR_COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))
        histogram = self._histogram(status)
        if histogram is not None:
            yield histogram
        cluster = getattr(self.supervisor, "cluster", None)
        if cluster is not None:
            yield from self._cluster_families(cluster.status())

    def _cluster_families(self, cluster):
        """Multi-node: the nodes, the leadership, the assignments per node, the counters."""
        nodes = cluster.get("nodes") or ()
        yield GaugeMetricFamily("pgvisor_cluster_nodes", "Nodes in the cluster's table.",
                                value=len(nodes))
        yield GaugeMetricFamily("pgvisor_cluster_leader",
                                "1 while this node holds the leader's term, else 0.",
                                value=1 if cluster.get("is_leader") else 0)
        yield GaugeMetricFamily("pgvisor_cluster_term", "The leader's term as last read.",
                                value=cluster.get("term") or 0)
        per_node = GaugeMetricFamily("pgvisor_cluster_assignments",
                                     "Instances assigned to each node.", labels=["node"])
        for node in nodes:
            per_node.add_metric([str(node.get("name"))], node.get("instances") or 0)
        yield per_node
        counters = cluster.get("counters") or {}
        for name, key, text in CLUSTER_COUNTERS:
            yield CounterMetricFamily(name, text, value=counters.get(key, 0))

    def _instance_families(self, status):
        by_state = GaugeMetricFamily("pgvisor_instances", "Instances by state.",
                                     labels=["state"])
        counts = dict.fromkeys(STATES, 0)
        for entry in status.values():
            counts[entry.get("state")] = counts.get(entry.get("state"), 0) + 1
        for state, count in counts.items():
            by_state.add_metric([str(state)], count)
        yield by_state
        up = GaugeMetricFamily("pgvisor_instance_up",
                               "1 when the instance is running (listening), else 0.",
                               labels=["instance"])
        depth = GaugeMetricFamily("pgvisor_queue_depth",
                                  "Notifications waiting in the instance's queue.",
                                  labels=["instance"])
        counters = [CounterMetricFamily(name, text, labels=["instance"])
                    for name, _, text in INSTANCE_COUNTERS]
        for name in sorted(status):
            entry = status[name]
            up.add_metric([name], 1 if entry.get("state") == "running" else 0)
            depth.add_metric([name], entry.get("backlog") or 0)
            for family, (_, key, _) in zip(counters, INSTANCE_COUNTERS, strict=True):
                family.add_metric([name], entry.get(key) or 0)
        yield up
        yield depth
        yield from counters

    def _database_families(self, database):
        yield GaugeMetricFamily("pgvisor_database_up", "1 when the database answers probes.",
                                value=1 if database.get("state") == "up" else 0)
        role = GaugeMetricFamily("pgvisor_database_role",
                                 "1 for the role the database plays now (0 for the others).",
                                 labels=["role"])
        for name in ROLES:
            role.add_metric([name], 1 if database.get("role") == name else 0)
        yield role
        yield GaugeMetricFamily("pgvisor_paused",
                                "1 while the supervisor is paused (operator or outage).",
                                value=1 if database.get("paused") else 0)

    def _notifier_families(self, notifiers):
        for name, kind, key, text in NOTIFIER_FAMILIES:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            family = cls(name, text, labels=["notifier"])
            for notifier in notifiers:
                value = notifier.get(key)
                if value is not None:  # queue_usage: none before the first probe
                    family.add_metric([str(notifier.get("name"))], float(value))
            yield family

    def _histogram(self, status):
        family = HistogramMetricFamily("pgvisor_handler_seconds",
                                       "Seconds the handler took per notification.",
                                       labels=["instance"])
        found = False
        for name in sorted(status):
            raw = status[name].get("latency_buckets")
            if raw is None:
                continue
            try:
                buckets, total = latency_buckets(raw, status[name].get("latency_sum"))
            except (TypeError, ValueError) as exc:
                log.debug("latency_buckets of %s left out: %s", name, exc,
                          extra={"action": "metrics.bad_histogram", "instance": name})
                continue
            family.add_metric([name], buckets, total)
            found = True
        return family if found else None


def latency_buckets(raw, latency_sum=None):
    """``(buckets, sum)`` for HistogramMetricFamily from a status' ``latency_buckets``.

    Accepted: a mapping or a list of ``(upper_bound, cumulative_count)`` pairs, bounds in
    seconds (numbers, or "+Inf"); a missing +Inf bucket is added with the largest count.
    Raise ValueError if the counts are not cumulative (non-decreasing integers).
    """
    pairs = list(raw.items()) if isinstance(raw, Mapping) else [tuple(p) for p in raw]
    parsed = sorted((float(bound), count) for bound, count in pairs)
    counts = [count for _, count in parsed]
    if not parsed or any(not isinstance(c, int) or isinstance(c, bool) or c < 0
                         for c in counts):
        raise ValueError("bucket counts must be integers >= 0")
    if counts != sorted(counts):
        raise ValueError("bucket counts must be cumulative (non-decreasing)")
    if not math.isinf(parsed[-1][0]):
        parsed.append((math.inf, counts[-1]))
    buckets = [("+Inf" if math.isinf(b) else repr(b), c) for b, c in parsed]
    return buckets, float(latency_sum or 0.0)


def make_registry(supervisor):
    """A private CollectorRegistry holding a SupervisorCollector over ``supervisor``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SupervisorCollector(supervisor))
    return registry
