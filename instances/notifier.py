"""The shared LISTEN connection of a node: Notifier, Subscription and Notifiers.

PostgreSQL (<= 18) signals every listening backend on every NOTIFY commit, so one LISTEN
connection per instance costs the user's own NOTIFY throughput about N times and spends
max_connections. Instead, one :class:`Notifier` per node and database (distinct DSN) owns
ONE connection, LISTENs on the union of its subscribers' channels and fans each
notification out, in order, to the queue of every :class:`Subscription` of its channel::

    Postgres NOTIFY -> Notifier (one connection, LISTEN on the union)
                    -> Subscription.offer_many -> the instance's queue -> processors -> handler

The notifier never waits for a subscriber: a memory queue is offered each read (all the
notifications one poll returned) as ONE chunk, without blocking. A full queue starts an
**overflow** episode for that subscription only: what did not fit and its further live
notifications are dropped (counted in :attr:`Subscription.dropped`) until its
queue is down to ``resume_fill`` (half) and takes ONE coalesced ``catch_up``, which ends
the episode (logged once, with the count). A spool (FileQueue) overflows the same way at
its bound (``max_messages`` / ``max_bytes``): a batch file it refuses is dropped whole.

``catch_up`` rule: every subscription gets one catch_up before live notifications after
each (re)LISTEN that concerns it: its subscribe, a channel it added, every reconnect of the
notifier, and the end of an overflow episode. A catch_up still owed (an overflow waiting for
room) absorbs any further one.

Liveness of the connection: after ``ping_interval`` of silence a round trip with a deadline
(``ping_timeout``: a half-open TCP connection never becomes readable), and every
``probe_interval`` a NOTIFY on the notifier's private channel that must come back within
``probe_timeout``; it proves the LISTEN registration works end to end (a pooler or proxy
can lose it while queries work). The same statement reads ``pg_notification_queue_usage()``
(:attr:`Notifier.queue_usage`, warned about above ``queue_usage_warning``). A failed
probe, ping or query is a lost connection: tear down, back off, reconnect, re-LISTEN,
and every subscriber gets its catch_up.

Supervision: :class:`Notifiers` (one per node, owned by the supervisor or by a standalone
instance) creates a notifier for the first subscriber of a DSN, stops it after the last
one left, and starts it again when it ends by a crash or a kill (its subscribers wait,
disconnected, and are not told of a death: nothing is charged to them). A notifier that
the server refuses for good (authentication, missing database: ``FatalDatabaseError``; a
role that refuses LISTEN: ``RoleChanged``) ends every subscription with that error, so
each instance ends as its own listener would have.

Lifecycle of a subscription::

    new --start()--> subscribed (pending) --notifier LISTENs--> active: catch_up, live ones
                         ^                                        |  lost connection
                         +------------ pending <------------------+  (re-LISTEN: catch_up)
    stop() / kill() / the notifier refused for good --> ended (links are told)

Concurrency: everything runs in greenlets of the hub's thread. :meth:`Subscription.offer_many`
and the fan-out never yield for a memory queue; the notifier's own greenlet does all
database I/O. ``subscribe``, ``unsubscribe``, ``set_channels`` and the status methods are
safe from any greenlet and return at once (changes are applied by the notifier between two
reads, so notifications on channels kept are never lost).
"""
import itertools
import logging
import operator
import os
import secrets
import time

import gevent
from gevent.hub import Waiter

from instances.backoff import Backoff
from instances.components import Component, ComponentKilled
from instances.connectors import PostgresConnector, parse_dsn, redact_dsn
from instances.exceptions import (
    ConnectionLost,
    DatabaseError,
    FatalDatabaseError,
    InvalidConfigurationException,
    RoleChanged,
)
from instances.links import Links
from instances.listeners import TIMEOUT, WAKE, wait_readable
from instances.notification import Notification
from instances.queues import Closed, Full

log = logging.getLogger(__name__)

