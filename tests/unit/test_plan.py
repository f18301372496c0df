"""The supervision policy: every rule of supervisor.plan, their combinations, determinism."""
import time

import pytest

from instances.spec import InstanceSpec
from supervisor.plan import (
    STATES,
    Apply,
    Forget,
    Hold,
    Observed,
    Outcome,
    Park,
    PlanState,
    Recreate,
    Restart,
    Start,
    Stop,
    changed_fields,
    plan,
    role_fits,
    shown_state,
)


def spec(name="a", **fields):
    data = {"name": name, "channels": ["ch"], "handler": "app.handlers:handle"}
    data.update(fields)
    return InstanceSpec.from_dict(data, resolve=False)


def running(s, **fields):
    """An alive instance built from spec ``s`` with a fresh heartbeat."""
    values = {"name": s.name, "alive": True, "heartbeat_age": 1.0, "spec": s}
    values.update(fields)
    return Observed(**values)


def dead(s, exit="abnormal", **fields):
    return Observed(name=s.name, alive=False, exit=exit, spec=s, **fields)


UP = PlanState(db_up=True, paused=False, role="primary")
STANDBY = PlanState(role="standby")
UNKNOWN_ROLE = PlanState(role=None)
PAUSED = PlanState(paused=True)
DB_DOWN = PlanState(db_up=False, paused=True, role=None)
GRACE = PlanState(in_grace=True)
NO_RATELIMIT = PlanState(ratelimit=False)
GRACE_ENDED = PlanState(ratelimit=False, grace_ended=True, wait_after_db_revived=35.0)

A = spec("a")
A_PERMANENT, A_TRANSIENT, A_TEMPORARY = (spec("a", restart=r)
                                         for r in ("permanent", "transient", "temporary"))


def one(desired_spec, obs, state=UP, name="a"):
    """Plan for a single instance: returns the only action, or None."""
    desired = {name: desired_spec} if desired_spec is not None else {}
    observed = {name: obs} if obs is not None else {}
    actions = plan(desired, observed, state)
    assert len(actions) <= 1
    return actions[0] if actions else None


