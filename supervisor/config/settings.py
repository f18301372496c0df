"""The table of pgvisor's settings: the one place where every setting is mapped.

Each :class:`Setting` names its TOML section and key, its ``PGVISOR_<SECTION>_<KEY>``
environment variable, its type, default, unit, meaning and validator (docs/configuration.rst).
:mod:`supervisor.config` loads values against this table; ``pgvisor run --help``
(:func:`settings_help`) and ``docs/configuration.rst`` (:func:`settings_rst`) are generated
from it. Pure: no I/O, no logging, safe from any greenlet.
"""
import ipaddress
import json
import math
import re
from dataclasses import dataclass

from instances.exceptions import InvalidConfigurationException
from instances.migrations import schema_problem
from instances.rates import parse_rate

TYPES = ("str", "int", "float", "bool", "list", "path")
LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
DISABLED_LISTEN = ("", "off")


@dataclass(frozen=True)
class Setting:
    """One setting. ``validate(value)`` raises ValueError(why) for a bad (typed) value."""

    section: str
    key: str
    type: str
    default: object
    unit: str
    help: str
    validate: object = None
    secret: bool = False

    @property
    def name(self):
        """``"section.key"``."""
        return "%s.%s" % (self.section, self.key)

    @property
    def env(self):
        """The environment variable that overrides this setting."""
        return "PGVISOR_%s_%s" % (self.section.upper(), self.key.upper())


# -- validators: value -> None, raise ValueError(why) ---------------------------------------

def positive(value):
    if value <= 0:
        raise ValueError("must be greater than 0")


def non_negative(value):
    if value < 0:
        raise ValueError("must be 0 or more")


def port_number(value):
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number 1..65535")


def rate(value):
    try:
        parse_rate(value)
    except InvalidConfigurationException:
        raise ValueError("not a rate: use N/s, N/m, N/h, N/d or 'N per [M] "
                         "second|minute|hour|day'") from None


def one_of(*choices):
    def check(value):
        if value not in choices:
            raise ValueError("must be one of %s" % ", ".join(choices))
    return check


def file_names(value):
    if not value:
        raise ValueError("must list at least one file name")
    for name in value:
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise ValueError("%r is not a plain file name" % name)


def schema_name(value):
    problem = schema_problem(value)
    if problem:
        raise ValueError(problem + " (a schema name, used as a quoted identifier)")


def split_listen(value):
    """``"host:port"`` -> ``(host, port)``; ``"[::1]:80"`` -> ``("::1", 80)``; ValueError."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("must be host:port (or \"off\" to disable)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port_number(int(port))
    return host, int(port)


def listen_address(value):
    if value.strip().lower() not in DISABLED_LISTEN:
        split_listen(value)


def host_names(value):
    for name in value:
        if not name.strip() or any(c in name for c in "/ \t@") or name != name.strip():
            raise ValueError("%r is not a host name" % name)


def module_prefixes(value):
    for prefix in value:
        if not _MODULE_PREFIX.match(prefix):
            raise ValueError("%r is not a module prefix (dotted names, e.g. \"myapp.\")"
                             % prefix)


def cluster_name(value):
    if not _NODE_NAME.match(value):
        raise ValueError("must be 1..63 letters, digits, '.', '_' or '-'")


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}\Z")
_MODULE_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.?\Z")


def handler_allowed(handler, prefixes):
    """True when the handler ``"module:callable"`` comes from a module ``prefixes`` allows
    (empty: any). ``"myapp."`` allows myapp's submodules, ``"myapp"`` myapp and them."""
    if not prefixes:
        return True
    module = str(handler).partition(":")[0]
    return any(module.startswith(p) if p.endswith(".") else
               (module == p or module.startswith(p + ".")) for p in prefixes)


