"""Logging: the text and JSON-lines formats, and the redaction of passwords from messages,
arguments, extra values and tracebacks."""
import io
import json
import logging
import re

import pytest

from instances import logformat
from instances.exceptions import InvalidConfigurationException
from supervisor import logs


@pytest.fixture
def capture():
    """Configure pgvisor's handler onto a StringIO; yield a function returning the output."""
    root = logging.getLogger()
    level = root.level
    streams = {}

    def install(fmt="text", level="debug"):
        streams["out"] = io.StringIO()
        logs.configure_logging(level=level, fmt=fmt, stream=streams["out"])
        return lambda: streams["out"].getvalue()

    yield install
    for handler in [h for h in root.handlers if getattr(h, "_pgvisor", False)]:
        root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def secret():
    value = "Zq-9-unguessable"
    logformat.register_secret(value)
    yield value
    logformat.unregister_secret(value)


log = logging.getLogger("supervisor.actor")
TS = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_text_line_has_timestamp_level_logger_action_instance_and_message(capture):
    output = capture("text")
    log.info("restarted after %s", "abnormal exit",
             extra={"action": "instance.restart", "instance": "river"})
    line = output().rstrip("\n")
    assert re.fullmatch(TS + r" INFO  supervisor\.actor action=instance\.restart "
                        r"instance=river  restarted after abnormal exit", line), line


def test_text_line_without_keys_and_with_a_traceback(capture):
    output = capture("text")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("handler failed")
    first, *rest = output().splitlines()
    assert re.fullmatch(TS + r" ERROR supervisor\.actor  handler failed", first), first
    assert rest[0] == "Traceback (most recent call last):" and rest[-1] == "RuntimeError: boom"


def test_json_lines_parse_and_carry_action_instance_and_extras(capture):
    output = capture("json")
    log.warning("queue at %d", 90, extra={"action": "queue.high", "instance": "river",
                                          "depth": 90, "obj": object()})
    log.debug("tick")
    first, second = [json.loads(line) for line in output().splitlines()]
    assert re.fullmatch(TS, first.pop("ts"))
    assert first == {"level": "WARNING", "logger": "supervisor.actor", "action": "queue.high",
                     "instance": "river", "message": "queue at 90", "exc": None, "depth": 90}
    assert second["action"] is None and second["instance"] is None
    assert second["message"] == "tick" and second["level"] == "DEBUG"


def test_json_line_carries_the_traceback_text(capture):
    output = capture("json")
    try:
        {}["missing"]
    except KeyError:
        log.error("lookup failed", exc_info=True, extra={"action": "x.fail"})
    (record,) = [json.loads(line) for line in output().splitlines()]
    assert record["exc"].startswith("Traceback") and "KeyError: 'missing'" in record["exc"]


def test_level_filters_records(capture):
    output = capture("text", level="warning")
    log.info("hidden")
    log.warning("shown")
    assert "hidden" not in output() and "shown" in output()


def test_configure_is_idempotent_and_validates(capture):
    capture("text")
    capture("json")
    ours = [h for h in logging.getLogger().handlers if getattr(h, "_pgvisor", False)]
    assert len(ours) == 1 and isinstance(ours[0].formatter, logformat.JsonFormatter)
    with pytest.raises(InvalidConfigurationException, match="loud"):
        logs.configure_logging(level="loud")
    with pytest.raises(InvalidConfigurationException, match="xml"):
        logs.configure_logging(fmt="xml")


@pytest.mark.parametrize("text, expected", [
    ("host=db1 password=hunter2 user=bob", "host=db1 password=*** user=bob"),
    ("host=db1 password='hun ter\\'2' user=bob", "host=db1 password=*** user=bob"),
    ('connect(password="hunter2")', "connect(password=***)"),
    ("postgresql://bob:hunter2@db1:5432/app", "postgresql://bob:***@db1:5432/app"),
    ("{'host': 'db1', 'password': 'hunter2'}", "{'host': 'db1', 'password': '***'}"),
    ('{"password": "hun\\"ter2"}', '{"password": "***"}'),
    ("PGPASSWORD=hunter2 psql", "PGPASSWORD=*** psql"),
    ("nothing secret here", "nothing secret here"),
])
def test_redact_patterns(text, expected):
    assert logformat.redact(text) == expected


def test_registered_secret_is_redacted_anywhere(secret):
    assert logformat.redact("token %s in a sentence" % secret) == "token *** in a sentence"


def test_filter_scrubs_message_args_extras_and_traceback(capture, secret):
    output = capture("json")
    try:
        raise ValueError("could not connect: password=hunter2 and %s" % secret)
    except ValueError:
        log.error("dsn %s failed for %r", "host=x password=hunter2",
                  {"password": "hunter2"}, exc_info=True,
                  extra={"action": "db.connect", "dsn": "postgresql://u:hunter2@h/d",
                         "note": "uses " + secret})
    text = output()
    assert "hunter2" not in text and secret not in text
    (record,) = [json.loads(line) for line in text.splitlines()]
    assert record["message"] == "dsn host=x password=*** failed for {'password': '***'}"
    assert record["dsn"] == "postgresql://u:***@h/d" and record["note"] == "uses ***"
    assert "ValueError: could not connect: password=*** and ***" in record["exc"]


def test_filter_scrubs_text_format_traceback(capture):
    output = capture("text")
    try:
        raise RuntimeError("postgresql://bob:hunter2@db/app unreachable")
    except RuntimeError:
        log.exception("probe failed", extra={"action": "db.probe"})
    assert "hunter2" not in output() and "postgresql://bob:***@db/app" in output()


def test_filter_keeps_a_record_with_a_broken_format_string(capture):
    output = capture("text")
    log.info("password=%s %s", "hunter2")
    assert "hunter2" not in output() and "password=***" in output()
