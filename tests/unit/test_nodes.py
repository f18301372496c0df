"""The multi-node policy without a database: balance(), plan_writes(), the timing rule."""
import time

import pytest

from instances.exceptions import InvalidConfigurationException
from supervisor.config import load_config
from supervisor.nodes import balance, check_timing, plan_writes, quiet, role_fits


def counts(result):
    out = {}
    for node in result.values():
        out[node] = out.get(node, 0) + 1
    return out


def anys(n):
    return {"i%03d" % i: "any" for i in range(n)}


def test_balance_spreads_by_count_within_one():
    result = balance(anys(30), {"a": "primary", "b": "primary", "c": "primary"}, {})
    assert counts(result) == {"a": 10, "b": 10, "c": 10}
    result = balance(anys(31), {"a": "primary", "b": "primary", "c": "primary"}, {})
    assert sorted(counts(result).values()) == [10, 10, 11]


def test_a_joining_node_takes_only_its_share_and_the_rest_stays():
    before = balance(anys(30), {"a": "primary", "b": "primary"}, {})
    after = balance(anys(30), {"a": "primary", "b": "primary", "c": "primary"}, before)
    moved = [i for i in before if before[i] != after[i]]
    assert len(moved) == 10 and all(after[i] == "c" for i in moved)
    assert counts(after) == {"a": 10, "b": 10, "c": 10}


def test_a_leaving_nodes_share_goes_to_the_others_and_nothing_else_moves():
    three = {"a": "primary", "b": "primary", "c": "primary"}
    before = balance(anys(30), three, {})
    after = balance(anys(30), {"a": "primary", "b": "primary"}, before)
    assert counts(after) == {"a": 15, "b": 15}
    assert all(after[i] == before[i] for i in before if before[i] != "c")


def test_run_on_is_respected_and_unplaceable_instances_get_no_node():
    desired = {"p1": "primary", "p2": "primary", "s1": "standby", "x": "any", "y": "any"}
    result = balance(desired, {"a": "primary", "b": "standby", "c": None}, {})
    assert result["p1"] == result["p2"] == "a" and result["s1"] == "b"
    assert {result["x"], result["y"]} <= {"b", "c"}
    assert balance({"s": "standby"}, {"a": "primary"}, {}) == {"s": None}
    # a node whose role changed to standby gives its primary-only instances back
    moved = balance({"p": "primary"}, {"a": "standby", "b": "primary"}, {"p": "a"})
    assert moved == {"p": "b"}


def test_role_fits():
    assert role_fits("any", None) and role_fits("primary", "primary")
    assert not role_fits("primary", None) and not role_fits("standby", "primary")


def test_balance_is_deterministic():
    nodes = {"a": "primary", "b": "primary", "c": "primary"}
    assert balance(anys(50), nodes, {}) == balance(anys(50), nodes, {})


def test_plan_writes_lists_only_changes():
    assignments = {"i1": ("a", 5), "i2": ("b", 6), "gone": ("a", 7), "free": (None, 8)}
    target = {"i1": "a", "i2": "c", "new": "b", "free": "a"}
    assert plan_writes(target, assignments) == [
        ("free", "a", 8), ("gone", None, 7), ("i2", "c", 6), ("new", "b", None)]


def test_node_grace_must_exceed_the_lease():
    check_timing(10.0, 30.0)
    with pytest.raises(InvalidConfigurationException, match="node_grace"):
        check_timing(10.0, 10.0)
    with pytest.raises(InvalidConfigurationException, match="lease_ttl"):
        check_timing(0.0, 10.0)


