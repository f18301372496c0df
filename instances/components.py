"""The :class:`Component`: hermes' set_up / execute / tear_down lifecycle on one greenlet.

A component owns exactly one greenlet at a time. Its owner starts it, stops it with a
timeout, joins it, and hears about its end through :meth:`Component.link`. Lifecycle::

    start() --> set_up() --> +-> pre_execute() -> execute(v) -> post_execute(r) -+
                   ^         |                                                  |
                   |         +---------- heartbeat; backoff.reset() <-----------+
                   |                   (while no stop was requested)
                   |
      error in set_up/pre/execute/post ---> error_strategy.action(error)
                   |                          |                    |
                   |          "reconnect" / "retry"      "role_changed" / "fatal" / "die"
                   |                          |                    |
                   +---- sleep backoff.next() <- tear_down()       tear_down()
                         (stop() interrupts)                       exit "abnormal"

    stop()   : no new iteration; the current execute/post_execute finishes; a wait marked
               interruptible (and the backoff sleep) is interrupted at once;
               tear_down(); exit "normal". After the timeout: killed, exit "abnormal".
    kill()   : as a crash would: the greenlet gets ComponentKilled wherever it is;
               tear_down() still runs; exit "abnormal".

hermes got three things wrong that this class does differently: its backoff was never
reset after a success (here: after every full iteration), a processor that did not drain
its pipe busy-looped (here: pre_execute blocks cooperatively), and stopping relied on a
signal interrupting ``select()``, which PEP 475 broke (here: stop() throws a private
exception into the greenlet, only while it sits in a wait marked interruptible).

Concurrency contract: every method is called from greenlets of the one hub thread (never
from another OS thread). ``start``, ``stop``, ``join`` and ``kill`` are for the owner, not
for the component's own greenlet (``stop`` from inside only asks and returns at once).
"""
import contextlib
import logging
import time

import gevent
from gevent import GreenletExit, getcurrent

from instances.backoff import Backoff
from instances.links import Links

log = logging.getLogger(__name__)

#: Strategy actions after which the component tears down, waits and sets up again.
RETRY_ACTIONS = frozenset(("reconnect", "retry"))
#: Strategy actions that end the component abnormally; any other answer counts as "die".
END_ACTIONS = frozenset(("role_changed", "fatal", "die"))


class ComponentKilled(GreenletExit):
    """Thrown into a component's greenlet by :meth:`Component.kill` or a stop that timed out.

    A GreenletExit so ``except Exception`` in user code cannot swallow it and gevent does
    not report it as a crash to the hub; the component still records an abnormal exit.
    """


class _StopRequested(GreenletExit):
    """Private: thrown by stop() into a greenlet waiting in an interruptible section."""


def interrupt_if(glet, predicate, exception):
    """Throw ``exception`` into ``glet`` later, in the hub, if ``predicate()`` holds then.

    Checking in the hub callback (not at call time) closes the race where the target wakes
    up, leaves its wait and starts real work between our decision and the throw: the hub
    runs callbacks only while every other greenlet is switched out, so the predicate sees
    the target's state as of its last switch. Returns at once; never raises.
    """
    def _throw():
        if not glet.dead and predicate():
            glet.throw(exception)

    gevent.get_hub().loop.run_callback(_throw)


