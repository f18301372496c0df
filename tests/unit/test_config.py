"""Config: precedence, environment parsing, unknown keys, one line per problem, passwords
and their redaction, the HTTP bind rule, relative paths, and the settings documentation."""
import os
import pathlib

import pytest

from instances.connectors import parse_dsn
from instances.exceptions import InvalidConfigurationException
from supervisor.config import Config, load_config, settings, settings_help

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.rst"
DSN_ENV = {"PGVISOR_DATABASE_DSN": "host=db1 dbname=app"}


def write(tmp_path, text, name="pgvisor.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def problems_of(excinfo):
    return str(excinfo.value).splitlines()


# -- precedence and types --------------------------------------------------------------------

def test_defaults_apply_when_nothing_is_set():
    cfg = load_config(environ=DSN_ENV)
    assert cfg.supervisor.interval == 60.0
    assert cfg.supervisor.restart_max_rate == "1/m"
    assert cfg.supervisor.wait_after_db_revived == 35.0
    assert cfg.failover.files == ("standby.signal", "recovery.signal", "recovery.conf",
                                  "recovery.done")
    assert cfg.http.listen == "127.0.0.1:7390" and cfg.http.address == ("127.0.0.1", 7390)
    assert cfg.logging.level == "info" and cfg.logging.format == "text"
    assert cfg.source is None and cfg.warnings == ()


def test_file_beats_default_env_beats_file_override_beats_env(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x"\n[supervisor]\n'
                           'interval = 5\nshutdown_grace = 3.5\nprobe_timeout = 4\n')
    env = {"PGVISOR_SUPERVISOR_SHUTDOWN_GRACE": "7", "PGVISOR_SUPERVISOR_PROBE_TIMEOUT": "8"}
    cfg = load_config(path, environ=env, overrides={"supervisor.probe_timeout": 9.5,
                                                    "supervisor": {"probe_interval": "0.25"}})
    assert cfg.supervisor.interval == 5.0                # file over default
    assert cfg.supervisor.shutdown_grace == 7.0          # env over file
    assert cfg.supervisor.probe_timeout == 9.5           # override over env
    assert cfg.supervisor.probe_interval == 0.25         # override string parsed like env
    assert cfg.supervisor.heartbeat_timeout == 30.0      # default


def test_override_none_means_flag_not_given(tmp_path):
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_SUPERVISOR_INTERVAL="2"),
                      overrides={"supervisor.interval": None})
    assert cfg.supervisor.interval == 2.0


@pytest.mark.parametrize("var, text, attribute, expected", [
    ("PGVISOR_SUPERVISOR_INTERVAL", "2.5", ("supervisor", "interval"), 2.5),
    ("PGVISOR_DATABASE_CONNECT_TIMEOUT", " 12 ", ("database", "connect_timeout"), 12),
    ("PGVISOR_HTTP_MAX_BODY", "1024", ("http", "max_body"), 1024),
    ("PGVISOR_REGISTRY_WATCH", "false", ("registry", "watch"), False),
    ("PGVISOR_REGISTRY_WATCH", "On", ("registry", "watch"), True),
    ("PGVISOR_FAILOVER_FILES", "a.signal, b.signal", ("failover", "files"),
     ("a.signal", "b.signal")),
    ("PGVISOR_FAILOVER_FILES", '["x.signal"]', ("failover", "files"), ("x.signal",)),
    ("PGVISOR_LOGGING_FORMAT", "json", ("logging", "format"), "json"),
    ("PGVISOR_SUPERVISOR_RESTART_MAX_RATE", "3 per 5 minutes",
     ("supervisor", "restart_max_rate"), "3 per 5 minutes"),
])
def test_environment_overrides_every_type(var, text, attribute, expected):
    cfg = load_config(environ=dict(DSN_ENV, **{var: text}))
    assert getattr(getattr(cfg, attribute[0]), attribute[1]) == expected


