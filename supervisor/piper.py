"""``pgvisor piper``: mentat's piper daemon over a spool, without Postgres.

::

    queue_in_dir ──get──▶ handler(message) ──return value──▶ queue_out_dir (optional)
                                 └── raises ──▶ queue_in_dir/errors/ with a .meta

The handler's return value goes on to the output queue (the pool hands it to
``FileQueue.forward``): a message (dict or Notification), a list of them (one batch file),
or None (nothing goes on). Without ``--queue-out-dir`` it is dropped and the input file
deleted. ``--once`` drains the input queue and exits; otherwise it runs until SIGTERM or
SIGINT, then lets running handlers finish (``--stop-timeout``) and gives unstarted messages
back to ``incoming/``. Every option of mentat's piper has its flag: ``--queue-in-dir``,
``--queue-in-perms``, ``--queue-in-wait``, ``--queue-out-dir``, ``--queue-out-limit``,
``--queue-out-wait``.

:func:`print_message` is the demo handler (mentat's DemoPrintComponent): it prints each
message and passes it on. Exit codes: 0 done, 2 bad arguments or options.
"""
import argparse
import json
import logging
import os
import signal
import sys

import gevent
import gevent.event

from instances import logformat
from instances.exceptions import InvalidConfigurationException
from instances.notification import Notification
from instances.processors import ProcessorPool
from instances.spec import QUEUE_DEFAULTS, check_queue_option, import_handler
from instances.spool import FileQueue
from supervisor import logs
from supervisor.config.settings import SETTINGS

log = logging.getLogger(__name__)

#: Seconds between two looks at a drained queue in ``--once`` mode.
ONCE_POLL = 0.05


def print_message(message):
    """The demo handler: print the message as JSON on stdout, pass it on unchanged."""
    data = message.to_dict() if isinstance(message, Notification) else message
    print(json.dumps(data, sort_keys=True), flush=True)
    return message


def parser():
    p = argparse.ArgumentParser(prog="pgvisor piper", description=__doc__.split("\n")[0])
    p.add_argument("--queue-in-dir", required=True, help="the input spool directory")
    p.add_argument("--queue-in-perms", help="permissions of the spool directories it "
                   "creates, octal (default 0700; group- or world-writable is unsafe)")
    p.add_argument("--queue-in-wait", type=float, help="seconds an idle reader waits "
                   "between looks at incoming/ for other processes' files (default 0.05)")
    p.add_argument("--queue-out-dir", help="the next spool (default: none, results dropped)")
    p.add_argument("--queue-out-limit", type=int, help="files allowed in the next spool "
                   "before writers wait (default 10000)")
    p.add_argument("--queue-out-wait", type=float, help="seconds between checks while the "
                   "next spool is full (default 10)")
    p.add_argument("--handler", required=True, help="module:callable, called per message")
    p.add_argument("--concurrency", type=int, default=1, help="handler greenlets (default 1)")
    p.add_argument("--max-attempts", type=int, default=QUEUE_DEFAULTS["max_attempts"],
                   help="deliveries before a message whose consumer keeps dying is set aside "
                   "(default %d)" % QUEUE_DEFAULTS["max_attempts"])
    p.add_argument("--fsync", action="store_true", help="fsync every file written")
    p.add_argument("--once", action="store_true", help="drain the input queue, then exit")
    p.add_argument("--stop-timeout", type=float, default=10.0,
                   help="seconds running handlers get to finish at exit (default 10)")
    return p


def _option(key, value):
    """A spool option from the command line, checked by the spec's rule (None: default)."""
    return None if value is None else check_queue_option(key, value)


def _drained(queue, concurrency):
    """Every handler greenlet waits in get() on an empty queue: nothing is in flight."""
    return queue.waiting >= concurrency and queue.qsize() == 0


def main(argv=None):
    """Run the piper; returns the process exit code. Blocks the calling greenlet."""
    args = parser().parse_args(argv)
    logs.configure_logging("info", "text")  # the service's format and redaction
    for setting in SETTINGS:  # secrets a handler could log, as the service would hide them
        if setting.secret:
            logformat.register_secret(os.environ.get(setting.env))
    try:
        handler = import_handler(args.handler)
        queue = FileQueue.from_piper_options(
            args.queue_in_dir, args.queue_out_dir, args.queue_out_limit, args.queue_out_wait,
            _option("queue_in_perms", args.queue_in_perms),
            _option("queue_in_wait", args.queue_in_wait),
            fsync=args.fsync, max_attempts=args.max_attempts)
        pool = ProcessorPool(queue, handler, args.concurrency, args.concurrency, None, "piper")
    except InvalidConfigurationException as error:
        print("pgvisor piper: %s" % error, file=sys.stderr)
        return 2
    stop = gevent.event.Event()
    handlers = [gevent.signal_handler(s, stop.set) for s in (signal.SIGTERM, signal.SIGINT)]
    pool.link(lambda _: stop.set())
    pool.start()
    output = queue.output
    log.info("piper %s -> %s with %s (queue_in_perms 0o%o, queue_in_wait %g s%s)",
             args.queue_in_dir, args.queue_out_dir or "-", args.handler, queue.mode,
             queue.poll_interval, "" if output is None else ", queue_out_limit %d, "
             "queue_out_wait %g s" % (output.limit, output.wait),
             extra={"action": "piper.start"})
    try:
        while not stop.wait(ONCE_POLL if args.once else None):
            if args.once and _drained(queue, args.concurrency):
                break
    finally:
        clean = pool.stop(args.stop_timeout)
        queue.close()
        for handle in handlers:
            handle.cancel()
    log.info("piper stopped", extra={"action": "piper.stop"})
    return 0 if clean else 1


if __name__ == "__main__":
    from gevent import monkey
    monkey.patch_all()
    sys.exit(main())
