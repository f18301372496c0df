"""Component: the hermes lifecycle on a greenlet, retries with backoff, stop, kill, links."""
import logging
import time

import gevent
import gevent.event
import gevent.queue
import pytest

from instances.backoff import Backoff
from instances.components import Component, ComponentKilled
from instances.exceptions import ConnectionLost, InvalidConfigurationException
from instances.strategies import (
    BACKOFF,
    CONTINUE,
    TERMINATE,
    AbstractErrorStrategy,
    CommonErrorStrategy,
    Handling,
)
from supervisor.testing import wait_for


class FakeStrategy:
    """A working error strategy with the one documented method: answers a Handling of one
    fixed action name and remembers what it saw."""

    def __init__(self, answer="retry"):
        self.answer = answer
        self.seen = []

    def handle_exception(self, error):
        self.seen.append(error)
        return Handling(True, BACKOFF, self.answer, "fake: %s" % error)


class RecordingBackoff(Backoff):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.delays = []

    def next(self):
        delay = super().next()
        self.delays.append(delay)
        return delay


class Recorder(Component):
    """Records every hook call; behaviour per hook is injected as callables."""

    def __init__(self, strategy=None, backoff=None, **hooks):
        super().__init__("rec", strategy or FakeStrategy(),
                         backoff or RecordingBackoff(initial=0.001, jitter=0))
        self.events = []
        self.hooks = hooks

    def _hook(self, name, *args):
        self.events.append(name)
        hook = self.hooks.get(name)
        return hook(self, *args) if hook else None

    def set_up(self):
        return self._hook("set_up")

    def pre_execute(self):
        return self._hook("pre_execute")

    def execute(self, value):
        return self._hook("execute", value)

    def post_execute(self, value):
        return self._hook("post_execute", value)

    def tear_down(self):
        return self._hook("tear_down")


def stop_after(n):
    """A post_execute hook that asks its own component to stop after n iterations."""
    def hook(component, _value):
        if component.events.count("post_execute") >= n:
            assert component.stop() is True  # from inside: only asks
    return hook


@pytest.mark.timeout(10)
def test_hooks_run_in_lifecycle_order_and_the_end_is_normal():
    ended = gevent.event.Event()
    comp = Recorder(post_execute=stop_after(2))
    comp.link(lambda c: ended.set())
    comp.start()
    assert ended.wait(5)
    assert comp.events == ["set_up", "pre_execute", "execute", "post_execute",
                           "pre_execute", "execute", "post_execute", "tear_down"]
    assert (comp.exit, comp.exception) == ("normal", None)
    assert not comp.is_alive()


@pytest.mark.timeout(10)
def test_values_flow_from_pre_execute_through_execute_to_post_execute():
    seen = []
    comp = Recorder(pre_execute=lambda c: 21, execute=lambda c, v: v * 2,
                    post_execute=lambda c, v: (seen.append(v), c.stop()))
    comp.start()
    assert comp.join(5)
    assert seen == [42]


@pytest.mark.timeout(10)
def test_retry_tears_down_backs_off_sets_up_again_and_resets_after_success():
    failures = iter([ValueError("one"), ValueError("two")])

    def set_up(component):
        error = next(failures, None)
        if error:
            raise error

    comp = Recorder(strategy=FakeStrategy("retry"), set_up=set_up,
                    post_execute=stop_after(1))
    comp.start()
    assert comp.join(5)
    assert comp.events == ["set_up", "tear_down", "set_up", "tear_down", "set_up",
                           "pre_execute", "execute", "post_execute", "tear_down"]
    assert comp.backoff.delays == [0.001, 0.002]
    assert comp.backoff.attempts == 0  # reset after the successful iteration
    assert [str(e) for e in comp.error_strategy.seen] == ["one", "two"]
    assert comp.exit == "normal"


@pytest.mark.timeout(10)
def test_backoff_restarts_from_initial_after_a_success_between_failures():
    script = iter(["fail", "ok", "fail", "ok"])

    def execute(component, _value):
        if next(script) == "fail":
            raise ConnectionError("lost")

    comp = Recorder(strategy=FakeStrategy("reconnect"), execute=execute,
                    post_execute=stop_after(2))
    comp.start()
    assert comp.join(5)
    assert comp.backoff.delays == [0.001, 0.001]  # hermes would have waited 0.001, 0.002