@pytest.mark.parametrize("var, text, why", [
    ("PGVISOR_SUPERVISOR_INTERVAL", "soon", "must be a number"),
    ("PGVISOR_SUPERVISOR_INTERVAL", "nan", "must be a finite number"),
    ("PGVISOR_HTTP_MAX_BODY", "1.5", "must be an integer"),
    ("PGVISOR_REGISTRY_WATCH", "maybe", "must be one of 1, true"),
    ("PGVISOR_FAILOVER_FILES", "[1, 2]", "must be a list of strings"),
    ("PGVISOR_FAILOVER_FILES", "[oops", "not a JSON list"),
])
def test_bad_environment_value_names_the_variable_value_and_why(var, text, why):
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(environ=dict(DSN_ENV, **{var: text}))
    (line,) = problems_of(excinfo)
    assert line.startswith("%s=%s: " % (var, text)) and why in line


@pytest.mark.parametrize("toml, why", [
    ("[supervisor]\ninterval = \"60\"", "must be a number"),
    ("[supervisor]\ninterval = true", "must be a number"),
    ("[registry]\nwatch = 1", "must be true or false"),
    ("[http]\nmax_body = 1.0", "must be an integer"),
    ("[failover]\nfiles = \"standby.signal\"", "must be a list of strings"),
])
def test_file_values_are_type_checked(tmp_path, toml, why):
    path = write(tmp_path, '[database]\ndsn = "host=x"\n' + toml + "\n")
    with pytest.raises(InvalidConfigurationException, match=why):
        load_config(path, environ={})


# -- unknown names and problem lines ------------------------------------------------------

def test_unknown_key_and_section_are_errors_with_a_suggestion(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x"\n[supervisor]\nintervall = 3\n'
                           '[registy]\npath = "r.json"\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(path, environ={})
    assert problems_of(excinfo) == [
        "%s: [supervisor] intervall = 3: unknown key; did you mean interval?" % path,
        "%s: [registy]: unknown section; did you mean [registry]?" % path]


def test_unknown_override_is_an_error_and_unknown_variable_a_warning(caplog):
    with pytest.raises(InvalidConfigurationException, match="did you mean supervisor.interval"):
        load_config(environ=DSN_ENV, overrides={"supervisor.intervall": 1})
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_SUPERVISOR_INTERVL="3",
                                   PGVISOR_CONFIG="/etc/pgvisor.toml"))
    assert cfg.warnings == ("PGVISOR_SUPERVISOR_INTERVL is not a pgvisor setting, ignored; "
                            "did you mean PGVISOR_SUPERVISOR_INTERVAL?",)
    assert cfg.supervisor.interval == 60.0


def test_every_problem_is_reported_on_its_own_line(tmp_path):
    path = write(tmp_path, '[database]\nhost = "db1"\n[supervisor]\ninterval = -1\n'
                           'restart_max_rate = "often"\n[failover]\nfiles = ["a/b"]\n'
                           '[http]\nlisten = "localhost:70000"\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(path, environ={"PGVISOR_HTTP_MAX_BODY": "lots"},
                    overrides={"logging.level": "loud"})
    lines = problems_of(excinfo)
    assert sorted(lines) == sorted([
        "PGVISOR_HTTP_MAX_BODY=lots: must be an integer",
        "%s: [supervisor] interval = -1: must be greater than 0" % path,
        "%s: [supervisor] restart_max_rate = \"often\": not a rate: use N/s, N/m, N/h, N/d "
        "or 'N per [M] second|minute|hour|day'" % path,
        "%s: [failover] files = [\"a/b\"]: 'a/b' is not a plain file name" % path,
        "%s: [http] listen = \"localhost:70000\": must be a port number 1..65535" % path,
        "command line: [logging] level = \"loud\": must be one of debug, info, warning, error",
    ])
    assert excinfo.value.problems == tuple(lines)
    assert excinfo.value.field in {"http.max_body", "supervisor.interval"}


def test_invalid_toml_and_missing_file_are_reported_with_the_file(tmp_path):
    path = write(tmp_path, "[database\n")
    with pytest.raises(InvalidConfigurationException, match="^%s: cannot load: " % path):
        load_config(path, environ=DSN_ENV)
    missing = str(tmp_path / "nope.toml")
    with pytest.raises(InvalidConfigurationException, match="^%s: cannot load: " % missing):
        load_config(missing, environ=DSN_ENV)


def test_database_is_required():
    with pytest.raises(InvalidConfigurationException, match=r"\[database\] dsn = \(none\): "
                       "required unless"):
        load_config(environ={})


