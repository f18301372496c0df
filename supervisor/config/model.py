"""The service configuration: pgvisor's settings, frozen, and :func:`load_config`.

This module owns :class:`Config` and its per-section settings classes (one frozen dataclass
per ``[section]`` of :mod:`supervisor.config.settings`, with the helpers that read them: the
connection string, the HTTP address, the secrets in force). :func:`load_config` builds one
from the values :class:`supervisor.config.loader.Loader` layers and checks: the default <
the TOML file < its ``PGVISOR_*`` environment variable < explicit overrides (command-line
flags). It collects every problem and raises one InvalidConfigurationException whose message
has one line per problem (``<file>: [section] key = <value>: <why>`` or
``PGVISOR_X=<value>: <why>``), or returns a frozen :class:`Config`. Passwords and tokens are
resolved there and never appear in ``repr``, ``str``, ``to_dict()`` or error messages.

Blocking file reads only (the config, password and token files): call at start-up or on
reload from the main greenlet.
"""
import dataclasses
import os

from instances.connectors import parse_dsn
from instances.dsn import REDACTED, format_dsn, redact_dsn
from supervisor.config import settings
from supervisor.config.loader import Loader, redact_value
from supervisor.config.settings import BY_NAME, SECTIONS, SETTINGS


class _Section:
    """Base of the frozen per-section settings: one attribute per key of the table."""

    def to_dict(self, redact=True):
        """``{key: value}``; with ``redact`` secrets become ``"***"`` and DSNs are masked."""
        out = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if redact and value is not None:
                secret = BY_NAME["%s.%s" % (self._section, field.name)].secret
                value = REDACTED if secret else redact_value(value)
            out[field.name] = list(value) if isinstance(value, tuple) else value
        return out

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join(
            "%s=%r" % item for item in self.to_dict(redact=True).items()))


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
        return format_dsn(redact_dsn(self.connect_params()))


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
SecuritySettings = _section_class("security", _Section)
class _Cluster(_Section):
    def connect_dsn(self, database):
        """The connection string of the cluster's tables, INCLUDING a password: ``dsn``
        with ``database``'s (a DatabaseSettings) password, connect_timeout and
        application_name when it names none; without ``dsn``, ``database``'s own."""
        if self.dsn is None:
            return database.connect_dsn()
        params = parse_dsn(self.dsn)
        for key, value in database.connect_params().items():
            if key in ("password", "connect_timeout", "application_name"):
                params.setdefault(key, value)
        return format_dsn(params)


ClusterSettings = _section_class("cluster", _Cluster)
LoggingSettings = _section_class("logging", _Section)
_CLASSES = dict(zip(SECTIONS, (DatabaseSettings, SupervisorSettings, RegistrySettings,
                               FailoverSettings, HttpSettings, SecuritySettings,
                               ClusterSettings, LoggingSettings), strict=True))


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
    security: SecuritySettings
    cluster: ClusterSettings
    logging: LoggingSettings
    source: str = None
    warnings: tuple = ()

    def to_dict(self, redact=True):
        """``{section: {key: value}}``; see :meth:`_Section.to_dict`."""
        return {section: getattr(self, section).to_dict(redact) for section in SECTIONS}

    def secrets(self):
        """The secret values in force (database passwords, HTTP token): register them with
        :func:`instances.logformat.register_secret` at start-up."""
        found = (self.database.connect_params().get("password"), self.http.token,
                 parse_dsn(self.cluster.dsn).get("password") if self.cluster.dsn else None)
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
    loader = Loader(path, environ)
    loader.load_file()
    loader.load_env()
    loader.load_overrides(overrides or {})
    return _build(loader.finish(), loader.path, loader.warnings)


def _build(values, source, warnings):
    """The :class:`Config` of the flat ``{"section.key": value}`` a loader returned."""
    sections = {}
    for section, cls in _CLASSES.items():
        prefix = section + "."
        sections[section] = cls(**{name[len(prefix):]: value for name, value
                                   in values.items() if name.startswith(prefix)})
    return Config(source=source, warnings=tuple(warnings), **sections)


def settings_help():
    """Text for ``pgvisor run --help``: every setting with key, variable, default, unit."""
    return settings.settings_help()
