"""The supervision policy: what to do with each instance, as a pure function.

``plan(desired, observed, state) -> [Action, ...]`` compares the registry (desired specs)
with what runs (:class:`Observed`) under the supervisor's situation (:class:`PlanState`) and
returns at most one action per instance, sorted by name. No hub, no database, no clock: the
Supervisor actor gathers the facts (what a restart budget still allows among them), calls
:func:`plan`, and its Executor carries the actions out (spending the budget for
``Restart(budgeted=True)``; the plan parks an instance whose budget is spent). Safe to call
from any greenlet or thread; it never blocks.

Rules, first match wins for each name (docs/supervision.rst has the same table)::

    removed from the registry ....... alive: Stop(final "stopped", forget)  else: Forget
    taken from this node (cluster) .. the same, carrying the cluster's reason (``released``,
                                      from ``PlanState.elsewhere``): logged as a release
    disabled ........................ alive or not yet recorded: Stop(final "disabled")
    parked (disabled_by_supervisor) . nothing: an operator's enable or restart clears it
    died of a fatal database error .. Park (no restart would help)
    paused (manual or db down) ...... alive with live changes: Apply; else nothing
    role unknown, run_on != any ..... alive with live changes: Apply; else nothing
    wrong role ...................... alive or not yet recorded: Stop(final "waiting")
    refused by this role ............ (the server refused its LISTEN: RoleChanged) not
                                      alive: Hold (it waits) until the role changes
    not alive ....................... new, waiting or re-enabled: Start; died: Restart by
                                      restart type (budgeted unless it died in an outage
                                      or the grace; not in grace; Park when the budget is
                                      spent); recorded "stopped" (shut down, or a
                                      transient/temporary exit): nothing until an
                                      explicit restart
    alive, grace just ended ......... not connected: Restart (not budgeted)
    alive, unresponsive ............. Restart("unresponsive", budgeted) unless in grace
    alive, spec changed ............. live fields only: Apply; else Recreate

The state an instance shows (:func:`shown_state`, one of :data:`STATES`) is decided here
too, from the same facts.

A spec that does not need the database (``needs_database`` False: a spool-source instance,
``channels=[]``) ignores the database's state, the revive grace and the role: only a
manual pause holds it. Its channels changing to some (or back) is a Recreate.

Lifecycle of one instance as the plan sees it::

    (new) --Start--> alive --death--> dead --Restart--> alive
      |                |                 |\\--(transient normal / temporary)--> stopped
      |                |                 \\--Park (fatal, budget spent)--> disabled_by_supervisor
      |                +--Stop(waiting)--> waiting --role fits--Start--> alive
      +----------------+--Stop(disabled)-> disabled --enabled--Start--> alive
                       +--Stop(stopped)--> (removed) --Forget--> (gone)
"""
import dataclasses
import enum
import typing

FINAL_STATES = ("stopped", "disabled", "waiting")
#: The states an instance shows (status, HTTP, CLI).
STATES = ("starting", "running", "waiting", "stopped", "disabled", "disabled_by_supervisor")


class Outcome(enum.StrEnum):
    """What a request did to one instance: the wire strings of ``{name: outcome}``.

    Two outcomes carry details after a colon: ``"updated: <fields>"`` (:meth:`detail` of
    UPDATED) and ``"error: <message>"`` (a request that failed).
    """

    STARTED = "started"
    RESTARTED = "restarted"
    STOPPED = "stopped"
    DISABLED = "disabled"
    WAITING = "waiting"
    UNCHANGED = "unchanged"
    PARKED = "disabled_by_supervisor"
    UNKNOWN = "unknown instance"
    UPDATED = "updated"
    ERROR = "error"

    def detail(self, text):
        """``"<outcome>: <text>"``, e.g. ``Outcome.UPDATED.detail("channels")``."""
        return "%s: %s" % (self.value, text)


@dataclasses.dataclass(frozen=True)
class Observed:
    """What the supervisor knows about one instance's runtime (built by the actor).

    ``exit`` is how it last died: None (never died, or stopped by us), "normal" or
    "abnormal". ``heartbeat_age`` is seconds since its last heartbeat (None: none yet).
    ``spec`` is the spec it was built or last applied with. ``parked`` is the reason it was
    parked ``disabled_by_supervisor`` (None: not parked). ``final_state`` is the
    ``Stop.final_state`` recorded by the last Stop carried out ("stopped", "disabled",
    "waiting"), None once it is started again. ``connected`` is informational: the plan
    never acts on a lost connection, the listener reconnects by its own backoff (except
    at the end of the revive grace). ``died_in_outage``: the last death happened while
    supervision was paused or in the grace (its restart is free). ``refused_by``: the role
    ("primary", "standby", "unknown") whose server refused the instance's listener.
    ``fatal``: the fatal database error it died of (None: none). ``restarts_left``: what
    its restart budget still allows (None: not known, taken as allowed).
    """

    name: str
    alive: bool = False
    exit: typing.Optional[str] = None
    heartbeat_age: typing.Optional[float] = None
    spec: typing.Any = None
    parked: typing.Optional[str] = None
    final_state: typing.Optional[str] = None
    connected: bool = True
    died_in_outage: bool = False
    refused_by: typing.Optional[str] = None
    fatal: typing.Optional[str] = None
    restarts_left: typing.Optional[int] = None

    @property
    def waiting(self):
        """Stopped by us because of the role or the database; started when they allow."""
        return self.final_state == "waiting"


