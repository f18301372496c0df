"""What several ``pgvisor`` command groups share: their common flags and loading the config
they name.

:func:`load` registers the configuration's secrets with :mod:`supervisor.logs` before
anything is printed, so every later line of output is redacted. Main greenlet; blocking
file I/O (milliseconds).
"""
import os

from instances import logformat
from instances.exceptions import InvalidConfigurationException
from supervisor.cli import output as cli_output
from supervisor.cli.output import CliError
from supervisor.config import load_config

#: Environment variables whose values are secrets even before the config is loaded.
SECRET_ENV = ("PGVISOR_DATABASE_PASSWORD", "PGVISOR_HTTP_TOKEN")


def common_flags(parser, config=True):
    """``-c/--config FILE`` (unless ``config`` is false) and ``--json``."""
    if config:
        parser.add_argument("-c", "--config", metavar="FILE", help="pgvisor.toml")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def load(path, overrides=None):
    """load_config with its problems as a CliError (exit 2, one line per problem); the
    config's secrets are registered for redaction before anything else is printed."""
    for var in SECRET_ENV:
        logformat.register_secret(os.environ.get(var))
    try:
        cfg = load_config(path, overrides=overrides)
    except InvalidConfigurationException as exc:
        raise CliError("\n".join(getattr(exc, "problems", [str(exc)])),
                       cli_output.USAGE) from None
    for secret in cfg.secrets():
        logformat.register_secret(secret)
    return cfg
