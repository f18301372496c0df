"""``pgvisor queue stats DIR`` and ``pgvisor queue requeue DIR [--errors] [--owner X]``: a spool
queue's directories, read or repaired in place (the service may be running).

Blocking directory scans in the main greenlet: this is a one-shot command, not the service.
"""
import os

from supervisor.cli import output as cli_output
from supervisor.cli.options import common_flags
from supervisor.cli.output import CliError, emit_json, say

#: The queue verbs: (verb, help).
VERBS = (("stats", "count the spool's files"),
         ("requeue", "give dead consumers' pending work back to incoming/"))


def register(subparsers):
    """Add ``queue`` and its verbs to the top-level ``subparsers``."""
    queue = subparsers.add_parser("queue", help="spool queue directories")
    verbs = queue.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in VERBS:
        one = verbs.add_parser(verb, help=text, description=text)
        common_flags(one, config=False)
        one.add_argument("directory", metavar="DIR")
        if verb == "requeue":
            one.add_argument("--errors", action="store_true", help="requeue errors/ too")
            one.add_argument("--owner", action="append", default=[], metavar="OWNER",
                             help="also give back pending/OWNER/ whether or not OWNER looks "
                                  "alive (the claims of a host that will not come back)")
            one.add_argument("--reason", metavar="REASON",
                             choices=("failed", "max_attempts", "undecodable", "oversized"),
                             help="with --errors: only messages set aside for REASON")
            one.add_argument("--error-contains", metavar="TEXT",
                             help="with --errors: only messages whose error holds TEXT")
    queue.set_defaults(func=cmd_queue)


def _spool(directory):
    directory = os.path.abspath(directory)
    if not os.path.isdir(os.path.join(directory, "incoming")):
        raise CliError("%s is not a spool directory (no incoming/ in it)" % directory,
                       cli_output.USAGE)
    return directory


def cmd_queue(args):
    """``pgvisor queue stats DIR`` and ``pgvisor queue requeue DIR [--errors]``."""
    from instances.spool import layout

    directory = _spool(args.directory)
    result = {"directory": directory}
    if args.verb == "requeue":
        if (args.reason or args.error_contains) and not args.errors:
            raise CliError("--reason and --error-contains filter --errors: add --errors",
                           cli_output.USAGE)
        result.update(_requeue(directory, args.errors, args.owner, args.reason,
                               args.error_contains))
    result.update(layout.stats(directory))
    if args.json:
        emit_json(result)
        return cli_output.OK
    if args.verb == "requeue":
        say("requeued %d pending message file(s) of dead consumers, %d from errors/"
            % (result["pending_requeued"], result["errors_requeued"]))
    say("%s: incoming %d, pending %d %s, errors %d, tmp %d, oldest %s" % (
        directory, result["incoming"], sum(result["pending"].values()),
        result["pending"] or "", result["errors"], result["tmp"],
        "-" if result["oldest_age"] is None else "%.1f s" % result["oldest_age"]))
    return cli_output.OK


def _requeue(directory, errors, owners=(), reason=None, error_contains=None):
    from instances.spool import FileQueue, layout

    before = layout.stats(directory)
    for owner in owners:
        if owner not in before["pending"]:
            raise CliError("--owner %s: no pending/%s/ in %s (owners: %s)" % (
                owner, owner, directory, ", ".join(sorted(before["pending"])) or "none"),
                cli_output.USAGE)
    queue = FileQueue(directory, owner="cli")  # its recovery requeues dead owners' work
    try:
        for owner in owners:
            if os.path.isdir(os.path.join(directory, "pending", owner)):  # not recovered
                queue.requeue_owner(owner)
        errors_requeued = queue.requeue(True, reason, error_contains) if errors else 0
    finally:
        queue.close()
    after = layout.stats(directory)
    return {"errors_requeued": errors_requeued,
            "pending_requeued": max(0, sum(before["pending"].values())
                                    - sum(after["pending"].values()))}
