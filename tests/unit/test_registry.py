"""Registry: the JSON file of desired instances; changes, atomicity, hand edits, concurrency."""
import fcntl
import json
import logging
import os
import stat
import subprocess
import sys

import pytest

from instances import InstanceSpec, Registry
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import InstanceExists, UnknownInstance

pytestmark = pytest.mark.timeout(60)


def make(name, **fields):
    fields.setdefault("channels", ["doc_changed"])
    fields.setdefault("handler", "json:dumps")
    return InstanceSpec(name=name, **fields)


@pytest.fixture
def path(tmp_path):
    return tmp_path / "state" / "registry.json"


@pytest.fixture
def registry(path):
    return Registry(path)


def read(path):
    return json.loads(path.read_text(encoding="utf-8"))


def write(path, doc):
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")


def test_missing_file_and_directory_are_created_empty(path):
    registry = Registry(path)
    assert read(path) == {"format": 1, "version": 0, "instances": []}
    assert (len(registry), registry.version, list(registry)) == (0, 0, [])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # may hold DSN passwords


def test_add_get_iterate_names_len_contains(registry):
    river, alpha = make("river"), make("alpha", max_concurrency=4)
    assert registry.add(river) is river
    registry.add(alpha)
    assert registry.get("river") == river
    assert list(registry) == [alpha, river]
    assert registry.names() == ["alpha", "river"]
    assert len(registry) == 2 and "river" in registry and "nope" not in registry
    assert registry.version == 2


def test_get_unknown_raises_a_clear_key_error_or_returns_the_default(registry):
    registry.add(make("river"))
    with pytest.raises(KeyError) as info:
        registry.get("rivr")
    assert isinstance(info.value, (UnknownInstance, RegistryError))
    assert str(info.value) == "no instance named 'rivr' in registry %s (known: river)" % (
        registry.path)
    assert registry.get("rivr", None) is None


def test_add_of_an_existing_name_is_refused_and_changes_nothing(registry, path):
    registry.add(make("river"))
    before = path.read_bytes()
    with pytest.raises(InstanceExists, match="'river' already exists"):
        registry.add(make("river", max_concurrency=2))
    assert path.read_bytes() == before and registry.get("river").max_concurrency == 1


def test_add_refuses_something_else_than_a_spec(registry):
    with pytest.raises(InvalidConfigurationException, match="must be an InstanceSpec"):
        registry.add({"name": "river"})


def test_update_enable_disable_remove(registry, path):
    registry.add(make("river"))
    assert registry.update("river", max_concurrency=8, channels=["a", "b"]).max_concurrency == 8
    assert registry.get("river").channels == ("a", "b")
    assert registry.disable("river").enabled is False
    assert read(path)["instances"][0]["enabled"] is False
    assert registry.enable("river").enabled is True
    assert registry.remove("river").name == "river"
    assert "river" not in registry and read(path)["instances"] == []
    assert registry.version == read(path)["version"] == 5


def test_update_of_an_unknown_name_is_a_key_error(registry):
    for verb in (registry.enable, registry.disable, registry.remove,
                 lambda n: registry.update(n, max_concurrency=2)):
        with pytest.raises(UnknownInstance, match="no instance named 'ghost'"):
            verb("ghost")
    assert registry.version == 0


def test_invalid_update_changes_nothing(registry, path):
    registry.add(make("river"))
    before = path.read_bytes()
    with pytest.raises(InvalidConfigurationException, match="max_concurrency=0"):
        registry.update("river", max_concurrency=0)
    with pytest.raises(InvalidConfigurationException, match="unknown field.*'colour'"):
        registry.update("river", colour="red")
    with pytest.raises(InvalidConfigurationException, match="cannot be renamed"):
        registry.update("river", name="lake")
    with pytest.raises(InvalidConfigurationException, match="cannot import module"):
        registry.update("river", handler="no_such_pkg:fn")
    assert path.read_bytes() == before and registry.version == 1