def test_cluster_settings_are_checked_with_field_and_value(tmp_path):
    path = tmp_path / "pgvisor.toml"
    path.write_text('[database]\ndsn = "host=x"\n[cluster]\nenabled = true\n'
                    'node_grace = 5\nlease_ttl = 10\nnode_name = "bad name"\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(str(path), environ={})
    text = str(excinfo.value)
    assert '[cluster] enabled = true: needs [registry] backend = "postgres"' in text
    assert "[cluster] node_grace = 5: must be greater than [cluster] lease_ttl (10 s)" in text
    assert '[cluster] node_name = "bad name": must be 1..63 letters' in text
    path.write_text('[database]\ndsn = "host=x"\n')
    cfg = load_config(str(path), environ={})
    assert (cfg.cluster.enabled, cfg.cluster.node_grace, cfg.cluster.lease_ttl) == (
        False, 30.0, 10.0)


class _Part:
    def __init__(self, alive=False, size=0):
        self._alive, self.size = alive, size

    def is_alive(self):
        return self._alive

    @property
    def alive(self):
        return self._alive


class _Instance:
    def __init__(self, listener=None, pool=None):
        self.listener, self.pool = listener, pool


def test_a_stopping_instance_is_not_quiet_while_a_handler_runs():
    assert quiet(None)
    assert quiet(_Instance(_Part(False), _Part(False, 0)))
    assert not quiet(_Instance(_Part(True), _Part(True, 1)))
    # the listener stopped first, a handler still finishing: not quiet
    assert not quiet(_Instance(_Part(False), _Part(True, 1)))


def test_the_cluster_dsn_takes_the_database_password_and_is_a_secret(tmp_path):
    path = tmp_path / "pgvisor.toml"
    path.write_text('[database]\ndsn = "host=standby dbname=app"\n[registry]\n'
                    'backend = "postgres"\n[cluster]\nenabled = true\n'
                    'dsn = "host=primary dbname=app"\n')
    cfg = load_config(str(path), environ={"PGVISOR_DATABASE_PASSWORD": "s3cret"})
    dsn = cfg.cluster.connect_dsn(cfg.database)
    assert "host=primary" in dsn and "password=s3cret" in dsn
    assert "s3cret" in cfg.secrets()
    path.write_text('[database]\ndsn = "host=x"\n[registry]\nbackend = "postgres"\n'
                    '[cluster]\nenabled = true\ndsn = "host=primary password=Zq9pw"\n')
    cfg = load_config(str(path), environ={})
    assert "password=Zq9pw" in cfg.cluster.connect_dsn(cfg.database)
    assert "Zq9pw" in cfg.secrets() and "Zq9pw" not in repr(cfg)
    path.write_text('[database]\ndsn = "host=x"\n[cluster]\ndsn = "nonsense"\n')
    with pytest.raises(InvalidConfigurationException, match=r"\[cluster\] dsn = .*not a libpq"):
        load_config(str(path), environ={})


# -- the Cluster's grants without a database (its connection is opened lazily) -------------

class _Running:
    """An instance that runs until killed (the Instance surface the fence uses)."""

    def __init__(self):
        self.listener, self.pool, self.kills = _Part(True), _Part(True, 1), 0

    def kill(self):
        self.kills += 1
        self.listener, self.pool = _Part(False), _Part(False, 0)


def make_cluster(instances=None, changes=None):
    from supervisor.nodes import Cluster
    instances = {} if instances is None else instances
    return Cluster("host=unused", desired=dict, role=lambda: "primary",
                   instance=instances.get, changed=lambda: changes.append(1)
                   if changes is not None else None, node_name="unit", lease_ttl=2.0,
                   node_grace=5.0)


@pytest.mark.timeout(10)
def test_granted_instances_are_admitted_in_bounded_jittered_waves():
    import gevent
    cluster = make_cluster()
    cluster.start_batch, cluster.start_interval = 3, 0.05
    names = ["i%d" % i for i in range(10)]
    cluster._grant(time.monotonic(), [[n, 7, -1.0] for n in names])
    seen = []
    while len(cluster.allowed()) < 10:
        seen.append(len(cluster.allowed()))
        gevent.sleep(0.005)
    assert seen[0] == 0  # not at once: the first wave waits a random part of the interval
    assert max(b - a for a, b in zip(seen, seen[1:] + [10], strict=True)) <= 3
    assert len(set(seen)) >= 4  # 10 in waves of at most 3
    assert {cluster.epoch(n) for n in names} == {7}


def test_an_assignment_not_yet_free_is_not_granted_and_ticks_sooner():
    cluster = make_cluster()
    delay = cluster._grant(time.monotonic(), [["a", 1, 0.2], ["b", 2, -0.1]])
    assert set(cluster.grants) == {"b"} and cluster.epoch("a") is None
    assert delay == pytest.approx(0.21)


def test_a_grant_that_runs_out_is_revoked_then_killed_at_its_end():
    running = _Running()
    changes = []
    cluster = make_cluster({"a": running}, changes)
    sent = time.monotonic()
    cluster._grant(sent, [["a", 1, -1.0]])
    cluster._pending.discard("a")
    cluster._admitted.add("a")
    until = cluster.grants["a"].until
    assert until == pytest.approx(sent + 2.0 - 0.4)
    cluster._fence(until - 0.5)  # before until - margin: still granted
    assert cluster.allowed() == {"a"} and not running.kills
    cluster._fence(until - 0.3)  # within the margin: handed back to the supervisor
    assert cluster.allowed() == frozenset() and changes and not running.kills
    cluster._fence(until)  # at the end of the grant, still running: killed
    assert running.kills == 1
    cluster._fence(until + 0.1)
    assert running.kills == 1  # once
    cluster._grant(time.monotonic(), [])  # quiet now: reported released
    assert cluster._released == {"a"}


def test_a_moved_instance_is_released_only_once_its_handlers_are_gone():
    running = _Running()
    cluster = make_cluster({"a": running})
    cluster._grant(time.monotonic(), [["a", 1, -1.0]])
    cluster._grant(time.monotonic(), [])  # moved away: revoked
    assert "a" in cluster._lost and not cluster._released
    # still running here within its last grant: its handlers keep the epoch they ran with
    assert cluster.epoch("a") == 1
    running.listener = _Part(False)  # stopping: its source ended, a handler still runs
    cluster._grant(time.monotonic(), [])
    assert not cluster._released and cluster.epoch("a") == 1
    running.kill()
    assert cluster.epoch("a") is None  # gone from here
    cluster._grant(time.monotonic(), [])
    assert cluster._released == {"a"} and cluster.epoch("a") is None


def test_the_nodes_table_marks_the_leader_and_the_node_asked():
    from supervisor.cli.nodes import nodes_text
    from supervisor.cli.parser import build_parser
    text = nodes_text({"leader": "b", "term": 4, "assignments": 3, "nodes": [
        {"name": "a", "leader": False, "heartbeat_age": 0.42, "instances": 2, "running": 2,
         "role": "primary", "this": True},
        {"name": "b", "leader": True, "heartbeat_age": 1.9, "instances": 1, "running": 1,
         "role": "standby", "this": False}]})
    lines = text.splitlines()
    assert lines[0] == "leader: b, term 4; 3 assignment(s)"
    assert lines[1].split() == ["NODE", "LEADER", "HEARTBEAT", "AGE", "INSTANCES", "RUNNING",
                                "ROLE"]
    assert lines[2].split() == ["a", "*", "no", "0.4s", "2", "2", "primary"]
    assert lines[3].split() == ["b", "yes", "1.9s", "1", "1", "standby"]
    assert nodes_text({}).splitlines() == ["leader: none, term -; 0 assignment(s)", "no nodes"]
    args = build_parser().parse_args(["nodes", "--url", "http://127.0.0.1:1", "--json"])
    assert args.command == "nodes" and args.json


def test_a_leader_whose_registry_is_not_read_yet_plans_nothing():
    """A node started while its database was down has an empty, unread registry: as leader
    it must not take that for "no instances" and unassign everything."""
    from supervisor.nodes import Cluster
    from supervisor.service import _desired

    class Unread:
        loaded = False

        def __iter__(self):
            return iter(())

    assert _desired(Unread()) is None
    cluster = Cluster("host=unused", desired=lambda: None, role=lambda: "primary",
                      instance={}.get, changed=lambda: None, node_name="unit",
                      lease_ttl=2.0, node_grace=5.0)
    cluster.assignments = {"river": ("other", 3)}
    writes = []
    cluster._write = lambda *args: writes.append(args)
    cluster._lead()
    assert writes == []


@pytest.mark.timeout(10)
def test_stop_returns_when_a_greenlet_outlives_its_timeout():
    """gevent.killall(timeout=) raises Timeout when a greenlet swallows the kill: a stop
    must return (having waited its timeout), never raise out of the service's stop."""
    import gevent

    def stubborn():
        while True:
            try:
                gevent.sleep(10)
            except gevent.GreenletExit:
                pass

    cluster = make_cluster()
    cluster._greenlets = [gevent.spawn(stubborn)]
    gevent.sleep(0)
    cluster.stop(timeout=0.1)  # leaves on a fresh connection: must not raise either
    assert cluster._greenlets == []


def test_a_revoked_instance_says_why_and_where_it_went():
    """The Release the Supervisor logs when it stops an instance the cluster took away: a
    move names the new node and epoch; a grant that ran out and a lost lease say so."""
    from supervisor.nodes import Release
    cluster = make_cluster()
    cluster._grant(time.monotonic(), [["a", 7, -1.0], ["b", 8, -1.0], ["c", 9, -1.0]])
    cluster.assignments = {"a": ("n1", 12), "b": (None, 13), "c": ("unit", 9)}
    cluster._grant(time.monotonic(), [["c", 9, -1.0]])  # a and b taken away, c kept
    assert cluster.release("a") == Release("moved", "unit", 7, "n1", 12)
    assert cluster.release("a").message() == (
        "moved from node unit to node n1 (epoch 12; it ran on unit with epoch 7)")
    assert cluster.release("b").message() == (
        "stopped on node unit: the leader assigned it to no node (none fits its run_on) "
        "(it ran on unit with epoch 8)")
    assert cluster.release("a").fields() == {"why": "moved", "node": "unit",
                                             "held_epoch": 7, "to_node": "n1", "epoch": 12}
    cluster._fence(cluster.grants["c"].until)  # c's grant ran out
    assert cluster.release("c").message() == (
        "stopped on node unit: the node's lease was not renewed in time "
        "(it ran on unit with epoch 9)")
    cluster._grant(time.monotonic(), [["a", 14, -1.0]])  # granted again: no reason kept
    assert "a" not in cluster._releases
    cluster._lease_lost()
    assert cluster.release("a").why == "lease_lost" and cluster.release("a").held_epoch == 14
    # nothing recorded (never held here): where the assignments place it
    cluster.assignments["z"] = ("n2", 3)
    assert cluster.release("z").message() == "moved from node unit to node n2 (epoch 3)"
