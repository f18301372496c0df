"""Error strategies: what a component does about an exception (hermes' strategies, fixed).

A strategy answers ``handle_exception(error) -> (expected, action)`` exactly as hermes did,
with hermes' action constants :data:`CONTINUE`, :data:`BACKOFF`, :data:`TERMINATE`. The
answer is a :class:`Handling`, a 2-tuple that also carries ``.name`` (the action's name)
and ``.message`` (a sentence for logs and ``last_error``).

:class:`CommonErrorStrategy` classifies by the translated error's ``kind`` (which
:func:`instances.connectors.translate_error` derives from SQLSTATE and exception class),
never by message text:

- ``ConnectionLost`` (kind "connection"): ``"reconnect"``, ``(True, BACKOFF)``:
  wait, reconnect, LISTEN again.
- ``RoleChanged`` (kind "role"): ``"role_changed"``, ``(True, TERMINATE)``: stop; the
  role check decides whether the instance runs here.
- ``FatalDatabaseError`` (kind "fatal"): ``"fatal"``, ``(False, TERMINATE)``: stop, do not
  retry (authentication, unknown database, invalid DSN).
- any other database error (kind "query"): ``"retry"``, ``(True, BACKOFF)``: wait, try again.
- anything else (a bug, a handler's exception): ``"die"``, ``(False, TERMINATE)``.

Strategies are pure: no I/O, safe from any greenlet.
"""
from instances.connectors import is_database_error, translate_error

#: hermes: retry at once.
CONTINUE = 1
#: hermes: wait (backoff), then retry.
BACKOFF = 2
#: hermes: stop the component.
TERMINATE = 3

RECONNECT, ROLE_CHANGED, FATAL, RETRY, DIE = "reconnect", "role_changed", "fatal", "retry", "die"


class Handling(tuple):
    """``(expected, action)`` as hermes returned it (compares equal to that 2-tuple), plus
    ``.name`` (the action name) and ``.message``."""

    def __new__(cls, expected, action, name, message):
        self = super().__new__(cls, (expected, action))
        self.name = name
        self.message = message
        return self

    def __getnewargs__(self):
        return (self[0], self[1], self.name, self.message)

    expected = property(lambda self: self[0])
    action = property(lambda self: self[1])


class AbstractErrorStrategy:
    """Base class: subclasses implement :meth:`handle_exception`."""

    def handle_exception(self, error):
        """``(expected, action)`` for ``error``: was it an anticipated condition, and which
        of CONTINUE / BACKOFF / TERMINATE the component should do. Must not raise."""
        raise NotImplementedError


class CommonErrorStrategy(AbstractErrorStrategy):
    """The default strategy of pgvisor's listener and processors (see the module table)."""

    #: action name -> (expected, hermes action, message template).
    decisions = {
        RECONNECT: (True, BACKOFF, "database connection lost, reconnecting with backoff: %s"),
        ROLE_CHANGED: (True, TERMINATE, "role changed (server is read-only or in recovery): %s"),
        FATAL: (False, TERMINATE, "fatal database error, retrying will not help: %s"),
        RETRY: (True, BACKOFF, "database error, retrying with backoff: %s"),
        DIE: (False, TERMINATE, "unexpected error: %s"),
    }
    _by_kind = {"connection": RECONNECT, "role": ROLE_CHANGED, "fatal": FATAL, "query": RETRY}

    def action(self, error):
        """The action name for ``error``: ``"reconnect"``, ``"role_changed"``, ``"fatal"``,
        ``"retry"`` (database errors) or ``"die"`` (anything else)."""
        if not is_database_error(error):
            return DIE
        return self._by_kind.get(translate_error(error).kind, RETRY)

    def handle_exception(self, error):
        """A :class:`Handling` for ``error``; its ``message`` names the error (redacted)."""
        name = self.action(error)
        expected, action, template = self.decisions[name]
        shown = translate_error(error) if name != DIE else error
        detail = "%s: %s" % (type(shown).__name__, shown) if name == DIE else str(shown)
        return Handling(expected, action, name, template % detail)