@dataclasses.dataclass(frozen=True)
class PlanState:
    """The supervisor's situation for one planning pass.

    ``paused``: manual pause (``db_up=False`` halts too, except instances that do not
    need the database).
    ``role``: "primary", "standby" or None (unknown). ``in_grace``: within
    ``wait_after_db_revived`` after the database came back. ``heartbeat_timeout``: seconds
    after which an alive instance's heartbeat is too old. ``ratelimit``: whether restarts
    planned now count against the restart budget (periodic verify and deaths: True;
    explicit verify: the caller's choice). ``grace_ended``: this pass ends the revive
    grace: instances still not connected are restarted. ``wait_after_db_revived`` (s) and
    ``restart_max_rate`` (the default budget) only word the reasons.
    """

    db_up: bool = True
    paused: bool = False
    role: typing.Optional[str] = "primary"
    in_grace: bool = False
    heartbeat_timeout: float = 30.0
    ratelimit: bool = True
    grace_ended: bool = False
    wait_after_db_revived: float = 35.0
    restart_max_rate: str = "1/m"
    elsewhere: typing.Mapping[str, typing.Any] = dataclasses.field(default_factory=dict)

    @property
    def role_key(self):
        """The role as a refusal records it: "unknown" when not known."""
        return self.role or "unknown"

    @property
    def halted(self):
        """No starts or restarts: paused by hand or the database is down."""
        return self.paused or not self.db_up


@dataclasses.dataclass(frozen=True)
class Start:
    """Start an instance that is not running and did not die (new, enabled, role fits)."""

    name: str
    spec: typing.Any
    reason: str


@dataclasses.dataclass(frozen=True)
class Stop:
    """Stop an instance (if alive) and record ``final_state``: "stopped" (removed or
    done), "disabled" or "waiting" (wrong role). On an instance that is not running it only
    records the state. ``forget``: it was removed from the registry (or, ``released`` not
    None, taken from this node by the cluster: ``released`` says why); drop its record."""

    name: str
    reason: str
    final_state: str
    forget: bool = False
    released: typing.Any = None


@dataclasses.dataclass(frozen=True)
class Restart:
    """Restart a dead or unresponsive instance with ``spec``; ``budgeted``: the actor
    spends one unit of the instance's restart budget first (and parks it if spent)."""

    name: str
    spec: typing.Any
    reason: str
    budgeted: bool


@dataclasses.dataclass(frozen=True)
class Apply:
    """Hand a running instance its new spec; ``changes`` names the fields (all live)."""

    name: str
    spec: typing.Any
    changes: tuple


@dataclasses.dataclass(frozen=True)
class Recreate:
    """Replace a running instance because a field that needs a new one changed; not a
    failure, so never budgeted."""

    name: str
    spec: typing.Any
    reason: str


@dataclasses.dataclass(frozen=True)
class Hold:
    """Keep a not-running instance waiting (its server refused it): recorded "waiting",
    answered "waiting", started again only on another role or an operator's word."""

    name: str
    reason: str


@dataclasses.dataclass(frozen=True)
class Park:
    """Give up on an instance: ``disabled_by_supervisor`` with ``reason`` until an
    operator's restart or enable. ``rate_limited``: its restart budget is spent."""

    name: str
    reason: str
    rate_limited: bool = False


@dataclasses.dataclass(frozen=True)
class Forget:
    """Drop the runtime record of an instance that was removed and is not running
    (``released`` not None: taken from this node by the cluster, and why)."""

    name: str
    released: typing.Any = None


def plan(desired, observed, state):
    """Return the actions that bring ``observed`` in line with ``desired``, sorted by name.

    ``desired``: {name: InstanceSpec}; ``observed``: {name: Observed} (missing: never
    started); ``state``: PlanState. Pure and deterministic.
    """
    actions = []
    for name in sorted(set(desired) | set(observed)):
        action = plan_one(name, desired.get(name), observed.get(name), state)
        if action is not None:
            actions.append(action)
    return actions


