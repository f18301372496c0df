"""The multi-node tests' harness: N ``pgvisor run`` processes sharing one database.

:class:`Nodes` writes the registry into the database's table (``[registry] backend =
"postgres"``) and starts each node in a directory of its own (``n<i>/``), with ``[cluster] enabled`` and short leases, its database reached
through ``dsn_of(i)`` (a FaultProxy for the node the test will cut off). The handlers are
``tests.cluster_handlers:interval_<instance>``: they write intervals into a table whose
EXCLUSION constraint refuses two nodes running one instance at once, through a direct
connection (``intervals_dsn``) that no injected fault touches. Every wait has a deadline.
"""
import os
import signal

from instances import InstanceSpec
from instances.registry.table import PostgresRegistry
from supervisor.testing import wait_for
from tests.acceptance.service_process import ServiceProcess
from tests.cluster_handlers import INTERVALS_SQL

#: Short leases: a node's grants run out ~1.2 s after its last renewal, a dead node's
#: instances move after 5 s.
LEASE_TTL = 2.0
NODE_GRACE = 5.0


class Nodes:
    """``count`` nodes over ``database`` (a PostgresDatabase) running ``instances``."""

    def __init__(self, tmp_path, database, count=3, instances=30, dsn_of=None,
                 lease_ttl=LEASE_TTL, node_grace=NODE_GRACE, revived_wait=2.0,
                 run_on=lambda index: "any", cluster_dsn=None):
        self.database = database
        database.execute(INTERVALS_SQL)
        self.names = ["i%02d" % i for i in range(instances)]
        registry = PostgresRegistry(database.dsn)
        registry.merge(InstanceSpec(
            name=instance, channels=["cluster_test"], run_on=run_on(index),
            handler="tests.cluster_handlers:interval_%s" % instance,
            handler_timeout=3600.0) for index, instance in enumerate(self.names))
        registry.close()
        self.nodes = {}
        for index in range(count):
            name = "n%d" % index
            directory = tmp_path / name
            directory.mkdir()
            dsn = dsn_of(index) if dsn_of is not None else database.dsn
            self.nodes[name] = ServiceProcess(directory, {
                "database": {"dsn": dsn},
                "registry": {"backend": "postgres"},
                "supervisor": {"probe_interval": 0.2, "shutdown_grace": 1.0,
                               "wait_after_db_revived": revived_wait},
                "cluster": dict({"enabled": True, "node_name": name, "lease_ttl": lease_ttl,
                                 "node_grace": node_grace},
                                **({"dsn": cluster_dsn} if cluster_dsn else {})),
            }, env={"PGVISOR_CLUSTER_NODE_NAME": name,
                    "PGVISOR_TEST_INTERVALS_DSN": database.dsn})

    def __getitem__(self, name):
        return self.nodes[name]

    def start(self):
        for node in self.nodes.values():
            node.start(ready=False)
        for node in self.nodes.values():
            node.wait_log("action=service.ready", timeout=60)
        return self

    def stop(self):
        for node in self.nodes.values():
            node.stop()

    def kill(self, name):
        """kill -9 the node ``name``."""
        node = self.nodes[name]
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(timeout=10)

    def alive(self):
        return [n for n, node in self.nodes.items() if node.process.poll() is None]

    # -- what the database says -----------------------------------------------------------
    def assignments(self):
        """``{instance: (node, epoch)}``."""
        return {i: (n, e) for i, n, e in self.database.execute(
            "SELECT instance, node, epoch FROM pgvisor.assignments")}

    def leader(self):
        """``(term, holder, seconds left)`` of the leader row, or None."""
        rows = self.database.execute(
            "SELECT term, holder, extract(epoch FROM expires_at - clock_timestamp())"
            " FROM pgvisor.leader")
        return tuple(rows[0]) if rows else None

    def violations(self):
        return self.database.execute("SELECT instance, node, epoch, error FROM violations")

    def intervals(self):
        """``[(instance, node, epoch, lower, upper)]`` of every recorded interval."""
        return self.database.execute(
            "SELECT instance, node, epoch, lower(during), upper(during) FROM intervals"
            " ORDER BY instance, lower(during)")

    # -- what the nodes say ---------------------------------------------------------------
    def running(self, names=None):
        """``{instance: [nodes running it]}`` over the live nodes (their GET /status)."""
        where = {}
        for name in names or self.alive():
            try:
                status = self.nodes[name].status()
            except OSError:
                continue
            for instance, view in status.items():
                if view.get("state") == "running":
                    where.setdefault(instance, []).append(name)
        return where

    def wait_all_running(self, timeout, nodes=None, message="every instance running"):
        """Wait until every instance runs on exactly one of ``nodes`` (default: the live
        ones), where the database assigns it, the counts within one of each other (a
        node that just joined takes its share: the states on the way do not count);
        returns ``{instance: node}``."""
        def placed():
            where = nodes or self.alive()
            running = self.running(where)
            if set(running) != set(self.names) or any(len(v) != 1 for v in running.values()):
                return None
            placement = {i: v[0] for i, v in running.items()}
            counts = [n for n in self.count_by_node(placement).items() if n[0] in where]
            if max(c for _, c in counts) - min(c for _, c in counts) > 1:
                return None
            assigned = {i: node for i, (node, _) in self.assignments().items()}
            return placement if assigned == placement else None
        return wait_for(placed, timeout, 0.2, message)

    def handled_since(self, instance, since):
        """True once ``instance``'s handler wrote an interval reaching past ``since`` (a
        database timestamp)."""
        rows = self.database.execute(
            "SELECT 1 FROM intervals WHERE instance = %s AND upper(during) > %s",
            [instance, since])
        return bool(rows)

    def now(self):
        return self.database.execute("SELECT clock_timestamp()")[0][0]

    def logs(self):
        return {name: node.log() for name, node in self.nodes.items()}

    def count_by_node(self, placement):
        counts = dict.fromkeys(self.nodes, 0)
        for node in placement.values():
            counts[node] += 1
        return counts

    def __repr__(self):
        return "<Nodes %s in %s>" % (", ".join(self.nodes), os.path.commonpath(
            [n.directory for n in self.nodes.values()]))
