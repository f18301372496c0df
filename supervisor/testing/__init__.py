"""The throwaway Postgres kit: real PostgreSQL servers for tests, made and removed in
well under a second each, plus a fault-injecting TCP proxy and a deadline poller.

Public: :class:`PostgresCluster`, :class:`FaultProxy`, :func:`wait_for`, and the pytest
fixtures of :mod:`supervisor.testing.pytest_plugin`. See docs/testing.rst.
"""
from supervisor.testing.binaries import BinariesNotFound, ClusterError, find_bindir
from supervisor.testing.cluster import PostgresCluster
from supervisor.testing.heartbeat import HubHeartbeat
from supervisor.testing.proxy import FaultProxy
from supervisor.testing.waiting import holds, wait_for

__all__ = ["PostgresCluster", "FaultProxy", "HubHeartbeat", "wait_for", "holds", "ClusterError", "BinariesNotFound",
           "find_bindir"]

