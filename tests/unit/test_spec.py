"""InstanceSpec: every validation rule names its field and value; round trips; redaction."""
import dataclasses
import json
import pickle
import sys

import pytest

from instances import InstanceSpec
from instances.dsn import REDACTED
from instances.exceptions import InvalidConfigurationException
from instances.spec import QUEUE_DEFAULTS

pytestmark = pytest.mark.timeout(30)

BASE = {"name": "river", "channels": ["doc_changed"], "handler": "json:dumps"}


def spec(**changes):
    return InstanceSpec(**dict(BASE, **changes))


def error_of(**changes):
    with pytest.raises(InvalidConfigurationException) as info:
        InstanceSpec.from_dict(dict(BASE, **changes))
    return info.value


def test_defaults_are_the_documented_ones():
    s = spec()
    assert (s.min_concurrency, s.max_concurrency, s.enabled, s.restart, s.run_on) == (
        1, 1, True, "permanent", "primary")
    assert (s.queue, s.queue_size, s.handler_timeout, s.isolation, s.dsn,
            s.restart_max_rate) == (None, 10000, 60.0, "greenlet", None, None)


def test_channels_given_as_list_are_stored_as_tuple():
    assert spec(channels=["a", "b"]).channels == ("a", "b")


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        spec().name = "other"
    with pytest.raises(TypeError):
        spec(queue={"spool": "/q"}).queue["fsync"] = True


@pytest.mark.parametrize("field, value, fragment", [
    ("name", "River", "must match"),
    ("name", "", "must match"),
    ("name", "-river", "must match"),
    ("name", "a" * 65, "must match"),
    ("name", 7, "must match"),
    ("channels", "doc_changed", "must be a list of channel names"),
    ("channels", ["a", "a"], "'a' is listed twice"),
    ("channels", [""], "is not a non-empty string"),
    ("channels", [3], "is not a non-empty string"),
    ("channels", ["x" * 64], "at most 63 bytes"),
    ("channels", ["é" * 32], "at most 63 bytes"),
    ("channels", ["a\x00b"], "without NUL"),
    ("handler", "json.dumps", "must be 'module.path:callable'"),
    ("handler", "json:", "must be 'module.path:callable'"),
    ("handler", ":dumps", "must be 'module.path:callable'"),
    ("handler", "js on:dumps", "must be 'module.path:callable'"),
    ("handler", None, "must be 'module.path:callable'"),
    ("min_concurrency", 0, "must be an integer between 1 and 1024"),
    ("max_concurrency", 0, "must be an integer between 1 and 1024"),
    ("max_concurrency", 1025, "must be an integer between 1 and 1024"),
    ("max_concurrency", True, "must be an integer between 1 and 1024"),
    ("max_concurrency", 2.0, "must be an integer between 1 and 1024"),
    ("enabled", "yes", "must be true or false"),
    ("enabled", 1, "must be true or false"),
    ("restart", "always", "must be one of permanent, transient, temporary"),
    ("run_on", "master", "must be one of primary, standby, any"),
    ("isolation", "thread", "must be one of greenlet, process"),
    ("queue", "/var/spool", "must be null (memory queue)"),
    ("queue_size", 0, "must be an integer >= 1"),
    ("queue_size", False, "must be an integer >= 1"),
    ("handler_timeout", 0, "must be a number of seconds > 0 or null for no limit"),
    ("handler_timeout", -1.5, "must be a number of seconds > 0"),
    ("handler_timeout", float("inf"), "must be a number of seconds > 0"),
    ("handler_timeout", "60", "must be a number of seconds > 0"),
    ("dsn", 5432, "must be null, a libpq string or an object"),
    ("dsn", {"port": [1]}, "'port' must map to a string or a number"),
    ("restart_max_rate", "often", "is not a rate"),
    ("restart_max_rate", 1, "must be a rate string"),
])
def test_invalid_value_is_rejected_naming_field_and_value(field, value, fragment):
    error = error_of(**{field: value})
    assert (error.field, error.value) == (field, value)
    assert str(error).startswith(field)
    assert repr(value) in str(error)
    assert fragment in str(error)


def test_max_concurrency_message_reads_well():
    assert str(error_of(max_concurrency=0)) == (
        "max_concurrency=0: must be an integer between 1 and 1024")


def test_min_above_max_names_both_fields():
    error = error_of(min_concurrency=4, max_concurrency=2)
    assert str(error).startswith("min_concurrency=4, max_concurrency=2:")
    assert error.field == "min_concurrency,max_concurrency"
    assert error.value == {"min_concurrency": 4, "max_concurrency": 2}


def test_no_channels_without_a_spool_names_channels_and_queue():
    error = error_of(channels=[])
    assert str(error).startswith("channels=[], queue=None:")
    assert "spool" in str(error) and "at least one channel" in str(error)
    assert error.field == "channels,queue"
    assert error.value == {"channels": [], "queue": None}


