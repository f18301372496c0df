"""hermes compatibility: :class:`Client`, a facade over a one-instance Supervisor.

A hermes program built a ``Client(dsn, watch_path, failover_files)``, added a listener and a
processor (both Components), and called ``start()``. The same program runs on pgvisor after
changing its imports (docs/migrating.rst shows both side by side)::

    from gevent.queue import Queue                      # was: from multiprocessing import Queue
    from instances.components import Component          # was: from hermes.components ...
    from instances.connectors import PostgresConnector
    from instances.listeners import PostgresNotificationListener
    from instances.strategies import CommonErrorStrategy
    from supervisor import Client                       # was: from hermes.client import Client

    class Processor(Component):
        def __init__(self,):
            super(Processor, self).__init__()

        def execute(self):
            ...                                         # re-read the tables, as in hermes

    notif_queue, error_queue = Queue(), Queue()
    client = Client(dsn, watch_path, failover_files)
    client.add_listener(PostgresNotificationListener(
        PostgresConnector(dsn), "doc_changed", notif_queue, CommonErrorStrategy(), error_queue))
    client.add_processor(Processor())   # without a notification_pipe: reads notif_queue
    client.start()

Unlike hermes, the components run as greenlets of this process under a real Supervisor:
they start only on a primary, stop on a standby, are restarted under the restart budget
when they die, and wait out database outages. ``start()`` returns at once; ``join()``
blocks until :meth:`Client.terminate`. As hermes' Client (a non-daemonic
``multiprocessing.Process``) did, a started Client keeps the program alive at its end until
it is terminated; there, and only there, SIGTERM and SIGINT (if the program left them at
their defaults) terminate it cleanly. Set :attr:`Client.daemon` to end with the program.
"""
import atexit
import os
import signal
import tempfile

import gevent
import gevent.event

from instances.components import Component
from instances.exceptions import InvalidConfigurationException
from instances.registry import Registry
from instances.spec import InstanceSpec
from supervisor.actor import Supervisor

#: The name of the one instance a Client supervises.
INSTANCE_NAME = "hermes"


def unused_handler(notification):
    """The spec's handler placeholder: a Client's processor Component does the work."""


class ComponentsInstance:
    """A listener Component and a processor Component supervised as one instance.

    Implements the instance protocol the Supervisor uses (start, stop, kill, alive,
    connected, apply, heartbeat_age, health, exit, exception, spec, queue).
    """

    def __init__(self, spec, listener, processor, on_death):
        self.spec, self.listener, self.processor = spec, listener, processor
        self.queue = getattr(listener, "queue", None)
        self.on_death = on_death
        self.exit = self.exception = None
        self._stopping = False

    @property
    def name(self):
        return self.spec.name

    @property
    def alive(self):
        return self.listener.is_alive() and self.processor.is_alive()

    @property
    def connected(self):
        return bool(getattr(self.listener, "connected", self.listener.is_alive()))

    def start(self):
        self.exit = self.exception = None
        self._stopping = False
        for part in (self.processor, self.listener):
            part.link(self._part_ended)
            part.start()
        return self

    def stop(self, timeout=10.0):
        self._stopping = True
        clean = self.listener.stop(timeout)
        clean = self.processor.stop(timeout) and clean
        self._unlink()
        self.exit = self.exit or ("normal" if clean else "abnormal")
        return clean

    def kill(self):
        for part in (self.listener, self.processor):
            part.kill(block=False)

    def apply(self, spec):
        if spec.channels != self.spec.channels and hasattr(self.listener, "set_channels"):
            self.listener.set_channels(spec.channels)
        self.spec = spec

    def heartbeat_age(self):
        ages = [part.heartbeat_age() for part in (self.listener, self.processor)]
        return max((age for age in ages if age is not None), default=None)

    def health(self):
        error = self.listener.exception or self.processor.exception or getattr(
            self.listener, "last_error", None)
        return {"alive": self.alive, "connected": self.connected, "exit": self.exit,
                "heartbeat_age": self.heartbeat_age(),
                "backlog": self.queue.qsize() if self.queue is not None else 0,
                "received": getattr(self.listener, "received", 0),
                "catch_ups": getattr(self.listener, "catch_ups", 0),
                "reconnects": getattr(self.listener, "reconnects", 0),
                "concurrency": 1 if self.processor.is_alive() else 0,
                "last_error": None if error is None else str(error)}

    def _unlink(self):
        for part in (self.listener, self.processor):
            part.unlink(self._part_ended)

    def _part_ended(self, part):
        if self._stopping or self.exit is not None:
            return
        self.exit, self.exception = part.exit or "abnormal", part.exception
        self._unlink()
        self.kill()
        self.on_death(self)