def test_unchanged_update_is_not_a_change(registry):
    calls = []
    registry.add(make("river"))
    registry.on_change(calls.append)
    registry.update("river", max_concurrency=1)
    assert registry.version == 1 and calls == []
    registry.enable("river")  # enabled already: no spec change, but the enable is recorded
    assert registry.version == 2 and calls == []


def test_an_enable_in_another_process_reaches_on_enable_listeners_on_reload(path):
    service, cli = Registry(path), Registry(path)
    service.add(make("river"))
    cli.reload()
    heard = []
    service.on_enable(heard.append)
    cli.enable("river")  # already enabled: only the enable count in the file changes
    assert service.reload() is False  # no spec changed...
    assert heard == ["river"]  # ...but the operator's enable was heard
    assert service.reload() is False and heard == ["river"]  # once
    cli.enable("river")
    service.enable("river")  # the CLI's enable and its own, seen together: told once
    assert heard == ["river", "river"]
    assert service.reload() is False and heard == ["river", "river"]


def test_enables_with_bad_counts_are_rejected_and_the_state_stays(path):
    registry = Registry(path)
    registry.add(make("river"))
    doc = json.loads(open(path).read())
    doc["enables"] = {"river": -1}
    with open(path, "w") as f:
        json.dump(doc, f)
    with pytest.raises(RegistryError, match="enables"):
        registry.reload()
    assert registry.names() == ["river"]


def test_resolve_false_accepts_handlers_that_are_not_importable_here(path):
    unresolved = InstanceSpec.from_dict(
        {"name": "river", "channels": ["c"], "handler": "app_only.mod:fn"}, resolve=False)
    with pytest.raises(InvalidConfigurationException, match="cannot import module 'app_only.mod'"):
        Registry(path).add(unresolved)
    cli = Registry(path, resolve=False)
    cli.add(unresolved)
    cli.update("river", handler="app_only.other:fn")
    assert Registry(path).get("river").handler == "app_only.other:fn"  # file: syntax only


def test_version_grows_on_every_change_and_is_persisted(registry, path):
    versions = [registry.version]
    registry.add(make("a"))
    versions.append(registry.version)
    registry.add(make("b"))
    versions.append(registry.version)
    registry.disable("a")
    versions.append(registry.version)
    assert versions == [0, 1, 2, 3]
    assert Registry(path).version == 3


def test_callbacks_run_after_each_change_with_the_registry(registry, path):
    seen = []
    registry.on_change(lambda r: seen.append((r.version, r.names(), read(path)["version"])))
    registry.add(make("river"))
    registry.disable("river")
    registry.remove("river")
    assert seen == [(1, ["river"], 1), (2, ["river"], 2), (3, [], 3)]


def test_a_failing_callback_is_logged_and_never_breaks_the_change(registry, caplog):
    seen = []

    @registry.on_change
    def broken(reg):
        raise RuntimeError("callback bug")

    registry.on_change(seen.append)
    with caplog.at_level(logging.ERROR, logger="instances.registry"):
        registry.add(make("river"))
    assert "river" in registry and seen == [registry]
    record = [r for r in caplog.records if r.action == "registry.callback_failed"][0]
    assert record.exc_info[0] is RuntimeError


def test_the_file_is_pretty_sorted_json_a_human_can_edit(registry, path):
    registry.add(make("zeta"))
    registry.add(make("alpha", channels=['a"; DROP TABLE x; --', "ünïcødé"]))
    text = path.read_text(encoding="utf-8")
    assert text.startswith('{\n  "format": 1,\n  "version": 2,\n  "instances": [\n')
    assert "ünïcødé" in text and text.endswith("}\n")
    doc = json.loads(text)
    assert [i["name"] for i in doc["instances"]] == ["alpha", "zeta"]
    doc["instances"][1]["max_concurrency"] = 3  # a human edits it, keeps the version
    write(path, json.dumps(doc, indent=2))
    assert registry.reload() is True
    assert registry.get("zeta").max_concurrency == 3
    assert registry.get("alpha").channels == ('a"; DROP TABLE x; --', "ünïcødé")
    assert registry.version == 3  # grew although the human did not bump it