def test_no_channels_without_a_spool_is_rejected_by_replace_too():
    with pytest.raises(InvalidConfigurationException) as info:
        spec().replace(channels=[])
    assert info.value.field == "channels,queue"


def test_no_channels_with_an_invalid_queue_reports_the_queue_problem_only():
    error = error_of(channels=[], queue={"spool": ""})
    assert error.field == "queue.spool"


def test_no_channels_with_a_spool_is_a_spool_source_instance_without_database():
    source = spec(channels=[], queue={"spool": "/in", "queue_out_dir": "/out"})
    assert source.channels == () and source.needs_database is False
    assert spec().needs_database is True
    again = InstanceSpec.from_dict(json.loads(json.dumps(source.to_dict())))
    assert again == source and again.to_dict()["channels"] == []


def test_spool_source_instance_may_be_process_isolated():
    source = spec(channels=[], queue={"spool": "/in"}, isolation="process")
    assert source.isolation == "process" and not source.needs_database


def test_process_isolation_requires_a_spool_queue():
    error = error_of(isolation="process")
    assert error.field == "isolation,queue"
    assert "isolation='process', queue=None" in str(error)
    assert spec(isolation="process", queue={"spool": "/q"}).isolation == "process"


@pytest.mark.parametrize("channel", [
    'a"; DROP TABLE x; --', "UPPER case", "with space", "ünïcødé", "'quote'", "x" * 63,
    "é" * 31, "1starts_with_digit", "semi;colon", "back\\slash",
])
def test_hostile_channel_names_are_valid(channel):
    assert spec(channels=[channel]).channels == (channel,)


@pytest.mark.parametrize("handler", ["json:dumps", "json:JSONDecoder.decode", "os.path:join"])
def test_handler_resolves_to_the_callable(handler):
    import json as json_module
    import os.path
    expected = {"json:dumps": json_module.dumps, "os.path:join": os.path.join,
                "json:JSONDecoder.decode": json_module.JSONDecoder.decode}[handler]
    assert spec(handler=handler).resolve_handler() is expected


def test_unimportable_handler_names_field_value_and_import_error():
    error = error_of(handler="no_such_pkg.mod:fn")
    assert error.field == "handler" and error.value == "no_such_pkg.mod:fn"
    assert str(error) == ("handler='no_such_pkg.mod:fn': cannot import module "
                          "'no_such_pkg.mod': ModuleNotFoundError: No module named 'no_such_pkg'")


