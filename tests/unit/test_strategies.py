"""Error translation and CommonErrorStrategy, fed with real psycopg2 exception objects and
translated pgvisor errors (no database)."""
import psycopg2
import psycopg2.errors
import pytest

from instances.connectors import CONNECT_SQLSTATE_ATTR, translate_error
from instances.exceptions import (
    ConnectionLost,
    DatabaseError,
    FatalDatabaseError,
    InvalidConfigurationException,
    RoleChanged,
)
from instances.strategies import (
    BACKOFF,
    CONTINUE,
    TERMINATE,
    AbstractErrorStrategy,
    CommonErrorStrategy,
    Handling,
    read_answer,
)


def sqlstate_error(code, message="boom"):
    """A psycopg2 error of the class psycopg2 raises for ``code`` (its pgcode stays None:
    psycopg2 only sets it from a server result, so the class must carry the SQLSTATE)."""
    return psycopg2.errors.lookup(code)(message)


def connect_error(code, message="FATAL:  boom"):
    """An OperationalError as the connector's wait callback marks connect-time failures."""
    exc = psycopg2.OperationalError(message)
    setattr(exc, CONNECT_SQLSTATE_ATTR, code)
    return exc


CASES = [
    # (id, error, translated class, sqlstate, action, (expected, hermes action))
    ("admin_shutdown", sqlstate_error("57P01"), ConnectionLost, "57P01", "reconnect",
     (True, BACKOFF)),
    ("crash_shutdown", sqlstate_error("57P02"), ConnectionLost, "57P02", "reconnect",
     (True, BACKOFF)),
    ("cannot_connect_now", sqlstate_error("57P03"), ConnectionLost, "57P03", "reconnect",
     (True, BACKOFF)),
    ("connection_failure", sqlstate_error("08006"), ConnectionLost, "08006", "reconnect",
     (True, BACKOFF)),
    ("protocol_violation", sqlstate_error("08P01"), ConnectionLost, "08P01", "reconnect",
     (True, BACKOFF)),
    ("server_closed_no_pgcode", psycopg2.OperationalError("server closed the connection"),
     ConnectionLost, None, "reconnect", (True, BACKOFF)),
    ("connection_already_closed", psycopg2.InterfaceError("connection already closed"),
     ConnectionLost, None, "reconnect", (True, BACKOFF)),
    ("starting_up_at_connect", connect_error("57P03"), ConnectionLost, "57P03", "reconnect",
     (True, BACKOFF)),
    ("too_many_clients_at_connect", connect_error("53300"), ConnectionLost, "53300",
     "reconnect", (True, BACKOFF)),
    ("read_only_transaction", sqlstate_error("25006"), RoleChanged, "25006", "role_changed",
     (True, TERMINATE)),
    ("wrong_password", connect_error("28P01"), FatalDatabaseError, "28P01", "fatal",
     (False, TERMINATE)),
    ("no_hba_entry", connect_error("28000"), FatalDatabaseError, "28000", "fatal",
     (False, TERMINATE)),
    ("unknown_database", connect_error("3D000"), FatalDatabaseError, "3D000", "fatal",
     (False, TERMINATE)),
    ("no_connect_privilege", connect_error("42501"), FatalDatabaseError, "42501", "fatal",
     (False, TERMINATE)),
    ("auth_class_at_query_time", sqlstate_error("28P01"), FatalDatabaseError, "28P01",
     "fatal", (False, TERMINATE)),
    ("database_dropped", sqlstate_error("57P04"), FatalDatabaseError, "57P04", "fatal",
     (False, TERMINATE)),
    ("syntax_error", sqlstate_error("42601"), DatabaseError, "42601", "retry",
     (True, BACKOFF)),
    ("privilege_at_query_time", sqlstate_error("42501"), DatabaseError, "42501", "retry",
     (True, BACKOFF)),
    ("unique_violation", sqlstate_error("23505"), DatabaseError, "23505", "retry",
     (True, BACKOFF)),
    ("translated_connection_lost", ConnectionLost("gone", "57P01"), ConnectionLost, "57P01",
     "reconnect", (True, BACKOFF)),
    ("translated_role_changed", RoleChanged("ro", "25006"), RoleChanged, "25006",
     "role_changed", (True, TERMINATE)),
    ("translated_fatal", FatalDatabaseError("auth"), FatalDatabaseError, None, "fatal",
     (False, TERMINATE)),
]


