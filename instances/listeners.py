"""The :class:`PostgresNotificationListener`: LISTEN on channels, hand notifications on.

The listener is a :class:`~instances.components.Component` with its own connection (never
shared with another greenlet). One iteration of its loop::

    pre_execute   wait until the socket is readable, a change is asked for, or the
                  connection has been silent for ``ping_interval`` (then: a round trip
                  with a deadline of ``ping_timeout``: a half-open TCP connection behind a
                  dead peer never becomes readable, so silence alone proves nothing)
    execute       poll() and drain the server's notifications (order kept)
    post_execute  put the read as Notifications into the queue (a memory queue: as ONE
                  chunk); a full queue blocks the listener, which stops reading:
                  back-pressure reaches the server, and nothing is dropped (but by a
                  stop: it never waits for room, see ``_put_all``). With ``batch`` and a
                  spool (``put_batch``), the whole read goes in as one batch file instead

After every successful (re)LISTEN (a channel added live included) one ``catch_up``
notification is put before live ones:
NOTIFY is not durable, whatever was sent while nobody listened is gone, and the handler
re-reads its tables. ``fire_on_start=False`` (hermes' name) skips it after the first LISTEN
only; every later one (a reconnect, a restart) still puts its catch_up. A lost connection is retried with the component's backoff; the
``on_connection_lost`` callback tells the owner at once (the supervisor checks the database).

Concurrency: everything but :meth:`set_channels`, :attr:`connected` and the counters runs
in the listener's own greenlet. :meth:`set_channels` may be called from any greenlet of
the hub thread; the listener applies the change itself, between two iterations.

Two constructor forms, one implementation: pgvisor's ``PostgresNotificationListener(dsn,
channels, queue, name="listener", error_strategy=None, backoff=None,
on_connection_lost=None)`` and hermes' (its docs, 4.4) ``PostgresNotificationListener(
pg_connector, notif_channel, notif_queue, error_strategy, error_queue, fire_on_start=True)``,
recognised by its keywords or by its positional values (a channel given as one string, a
fourth argument that is not a name). hermes' ``notif_channel`` is one channel name; its
``error_queue`` receives the ``(expected, message)`` reports (see
:mod:`instances.components`); its backoff is capped at
:attr:`~instances.components.Component.hermes_backoff_limit`.
"""
import logging
import time

import gevent
from gevent import GreenletExit
from gevent.hub import Waiter

from instances.components import Component, backoff_for_limit, bind_form
from instances.connectors import PostgresConnector
from instances.exceptions import ConnectionLost, DatabaseError, InvalidConfigurationException
from instances.notification import Notification
from instances.queues import Full

log = logging.getLogger(__name__)

#: What :func:`wait_readable` answers besides None (readable): the wait timed out, or its
#: waiter was switched with WAKE by someone asking for a change.
TIMEOUT = object()
WAKE = object()


def wait_readable(io, waiter, timeout):
    """Block the calling greenlet until ``io`` (a read watcher on a connection's socket)
    fires (None), ``timeout`` seconds pass (TIMEOUT) or someone switches ``waiter`` (WAKE).
    Used by the listener and the notifier; the caller keeps ``waiter`` where a change
    request can find it."""
    timer = gevent.get_hub().loop.timer(timeout)
    io.start(waiter.switch, None)
    timer.start(waiter.switch, TIMEOUT)
    try:
        return waiter.get()
    finally:
        io.stop()
        timer.close()

#: The keywords only hermes' form of the listener's constructor has.
HERMES_KEYWORDS = frozenset(("pg_connector", "notif_channel", "notif_queue", "error_queue",
                             "fire_on_start"))


def _pgvisor_form(dsn, channels, queue, name="listener", error_strategy=None, backoff=None,
                  on_connection_lost=None):
    """pgvisor's form: ``PostgresNotificationListener(dsn, channels, queue,
    name="listener", error_strategy=None, backoff=None, on_connection_lost=None)``."""


def _hermes_form(pg_connector, notif_channel, notif_queue, error_strategy=None,
                 error_queue=None, fire_on_start=True):
    """hermes' form: ``PostgresNotificationListener(pg_connector, notif_channel,
    notif_queue, error_strategy, error_queue, fire_on_start=True)``."""


def _is_hermes_call(args, kwargs):
    """True for a call in hermes' form: one of its keywords, a channel given as one
    string, or a fourth positional value that is not a name (hermes' error_strategy)."""
    return bool(HERMES_KEYWORDS & set(kwargs)) or (
        len(args) > 1 and isinstance(args[1], str)) or (
        len(args) > 3 and not isinstance(args[3], (str, type(None))))


def _channels(field, value):
    """``channels`` as a tuple; hermes' ``notif_channel`` is exactly one name."""
    if field == "notif_channel":
        if not isinstance(value, str) or not value:
            raise InvalidConfigurationException(
                "notif_channel=%r: must be one channel name (a non-empty string)" % (value,),
                field, value)
        return (value,)
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise InvalidConfigurationException(
            "channels=%r: must be a list of channel names (hermes' form takes one string: "
            "notif_channel)" % (value,), field, value)
    return tuple(value)


