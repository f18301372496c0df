"""The ``pgvisor`` parser, flag-to-setting mapping, output helpers and config-change
classification: no service, no database."""
import pytest

from supervisor.cli import instances as cli_instances
from supervisor.cli import options as cli_options
from supervisor.cli import output as cli_output
from supervisor.cli import parser as cli
from supervisor.config import load_config
from supervisor.config.reload import LIVE, config_changes
from supervisor.config.settings import BY_NAME


def parse(*argv):
    return cli.build_parser().parse_args(list(argv))


def test_every_run_flag_names_a_real_setting_and_reaches_load_config():
    args = parse("run", "--dsn", "host=db", "--interval", "5", "--listen", "off",
                 "--log-format", "json")
    overrides = {name: getattr(args, dest) for dest, name in args.setting_flags}
    assert set(overrides) <= set(BY_NAME)
    cfg = load_config(None, environ={}, overrides=overrides)
    assert (cfg.supervisor.interval, cfg.http.address, cfg.logging.format) == (5.0, None, "json")


def test_run_help_lists_the_settings(capsys):
    with pytest.raises(SystemExit) as exit:
        parse("run", "--help")
    assert exit.value.code == 0
    out = capsys.readouterr().out
    assert "PGVISOR_SUPERVISOR_SHUTDOWN_GRACE" in out and "restart_max_rate" in out


@pytest.mark.parametrize("argv", [
    ("instances", "add", "river", "--handler", "m:f"),            # no --channel
    ("instances", "add", "river", "--channel", "c"),               # no --handler
    ("instances", "add", "river", "--channel", "c", "--handler", "m:f", "--min", "two"),
    ("restart",),                                                  # no NAME
    ("queue", "stats"),                                            # no DIR
    ("nosuch",),
])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit:
        parse(*argv)
    assert exit.value.code == cli_output.USAGE


def test_add_flags_become_spec_fields(tmp_path):
    args = parse("instances", "add", "river", "--channel", "a", "--channel", "b",
                 "--handler", "m:f", "--min", "2", "--max", "4", "--run-on", "any",
                 "--queue-spool", str(tmp_path), "--handler-timeout", "none", "--disabled",
                 "--set", "queue_size=5", "--set", "restart_max_rate=2/m")
    fields = cli_instances.spec_fields(args)
    assert fields == {"channels": ["a", "b"], "handler": "m:f", "min_concurrency": 2,
                      "max_concurrency": 4, "run_on": "any", "handler_timeout": None,
                      "enabled": False, "queue": {"spool": str(tmp_path)}, "queue_size": 5,
                      "restart_max_rate": "2/m"}


def test_update_only_carries_the_flags_given():
    args = parse("instances", "update", "river", "--max", "8", "--enable")
    assert cli_instances.spec_fields(args) == {"max_concurrency": 8, "enabled": True}
    assert cli_instances.spec_fields(parse("instances", "update", "river", "--memory-queue")) \
        == {"queue": None}


def test_a_bad_set_is_a_usage_error():
    args = parse("instances", "update", "river", "--set", "novalue")
    with pytest.raises(cli_output.CliError) as error:
        cli_instances.spec_fields(args)
    assert error.value.code == cli_output.USAGE


def test_an_unimportable_handler_module_is_reported_not_fatal(capsys):
    assert cli_instances.importable("tests.handlers:record")
    assert not cli_instances.importable("no_such_module_xyz.sub:fn")
    assert "not importable here; stored unchecked" in capsys.readouterr().err


def test_a_missing_delegate_module_is_a_clear_error():
    with pytest.raises(cli_output.CliError) as error:
        cli.delegate("no_such_command", [])
    assert error.value.code == cli_output.FAILED
    assert "not available in this installation" in str(error.value)


def test_main_returns_the_exit_code_of_a_cli_error(tmp_path, capsys):
    code = cli.run(["queue", "stats", str(tmp_path)])
    assert code == cli_output.USAGE
    assert capsys.readouterr().err.startswith("pgvisor: ")


def test_table_aligns_columns_and_renders_values():
    text = cli_output.table([{"a": "x", "b": ["c", "d"], "c": None, "d": True}],
                            [("A", "a"), ("LIST", "b"), ("NONE", "c"), ("YES", "d")])
    assert text.splitlines() == ["A  LIST  NONE  YES", "x  c,d   -     yes"]
    assert cli_output.table([], [("A", "a")], empty="nothing") == "nothing"


def test_errors_are_redacted(capsys):
    cli_output.error("cannot connect: host=db password=hunter2\nsecond line")
    err = capsys.readouterr().err.splitlines()
    assert err == ["pgvisor: cannot connect: host=db password=***", "pgvisor: second line"]


def test_config_changes_tell_live_settings_from_restart_ones():
    old = load_config(None, environ={}, overrides={"database.dsn": "host=a password=x1"})
    new = load_config(None, environ={}, overrides={
        "database.dsn": "host=a password=x2", "supervisor.interval": 5,
        "http.max_body": 10})
    changes = {c.name: c for c in config_changes(old, new)}
    assert set(changes) == {"database.dsn", "supervisor.interval", "http.max_body"}
    assert changes["supervisor.interval"].live and "supervisor.interval" in LIVE
    assert not changes["http.max_body"].live
    assert "x2" not in repr(changes["database.dsn"])  # the DSN is shown masked


def test_the_exit_codes_are_the_documented_ones():
    assert (cli_output.OK, cli_output.FAILED, cli_output.USAGE, cli_output.UNREACHABLE,
            cli_output.UNKNOWN_INSTANCE) == (0, 1, 2, 3, 4)


def test_an_invalid_config_is_a_usage_error_with_every_problem(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[supervisor]\ninterval = -1\n")
    with pytest.raises(cli_output.CliError) as error:
        cli_options.load(str(path))
    assert error.value.code == cli_output.USAGE
    assert len(str(error.value).splitlines()) == 2  # interval, and the missing dsn


@pytest.mark.parametrize("dsn,shown", [
    ({"host": "db1", "database": "app", "password": "pw"},
     {"host": "db1", "database": "app", "password": "***"}),
    ("host=db1 password=pw", "host=db1 password=***"),
    (None, None),
])
def test_the_cli_shows_a_dsn_as_the_http_api_does(dsn, shown):
    from instances.spec import InstanceSpec
    from supervisor.http.routes import spec_view

    spec = InstanceSpec.from_dict({"name": "river", "channels": ["c"], "handler": "m:f",
                                   "dsn": dsn}, resolve=False)
    assert cli_instances.view(spec)["dsn"] == spec_view(spec)["dsn"] == shown
