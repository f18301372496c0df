"""The prose of RESULTS.md: how each figure is measured, and what limits pgvisor.

Kept next to the code that measures it so the generated file never needs a hand edit."""

METHOD = """\
- **Load**: one producer ({producer}) in the orchestrating process, its own connection;
  batched `SELECT count(pg_notify(ch, p)) FROM unnest(array)` of 100-byte payloads that start
  with the send timestamp (`time.time()` taken just before the batch is sent).
- **Handler**: `bench.sink.handle`, the same for every contender: append
  `(time.time(), payload)` to a list, signal when all arrived. Latency = handler start minus
  the payload's send timestamp (same host clock).
- **Contenders**, each in a fresh interpreter: raw psycopg2 (select() on the socket, poll(),
  iterate `conn.notifies`, call the handler — no framework); asyncpg 0.29+ `add_listener`
  -> `asyncio.Queue` -> one consumer task (default asyncio loop, no uvloop); pgvisor as
  shipped: `python -m gevent.monkey`, one instance (min=max=1 processor, memory queue of
  10,000) under a real `Supervisor`, logging configured at INFO (text, to a file), the
  Prometheus collector registered and scraped once at the end; pgvisor with a spool queue
  (`queue={{"spool": DIR, "fsync": ...}}` through the real `Instance`, spool on {spool}).
- **Runs**: figures and contenders interleaved (A B C D E, A B C D E, ...), {reps}
  repetition(s); median, min and max over the repetitions; "vs raw" is the ratio of medians
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


def text(size, profile_text):
    """The "How it was measured" section (and what limits pgvisor) for ``size``."""
    return METHOD.format(producer="bench.producer.Producer", spool="bench spool base",
                         **size) + "\n" + LIMITS


LIMITS = """\
### What limits pgvisor

The throughput gap to raw psycopg2 is per-notification Python work that the raw loop does
not do; nothing waits on anything (no lock, no sleep, one context switch per drained read,
not per notification). Per notification, on top of the raw loop's `poll()` + handler:

1. `instances/connectors.py` `PostgresConnector.poll_notifies`: `list(map(_notify_tuple,
   notifies))` calls a Python function and builds a tuple for every psycopg2 `Notify`
   (which already has `.pid`, `.channel`, `.payload`), then `del notifies[:]`.
2. `instances/listeners.py` `post_execute`: builds a `Notification` (a Python `__init__` with
   six attribute stores) and makes one `queue.put(item, True, put_beat)` call per item.
3. `instances/processors.py` `ProcessorPool._loop`: per item, `worker.idle` set twice
   around a `try/finally`, the `get()` timeout recomputed (`len(workers)`, two attribute
   reads), `queue.get`, `time.monotonic()` into `busy_since`, `busy_since = None`, a
   `queue.done(item)` method call (only a counter for a memory queue) and
   `self.processed += 1`.
4. Garbage collection: three objects per notification (psycopg2's `Notify`, the tuple, the
   `Notification`) instead of one, and up to `queue_size` (10,000) of them alive in the
   memory queue during a drain: generation-2 collections get frequent and long.

In the flat profile below, `_wait_readable` is the listener idling on the socket (before the
producer commits and between reads), not CPU; the handler (`bench/sink.py handle`) is the
same for every contender. The spool contenders are bounded by the file system: every drained
read becomes one spool file (write, rename; plus fsync with fsync=on) and every message is
JSON-encoded and decoded.
"""
