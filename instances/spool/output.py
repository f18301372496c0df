"""The :class:`OutputQueue`: where a spool consumer sends handled messages on (mentat's
``queue_out_dir``, ``queue_out_limit``, ``queue_out_wait``)."""
import os

from instances.spec import QUEUE_DEFAULTS, check_queue_option


class OutputQueue:
    """Where :meth:`FileQueue.done` / :meth:`FileQueue.forward` send messages on
    (mentat's ``queue_out_dir``), with back-pressure: wait while it holds more than
    ``limit`` files (``tmp/`` + ``incoming/``), re-checking every ``wait`` seconds.
    ``limit`` and ``wait`` override the class attributes (checked as the spec's
    ``queue`` options are)."""

    #: Files allowed in the output queue before writers wait (mentat's queue_out_limit).
    limit = QUEUE_DEFAULTS["queue_out_limit"]
    #: Seconds between checks while the output queue is full (mentat's queue_out_wait).
    wait = QUEUE_DEFAULTS["queue_out_wait"]

    def __init__(self, directory, limit=None, wait=None):
        self.directory = os.path.abspath(directory)
        if limit is not None:
            self.limit = check_queue_option("queue_out_limit", limit, "queue_out_limit")
        if wait is not None:
            self.wait = check_queue_option("queue_out_wait", wait, "queue_out_wait")
