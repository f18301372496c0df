"""SupervisorCollector: the mapping of a supervisor snapshot to Prometheus families."""
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from supervisor.metrics import FAMILIES, latency_buckets, make_registry

pytestmark = pytest.mark.timeout(10)


def _entry(state="running", **fields):
    entry = {"state": state, "restarts": 0, "backlog": 0, "received": 0, "processed": 0,
             "failed": 0, "timed_out": 0, "catch_ups": 0, "reconnects": 0}
    entry.update(fields)
    return entry


class FakeSupervisor:
    """A working stand-in with the three read methods the collector uses."""

    def __init__(self):
        self.instances = {}
        self.database = {"state": "up", "paused": False, "paused_by": None,
                         "role": "primary", "since": 0.0, "system_identifier": "1",
                         "timeline": 1,
                         "notifiers": [{"name": "pgvisor-notifier", "connected": True,
                                        "subscribers": 2, "queue_usage": 0.25,
                                        "reconnects": 1, "probe_failures": 0}]}
        self.counters = {"restarts": 0, "restarts_rate_limited": 0, "deaths": 0,
                         "outages": 0, "role_changes": 0, "verifies": 0, "hub_blocks": 0}

    def status(self):
        return {name: dict(entry) for name, entry in self.instances.items()}

    def database_status(self):
        return dict(self.database)


class FakeCluster:
    """A stand-in for supervisor.nodes.Cluster: its status() (GET /nodes)."""

    def status(self):
        return {"is_leader": True, "term": 3, "counters": {"rebalances": 2, "moves": 5},
                "nodes": [{"name": "a", "instances": 4}, {"name": "b", "instances": 3}]}


def scrape(supervisor):
    text = generate_latest(make_registry(supervisor)).decode("utf-8")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return text, samples


def test_instance_counters_are_exported_per_instance():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry(restarts=2, received=10, processed=7, failed=2,
                                    timed_out=1, catch_ups=3, reconnects=2, backlog=5)
    sup.instances["lake"] = _entry(state="waiting")
    _, samples = scrape(sup)
    river = (("instance", "river"),)
    assert samples[("pgvisor_restarts_total", river)] == 2
    assert samples[("pgvisor_notifications_received_total", river)] == 10
    assert samples[("pgvisor_notifications_processed_total", river)] == 7
    assert samples[("pgvisor_notifications_failed_total", river)] == 2
    assert samples[("pgvisor_notifications_timed_out_total", river)] == 1
    assert samples[("pgvisor_catch_ups_total", river)] == 3
    assert samples[("pgvisor_reconnects_total", river)] == 2
    assert samples[("pgvisor_queue_depth", river)] == 5
    assert samples[("pgvisor_instance_up", river)] == 1
    assert samples[("pgvisor_instance_up", (("instance", "lake"),))] == 0


def test_overflow_and_notifier_figures_are_exported():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry(dropped=45, overflows=1)
    sup.database["notifiers"].append({"name": "pgvisor-notifier-2", "connected": False,
                                      "subscribers": 1, "queue_usage": None,
                                      "reconnects": 3, "probe_failures": 2})
    _, samples = scrape(sup)
    river = (("instance", "river"),)
    assert samples[("pgvisor_overflow_dropped_total", river)] == 45
    assert samples[("pgvisor_overflows_total", river)] == 1
    first, second = (("notifier", "pgvisor-notifier"),), (("notifier", "pgvisor-notifier-2"),)
    assert samples[("pgvisor_notifier_up", first)] == 1
    assert samples[("pgvisor_notifier_up", second)] == 0
    assert samples[("pgvisor_notifier_subscribers", first)] == 2
    assert samples[("pgvisor_notification_queue_usage", first)] == 0.25
    assert ("pgvisor_notification_queue_usage", second) not in samples  # no probe yet
    assert samples[("pgvisor_notifier_reconnects_total", second)] == 3
    assert samples[("pgvisor_notifier_probe_failures_total", second)] == 2


def test_instances_by_state_counts_every_state_including_zero():
    sup = FakeSupervisor()
    sup.instances = {"a": _entry("running"), "b": _entry("running"),
                     "c": _entry("disabled_by_supervisor")}
    _, samples = scrape(sup)
    assert samples[("pgvisor_instances", (("state", "running"),))] == 2
    assert samples[("pgvisor_instances", (("state", "disabled_by_supervisor"),))] == 1
    assert samples[("pgvisor_instances", (("state", "stopped"),))] == 0
    assert samples[("pgvisor_instances", (("state", "starting"),))] == 0


