"""The restart budget: moving windows per instance on a fake clock, overrides, reset, 0."""
import pytest

from instances.exceptions import InvalidConfigurationException
from supervisor.budget import RestartBudget


class FakeClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


def spend_all(budget, name, rate=None, limit=100):
    """How many restarts ``name`` gets in a row right now."""
    spent = 0
    while spent < limit and budget.try_spend(name, rate):
        spent += 1
    return spent


def test_one_per_minute_allows_one_then_refuses_until_the_minute_is_over(clock):
    budget = RestartBudget("1/m", clock=clock)
    assert budget.try_spend("river")
    assert not budget.try_spend("river")
    clock.advance(59.5)
    assert not budget.try_spend("river")
    clock.advance(0.5)
    assert budget.try_spend("river")
    assert not budget.try_spend("river")


def test_window_moves_rather_than_resetting_at_fixed_boundaries(clock):
    budget = RestartBudget("2/m", clock=clock)
    assert budget.try_spend("river")          # t=0
    clock.advance(40)
    assert budget.try_spend("river")          # t=40
    clock.advance(30)                         # t=70: the t=0 restart left the window
    assert budget.try_spend("river")
    assert not budget.try_spend("river")      # t=40 and t=70 are still inside
    clock.advance(10)                         # t=80: t=40 still inside (until 100)
    assert not budget.try_spend("river")
    clock.advance(20)                         # t=100: t=40 expires
    assert budget.try_spend("river")


def test_default_rate_is_one_per_minute(clock):
    budget = RestartBudget(clock=clock)
    assert budget.default_rate == "1/m"
    assert spend_all(budget, "river") == 1


def test_instances_have_separate_budgets(clock):
    budget = RestartBudget("1/m", clock=clock)
    assert budget.try_spend("a")
    assert not budget.try_spend("a")
    assert budget.try_spend("b")
    assert budget.remaining("a") == 0
    assert budget.remaining("c") == 1


def test_per_instance_override_rate(clock):
    budget = RestartBudget("1/m", clock=clock)
    assert spend_all(budget, "busy", "3/m") == 3
    assert spend_all(budget, "quiet") == 1
    clock.advance(60)
    assert spend_all(budget, "busy", "3/m") == 3


def test_changing_an_instances_rate_starts_a_fresh_window(clock):
    budget = RestartBudget("1/m", clock=clock)
    assert spend_all(budget, "river") == 1
    assert spend_all(budget, "river", "2/m") == 2
    assert budget.remaining("river") == 0


def test_remaining_counts_down_and_recovers(clock):
    budget = RestartBudget("3/h", clock=clock)
    assert budget.remaining("river") == 3
    budget.try_spend("river")
    budget.try_spend("river")
    assert budget.remaining("river") == 1
    clock.advance(3600)
    assert budget.remaining("river") == 3


def test_reset_gives_the_full_budget_back(clock):
    budget = RestartBudget("1/m", clock=clock)
    budget.try_spend("river")
    assert not budget.try_spend("river")
    budget.reset("river")
    assert budget.remaining("river") == 1
    assert budget.try_spend("river")


def test_reset_keeps_the_override_and_forget_drops_it(clock):
    budget = RestartBudget("1/m", clock=clock)
    assert spend_all(budget, "river", "2/m") == 2
    budget.reset("river")
    assert budget.remaining("river") == 2
    assert "river" in budget
    budget.forget("river")
    assert "river" not in budget
    assert budget.remaining("river") == 1
    budget.forget("never-seen")  # no error


def test_zero_count_means_no_automatic_restarts(clock):
    budget = RestartBudget("0/m", clock=clock)
    assert not budget.try_spend("river")
    assert budget.remaining("river") == 0
    clock.advance(3600)
    assert not budget.try_spend("river")
    other = RestartBudget("5/m", clock=clock)
    assert not other.try_spend("river", "0/h")


@pytest.mark.parametrize("rate,count,seconds", [
    ("1/m", 1, 60), ("10/s", 10, 1), ("2/h", 2, 3600), ("1/d", 1, 86400),
    ("1 per minute", 1, 60), ("10/second", 10, 1), ("3 per 5 minutes", 3, 300),
    ("2/10 seconds", 2, 10),
])
def test_cyme_and_limits_rate_forms(clock, rate, count, seconds):
    budget = RestartBudget(rate, clock=clock)
    assert spend_all(budget, "river") == count
    clock.advance(seconds - 0.5)
    assert not budget.try_spend("river")
    clock.advance(0.5)
    assert spend_all(budget, "river") == count


@pytest.mark.parametrize("rate", ["often", "1/fortnight", "", "x/m", "1/0 minutes", 5])
def test_invalid_override_names_the_field_and_value(clock, rate):
    budget = RestartBudget("1/m", clock=clock)
    with pytest.raises(InvalidConfigurationException) as caught:
        budget.try_spend("river", rate)
    assert caught.value.field == "restart_max_rate"
    assert caught.value.value == rate
    assert "restart_max_rate" in str(caught.value) and repr(rate) in str(caught.value)


def test_invalid_default_rate_fails_at_construction():
    with pytest.raises(InvalidConfigurationException) as caught:
        RestartBudget("lots")
    assert caught.value.field == "restart_max_rate"
    assert caught.value.value == "lots"


def test_real_clock_by_default():
    budget = RestartBudget("1/h")
    assert budget.try_spend("river")
    assert not budget.try_spend("river")