class Component:
    """A long-running loop with hermes' lifecycle hooks, run on a greenlet it owns.

    Subclasses override :meth:`set_up`, :meth:`pre_execute`, :meth:`execute`,
    :meth:`post_execute` and :meth:`tear_down`; all of them run in the component's
    greenlet and may block cooperatively. A blocking wait that :meth:`stop` may cut short
    goes inside ``with self.interruptible():`` (or set :attr:`interruptible_pre_execute`).
    ``tear_down`` must tolerate a partial or failed ``set_up``.
    """

    #: Seconds :meth:`stop` waits for a clean end before it kills the greenlet.
    stop_timeout = 10.0
    #: True: the whole of pre_execute() is an interruptible wait (it must not hold work
    #: that would be lost when interrupted, e.g. it only blocks in ``queue.get()``).
    interruptible_pre_execute = False

    def __init__(self, name=None, error_strategy=None, backoff=None):
        self.name = name or type(self).__name__
        if error_strategy is None:
            # Imported here: strategies loads the psycopg2 connector, which a component
            # with its own strategy never needs.
            from instances.strategies import CommonErrorStrategy
            error_strategy = CommonErrorStrategy()
        self.error_strategy = error_strategy
        self.backoff = backoff if backoff is not None else Backoff()
        #: time.monotonic() of the last loop progress (None before the first start).
        self.heartbeat = None
        #: None while running or never started; "normal" or "abnormal" after the end.
        self.exit = None
        #: The exception that ended the component abnormally, else None.
        self.exception = None
        self._greenlet = None
        self._should_run = False
        self._interruptible = False
        self._links = Links("component")

    # -- hooks (run in the component's greenlet) ------------------------------------
    def set_up(self):
        """Acquire resources (connections, LISTEN). Called again after every retry."""

    def pre_execute(self):
        """Wait for work and return it; may block cooperatively."""

    def execute(self, pre_exec_value):
        """Do the work; the return value goes to :meth:`post_execute`."""

    def post_execute(self, exec_value):
        """Finish one iteration (acknowledge, record)."""

    def tear_down(self):
        """Release what set_up acquired. Always runs: after stop, errors and kill."""

    # -- owner API ------------------------------------------------------------------
    def start(self):
        """Spawn the greenlet and return self; no-op while alive. Restartable after an end."""
        if self.is_alive():
            return self
        self._should_run = True
        self._interruptible = False
        self.exit = self.exception = None
        self.heartbeat = time.monotonic()
        self.backoff.reset()
        self._greenlet = gevent.Greenlet(self._run)
        self._greenlet.link(self._on_greenlet_end)
        self._greenlet.start()
        return self

    def stop(self, timeout=None):
        """Ask the loop to end, wait up to ``timeout`` seconds, then kill it.

        Blocks the calling greenlet. The current execute/post_execute finishes; a wait in
        an interruptible section ends at once. Returns True if the component ended
        cleanly (exit "normal"), False if it had to be killed or ended abnormally.
        From the component's own greenlet it only asks, and returns True.
        """
        glet = self._greenlet
        if glet is None or glet.dead:
            return self.exit != "abnormal"
        self._should_run = False
        if glet is getcurrent():
            return True
        interrupt_if(glet, lambda: self._interruptible, _StopRequested())
        timeout = self.stop_timeout if timeout is None else timeout
        glet.join(timeout)
        if not glet.dead:
            log.warning("%s did not stop within %.1fs: killing it", self.name, timeout,
                        extra={"action": "component.stop_timeout", "instance": self.name})
            self.kill(block=True, timeout=timeout)
            return False
        return self.exit == "normal"

    def kill(self, block=True, timeout=None):
        """End the greenlet as a crash would: exit "abnormal" with ComponentKilled.

        tear_down() still runs in the dying greenlet. ``block`` (as gevent's kill): wait
        up to ``timeout`` seconds for the end; pass ``block=False`` from the hub (a link
        callback), which cannot wait.
        """
        glet = self._greenlet
        if glet is not None and not glet.dead:
            self._should_run = False
            glet.kill(ComponentKilled("%s killed" % self.name), block=block, timeout=timeout)

    def join(self, timeout=None):
        """Block until the greenlet ends or ``timeout`` passes; True if it has ended."""
        if self._greenlet is not None:
            self._greenlet.join(timeout)
        return not self.is_alive()

    def is_alive(self):
        return self._greenlet is not None and not self._greenlet.dead

    @property
    def ident(self):
        """The current (or last) greenlet's ``minimal_ident``; None before the first start."""
        return None if self._greenlet is None else self._greenlet.minimal_ident

    def link(self, callback):
        """Call ``callback(component)`` each time the greenlet ends (kept across restarts).

        The callback runs in the hub: it MUST NOT block or raise (an error is logged).
        Linking after the end calls it soon, as gevent's link does.
        """
        self._links.add(callback)
        if self._greenlet is not None and self._greenlet.dead and self.exit is not None:
            self._links.notify_soon(self, [callback])

    def unlink(self, callback):
        self._links.remove(callback)

    # -- helpers for subclasses (component's greenlet) --------------------------------
    def beat(self):
        """Record progress now; call inside long waits so the component looks alive."""
        self.heartbeat = time.monotonic()

    def heartbeat_age(self):
        """Seconds since the last progress, or None before the first start."""
        return None if self.heartbeat is None else time.monotonic() - self.heartbeat

    @property
    def should_run(self):
        """False once a stop was asked for; long execute() bodies may check it."""
        return self._should_run

    @contextlib.contextmanager
    def interruptible(self):
        """Mark a blocking wait that stop() may interrupt (raises a private GreenletExit).

        Put only waits inside whose interruption loses nothing. If a stop was already
        requested the block does not start at all.
        """
        if not self._should_run:
            raise _StopRequested()
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    # -- the loop (component's greenlet) ----------------------------------------------
    def _run(self):
        try:
            while self._should_run:
                try:
                    self._session()
                except Exception as error:
                    if not self._retry_after(error):
                        self._end("abnormal", error)
                        return
        except _StopRequested:
            pass
        except BaseException as error:  # ComponentKilled, a foreign GreenletExit
            self._end("abnormal", error)
            return
        self._end("normal", None)

    def _session(self):
        """set_up, then iterate until asked to stop; tear_down always."""
        try:
            self.set_up()
            self.heartbeat = time.monotonic()
            while self._should_run:
                if self.interruptible_pre_execute:
                    self._interruptible = True
                    try:
                        value = self.pre_execute()
                    finally:
                        self._interruptible = False
                else:
                    value = self.pre_execute()
                self.post_execute(self.execute(value))
                self.heartbeat = time.monotonic()
                if self.backoff.attempts:
                    self.backoff.reset()
        finally:
            self._safe_tear_down()

    def _retry_after(self, error):
        """Classify ``error``; for a retry, sleep the backoff (interruptibly) and say True."""
        action, expected, message = self._classify(error)
        if action not in RETRY_ACTIONS:
            log.log(logging.WARNING if expected else logging.ERROR,
                    "%s ends (%s): %s", self.name, action, message,
                    exc_info=None if expected else error,
                    extra={"action": "component." + action, "instance": self.name})
            return False
        delay = self.backoff.next()
        self.heartbeat = time.monotonic()  # waiting to retry is progress, not a hang
        log.warning("%s: %s; %s in %.2fs (attempt %d)", self.name, message, action, delay,
                    self.backoff.attempts, exc_info=None if expected else error,
                    extra={"action": "component." + action, "instance": self.name})
        with self.interruptible():
            gevent.sleep(delay)
        return True

    def _classify(self, error):
        """(action name, expected, log message) from the strategy's ``action(error)`` and
        ``handle_exception(error) -> (expected, message)``; only ``[0]`` and ``.message`` are
        read, so a hermes strategy answering ``(expected, action)`` works too."""
        try:
            action = self.error_strategy.action(error)
            handle = getattr(self.error_strategy, "handle_exception", None)
            handling = handle(error) if handle else (False, None)
            expected = bool(handling[0])
            message = getattr(handling, "message", None) or "%s: %s" % (
                type(error).__name__, error)
        except Exception:
            log.exception("%s: error strategy failed on %r", self.name, error,
                          extra={"action": "component.strategy_error", "instance": self.name})
            return "die", False, repr(error)
        if action not in RETRY_ACTIONS and action not in END_ACTIONS:
            action = "die"
        return action, expected, message

    def _safe_tear_down(self):
        try:
            self.tear_down()
        except Exception:
            log.exception("%s: tear_down failed", self.name,
                          extra={"action": "component.tear_down_error", "instance": self.name})

    def _end(self, exit, exception):
        self.exit, self.exception = exit, exception
        self._should_run = False

    # -- death notification (hub) -----------------------------------------------------
    def _on_greenlet_end(self, glet):
        if glet is not self._greenlet:
            return
        if self.exit is None:  # killed before it ever ran
            self._end("abnormal", glet.exception or glet.value or ComponentKilled())
        self._links.notify(self)

    def __repr__(self):
        state = "alive" if self.is_alive() else (self.exit or "new")
        return "<%s %s %s>" % (type(self).__name__, self.name, state)
