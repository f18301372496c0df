"""Multi-node (issue 14): nodes as separate ``pgvisor run`` processes on one database.

What must hold, whatever happens to a node: every instance runs on exactly one node. The
handlers prove it (tests/cluster_handlers.py): each call extends the interval (instance,
node, epoch) in a table whose EXCLUSION constraint refuses two nodes' overlapping intervals
of one instance, so a double run fails its write and lands in ``violations``. Leases are
short (tests/acceptance/cluster_nodes.py): lease_ttl 2 s, node_grace 5 s.
"""
import pytest

from supervisor.testing import FaultProxy, holds, wait_for
from supervisor.testing.pytest_plugin import PostgresDatabase
from tests.acceptance.cluster_nodes import LEASE_TTL, NODE_GRACE, Nodes


def assert_exactly_once(nodes):
    assert nodes.violations() == [], nodes.violations()


def assert_surfaces(nodes, placement, holder, term):
    """GET /nodes, ``pgvisor nodes`` and the instances' statuses tell the same story as
    the database."""
    assigned = nodes.assignments()
    for name, node in nodes.nodes.items():
        body = node.get("/nodes")
        assert body["node"] == name and body["leader"] == holder and body["term"] == term
        assert {n["name"] for n in body["nodes"]} == set(nodes.nodes)
        counts = nodes.count_by_node(placement)
        assert {n["name"]: n["instances"] for n in body["nodes"]} == counts
        assert [n["name"] for n in node.get("/status")["nodes"]] == sorted(nodes.nodes)
        for instance in nodes.names:
            view = node.get("/instances/%s" % instance)
            assert (view["node"], view["epoch"]) == assigned[instance]
    shown = nodes["n0"].cli("nodes", "-c", nodes["n0"].config)
    assert shown.returncode == 0, shown.stderr
    assert "leader: %s, term %d" % (holder, term) in shown.stdout
    rows = [line.replace(" *", "").split() for line in shown.stdout.splitlines()[2:]]
    assert {row[0]: row[1] for row in rows} == {
        name: "yes" if name == holder else "no" for name in nodes.nodes}
    assert "n0 *" in shown.stdout  # the node asked
    # ``pgvisor status`` names each instance's node and epoch (NODE, EPOCH after STATE)
    table = nodes["n1"].cli("status", "-c", nodes["n1"].config)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[1].split()[:4] == ["NAME", "STATE", "NODE", "EPOCH"]
    shown = {row.split()[0]: row.split()[1:4] for row in lines[2:]}
    assert set(shown) == set(nodes.names)
    for instance, (node, epoch) in assigned.items():
        state = "running" if node == "n1" else "stopped"
        assert shown[instance] == [state, node, str(epoch)], (instance, shown[instance])


def releases(log, instance=None):
    """The ``action=cluster.release`` lines of a node's text log (of ``instance``)."""
    tag = "action=cluster.release instance=%s " % (instance or "")
    return [line for line in log.splitlines() if tag in line or (
        instance is None and "action=cluster.release" in line)]


@pytest.fixture
def cluster_nodes(request, tmp_path):
    made = []

    def make(database=None, **kwargs):
        if database is None:
            database = request.getfixturevalue("pg_database")
        made.append(Nodes(tmp_path, database, **kwargs))
        return made[-1]
    yield make
    for nodes in made:
        nodes.stop()