def test_handler_module_that_fails_to_import_reports_its_error(tmp_path, monkeypatch):
    (tmp_path / "broken_handler_mod.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    error = error_of(handler="broken_handler_mod:fn")
    assert "RuntimeError: boom at import" in str(error)
    sys.modules.pop("broken_handler_mod", None)


def test_missing_attribute_and_non_callable_handlers_are_rejected():
    assert str(error_of(handler="json:nope")) == "handler='json:nope': 'json' has no attribute 'nope'"
    error = error_of(handler="json:__doc__")
    assert "'__doc__' is not callable (it is a str)" in str(error)


def test_resolution_can_be_turned_off_but_syntax_is_still_checked():
    s = InstanceSpec.from_dict(dict(BASE, handler="not_installed.app:index"), resolve=False)
    assert s.handler == "not_installed.app:index"
    assert InstanceSpec(**dict(BASE, handler="x.y:z"), resolve=False).handler == "x.y:z"
    with pytest.raises(InvalidConfigurationException, match="module.path:callable"):
        InstanceSpec.from_dict(dict(BASE, handler="bad"), resolve=False)
    with pytest.raises(InvalidConfigurationException, match="cannot import module"):
        s.resolve_handler()


def test_unknown_fields_are_all_named():
    error = error_of(colour="red", size=3)
    assert "unknown field(s) 'colour', 'size'" in str(error)
    assert error.field == "colour,size"


def test_missing_required_fields_are_named():
    with pytest.raises(InvalidConfigurationException) as info:
        InstanceSpec.from_dict({"name": "river"})
    assert "channels: required field missing" in str(info.value)
    assert "handler: required field missing" in str(info.value)


def test_from_dict_reports_every_problem_one_per_line():
    error = error_of(name="Bad", max_concurrency=0, restart="never", colour="red")
    lines = str(error).splitlines()
    assert lines[0] == "4 problems in instance 'Bad':"
    assert lines[1].startswith("  unknown field(s) 'colour' (known: name, channels, handler,")
    assert [line.split("=")[0] for line in lines[2:]] == [
        "  name", "  max_concurrency", "  restart"]
    assert error.field == "colour,name,max_concurrency,restart"
    assert len(error.problems) == 4


def test_constructor_also_reports_every_problem():
    with pytest.raises(InvalidConfigurationException) as info:
        spec(min_concurrency=0, max_concurrency=0)
    assert str(info.value).splitlines()[0] == "2 problems in instance 'river':"


def test_from_dict_rejects_a_non_object():
    with pytest.raises(InvalidConfigurationException, match="must be an object"):
        InstanceSpec.from_dict(["river"])


def test_queue_gets_defaults_and_round_trips():
    s = spec(queue={"spool": "/var/spool/river", "fsync": True})
    assert dict(s.queue) == dict(QUEUE_DEFAULTS, spool="/var/spool/river", fsync=True)
    assert s.queue["mode"] == 0o700
    assert s.to_dict()["queue"]["mode"] == "0o700"
    assert InstanceSpec.from_dict(s.to_dict()) == s


@pytest.mark.parametrize("queue, field, fragment", [
    ({}, "queue.spool", "must be a directory path (required)"),
    ({"spool": ""}, "queue.spool", "required"),
    ({"spool": "/q", "colour": 1, "size": 2}, "queue", "unknown option(s) 'colour', 'size'"),
    ({"spool": "/q", "fsync": "yes"}, "queue.fsync", "must be true or false"),
    ({"spool": "/q", "batch": 0}, "queue.batch", "must be true or false"),
    ({"spool": "/q", "max_attempts": 0}, "queue.max_attempts", "integer >= 1"),
    ({"spool": "/q", "queue_out_limit": 0}, "queue.queue_out_limit", "integer >= 1"),
    ({"spool": "/q", "queue_out_wait": 0}, "queue.queue_out_wait", "seconds > 0"),
    ({"spool": "/q", "queue_out_dir": ""}, "queue.queue_out_dir", "directory path or null"),
    ({"spool": "/q", "mode": "rwx"}, "queue.mode", "permissions such as '0o700'"),
    ({"spool": "/q", "mode": 0o10000}, "queue.mode", "permissions"),
    ({"spool": "/q", "queue_in_perms": "rw"}, "queue.queue_in_perms", "permissions such as"),
    ({"spool": "/q", "queue_in_wait": 0}, "queue.queue_in_wait", "seconds > 0"),
    ({"spool": "/q", "queue_in_wait": "1s"}, "queue.queue_in_wait", "seconds > 0"),
])
def test_invalid_queue_options_are_named(queue, field, fragment):
    error = error_of(queue=queue)
    assert error.field == field
    assert fragment in str(error)
    assert str(error).startswith(field + "=")


@pytest.mark.parametrize("mode", ["0700", "0o750", 0o640])
def test_queue_mode_accepts_octal_strings_and_ints(mode):
    expected = mode if isinstance(mode, int) else int(mode, 8)
    assert spec(queue={"spool": "/q", "mode": mode}).queue["mode"] == expected


def test_mentat_queue_in_options_are_spool_keys():
    s = spec(queue={"spool": "/q", "queue_in_perms": "0750", "queue_in_wait": 2})
    assert (s.queue["queue_in_perms"], s.queue["queue_in_wait"]) == (0o750, 2.0)
    assert s.to_dict()["queue"]["queue_in_perms"] == "0o750"  # as mode: readable octal
    assert InstanceSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    defaults = spec(queue={"spool": "/q"}).queue
    assert (defaults["queue_in_perms"], defaults["queue_in_wait"]) == (None, None)


def test_to_dict_is_json_and_round_trips_every_field():
    s = spec(channels=['a"; DROP TABLE x; --', "b"], min_concurrency=2, max_concurrency=8,
             enabled=False, restart="transient", run_on="any", queue={"spool": "/q"},
             queue_size=5, handler_timeout=None, isolation="process",
             dsn={"host": "db1", "port": 5432, "password": "s3cret"}, restart_max_rate="2/h")
    data = json.loads(json.dumps(s.to_dict()))
    assert set(data) == {f.name for f in dataclasses.fields(InstanceSpec)}
    assert data["channels"] == ['a"; DROP TABLE x; --', "b"]
    assert data["dsn"]["password"] == "s3cret"  # stored: omit nothing
    assert InstanceSpec.from_dict(data) == s


def test_replace_validates_and_leaves_the_original():
    s = spec()
    assert s.replace(max_concurrency=4).max_concurrency == 4
    assert s.max_concurrency == 1
    with pytest.raises(InvalidConfigurationException, match="max_concurrency=0"):
        s.replace(max_concurrency=0)
    with pytest.raises(InvalidConfigurationException, match="unknown field.*'colour'"):
        s.replace(colour="red")
    with pytest.raises(InvalidConfigurationException, match="cannot import"):
        s.replace(handler="no_such_pkg:fn")


def test_replace_does_not_import_an_unchanged_handler():
    s = InstanceSpec.from_dict(dict(BASE, handler="not_installed:fn"), resolve=False)
    assert s.replace(enabled=False).enabled is False


@pytest.mark.parametrize("dsn", [
    "host=db1 user=app password=s3cret dbname=app",
    "host=db1 password='s3 cret' dbname=app",
    "postgresql://app:s3cret@db1/app",
    "postgresql://db1/app?user=app&password=s3cret",
    {"host": "db1", "password": "s3cret"},
])
def test_repr_and_errors_never_show_the_dsn_password(dsn):
    s = spec(dsn=dsn)
    assert "s3cret" not in repr(s) and "s3 cret" not in repr(s)
    assert "db1" in repr(s)
    with pytest.raises(InvalidConfigurationException) as info:
        InstanceSpec.from_dict(dict(s.to_dict(), max_concurrency=0, dsn=dsn))
    assert "s3cret" not in str(info.value)


def test_invalid_dsn_dict_error_redacts_the_password():
    error = error_of(dsn={"password": "s3cret", "port": [1]})
    assert "s3cret" not in str(error)
    assert "'password': '%s'" % REDACTED in str(error)


def test_equal_specs_hash_equal_and_pickle():
    a, b = spec(queue={"spool": "/q"}), spec(queue={"spool": "/q"})
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != spec(max_concurrency=2)
    assert pickle.loads(pickle.dumps(a)) == a


def test_every_queue_problem_is_reported():
    error = error_of(queue={"spool": 3, "fsync": "no", "max_attempts": 0})
    assert [p.field for p in error.problems] == ["queue.spool", "queue.fsync",
                                                 "queue.max_attempts"]
    assert str(error).splitlines()[0] == "3 problems in instance 'river':"


def test_restart_fields_name_what_a_running_instance_cannot_take_live():
    base = InstanceSpec(name="river", channels=("a",), handler="json:dumps")
    assert base.restart_fields(base) == ()
    live = base.replace(channels=("a", "b"), max_concurrency=4, enabled=False)
    assert live.changed_fields(base) == ("channels", "enabled", "max_concurrency")
    assert live.restart_fields(base) == ()
    assert base.replace(handler="json:loads").restart_fields(base) == ("handler",)
    source = base.replace(channels=(), queue={"spool": "/tmp/x"})
    assert source.restart_fields(base) == ("channels", "queue")  # to none: no listener


@pytest.mark.parametrize("value", [0, -1, 10001, True, "10", 1.5, [5]])
def test_a_bad_batch_names_the_field_and_the_value(value):
    error = error_of(batch=value)
    assert (error.field, error.value) == ("batch", value)
    assert str(error).startswith("batch=%r: must be null" % (value,))
    assert "between 1 and 10000" in str(error)


@pytest.mark.parametrize("value", ["chanel", "", 5, "json", "json:", "no such:thing", ["a"]])
def test_a_bad_order_key_names_the_field_and_the_value(value):
    error = error_of(order_key=value)
    assert (error.field, error.value) == ("order_key", value)
    assert str(error).startswith("order_key=%r" % (value,))


def test_an_order_key_path_is_imported_like_a_handler_and_named_when_it_fails():
    assert spec(order_key="json:dumps").resolve_order_key() is json.dumps
    assert spec(order_key="channel").resolve_order_key() == "channel"
    error = error_of(order_key="json:no_such_function")
    assert error.field == "order_key" and "has no attribute 'no_such_function'" in str(error)
    unresolved = InstanceSpec.from_dict(dict(BASE, order_key="no_such_mod:key"), resolve=False)
    with pytest.raises(InvalidConfigurationException, match="order_key='no_such_mod:key'"):
        unresolved.resolve_order_key()


@pytest.mark.parametrize("changes, fields", [
    ({"batch": 10, "order_key": "channel"}, "batch,order_key"),
    ({"batch": 10, "queue": {"spool": "/q", "queue_out_dir": "/out"}}, "batch,queue"),
    ({"order_key": "payload", "isolation": "process", "queue": {"spool": "/q"}},
     "order_key,isolation"),
])
def test_unsupported_combinations_of_batch_and_order_key_are_named(changes, fields):
    assert error_of(**changes).field == fields


def test_batch_and_order_key_round_trip_through_to_dict():
    for s in (spec(batch=500, queue={"spool": "/q"}, isolation="process"),
              spec(order_key="json:dumps", max_concurrency=4)):
        data = json.loads(json.dumps(s.to_dict()))
        assert InstanceSpec.from_dict(data) == s
    assert (spec().batch, spec().order_key) == (None, None)
    assert {"batch", "order_key"} <= set(spec(batch=2).restart_fields(spec()) +
                                         spec(order_key="channel").restart_fields(spec()))
