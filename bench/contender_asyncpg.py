"""Contender 2: asyncpg ``add_listener`` putting into an ``asyncio.Queue``, one consumer
task calling the handler. Runs in its own process: asyncio and gevent never mix."""
import asyncio
import time

import asyncpg
import psycopg2.extensions

from bench import protocol, sink


def connect_kwargs(dsn):
    """asyncpg takes URIs or keywords, not libpq key=value strings: translate."""
    params = psycopg2.extensions.parse_dsn(dsn)
    return {"host": params.get("host"), "port": int(params.get("port", 5432)),
            "user": params.get("user"), "database": params.get("dbname"),
            "password": params.get("password")}


async def consume(queue, handle):
    while True:
        handle(await queue.get())


async def run(args):
    conn = await asyncpg.connect(**connect_kwargs(args.dsn))
    queue, finished = asyncio.Queue(), asyncio.Event()
    sink.state.reset(args.expected, finished.set)
    put, note, now = queue.put_nowait, sink.Note, time.time

    def on_notify(connection, pid, channel, payload):
        put(note(channel, payload, now()))

    await conn.add_listener(args.channel, on_notify)
    consumer = asyncio.ensure_future(consume(queue, sink.handle))
    protocol.ready()
    try:
        await asyncio.wait_for(finished.wait(), args.timeout)
        timed_out = False
    except asyncio.TimeoutError:
        timed_out = True
    consumer.cancel()
    await conn.close()
    protocol.result(sink.summary(), timed_out=timed_out)


def main():
    asyncio.run(run(protocol.arguments(__doc__)))


if __name__ == "__main__":
    main()