def test_dbname_alias_database_and_fields_override_the_dsn(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=a port=1 dbname=x application_name=me"\n'
                           'host = "b"\nport = 5433\ndatabase = "app"\nuser = "u"\n')
    params = load_config(path, environ={}).database.connect_params()
    assert params == {"host": "b", "port": "5433", "dbname": "app", "user": "u",
                      "application_name": "me", "connect_timeout": "5"}


def test_dbname_and_its_alias_together_are_an_error(tmp_path):
    path = write(tmp_path, '[database]\ndbname = "a"\ndatabase = "b"\n')
    with pytest.raises(InvalidConfigurationException, match="set twice"):
        load_config(path, environ={})


def test_watch_path_must_exist(tmp_path):
    missing = str(tmp_path / "pgdata")
    with pytest.raises(InvalidConfigurationException,
                       match="no such directory: %s" % missing):
        load_config(environ=dict(DSN_ENV, PGVISOR_FAILOVER_WATCH_PATH=missing))
    os.mkdir(missing)
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_FAILOVER_WATCH_PATH=missing))
    assert cfg.failover.watch_path == missing


def test_config_is_frozen():
    cfg = load_config(environ=DSN_ENV)
    with pytest.raises(AttributeError):
        cfg.supervisor.interval = 1
    with pytest.raises(AttributeError):
        cfg.supervisor = None
    assert isinstance(cfg, Config)


# -- paths ---------------------------------------------------------------------------------

def test_registry_path_is_relative_to_the_config_directory(tmp_path, monkeypatch):
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    monkeypatch.chdir(tmp_path)
    path = write(conf_dir, '[database]\ndsn = "host=x"\n')
    assert load_config(path, environ={}).registry.path == str(conf_dir / "registry.json")
    path = write(conf_dir, '[database]\ndsn = "host=x"\n[registry]\npath = "data/r.json"\n')
    assert load_config(path, environ={}).registry.path == str(conf_dir / "data" / "r.json")
    cfg = load_config(path, environ={"PGVISOR_REGISTRY_PATH": "env.json"})
    assert cfg.registry.path == str(tmp_path / "env.json")  # the environment: cwd


# -- passwords and tokens ---------------------------------------------------------------------

def secret_file(tmp_path, name, text, mode=0o600):
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def assert_hidden(cfg, *secrets):
    for text in (repr(cfg), str(cfg), repr(cfg.database), str(cfg.to_dict()),
                 str(cfg.to_dict(redact=True))):
        for secret in secrets:
            assert secret not in text


def test_password_file_wins_and_is_hidden_everywhere(tmp_path):
    pw_file = secret_file(tmp_path, "db.password", "pa ss'word\n")
    cfg = load_config(environ={"PGVISOR_DATABASE_DSN": "host=db1 dbname=app",
                               "PGVISOR_DATABASE_PASSWORD_FILE": pw_file,
                               "PGVISOR_DATABASE_PASSWORD": "from-env"})
    assert cfg.database.password == "pa ss'word"
    assert parse_dsn(cfg.database.connect_dsn())["password"] == "pa ss'word"
    assert "password=***" in cfg.database.display_dsn()
    assert cfg.secrets() == ("pa ss'word",)
    assert cfg.to_dict()["database"]["password"] == "***"
    assert cfg.to_dict(redact=False)["database"]["password"] == "pa ss'word"
    assert_hidden(cfg, "pa ss'word", "ss'word")
    assert cfg.warnings == ()


def test_password_from_environment_when_no_file():
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_DATABASE_PASSWORD="s3cret"))
    assert parse_dsn(cfg.database.connect_dsn())["password"] == "s3cret"
    assert_hidden(cfg, "s3cret")


def test_no_password_leaves_it_to_libpq_passfile():
    cfg = load_config(environ=DSN_ENV)
    assert "password" not in cfg.database.connect_params()
    assert cfg.secrets() == ()


def test_password_in_the_file_or_its_dsn_works_with_a_warning(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "postgresql://bob:hunter2@db1/app"\n'
                           'password = "topsecret"\n')
    cfg = load_config(path, environ={})
    assert cfg.database.connect_params()["password"] == "topsecret"
    assert len(cfg.warnings) == 2
    assert all("a password in the config file" in w or "a secret in the config file" in w
               for w in cfg.warnings)
    assert_hidden(cfg, "hunter2", "topsecret")
    assert "hunter2" not in " ".join(cfg.warnings)