@pytest.mark.parametrize("answer", ["fatal", "die", "role_changed", "nonsense"])
@pytest.mark.timeout(10)
def test_ending_actions_stop_the_component_abnormally_with_the_error(answer):
    error = RuntimeError("boom")

    def execute(component, _value):
        raise error

    comp = Recorder(strategy=FakeStrategy(answer), execute=execute)
    comp.start()
    assert comp.join(5)
    assert comp.exit == "abnormal"
    assert comp.exception is error
    assert comp.events[-1] == "tear_down"
    assert comp.events.count("set_up") == 1


@pytest.mark.timeout(10)
def test_a_failing_strategy_counts_as_die(caplog):
    class Broken(FakeStrategy):
        def handle_exception(self, error):
            raise KeyError("strategy bug")

    comp = Recorder(strategy=Broken(), execute=lambda c, v: 1 / 0)
    comp.start()
    assert comp.join(5)
    assert comp.exit == "abnormal"
    assert isinstance(comp.exception, ZeroDivisionError)
    assert any(r.action == "component.strategy_error" for r in caplog.records)


@pytest.mark.timeout(10)
def test_stop_lets_the_current_execute_and_post_execute_finish():
    in_execute = gevent.event.Event()
    release = gevent.event.Event()

    def execute(component, _value):
        in_execute.set()
        release.wait()
        return "item"

    comp = Recorder(execute=execute).start()
    assert in_execute.wait(5)
    stopper = gevent.spawn(comp.stop, 5)
    wait_for(lambda: not comp.should_run, 5)
    gevent.sleep(0)  # let the hub run any pending interrupt
    assert comp.is_alive()
    release.set()
    assert stopper.get(timeout=5) is True
    assert comp.events[-3:] == ["execute", "post_execute", "tear_down"]
    assert comp.exit == "normal"


class QueueReader(Component):
    """A component blocking in pre_execute on a queue, the way a processor would."""

    def __init__(self, queue, mark_interruptible=True):
        super().__init__("reader", FakeStrategy(), Backoff(initial=0.001))
        self.queue = queue
        self.mark = mark_interruptible
        self.got = []
        self.torn_down = False

    def pre_execute(self):
        if self.mark:
            with self.interruptible():
                return self.queue.get()
        return self.queue.get()

    def execute(self, item):
        self.got.append(item)

    def tear_down(self):
        self.torn_down = True


@pytest.mark.timeout(10)
def test_stop_interrupts_a_pre_execute_blocked_in_an_interruptible_wait():
    queue = gevent.queue.Queue()
    comp = QueueReader(queue).start()
    queue.put("a")
    wait_for(lambda: comp.got == ["a"], 5)
    assert comp.stop(timeout=5) is True
    assert comp.exit == "normal" and comp.torn_down
    queue.put("b")
    gevent.sleep(0)
    assert comp.got == ["a"] and queue.qsize() == 1  # nothing taken after the stop


@pytest.mark.timeout(10)
def test_interruptible_pre_execute_attribute_marks_the_whole_hook():
    class Whole(QueueReader):
        interruptible_pre_execute = True

    comp = Whole(gevent.queue.Queue(), mark_interruptible=False).start()
    gevent.sleep(0)
    assert comp.stop(timeout=5) is True
    assert comp.exit == "normal"


@pytest.mark.timeout(10)
def test_stop_kills_a_component_stuck_outside_an_interruptible_wait():
    comp = QueueReader(gevent.queue.Queue(), mark_interruptible=False).start()
    gevent.sleep(0)
    assert comp.stop(timeout=0.05) is False
    assert comp.exit == "abnormal"
    assert isinstance(comp.exception, ComponentKilled)
    assert comp.torn_down


@pytest.mark.timeout(10)
def test_stop_interrupts_the_backoff_sleep():
    comp = Recorder(strategy=FakeStrategy("reconnect"), backoff=Backoff(initial=60, max_delay=60),
                    set_up=lambda c: 1 / 0)
    comp.start()
    wait_for(lambda: comp.backoff.attempts == 1, 5)
    started = gevent.get_hub().loop.now()
    assert comp.stop(timeout=5) is True
    assert gevent.get_hub().loop.now() - started < 1.0
    assert comp.exit == "normal"


