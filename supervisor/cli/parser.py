"""The ``pgvisor`` argument parser and :func:`run`, which dispatches one command line.

Commands live in :mod:`supervisor.cli.commands` (run, status, control verbs, queue,
delegates) and :mod:`supervisor.cli.instances` (registry verbs); output and exit codes in
:mod:`supervisor.cli.output`. Imported by :func:`supervisor.cli.main` after it patched.
"""
import argparse
import sys

from instances.spec import ISOLATIONS, RESTART_TYPES, ROLES
from supervisor import logs
from supervisor.cli import output as cli_output
from supervisor.cli.output import CliError
from supervisor.config.settings import settings_help

#: ``pgvisor run`` flags: (flag, setting, metavar, help).
RUN_FLAGS = (
    ("--dsn", "database.dsn", "DSN", "libpq connection string (prefer the config file or "
     "PGVISOR_DATABASE_DSN: a password here shows in the process list)"),
    ("--registry", "registry.path", "PATH", "registry file"),
    ("--listen", "http.listen", "HOST:PORT", "HTTP API address; 'off' disables it"),
    ("--interval", "supervisor.interval", "SECONDS", "periodic verify"),
    ("--restart-max-rate", "supervisor.restart_max_rate", "RATE", "e.g. 1/m, 10/h"),
    ("--wait-after-db-revived", "supervisor.wait_after_db_revived", "SECONDS",
     "grace after the database returns"),
    ("--shutdown-grace", "supervisor.shutdown_grace", "SECONDS",
     "time to finish work at stop"),
    ("--heartbeat-timeout", "supervisor.heartbeat_timeout", "SECONDS",
     "silence after which an instance is hung"),
    ("--watch-path", "failover.watch_path", "DIR", "directory watched for failover files"),
    ("--log-level", "logging.level", "LEVEL", "debug, info, warning or error"),
    ("--log-format", "logging.format", "FORMAT", "text or json"),
)

#: Commands implemented elsewhere: ``supervisor.<name>.main(argv)``.
DELEGATES = {"demo": "the whole story on a throwaway Postgres",
             "piper": "mentat's piper: handle a spool queue with a handler"}


def _common(parser, config=True):
    if config:
        parser.add_argument("-c", "--config", metavar="FILE", help="pgvisor.toml")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def _http_flags(parser):
    _common(parser)
    parser.add_argument("--url", help="the service's API, e.g. http://127.0.0.1:7390 "
                        "(default: from the config's [http] listen)")
    parser.add_argument("--token", help="bearer token (default: the config's, or "
                        "PGVISOR_HTTP_TOKEN)")
    parser.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS",
                        help="seconds to wait for the service (and for --wait)")


def _spec_flags(parser, update):
    parser.add_argument("--channel", dest="channels", action="append", metavar="CHANNEL",
                        required=not update, help="LISTEN channel (repeat for several%s)"
                        % ("; replaces the list" if update else ""))
    parser.add_argument("--handler", required=not update, metavar="MODULE:CALLABLE")
    parser.add_argument("--min", type=int, metavar="N", help="min_concurrency")
    parser.add_argument("--max", type=int, metavar="N", help="max_concurrency")
    parser.add_argument("--run-on", choices=ROLES)
    parser.add_argument("--restart", choices=RESTART_TYPES)
    parser.add_argument("--queue-spool", metavar="DIR", help="durable spool queue directory")
    if update:
        parser.add_argument("--memory-queue", action="store_true",
                            help="back to the memory queue")
    parser.add_argument("--queue-size", type=int, metavar="N", help="memory queue bound")
    parser.add_argument("--handler-timeout", metavar="SECONDS", help="seconds, or 'none'")
    parser.add_argument("--isolation", choices=ISOLATIONS)
    parser.add_argument("--dsn", help="DSN override for this instance")
    parser.add_argument("--restart-max-rate", metavar="RATE")
    group = parser.add_mutually_exclusive_group()
    if update:
        group.add_argument("--enable", dest="enabled", action="store_const", const=True)
    group.add_argument("--disabled", "--disable", dest="enabled", action="store_const",
                       const=False, help="registered but not started")
    parser.add_argument("--set", action="append", metavar="FIELD=VALUE",
                        help="any spec field, VALUE as JSON (repeatable)")


