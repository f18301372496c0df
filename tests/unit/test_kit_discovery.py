"""The kit finds the server programs in the documented order, says how to get them when they
are missing, fails (never skips) its fixtures then; wait_for polls to a deadline."""
import pytest

from supervisor.testing import PostgresCluster, binaries, pytest_plugin, wait_for
from supervisor.testing.binaries import BinariesNotFound, find_bindir


@pytest.mark.timeout(10)
def test_explicit_bindir_without_programs_is_a_clear_error(tmp_path, monkeypatch):
    with pytest.raises(BinariesNotFound, match="does not contain"):
        find_bindir(str(tmp_path))
    monkeypatch.setenv("PGVISOR_PG_BINDIR", str(tmp_path))
    with pytest.raises(BinariesNotFound, match="PGVISOR_PG_BINDIR"):
        PostgresCluster()


def _fake_bindir(path):
    path.mkdir(parents=True)
    for name in binaries.REQUIRED:
        (path / name).write_text("#!/bin/sh\n")
        (path / name).chmod(0o755)
    return str(path)


@pytest.mark.timeout(10)
def test_discovery_picks_the_newest_debian_version_numerically(tmp_path, monkeypatch):
    for version in ("9.6", "16", "10"):
        _fake_bindir(tmp_path / version / "bin")
    monkeypatch.delenv("PGVISOR_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # no pg_config
    monkeypatch.setattr(binaries, "_discovered", [])
    monkeypatch.setattr(binaries, "DEBIAN_GLOB", str(tmp_path / "*" / "bin"))
    assert find_bindir() == str(tmp_path / "16" / "bin")
    assert find_bindir(_fake_bindir(tmp_path / "mine")) == str(tmp_path / "mine")


@pytest.mark.timeout(10)
def test_missing_binaries_say_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.delenv("PGVISOR_PG_BINDIR", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(binaries, "_discovered", [])
    monkeypatch.setattr(binaries, "DEBIAN_GLOB", str(tmp_path / "*" / "bin"))
    with pytest.raises(BinariesNotFound, match="apt-get install postgresql.*PGVISOR_PG_BINDIR"):
        find_bindir()


@pytest.mark.timeout(10)
def test_fixtures_fail_rather_than_skip_without_binaries(tmp_path, monkeypatch):
    monkeypatch.setenv("PGVISOR_PG_BINDIR", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match="PGVISOR_PG_BINDIR"):
        pytest_plugin._cluster("kit-no-binaries")


@pytest.mark.timeout(10)
def test_wait_for_returns_the_value_or_raises_at_the_deadline():
    calls = []
    assert wait_for(lambda: calls.append(1) or len(calls) >= 3 and "done") == "done"
    with pytest.raises(AssertionError, match=r"never true: not true within 0.05s"):
        wait_for(lambda: 0, timeout=0.05, message="never true")
