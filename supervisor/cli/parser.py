"""The top-level ``pgvisor`` parser and :func:`run`, which dispatches one command line.

Each command group registers its own subcommands and holds its ``cmd_*``:
:mod:`~supervisor.cli.service` (run), :mod:`~supervisor.cli.control` (restart, verify,
shutdown, status), :mod:`~supervisor.cli.instances` (the registry verbs),
:mod:`~supervisor.cli.nodes` (the cluster's nodes) and :mod:`~supervisor.cli.queue` (spool
queues); output and exit codes are in :mod:`~supervisor.cli.output`. The delegates (demo, piper) parse their own arguments.
Imported by :func:`supervisor.cli.main` after it patched.
"""
import argparse
import importlib
import sys

from supervisor import logs
from supervisor.cli import control, instances, nodes, queue, service
from supervisor.cli import output as cli_output
from supervisor.cli.output import CliError

#: The command groups, in the order ``pgvisor --help`` lists them.
GROUPS = (service, instances, control, nodes, queue)
#: Commands implemented elsewhere: ``supervisor.<name>.main(argv)``.
DELEGATES = {"demo": "the whole story on a throwaway Postgres",
             "piper": "mentat's piper: handle a spool queue with a handler"}


def build_parser():
    """The ``pgvisor`` argument parser (each command sets ``func``)."""
    parser = argparse.ArgumentParser(prog="pgvisor", description="Keeps Postgres LISTEN/"
                                     "NOTIFY processors alive. Exit codes: 0 ok, 1 operation "
                                     "failed, 2 usage or configuration error, 3 service "
                                     "unreachable, 4 unknown instance.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(subparsers)
    for name, text in DELEGATES.items():
        subparsers.add_parser(name, help=text + " (arguments are its own: pgvisor %s "
                              "--help)" % name)
    return parser


def run(argv=None):
    """Run the ``pgvisor`` command of ``argv`` (default: sys.argv[1:]); return the exit
    code. argparse's usage errors exit 2 by themselves."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if argv and argv[0] in DELEGATES:  # their arguments are theirs, --help included
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


def delegate(command, argv):
    """``pgvisor demo ...`` / ``pgvisor piper ...``: ``supervisor.<command>.main(argv)``."""
    module_name = "supervisor.%s" % command
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise CliError("`pgvisor %s` is not available in this installation (module %s is "
                       "missing)" % (command, module_name), cli_output.FAILED) from None
    code = module.main(list(argv))
    return cli_output.OK if code is None else int(code)
