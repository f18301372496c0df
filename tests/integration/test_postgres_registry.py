"""PostgresRegistry against a real server: the file registry's API and errors, atomic edits
from two registries at once, the NOTIFY after each committed edit, hand-edited rows,
merge / replace, and a database outage (reads keep the last state, edits change nothing)."""
import json
import time

import gevent
import pytest

from instances import InstanceSpec
from instances.connectors import PostgresConnector
from instances.exceptions import InvalidConfigurationException, RegistryError
from instances.registry import (
    InstanceExists,
    PostgresRegistry,
    RegistryUnavailable,
    UnknownInstance,
)
from instances.registry.table import channel_of
from supervisor.testing import FaultProxy, wait_for

pytestmark = [pytest.mark.timeout(60), pytest.mark.usefixtures("hub_heartbeat")]


def make(name, **fields):
    fields.setdefault("channels", ["doc_changed"])
    fields.setdefault("handler", "json:dumps")
    return InstanceSpec(name=name, **fields)


@pytest.fixture
def registry(pg_dsn):
    registry = PostgresRegistry(pg_dsn)
    yield registry
    registry.close()


def rows(pg_database, schema="pgvisor"):
    return {name: (json.loads(spec) if isinstance(spec, str) else spec, enables)
            for name, spec, enables in pg_database.execute(
                "SELECT name, spec, enables FROM %s.registry" % schema)}


def test_crud_is_the_file_registry_api_with_rows_in_the_table(registry, pg_database):
    assert (len(registry), registry.version, list(registry), registry.loaded) == (0, 0, [], True)
    river = registry.add(make("river", max_concurrency=2))
    registry.add(make("alpha"))
    assert registry.names() == ["alpha", "river"] and "river" in registry
    assert registry.update("river", max_concurrency=8).max_concurrency == 8
    registry.disable("alpha")
    assert registry.get("alpha").enabled is False
    registry.enable("alpha")
    assert registry.remove("river") == river.replace(max_concurrency=8)
    stored = rows(pg_database)
    assert list(stored) == ["alpha"]
    assert stored["alpha"][0] == registry.get("alpha").to_dict() and stored["alpha"][1] == 1
    assert registry.version == 6
    assert pg_database.execute("SELECT version FROM pgvisor.registry_version") == [(6,)]


def test_errors_are_the_file_registrys_and_change_nothing(registry, pg_database):
    registry.add(make("river"))
    before = (rows(pg_database), registry.version)
    with pytest.raises(InstanceExists, match="already exists in registry schema pgvisor on"):
        registry.add(make("river"))
    with pytest.raises(UnknownInstance, match="no instance named 'nope'"):
        registry.update("nope", max_concurrency=3)
    with pytest.raises(InvalidConfigurationException) as caught:
        registry.update("river", max_concurrency=0)
    assert caught.value.field == "max_concurrency"
    with pytest.raises(InvalidConfigurationException, match="cannot be renamed"):
        registry.update("river", name="other")
    with pytest.raises(UnknownInstance):
        registry.remove("nope")
    assert (rows(pg_database), registry.version) == before
    assert registry.get("nope", None) is None


def test_a_second_registry_sees_edits_on_reload_and_edits_never_lose_each_other(pg_dsn):
    one, two = PostgresRegistry(pg_dsn), PostgresRegistry(pg_dsn)
    try:
        seen = []
        two.on_change(lambda reg: seen.append(reg.names()))
        one.add(make("river"))
        assert two.reload() is True and seen == [["river"]]
        assert two.reload() is False  # the version did not move: the rows are not read
        # Both edit at once from stale memory: each edit re-reads the rows under the lock.
        jobs = [gevent.spawn(one.add, make("a%d" % i)) for i in range(5)]
        jobs += [gevent.spawn(two.add, make("b%d" % i)) for i in range(5)]
        gevent.joinall(jobs, raise_error=True, timeout=30)
        two.reload()
        one.reload()
        assert one.names() == two.names() == sorted(
            ["river"] + ["a%d" % i for i in range(5)] + ["b%d" % i for i in range(5)])
        assert one.version == two.version == 11
    finally:
        one.close()
        two.close()


def test_every_committed_edit_notifies_its_version_and_a_refused_one_nothing(
        registry, pg_dsn):
    listener = PostgresConnector(pg_dsn)
    try:
        listener.listen([registry.channel])
        registry.add(make("river"))
        with pytest.raises(InstanceExists):
            registry.add(make("river"))
        registry.update("river", max_concurrency=3)
        registry.remove("river")
        payloads = []

        def all_arrived():
            payloads.extend(n.payload for n in listener.poll_notifies())
            return "3" in payloads
        wait_for(all_arrived, timeout=10)
        assert payloads == ["1", "2", "3"]
        assert registry.channel == "pgvisor_registry"
    finally:
        listener.disconnect()


def test_a_reload_parses_only_the_rows_that_changed(pg_dsn, registry):
    other = PostgresRegistry(pg_dsn)
    try:
        for i in range(20):
            other.add(make("i%02d" % i))
        registry.reload()
        before = {spec.name: spec for spec in registry}
        other.update("i07", max_concurrency=4)
        other.remove("i08")
        assert registry.reload() is True
        after = {spec.name: spec for spec in registry}
        assert after["i07"].max_concurrency == 4 and "i08" not in after
        assert all(after[n] is before[n] for n in after if n != "i07")  # reused, not parsed
    finally:
        other.close()