def is_loopback(host):
    """True for ``localhost`` and loopback IP addresses; False for anything else."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_S = Setting
SETTINGS = (
    _S("database", "dsn", "str", None, "",
       "libpq connection string or postgresql:// URI (required unless host/dbname are given)"),
    _S("database", "host", "str", None, "",
       "server host name, IP address or unix socket directory (overrides the DSN)"),
    _S("database", "port", "int", None, "", "server port (overrides the DSN)", port_number),
    _S("database", "dbname", "str", None, "",
       "database name; the key ``database`` is accepted as an alias (overrides the DSN)"),
    _S("database", "user", "str", None, "", "role to connect as (overrides the DSN)"),
    _S("database", "password_file", "path", None, "",
       "file holding the password (first line; keep it mode 0600)"),
    _S("database", "password", "str", None, "",
       "password; set it through the environment (a password in the file is accepted "
       "with a warning); without any, libpq reads ~/.pgpass or PGPASSFILE", secret=True),
    _S("database", "connect_timeout", "int", 5, "s",
       "libpq connect_timeout, used when the DSN sets none", positive),
    _S("database", "application_name", "str", "pgvisor", "",
       "application_name of pgvisor's connections, used when the DSN sets none"),
    _S("supervisor", "interval", "float", 60.0, "s",
       "period of the verify of all instances (deaths are handled at once)", positive),
    _S("supervisor", "restart_max_rate", "str", "1/m", "restarts/period",
       "automatic restarts allowed per instance: 1/s, 10/m, 2/h or a limits string", rate),
    _S("supervisor", "wait_after_db_revived", "float", 35.0, "s",
       "after the database returns, time given to instances to reconnect before restarts",
       non_negative),
    _S("supervisor", "heartbeat_timeout", "float", 30.0, "s",
       "an instance silent for this long is unresponsive and restarted", positive),
    _S("supervisor", "shutdown_grace", "float", 10.0, "s",
       "on stop, time to finish the current notification before the kill", non_negative),
    _S("supervisor", "probe_interval", "float", 1.0, "s",
       "period of the database monitor's probe", positive),
    _S("supervisor", "probe_timeout", "float", 2.0, "s",
       "a database probe slower than this counts as failed", positive),
    _S("registry", "backend", "str", "file", "",
       "where the desired instances live: ``file`` (the JSON file ``path``, one node) or "
       "``postgres`` (a table in the ``[database]``, shared by several nodes; created and "
       "migrated by the service)", one_of("file", "postgres")),
    _S("registry", "schema", "str", "pgvisor", "",
       "backend postgres: the schema of pgvisor's tables (a quoted identifier, at most 54 "
       "bytes); edits are announced on the channel ``<schema>_registry``", schema_name),
    _S("registry", "path", "path", "registry.json", "",
       "backend file: registry file of desired instances; relative to the config file's "
       "directory"),
    _S("supervisor", "state_dir", "path", None, "",
       "directory of the service's own files (the generated API token ``api.token``); "
       "default: the registry file's directory"),
    _S("registry", "watch", "bool", True, "",
       "backend file: reload the registry when the file changes (backend postgres reloads "
       "on the NOTIFY of every edit and every ``[supervisor] interval``)"),
    _S("failover", "watch_path", "path", None, "",
       "directory watched for failover files (the data directory); must exist"),
    _S("failover", "files", "list",
       ("standby.signal", "recovery.signal", "recovery.conf", "recovery.done"), "",
       "file names whose appearance or removal triggers an immediate role check", file_names),
    _S("failover", "debounce", "float", 0.5, "s",
       "failover file events closer than this are handled as one", non_negative),
    _S("http", "listen", "str", "127.0.0.1:7390", "host:port",
       "address of the HTTP control API; \"\" or \"off\" disables it; a non-loopback "
       "address requires a token", listen_address),
    _S("http", "token_file", "path", None, "",
       "file holding the bearer token required by the API (first line)"),
    _S("http", "token", "str", None, "",
       "bearer token; set it through the environment (see token_file)", secret=True),
    _S("http", "max_body", "int", 65536, "bytes",
       "largest request body accepted", positive),
    _S("http", "token_for_reads", "bool", False, "",
       "GET requests need the token too (/health stays open for probes); mutating "
       "requests always need it"),
    _S("http", "allowed_hosts", "list", (), "",
       "``Host`` header names accepted besides the loopback names and the listen host "
       "(DNS rebinding); ``\"*\"`` accepts any", host_names),
    _S("security", "handler_modules", "list", (), "",
       "module prefixes a spec PUT over HTTP may name as its handler (``\"myapp.\"``: "
       "myapp's submodules; ``\"myapp\"``: myapp and its submodules); empty: any module. "
       "Config file only", module_prefixes),
    _S("cluster", "enabled", "bool", False, "",
       "run as one node of a cluster sharing the database: each instance runs on exactly "
       "one node (docs/multinode.rst); needs ``[registry] backend = \"postgres\"``"),
    _S("cluster", "node_name", "str", None, "",
       "this node's name, unique in the cluster; default: the host name plus a short id "
       "stable for this host and state directory", cluster_name),
    _S("cluster", "dsn", "str", None, "",
       "libpq connection string of the database holding the cluster's tables; it must be "
       "writable (the primary: ``target_session_attrs=read-write`` finds it among several "
       "hosts); the ``[database]`` password applies when it names none; default: the "
       "``[database]`` connection. A node whose ``[database]`` is a standby needs it"),
    _S("cluster", "node_grace", "float", 30.0, "s",
       "a node silent this long loses its instances to the others (more than lease_ttl)",
       positive),
    _S("cluster", "lease_ttl", "float", 10.0, "s",
       "a node's lease on its instances and the leader's on its term, on the database's "
       "clock; a node that cannot renew stops its instances before it runs out", positive),
    _S("logging", "level", "str", "info", "", "debug, info, warning or error",
       one_of(*LEVELS)),
    _S("logging", "format", "str", "text", "", "text or json (one JSON object per line)",
       one_of(*FORMATS)),
)
del _S

BY_NAME = {s.name: s for s in SETTINGS}
SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))
#: Accepted alternative keys (the hermes names): (section, alias) -> key.
ALIASES = {("database", "database"): "dbname"}


def keys_of(section):
    """The keys of one section, in table order."""
    return [s.key for s in SETTINGS if s.section == section]


# -- coercion: raise ValueError(why) ---------------------------------------------------------

def from_toml(setting, value):
    """Check a TOML (or Python) value against the setting's type; return it normalised."""
    kind = setting.type
    if kind in ("str", "path") and isinstance(value, str):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return float(value)
    if kind == "list" and isinstance(value, (list, tuple)):
        if all(isinstance(item, str) for item in value):
            return tuple(value)
        raise ValueError("must be a list of strings")
    raise ValueError("must be %s" % _TYPE_NAMES[kind])


