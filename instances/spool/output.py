"""The :class:`OutputQueue`: where a spool consumer sends handled messages on (mentat's
``queue_out_dir``, ``queue_out_limit``, ``queue_out_wait``), and the validation of those
numbers."""
import os

from instances.exceptions import InvalidConfigurationException


class OutputQueue:
    """Where :meth:`FileQueue.done` / :meth:`FileQueue.forward` send messages on
    (mentat's ``queue_out_dir``), with back-pressure: wait while it holds more than
    ``limit`` files (``tmp/`` + ``incoming/``), re-checking every ``wait`` seconds."""

    #: Files allowed in the output queue before writers wait (mentat's queue_out_limit).
    limit = 10000
    #: Seconds between checks while the output queue is full (mentat's queue_out_wait).
    wait = 10.0

    def __init__(self, directory, limit=None, wait=None):
        self.directory = os.path.abspath(directory)
        if limit is not None:
            self.limit = positive(limit, "queue_out_limit", int)
        if wait is not None:
            self.wait = positive(wait, "queue_out_wait", float)


def positive(value, field, kind):
    try:
        number = kind(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number <= 0:
        raise InvalidConfigurationException(
            "%s must be a positive number, not %r" % (field, value), field, value)
    return number