def _instances_parser(sub):
    parser = sub.add_parser("instances", help="edit the registry (works with the service down)")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("list", "list the registered instances"),
                       ("show", "one instance's fields"), ("add", "register an instance"),
                       ("update", "change fields of an instance"),
                       ("remove", "unregister an instance"), ("enable", "enable an instance"),
                       ("disable", "disable an instance (it is stopped)")):
        one = verbs.add_parser(verb, help=text, description=text)
        _common(one)
        one.add_argument("--registry", metavar="PATH", help="registry file (default: the "
                         "config's [registry] path)")
        if verb != "list":
            one.add_argument("name", metavar="NAME")
        if verb in ("add", "update"):
            _spec_flags(one, update=verb == "update")


def build_parser():
    """The ``pgvisor`` argument parser (each command sets ``func``)."""
    from supervisor.cli import commands as cli_commands
    from supervisor.cli import instances as cli_instances

    parser = argparse.ArgumentParser(prog="pgvisor", description="Keeps Postgres LISTEN/"
                                     "NOTIFY processors alive. Exit codes: 0 ok, 1 operation "
                                     "failed, 2 usage or configuration error, 3 service "
                                     "unreachable, 4 unknown instance.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="the service, in the foreground",
                         formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=settings_help())
    run.add_argument("-c", "--config", metavar="FILE", help="pgvisor.toml")
    for flag, name, metavar, text in RUN_FLAGS:
        run.add_argument(flag, metavar=metavar, help="%s [%s]" % (text, name))
    run.set_defaults(func=cli_commands.cmd_run, setting_flags=[
        (flag[2:].replace("-", "_"), name) for flag, name, _, _ in RUN_FLAGS])
    _instances_parser(sub)
    sub.choices["instances"].set_defaults(func=cli_instances.cmd_instances)
    for verb, text in (("restart", "restart instances (clears parking)"),
                       ("verify", "bring instances in line with the registry"),
                       ("shutdown", "stop instances until restarted")):
        one = sub.add_parser(verb, help=text + " (over HTTP)", description=text)
        _http_flags(one)
        one.add_argument("names", nargs="+", metavar="NAME")
        one.add_argument("--wait", action="store_true", help="wait for the outcome")
        one.set_defaults(func=cli_commands.cmd_action)
    status = sub.add_parser("status", help="instances and database of the running service")
    _http_flags(status)
    status.set_defaults(func=cli_commands.cmd_status)
    queue = sub.add_parser("queue", help="spool queue directories")
    verbs = queue.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("stats", "count the spool's files"),
                       ("requeue", "give dead consumers' pending work back to incoming/")):
        one = verbs.add_parser(verb, help=text, description=text)
        _common(one, config=False)
        one.add_argument("directory", metavar="DIR")
        if verb == "requeue":
            one.add_argument("--errors", action="store_true", help="requeue errors/ too")
    queue.set_defaults(func=cli_commands.cmd_queue)
    for name, text in DELEGATES.items():
        sub.add_parser(name, help=text + " (arguments are its own: pgvisor %s --help)" % name)
    return parser


def run(argv=None):
    """Run the ``pgvisor`` command of ``argv`` (default: sys.argv[1:]); return the exit
    code. argparse's usage errors exit 2 by themselves."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in DELEGATES:  # their arguments are theirs, --help included
            from supervisor.cli.commands import delegate
            return delegate(argv[0], argv[1:])
        args = build_parser().parse_args(argv)
        if args.command != "run":  # run sets up the service's logging itself
            logs.configure_logging("warning", "text")
        return args.func(args)
    except CliError as exc:
        cli_output.error(exc)
        return exc.code
    except KeyboardInterrupt:
        return cli_output.FAILED
