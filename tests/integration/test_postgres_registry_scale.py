"""PostgresRegistry with 1,000 instances: the first load yields to the hub between chunks
of rows, and a reload after one edit checks that one row only (the others' specs are the
objects already held). Figures are printed (``-s``), never asserted: the machine is shared.
No hub_heartbeat here: on two busy cores a tick can come late while nobody holds the hub;
what is asserted is that the load lets other greenlets run while it works."""
import time

import gevent
import pytest

from instances import InstanceSpec
from instances.registry import PostgresRegistry

pytestmark = pytest.mark.timeout(120)


def make(name, **fields):
    fields.setdefault("channels", ["doc_changed"])
    fields.setdefault("handler", "json:dumps")
    return InstanceSpec(name=name, **fields)


def test_a_thousand_instances_load_in_chunks_and_one_edit_costs_one_row(pg_dsn):
    writer, reader = PostgresRegistry(pg_dsn), PostgresRegistry(pg_dsn)
    ticks = [0]

    def tick():
        while True:
            gevent.sleep(0)
            ticks[0] += 1
    ticker = gevent.spawn(tick)
    try:
        specs = [make("i%04d" % i, channels=["c%d" % i]) for i in range(1000)]
        started = time.monotonic()
        writer.merge(specs)
        merged = time.monotonic() - started
        before = ticks[0]
        started = time.monotonic()
        assert reader.reload() is True and len(reader) == 1000
        loaded = time.monotonic() - started
        # 1,000 rows checked 50 at a time: the other greenlets ran between the chunks.
        assert ticks[0] - before >= 1000 // reader.parse_chunk - 1
        held = {spec.name: spec for spec in reader}
        writer.update("i0500", max_concurrency=2)
        started = time.monotonic()
        assert reader.reload() is True
        followed = time.monotonic() - started
        assert reader.get("i0500").max_concurrency == 2
        assert all(spec is held[spec.name] for spec in reader if spec.name != "i0500")
        print("1,000 instances: merge %.0f ms, first load %.0f ms, reload after one edit "
              "%.1f ms" % (merged * 1000, loaded * 1000, followed * 1000))
    finally:
        ticker.kill()
        writer.close()
        reader.close()