def test_database_and_supervisor_gauges_follow_database_status():
    sup = FakeSupervisor()
    sup.database.update(state="down", paused=True, role=None)
    sup.counters.update(restarts_rate_limited=4, hub_blocks=3)
    _, samples = scrape(sup)
    assert samples[("pgvisor_database_up", ())] == 0
    assert samples[("pgvisor_paused", ())] == 1
    assert samples[("pgvisor_database_role", (("role", "primary"),))] == 0
    assert samples[("pgvisor_database_role", (("role", "standby"),))] == 0
    assert samples[("pgvisor_restarts_rate_limited_total", ())] == 4
    assert samples[("pgvisor_hub_blocks_total", ())] == 3
    sup.database.update(state="up", paused=False, role="standby")
    _, samples = scrape(sup)
    assert samples[("pgvisor_database_up", ())] == 1
    assert samples[("pgvisor_paused", ())] == 0
    assert samples[("pgvisor_database_role", (("role", "standby"),))] == 1


def test_exposition_text_declares_types():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry(restarts=1)
    text, _ = scrape(sup)
    assert "# TYPE pgvisor_restarts_total counter" in text
    assert 'pgvisor_restarts_total{instance="river"} 1.0' in text
    assert "# TYPE pgvisor_instance_up gauge" in text
    assert "pgvisor_database_up 1.0" in text


def test_every_documented_family_is_emitted_when_latency_is_present():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry(latency_buckets=[[0.1, 1], [1.0, 3]], latency_sum=1.5)
    sup.cluster = FakeCluster()
    text, samples = scrape(sup)
    names = {f.name for f in text_string_to_metric_families(text)}
    # the parser strips _total from counter family names
    assert names == {name for name in FAMILIES}
    assert samples[("pgvisor_cluster_assignments", (("node", "b"),))] == 3
    assert samples[("pgvisor_cluster_term", ())] == 3
    assert samples[("pgvisor_cluster_moves_total", ())] == 5
    del sup.cluster
    text, _ = scrape(sup)
    assert "pgvisor_cluster" not in text  # single node: no cluster families


def test_histogram_is_omitted_without_latency_buckets():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry()
    text, _ = scrape(sup)
    assert "pgvisor_handler_seconds" not in text


def test_histogram_reads_cumulative_buckets_and_adds_inf():
    sup = FakeSupervisor()
    sup.instances["river"] = _entry(latency_buckets={"0.01": 2, "0.1": 5, "1.0": 6},
                                    latency_sum=0.75)
    text, samples = scrape(sup)
    assert "# TYPE pgvisor_handler_seconds histogram" in text
    assert samples[("pgvisor_handler_seconds_bucket",
                    (("instance", "river"), ("le", "0.1")))] == 5
    assert samples[("pgvisor_handler_seconds_bucket",
                    (("instance", "river"), ("le", "+Inf")))] == 6
    assert samples[("pgvisor_handler_seconds_count", (("instance", "river"),))] == 6
    assert samples[("pgvisor_handler_seconds_sum", (("instance", "river"),))] == 0.75


def test_malformed_histogram_of_one_instance_leaves_out_only_that_instance():
    sup = FakeSupervisor()
    sup.instances["bad"] = _entry(latency_buckets=[[0.1, 5], [1.0, 2]])  # not cumulative
    sup.instances["good"] = _entry(latency_buckets=[[0.1, 1], ["+Inf", 2]])
    text, samples = scrape(sup)
    assert ("pgvisor_handler_seconds_count", (("instance", "good"),)) in samples
    assert 'pgvisor_handler_seconds_count{instance="bad"}' not in text
    assert 'pgvisor_instance_up{instance="bad"}' in text


@pytest.mark.parametrize("raw", [[], [[0.1, -1]], [[0.1, 1.5]], [["x", 1]], [[0.1, True]]])
def test_latency_buckets_rejects_malformed_input(raw):
    with pytest.raises((ValueError, TypeError)):
        latency_buckets(raw)


def test_two_registries_over_two_supervisors_do_not_collide():
    one, two = FakeSupervisor(), FakeSupervisor()
    one.instances["river"] = _entry(restarts=1)
    two.instances["river"] = _entry(restarts=9)
    assert scrape(one)[1][("pgvisor_restarts_total", (("instance", "river"),))] == 1
    assert scrape(two)[1][("pgvisor_restarts_total", (("instance", "river"),))] == 9