class PostgresNotificationListener(Component):
    """LISTEN on ``channels`` with a connection of its own; put notifications into ``queue``.

    ``dsn`` is a libpq string or hermes dict (or a ready :class:`PostgresConnector`, as
    hermes took one); ``name`` becomes the ``application_name``.
    """

    #: Seconds of silence on the connection before a liveness round trip.
    ping_interval = 2.0
    #: Seconds a liveness round trip may take before the connection counts as dead.
    #: With the defaults a silently dead peer is noticed within 2 + 5 = 7 seconds.
    ping_timeout = 5.0
    #: Seconds a blocked put waits before beating the heartbeat and trying again.
    put_beat = 1.0
    #: Put each drained read as ONE batch when the queue offers ``put_batch`` (a spool:
    #: one write, one fsync, one rename per read). A memory queue never batches.
    batch = False
    #: Most notifications per batch file (a batch is claimed whole by one consumer).
    batch_size = 1000
    #: False: no catch_up after the first LISTEN (hermes' ``fire_on_start``); every
    #: later (re)LISTEN still puts one.
    fire_on_start = True

    def __init__(self, *args, **kwargs):
        """pgvisor's form or hermes' (see the module)."""
        owner = type(self).__name__
        if _is_hermes_call(args, kwargs):
            given = bind_form(_hermes_form, args, kwargs, owner)
            self._init_listener(
                given["pg_connector"], _channels("notif_channel", given["notif_channel"]),
                given["notif_queue"], "listener", given["error_strategy"],
                backoff_for_limit(self.hermes_backoff_limit), given["error_queue"])
            self.fire_on_start = bool(given["fire_on_start"])
        else:
            given = bind_form(_pgvisor_form, args, kwargs, owner)
            self._init_listener(
                given["dsn"], _channels("channels", given["channels"]), given["queue"],
                given["name"], given["error_strategy"], given["backoff"],
                on_connection_lost=given["on_connection_lost"])

    def _init_listener(self, dsn, channels, queue, name, error_strategy, backoff,
                       error_queue=None, on_connection_lost=None):
        """The one constructor body of both forms."""
        super()._init(name, error_strategy, backoff, error_queue=error_queue)
        if isinstance(dsn, PostgresConnector):
            self.connector = dsn
        else:
            self.connector = PostgresConnector(dsn, application_name=name)
        self.queue = queue
        self.channels = channels
        self.on_connection_lost = on_connection_lost
        #: True between a successful LISTEN and the loss of the connection.
        self.connected = False
        #: The last database error (translated), or None.
        self.last_error = None
        self.received = 0
        self.catch_ups = 0
        self.reconnects = 0
        self._listening = ()
        self._waiter = None
        self._io = None
        self._sessions = 0
        self._put_batch = None
        self._put_many = None

    @classmethod
    def longest_silence(cls):
        """Seconds without a beat at worst while healthy: a connect (``connect_timeout``),
        a silence then its liveness round trip, a full queue's put, or a backoff wait."""
        return max(PostgresConnector.connect_timeout, cls.ping_interval + cls.ping_timeout,
                   cls.put_beat, super().longest_silence())

    # -- owner API ------------------------------------------------------------------------
    def set_channels(self, channels):
        """Ask the listener to LISTEN/UNLISTEN so it listens on exactly ``channels``.

        Returns at once; the listener's greenlet applies the change before its next read,
        so notifications on channels kept are never dropped. Safe from any greenlet.
        """
        self.channels = tuple(channels)
        self._wake()

    def _wake(self):
        waiter = self._waiter
        if waiter is not None:
            gevent.get_hub().loop.run_callback(self._switch_if_waiting, waiter)

    def _switch_if_waiting(self, waiter):
        if self._waiter is waiter:
            self._waiter = None
            waiter.switch(WAKE)

    # -- lifecycle hooks (listener's greenlet) --------------------------------------------
    def set_up(self):
        try:
            self.connector.disconnect()
            self.connector.listen(self.channels)
        except DatabaseError as error:
            self._lost(error)
            raise
        self._listening = self.channels
        self._put_batch = getattr(self.queue, "put_batch", None) if self.batch else None
        self._put_many = getattr(self.queue, "put_many", None)
        self._io = gevent.get_hub().loop.io(self.connector.fileno(), 1)
        if self._sessions:
            self.reconnects += 1
        self._sessions += 1
        self.connected = True
        self.last_error = None
        log.info("%s listening on %s", self.name, ", ".join(self.channels),
                 extra={"action": "listener.listen", "instance": self.name})
        if self.fire_on_start or self._sessions > 1:
            self._put(Notification(None, "", Notification.CATCH_UP, 0, time.time()))
            self.catch_ups += 1

    def pre_execute(self):
        if self._listening != self.channels:
            self._apply_channels()
        with self.interruptible():
            outcome = self._wait_readable()
        if outcome is TIMEOUT:
            self._ping()
        return outcome

    def execute(self, pre_exec_value):
        try:
            return self.connector.poll_notifies()
        except DatabaseError as error:
            self._lost(error)
            raise

    def post_execute(self, exec_value):
        """Put the read: into a spool as batch files (``batch``), into a chunk queue as
        ONE chunk (``put_many``), else each notification. A full queue blocks here (the
        back-pressure), beating, and a stop interrupts the wait (see :meth:`_put_all`)."""
        if not exec_value:
            return
        notifications = Notification.from_notifies(exec_value, time.time())
        self.received += len(notifications)
        if self._put_batch is not None:
            size = self.batch_size
            for start in range(0, len(notifications), size):
                batch = notifications[start:start + size]
                try:
                    self._put_batch(batch, False)
                except Full:  # a spool at its bound blocks the reader, as a full queue does
                    self._put_all([batch], self._put_one_batch)
        elif self._put_many is not None:
            taken = self._put_many(notifications, False)
            if taken < len(notifications):
                self._put_all(notifications[taken:], self._put_many)
        else:
            for notification in notifications:
                self._put(notification)

    def tear_down(self):
        self.connected = False
        self._listening = ()
        if self._io is not None:
            self._io.close()
            self._io = None
        self.connector.disconnect()

    # -- helpers (listener's greenlet) -----------------------------------------------------
    def _put(self, notification):
        """Put one notification (a catch_up, or each of a read for a queue without
        ``put_many``): see :meth:`_put_all`."""
        try:
            self.queue.put(notification, False)
        except Full:
            self._put_all([notification], self._put_one)

    def _put_all(self, items, put_some):
        """Put what the queue did not take yet with ``put_some(items, block, timeout) ->
        how many it took``, beating the heartbeat while it stays full (back-pressure, not a
        hang). The wait is interruptible: a stop never waits for a full queue (that would
        spend the whole shutdown grace and leave the handlers none). What a stop leaves
        unqueued is logged and dropped: the next start's catch_up covers it, as for
        anything sent while nobody listened."""
        taken = 0
        try:
            with self.interruptible():
                while taken < len(items):
                    taken += put_some(items[taken:], True, self.put_beat)
                    self.beat()
        except GreenletExit:
            left = sum(len(i) if isinstance(i, list) else 1 for i in items[taken:])
            log.warning("%s stopped while its queue was full: up to %d notification(s) of "
                        "the last read not queued (the next start's catch_up covers them)",
                        self.name, left,
                        extra={"action": "listener.dropped_at_stop", "instance": self.name,
                               "dropped": left})
            raise

    def _put_one(self, items, block, timeout):
        """``put_some`` of one notification with ``put``."""
        try:
            self.queue.put(items[0], block, timeout)
        except Full:
            return 0
        return 1

    def _put_one_batch(self, batches, block, timeout):
        """``put_some`` of one batch (a list of notifications) with ``put_batch``."""
        try:
            self._put_batch(batches[0], block, timeout)
        except Full:
            return 0
        return 1

    def _wait_readable(self):
        """Block until readable (None), a change is asked for (WAKE) or silence (TIMEOUT)."""
        self._waiter = Waiter()
        try:
            return wait_readable(self._io, self._waiter, self.ping_interval)
        finally:
            self._waiter = None

    def _ping(self):
        """A round trip within ping_timeout, or the connection counts as lost."""
        try:
            with gevent.Timeout(self.ping_timeout, ConnectionLost(
                    "no answer from the server within %.1f s (half-open connection?)"
                    % self.ping_timeout)):
                self.connector.execute("SELECT 1")
        except DatabaseError as error:
            self._lost(error)
            raise
        self.beat()

    def _apply_channels(self):
        wanted, current = self.channels, self._listening
        added = [c for c in wanted if c not in current]
        removed = [c for c in current if c not in wanted]
        try:
            self.connector.unlisten(removed)
            self.connector.listen(added)
        except DatabaseError as error:
            self._lost(error)
            raise
        self._listening = wanted
        if added:  # what was sent on them before this LISTEN is gone: re-read
            self._put(Notification(None, "", Notification.CATCH_UP, 0, time.time()))
            self.catch_ups += 1
        log.info("%s channels now %s (added %s, removed %s)", self.name, ", ".join(wanted),
                 added or "-", removed or "-",
                 extra={"action": "listener.channels", "instance": self.name})

    def _lost(self, error):
        """Record a database error; tell the owner when the connection is gone."""
        self.last_error = error
        was_connected, self.connected = self.connected, False
        if isinstance(error, ConnectionLost):
            # Drop the socket now: after a ping timeout it may be mid-protocol.
            self.connector.disconnect()
            if self.on_connection_lost is not None:
                try:
                    self.on_connection_lost(self, error, was_connected)
                except Exception:
                    log.exception("%s: on_connection_lost callback failed", self.name,
                                  extra={"action": "listener.callback_error",
                                         "instance": self.name})
