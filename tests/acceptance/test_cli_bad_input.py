"""Bad input to ``pgvisor`` (real CLI in subprocesses): one clear line, exit 2, never a
traceback; and a listen address in use names ``[http] listen``."""
import socket

import pytest

from tests.acceptance.service_process import ServiceProcess, environ, run_cli

pytestmark = pytest.mark.timeout(60)


def _one_clear_line(result, *words):
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr and "Error:" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


def test_a_non_utf8_password_file_names_the_key(tmp_path):
    (tmp_path / "db.password").write_bytes(b"\xff\xfepass\n")
    (tmp_path / "pgvisor.toml").write_text(
        '[database]\ndsn = "host=127.0.0.1 dbname=x"\npassword_file = "db.password"\n')
    result = run_cli("run", "-c", tmp_path / "pgvisor.toml", env=environ(tmp_path))
    _one_clear_line(result, "[database] password_file", "not UTF-8")


def test_a_binary_config_file_is_one_line(tmp_path):
    (tmp_path / "pgvisor.toml").write_bytes(b"\x00\x81\xfe binary \xff")
    for args in (("run",), ("status",), ("instances", "list")):
        result = run_cli(*args, "-c", tmp_path / "pgvisor.toml", env=environ(tmp_path))
        _one_clear_line(result, "pgvisor.toml", "not UTF-8")


def test_set_name_differing_from_the_argument_is_refused(tmp_path):
    registry = tmp_path / "registry.json"
    result = run_cli("instances", "add", "river", "--registry", registry, "--channel", "c",
                     "--handler", "tests.handlers:record", "--set", "name=other",
                     env=environ(tmp_path))
    _one_clear_line(result, "--set name='other'", "'river'")
    assert not registry.exists() or "other" not in registry.read_text()
    assert "river" not in (registry.read_text() if registry.exists() else "")


@pytest.mark.parametrize("args, words", [
    (("status", "--url", "not a url"), ("--url 'not a url'", "http://HOST:PORT")),
    (("status", "--url", "http://127.0.0.1:notaport"), ("--url",)),
    (("restart", "river", "--wait", "--timeout", "-1"), ("--timeout", "greater than 0")),
    (("status", "--timeout", "nan"), ("--timeout",)),
])
def test_bad_url_and_timeout_are_usage_errors(tmp_path, args, words):
    _one_clear_line(run_cli(*args, env=environ(tmp_path)), *words)


def test_a_listen_address_in_use_names_http_listen(tmp_path, pg_dsn):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        svc = ServiceProcess(tmp_path, {"database": {"dsn": pg_dsn},
                                        "http": {"listen": "127.0.0.1:%d" % port}})
        svc.start(ready=False)
        try:
            assert svc.wait_exit(30) == 1
        finally:
            svc.stop()
    assert "[http] listen = 127.0.0.1:%d" % port in svc.log()
    assert "Traceback" not in svc.log()


@pytest.mark.parametrize("args, words", [
    (("--batch", "0"), ("batch=0", "between 1 and 10000")),
    (("--batch", "many"), ("--batch", "'many'")),
    (("--set", "batch=true"), ("batch=True",)),
    (("--order-key", "shard"), ("order_key='shard'", "'channel' or 'payload'")),
    (("--batch", "5", "--order-key", "channel"), ("batch=5, order_key='channel'",)),
])
def test_bad_batch_and_order_key_are_usage_errors_naming_them(tmp_path, args, words):
    registry = tmp_path / "registry.json"
    result = run_cli("instances", "add", "river", "--registry", registry, "--channel", "c",
                     "--handler", "tests.handlers:record", *args, env=environ(tmp_path))
    _one_clear_line(result, *words)
    assert "river" not in (registry.read_text() if registry.exists() else "")


def test_batch_and_order_key_flags_are_stored(tmp_path):
    registry = tmp_path / "registry.json"
    for name, args in (("bulk", ("--batch", "200")), ("keyed", ("--order-key", "payload"))):
        result = run_cli("instances", "add", name, "--registry", registry, "--channel", "c",
                         "--handler", "tests.handlers:record", *args, env=environ(tmp_path))
        assert result.returncode == 0, result.stderr
    shown = run_cli("instances", "show", "bulk", "--registry", registry, "--json",
                    env=environ(tmp_path))
    assert '"batch": 200' in shown.stdout
    result = run_cli("instances", "update", "keyed", "--registry", registry, "--max", "4",
                     env=environ(tmp_path))
    assert result.returncode == 0, result.stderr
    assert '"order_key": "payload"' in registry.read_text()