def plan_one(name, spec, obs, state):
    """The action for one instance, or None; the rules of the module docstring."""
    alive = obs is not None and obs.alive
    final = obs.final_state if obs is not None else None
    if spec is None:
        released = state.elsewhere.get(name)
        if alive:
            return Stop(name, "removed from the registry" if released is None
                        else str(released), "stopped", forget=True, released=released)
        return Forget(name, released) if obs is not None else None
    if not spec.enabled:
        if alive or final != "disabled":
            return Stop(name, "disabled", "disabled")
        return None
    if obs is not None and obs.parked:
        return None
    if obs is not None and obs.fatal and not alive:
        return Park(name, "fatal database error: %s" % obs.fatal)
    if getattr(spec, "needs_database", True):
        fits = role_fits(spec.run_on, state.role)
    else:  # a spool source: only a manual pause holds it
        state, fits = dataclasses.replace(state, db_up=True, in_grace=False), True
    if state.halted or fits is None:
        return _live_changes(name, spec, obs) if alive else None
    if not fits:
        if alive or final != "waiting":
            return Stop(name, "run_on=%s on a %s" % (spec.run_on, state.role), "waiting")
        return None
    if not alive and obs is not None and obs.refused_by == state.role_key:
        return Hold(name, "the %s refused it" % obs.refused_by)
    if alive:
        return _plan_alive(name, spec, obs, state)
    return _plan_dead(name, spec, obs, state)


def role_fits(run_on, role):
    """True if ``run_on`` may run on a server of ``role``; None when the role is unknown
    and that matters (run_on is not "any")."""
    if run_on == "any":
        return True
    if role is None:
        return None
    return run_on == role


def _plan_dead(name, spec, obs, state):
    """Not alive, enabled, role fits, not parked, not halted."""
    if obs is None:
        return Start(name, spec, "new instance")
    if obs.final_state == "waiting":
        return Start(name, spec, "role fits and the database is up")
    if obs.final_state == "disabled":
        return Start(name, spec, "enabled")
    if obs.final_state == "stopped":
        return None
    if obs.exit is None:
        return Start(name, spec, "not started yet")
    if _restartable(spec.restart, obs.exit):
        if state.in_grace:
            return None
        reason = "exited (%s)" % obs.exit
        free = obs.died_in_outage and getattr(spec, "needs_database", True)
        return _budgeted_restart(name, spec, obs, state, reason, state.ratelimit and not free)
    return Stop(name, "%s instance exited (%s): not restarted" % (spec.restart, obs.exit),
                "stopped")


def _restartable(restart, exit_kind):
    """OTP restart types: permanent always, transient after an abnormal exit, temporary
    never."""
    if restart == "permanent":
        return True
    return restart == "transient" and exit_kind == "abnormal"


def _budgeted_restart(name, spec, obs, state, reason, budgeted):
    """A Restart, or Park when it is budgeted and the budget is spent."""
    if budgeted and obs.restarts_left is not None and obs.restarts_left <= 0:
        rate = spec.restart_max_rate or state.restart_max_rate
        return Park(name, "restart budget %s spent (%s)" % (rate, reason), rate_limited=True)
    return Restart(name, spec, reason, budgeted)


def _plan_alive(name, spec, obs, state):
    """Alive, enabled, role fits, not parked, not halted."""
    if state.grace_ended and not obs.connected and getattr(spec, "needs_database", True):
        return Restart(name, spec, "not back %.1f s after the database revived"
                       % state.wait_after_db_revived, budgeted=False)
    if _unresponsive(obs, state.heartbeat_timeout):
        if state.in_grace:
            return _live_changes(name, spec, obs)
        return _budgeted_restart(name, spec, obs, state, "unresponsive: no heartbeat for "
                                 "%.1f s" % obs.heartbeat_age, state.ratelimit)
    changed = changed_fields(obs.spec, spec)
    recreate = spec.restart_fields(obs.spec) if changed else ()
    if recreate:
        return Recreate(name, spec, "changed: %s" % ", ".join(recreate))
    return Apply(name, spec, changed) if changed else None


def _live_changes(name, spec, obs):
    """Apply when only live fields changed (no restart involved), else nothing: used while
    starts and restarts are held back (halted, unknown role, grace)."""
    changed = changed_fields(obs.spec, spec)
    if changed and not spec.restart_fields(obs.spec):
        return Apply(name, spec, changed)
    return None


def _unresponsive(obs, timeout):
    return obs.heartbeat_age is not None and obs.heartbeat_age > timeout


def changed_fields(old, new):
    """Sorted tuple of the field names whose values differ; () when ``old`` is None (the
    running spec is unknown: nothing to compare) or equal."""
    if old is None:
        return ()
    return new.changed_fields(old)


def shown_state(spec, obs, db_up):
    """The state shown for an instance (one of :data:`STATES`): ``spec`` is its desired
    spec (None: removed), ``obs`` its Observed, ``db_up`` whether the database is up."""
    if obs.alive:  # what runs, until it has stopped
        if obs.connected:
            return "running"
        return "waiting" if not db_up else "starting"
    if obs.parked:
        return "disabled_by_supervisor"
    if spec is not None and not spec.enabled:
        return "disabled"
    if obs.final_state == "waiting" or obs.died_in_outage or (obs.exit and not db_up):
        return "waiting"
    return "stopped"
