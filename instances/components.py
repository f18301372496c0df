"""The :class:`Component`: hermes' set_up / execute / tear_down lifecycle on one greenlet.

A component owns exactly one greenlet at a time. Its owner starts it, stops it with a
timeout, joins it, and hears about its end through :meth:`Component.link`. Lifecycle::

    start() --> set_up() --> +-> pre_execute() -> execute(v) -> post_execute(r) -+
                   ^         |                                                  |
                   |         +---------- heartbeat; backoff.reset() <-----------+
                   |                   (while no stop was requested)
                   |
      error in set_up/pre/execute/post ---> error_strategy.handle_exception(error)
                   |                        (read by strategies.read_answer)
                   |                          |                    |
                   |    "reconnect" / "retry" / "continue"   "role_changed" / "fatal" /
                   |                          |              "terminate" / "die"
                   +---- sleep backoff.next() <- tear_down()       tear_down(); report to
                         (stop() interrupts;                       error_queue; exit
                          none for a first "continue")             "abnormal"

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

Two constructor forms, one implementation. pgvisor's: ``Component(name=None,
error_strategy=None, backoff=None)``. hermes' (its docs, 4.2): ``Component(notification_pipe,
error_strategy, error_queue, backoff_limit=16)``, recognised by its keywords or by its
positional values (a first argument that is not a name, a third that is not a Backoff, a
fourth at all). ``notification_pipe`` is the queue the default :meth:`~Component.pre_execute`
takes each item from; ``error_queue`` receives a ``(expected, message)``
:class:`~instances.strategies.Handling` (``.action`` is hermes' constant) each time an error
ends the component, as hermes' Client read it; ``backoff_limit`` is the backoff's cap in
seconds (:attr:`Component.hermes_backoff_limit` when not given).

Concurrency contract: every method is called from greenlets of the one hub thread (never
from another OS thread). ``start``, ``stop``, ``join`` and ``kill`` are for the owner, not
for the component's own greenlet (``stop`` from inside only asks and returns at once).
"""
import inspect
import logging
import math
import time

import gevent
import gevent.event
from gevent import GreenletExit, getcurrent

from instances.backoff import Backoff
from instances.episodes import Episode, duration, one_line
from instances.exceptions import InvalidConfigurationException
from instances.links import Links
from instances.strategies import (
    DIE,
    RETRY_ACTIONS,
    RETRY_NOW,
    TERMINATE,
    CommonErrorStrategy,
    Handling,
    read_answer,
)

log = logging.getLogger(__name__)

#: The keywords only hermes' form of the Component constructor has.
HERMES_KEYWORDS = frozenset(("notification_pipe", "error_queue", "backoff_limit"))



class _Interruptible:
    """:meth:`Component.interruptible`'s context manager."""

    __slots__ = ("component",)

    def __init__(self, component):
        self.component = component

    def __enter__(self):
        component = self.component
        if not component._should_run:
            raise _StopRequested()
        component._interruptible = True

    def __exit__(self, *exc_info):
        self.component._interruptible = False
        return False

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


def _pgvisor_form(name=None, error_strategy=None, backoff=None):
    """pgvisor's form: ``Component(name=None, error_strategy=None, backoff=None)``."""


def _hermes_form(notification_pipe=None, error_strategy=None, error_queue=None,
                 backoff_limit=None):
    """hermes' form: ``Component(notification_pipe, error_strategy, error_queue,
    backoff_limit=16)``."""


def _is_hermes_call(args, kwargs):
    """True for a call in hermes' form: one of its keywords, or positional values that
    cannot be pgvisor's (a pipe where the name goes, a queue where the Backoff goes)."""
    return bool(HERMES_KEYWORDS & set(kwargs)) or len(args) > 3 or (
        len(args) > 0 and not isinstance(args[0], (str, type(None)))) or (
        len(args) > 2 and not isinstance(args[2], (Backoff, type(None))))


def bind_form(form, args, kwargs, owner):
    """The arguments of a call as the signature of ``form`` names them, defaults applied;
    a bad call raises TypeError naming ``owner`` and the form. Pure."""
    try:
        bound = inspect.signature(form).bind(*args, **kwargs)
    except TypeError as error:
        raise TypeError("%s(): %s; the form: %s" % (owner, error, form.__doc__)) from None
    bound.apply_defaults()
    return bound.arguments


def backoff_for_limit(limit):
    """hermes' ``backoff_limit`` (seconds) as a :class:`Backoff` capped there; raise
    InvalidConfigurationException naming the field unless it is a number > 0."""
    if (isinstance(limit, bool) or not isinstance(limit, (int, float))
            or not math.isfinite(limit) or limit <= 0):
        raise InvalidConfigurationException(
            "backoff_limit=%r: must be a number of seconds > 0" % (limit,),
            "backoff_limit", limit)
    return Backoff(initial=min(Backoff.initial, limit), max_delay=limit)