def test_reload_without_a_change_returns_false_and_calls_nobody(registry, path):
    registry.add(make("river"))
    calls = []
    registry.on_change(calls.append)
    write(path, json.dumps(read(path)))  # same content, new layout
    assert registry.reload() is False and calls == [] and registry.version == 1


def test_changed_on_disk_tracks_edits_cheaply(registry, path):
    assert registry.changed_on_disk() is False
    registry.add(make("river"))
    assert registry.changed_on_disk() is False  # our own write
    doc = read(path)
    doc["instances"][0]["enabled"] = False
    write(path, doc)
    assert registry.changed_on_disk() is True
    registry.reload()
    assert registry.changed_on_disk() is False
    path.unlink()
    assert registry.changed_on_disk() is True


def valid_doc(**instance_changes):
    instance = {"name": "river", "channels": ["c"], "handler": "json:dumps"}
    instance.update(instance_changes)
    return {"format": 1, "version": 9, "instances": [instance]}


@pytest.mark.parametrize("content, problem", [
    ('{"format": 1,\n "instances": [}', "invalid JSON at line 2 column 16: Expecting value"),
    ("", "invalid JSON at line 1 column 1"),
    ('{"format": 1, "format": 1, "instances": []}', "duplicate key(s) 'format'"),
    (b"\xff\xfe", "is not UTF-8"),
    ([], "must be an object"),
    ({"format": 2, "instances": []}, "format=2: this pgvisor reads format 1"),
    ({"instances": []}, "format=None"),
    ({"format": 1, "version": -1, "instances": []}, "version=-1: must be an integer >= 0"),
    ({"format": 1, "instances": {}}, "instances={}: must be a list"),
    ({"format": 1, "instances": [], "extra": 1}, "unknown key 'extra'"),
    (valid_doc(colour="red"), "instances[0] ('river'): unknown field(s) 'colour'"),
    (valid_doc(max_concurrency=0), "instances[0] ('river'): max_concurrency=0: must be"),
    (valid_doc(name="Bad Name"), "instances[0] ('Bad Name'): name='Bad Name'"),
    (valid_doc(handler="nohandler"), "handler='nohandler': must be 'module.path:callable'"),
    ({"format": 1, "instances": [valid_doc()["instances"][0]] * 2},
     "duplicate instance name 'river' (instances[0], [1])"),
])
def test_invalid_hand_edit_is_rejected_and_the_previous_state_stays(
        registry, path, content, problem):
    registry.add(make("river", max_concurrency=2))
    calls = []
    registry.on_change(calls.append)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write(path, content if isinstance(content, str) else json.dumps(content, indent=1))
    with pytest.raises(RegistryError) as info:
        registry.reload()
    assert str(path) in str(info.value) and problem in str(info.value)
    assert registry.get("river").max_concurrency == 2 and registry.version == 1
    assert calls == []
    edited = path.read_bytes()
    with pytest.raises(RegistryError):  # no change is written over the broken file
        registry.add(make("other"))
    assert path.read_bytes() == edited and "other" not in registry


def test_every_problem_of_a_hand_edit_is_reported(registry, path):
    doc = valid_doc(max_concurrency=0, restart="never")
    doc["instances"].append({"name": "lake", "channels": [], "handler": "json:dumps"})
    write(path, doc)
    with pytest.raises(RegistryError) as info:
        registry.reload()
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid registry %s:" % path
    assert any("max_concurrency=0" in line for line in lines)
    assert any("restart='never'" in line for line in lines)
    assert any("instances[1] ('lake'): channels=[]" in line for line in lines)


def test_a_fixed_hand_edit_is_then_accepted(registry, path):
    write(path, "{oops")
    with pytest.raises(RegistryError):
        registry.reload()
    write(path, valid_doc())
    assert registry.reload() is True and registry.names() == ["river"]
    assert registry.version == 9  # the file's version, higher than ours


def test_an_invalid_file_at_construction_is_an_error_and_is_not_overwritten(path):
    path.parent.mkdir()
    write(path, '{"format": 1, "instances": [')
    with pytest.raises(RegistryError, match="invalid JSON at line 1 column 29"):
        Registry(path)
    assert path.read_text() == '{"format": 1, "instances": ['


