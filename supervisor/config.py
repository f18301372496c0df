"""The service configuration: load, validate and hold pgvisor's settings.

:func:`load_config` layers, for every setting of :mod:`supervisor.settings`: the default <
the TOML file < its ``PGVISOR_*`` environment variable < explicit overrides (command-line
flags). It collects every problem and raises one InvalidConfigurationException whose message
has one line per problem (``<file>: [section] key = <value>: <why>`` or
``PGVISOR_X=<value>: <why>``), or returns a frozen :class:`Config`. Passwords and tokens are
resolved here and never appear in ``repr``, ``str``, ``to_dict()`` or error messages.

Blocking file reads only (the config, password and token files): call at start-up or on
reload from the main greenlet. DSNs are parsed by libpq through
:func:`instances.connectors.parse_dsn`, the connector's own parser.
"""
import dataclasses
import difflib
import logging
import os
import stat
import sys

from instances.connectors import parse_dsn
from instances.dsn import format_dsn
from instances.exceptions import InvalidConfigurationException
from supervisor import logs, settings
from supervisor.settings import BY_NAME, SECTIONS, SETTINGS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)
_SECRET_HINT = ("pass", "pwd", "token", "secret")


class _Section:
    """Base of the frozen per-section settings: one attribute per key of the table."""

    def to_dict(self, redact=True):
        """``{key: value}``; with ``redact`` secrets become ``"***"`` and DSNs are masked."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if redact and value is not None:
                secret = BY_NAME["%s.%s" % (self._section, field.name)].secret
                value = logs.MASK if secret else _redact(value)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % item for item in self.to_dict(redact=True).items()))


def _redact(value):
    return logs.redact(value) if isinstance(value, str) else value


class _Database(_Section):
    def connect_params(self):
        """libpq keywords for the connector, INCLUDING the password: never log them.

        The DSN's keys, overridden by host/port/dbname/user and the resolved password;
        connect_timeout and application_name apply when the DSN sets none.
        """
        params = parse_dsn(self.dsn) if self.dsn else {}
        for key in ("host", "port", "dbname", "user", "password"):
            if getattr(self, key) is not None:
                params[key] = str(getattr(self, key))
        params.setdefault("connect_timeout", str(self.connect_timeout))
        params.setdefault("application_name", self.application_name)
        return params

    def connect_dsn(self):
        """The libpq connection string for the connector, INCLUDING the password."""
        return format_dsn(self.connect_params())

    def display_dsn(self):
        """The connection string with the password masked, for logs and status."""
        params = self.connect_params()
        if "password" in params:
            params["password"] = logs.MASK
        return format_dsn(params)


class _Http(_Section):
    @property
    def address(self):
        """``(host, port)`` to bind, or None when the API is disabled."""
        return None if self.listen is None else settings.split_listen(self.listen)


def _section_class(section, base):
    fields = [(s.key, object, dataclasses.field(default=s.default))
              for s in SETTINGS if s.section == section]
    name = "%sSettings" % section.capitalize()
    cls = dataclasses.make_dataclass(name, fields, bases=(base,), frozen=True, repr=False,
                                     namespace={"_section": section, "__module__": __name__})
    cls.__doc__ = "The ``[%s]`` settings (frozen): %s." % (
        section, ", ".join(settings.keys_of(section)))
    return cls


DatabaseSettings = _section_class("database", _Database)
SupervisorSettings = _section_class("supervisor", _Section)
RegistrySettings = _section_class("registry", _Section)
FailoverSettings = _section_class("failover", _Section)
HttpSettings = _section_class("http", _Http)
LoggingSettings = _section_class("logging", _Section)
_CLASSES = dict(zip(SECTIONS, (DatabaseSettings, SupervisorSettings, RegistrySettings,
                               FailoverSettings, HttpSettings, LoggingSettings), strict=True))


@dataclasses.dataclass(frozen=True, repr=False)
class Config:
    """The whole configuration, frozen: ``cfg.supervisor.interval``, ``cfg.database.dsn``...

    ``source`` is the config file's absolute path (None without one); ``warnings`` the
    warnings load_config logged (a password in the file, a too-open password file...).
    """

    database: DatabaseSettings
    supervisor: SupervisorSettings
    registry: RegistrySettings
    failover: FailoverSettings
    http: HttpSettings
    logging: LoggingSettings
    source: str = None
    warnings: tuple = ()

    def to_dict(self, redact=True):
        """``{section: {key: value}}``; see :meth:`_Section.to_dict`."""
        return {section: getattr(self, section).to_dict(redact) for section in SECTIONS}

    def secrets(self):
        """The secret values in force (database password, HTTP token): register them with
        :func:`supervisor.logs.register_secret` at start-up."""
        found = (self.database.connect_params().get("password"), self.http.token)
        return tuple(value for value in found if value)

    def __repr__(self):
        return "Config(source=%r, %s)" % (self.source, ", ".join(
            "%s=%r" % (section, getattr(self, section)) for section in SECTIONS))


def load_config(path=None, environ=os.environ, overrides=None):
    """Load, validate and return the :class:`Config`; raise InvalidConfigurationException.

    ``overrides`` maps ``"section.key"`` (or ``{section: {key: value}}``) to typed values
    or strings parsed like environment variables; None values are ignored (flags not given).
    The exception's message has one line per problem; ``.problems`` holds the lines,
    ``.field``/``.value`` the first problem's setting and (redacted) value.
    """
    loader = _Loader(path, environ)
    loader.load_file()
    loader.load_env()
    loader.load_overrides(overrides or {})
    return loader.finish()


class _Entry:
    __slots__ = ("value", "origin", "raw")

    def __init__(self, value, origin, raw=None):
        self.value, self.origin, self.raw = value, origin, raw


class _Loader:
    """The state of one load: the entries per setting, the problems, the warnings."""

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
            shown = logs.MASK if setting.secret else logs.redact(entry.raw)
            line = "%s=%s: %s" % (setting.env, shown, why)
        else:
            value = entry.value if entry.raw is None else entry.raw
            shown = logs.MASK if setting.secret and value is not None else \
                logs.redact(settings.render(value))
            where = {"override": "command line", "file": self.path}.get(
                entry.origin, self.path or "configuration")
            line = "%s: [%s] %s = %s: %s" % (where, setting.section, setting.key, shown, why)
        self.problems.append(line)
        self.fields.append((name, logs.MASK if setting.secret else _redact(entry.value)))

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
            shown = logs.MASK if near_secret or any(h in key.lower() for h in _SECRET_HINT) \
                else logs.redact(settings.render(value))
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
        path = values["failover.watch_path"]
        if path is not None and not os.path.isdir(path):
            self.problem("failover.watch_path", "no such directory: %s" % path)
        if self.problems:
            field, value = self.fields[0]
            error = InvalidConfigurationException("\n".join(self.problems), field, value)
            error.problems = tuple(self.problems)
            raise error
        return self.build(values)

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
        except (OSError, UnicodeDecodeError) as exc:
            self.problem(file_name, "cannot read: %s" % (exc.strerror or exc))
            return
        if not secret:
            self.problem(file_name, "the file is empty")
            return
        if mode & 0o077:
            self.warn("%s %s is readable by group or others (mode %04o); chmod 600 it"
                      % (file_name, path, mode))
        values[value_name] = secret

    def build(self, values):
        sections = {}
        for section, cls in _CLASSES.items():
            prefix = section + "."
            sections[section] = cls(**{name[len(prefix):]: value for name, value
                                       in values.items() if name.startswith(prefix)})
        return Config(source=self.path, warnings=tuple(self.warnings), **sections)


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


def settings_help():
    """Text for ``pgvisor run --help``: every setting with key, variable, default, unit."""
    return settings.settings_help()
