"""The durable spool: mentat's filer protocol as a queue (docs/spool.rst).

Public: :class:`FileQueue` (a spool directory as a queue), :class:`OutputQueue` (the piper's
output spool with its limit), :data:`QueueClosed`, and :func:`stats` (the counts of a spool
directory without opening it). The modules beside it are private parts: ``layout`` (the
directories and their counts), ``names`` (file names and owner ids), ``codec`` (every JSON
read and write of a spool), ``writer`` (tmp/ then rename), ``claims`` (a consumer's claimed
files, from ``incoming/`` through ``pending/<owner>/`` to their outcome), ``readthrough``
(the messages of files a queue wrote, kept for its own claims of them), ``recovery`` (dead
owners' claims and stale tmp files) and ``errors`` (the ``errors/`` directory and its
``.meta`` files).
"""
from instances.spool.layout import stats
from instances.spool.output import OutputQueue
from instances.spool.queue import FileQueue, QueueClosed

__all__ = ["FileQueue", "OutputQueue", "QueueClosed", "stats"]