# (id, desired spec, observed, state, expected action) -- the rules one by one.
RULES = [
    # registry membership
    ("new instance starts", A, None, UP, Start("a", A, "new instance")),
    ("removed alive is stopped", None, running(A), UP,
     Stop("a", "removed from the registry", "stopped", forget=True)),
    ("removed and stopped is forgotten", None, dead(A), UP, Forget("a")),
    ("removed waiting is forgotten", None, Observed("a", final_state="waiting"), UP,
     Forget("a")),
    ("removed and never seen: nothing", None, None, UP, None),
    # multi-node: taken from this node by the cluster, its reason carried along
    ("taken elsewhere alive is stopped with the cluster's reason", None, running(A),
     PlanState(elsewhere={"a": "moved to node n1"}),
     Stop("a", "moved to node n1", "stopped", forget=True, released="moved to node n1")),
    ("taken elsewhere and stopped is forgotten with the reason", None, dead(A),
     PlanState(paused=True, elsewhere={"a": "lease ended"}), Forget("a", "lease ended")),
    # enabled flag
    ("disabled alive is stopped", spec("a", enabled=False), running(A), UP,
     Stop("a", "disabled", "disabled")),
    ("disabled never started is recorded", spec("a", enabled=False), None, UP,
     Stop("a", "disabled", "disabled")),
    ("disabled already recorded: nothing", spec("a", enabled=False),
     Observed("a", final_state="disabled"), UP, None),
    ("re-enabled starts (not budgeted)", A, Observed("a", final_state="disabled"), UP,
     Start("a", A, "enabled")),
    # parking
    ("parked dead stays parked", A, dead(A, parked="restarted too often"), UP, None),
    ("parked but disabled records disabled", spec("a", enabled=False),
     dead(A, parked="restarted too often"), UP, Stop("a", "disabled", "disabled")),
    ("parked but removed is forgotten", None, dead(A, parked="too often"), UP, Forget("a")),
    # deaths by restart type
    ("permanent abnormal exit restarts", A_PERMANENT, dead(A_PERMANENT), UP,
     Restart("a", A_PERMANENT, "exited (abnormal)", True)),
    ("permanent normal exit restarts", A_PERMANENT, dead(A_PERMANENT, "normal"), UP,
     Restart("a", A_PERMANENT, "exited (normal)", True)),
    ("transient abnormal exit restarts", A_TRANSIENT, dead(A_TRANSIENT), UP,
     Restart("a", A_TRANSIENT, "exited (abnormal)", True)),
    ("transient normal exit stays stopped", A_TRANSIENT, dead(A_TRANSIENT, "normal"), UP,
     Stop("a", "transient instance exited (normal): not restarted", "stopped")),
    ("temporary abnormal exit stays stopped", A_TEMPORARY, dead(A_TEMPORARY), UP,
     Stop("a", "temporary instance exited (abnormal): not restarted", "stopped")),
    ("temporary normal exit stays stopped", A_TEMPORARY, dead(A_TEMPORARY, "normal"), UP,
     Stop("a", "temporary instance exited (normal): not restarted", "stopped")),
    ("recorded stopped is not restarted", A_TEMPORARY,
     dead(A_TEMPORARY, final_state="stopped"), UP, None),
    ("shut down permanent stays stopped", A, Observed("a", final_state="stopped"), UP, None),
    ("not alive and never died starts", A, Observed("a"), UP, Start("a", A, "not started yet")),
    ("explicit verify restarts unbudgeted", A, dead(A), NO_RATELIMIT,
     Restart("a", A, "exited (abnormal)", False)),
    # health
    ("unresponsive restarts budgeted", A, running(A, heartbeat_age=31.0), UP,
     Restart("a", A, "unresponsive: no heartbeat for 31.0 s", True)),
    ("heartbeat exactly at the timeout is fine", A, running(A, heartbeat_age=30.0), UP, None),
    ("no heartbeat yet is not unresponsive", A, running(A, heartbeat_age=None), UP, None),
    ("disconnected but alive is left to reconnect", A, running(A, connected=False), UP, None),
    ("healthy and unchanged: nothing", A, running(A), UP, None),
    # pause (manual or outage): no starts or restarts at all
    ("paused: new instance not started", A, None, PAUSED, None),
    ("paused: death not restarted", A, dead(A), PAUSED, None),
    ("paused: unresponsive not restarted", A, running(A, heartbeat_age=99.0), PAUSED, None),
    ("paused: waiting not started", A, Observed("a", final_state="waiting"), PAUSED, None),
    ("paused: removed alive still stopped", None, running(A), PAUSED,
     Stop("a", "removed from the registry", "stopped", forget=True)),
    ("paused: disabled alive still stopped", spec("a", enabled=False), running(A), PAUSED,
     Stop("a", "disabled", "disabled")),
    ("paused: live change applied", spec("a", channels=["ch", "x"]), running(A), PAUSED,
     Apply("a", spec("a", channels=["ch", "x"]), ("channels",))),
    ("paused: recreate held back", spec("a", handler="app.v2:handle"), running(A), PAUSED,
     None),
    ("db down counts as paused", A, dead(A), PlanState(db_up=False), None),
    ("db down: removed stopped", None, running(A), DB_DOWN,
     Stop("a", "removed from the registry", "stopped", forget=True)),
    # grace after revival
    ("grace: death not restarted yet", A, dead(A), GRACE, None),
    ("grace: unresponsive not restarted yet", A, running(A, heartbeat_age=99.0), GRACE, None),
    ("grace: new instance starts", A, None, GRACE, Start("a", A, "new instance")),
    ("grace: waiting instance starts", A, Observed("a", final_state="waiting"), GRACE,
     Start("a", A, "role fits and the database is up")),
    ("grace: recreate goes ahead", spec("a", dsn="host=b"), running(A), GRACE,
     Recreate("a", spec("a", dsn="host=b"), "changed: dsn")),
    # roles
    ("primary instance on a standby is stopped", A, running(A), STANDBY,
     Stop("a", "run_on=primary on a standby", "waiting")),
    ("primary instance new on a standby waits", A, None, STANDBY,
     Stop("a", "run_on=primary on a standby", "waiting")),
    ("dead primary instance on a standby waits, not budgeted", A, dead(A), STANDBY,
     Stop("a", "run_on=primary on a standby", "waiting")),
    ("already waiting: nothing", A, Observed("a", final_state="waiting"), STANDBY, None),
    ("standby instance on a primary waits", spec("a", run_on="standby"), None, UP,
     Stop("a", "run_on=standby on a primary", "waiting")),
    ("waiting primary instance starts on promotion", A,
     Observed("a", final_state="waiting"), UP,
     Start("a", A, "role fits and the database is up")),
    ("any runs on a standby", spec("a", run_on="any"), None, STANDBY,
     Start("a", spec("a", run_on="any"), "new instance")),
    ("unknown role: primary instance not started", A, None, UNKNOWN_ROLE, None),
    ("unknown role: running instance not stopped", A, running(A), UNKNOWN_ROLE, None),
    ("unknown role: dead instance left", A, dead(A), UNKNOWN_ROLE, None),
    ("unknown role: live change applied", spec("a", max_concurrency=4), running(A),
     UNKNOWN_ROLE, Apply("a", spec("a", max_concurrency=4), ("max_concurrency",))),
    ("unknown role: any starts", spec("a", run_on="any"), None, UNKNOWN_ROLE,
     Start("a", spec("a", run_on="any"), "new instance")),
    ("run_on changed to standby on a primary stops", spec("a", run_on="standby"),
     running(A), UP, Stop("a", "run_on=standby on a primary", "waiting")),
    # configuration changes
    ("channels change applied live", spec("a", channels=["x", "y"]), running(A), UP,
     Apply("a", spec("a", channels=["x", "y"]), ("channels",))),
    ("concurrency change applied live",
     spec("a", min_concurrency=2, max_concurrency=8), running(A), UP,
     Apply("a", spec("a", min_concurrency=2, max_concurrency=8),
           ("max_concurrency", "min_concurrency"))),
    ("policy fields applied live", spec("a", restart="transient", restart_max_rate="5/m",
                                        handler_timeout=5), running(A), UP,
     Apply("a", spec("a", restart="transient", restart_max_rate="5/m", handler_timeout=5),
           ("handler_timeout", "restart", "restart_max_rate"))),
    ("handler change recreates", spec("a", handler="app.v2:handle"), running(A), UP,
     Recreate("a", spec("a", handler="app.v2:handle"), "changed: handler")),
    ("queue size change recreates", spec("a", queue_size=5), running(A), UP,
     Recreate("a", spec("a", queue_size=5), "changed: queue_size")),
    ("mixed change recreates, naming only restart fields",
     spec("a", channels=["z"], dsn="host=b", queue={"spool": "/tmp/q"}), running(A), UP,
     Recreate("a", spec("a", channels=["z"], dsn="host=b", queue={"spool": "/tmp/q"}),
              "changed: dsn, queue")),
    ("unresponsive and changed restarts with the new spec", spec("a", handler="app.v2:h"),
     running(A, heartbeat_age=60.0), UP,
     Restart("a", spec("a", handler="app.v2:h"), "unresponsive: no heartbeat for 60.0 s",
             True)),
    ("unknown running spec: nothing to compare", spec("a", channels=["q"]),
     running(A, spec=None), UP, None),
    ("dead instance restarts with the new spec", spec("a", channels=["new"]), dead(A), UP,
     Restart("a", spec("a", channels=["new"]), "exited (abnormal)", True)),
    # deaths: fatal errors, refusals by the role, outages
    ("fatal database error parks", A, dead(A, fatal="database \"x\" does not exist"), UP,
     Park("a", "fatal database error: database \"x\" does not exist")),
    ("fatal database error parks even while paused", A, dead(A, fatal="gone"), PAUSED,
     Park("a", "fatal database error: gone")),
    ("fatal but disabled is only disabled", spec("a", enabled=False), dead(A, fatal="gone"),
     UP, Stop("a", "disabled", "disabled")),
    ("refused by this role is held", spec("a", run_on="any"),
     dead(A, refused_by="standby"), STANDBY, Hold("a", "the standby refused it")),
    ("refused and already waiting is still held", spec("a", run_on="any"),
     Observed("a", final_state="waiting", refused_by="standby"), STANDBY,
     Hold("a", "the standby refused it")),
    ("refused by an unknown role is held while the role is unknown", spec("a", run_on="any"),
     dead(A, refused_by="unknown"), UNKNOWN_ROLE, Hold("a", "the unknown refused it")),
    ("refused by another role starts", A,
     Observed("a", final_state="waiting", refused_by="standby"), UP,
     Start("a", A, "role fits and the database is up")),
    ("refused but paused: nothing", spec("a", run_on="any"), dead(A, refused_by="standby"),
     PAUSED, None),
    ("died in an outage restarts free of budget", A, dead(A, died_in_outage=True), UP,
     Restart("a", A, "exited (abnormal)", False)),
    ("died in an outage shows no restart in the grace", A, dead(A, died_in_outage=True),
     GRACE, None),
    # the restart budget
    ("budget spent parks", A, dead(A, restarts_left=0), UP,
     Park("a", "restart budget 1/m spent (exited (abnormal))", rate_limited=True)),
    ("budget spent names the instance's own rate", spec("a", restart_max_rate="3/h"),
     dead(A, restarts_left=0), UP,
     Park("a", "restart budget 3/h spent (exited (abnormal))", rate_limited=True)),
    ("budget left restarts", A, dead(A, restarts_left=1), UP,
     Restart("a", A, "exited (abnormal)", True)),
    ("budget spent does not matter unbudgeted", A, dead(A, restarts_left=0), NO_RATELIMIT,
     Restart("a", A, "exited (abnormal)", False)),
    ("budget spent but died in an outage restarts", A,
     dead(A, restarts_left=0, died_in_outage=True), UP,
     Restart("a", A, "exited (abnormal)", False)),
    ("unresponsive with budget spent parks", A,
     running(A, heartbeat_age=31.0, restarts_left=0), UP,
     Park("a", "restart budget 1/m spent (unresponsive: no heartbeat for 31.0 s)",
          rate_limited=True)),
    # the end of the grace
    ("grace ended: still not connected restarts unbudgeted", A,
     running(A, connected=False), GRACE_ENDED,
     Restart("a", A, "not back 35.0 s after the database revived", False)),
    ("grace ended: connected is left alone", A, running(A), GRACE_ENDED, None),
    ("grace ended: dead restarts unbudgeted", A, dead(A, restarts_left=0), GRACE_ENDED,
     Restart("a", A, "exited (abnormal)", False)),
    ("grace ended: parked not connected stays parked", A,
     running(A, connected=False, parked="x"), GRACE_ENDED, None),
    ("grace ended: wrong role not connected is stopped", A, running(A, connected=False),
     PlanState(role="standby", grace_ended=True), Stop("a", "run_on=primary on a standby",
                                                       "waiting")),
    ("grace ended while paused: nothing", A, running(A, connected=False),
     PlanState(paused=True, grace_ended=True), None),
]