@pytest.mark.timeout(10)
def test_retry_now_ends_the_backoff_wait_of_a_failing_component_only():
    attempts = []
    comp = Recorder(strategy=FakeStrategy("reconnect"), backoff=Backoff(initial=60, max_delay=60),
                    set_up=lambda c: attempts.append(1) or 1 / 0)
    assert comp.retry_now() is False  # not started: nothing to cut short
    comp.start()
    try:
        wait_for(lambda: comp.backoff.attempts == 1, 5)
        assert len(attempts) == 1  # waiting out a 60 s backoff
        assert comp.retry_now() is True
        wait_for(lambda: len(attempts) == 2, 5, message="retried at once, not after 60 s")
        wait_for(lambda: comp.backoff.attempts == 2, 5)
        gevent.sleep(0.05)
        assert len(attempts) == 2  # one wake, one attempt: the next wait is a full one
    finally:
        comp.stop(5)


@pytest.mark.timeout(10)
def test_retry_now_leaves_a_healthy_component_alone():
    comp = QueueReader(gevent.queue.Queue()).start()
    try:
        gevent.sleep(0)
        assert comp.retry_now() is False and not comp._retry_now.is_set()
    finally:
        comp.stop(5)


@pytest.mark.timeout(10)
def test_kill_ends_abnormally_runs_tear_down_and_tells_links():
    told = []
    comp = QueueReader(gevent.queue.Queue()).start()
    comp.link(told.append)
    gevent.sleep(0)
    comp.kill(timeout=5)
    assert comp.exit == "abnormal"
    assert isinstance(comp.exception, ComponentKilled)
    assert comp.torn_down
    wait_for(lambda: told == [comp], 5)


@pytest.mark.timeout(10)
def test_kill_before_the_greenlet_ran_is_abnormal_too():
    told = gevent.event.Event()
    comp = Recorder()
    comp.link(lambda c: told.set())
    comp.start()
    comp.kill(block=False)
    assert told.wait(5)
    assert comp.exit == "abnormal" and comp.events == []


@pytest.mark.timeout(10)
def test_a_stopped_component_can_be_started_again():
    queue = gevent.queue.Queue()
    comp = QueueReader(queue)
    comp.start()
    assert comp.start() is comp  # idempotent while alive
    first = comp.ident
    assert comp.stop(5) is True
    comp.start()
    assert comp.is_alive() and comp.exit is None and comp.ident != first
    queue.put("again")
    wait_for(lambda: comp.got == ["again"], 5)
    assert comp.stop(5) is True


@pytest.mark.timeout(10)
def test_link_callbacks_run_after_every_end_and_a_raising_one_is_logged(caplog):
    told = []

    def broken(component):
        raise RuntimeError("callback bug")

    comp = QueueReader(gevent.queue.Queue())
    comp.link(broken)
    comp.link(lambda c: told.append(c.exit))
    for round_ in range(1, 3):
        comp.start()
        gevent.sleep(0)
        comp.stop(5)
        wait_for(lambda n=round_: len(told) == n, 5)
    wait_for(lambda: told == ["normal", "normal"], 5)
    errors = [r for r in caplog.records if getattr(r, "action", "") == "component.link_error"]
    assert len(errors) == 2 and errors[0].levelno == logging.ERROR


@pytest.mark.timeout(10)
def test_link_after_the_end_is_still_called():
    comp = Recorder(post_execute=stop_after(1)).start()
    assert comp.join(5)
    told = gevent.event.Event()
    comp.link(lambda c: told.set())
    assert told.wait(5)


@pytest.mark.timeout(10)
def test_heartbeat_advances_with_iterations_and_beat():
    gate = gevent.queue.Queue()
    comp = QueueReader(gate)
    assert comp.heartbeat is None and comp.heartbeat_age() is None
    comp.start()
    first = comp.heartbeat
    wait_for(lambda: time.monotonic() > first, 1)
    gate.put(1)
    wait_for(lambda: comp.heartbeat > first, 5)
    before = comp.heartbeat
    wait_for(lambda: time.monotonic() > before, 1)
    comp.beat()
    assert comp.heartbeat > before
    assert 0 <= comp.heartbeat_age() < 1
    comp.stop(5)