@pytest.mark.parametrize("error, cls, sqlstate", [c[1:4] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_translate_error_classifies_by_sqlstate_and_class(error, cls, sqlstate):
    translated = translate_error(error)
    assert type(translated) is cls
    assert translated.sqlstate == sqlstate


@pytest.mark.parametrize("error, action, handling", [(c[1], c[4], c[5]) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_common_strategy_maps_each_class_to_its_action(error, action, handling):
    strategy = CommonErrorStrategy()
    assert strategy.action(error) == action
    result = strategy.handle_exception(error)
    assert (result.expected, result.action) == handling
    expected, message = result  # DESIGN.md: handle_exception(error) -> (expected, message)
    assert (result.name, result.expected, result.message) == (action, expected, message)
    assert isinstance(message, str) and message


def test_classification_ignores_the_message_text():
    # hermes matched (misspelled) English words; the text must make no difference here.
    lying = sqlstate_error("42601", "server terminated abnormally: libpq connection lost")
    assert CommonErrorStrategy().action(lying) == "retry"
    lying = sqlstate_error("57P01", "syntax error at or near SELECT")
    assert CommonErrorStrategy().action(lying) == "reconnect"


def test_invalid_dsn_is_fatal_only_when_connecting():
    error = psycopg2.ProgrammingError('invalid dsn: invalid connection option "foo"')
    assert type(translate_error(error, connecting=True)) is FatalDatabaseError
    assert type(translate_error(error)) is DatabaseError


def test_any_server_error_while_connecting_is_fatal_unless_unavailability():
    assert type(translate_error(sqlstate_error("0A000"), connecting=True)) is FatalDatabaseError
    assert type(translate_error(sqlstate_error("08001"), connecting=True)) is ConnectionLost


@pytest.mark.parametrize("error", [ValueError("bad"), KeyError("k"), RuntimeError("x"),
                                   InvalidConfigurationException("bad", "f", "v")])
def test_other_exceptions_die_unexpectedly(error):
    strategy = CommonErrorStrategy()
    assert strategy.action(error) == "die"
    result = strategy.handle_exception(error)
    assert (result.expected, result.action) == (False, TERMINATE)
    assert type(error).__name__ in result.message


def test_messages_say_what_happened_and_keep_the_sqlstate():
    strategy = CommonErrorStrategy()
    assert "role changed" in strategy.handle_exception(sqlstate_error("25006")).message
    fatal = strategy.handle_exception(connect_error("28P01", "FATAL:  28P01: password ..."))
    assert "fatal" in fatal.message and "28P01" in fatal.message


def test_translation_redacts_given_secrets():
    error = psycopg2.ProgrammingError('invalid dsn: missing "=" after "hunter2"')
    translated = translate_error(error, connecting=True, secrets=["hunter2"])
    assert "hunter2" not in str(translated) and "***" in str(translated)


def test_translate_error_never_raises_on_odd_input():
    class Weird(Exception):
        def __str__(self):
            return ""

    assert isinstance(translate_error(Weird()), DatabaseError)
    assert type(translate_error(OSError(9, "bad fd"))) is ConnectionLost


def test_hermes_constants_and_abstract_strategy():
    assert (CONTINUE, BACKOFF, TERMINATE) == (1, 2, 3)
    with pytest.raises(NotImplementedError):
        AbstractErrorStrategy().handle_exception(ValueError())
    handling = Handling(True, BACKOFF, "retry", "m")
    assert handling == (True, "m") and handling.action == BACKOFF and handling.name == "retry"


@pytest.mark.parametrize("answer, name, expected, message", [
    ((True, CONTINUE), "continue", True, "ValueError: bad"),
    ((False, CONTINUE), "continue", False, "ValueError: bad"),
    ((True, BACKOFF), "retry", True, "ValueError: bad"),
    ((True, TERMINATE), "terminate", True, "ValueError: bad"),
    ((False, TERMINATE), "die", False, "ValueError: bad"),
    ((True, "it happens"), "retry", True, "it happens"),
    ((False, "a bug"), "die", False, "a bug"),
    ((1, ""), "retry", True, "ValueError: bad"),
    ((True, 7), "retry", True, "ValueError: bad"),  # not a hermes constant: a message-less yes
    ((True, True), "retry", True, "ValueError: bad"),  # a bool is not hermes' CONTINUE
    (Handling(True, BACKOFF, "reconnect", "lost"), "reconnect", True, "lost"),
    (Handling(True, TERMINATE, "nonsense", "odd"), "die", True, "odd"),
])
def test_read_answer_maps_every_answer_form_to_an_action(answer, name, expected, message):
    handling = read_answer(answer, ValueError("bad"))
    assert (handling.name, handling.expected, handling.message) == (name, expected, message)
    assert handling == (expected, message)  # DESIGN.md: (expected, message)
    assert handling.action in (CONTINUE, BACKOFF, TERMINATE)


@pytest.mark.parametrize("answer", [None, (True,), (True, "a", "b"), "ok"])
def test_read_answer_refuses_what_is_not_a_pair(answer):
    with pytest.raises((TypeError, ValueError)):
        read_answer(answer, ValueError("bad"))


def test_the_common_strategy_answer_reads_as_its_own_action():
    strategy = CommonErrorStrategy()
    for error in (sqlstate_error("57P01"), sqlstate_error("25006"), ValueError("x")):
        assert read_answer(strategy.handle_exception(error), error).name == \
            strategy.action(error)