def test_too_open_password_file_warns_and_unreadable_one_is_an_error(tmp_path):
    pw_file = secret_file(tmp_path, "db.password", "pw\n", mode=0o644)
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_DATABASE_PASSWORD_FILE=pw_file))
    assert cfg.warnings == ("database.password_file %s is readable by group or others "
                            "(mode 0644); chmod 600 it" % pw_file,)
    missing = str(tmp_path / "missing")
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(environ=dict(DSN_ENV, PGVISOR_DATABASE_PASSWORD_FILE=missing))
    assert problems_of(excinfo) == [
        "PGVISOR_DATABASE_PASSWORD_FILE=%s: cannot read: No such file or directory" % missing]


def test_passwords_are_masked_in_error_lines(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x password=hunter2 = oops"\n'
                           'password = 17\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(path, environ={"PGVISOR_HTTP_TOKEN": "tok", "PGVISOR_HTTP_MAX_BODY": "x"})
    message = str(excinfo.value)
    assert "hunter2" not in message and "17" not in message.replace(path, "")
    assert "[database] password = ***: must be a string" in message
    assert "[database] dsn = \"host=x password=*** = oops\": not a libpq connection " \
           "string: invalid dsn: invalid connection option" in message


def test_non_loopback_listen_without_token_is_refused(tmp_path):
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(environ=dict(DSN_ENV, PGVISOR_HTTP_LISTEN="0.0.0.0:7390"))
    assert problems_of(excinfo) == [
        "PGVISOR_HTTP_LISTEN=0.0.0.0:7390: refusing to bind 0.0.0.0:7390 without [http] "
        "token_file or PGVISOR_HTTP_TOKEN"]
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_HTTP_LISTEN="0.0.0.0:7390",
                                   PGVISOR_HTTP_TOKEN="t0ken"))
    assert cfg.http.token == "t0ken" and cfg.secrets() == ("t0ken",)
    assert_hidden(cfg, "t0ken")
    token_file = secret_file(tmp_path, "api.token", "file-token\n")
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_HTTP_LISTEN="[::]:8000",
                                   PGVISOR_HTTP_TOKEN_FILE=token_file))
    assert cfg.http.token == "file-token" and cfg.http.address == ("::", 8000)


@pytest.mark.parametrize("listen", ["localhost:7390", "[::1]:7390", "127.0.0.2:80"])
def test_loopback_listen_needs_no_token(listen):
    assert load_config(environ=dict(DSN_ENV, PGVISOR_HTTP_LISTEN=listen)).http.token is None


@pytest.mark.parametrize("listen", ["", "off", "OFF"])
def test_listen_off_or_empty_disables_http(listen):
    cfg = load_config(environ=dict(DSN_ENV, PGVISOR_HTTP_LISTEN=listen))
    assert cfg.http.listen is None and cfg.http.address is None


# -- connection strings ----------------------------------------------------------------------

def test_uri_dsn_with_fields_gives_one_connection_string(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "postgresql://bob@db1:5433/app?sslmode=require"\n'
                           'dbname = "other db"\nconnect_timeout = 3\n')
    cfg = load_config(path, environ={"PGVISOR_DATABASE_PASSWORD": "it's \\ secret"})
    assert parse_dsn(cfg.database.connect_dsn()) == {
        "user": "bob", "host": "db1", "port": "5433", "dbname": "other db",
        "sslmode": "require", "password": "it's \\ secret", "connect_timeout": "3",
        "application_name": "pgvisor"}


# -- help and docs ---------------------------------------------------------------------------

def test_help_lists_every_setting_with_variable_default_and_unit():
    text = settings_help()
    for setting in settings.SETTINGS:
        assert setting.env in text and setting.key in text
    assert "interval" in text and "PGVISOR_SUPERVISOR_INTERVAL" in text and "60.0 s" in text


