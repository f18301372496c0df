"""The exception hierarchy of pgvisor.

Everything pgvisor raises on purpose derives from :class:`PgvisorError`. Driver errors are
translated where they enter (``instances.connectors``) into the database classes below, so
policy code never inspects psycopg2 exceptions or English message text.

::

    PgvisorError
     +-- InvalidConfigurationException   (also a ValueError: bad spec, config, input)
     +-- RegistryError                   (the registry file cannot be read or written)
     +-- DatabaseError                   (carries .sqlstate and .kind)
          +-- ConnectionLost             (08xxx, 57P01..57P03, socket gone: reconnect)
          +-- RoleChanged                (25006, in recovery: the role changed)
          +-- FatalDatabaseError         (auth, unknown database, bad DSN: fail fast)
"""


class PgvisorError(Exception):
    """Base class of every error pgvisor raises on purpose."""


class InvalidConfigurationException(PgvisorError, ValueError):
    """A value given by a user or operator is invalid.

    ``field`` names the offending field and ``value`` the value given, when known; the
    message always names both.
    """

    def __init__(self, message, field=None, value=None):
        super().__init__(message)
        self.field = field
        self.value = value


class RegistryError(PgvisorError):
    """The registry file cannot be read, parsed or written."""


class DatabaseError(PgvisorError):
    """A database error, translated at the connector boundary.

    ``sqlstate`` is the five-character SQLSTATE when the server sent one, else None.
    ``kind`` is one of ``"connection"``, ``"role"``, ``"fatal"``, ``"query"``.
    """

    kind = "query"

    def __init__(self, message, sqlstate=None):
        super().__init__(message)
        self.sqlstate = sqlstate


class ConnectionLost(DatabaseError):
    """The connection is gone or the server is unavailable: wait and reconnect."""

    kind = "connection"


class RoleChanged(DatabaseError):
    """The server is (now) read-only or in recovery: the role changed."""

    kind = "role"


class FatalDatabaseError(DatabaseError):
    """Authentication, a missing database or an invalid DSN: retrying will not help."""

    kind = "fatal"
