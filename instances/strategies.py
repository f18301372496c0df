"""Error strategies: what a component does about an exception (hermes' strategies, fixed).

A strategy answers ``handle_exception(error) -> (expected, message)`` (DESIGN.md's
contract): was the error anticipated, and a sentence for logs and ``last_error``. The answer
is a :class:`Handling`, that 2-tuple plus ``.action`` (hermes' constant :data:`CONTINUE`,
:data:`BACKOFF` or :data:`TERMINATE`, which hermes returned in the message's place) and
``.name`` (the action's name). Components read only ``[0]`` and ``.message``, so a hermes
strategy returning ``(expected, action)`` keeps working.

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
    """``(expected, message)`` (compares equal to that 2-tuple), plus ``.action`` (hermes'
    CONTINUE / BACKOFF / TERMINATE) and ``.name`` (the action name)."""

    def __new__(cls, expected, action, name, message):
        self = super().__new__(cls, (expected, message))
        self.name = name
        self.action = action
        return self

    def __getnewargs__(self):
        return (self[0], self.action, self.name, self[1])

    expected = property(lambda self: self[0])
    message = property(lambda self: self[1])


class AbstractErrorStrategy:
    """Base class: subclasses implement :meth:`handle_exception`."""

    def handle_exception(self, error):
        """``(expected, message)`` for ``error``: was it an anticipated condition, and what
        to log about it (a :class:`Handling` also says the action). Must not raise."""
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