_TYPE_NAMES = {"str": "a string", "path": "a path string", "bool": "true or false",
               "int": "an integer", "float": "a number", "list": "a list of strings"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def from_text(setting, text):
    """Parse an environment variable or command-line string for the setting."""
    kind, stripped = setting.type, text.strip()
    if stripped == "" and setting.default is None:
        return None
    if kind in ("str", "path"):
        return text
    if kind == "bool":
        if stripped.lower() in _TRUE + _FALSE:
            return stripped.lower() in _TRUE
        raise ValueError("must be one of %s" % ", ".join(_TRUE + _FALSE))
    if kind == "list":
        if stripped.startswith("["):
            try:
                return from_toml(setting, json.loads(stripped))
            except json.JSONDecodeError as exc:
                raise ValueError("not a JSON list: %s" % exc) from None
        return tuple(item.strip() for item in stripped.split(",") if item.strip())
    try:
        number = int(stripped) if kind == "int" else float(stripped)
    except ValueError:
        raise ValueError("must be %s" % _TYPE_NAMES[kind]) from None
    return from_toml(setting, number)


# -- generated text ------------------------------------------------------------------------

def render(value):
    """A value as TOML-ish text: strings quoted, lists bracketed, booleans lower case."""
    if value is None:
        return "(none)"
    return json.dumps(list(value) if isinstance(value, tuple) else value)


def _default_text(setting):
    if setting.secret or setting.default is None:
        return "(none)"
    return render(setting.default)


def settings_help():
    """The settings block of ``pgvisor run --help``: key, variable, default, unit, meaning."""
    lines = ["settings (config file key, environment variable, default):"]
    for section in SECTIONS:
        lines.append("  [%s]" % section)
        for s in (s for s in SETTINGS if s.section == section):
            unit = (" %s" % s.unit) if s.unit and s.default is not None else ""
            lines.append("    %-22s %-36s %s%s" % (s.key, s.env, _default_text(s), unit))
            lines.append("        %s" % s.help.replace("``", ""))
    return "\n".join(lines)


def settings_rst():
    """The reference tables of docs/configuration.rst (one list-table per section)."""
    out = []
    for section in SECTIONS:
        out += ["``[%s]``" % section, "-" * (len(section) + 6), "",
                ".. list-table::", "   :header-rows: 1", "   :widths: 18 30 14 8 40", "",
                "   * - key", "     - environment variable", "     - default",
                "     - unit", "     - meaning"]
        for s in (s for s in SETTINGS if s.section == section):
            out += ["   * - ``%s``" % s.key, "     - ``%s``" % s.env,
                    "     - ``%s``" % _default_text(s), "     - %s" % (s.unit or "\\-"),
                    "     - %s" % s.help]
        out.append("")
    return "\n".join(out)