@pytest.mark.timeout(10)
def test_a_failing_tear_down_is_logged_and_the_end_stays_normal(caplog):
    def tear_down(component):
        raise OSError("close failed")

    comp = Recorder(post_execute=stop_after(1), tear_down=tear_down).start()
    assert comp.join(5)
    assert comp.exit == "normal"
    assert any(getattr(r, "action", "") == "component.tear_down_error" for r in caplog.records)


def test_stop_and_join_before_start_are_harmless():
    comp = Recorder()
    assert comp.ident is None and not comp.is_alive()
    assert comp.stop(1) is True
    assert comp.join(0) is True


@pytest.mark.timeout(10)
def test_common_strategy_retries_a_lost_connection_and_dies_on_a_bug(caplog):
    errors = iter([ConnectionLost("server closed the connection"), ValueError("bug")])

    def execute(component, _value):
        raise next(errors)

    comp = Recorder(strategy=CommonErrorStrategy(), execute=execute).start()
    assert comp.join(5)
    assert comp.events.count("set_up") == 2  # reconnected once
    assert comp.exit == "abnormal" and isinstance(comp.exception, ValueError)
    actions = [getattr(r, "action", "") for r in caplog.records]
    assert "component.reconnect" in actions and "component.die" in actions
    reconnect = next(r for r in caplog.records if r.action == "component.reconnect")
    assert "server closed the connection" in reconnect.getMessage()


def test_a_component_without_a_strategy_gets_the_common_one():
    assert isinstance(Component().error_strategy, CommonErrorStrategy)


class HermesStrategy(AbstractErrorStrategy):
    """A strategy exactly as hermes documents it: handle_exception and nothing else,
    answering (expected, action) with hermes' constants."""

    def __init__(self, answers):
        self.answers = list(answers)

    def handle_exception(self, error):
        return self.answers.pop(0)


class Flaky(Component):
    """Fails in execute with the errors given, then stops itself."""

    def __init__(self, errors, **kwargs):
        super().__init__(**kwargs)
        self.errors = list(errors)
        self.runs = 0

    def execute(self, pre_exec_value):
        self.runs += 1
        if self.errors:
            raise self.errors.pop(0)
        self.stop()


@pytest.mark.timeout(10)
def test_a_strategy_with_only_handle_exception_is_enough():
    # Issue 10: defining only the documented method ended every component on its first
    # error with AttributeError: ... 'action'.
    comp = Flaky([ConnectionLost("gone"), ConnectionLost("gone again")],
                 error_strategy=HermesStrategy([(True, BACKOFF), (True, CONTINUE)]),
                 backoff=RecordingBackoff(initial=0.001, jitter=0)).start()
    assert comp.join(5)
    assert comp.exit == "normal" and comp.runs == 3
    assert comp.backoff.delays == [0.001, 0.002]  # CONTINUE retried after a failed retry
    assert not comp.error_strategy.answers


@pytest.mark.timeout(10)
def test_a_first_continue_retries_at_once(caplog):
    caplog.set_level(logging.WARNING)
    comp = Flaky([ValueError("once")], error_strategy=HermesStrategy([(True, CONTINUE)]),
                 backoff=Backoff(initial=60, max_delay=60)).start()
    assert comp.join(5)
    assert comp.exit == "normal" and comp.runs == 2
    assert "continue in 0.00s" in caplog.text


@pytest.mark.parametrize("answer, action, level", [
    ((True, TERMINATE), "terminate", logging.WARNING),
    ((False, TERMINATE), "die", logging.ERROR),
    ((False, "my own words"), "die", logging.ERROR),
])
@pytest.mark.timeout(10)
def test_ending_answers_of_a_one_method_strategy(caplog, answer, action, level):
    comp = Flaky([RuntimeError("boom")], error_strategy=HermesStrategy([answer])).start()
    assert comp.join(5)
    assert comp.exit == "abnormal" and isinstance(comp.exception, RuntimeError)
    record = next(r for r in caplog.records if r.action == "component." + action)
    assert record.levelno == level


