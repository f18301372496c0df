"""Contender 1, the limit: raw psycopg2, one connection, select() on its socket, poll(),
drain ``conn.notifies`` and call the handler in the loop. No gevent, no framework."""
import select
import time

import psycopg2

from bench import protocol, sink


def main():
    args = protocol.arguments(__doc__)
    conn = psycopg2.connect(args.dsn, application_name="bench-raw")
    conn.autocommit = True
    conn.cursor().execute('LISTEN "%s"' % args.channel)
    finished = []
    sink.state.reset(args.expected, lambda: finished.append(True))
    handle, notifies = sink.handle, conn.notifies
    first_received = None
    deadline = time.monotonic() + args.timeout
    protocol.ready()
    while not finished and time.monotonic() < deadline:
        if not select.select([conn], [], [], 1.0)[0]:
            continue
        conn.poll()
        if notifies and first_received is None:
            first_received = time.time()
        for notify in notifies:
            handle(notify)
        del notifies[:]
    protocol.drained()
    protocol.result(sink.summary(first_received), timed_out=not finished)


if __name__ == "__main__":
    main()