def test_every_setting_is_documented_and_the_doc_table_is_current():
    doc = DOCS.read_text()
    for setting in settings.SETTINGS:
        assert setting.env in doc, setting.name
    assert settings.settings_rst() in doc, (
        "docs/configuration.rst is stale: paste the output of "
        "python -c 'from supervisor.config.settings import settings_rst; print(settings_rst())'")


def test_every_setting_has_a_valid_default_and_help():
    for setting in settings.SETTINGS:
        assert setting.type in settings.TYPES and setting.help
        if setting.default is not None:
            assert settings.from_toml(setting, setting.default) == setting.default
            if setting.validate:
                setting.validate(setting.default)


def test_misspelled_secret_key_does_not_echo_its_value(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x"\npasword = "hunter2"\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(path, environ={})
    assert problems_of(excinfo) == [
        "%s: [database] pasword = ***: unknown key; did you mean password?" % path]


# -- security settings -----------------------------------------------------------------------

@pytest.mark.parametrize("handler, prefixes, allowed", [
    ("myapp.river:index", (), True),
    ("subprocess:getoutput", ("myapp.",), False),
    ("myapp.river:index", ("myapp.",), True),
    ("myapp:index", ("myapp.",), False),
    ("myapp:index", ("myapp",), True),
    ("myapp.river:index", ("myapp",), True),
    ("myappx.river:index", ("myapp",), False),
    ("other.x:y", ("myapp.", "other."), True),
])
def test_handler_modules_are_module_prefixes(handler, prefixes, allowed):
    assert settings.handler_allowed(handler, prefixes) is allowed


def test_security_and_http_settings_are_checked(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x"\n[security]\n'
                 'handler_modules = ["my app", "ok."]\n[http]\nallowed_hosts = ["a/b"]\n'
                 'token_for_reads = "yes"\n')
    with pytest.raises(InvalidConfigurationException) as excinfo:
        load_config(path, environ={})
    text = "\n".join(problems_of(excinfo))
    assert "[security] handler_modules" in text and "'my app' is not a module prefix" in text
    assert "[http] allowed_hosts" in text and "[http] token_for_reads" in text


def test_security_settings_from_the_environment(tmp_path):
    path = write(tmp_path, '[database]\ndsn = "host=x"\n')
    cfg = load_config(path, environ={"PGVISOR_SECURITY_HANDLER_MODULES": "myapp.,other",
                                     "PGVISOR_HTTP_ALLOWED_HOSTS": "pgvisor.internal",
                                     "PGVISOR_HTTP_TOKEN_FOR_READS": "true"})
    assert cfg.security.handler_modules == ("myapp.", "other")
    assert cfg.http.allowed_hosts == ("pgvisor.internal",) and cfg.http.token_for_reads


def test_the_generated_token_lives_in_the_state_directory(tmp_path):
    from supervisor.config.token import api_token, generated_token_path
    path = write(tmp_path, '[database]\ndsn = "host=x"\n[registry]\npath = "reg/r.json"\n')
    cfg = load_config(path, environ={})
    assert generated_token_path(cfg) == str(tmp_path / "reg" / "api.token")
    (tmp_path / "reg").mkdir()
    assert api_token(cfg) == (None, str(tmp_path / "reg" / "api.token"))  # the CLI: no file
    token, where = api_token(cfg, create=True)
    assert api_token(cfg, create=True) == (token, where)  # never overwritten
    assert os.stat(where).st_mode & 0o777 == 0o600 and len(token) >= 40
    os.chmod(where, 0o640)
    with pytest.raises(InvalidConfigurationException) as excinfo:
        api_token(cfg, create=True)
    assert "open to group or others" in str(excinfo.value) and token not in str(excinfo.value)
    state = load_config(path, environ={"PGVISOR_SUPERVISOR_STATE_DIR": str(tmp_path / "s")})
    assert generated_token_path(state) == str(tmp_path / "s" / "api.token")


def test_a_generated_token_never_starts_with_a_dash(monkeypatch):
    """`--token TOKEN` on a command line: a token starting with '-' would read as an option
    (1 generated token in 64 did)."""
    from supervisor.config import token
    drawn = iter(["-starts-with-a-dash", "fine-token"])
    monkeypatch.setattr(token.secrets, "token_urlsafe", lambda n: next(drawn))
    assert token.new_token() == "fine-token"
