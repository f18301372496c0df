"""Host resolution for libpq: names become ``hostaddr`` entries, resolved by the caller's
resolver (the connector's runs off the hub); ``host`` is kept for TLS and ~/.pgpass."""
import os
import socket
import subprocess
import sys
from types import MappingProxyType

import pytest

from instances.dsn import (
    host_attempts,
    host_entries,
    normalize_dict,
    secret_fragments,
    with_hostaddr,
)

ADDRESSES = {"db1": ["10.0.0.1"], "db2": ["10.0.0.2", "fd00::2"], "lb": ["10.0.0.9"]}


def resolve(host, port):
    if host not in ADDRESSES:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    return ADDRESSES[host]


def test_a_name_gets_its_address_and_keeps_its_host_name():
    params = {"host": "db1", "port": "5433", "dbname": "app", "sslmode": "verify-full"}
    out = with_hostaddr(params, resolve, {})
    assert out == dict(params, hostaddr="10.0.0.1")
    assert params == {"host": "db1", "port": "5433", "dbname": "app",
                      "sslmode": "verify-full"}  # the caller's dict is not changed


def test_a_name_with_several_addresses_becomes_one_entry_per_address_in_order():
    out = with_hostaddr({"host": "db1,db2", "port": "5432,6432",
                         "target_session_attrs": "read-write"}, resolve, {})
    assert out["host"] == "db1,db2,db2"
    assert out["hostaddr"] == "10.0.0.1,10.0.0.2,fd00::2"
    assert out["port"] == "5432,6432,6432"
    assert out["target_session_attrs"] == "read-write"


def test_socket_paths_and_address_literals_need_no_resolver_call():
    calls = []

    def counting(host, port):
        calls.append(host)
        return resolve(host, port)

    assert with_hostaddr({"host": "/run/postgresql"}, counting, {}) == {
        "host": "/run/postgresql"}
    assert with_hostaddr({"host": "127.0.0.1,::1"}, counting, {}) == {"host": "127.0.0.1,::1"}
    mixed = with_hostaddr({"host": "/tmp,lb,127.0.0.1"}, counting, {})
    assert (mixed["host"], mixed["hostaddr"]) == ("/tmp,lb,127.0.0.1", ",10.0.0.9,127.0.0.1")
    assert calls == ["lb"]


def test_nothing_to_do_with_hostaddr_a_service_or_no_host():
    for params in ({"host": "db1", "hostaddr": "10.1.1.1"}, {"service": "app"}, {},
                   {"dbname": "app"}):
        assert with_hostaddr(params, resolve, {}) is params
    assert with_hostaddr({"host": "db1"}, resolve, {"PGHOSTADDR": "10.1.1.1"}) == {
        "host": "db1"}


def test_pghost_and_pgport_from_the_environment_are_resolved_too():
    assert host_entries({}, {"PGHOST": "db1", "PGPORT": "7000"}) == (("db1", "7000"),)
    assert with_hostaddr({}, resolve, {"PGHOST": "db1"}) == {
        "host": "db1", "hostaddr": "10.0.0.1"}


def test_a_name_that_does_not_resolve_is_skipped_like_libpq_does_and_alone_it_raises():
    out = with_hostaddr({"host": "nowhere,db1"}, resolve, {})
    assert (out["host"], out["hostaddr"]) == ("db1", "10.0.0.1")
    with pytest.raises(socket.gaierror):
        with_hostaddr({"host": "nowhere"}, resolve, {})
    with pytest.raises(OSError, match="no address"):
        with_hostaddr({"host": "db1"}, lambda host, port: [], {})


def test_mismatched_host_and_port_lists_are_left_for_libpq_to_report():
    params = {"host": "db1,db2", "port": "1,2,3"}
    assert with_hostaddr(params, resolve, {}) is params


def test_an_object_form_dsn_as_a_spec_keeps_it_is_accepted():
    """Issue 16, item 12: a spec stores its object-form dsn as a read-only mapping."""
    frozen = MappingProxyType({"database": "app", "host": "db1", "password": "s3cret"})
    assert normalize_dict(frozen) == {"dbname": "app", "host": "db1", "password": "s3cret"}
    assert secret_fragments(frozen) == ["s3cret"]


def test_a_multi_host_dsn_is_tried_one_resolved_host_at_a_time_in_order():
    resolved = with_hostaddr({"host": "db1,db2", "port": "5432,6432", "dbname": "app"},
                             resolve, {})
    assert host_attempts(resolved, {}) == [
        {"host": "db1", "hostaddr": "10.0.0.1", "port": "5432", "dbname": "app"},
        {"host": "db2", "hostaddr": "10.0.0.2", "port": "6432", "dbname": "app"},
        {"host": "db2", "hostaddr": "fd00::2", "port": "6432", "dbname": "app"}]


def test_one_host_a_service_or_lists_libpq_refuses_stay_one_attempt():
    for params in ({"host": "db1", "hostaddr": "10.0.0.1"}, {"dbname": "app"},
                   {"service": "main", "host": "a,b"}, {"host": "a,b", "port": "1,2,3"}):
        assert host_attempts(params, {}) == [params]


def test_target_session_attrs_is_kept_per_host_and_prefer_standby_takes_two_passes():
    params = {"host": "10.0.0.1,10.0.0.2", "port": "5432"}
    rw = host_attempts(dict(params, target_session_attrs="read-write"), {})
    assert [a["target_session_attrs"] for a in rw] == ["read-write"] * 2
    prefer = host_attempts(dict(params, target_session_attrs="prefer-standby"), {})
    assert [(a["host"], a["target_session_attrs"]) for a in prefer] == [
        ("10.0.0.1", "standby"), ("10.0.0.2", "standby"),
        ("10.0.0.1", "any"), ("10.0.0.2", "any")]


def test_pghost_and_pgport_give_the_hosts_and_load_balance_hosts_shuffles_them():
    attempts = host_attempts({"load_balance_hosts": "random"},
                             {"PGHOST": "/run/pg,10.0.0.2", "PGPORT": "5433"},
                             shuffle=lambda entries: entries.reverse())
    assert [(a["host"], a["port"]) for a in attempts] == [("10.0.0.2", "5433"),
                                                          ("/run/pg", "5433")]


_FIRST_LOOKUP = r"""
import os, sys, gevent.monkey
gevent.monkey.patch_all()
from instances.connectors import resolve_host
threads, modules = len(os.listdir("/proc/self/task")), set(sys.modules)
addresses = resolve_host("localhost", 5432)
print(len(os.listdir("/proc/self/task")) - threads, sorted(set(sys.modules) - modules),
      addresses)
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="Linux /proc only")
@pytest.mark.timeout(60)
def test_the_first_lookup_runs_in_one_thread_and_imports_nothing():
    """The connector's resolver thread calls the C library's getaddrinfo: gevent's patched
    one made the thread a hub of its own with a second thread, and the ``idna`` codec its
    first call needs was imported there, holding the GIL the hub waited for (a 218 ms stall
    of the hub under load)."""
    out = subprocess.run([sys.executable, "-c", _FIRST_LOOKUP], capture_output=True,
                         text=True, timeout=50, check=True).stdout.split(" ", 1)
    new_threads, rest = int(out[0]), out[1]
    assert new_threads == 1, out
    assert rest.startswith("[] "), "modules imported by the first lookup: %s" % (rest,)
    assert "127.0.0.1" in rest or "::1" in rest
