"""``pgvisor run``: the service in the foreground.

Its flags map one to one onto settings of the table (:data:`RUN_FLAGS`); ``--help`` lists
every setting with its ``PGVISOR_*`` variable. :func:`cmd_run` blocks the main greenlet
until the service stops (SIGTERM/SIGINT).
"""
import argparse
import logging
import os
import sys

from instances.exceptions import InvalidConfigurationException
from supervisor import logs
from supervisor.cli.options import load
from supervisor.config import load_config
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


def register(subparsers):
    """Add ``run`` to the top-level ``subparsers``."""
    run = subparsers.add_parser("run", help="the service, in the foreground",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=settings_help())
    run.add_argument("-c", "--config", metavar="FILE", help="pgvisor.toml")
    for flag, name, metavar, text in RUN_FLAGS:
        run.add_argument(flag, metavar=metavar, help="%s [%s]" % (text, name))
    run.set_defaults(func=cmd_run, setting_flags=[
        (flag[2:].replace("-", "_"), name) for flag, name, _, _ in RUN_FLAGS])


def cmd_run(args):
    """``pgvisor run``: the service in the foreground until SIGTERM/SIGINT."""
    from supervisor.service import Service  # the service's weight only where it runs

    try:  # the flags' logging already for load_config's warnings; load reports bad ones
        logs.configure_logging(args.log_level or "info", args.log_format or "text")
    except InvalidConfigurationException:
        logs.configure_logging()
    overrides = {name: getattr(args, dest) for dest, name in args.setting_flags}
    cfg = load(args.config, overrides)
    logs.configure_logging(cfg.logging.level, cfg.logging.format)
    service = Service(cfg, load_config=lambda: load_config(args.config, overrides=overrides))
    code = service.run()
    if service.aborted:
        # A second signal: leave now. The drain, the watcher and monitor threads and the
        # worker processes (they stop when our stdin pipe to them closes) are abandoned;
        # unwinding the interpreter under them can crash it, so the CLI, the only layer
        # allowed to, ends the process here after flushing what was logged.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