def test_an_enable_of_an_enabled_instance_reaches_another_registry(pg_dsn):
    one, two = PostgresRegistry(pg_dsn), PostgresRegistry(pg_dsn)
    try:
        one.add(make("river"))
        two.reload()
        enabled = []
        two.on_enable(enabled.append)
        one.enable("river")
        two.reload()
        assert enabled == ["river"]
    finally:
        one.close()
        two.close()


def test_a_bad_row_written_by_hand_is_rejected_naming_it_and_the_state_stays(
        registry, pg_database):
    registry.add(make("river"))
    pg_database.execute(
        "UPDATE pgvisor.registry SET spec = spec || '{\"max_concurrency\": -1}';"
        " UPDATE pgvisor.registry_version SET version = version + 1")
    with pytest.raises(RegistryError) as caught:
        registry.reload()
    assert "row 'river'" in str(caught.value)
    assert "max_concurrency" in str(caught.value)
    assert registry.get("river").max_concurrency == 1
    with pytest.raises(RegistryError):  # an edit reads the rows too: refused, nothing written
        registry.add(make("other"))
    assert "other" not in registry


def test_merge_adds_and_replaces_and_replace_removes_the_rest(registry, pg_database):
    registry.add(make("keep"))
    registry.add(make("river"))
    report = registry.merge([make("river", max_concurrency=5), make("new")])
    assert report == {"added": ["new"], "updated": ["river"], "unchanged": [],
                      "removed": []}
    assert registry.names() == ["keep", "new", "river"] and registry.version == 3
    report = registry.merge([make("new")], replace=True)
    assert report == {"added": [], "updated": [], "unchanged": ["new"],
                      "removed": ["keep", "river"]}
    assert list(rows(pg_database)) == ["new"]
    with pytest.raises(InvalidConfigurationException, match="duplicate instance name"):
        registry.merge([make("x"), make("x")])
    assert registry.names() == ["new"]


def test_another_schema_keeps_its_own_registry_and_channel(pg_dsn, registry, pg_database):
    odd = PostgresRegistry(pg_dsn, schema='team "b"')
    try:
        odd.add(make("river"))
        assert "river" not in registry and odd.channel == 'team "b"_registry'
        assert registry.reload() is False
    finally:
        odd.close()
    assert channel_of("pgvisor") == "pgvisor_registry"
    with pytest.raises(InvalidConfigurationException, match="registry.schema=''"):
        PostgresRegistry(pg_dsn, schema="")


@pytest.mark.timeout(90)
def test_an_outage_keeps_the_last_state_and_edits_change_nothing(pg_private_cluster):
    dsn = pg_private_cluster.dsn
    registry = PostgresRegistry(dsn)
    try:
        registry.add(make("river"))
        pg_private_cluster.stop()
        with pytest.raises(RegistryUnavailable):
            registry.reload()
        assert registry.names() == ["river"] and registry.get("river").name == "river"
        with pytest.raises(RegistryUnavailable):
            registry.add(make("other"))
        assert registry.names() == ["river"]
        pg_private_cluster.start()
        registry.add(make("other"))
        assert registry.names() == ["other", "river"]
    finally:
        registry.close()


@pytest.mark.timeout(90)
def test_a_registry_opened_while_the_database_is_down_starts_empty_and_loads_later(
        pg_private_cluster):
    dsn = pg_private_cluster.dsn
    PostgresRegistry(dsn).add(make("river"))
    pg_private_cluster.stop()
    with pytest.raises(RegistryUnavailable):
        PostgresRegistry(dsn)
    registry = PostgresRegistry(dsn, connect=False)
    try:
        assert (registry.loaded, list(registry)) == (False, [])
        pg_private_cluster.start()
        assert registry.reload() is True and registry.names() == ["river"]
    finally:
        registry.close()


def test_a_database_that_stops_answering_is_unavailable_within_the_timeout(
        pg_cluster, pg_database):
    """A cut network (the proxy's blackhole: no data, no close, keepalives answered) must
    not hang a reload or an edit, nor the greenlets waiting behind it."""
    with FaultProxy(pg_cluster.port) as proxy:
        dsn = proxy.dsn_for(pg_cluster, dbname=pg_database.name)
        registry = PostgresRegistry(dsn)
        registry.timeout = 1.0
        try:
            registry.add(make("river"))
            registry.update("river", max_concurrency=2)  # the version moved: reload reads
            proxy.blackhole()
            for attempt in (registry.reload, lambda: registry.add(make("other"))):
                started = time.monotonic()
                with pytest.raises(RegistryUnavailable, match="no answer within 1 s"):
                    attempt()
                assert time.monotonic() - started < 5
            assert registry.names() == ["river"]
            proxy.heal()
            registry.add(make("other"))
        finally:
            registry.close()
    assert [n for (n,) in pg_database.execute(
        "SELECT name FROM pgvisor.registry ORDER BY 1")] == ["other", "river"]