def test_a_deleted_file_is_an_error_on_reload_and_on_change(registry, path):
    registry.add(make("river"))
    path.unlink()
    with pytest.raises(RegistryError, match="cannot read registry"):
        registry.reload()
    with pytest.raises(RegistryError, match="cannot read registry"):
        registry.add(make("lake"))
    assert registry.names() == ["river"] and not path.exists()


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_crash_while_writing_leaves_the_old_file_intact(registry, path, monkeypatch, failing):
    registry.add(make("river"))
    before = path.read_bytes()
    calls = []
    registry.on_change(calls.append)

    def crash(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, failing, crash)
    with pytest.raises(RegistryError, match="cannot write registry .*No space left on device"):
        registry.add(make("lake"))
    monkeypatch.undo()
    assert path.read_bytes() == before and json.loads(before)  # unchanged and readable
    assert sorted(os.listdir(path.parent)) == ["registry.json", "registry.json.lock"]
    assert registry.names() == ["river"] and registry.version == 1 and calls == []
    assert Registry(path).names() == ["river"]


def test_a_stray_temp_file_from_a_killed_writer_is_harmless(registry, path):
    (path.parent / ".registry.json.abc.tmp").write_text('{"torn')
    registry.add(make("river"))
    assert Registry(path).names() == ["river"]


def test_rewrite_keeps_the_mode_a_human_chose(registry, path):
    os.chmod(path, 0o640)
    registry.add(make("river"))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def test_two_registries_on_one_file_never_lose_each_others_changes(path):
    service, cli = Registry(path), Registry(path)
    service.add(make("river"))
    cli.add(make("lake"))  # cli's memory predates "river": re-read under the lock
    assert cli.names() == ["lake", "river"]
    service.disable("lake")  # service never saw "lake" in memory either
    assert Registry(path).names() == ["lake", "river"]
    assert Registry(path).get("lake").enabled is False
    seen = []
    cli.on_change(seen.append)
    assert cli.reload() is True and seen == [cli]
    assert cli.version == service.version == 3


def test_a_change_waits_for_the_lock_and_gives_up_with_a_clear_error(registry, path):
    fd = os.open(registry.lock_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        registry.lock_timeout = 0.2
        with pytest.raises(RegistryError, match="locked by another process"):
            registry.add(make("river"))
    finally:
        os.close(fd)
    registry.add(make("river"))
    assert Registry(path).names() == ["river"]


ADDER = """
import sys
from instances import InstanceSpec, Registry
registry = Registry(sys.argv[1])
print("ready", flush=True)
sys.stdin.readline()  # start together with the others
for i in range(int(sys.argv[3])):
    registry.add(InstanceSpec(name="%s-%d" % (sys.argv[2], i), channels=["c"],
                              handler="json:dumps"))
    registry.update("shared", channels=["c", "%s-%d" % (sys.argv[2], i)])
"""


@pytest.mark.timeout(120)
def test_concurrent_processes_editing_lose_nothing(registry, path):
    registry.add(make("shared"))
    count = 25
    procs = [subprocess.Popen([sys.executable, "-c", ADDER, str(path), who, str(count)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
             for who in ("p1", "p2")]
    assert [proc.stdout.readline() for proc in procs] == ["ready\n"] * 2
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.close()
    for i in range(count):
        registry.add(make("local-%d" % i))
    assert [proc.wait(timeout=100) for proc in procs] == [0, 0]
    registry.reload()
    expected = {"shared"} | {"%s-%d" % (who, i) for who in ("p1", "p2", "local")
                             for i in range(count)}
    assert set(registry.names()) == expected
    assert registry.version == read(path)["version"] == 1 + 3 * count + 2 * count


def test_status_names_the_backend_and_never_the_file(registry, path):
    registry.add(make("river"))
    assert registry.status() == {"backend": "file", "version": 1, "instances": 1}
    assert str(path) not in repr(registry.status())
