"""The :class:`Producer`: the one load generator every contender is fed by.

Batched ``pg_notify`` of ~100-byte payloads, each starting with its send timestamp::

    1732284000.123456:42:xxxxxxxx...   (padded to PAYLOAD_SIZE bytes)

Three shapes: :meth:`backlog` (everything committed in ONE transaction: the drain figure),
:meth:`stream` (autocommitted batches as fast as the server takes them: the end-to-end
figure) and :meth:`paced` (a fixed offered rate in small batches every ``tick``: the
latency figures). The timestamp is taken just before the batch's statement is sent; the
commit follows within the statement (autocommit), so latencies include the batch's own
execution (well under a millisecond for a paced batch).

Plain blocking psycopg2 in the orchestrating process (no gevent); the contender runs in
another process.
"""
import time

import psycopg2

#: Bytes per payload (the issue's "~100-byte payloads").
PAYLOAD_SIZE = 100
#: Notifications per statement when streaming.
STREAM_BATCH = 500
#: Seconds between two batches of a paced run.
TICK = 0.005

_SQL = "SELECT count(pg_notify(%s, p)) FROM unnest(%s::text[]) AS p"


def payloads(start, count, stamp):
    """``count`` distinct payloads (Postgres folds duplicates within a transaction)."""
    prefix = "%.6f:" % stamp
    return [(prefix + "%d:" % seq).ljust(PAYLOAD_SIZE, "x") for seq in range(start, start + count)]


class Producer:
    """NOTIFY load on ``channel`` over its own connection to ``dsn``."""

    def __init__(self, dsn, channel="bench"):
        self.channel = channel
        self.conn = psycopg2.connect(dsn, application_name="pgvisor-bench-producer")
        self.conn.autocommit = True
        self.cursor = self.conn.cursor()

    def _send(self, start, count):
        self.cursor.execute(_SQL, (self.channel, payloads(start, count, time.time())))

    def backlog(self, count):
        """Commit ``count`` notifications in one transaction; return the commit time."""
        self.cursor.execute("BEGIN")
        self._send(0, count)
        self.cursor.execute("COMMIT")
        return time.time()

    def stream(self, count, batch=STREAM_BATCH):
        """Send ``count`` notifications in autocommitted batches as fast as possible."""
        for start in range(0, count, batch):
            self._send(start, min(batch, count - start))

    def paced(self, rate, seconds, tick=TICK):
        """Offer ``rate`` notifications per second for ``seconds``, one batch every ``tick``
        (what fell due since the last one); return how many were sent."""
        total = int(rate * seconds)
        sent, began, ticks = 0, time.monotonic(), 0
        while sent < total:
            ticks += 1
            time.sleep(max(0.0, began + ticks * tick - time.monotonic()))
            due = min(total, int(rate * (time.monotonic() - began))) - sent
            if due > 0:
                self._send(sent, due)
                sent += due
        return sent

    def close(self):
        self.conn.close()