def _check_pipe(pipe):
    if pipe is not None and not callable(getattr(pipe, "get", None)):
        raise InvalidConfigurationException(
            "notification_pipe=%r: must be a queue (with get()), e.g. the listener's "
            "notif_queue" % (pipe,), "notification_pipe", pipe)
    return pipe


def _takes_value(method):
    """False for a method written without the value parameter: hermes' usage example
    declares ``def execute(self):``. Read once per start, not per call."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
               for p in parameters)


class Component:
    """A long-running loop with hermes' lifecycle hooks, run on a greenlet it owns.

    Subclasses override :meth:`set_up`, :meth:`pre_execute`, :meth:`execute`,
    :meth:`post_execute` and :meth:`tear_down`; all of them run in the component's
    greenlet and may block cooperatively. A blocking wait that :meth:`stop` may cut short
    goes inside ``with self.interruptible():`` (or set :attr:`interruptible_pre_execute`).
    ``tear_down`` must tolerate a partial or failed ``set_up``. Construct it in pgvisor's
    or hermes' form (see the module).
    """

    #: Seconds :meth:`stop` waits for a clean end before it kills the greenlet.
    stop_timeout = 10.0
    #: True: the whole of pre_execute() is an interruptible wait (it must not hold work
    #: that would be lost when interrupted, e.g. it only blocks in ``queue.get()``).
    interruptible_pre_execute = False
    #: Seconds: the backoff's cap for a component built in hermes' form without a
    #: ``backoff_limit`` (hermes' documented default).
    hermes_backoff_limit = 16.0
    #: Seconds between two beats while the component waits to retry (a backoff of 32 s
    #: +/-10 % is longer than the supervisor's 30 s heartbeat_timeout: waiting is not a hang).
    backoff_beat = 1.0
    #: Seconds between two summaries of a failure that goes on (its first one is a warning,
    #: the attempts between summaries debug lines).
    summary_interval = 300.0

    def __init__(self, *args, **kwargs):
        """``Component(name=None, error_strategy=None, backoff=None)`` or hermes'
        ``Component(notification_pipe, error_strategy, error_queue, backoff_limit=16)``."""
        if _is_hermes_call(args, kwargs):
            given = bind_form(_hermes_form, args, kwargs, type(self).__name__)
            limit = given["backoff_limit"]
            self._init(None, given["error_strategy"], backoff_for_limit(
                self.hermes_backoff_limit if limit is None else limit),
                given["notification_pipe"], given["error_queue"])
        else:
            given = bind_form(_pgvisor_form, args, kwargs, type(self).__name__)
            self._init(given["name"], given["error_strategy"], given["backoff"])

    def _init(self, name, error_strategy, backoff, notification_pipe=None, error_queue=None):
        """The one constructor body of both forms (subclasses with forms of their own
        call it)."""
        self.name = name or type(self).__name__
        self.error_strategy = CommonErrorStrategy() if error_strategy is None else error_strategy
        self.backoff = backoff if backoff is not None else Backoff()
        #: The queue the default :meth:`pre_execute` takes items from (None: no wait).
        self.notification_pipe = _check_pipe(notification_pipe)
        #: Where each error that ends the component is reported as ``(expected,
        #: message)``, if set (anything with ``put(item, block)``).
        self.error_queue = error_queue
        #: time.monotonic() of the last loop progress (None before the first start).
        self.heartbeat = None
        #: None while running or never started; "normal" or "abnormal" after the end.
        self.exit = None
        #: The exception that ended the component abnormally, else None.
        self.exception = None
        self._greenlet = None
        self._should_run = False
        self._interruptible = False
        self._execute_takes_value = True
        self._links = Links("component")
        self._retry_now = gevent.event.Event()  # set: the backoff wait ends at once
        #: The failures retried since the last full iteration, for the log.
        self.failing = Episode(self.summary_interval)

    @classmethod
    def longest_silence(cls):
        """Seconds a healthy component of this class may go without a beat (with its class
        defaults): the supervisor's ``heartbeat_timeout`` must be longer
        (:func:`check_heartbeat_timeout`). Here: a backoff wait's beat period, or the
        longest backoff delay with its jitter if that is shorter."""
        return min(cls.backoff_beat, Backoff.max_delay * (1.0 + Backoff.jitter))

    # -- hooks (run in the component's greenlet) ------------------------------------
    def set_up(self):
        """Acquire resources (connections, LISTEN). Called again after every retry."""

    def pre_execute(self):
        """Wait for work and return it; may block cooperatively. By default: the next item
        of :attr:`notification_pipe` (an interruptible wait), or None at once without one."""
        pipe = self.notification_pipe
        if pipe is None:
            return None
        with self.interruptible():
            return pipe.get()

    def execute(self, pre_exec_value):
        """Do the work; the return value goes to :meth:`post_execute`. An override
        declared without ``pre_exec_value`` (hermes' usage example) is called without it."""

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
        self._retry_now.clear()
        self._execute_takes_value = _takes_value(self.execute)
        self.failing.ended()
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

    def retry_now(self):
        """Cut the backoff short: a component waiting to retry (a listener to reconnect)
        tries again at once, e.g. because its owner learned that the database is back.
        One failing an attempt right now skips its next wait once; a healthy component
        (no failure since its last full iteration) is left alone. Returns True if it was
        failing. Safe from any greenlet of the hub's thread; never blocks."""
        if not self.backoff.attempts or not self.is_alive():
            return False
        self._retry_now.set()
        return True

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

    def interruptible(self):
        """Mark a blocking wait that stop() may interrupt (raises a private GreenletExit).

        Put only waits inside whose interruption loses nothing. If a stop was already
        requested the block does not start at all. (A plain context manager, not a
        generator's: a listener enters it once per read.)
        """
        return _Interruptible(self)

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
                self.post_execute(self.execute(value) if self._execute_takes_value
                                  else self.execute())
                self.heartbeat = time.monotonic()
                if self.backoff.attempts:
                    self.backoff.reset()
                    self._retry_now.clear()
                    self._recovered()
        finally:
            self._safe_tear_down()

    def _retry_after(self, error):
        """Read the strategy's answer on ``error``; for a retry, sleep the backoff
        (interruptibly; not at all for a first "continue") and say True; else report the
        end to the error queue and say False."""
        handling = self._classify(error)
        action, expected, message = handling.name, handling.expected, handling.message
        if action not in RETRY_ACTIONS:
            log.log(logging.WARNING if expected else logging.ERROR,
                    "%s ends (%s): %s", self.name, action, message,
                    exc_info=None if expected else error,
                    extra={"action": "component." + action, "instance": self.name})
            self._report(handling)
            return False
        first = self.backoff.attempts == 0
        delay = self.backoff.next()
        if action == RETRY_NOW and first:
            delay = 0.0
        self.heartbeat = time.monotonic()  # waiting to retry is progress, not a hang
        step = self.failing.failed(message)
        extra = {"action": "component." + action, "instance": self.name}
        if step == "summary":
            log.warning("%s still failing %s; %s in %.2fs", self.name,
                        self.failing.describe(), action, delay,
                        extra=dict(extra, action="component.still_failing"))
        else:
            log.log(logging.WARNING if step == "started" else logging.DEBUG,
                    "%s: %s; %s in %.2fs (attempt %d)", self.name, one_line(message), action,
                    delay, self.backoff.attempts,
                    exc_info=None if expected or step is None else error, extra=extra)
        self._sleep_beating(delay)
        return True

    def _sleep_beating(self, delay):
        """Sleep ``delay`` seconds interruptibly, beating every :attr:`backoff_beat`;
        :meth:`retry_now` ends the sleep at once."""
        deadline = time.monotonic() + delay
        with self.interruptible():
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if self._retry_now.wait(min(left, self.backoff_beat)):
                    self._retry_now.clear()
                    log.debug("%s retries now (%.2f s of its backoff left)", self.name,
                              left, extra={"action": "component.retry_now",
                                           "instance": self.name})
                    return
                self.heartbeat = time.monotonic()

    def _recovered(self):
        if self.failing.open:
            seconds, attempts = self.failing.snapshot()
            self.failing.ended()
            log.info("%s recovered after %s and %d failed attempt%s", self.name,
                     duration(seconds), attempts, "" if attempts == 1 else "s",
                     extra={"action": "component.recovered", "instance": self.name})

    def _classify(self, error):
        """The strategy's ``handle_exception(error)`` (the one method it must have) read by
        :func:`~instances.strategies.read_answer`; a failing strategy means "die"."""
        try:
            return read_answer(self.error_strategy.handle_exception(error), error)
        except Exception:
            log.exception("%s: error strategy failed on %r", self.name, error,
                          extra={"action": "component.strategy_error", "instance": self.name})
            return Handling(False, TERMINATE, DIE, repr(error))

    def _report(self, handling):
        """Put ``(expected, message)`` into the error queue, if any; never blocks or raises."""
        if self.error_queue is None:
            return
        try:
            self.error_queue.put(handling, False)
        except Exception as exc:  # a full or closed queue: the report is dropped
            log.warning("%s: error report dropped (%s: %s)", self.name, type(exc).__name__,
                        exc, extra={"action": "component.report_dropped",
                                    "instance": self.name})

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


def check_heartbeat_timeout(seconds, kinds):
    """Raise :class:`InvalidConfigurationException` (field ``heartbeat_timeout``) unless
    ``seconds`` exceeds the :meth:`Component.longest_silence` of every class in ``kinds``:
    a shorter timeout would judge a healthy component (one waiting for its backoff, a
    liveness round trip, a connect) unresponsive and spend restart budget on it."""
    for kind in kinds:
        silence = kind.longest_silence()
        if not seconds > silence:
            raise InvalidConfigurationException(
                "heartbeat_timeout %r s must be longer than %.1f s, the longest a healthy %s "
                "goes without a heartbeat" % (seconds, silence, kind.__name__),
                "heartbeat_timeout", seconds)