@pytest.mark.timeout(120)
def test_three_nodes_share_thirty_instances_and_a_killed_nodes_share_moves(cluster_nodes):
    nodes = cluster_nodes(count=3, instances=30).start()
    placement = nodes.wait_all_running(60)
    counts = nodes.count_by_node(placement)
    assert max(counts.values()) - min(counts.values()) <= 1, counts
    assigned = nodes.assignments()

    victim = max(counts, key=lambda n: (counts[n], n))
    moving = sorted(i for i, n in placement.items() if n == victim)
    killed_at = nodes.now()
    nodes.kill(victim)
    survivors = nodes.alive()
    after = nodes.wait_all_running(NODE_GRACE + 5 + 5, survivors,
                                   "the killed node's instances run elsewhere")
    for instance in moving:
        assert after[instance] != victim
        assert wait_for(lambda i=instance: nodes.handled_since(i, killed_at), 10, 0.1,
                        "%s handled on its new node" % instance)
    counts = nodes.count_by_node(after)
    assert max(counts[n] for n in survivors) - min(counts[n] for n in survivors) <= 1
    # the survivors' instances did not move: only the dead node's share did
    for instance, node in placement.items():
        if node != victim:
            assert after[instance] == node, instance
    moved = nodes.assignments()
    for instance in moving:
        assert moved[instance][1] > assigned[instance][1]  # a new epoch
    assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_joining_nodes_share_is_logged_by_the_giver_as_moved_with_node_and_epoch(
        cluster_nodes):
    nodes = cluster_nodes(count=2, instances=6)
    nodes["n0"].start(ready=False)
    nodes["n0"].wait_log("action=service.ready", timeout=60)
    nodes.wait_all_running(60, ["n0"], "n0 runs everything alone")
    before = nodes.assignments()
    nodes["n1"].start(ready=False)
    placement = nodes.wait_all_running(60, ["n0", "n1"], "n1 took its share")
    after = nodes.assignments()
    moved = sorted(i for i, n in placement.items() if n == "n1")
    assert len(moved) == 3
    log = nodes["n0"].log()
    for instance in moved:
        lines = releases(log, instance)
        assert len(lines) == 1, lines  # once, one line
        assert lines[0].endswith(
            "instance %s moved from node n0 to node n1 (epoch %d; it ran on n0 with epoch "
            "%d)" % (instance, after[instance][1], before[instance][1])), lines[0]
    assert len(releases(log)) == len(moved)  # the instances n0 kept were not released
    assert "removed from the registry" not in log
    assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_killed_leader_is_replaced_with_the_next_term(cluster_nodes):
    nodes = cluster_nodes(count=3, instances=6).start()
    placement = nodes.wait_all_running(60)
    term, holder, _ = wait_for(nodes.leader, 20, 0.1, "a leader")
    assert_surfaces(nodes, placement, holder, term)
    nodes.kill(holder)
    elected = wait_for(lambda: (nodes.leader() or (0, None, 0))[0] > term and nodes.leader(),
                       LEASE_TTL + 5 + 5, 0.05, "a new leader")
    new_term, new_holder, left = elected
    assert new_term == term + 1
    assert new_holder != holder and new_holder in nodes.alive()
    nodes.wait_all_running(NODE_GRACE + 10, nodes.alive())
    assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_cut_off_node_stops_before_its_lease_expires_and_rejoins_without_a_duplicate(
        cluster_nodes, pg_database):
    with FaultProxy(pg_database.cluster.port) as proxy:
        cut = "n2"
        nodes = cluster_nodes(count=3, instances=12, dsn_of=lambda i: proxy.dsn_for(
            pg_database.cluster, pg_database.name) if i == 2 else pg_database.dsn).start()
        placement = nodes.wait_all_running(60)
        theirs = sorted(i for i, n in placement.items() if n == cut)
        assert theirs
        proxy.blackhole()
        # The node stops its instances on its own clock, before the lease can expire.
        wait_for(lambda: not set(theirs) & set(nodes.running([cut])), LEASE_TTL + 2, 0.05,
                 "%s stopped its instances" % cut)
        lease_end = pg_database.execute(
            "SELECT lease_expires_at FROM pgvisor.nodes WHERE name = %s", [cut])[0][0]
        last = pg_database.execute(
            "SELECT max(upper(during)) FROM intervals WHERE node = %s", [cut])[0][0]
        assert last < lease_end, (last, lease_end)
        # The others take its share once node_grace has passed, never before the lease end.
        nodes.wait_all_running(NODE_GRACE + 10, ["n0", "n1"], "n0 and n1 run everything")
        first = pg_database.execute(
            "SELECT min(lower(during)) FROM intervals WHERE node <> %s AND instance = ANY(%s)"
            " AND lower(during) > %s", [cut, theirs, last])[0][0]
        assert first is not None and first > lease_end, (first, lease_end)
        proxy.heal()
        # On heal it learns it lost its lease, joins again and takes a share: no duplicate.
        nodes[cut].wait_log("action=cluster.lease_lost", timeout=20)
        nodes.wait_all_running(30, ["n0", "n1", cut], "the healed node takes a share")
        assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_postgres_outage_longer_than_node_grace_moves_nothing(pg_private_cluster,
                                                                  cluster_nodes):
    pg_private_cluster.create_database("nodes")
    database = PostgresDatabase(pg_private_cluster, "nodes")
    nodes = cluster_nodes(database=database, count=3, instances=9, revived_wait=3.0).start()
    placement = nodes.wait_all_running(60)
    before = nodes.assignments()
    pg_private_cluster.stop()
    # Every node lets its grants run out and stops its instances (it cannot tell an
    # outage from being cut off) ...
    for node in nodes.nodes.values():
        node.wait_log("its lease was not renewed in time", timeout=20)
    wait_for(lambda: not nodes.running(), 10, 0.1, "nothing runs during the outage")
    for name, node in nodes.nodes.items():  # each stop logged once, as a lease's end
        for instance in (i for i, n in placement.items() if n == name):
            wait_for(lambda n=node, i=instance: releases(n.log(), i), 10, 0.1,
                     "%s's stop logged" % instance)
            lines = releases(node.log(), instance)
            assert len(lines) == 1 and lines[0].endswith(
                "instance %s stopped on node %s: the node's lease was not renewed in time "
                "(it ran on %s with epoch %d)" % (instance, name, name, before[instance][1])
            ), lines
    # ... and nothing starts anywhere while it stays down longer than node_grace (every
    # heartbeat gets older than that) ...
    assert holds(lambda: not nodes.running(), NODE_GRACE + 1.0, 0.2,
                 "nothing runs while the database is down")
    pg_private_cluster.start()
    # ... and after the revival the same instances run on the same nodes, same epochs:
    # the leader judged nobody dead within wait_after_db_revived.
    assert nodes.wait_all_running(40) == placement
    assert nodes.assignments() == before
    for name in nodes.nodes:
        assert "action=cluster.node_dead" not in nodes[name].log()
    assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_node_on_a_standby_is_given_nothing_primary_only(pg_pair, cluster_nodes):
    """n0's database is the primary, n1's the standby; both keep the cluster's tables on
    the primary ([cluster] dsn). The nodes report their roles, and run_on decides."""
    primary, standby = pg_pair.primary, pg_pair.standby
    primary.create_database("nodes")
    database = PostgresDatabase(primary, "nodes")
    wait_for(lambda: standby.execute("SELECT 1 FROM pg_database WHERE datname = 'nodes'"),
             30, 0.1, "the database replicated")
    nodes = cluster_nodes(
        database=database, count=2, instances=6, cluster_dsn=database.dsn,
        dsn_of=lambda i: database.dsn if i == 0 else standby.dsn_for("nodes"),
        run_on=lambda i: "primary" if i < 4 else "standby").start()
    expected = {"i%02d" % i: "n0" if i < 4 else "n1" for i in range(6)}
    try:
        wait_for(lambda: {i: n for i, (n, _) in nodes.assignments().items()} == expected, 40,
                 0.2, "primary-only instances on n0, standby-only ones on n1")
    except AssertionError as error:  # say what the cluster saw (a rare failure in CI)
        raise AssertionError("%s; assignments %r; nodes %r; logs %s" % (
            error, nodes.assignments(),
            database.execute("SELECT name, role, running FROM pgvisor.nodes"),
            {name: [line for line in log.splitlines() if "action=cluster." in line
                    or "role" in line or "ERROR" in line][-15:]
             for name, log in nodes.logs().items()})) from None
    roles = dict(database.execute("SELECT name, role FROM pgvisor.nodes"))
    assert roles == {"n0": "primary", "n1": "standby"}
    primaries = ["i%02d" % i for i in range(4)]
    wait_for(lambda: all(nodes.running(["n0"]).get(i) == ["n0"] for i in primaries), 30,
             0.2, "the primary-only instances run on n0")
    assert not set(primaries) & set(nodes.running(["n1"]))
    assert_exactly_once(nodes)


@pytest.mark.timeout(120)
def test_a_node_restarted_under_its_name_takes_its_instances_back_with_new_epochs(
        cluster_nodes):
    nodes = cluster_nodes(count=2, instances=8, node_grace=15.0).start()
    placement = nodes.wait_all_running(60)
    before = nodes.assignments()
    mine = sorted(i for i, n in placement.items() if n == "n0")
    nodes.kill("n0")
    nodes["n0"].start(ready=False)  # the same name, a new process (incarnation)
    nodes["n0"].wait_log("instance(s) of its name taken over with new epochs", timeout=30)
    after = nodes.wait_all_running(30)
    assert after == placement  # nothing moved: the name came back before node_grace
    moved = nodes.assignments()
    for instance in mine:
        assert moved[instance][1] > before[instance][1], instance  # a new epoch
    for instance in set(placement) - set(mine):
        assert moved[instance] == before[instance]
    assert_exactly_once(nodes)