_probe_ids = itertools.count(1)
_channel_of = operator.attrgetter("channel")


def _catch_up():
    return Notification(None, "", Notification.CATCH_UP, 0, time.time())


class Subscription:
    """One instance's place in a notifier: its channels, its queue and its counters.

    Component-shaped for its owner (:class:`~instances.instance.Instance` holds it where an
    own-connection listener would be): ``start``, ``stop``, ``kill``, ``link``, ``is_alive``,
    ``connected``, ``set_channels``, ``heartbeat_age``, ``exit``, ``exception``.
    ``on_connection_lost(subscription, error, was_connected)`` is called in the hub when
    the notifier loses its connection; it MUST NOT block or raise.
    """

    #: Most notifications per batch file when the queue batches (a spool's ``put_batch``).
    batch_size = 1000
    #: An overflow ends once the memory queue is at most this full (fraction of its
    #: ``maxsize``): room for a real backlog, not one slot that the next notification
    #: would fill again (an episode per notification, a catch_up each).
    resume_fill = 0.5
    #: Seconds between two looks at the queue's size while an overflow waits for room.
    overflow_poll = 0.05

    def __init__(self, notifiers, dsn, channels, queue, name="subscription", batch=False,
                 on_connection_lost=None):
        self.notifiers = notifiers
        self.dsn = dsn
        self.name = name
        self.channels = tuple(channels)
        self.queue = queue
        self.on_connection_lost = on_connection_lost
        self.batch = bool(batch and hasattr(queue, "put_batch"))
        put_many = getattr(queue, "put_many", None)
        self._put_many = ((lambda items: put_many(items, False)) if put_many is not None
                          else self._put_each)
        #: The notifier serving this subscription (None before start and after the end).
        self.notifier = None
        #: The channels the notifier delivers to it now; None while not (re)LISTENed.
        self.active = None
        #: None while subscribed or never started; "normal" or "abnormal" after an end.
        self.exit = None
        self.exception = None
        self.received = 0
        self.catch_ups = 0
        self.reconnects = 0
        #: Live notifications dropped because the queue was full (overflow).
        self.dropped = 0
        #: Overflow episodes (each ended, or will end, with one catch_up).
        self.overflows = 0
        self._episode_dropped = 0
        self._owed = None  # the greenlet putting a catch_up owed while the queue is full
        self._pending = []  # batched notifications of the current read
        self._activations = 0
        self._links = Links("subscription")

    # -- owner API ------------------------------------------------------------------------
    def start(self):
        """Subscribe (the notifier LISTENs and puts the catch_up); returns at once."""
        if self.is_alive():
            return self
        self.exit = self.exception = None
        self.active = None
        self.notifier = self.notifiers.subscribe(self.dsn, self)
        return self

    def stop(self, timeout=None):
        """Unsubscribe: nothing more is put into the queue. Returns True (never blocks)."""
        self._end("normal", None)
        return True

    def kill(self, block=True, timeout=None):
        """Unsubscribe as a crash would (exit "abnormal"); links are told from the hub."""
        if self.is_alive():
            self._end("abnormal", ComponentKilled("%s killed" % self.name))

    def join(self, timeout=None):
        return not self.is_alive()

    def is_alive(self):
        return self.notifier is not None

    def link(self, callback):
        """Call ``callback(subscription)`` (in the hub) at every end; MUST NOT block or raise."""
        self._links.add(callback)

    def unlink(self, callback):
        self._links.remove(callback)

    @property
    def connected(self):
        """True while the notifier is connected and LISTENs on this subscription's channels."""
        notifier = self.notifier
        return notifier is not None and notifier.connected and self.active is not None

    @property
    def last_error(self):
        notifier = self.notifier
        return notifier.last_error if notifier is not None else None

    def heartbeat_age(self):
        """None: the notifier's liveness is the notifier's own (its hub restarts it), a
        subscription has no loop that could hang."""
        return None

    def set_channels(self, channels):
        """Listen on exactly ``channels`` from now on; a channel added gets this
        subscription (only) a catch_up once the notifier LISTENs on it. Returns at once."""
        self.channels = tuple(channels)
        if self.notifier is not None:
            self.notifier.changed()

    def owe_catch_up(self):
        """Put one catch_up before further live notifications; never blocks.

        Coalesced: while one is still owed (the queue is full) this does nothing more."""
        if self._owed is not None or self.notifier is None:
            return
        self.flush()
        try:
            self.queue.put(_catch_up(), False)
        except Full:
            self._overflow_begins(0)
            return
        except Closed:
            return
        self.catch_ups += 1

    def status(self):
        notifier = self.notifier
        return {"connection": "shared", "notifier": notifier.name if notifier else None,
                "connected": self.connected, "channels": list(self.active or ()),
                "dropped": self.dropped, "overflows": self.overflows,
                "overflowing": self._owed is not None}

    # -- called by the notifier (its greenlet) ----------------------------------------------
    def offer(self, notification):
        """Hand one ``notification`` on (see :meth:`offer_many`)."""
        self.offer_many([notification])

    def offer_many(self, notifications):
        """Hand the notifications of one read (a list nobody mutates) on without
        blocking: into the queue as ONE chunk (``put_many``; a queue without it takes each
        one), into the current batch (a spool), or dropped (counted) while an overflow
        episode lasts. A queue with room for part of them takes that part; the rest is
        dropped and starts an episode."""
        count = len(notifications)
        self.received += count
        if self._owed is not None:
            self.dropped += count
            self._episode_dropped += count
        elif self.batch:
            self._pending.extend(notifications)
        else:
            try:
                taken = self._put_many(notifications)
            except Closed:
                return
            if taken < count:
                self._overflow_begins(count - taken)

    def _put_each(self, notifications):
        """``put_many`` for a queue without it: one non-blocking put each, until full."""
        for taken, notification in enumerate(notifications):
            try:
                self.queue.put(notification, False)
            except Full:
                return taken
        return len(notifications)

    def flush(self):
        """Put the batched notifications of the current read (a spool: one file per
        ``batch_size``). Does not yield."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        size = self.batch_size
        try:
            for start in range(0, len(pending), size):
                self.queue.put_batch(pending[start:start + size], False)
        except Full:  # a spool at its bound: what is left of this read is dropped
            self._overflow_begins(len(pending) - start)
        except Closed:
            pass

    def activated(self, channels):
        """The notifier LISTENs on ``channels`` for this subscription now."""
        if self.active is None and self._activations:
            self.reconnects += 1
        self._activations += 1
        self.active = channels

    def connection_lost(self, error, was_connected):
        self.active = None
        self._pending = []
        if self.on_connection_lost is not None and self.exit is None:
            try:
                self.on_connection_lost(self, error, was_connected)
            except Exception:
                log.exception("%s: on_connection_lost callback failed", self.name,
                              extra={"action": "subscription.callback_error",
                                     "instance": self.name})

    def refused(self, error):
        """The notifier was refused for good (fatal error, role): end as a listener would."""
        self._end("abnormal", error)

    # -- internals ----------------------------------------------------------------------------
    def _overflow_begins(self, dropped):
        self.overflows += 1
        self.dropped += dropped
        self._episode_dropped = dropped
        self._owed = gevent.spawn(self._put_owed_catch_up)

    def _put_owed_catch_up(self):
        """Wait for room (this greenlet only), put the catch_up, end the episode."""
        started = time.monotonic()
        queue = self.queue
        limit = int(getattr(queue, "maxsize", 0) * self.resume_fill)
        try:
            while limit and queue.qsize() > limit and not getattr(queue, "closed", False):
                gevent.sleep(self.overflow_poll)
            queue.put(_catch_up(), True)
        except Closed:
            return
        finally:
            self._owed = None
        self.catch_ups += 1
        log.warning("%s: queue was full for %.1f s: %d live notification(s) dropped, "
                    "one catch_up put instead", self.name, time.monotonic() - started,
                    self._episode_dropped,
                    extra={"action": "subscription.overflow", "instance": self.name,
                           "dropped": self._episode_dropped})

    def _end(self, exit, exception):
        notifier = self.notifier
        if notifier is None:
            return
        self.notifier = None
        self.active = None
        self._pending = []
        owed, self._owed = self._owed, None
        if owed is not None:
            owed.kill(block=False)
        self.exit, self.exception = exit, exception
        self.notifiers.unsubscribe(self, notifier)
        self._links.notify_soon(self)

    def __repr__(self):
        state = "connected" if self.connected else ("subscribed" if self.is_alive()
                                                    else self.exit or "new")
        return "<Subscription %s %s %s>" % (self.name, ",".join(self.channels), state)


class Notifier(Component):
    """ONE LISTEN connection to ``dsn`` serving every :class:`Subscription` of it.

    Created and supervised by :class:`Notifiers`; ``name`` becomes the application_name.
    """

    #: Seconds of silence on the connection before a liveness round trip.
    ping_interval = 2.0
    #: Seconds a round trip (ping, probe, LISTEN) may take before the connection counts as
    #: dead.
    ping_timeout = 5.0
    #: Seconds between two self-NOTIFY probes on the private channel (0: no probe).
    probe_interval = 10.0
    #: Seconds a self-NOTIFY probe may take to come back before the LISTEN path counts as
    #: broken: a broken path is noticed within probe_interval + probe_timeout.
    probe_timeout = 5.0
    #: ``pg_notification_queue_usage()`` fraction above which a warning is logged.
    queue_usage_warning = 0.5

    def __init__(self, dsn, name="notifier", on_ended=None, error_strategy=None, backoff=None):
        super().__init__(name=name, error_strategy=error_strategy, backoff=backoff)
        self.dsn = dsn
        self.connector = PostgresConnector(dsn, application_name=name)
        #: The private channel of the self-NOTIFY probe: unique per process and notifier,
        #: and random (containers on one database all have pid 1), so no other session
        #: ever NOTIFYs it: only this notifier's probes come back on it.
        self.probe_channel = "pgvisor.probe.%d.%d.%s" % (
            os.getpid(), next(_probe_ids), secrets.token_hex(4))
        self.subscriptions = {}  # insertion-ordered set
        self.connected = False
        self.last_error = None
        self.received = 0
        self.reconnects = 0
        self.probes = 0
        self.probe_failures = 0
        #: The last ``pg_notification_queue_usage()`` read (0.0 .. 1.0), None before one.
        self.queue_usage = None
        #: Seconds the last probe took to come back.
        self.probe_rtt = None
        self._routes = {}
        self._batching = ()
        self._listening = frozenset()
        self._dirty = True
        self._read_more = False  # the last read was not empty: read again before waiting
        self._waiter = None
        self._io = None
        self._sessions = 0
        self._probe_token = None
        self._probe_sent = None
        self._next_probe = None
        self._probes_out = 0  # probe NOTIFYs of this connection not read back yet
        self._unlistened = False  # the next read may hold notifies of channels just left
        self._usage_high = False

    # -- subscribers (any greenlet) -----------------------------------------------------------
    def add(self, subscription):
        self.subscriptions[subscription] = None
        self.changed()

    def remove(self, subscription):
        """Stop delivering to ``subscription`` now; its channels are UNLISTENed later."""
        self.subscriptions.pop(subscription, None)
        self._routes = self._build_routes()
        self.changed()

    def changed(self):
        """A subscription or its channels changed: apply before the next read."""
        self._dirty = True
        waiter = self._waiter
        if waiter is not None:
            gevent.get_hub().loop.run_callback(self._switch_if_waiting, waiter)

    def _switch_if_waiting(self, waiter):
        if self._waiter is waiter:
            self._waiter = None
            waiter.switch(WAKE)

    def status(self):
        """A dict for status pages (a snapshot; never blocks)."""
        return {"name": self.name, "dsn": redact_dsn(self.dsn), "alive": self.is_alive(),
                "connected": self.connected, "channels": sorted(self._listening),
                "subscribers": len(self.subscriptions), "received": self.received,
                "reconnects": self.reconnects, "probes": self.probes,
                "probe_failures": self.probe_failures, "probe_rtt": self.probe_rtt,
                "queue_usage": self.queue_usage,
                "backlog": sum(s.queue.qsize() for s in list(self.subscriptions)
                               if not s.batch),
                "last_error": None if self.last_error is None else str(self.last_error)}

    # -- lifecycle hooks (notifier's greenlet) ---------------------------------------------------
    def set_up(self):
        plan = [(s, s.channels) for s in self.subscriptions]
        wanted = frozenset(c for _, channels in plan for c in channels)
        self._dirty = False
        try:
            self.connector.disconnect()
            with self._deadline("LISTEN"):
                self.connector.listen(sorted(wanted) + [self.probe_channel])
        except DatabaseError as error:
            self._lost(error)
            raise
        self._listening = frozenset(wanted)
        self._io = gevent.get_hub().loop.io(self.connector.fileno(), 1)
        self.reconnects += bool(self._sessions)
        self._sessions += 1
        self.connected, self.last_error = True, None
        self._probe_token = None
        self._probes_out, self._unlistened = 0, False  # a new session: nothing in flight
        self._next_probe = time.monotonic() + self.probe_interval
        plan = [(s, channels) for s, channels in plan if s in self.subscriptions]
        for subscription, channels in plan:
            subscription.activated(channels)
        self._routes = self._build_routes()
        for subscription, _ in plan:
            subscription.owe_catch_up()
        log.info("%s listening on %d channel(s) for %d subscriber(s)", self.name,
                 len(wanted), len(plan),
                 extra={"action": "notifier.listen", "instance": self.name})

    def pre_execute(self):
        if self._dirty:
            self._apply_changes()
            return WAKE  # LISTEN may have read notifications already: poll at once
        if self._read_more:
            # The last read was not empty: while a backlog lasts the socket holds more
            # already. Let the processors run what was offered, then read again at once,
            # without the socket watcher's round trip through the hub (measured: ~10 % of
            # the drain's CPU); a read that finds nothing goes back to waiting.
            self._read_more = False
            gevent.sleep(0)
            return WAKE
        with self.interruptible():
            outcome = self._wait_readable(self._wait_time())
        if outcome is TIMEOUT:
            self._on_timer()
        return outcome

    def execute(self, pre_exec_value):
        try:
            return self.connector.poll_notifies()
        except DatabaseError as error:
            self._lost(error)
            raise

    def post_execute(self, notifies):
        """Fan out (the hot path): the notifications of each channel in the read are built
        once (:meth:`Notification.from_notifies`, shared by its subscribers), and every
        subscriber gets those of its channels as one chunk per read
        (:meth:`Subscription.offer_many`). A read of one channel (a backlog's) takes one
        pass at C speed; a mixed read is grouped by channel in read order.

        The connection of a notifier with ONE channel (and its probe's) needs no look at
        the channels of a read while no probe is out and nothing was UNLISTENed since the
        last read: every notify is then on that channel, since only this notifier's probes
        come back on the probe's random channel. That look (an attribute read and a string
        comparison per notification) was a tenth of pgvisor's own cost on the drain."""
        if not notifies:
            return
        now = time.time()
        routes = self._routes
        if (not self._probes_out and not self._unlistened and len(routes) == 1
                and routes.keys() == self._listening):
            ((channel, subscribers),) = routes.items()
            made = Notification.from_notifies(notifies, now, channel)
            for subscription in subscribers:
                subscription.offer_many(made)
        else:
            self._fan_out(notifies, now)
        for subscription in self._batching:
            subscription.flush()
        self.received += len(notifies)
        self._read_more = True

    def _fan_out(self, notifies, now):
        """:meth:`post_execute` for a read whose channels must be looked at."""
        self._unlistened = False  # this read took whatever came before the UNLISTEN
        channels = list(map(_channel_of, notifies))
        first = channels[0]
        if channels.count(first) == len(channels):
            subscribers = self._routes.get(first)
            if subscribers is not None:
                made = Notification.from_notifies(notifies, now, first)
                for subscription in subscribers:
                    subscription.offer_many(made)
            elif first == self.probe_channel:
                for n in notifies:
                    self._probe_back(n.payload)
        else:
            self._fan_out_mixed(notifies, now)

    def _fan_out_mixed(self, notifies, now):
        """:meth:`post_execute` for a read of several channels: each run of one channel
        becomes ONE list of Notifications, and each subscriber gets the runs of its
        channels, in read order, as one chunk."""
        routes = self._routes
        offers = {}  # subscription -> [list of Notifications per run], in read order
        for channel, run in itertools.groupby(notifies, _channel_of):
            subscribers = routes.get(channel)
            if subscribers is None:
                if channel == self.probe_channel:
                    for n in run:
                        self._probe_back(n.payload)
                continue
            made = Notification.from_notifies(list(run), now, channel)
            for subscription in subscribers:
                runs = offers.get(subscription)
                if runs is None:
                    offers[subscription] = [made]
                else:
                    runs.append(made)
        for subscription, runs in offers.items():
            subscription.offer_many(runs[0] if len(runs) == 1
                                    else list(itertools.chain.from_iterable(runs)))

    def tear_down(self):
        was_connected, self.connected = self.connected, False
        self._listening = frozenset()
        self._routes = {}
        self._probe_token = None
        if self._io is not None:
            self._io.close()
            self._io = None
        self.connector.disconnect()
        for subscription in list(self.subscriptions):
            if subscription.active is not None:
                subscription.connection_lost(self.last_error or ConnectionLost(
                    "%s stopped" % self.name), was_connected)

    # -- helpers (notifier's greenlet) --------------------------------------------------------
    def _build_routes(self):
        self._batching = tuple(s for s in self.subscriptions if s.batch)
        routes = {}
        for subscription in self.subscriptions:
            for channel in subscription.active or ():
                routes.setdefault(channel, []).append(subscription)
        return {channel: tuple(subs) for channel, subs in routes.items()}

    def _apply_changes(self):
        """LISTEN/UNLISTEN to the union of the channels, then activate whom it concerns:
        a new subscription or one with a channel added gets its catch_up."""
        self._dirty = False
        plan = [(s, s.channels) for s in self.subscriptions]
        wanted = frozenset(c for _, channels in plan for c in channels)
        added = sorted(wanted - self._listening)
        removed = sorted(self._listening - wanted)
        try:
            with self._deadline("LISTEN"):
                self.connector.unlisten(removed)
                self.connector.listen(added)
        except DatabaseError as error:
            self._lost(error)
            raise
        self._listening = wanted
        if removed:  # what the UNLISTEN's round trip read may be on them: look at it
            self._unlistened = True
        owed = []
        for subscription, channels in plan:
            if subscription not in self.subscriptions:
                continue  # left while we waited for the server
            before = subscription.active
            if before is None or not set(channels) <= set(before):
                owed.append(subscription)
            subscription.activated(channels)
        self._routes = self._build_routes()
        for subscription in owed:
            subscription.owe_catch_up()
        if added or removed:
            log.info("%s channels: %d (added %s, removed %s)", self.name, len(wanted),
                     ", ".join(added) or "-", ", ".join(removed) or "-",
                     extra={"action": "notifier.channels", "instance": self.name})

    def _wait_time(self):
        now = time.monotonic()
        timeout = self.ping_interval
        if self._probe_token is not None:
            timeout = min(timeout, self._probe_sent + self.probe_timeout - now)
        elif self.probe_interval:
            timeout = min(timeout, self._next_probe - now)
        return max(timeout, 0.0)

    def _wait_readable(self, timeout):
        """Block until readable (None), a change is asked for (WAKE) or ``timeout``."""
        if self._dirty:  # asked for while we were busy
            return WAKE
        self._waiter = Waiter()
        try:
            return wait_readable(self._io, self._waiter, timeout)
        finally:
            self._waiter = None

    def _on_timer(self):
        """Silence or a probe due: a probe overdue is a broken LISTEN path; else probe or
        ping (either is a round trip with a deadline)."""
        now = time.monotonic()
        if self._probe_token is not None:
            if now >= self._probe_sent + self.probe_timeout:
                self.probe_failures += 1
                error = ConnectionLost(
                    "the self-NOTIFY probe did not come back within %.1f s: the LISTEN "
                    "registration is lost (pooler or proxy?)" % self.probe_timeout)
                self._lost(error)
                raise error
            self._ping()
        elif self.probe_interval and now >= self._next_probe:
            self._probe()
        else:
            self._ping()

    def _deadline(self, what):
        return gevent.Timeout(self.ping_timeout, ConnectionLost(
            "no answer to %s from the server within %.1f s (half-open connection?)"
            % (what, self.ping_timeout)))

    def _ping(self):
        try:
            with self._deadline("a ping"):
                self.connector.execute("SELECT 1")
        except DatabaseError as error:
            self._lost(error)
            raise
        self.beat()

    def _probe(self):
        """NOTIFY the private channel (it must come back) and read the queue usage."""
        token = "%d" % (self.probes + 1)
        self._probes_out += 1  # before it is sent: its answer may come with the result
        try:
            with self._deadline("the probe"):
                rows = self.connector.execute(
                    "SELECT pg_notify(%s, %s), pg_notification_queue_usage()",
                    (self.probe_channel, token))
        except DatabaseError as error:
            self._lost(error)
            raise
        self.probes += 1
        self._probe_token, self._probe_sent = token, time.monotonic()
        self._next_probe = self._probe_sent + self.probe_interval
        self._queue_usage(float(rows[0][1]))
        self.beat()

    def _probe_back(self, payload):
        if self._probes_out:
            self._probes_out -= 1
        if payload == self._probe_token:
            self.probe_rtt = time.monotonic() - self._probe_sent
            self._probe_token = None

    def _queue_usage(self, usage):
        self.queue_usage = usage
        high = usage > self.queue_usage_warning
        if high and not self._usage_high:
            log.warning("%s: the server's notification queue is %.0f %% full (warning above "
                        "%.0f %%): a listening session does not read; at 100 %% every NOTIFY "
                        "fails", self.name, usage * 100, self.queue_usage_warning * 100,
                        extra={"action": "notifier.queue_usage_high", "instance": self.name})
        elif self._usage_high and not high:
            log.info("%s: the server's notification queue is back to %.0f %%", self.name,
                     usage * 100,
                     extra={"action": "notifier.queue_usage_ok", "instance": self.name})
        self._usage_high = high

    def _lost(self, error):
        """Record a database error; tell the subscribers when the connection is gone."""
        self.last_error = error
        if isinstance(error, ConnectionLost):
            self.connector.disconnect()  # after a deadline it may be mid-protocol
            was_connected, self.connected = self.connected, False
            for subscription in list(self.subscriptions):
                subscription.connection_lost(error, was_connected)


class Notifiers:
    """The notifiers of one node, one per distinct DSN, and their supervision.

    ``notifier_class`` (default :class:`Notifier`) builds them. Safe from any greenlet of
    the hub's thread; every method returns at once but :meth:`stop`.
    """

    #: Seconds before a notifier that crashed or was killed is started again (doubling
    #: with the :class:`~instances.backoff.Backoff` defaults after repeated deaths).
    revive_delay = 0.1

    def __init__(self, notifier_class=None):
        self.notifier_class = notifier_class or Notifier
        self._notifiers = {}
        self._names = itertools.count(1)
        self._revivals = {}  # notifier -> (greenlet, Backoff)
        self._stopping = False

    def subscribe(self, dsn, subscription):
        """Add ``subscription`` to the notifier of ``dsn`` (created and started if
        missing); returns that notifier."""
        key = _key(dsn)
        notifier = self._notifiers.get(key)
        if notifier is None:
            number = next(self._names)
            notifier = self.notifier_class(
                dsn, name="pgvisor-notifier" if number == 1 else "pgvisor-notifier-%d" % number)
            notifier.link(self._ended)
            self._notifiers[key] = notifier
            notifier.add(subscription)
            notifier.start()
        else:
            notifier.add(subscription)
        return notifier

    def unsubscribe(self, subscription, notifier):
        """Remove ``subscription``; a notifier left without subscribers is stopped."""
        notifier.remove(subscription)
        if not notifier.subscriptions:
            self._retire(notifier)

    def notifiers(self):
        return list(self._notifiers.values())

    def status(self):
        """A list of status dicts, one per notifier (see :meth:`Notifier.status`)."""
        return [notifier.status() for notifier in self.notifiers()]

    def stop(self, timeout=5.0):
        """Stop every notifier (blocks up to about ``timeout`` seconds)."""
        self._stopping = True
        notifiers, self._notifiers = list(self._notifiers.values()), {}
        for glet, _ in self._revivals.values():
            glet.kill(block=False)
        self._revivals.clear()
        jobs = [gevent.spawn(n.stop, timeout) for n in notifiers]
        gevent.joinall(jobs, timeout=timeout + 1)

    # -- supervision (hub callbacks) ----------------------------------------------------------
    def _retire(self, notifier):
        key = _key(notifier.dsn)
        if self._notifiers.get(key) is notifier:
            del self._notifiers[key]
        revival = self._revivals.pop(notifier, None)
        if revival is not None:
            revival[0].kill(block=False)
        notifier.unlink(self._ended)
        gevent.spawn(notifier.stop)

    def _ended(self, notifier):
        if self._stopping or self._notifiers.get(_key(notifier.dsn)) is not notifier:
            return  # stopped on purpose
        error = notifier.exception
        if isinstance(error, (FatalDatabaseError, RoleChanged)):
            log.warning("%s refused by the server (%s): its %d subscriber(s) end", notifier.name,
                        error, len(notifier.subscriptions),
                        extra={"action": "notifier.refused", "instance": notifier.name})
            del self._notifiers[_key(notifier.dsn)]
            for subscription in list(notifier.subscriptions):
                subscription.refused(error)
            return
        _, backoff = self._revivals.get(notifier, (None, Backoff(initial=self.revive_delay)))
        delay = backoff.next()
        log.warning("%s ended (%s): started again in %.2f s; its %d subscriber(s) wait",
                    notifier.name, error, delay, len(notifier.subscriptions),
                    extra={"action": "notifier.died", "instance": notifier.name})
        self._revivals[notifier] = (gevent.spawn_later(delay, self._revive, notifier), backoff)

    def _revive(self, notifier):
        if self._notifiers.get(_key(notifier.dsn)) is notifier and not notifier.is_alive():
            notifier.start()


def _key(dsn):
    """Notifiers are shared by equal connection parameters (string or dict DSN)."""
    try:
        return tuple(sorted((k, str(v)) for k, v in parse_dsn(dsn).items()))
    except InvalidConfigurationException:
        return ("dsn", repr(dsn))