@pytest.mark.parametrize("desired,obs,state,expected", [r[1:] for r in RULES],
                         ids=[r[0] for r in RULES])
def test_rule(desired, obs, state, expected):
    assert one(desired, obs, state) == expected


def test_standby_role_with_mixed_run_on():
    desired = {s.name: s for s in (spec("p"), spec("s", run_on="standby"),
                                   spec("x", run_on="any"), spec("q"))}
    observed = {"p": running(desired["p"]), "x": running(desired["x"]),
                "q": Observed("q", final_state="waiting")}
    assert plan(desired, observed, STANDBY) == [
        Stop("p", "run_on=primary on a standby", "waiting"),
        Start("s", desired["s"], "new instance"),
    ]
    after = {"p": Observed("p", final_state="waiting"), "s": running(desired["s"]),
             "x": running(desired["x"]), "q": observed["q"]}
    assert plan(desired, after, STANDBY) == [], "a second pass has nothing left to do"
    assert plan(desired, after, UP) == [
        Start("p", desired["p"], "role fits and the database is up"),
        Start("q", desired["q"], "role fits and the database is up"),
        Stop("s", "run_on=standby on a primary", "waiting"),
    ]


def test_outage_stops_only_what_the_operator_asked_for():
    desired = {"kept": spec("kept"), "off": spec("off", enabled=False), "new": spec("new")}
    observed = {"kept": dead(desired["kept"]), "off": running(spec("off")),
                "gone": running(spec("gone")), "old": dead(spec("old"))}
    assert plan(desired, observed, DB_DOWN) == [
        Stop("gone", "removed from the registry", "stopped", forget=True),
        Stop("off", "disabled", "disabled"),
        Forget("old"),
    ]


