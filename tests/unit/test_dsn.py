"""DSN parsing, formatting and redaction, and identifier quoting (no database)."""
import pytest

from instances.connectors import PostgresConnector, parse_dsn, quote_ident
from instances.dsn import (
    REDACTED,
    format_dsn,
    redact_dsn,
    redact_text,
    scrub,
    secret_fragments,
)
from instances.exceptions import FatalDatabaseError, InvalidConfigurationException

SECRET = "s3cr3t pa'ss\\word"


def test_hermes_dict_keys_become_libpq_keywords():
    params = parse_dsn({"database": "app", "host": "db1", "port": 5432, "user": "u",
                        "password": "pw", "sslmode": None})
    assert params == {"dbname": "app", "host": "db1", "port": "5432", "user": "u",
                      "password": "pw"}


def test_dict_accepts_dbname_too():
    assert parse_dsn({"dbname": "app"}) == {"dbname": "app"}


@pytest.mark.parametrize("dsn", [
    "host=db1 dbname=app password=pw",
    "postgresql://u:pw@db1/app",
])
def test_libpq_strings_and_uris_are_parsed_by_libpq(dsn):
    params = parse_dsn(dsn)
    assert params["password"] == "pw" and params["dbname"] == "app" and params["host"] == "db1"


def test_format_dsn_round_trips_values_that_need_quoting():
    params = {"host": "/tmp/a dir", "password": SECRET, "application_name": ""}
    assert parse_dsn(format_dsn(params)) == params


def test_invalid_dsn_names_the_field_and_hides_the_password():
    with pytest.raises(InvalidConfigurationException) as info:
        parse_dsn("host=db1 password=sek ritpw")
    assert info.value.field == "dsn"
    assert "sek" not in str(info.value) and "ritpw" not in str(info.value)
    assert "ritpw" not in str(info.value.value)


def test_non_string_non_dict_dsn_is_a_configuration_error():
    with pytest.raises(InvalidConfigurationException):
        parse_dsn(42)


@pytest.mark.parametrize("dsn,expected", [
    ("host=db1 user=u password=%s" % format_dsn({"p": SECRET})[2:],
     "host=db1 user=u password=***"),
    ("host=db1 password = 'a b' user=u", "host=db1 password = *** user=u"),
    ("host=db1 sslpassword=s3cr3t", "host=db1 sslpassword=***"),
    ("postgresql://u:s3cr3tpw@db1:5432/app", "postgresql://u:***@db1:5432/app"),
])
def test_redact_dsn_shows_a_string_as_written_with_the_password_as_stars(dsn, expected):
    assert redact_dsn(dsn) == expected


def test_redact_dsn_keeps_a_dict_a_dict():
    dsn = {"host": "db1", "user": "u", "password": SECRET, "sslpassword": None}
    assert redact_dsn(dsn) == {"host": "db1", "user": "u", "password": REDACTED,
                               "sslpassword": None}
    assert dsn["password"] == SECRET  # a copy: the caller's dict is untouched
    assert redact_dsn(None) is None and redact_dsn(42) == 42


@pytest.mark.parametrize("dsn", [
    "host=db1 password=sek ritpw",
    "host=db1 password='unterminated secret",
    "postgresql://u:s3cr3tpw@db1:5432/app?bad=1",
])
def test_redact_dsn_hides_the_password_of_unparseable_dsns(dsn):
    redacted = redact_dsn(dsn)
    for word in ("sek", "ritpw", "unterminated", "s3cr3tpw"):
        assert word not in redacted
    assert "db1" in redacted


def test_redact_dsn_keeps_following_keywords():
    assert redact_dsn("password=abc host=db1") == "password=*** host=db1"


def test_redact_text_masks_passwords_in_prose_and_the_given_secrets():
    assert redact_text("login password=abc failed; token t0k3n", ["t0k3n"]) == \
        "login password=*** failed; token ***"


def test_secret_fragments_of_a_malformed_dsn_cover_each_word():
    assert set(secret_fragments("host=x password=sek ritpw")) >= {"sek", "ritpw"}
    assert scrub('missing "=" after "ritpw"', secret_fragments("password=sek ritpw")) == \
        'missing "=" after "***"'


def test_connector_repr_and_str_never_contain_the_password():
    for dsn in ("host=db1 password=topsecret", {"host": "db1", "password": "topsecret"},
                "host=db1 password=top secret"):
        connector = PostgresConnector(dsn)
        assert "topsecret" not in repr(connector) and "top secret" not in str(connector)
        assert "***" in repr(connector)


def test_connector_with_invalid_dsn_fails_fatally_on_first_use():
    connector = PostgresConnector("host=db1 password=sek ritpw")
    with pytest.raises(FatalDatabaseError) as info:
        connector.fileno()
    assert "ritpw" not in str(info.value) and info.value.kind == "fatal"


def test_connection_parameters_precedence_arguments_then_dsn_then_defaults():
    connector = PostgresConnector("host=db1 keepalives_idle=20 application_name=fromdsn",
                                  application_name="river", connect_timeout=2)
    params = connector.connection_parameters()
    assert params["keepalives_idle"] == "20"
    assert params["application_name"] == "river" and params["connect_timeout"] == 2
    assert (params["keepalives"], params["keepalives_interval"], params["keepalives_count"]) \
        == (1, 5, 3)
    assert PostgresConnector("host=db1 application_name=fromdsn") \
        .connection_parameters()["application_name"] == "fromdsn"
    assert PostgresConnector("host=db1").connection_parameters()["application_name"] == \
        "pgvisor"


@pytest.mark.parametrize("name, quoted", [
    ("plain", '"plain"'),
    ('a"; DROP TABLE x; --', '"a""; DROP TABLE x; --"'),
    ("Mixed Case", '"Mixed Case"'),
    ("ünï", '"ünï"'),
])
def test_quote_ident_doubles_quotes(name, quoted):
    assert quote_ident(name) == quoted


@pytest.mark.parametrize("name", ["", None, 7, "a\x00b", "x" * 64, "é" * 32])
def test_quote_ident_rejects_names_the_server_would_refuse_or_truncate(name):
    with pytest.raises(InvalidConfigurationException) as info:
        quote_ident(name)
    assert info.value.field == "channel"
