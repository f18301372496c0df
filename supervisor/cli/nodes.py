"""``pgvisor nodes``: the cluster as the running service's node sees it (``GET /nodes``).

A table of the nodes (node, leader, heartbeat age, instances assigned, role), the leader's
term above it; ``--json`` prints the answer as it came. The API's address and token are
found as for the control verbs (:func:`supervisor.cli.control.api_client`).
"""
from supervisor.cli import output as cli_output
from supervisor.cli.control import api_client, http_flags
from supervisor.cli.output import emit_json, say, table

#: The nodes table's columns.
NODE_COLUMNS = [
    ("NODE", lambda row: row.get("name") + (" *" if row.get("this") else "")),
    ("LEADER", "leader"), ("HEARTBEAT AGE", lambda row: "%.1fs" % row["heartbeat_age"]),
    ("INSTANCES", "instances"), ("RUNNING", "running"), ("ROLE", "role")]


def register(subparsers):
    """Add ``nodes`` to the top-level ``subparsers``."""
    nodes = subparsers.add_parser("nodes", help="the cluster's nodes (multi-node)",
                                  description="the nodes of the cluster, as the service's "
                                  "node sees them (GET /nodes); * marks that node")
    http_flags(nodes)
    nodes.set_defaults(func=cmd_nodes)


def cmd_nodes(args):
    """``pgvisor nodes``: exit 0, or 1 when clustering is off on the service."""
    _, body = api_client(args).get("/nodes")
    if args.json:
        emit_json(body)
    else:
        say(nodes_text(body))
    return cli_output.OK


def nodes_text(body):
    """The leader line and the nodes table of a ``GET /nodes`` answer."""
    head = "leader: %s, term %s; %d assignment(s)" % (
        body.get("leader") or "none", body.get("term") or "-", body.get("assignments", 0))
    return head + "\n" + table(body.get("nodes", []), NODE_COLUMNS, empty="no nodes")