class Client:
    """hermes' Client: supervise one listener and one processor against ``dsn``.

    ``watch_path`` / ``failover_files``: a directory watched for failover files; an event
    triggers an immediate role check (hermes' ``on_any_event``). A processor without a
    ``notification_pipe`` takes the listener's queue as its pipe (hermes' usage: supply a
    processor and its ``execute()`` runs on each event).
    """

    #: False (hermes' Client was a non-daemonic process): once started, the end of the
    #: program waits for :meth:`terminate` (SIGTERM and SIGINT call it there, if they are
    #: at their defaults). True: the end of the program ends the Client with it.
    daemon = False

    def __init__(self, dsn, watch_path=None, failover_files=None, **supervisor_options):
        self.dsn = dsn
        self.watch_path = watch_path
        self.failover_files = failover_files
        self._listener = self._processor = None
        self._supervisor_options = supervisor_options
        self._tmp = None
        self.supervisor = None
        self._done = gevent.event.Event()

    def add_listener(self, listener):
        """Set the listener (a Component, e.g. PostgresNotificationListener)."""
        self._listener = self._component("listener", listener)

    def add_processor(self, processor):
        """Set the processor (a Component reading what the listener queues)."""
        self._processor = self._component("processor", processor)

    @staticmethod
    def _component(field, value):
        if not isinstance(value, Component):
            raise InvalidConfigurationException(
                "%s=%r: must be an instances.components.Component" % (field, value),
                field, value)
        return value

    def start(self):
        """Start supervising (returns at once). Raises InvalidConfigurationException if
        the listener or processor is missing."""
        for field, value in (("listener", self._listener), ("processor", self._processor)):
            if value is None:
                raise InvalidConfigurationException(
                    "%s is missing: call add_%s() before start()" % (field, field), field, None)
        if getattr(self._processor, "notification_pipe", None) is None:
            self._processor.notification_pipe = getattr(self._listener, "queue", None)
        self._tmp = tempfile.TemporaryDirectory(prefix="pgvisor-client-")
        registry = Registry(os.path.join(self._tmp.name, "registry.json"))
        channels = getattr(self._listener, "channels", None) or ("hermes",)
        registry.add(InstanceSpec(name=INSTANCE_NAME, channels=tuple(channels),
                                  handler="supervisor.hermes:unused_handler"))
        self.supervisor = Supervisor(
            registry, self.dsn, watch_path=self.watch_path,
            failover_files=self.failover_files, set_as_current=False,
            instance_factory=self._make_instance, **self._supervisor_options)
        self.supervisor.start()
        if not self.daemon:
            atexit.register(self._join_at_exit)
        return self

    def _make_instance(self, spec, dsn, on_death, on_connection_lost, queue=None):
        return ComponentsInstance(spec, self._listener, self._processor, on_death)

    def execute_role_based_procedure(self):
        """Check the server's role now and start or stop the components to match.

        Returns the greenlet of the verify that follows (value: ``{name: outcome}``)."""
        self.supervisor.monitor.check_now()
        return self.supervisor.verify()

    def on_any_event(self, event):
        """hermes' watchdog hook: a failover file event triggers a role check."""
        names = {os.path.basename(getattr(event, attr, "") or "")
                 for attr in ("src_path", "dest_path")}
        files = self.supervisor.failover_files if self.supervisor else ()
        if names & set(files):
            return self.execute_role_based_procedure()
        return None

    def is_alive(self):
        instance = self.supervisor and self.supervisor.instance(INSTANCE_NAME)
        return bool(instance is not None and instance.alive)

    def terminate(self, timeout=10.0):
        """Stop the components and the supervisor. Blocks the caller up to ``timeout``."""
        atexit.unregister(self._join_at_exit)
        if self.supervisor is not None:
            self.supervisor.stop(timeout)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._done.set()

    def join(self, timeout=None):
        """Block until :meth:`terminate` (or ``timeout``); True if terminated."""
        return self._done.wait(timeout)

    def _join_at_exit(self):
        """At the program's end (atexit): wait for terminate(); SIGTERM and SIGINT, if the
        program left them at their defaults, call it."""
        defaults = (signal.SIG_DFL, signal.default_int_handler)
        handlers = [gevent.signal_handler(signum, gevent.spawn, self.terminate)
                    for signum in (signal.SIGTERM, signal.SIGINT)
                    if signal.getsignal(signum) in defaults]
        try:
            self.join()
        finally:
            for handler in handlers:
                handler.cancel()

    def __repr__(self):
        return "<Client %s>" % ("running" if self.is_alive() else "not running")
