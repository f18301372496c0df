"""The configuration loader: one load of pgvisor's settings, layer by layer.

:class:`Loader` layers, for every setting of :mod:`supervisor.config.settings`: the default < the
TOML file < its ``PGVISOR_*`` environment variable < explicit overrides (command-line flags),
then checks every value and the rules between them, reads the password and token files, and
collects every problem as one line (``<file>: [section] key = <value>: <why>`` or
``PGVISOR_X=<value>: <why>``) with secrets masked. It returns flat validated values;
:func:`supervisor.config.load_config` drives it and builds the frozen
:class:`~supervisor.config.Config`.

Blocking file reads only (the config, password and token files): call at start-up or on
reload from the main greenlet. DSNs are parsed by libpq through
:func:`instances.connectors.parse_dsn`, the connector's own parser.
"""
import difflib
import logging
import os
import stat
import sys

from instances import logformat
from instances.connectors import parse_dsn
from instances.dsn import REDACTED
from instances.exceptions import InvalidConfigurationException
from supervisor.config import settings
from supervisor.config.settings import BY_NAME, SECTIONS, SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
_SECRET_HINT = ("pass", "pwd", "token", "secret")


def redact_value(value):
    """``value`` with any secret in a string redacted (non-strings unchanged)."""
    return logformat.redact(value) if isinstance(value, str) else value


class _Entry:
    __slots__ = ("value", "origin", "raw")

    def __init__(self, value, origin, raw=None):
        self.value, self.origin, self.raw = value, origin, raw


