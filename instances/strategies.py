"""Error strategies: what a component does about an exception (hermes' strategies, fixed).

A strategy is any object with ONE method, ``handle_exception(error) -> (expected,
message)`` (hermes' documented contract): was the error anticipated, and a sentence for
logs and ``last_error``. :func:`read_answer` is how a component turns that answer into what
it does next, so nothing else is asked of a strategy:

==========================================  ===============  =================================
answer                                      action           the component
==========================================  ===============  =================================
a :class:`Handling` (``.name`` says it)     its ``.name``    see below
``(expected, CONTINUE)`` (hermes)           ``"continue"``   retries at once (backs off if
                                                             the retry fails again)
``(expected, BACKOFF)`` (hermes)            ``"retry"``      waits the backoff, retries
``(True, TERMINATE)`` (hermes)              ``"terminate"``  ends (a warning): its owner
                                                             decides (role check, restart)
``(False, TERMINATE)`` (hermes)             ``"die"``        ends (an error with traceback)
``(True, "message")``                       ``"retry"``      waits the backoff, retries
``(False, "message")``                      ``"die"``        ends (an error with traceback)
==========================================  ===============  =================================

A :class:`Handling` is the 2-tuple ``(expected, message)`` plus ``.action`` (hermes'
constant :data:`CONTINUE`, :data:`BACKOFF` or :data:`TERMINATE`) and ``.name`` (the action
name). A hermes strategy answering ``(expected, action)`` works unchanged.

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

Strategies are pure: no I/O, safe from any greenlet. This module imports the psycopg2
adapter only when :class:`CommonErrorStrategy` first classifies an error, so a component
with a strategy of its own never loads the driver.
"""

#: hermes: retry at once.
CONTINUE = 1
#: hermes: wait (backoff), then retry.
BACKOFF = 2
#: hermes: stop the component.
TERMINATE = 3

RECONNECT, ROLE_CHANGED, FATAL, RETRY, DIE = "reconnect", "role_changed", "fatal", "retry", "die"
#: Action names of hermes' CONTINUE and of an expected TERMINATE.
RETRY_NOW, END = "continue", "terminate"
#: Actions after which a component tears down, (waits) and sets up again.
RETRY_ACTIONS = frozenset((RECONNECT, RETRY, RETRY_NOW))
#: Actions that end a component; an answer read as anything else counts as "die".
END_ACTIONS = frozenset((ROLE_CHANGED, FATAL, DIE, END))
#: The action name of a hermes constant (an expected TERMINATE; unexpected is "die").
_HERMES_NAMES = {CONTINUE: RETRY_NOW, BACKOFF: RETRY, TERMINATE: END}


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


def read_answer(answer, error):
    """A strategy's ``handle_exception`` answer as a :class:`Handling` whose ``.name`` is
    in :data:`RETRY_ACTIONS` or :data:`END_ACTIONS` (see the module's table); the message
    names ``error`` when the answer gives none. Raises TypeError for an answer that is not
    a pair. Pure."""
    if isinstance(answer, (str, bytes)):
        raise TypeError("a strategy answered %r, not (expected, message)" % (answer,))
    expected, second = answer
    expected, name = bool(expected), getattr(answer, "name", None)
    hermes = second if type(second) is int and second in _HERMES_NAMES else None
    if name is None and hermes is not None:
        name = _HERMES_NAMES[hermes] if expected or hermes != TERMINATE else DIE
    elif name is None:
        name = RETRY if expected else DIE
    if name not in RETRY_ACTIONS and name not in END_ACTIONS:
        name = DIE
    message = second if isinstance(second, str) and second else "%s: %s" % (
        type(error).__name__, error)
    action = getattr(answer, "action", hermes)
    if action is None:
        action = BACKOFF if name in RETRY_ACTIONS else TERMINATE
    return Handling(expected, action, name, message)


class AbstractErrorStrategy:
    """Base class: subclasses implement :meth:`handle_exception`, the only method a
    component calls."""

    def handle_exception(self, error):
        """``(expected, message)`` for ``error``: was it an anticipated condition, and what
        to log about it (a :class:`Handling` also says the action; hermes' ``(expected,
        CONTINUE | BACKOFF | TERMINATE)`` works too). Must not raise."""
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
        from instances.connectors import is_database_error, translate_error  # see module
        if not is_database_error(error):
            return DIE
        return self._by_kind.get(translate_error(error).kind, RETRY)

    def handle_exception(self, error):
        """A :class:`Handling` for ``error``; its ``message`` names the error (redacted)."""
        from instances.connectors import translate_error  # see module
        name = self.action(error)
        expected, action, template = self.decisions[name]
        shown = translate_error(error) if name != DIE else error
        detail = "%s: %s" % (type(shown).__name__, shown) if name == DIE else str(shown)
        return Handling(expected, action, name, template % detail)