def test_grace_restarts_nothing_but_starts_new_instances():
    desired = {"dead": spec("dead"), "hung": spec("hung"), "new": spec("new")}
    observed = {"dead": dead(desired["dead"]),
                "hung": running(desired["hung"], heartbeat_age=500.0)}
    assert plan(desired, observed, GRACE) == [Start("new", desired["new"], "new instance")]
    assert [type(a) for a in plan(desired, observed, UP)] == [Restart, Restart, Start]


def test_actions_come_sorted_by_name_whatever_the_input_order():
    names = ["m", "b", "z", "a", "k"]
    desired = {n: spec(n) for n in names}
    observed = {n: dead(desired[n]) for n in reversed(names)}
    observed["gone"] = running(spec("gone"))
    actions = plan(desired, observed, UP)
    assert [a.name for a in actions] == sorted(names + ["gone"])
    assert plan(dict(reversed(list(desired.items()))), observed, UP) == actions


def test_plan_does_not_modify_its_inputs():
    desired = {"a": spec("a")}
    observed = {"a": dead(desired["a"])}
    before = (dict(desired), dict(observed))
    plan(desired, observed, UP)
    assert (desired, observed) == before


def test_role_fits_table():
    assert role_fits("any", None) is True
    assert role_fits("any", "standby") is True
    assert role_fits("primary", "primary") is True
    assert role_fits("primary", "standby") is False
    assert role_fits("standby", "standby") is True
    assert role_fits("standby", "primary") is False
    assert role_fits("primary", None) is None
    assert role_fits("standby", None) is None