class Loader:
    """The state of one load: the entries per setting, the problems, the warnings.

    Use: :meth:`load_file`, :meth:`load_env`, :meth:`load_overrides`, then :meth:`finish`.
    """

    def __init__(self, path, environ):
        self.path = os.path.abspath(path) if path is not None else None
        self.environ = environ
        self.entries = {s.name: _Entry(s.default, "default") for s in SETTINGS}
        self.problems, self.fields, self.warnings = [], [], []

    # -- reporting ---------------------------------------------------------------------
    def problem(self, name, why, entry=None):
        entry = entry or self.entries[name]
        setting = BY_NAME[name]
        if entry.origin == "env":
            shown = REDACTED if setting.secret else logformat.redact(entry.raw)
            line = "%s=%s: %s" % (setting.env, shown, why)
        else:
            value = entry.value if entry.raw is None else entry.raw
            shown = REDACTED if setting.secret and value is not None else \
                logformat.redact(settings.render(value))
            where = {"override": "command line", "file": self.path}.get(
                entry.origin, self.path or "configuration")
            line = "%s: [%s] %s = %s: %s" % (where, setting.section, setting.key, shown, why)
        self.problems.append(line)
        self.fields.append((name, REDACTED if setting.secret else redact_value(entry.value)))

    def warn(self, message):
        self.warnings.append(message)
        log.warning("%s", message, extra={"action": "config.warning"})

    # -- layers --------------------------------------------------------------------------
    def load_file(self):
        if self.path is None:
            return
        try:
            with open(self.path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            self.problems.append("%s: cannot load: %s" % (self.path, exc))
            self.fields.append((None, None))
            return
        except UnicodeDecodeError as exc:
            self.problems.append("%s: cannot load: not UTF-8 text (byte 0x%02x at offset "
                                 "%d): a TOML file is UTF-8" % (
                                     self.path, exc.object[exc.start], exc.start))
            self.fields.append((None, None))
            return
        for section, table in data.items():
            if not isinstance(table, dict):
                self.unknown("%s: a setting outside any [section]" % section, section)
            elif section not in SECTIONS:
                hint = _suggest(section, SECTIONS, "[%s]")
                self.unknown("[%s]: unknown section%s" % (section, hint), section)
            else:
                for key, value in table.items():
                    self.load_file_key(section, key, value)

    def load_file_key(self, section, key, value):
        name = "%s.%s" % (section, settings.ALIASES.get((section, key), key))
        if name not in BY_NAME:
            hint = _suggest(key, settings.keys_of(section), "%s")
            near_secret = any(s.secret and s.key in hint for s in SETTINGS
                              if s.section == section)
            shown = REDACTED if near_secret or any(h in key.lower() for h in _SECRET_HINT) \
                else logformat.redact(settings.render(value))
            self.unknown("[%s] %s = %s: unknown key%s" % (section, key, shown, hint), name)
            return
        entry = _Entry(value, "file", value)
        if self.entries[name].origin == "file":
            self.problem(name, "set twice (%s is an alias)" % key, entry)
            return
        self.set(name, entry, settings.from_toml)
        if BY_NAME[name].secret:
            self.warn("%s: [%s] %s: a secret in the config file; prefer %s_file or %s"
                      % (self.path, section, key, key, BY_NAME[name].env))

    def unknown(self, text, field):
        self.problems.append("%s: %s" % (self.path, text))
        self.fields.append((field, None))

    def load_env(self):
        known = {s.env: s for s in SETTINGS}
        for var, raw in self.environ.items():
            if var in known:
                self.set(known[var].name, _Entry(raw, "env", raw), settings.from_text)
            elif var.startswith("PGVISOR_"):
                hint = _suggest(var, known, "%s", cutoff=0.85)
                if hint:
                    self.warn("%s is not a pgvisor setting, ignored%s" % (var, hint))

    def load_overrides(self, overrides):
        for name, value in _flatten(overrides):
            if value is None:
                continue
            if name not in BY_NAME:
                hint = _suggest(name, BY_NAME, "%s")
                self.problems.append("command line: %s: unknown setting%s" % (name, hint))
                self.fields.append((name, None))
                continue
            parse = settings.from_text if isinstance(value, str) else settings.from_toml
            self.set(name, _Entry(value, "override", value), parse)

    def set(self, name, entry, parse):
        try:
            entry.value = parse(BY_NAME[name], entry.value)
        except ValueError as exc:
            self.problem(name, str(exc), entry)
            entry.value = None
        self.entries[name] = entry

    # -- checks and result ---------------------------------------------------------------
    def finish(self):
        """Check every value; return ``{"section.key": value}`` (secrets read from their
        files) or raise one InvalidConfigurationException listing every problem."""
        self.resolve_paths()
        for name, entry in self.entries.items():
            check = BY_NAME[name].validate
            if check is not None and entry.value is not None:
                try:
                    check(entry.value)
                except ValueError as exc:
                    self.problem(name, str(exc))
        values = {name: entry.value for name, entry in self.entries.items()}
        self.check_database(values)
        self.check_http(values)
        self.check_cluster(values)
        path = values["failover.watch_path"]
        if path is not None and not os.path.isdir(path):
            self.problem("failover.watch_path", "no such directory: %s" % path)
        if self.problems:
            field, value = self.fields[0]
            error = InvalidConfigurationException("\n".join(self.problems), field, value)
            error.problems = tuple(self.problems)
            raise error
        return values

    def resolve_paths(self):
        """Paths from the file (and the default registry path) are relative to its
        directory; from the environment or command line, to the working directory."""
        base = os.path.dirname(self.path) if self.path else os.getcwd()
        for name, entry in self.entries.items():
            if BY_NAME[name].type == "path" and entry.value is not None:
                value = os.path.expanduser(entry.value)
                relative_to = base if entry.origin in ("file", "default") else os.getcwd()
                entry.value = os.path.normpath(os.path.join(relative_to, value))

    def check_database(self, values):
        fields = ("database.host", "database.port", "database.dbname", "database.user")
        dsn = values["database.dsn"]
        if dsn is None and all(values[name] is None for name in fields):
            self.problem("database.dsn", "required unless [database] host or dbname are "
                         "given (or set PGVISOR_DATABASE_DSN)")
        elif dsn is not None:
            try:
                parsed = parse_dsn(dsn)
            except InvalidConfigurationException as exc:  # libpq's reason, redacted
                why = str(exc).rpartition(" is invalid: ")[2]
                self.problem("database.dsn", "not a libpq connection string: %s" % why)
            else:
                if "password" in parsed and self.entries["database.dsn"].origin == "file":
                    self.warn("%s: [database] dsn: a password in the config file; prefer "
                              "password_file or PGVISOR_DATABASE_PASSWORD" % self.path)
        self.read_secret_file(values, "database.password_file", "database.password")

    def check_http(self, values):
        self.read_secret_file(values, "http.token_file", "http.token")
        listen = values["http.listen"]
        if listen is not None and listen.strip().lower() in settings.DISABLED_LISTEN:
            values["http.listen"] = None
        elif listen is not None and values["http.token"] is None \
                and values["http.token_file"] is None:
            try:
                host, _ = settings.split_listen(listen)
            except ValueError:
                return  # reported by the validator
            if not settings.is_loopback(host):
                self.problem("http.listen", "refusing to bind %s without [http] token_file "
                             "or PGVISOR_HTTP_TOKEN" % listen)

    def check_cluster(self, values):
        """Every node reads one registry (the table); a node is judged dead only after its
        lease ran out: node_grace > lease_ttl."""
        if values["cluster.enabled"] and values["registry.backend"] != "postgres":
            self.problem("cluster.enabled", "needs [registry] backend = \"postgres\" (every "
                         "node must read the same registry), not %r"
                         % values["registry.backend"])
        if values["cluster.dsn"] is not None:
            try:
                parse_dsn(values["cluster.dsn"])
            except InvalidConfigurationException as exc:  # libpq's reason, redacted
                self.problem("cluster.dsn", "not a libpq connection string: %s"
                             % str(exc).rpartition(" is invalid: ")[2])
        grace, ttl = values["cluster.node_grace"], values["cluster.lease_ttl"]
        if values["cluster.enabled"] and grace is not None and ttl is not None \
                and grace <= ttl:
            self.problem("cluster.node_grace", "must be greater than [cluster] lease_ttl "
                         "(%g s): a node is judged dead only after its lease ran out" % ttl)

    def read_secret_file(self, values, file_name, value_name):
        """The first of (file, variable, config value) wins; a file open to group or
        others is accepted with a warning."""
        path = values[file_name]
        if path is None:
            return
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
            with open(path, encoding="utf-8") as f:
                secret = f.read().rstrip("\r\n")
        except OSError as exc:
            self.problem(file_name, "cannot read: %s" % (exc.strerror or exc))
            return
        except UnicodeDecodeError as exc:
            self.problem(file_name, "not UTF-8 text (byte 0x%02x at offset %d)" % (
                exc.object[exc.start], exc.start))
            return
        if not secret:
            self.problem(file_name, "the file is empty")
            return
        if mode & 0o077:
            self.warn("%s %s is readable by group or others (mode %04o); chmod 600 it"
                      % (file_name, path, mode))
        values[value_name] = secret


def _suggest(word, choices, form, cutoff=0.6):
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return "; did you mean %s?" % (form % match[0]) if match else ""


def _flatten(overrides):
    for name, value in overrides.items():
        if isinstance(value, dict):
            for key, item in value.items():
                yield "%s.%s" % (name, key), item
        else:
            yield name, value
