"""The prose of RESULTS.md: how each figure is measured, and what limits pgvisor.

Kept next to the code that measures it so the generated file never needs a hand edit."""

METHOD = """\
- **Load**: one producer ({producer}) in the orchestrating process, its own connection;
  batched `SELECT count(pg_notify(ch, p)) FROM unnest(array)` of 100-byte payloads that start
  with the send timestamp (`time.time()` taken just before the batch is sent).
- **Handler**: `bench.sink.handle`, the same for every contender: append
  `(time.time(), payload)` to a list, signal when all arrived. Latency = handler start minus
  the payload's send timestamp (same host clock). Each result also carries the process's
  CPU time per notification from the first handled to the last (`cpu_us`).
- **Contenders**, each in a fresh interpreter: raw psycopg2 (select() on the socket, poll(),
  iterate `conn.notifies`, call the handler — no framework); asyncpg 0.29+ `add_listener`
  -> `asyncio.Queue` -> one consumer task (default asyncio loop, no uvloop); pgvisor as
  shipped: `python -m gevent.monkey`, one instance (min=max=1 processor, memory queue of
  10,000) under a real `Supervisor`, logging configured at INFO (text, to a file), the
  Prometheus collector registered and scraped once at the end, the cyclic collector settled
  as `pgvisor run` does (`supervisor.service.settle_collector`: what start-up built frozen,
  `gc.freeze()`, and the young generation's threshold at 2,000); pgvisor with a spool queue
  (`queue={{"spool": DIR, "fsync": ...}}` through the real `Instance`, spool on {spool}).
- **Runs**: figures and contenders interleaved (A B C D E, A B C D E, ...), {reps}
  repetition(s), {drain_reps} of the drain (a fifth of a second a run, on a machine whose
  CPU time per notification moves by half from one minute to the next); median, min and
  max over the repetitions; "vs raw" is the ratio of medians
  (rates: higher is better; latencies: lower is better).
- **Drain**: {drain:,} notifications committed in ONE transaction while the contender
  listens; rate = count / (first received -> last handled). **End-to-end**: {stream:,}
  notifications in autocommitted batches of 500 as fast as the producer goes; rate = count /
  (first send timestamp -> last handled): bounded by the producer and the server, which share
  the machine's CPUs with the contender. The fsync=on spool runs {fsync_n:,} notifications
  (one fsync each).
- **Latency**: {latency_s} s at 1,000/s and at 10,000/s offered, one batch every 5 ms.
- **Restart after kill**: `Supervisor.instance(name).kill()` -> the replacement instance's
  listener LISTENs and its `catch_up` notification is handled ({restart_reps} kills,
  `restart_max_rate="10000/m"` so the budget never parks it).
- **Verify pass / memory**: instances built through the Supervisor's `instance_factory` as
  `bench.pool_instance.PoolInstance` — a real MemoryQueue and a real ProcessorPool (one
  worker greenlet + its manager greenlet), no listener and no connection. Verify = the time
  for `sup.verify(None).get()` ({scale_reps} passes, all instances healthy: the plan says
  "unchanged" for each). Memory = RSS growth of a fresh interpreter from before the registry
  was loaded to all instances running, divided by the count (specs and records included).
- **Outage**: a private cluster; `stop("fast")` -> `sup.paused` (polled every 1 ms);
  `start()` returned -> the first live notification handled (a notifier sends one every
  10 ms). Defaults as shipped: probe every 1 s, listener reconnect backoff 1 s doubling.
- **Process isolation**: one instance with `isolation="process"`, a spool (fsync off),
  min = max = 1 or 2 worker processes, under a Supervisor; handler `bench.isolation.burn`
  (a pure-Python loop of ~2 ms, no yield); {isolation_n:,} notifications committed in one
  transaction; rate = count / (listener's first receipt -> workers report all processed;
  `WorkerProcesses.beat_interval` set to 20 ms for the bench so beats do not round it).
  The machine has 2 CPUs shared with the server and the listener process: 2 workers
  cannot reach 2x.
"""


def text(size, spool_base):
    """The "How it was measured" section (and what limits pgvisor) for ``size``."""
    return METHOD.format(producer="bench.producer.Producer", spool=spool_base,
                         **size) + "\n" + LIMITS


LIMITS = """\
### What limits pgvisor

Throughput: the drain figure is where the framework shows. The hand-off from the
notifier to the processors is one queue put and one get per read (a chunk of ~140
notifications here), not per notification; per notification pgvisor adds the
`Notification` it builds (a tuple subclass, made at C speed) and, in the worker, one
`time.monotonic()` (the handler's deadline) and the handler call; counters, the latency
histogram and the queue's outcome are per chunk. The section "The memory-queue hand-off"
below measures the rest against the raw loop (CPU time per notification, profiles in
`bench/profiles/`) and says what limits each figure.

psycopg2 decodes each channel and payload with the connection's Python codec; for UTF-8
that is a Python wrapper (`encodings/utf_8.py decode` in raw psycopg2's profile), while
pgvisor's own connections get the C decoder (`instances.connectors.FAST_UTF8`). In the
profile below, the hub line is time spent waiting on the socket (before the producer
commits, between reads) or in libev, not pgvisor's Python work; the handler
(`bench/sink.py handle`) is the same for every contender.

The end-to-end rate is bounded by the producer and the server, which share the 2 CPUs with
the contender, so it compresses the differences the drain shows. The p99 latencies were
set by the cyclic collector's full passes over the whole heap (tens of ms each on this
loaded machine, one per run was enough): `pgvisor run` freezes what start-up built
(`gc.freeze()`, `supervisor.service.settle_collector`), and the contender does as the
service does.

The spool contenders are bounded by the file system: every drained read becomes one spool
file (write + rename, plus fsync with fsync=on), each message JSON-encoded and decoded, and
each handled file renamed/removed.
"""