def test_changed_fields_lists_differences_sorted():
    assert changed_fields(A, A) == ()
    assert changed_fields(None, A) == ()
    assert changed_fields(A, spec("a", channels=["z"], isolation="greenlet",
                                  handler="x.y:z")) == ("channels", "handler")


def test_waiting_is_derived_from_the_recorded_final_state():
    assert Observed("a", final_state="waiting").waiting
    assert not Observed("a", final_state="disabled").waiting
    assert not Observed("a").waiting


def test_ten_thousand_instances_plan_in_one_pass(capsys):
    specs = [spec("i%05d" % i, run_on=("primary", "standby", "any")[i % 3],
                  restart=("permanent", "transient", "temporary")[i % 3])
             for i in range(10000)]
    desired = {s.name: s for s in specs}
    observed = {}
    for i, s in enumerate(specs):
        kind = i % 5
        if kind == 0:
            observed[s.name] = running(s)
        elif kind == 1:
            observed[s.name] = dead(s)
        elif kind == 2:
            observed[s.name] = running(s, heartbeat_age=120.0)
        elif kind == 3:
            observed[s.name] = running(s.replace(channels=["other"]))
    started = time.perf_counter()
    actions = plan(desired, observed, UP)
    elapsed = time.perf_counter() - started
    assert [a.name for a in actions] == sorted(a.name for a in actions)
    assert len({a.name for a in actions}) == len(actions)
    assert {type(a) for a in actions} == {Start, Stop, Restart, Apply}
    with capsys.disabled():
        print("\nplan() over 10,000 instances: %.1f ms, %d actions"
              % (elapsed * 1000, len(actions)))