@pytest.mark.timeout(10)
def test_expected_with_a_message_retries_and_logs_the_message(caplog):
    comp = Flaky([RuntimeError("boom")], error_strategy=HermesStrategy([(True, "it happens")]),
                 backoff=Backoff(initial=0.001, jitter=0)).start()
    assert comp.join(5)
    assert comp.exit == "normal" and comp.runs == 2
    assert "it happens; retry" in caplog.text


def test_an_abstract_strategy_without_an_override_counts_as_die(caplog):
    comp = Flaky([RuntimeError("boom")], error_strategy=AbstractErrorStrategy()).start()
    assert comp.join(5)
    assert comp.exit == "abnormal"
    assert any(r.action == "component.strategy_error" for r in caplog.records)


# -- hermes' constructor form --------------------------------------------------------------

class HermesProcessor(Component):
    """hermes' docs (4.2): execute(pre_exec_value) gets what pre_execute returned; the
    default pre_execute takes it from the notification pipe."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.got = []

    def execute(self, pre_exec_value):
        self.got.append(pre_exec_value)


@pytest.mark.parametrize("call", ["positional", "keyword", "positional_with_limit"])
@pytest.mark.timeout(10)
def test_hermes_form_reads_the_pipe_and_reports_the_end_to_the_error_queue(call):
    pipe, errors, strategy = gevent.queue.Queue(), gevent.queue.Queue(), CommonErrorStrategy()
    comp = {
        "positional": lambda: HermesProcessor(pipe, strategy, errors),
        "keyword": lambda: HermesProcessor(notification_pipe=pipe, error_strategy=strategy,
                                           error_queue=errors, backoff_limit=4),
        "positional_with_limit": lambda: HermesProcessor(pipe, strategy, errors, 4),
    }[call]()
    assert comp.name == "HermesProcessor"
    assert (comp.notification_pipe, comp.error_queue) == (pipe, errors)
    assert comp.backoff.max_delay == (16.0 if call == "positional" else 4.0)
    comp.start()
    pipe.put("one")
    pipe.put("two")
    wait_for(lambda: comp.got == ["one", "two"], 5)
    comp.execute = lambda value: 1 / 0
    pipe.put("three")
    assert comp.join(5)
    report = errors.get(timeout=5)
    expected, message = report  # what hermes' Client read, with the message named
    assert expected is False and "ZeroDivisionError" in message
    assert report.action == TERMINATE and report.name == "die"


@pytest.mark.timeout(10)
def test_hermes_form_stops_while_waiting_on_its_pipe():
    comp = HermesProcessor(gevent.queue.Queue(), None, None).start()
    wait_for(lambda: comp._interruptible, 5)
    assert comp.stop(1) is True and comp.exit == "normal"


def test_pgvisor_form_is_unchanged_and_keyword_forms_do_not_mix():
    comp = HermesProcessor("named", None, Backoff(max_delay=3))
    assert (comp.name, comp.backoff.max_delay, comp.notification_pipe) == ("named", 3.0, None)
    with pytest.raises(TypeError, match="name"):
        HermesProcessor(name="x", error_queue=gevent.queue.Queue())
    with pytest.raises(TypeError, match="hermes' form"):
        HermesProcessor(gevent.queue.Queue(), None, None, 16, "extra")


@pytest.mark.parametrize("limit", [0, -1, "16", float("inf"), True])
def test_a_bad_backoff_limit_is_refused_naming_it(limit):
    with pytest.raises(InvalidConfigurationException, match="backoff_limit=") as info:
        HermesProcessor(gevent.queue.Queue(), None, None, limit)
    assert info.value.field == "backoff_limit"


def test_a_sub_second_backoff_limit_starts_there():
    comp = HermesProcessor(gevent.queue.Queue(), None, None, 0.25)
    assert (comp.backoff.initial, comp.backoff.max_delay) == (0.25, 0.25)


def test_a_pipe_that_is_not_a_queue_is_refused():
    with pytest.raises(InvalidConfigurationException, match="notification_pipe="):
        HermesProcessor(notification_pipe=3, error_strategy=None, error_queue=None)


class Processor(Component):
    """hermes' usage example, as its docs write it (the body records instead of "...")."""

    runs = 0

    def __init__(self,):
        super(Processor, self).__init__()

    def execute(self):
        Processor.runs += 1


