"""The :class:`HubWatch`: reports each time one greenlet holds the gevent hub too long.

gevent's monitor thread (``gevent.config.monitor_thread``) wakes every
``max_blocking_time`` seconds and, when no greenlet switch happened since its last look,
emits :class:`gevent.events.EventLoopBlocked` *in the monitor thread*. A HubWatch
subscribes to that event::

    monitor thread: EventLoopBlocked --> _on_event: attribute it, keep it,
                                         hub.loop.run_callback_threadsafe(_flush)
    hub thread:     _flush (once the hub runs again) --> one WARNING line "hub.blocked",
                                                          on_block(Block)

A long block is seen several times by the monitor thread; every sighting before the hub
runs again belongs to the same block, so each block gives one log line and one
``on_block`` call (the supervisor counts them in ``counters["hub_blocks"]``). The block is
attributed to the instance whose listener or processor greenlet was running (the greenlet
runs a bound method of a Component or ProcessorPool, which carries the instance's name),
else ``instance`` is None. The stack is the one gevent's report took when it saw the block
(its report goes on to walk every greenlet, which can take longer than the block).

gevent's settings are process-wide: the first running HubWatch sets ``monitor_thread``,
``max_blocking_time`` and turns gevent's own stderr report off; the last one to stop
restores them and stops the monitor thread if it started it. start/stop: the hub's thread.
"""
import dataclasses
import logging
import re
import typing
import warnings

import gevent
import gevent.events

from instances.components import Component
from instances.processors import ProcessorPool

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Block:
    """One hub block: ``greenlet`` (repr), ``instance`` (name or None), ``seconds`` (at
    least; the monitor's sightings times its period) and ``stack`` (innermost frames)."""

    greenlet: str
    instance: typing.Optional[str]
    seconds: float
    stack: tuple


_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def owner_of(glet):
    """The instance name of the Component or ProcessorPool whose method ``glet`` runs."""
    owner = getattr(getattr(glet, "_run", None), "__self__", None)
    return owner.name if isinstance(owner, (Component, ProcessorPool)) else None


def blocked_stack(info, depth):
    """The innermost ``depth`` frames ("file:line function") of gevent's report lines."""
    for index, line in enumerate(info[:-1]):
        if str(line).startswith("Blocked Stack"):
            frames = _FRAME.findall(str(info[index + 1]))
            return tuple("%s:%s %s" % frame for frame in frames[-depth:])
    return ()


class HubWatch:
    """Watch the hub of the thread that calls :meth:`start`; ``on_block(Block)`` is called
    in the hub (MUST NOT block or raise) once per block."""

    #: Seconds one greenlet may run without switching before it counts as a block.
    max_blocking_time = 0.1
    #: Innermost frames of the blocking greenlet kept in the log line.
    stack_depth = 4

    _running = []  # the HubWatches started and not stopped (process-wide settings)
    _saved = None  # gevent settings before the first one started, and whether we made
    #                the monitor thread

    def __init__(self, on_block=None, max_blocking_time=None):
        self.on_block = on_block
        if max_blocking_time is not None:
            self.max_blocking_time = max_blocking_time
        self.blocks = 0
        self.hub = None
        self._seen = None  # (greenlet, instance, sightings, stack) of the current block

    def start(self):
        """Subscribe and make sure gevent's monitor thread runs. Returns self."""
        if self.hub is not None:
            return self
        self.hub = gevent.get_hub()
        cls, config = HubWatch, gevent.config
        if not cls._running:
            cls._saved = (config.monitor_thread, config.max_blocking_time,
                          config.print_blocking_reports,
                          self.hub.periodic_monitoring_thread is None)
        config.max_blocking_time = min([self.max_blocking_time] + [
            w.max_blocking_time for w in cls._running])
        config.print_blocking_reports = False
        config.monitor_thread = True
        with warnings.catch_warnings():  # without psutil it cannot watch memory: fine
            warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
            self.hub.start_periodic_monitoring_thread()
        cls._running.append(self)
        gevent.events.subscribers.append(self._on_event)
        return self

    def stop(self):
        """Unsubscribe; the last running HubWatch restores gevent's settings."""
        if self.hub is None:
            return
        if self._on_event in gevent.events.subscribers:
            gevent.events.subscribers.remove(self._on_event)
        HubWatch._running.remove(self)
        if not HubWatch._running:
            config = gevent.config
            monitor_thread, max_time, prints, made = HubWatch._saved
            config.max_blocking_time, config.print_blocking_reports = max_time, prints
            config.monitor_thread = monitor_thread
            thread = self.hub.periodic_monitoring_thread
            if made and thread is not None:
                thread.kill()
                self.hub.periodic_monitoring_thread = None
        self.hub = None

    # -- monitor thread ---------------------------------------------------------------------
    def _on_event(self, event):
        """Called in gevent's monitor thread while the hub is blocked: never raise."""
        hub = self.hub
        if hub is None or not isinstance(event, gevent.events.EventLoopBlocked) or (
                event.hub is not None and event.hub is not hub):
            return
        try:
            seen = self._seen
            if seen is not None and seen[0] is event.greenlet:
                self._seen = seen[:2] + (seen[2] + 1,) + seen[3:]
                return
            stack = blocked_stack(event.info, self.stack_depth)
            self._seen = (event.greenlet, owner_of(event.greenlet), 1, stack)
            hub.loop.run_callback_threadsafe(self._flush)
        except Exception:  # noqa: BLE001 -- a report is not worth a broken monitor thread
            self._seen = None

    # -- hub ----------------------------------------------------------------------------
    def _flush(self):
        seen, self._seen = self._seen, None
        if seen is None:
            return
        glet, instance, sightings, stack = seen
        block = Block(repr(glet), instance, sightings * self.max_blocking_time, stack)
        self.blocks += 1
        log.warning("hub blocked for at least %.2f s by %s%s: %s", block.seconds,
                    block.greenlet, "" if instance is None else " (instance %s)" % instance,
                    " <- ".join(reversed(stack)),
                    extra={"action": "hub.blocked", "instance": instance})
        if self.on_block is not None:
            try:
                self.on_block(block)
            except Exception:
                log.exception("hub block callback failed",
                              extra={"action": "hub.callback_error", "instance": instance})