SOURCE = spec("a", channels=[], queue={"spool": "/in", "queue_out_dir": "/out"})


@pytest.mark.parametrize("state", [
    PlanState(db_up=False, role=None), UNKNOWN_ROLE, STANDBY, GRACE,
], ids=["db_down", "role_unknown", "standby", "grace"])
def test_spool_source_starts_and_restarts_whatever_the_database(state):
    assert not SOURCE.needs_database
    assert one(SOURCE, None, state) == Start("a", SOURCE, "new instance")
    assert one(SOURCE, dead(SOURCE), state) == Restart("a", SOURCE, "exited (abnormal)", True)
    assert one(SOURCE, running(SOURCE), state) is None


def test_spool_source_is_held_by_a_manual_pause_and_a_disable():
    assert one(SOURCE, None, PAUSED) is None
    assert one(SOURCE, dead(SOURCE), PlanState(db_up=False, paused=True)) is None
    off = SOURCE.replace(enabled=False)
    assert one(off, running(SOURCE), PlanState(db_up=False)) == Stop("a", "disabled",
                                                                      "disabled")


def test_database_instances_still_wait_while_a_spool_source_starts():
    state = PlanState(db_up=False, role=None)
    actions = plan({"a": A, "s": SOURCE.replace(name="s")}, {}, state)
    assert [type(a).__name__ + ":" + a.name for a in actions] == ["Start:s"]


def test_channels_to_or_from_none_recreate_other_channel_changes_apply():
    with_channels = SOURCE.replace(channels=["ch"])
    assert one(with_channels, running(SOURCE)) == Recreate("a", with_channels,
                                                           "changed: channels")
    assert one(SOURCE, running(with_channels)) == Recreate("a", SOURCE, "changed: channels")
    more = with_channels.replace(channels=["ch", "other"])
    assert one(more, running(with_channels)) == Apply("a", more, ("channels",))
    # while starts are held (database down), a listener cannot be added live either
    assert one(with_channels, running(SOURCE), PlanState(db_up=False, role=None)) is None


SHOWN = [
    # (id, desired spec, observed, db_up, state shown)
    ("connected", A, running(A), True, "running"),
    ("alive, connecting", A, running(A, connected=False), True, "starting"),
    ("alive, database down", A, running(A, connected=False), False, "waiting"),
    ("parked", A, dead(A, parked="x"), True, "disabled_by_supervisor"),
    ("parked wins over disabled", spec("a", enabled=False), dead(A, parked="x"), True,
     "disabled_by_supervisor"),
    ("disabled", spec("a", enabled=False), Observed("a", final_state="disabled"), True,
     "disabled"),
    ("waiting for its role", A, Observed("a", final_state="waiting"), True, "waiting"),
    ("died in an outage", A, dead(A, died_in_outage=True), True, "waiting"),
    ("died while the database is down", A, dead(A), False, "waiting"),
    ("died, database up", A, dead(A), True, "stopped"),
    ("shut down", A, Observed("a", final_state="stopped"), True, "stopped"),
    ("removed, still known", None, Observed("a"), True, "stopped"),
]


@pytest.mark.parametrize("desired,obs,db_up,expected", [r[1:] for r in SHOWN],
                         ids=[r[0] for r in SHOWN])
def test_shown_state(desired, obs, db_up, expected):
    assert shown_state(desired, obs, db_up) == expected
    assert expected in STATES


def test_outcomes_are_the_wire_strings():
    assert {"a": Outcome.RESTARTED} == {"a": "restarted"}
    assert Outcome.PARKED == "disabled_by_supervisor" and str(Outcome.STOPPED) == "stopped"
    assert Outcome.UPDATED.detail("channels") == "updated: channels"
    assert Outcome("waiting") is Outcome.WAITING