@pytest.mark.timeout(10)
def test_the_hermes_usage_example_constructs_and_its_execute_takes_no_value():
    processor = Processor()
    assert processor.name == "Processor" and processor.notification_pipe is None
    assert isinstance(processor.error_strategy, CommonErrorStrategy)
    processor.notification_pipe = pipe = gevent.queue.Queue()  # what Client.start() does
    processor.start()
    pipe.put("event")
    pipe.put("event")
    wait_for(lambda: Processor.runs == 2, 5)
    assert processor.stop(1)


# -- heartbeat while backing off, and the log of a failure that goes on (issue 16) ------
@pytest.mark.timeout(10)
def test_a_component_beats_while_it_waits_for_its_backoff():
    """A 32 s backoff +/-10 % outlasts a 30 s heartbeat_timeout: waiting to reconnect must
    not look like a hang, so the wait beats every ``backoff_beat``."""
    comp = Recorder(strategy=FakeStrategy("reconnect"),
                    backoff=Backoff(initial=0.6, max_delay=0.6, jitter=0),
                    set_up=lambda c: 1 / 0)
    comp.backoff_beat = 0.05
    comp.start()
    try:
        wait_for(lambda: comp.backoff.attempts == 1, 5)
        ages = []
        for _ in range(8):  # 0.4 s of a 0.6 s wait
            gevent.sleep(0.05)
            ages.append(comp.heartbeat_age())
        assert comp.backoff.attempts == 1  # still the same wait
        assert max(ages) < 0.3, ages  # without beats it would reach 0.4
    finally:
        comp.stop(5)


def test_heartbeat_timeout_must_exceed_the_longest_silence_of_a_healthy_component(tmp_path):
    from instances.components import check_heartbeat_timeout
    from instances.exceptions import InvalidConfigurationException
    from instances.listeners import PostgresNotificationListener

    assert PostgresNotificationListener.longest_silence() == 7.0  # ping 2 s + its 5 s
    check_heartbeat_timeout(30.0, (PostgresNotificationListener,))  # the default is fine
    with pytest.raises(InvalidConfigurationException) as caught:
        check_heartbeat_timeout(5.0, (PostgresNotificationListener,))
    assert caught.value.field == "heartbeat_timeout" and caught.value.value == 5.0
    assert "7.0 s" in str(caught.value)
    from instances import Registry
    from supervisor import Supervisor

    with pytest.raises(InvalidConfigurationException, match="heartbeat_timeout 5.0 s"):
        Supervisor(Registry(tmp_path / "r.json"), "dbname=x", heartbeat_timeout=5.0, set_as_current=False)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


@pytest.mark.timeout(10)
def test_a_failure_that_goes_on_is_one_warning_then_summaries_then_its_end(caplog):
    from instances.episodes import Episode

    caplog.set_level(logging.DEBUG, logger="instances.components")
    clock = Clock()
    outcomes = iter([ConnectionLost("refused\n\tIs the server running?")] * 30 + [None] * 5)

    def set_up(component):
        clock.now += 20.0  # each attempt 20 s later: 30 attempts = 10 minutes
        outcome = next(outcomes)
        if outcome is not None:
            raise outcome

    comp = Recorder(strategy=CommonErrorStrategy(), set_up=set_up,
                    backoff=Backoff(initial=0.001, max_delay=0.002, jitter=0),
                    post_execute=stop_after(1))
    comp.failing = Episode(300.0, clock=clock)
    comp.start().join(10)
    told = [(r.levelname, r.action) for r in caplog.records if r.levelno >= logging.INFO]
    assert told == [("WARNING", "component.reconnect"), ("WARNING", "component.still_failing"),
                    ("INFO", "component.recovered")]  # 30 attempts, one line per 5 min
    assert all("\n" not in r.getMessage() for r in caplog.records)
    recovered = [r.getMessage() for r in caplog.records if r.action == "component.recovered"]
    assert recovered == ["rec recovered after 10m00s and 30 failed attempts"]
