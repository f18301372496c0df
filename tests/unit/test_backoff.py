"""Backoff: the delay sequence, its cap, jitter bounds, reset after success."""
import pytest

from instances.backoff import Backoff
from instances.exceptions import InvalidConfigurationException


def test_delays_double_from_initial_until_the_cap():
    backoff = Backoff(jitter=0)
    assert [backoff.next() for _ in range(8)] == [1, 2, 4, 8, 16, 32, 32, 32]
    assert backoff.attempts == 8


def test_custom_initial_factor_and_cap():
    backoff = Backoff(initial=0.5, factor=3, max_delay=10, jitter=0)
    assert [backoff.next() for _ in range(5)] == [0.5, 1.5, 4.5, 10, 10]


def test_reset_starts_again_from_initial():
    backoff = Backoff(jitter=0)
    for _ in range(4):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 1.0


def test_jitter_stays_within_the_fraction_at_both_extremes():
    low = Backoff(jitter=0.1, rng=lambda: 0.0)
    high = Backoff(jitter=0.1, rng=lambda: 0.999999)
    assert low.next() == pytest.approx(0.9)
    assert high.next() == pytest.approx(1.1, rel=1e-5)
    for _ in range(10):
        low.next()
    assert low.next() == pytest.approx(32 * 0.9)


def test_jitter_is_deterministic_with_an_injected_rng():
    values = iter([0.25, 0.75, 0.5])
    backoff = Backoff(jitter=0.2, rng=lambda: next(values))
    assert [backoff.next() for _ in range(3)] == pytest.approx([0.9, 2.2, 4.0])


def test_many_failures_do_not_overflow():
    backoff = Backoff(jitter=0)
    for _ in range(5000):
        delay = backoff.next()
    assert delay == 32.0


def test_defaults_are_the_documented_ones():
    backoff = Backoff()
    assert (backoff.initial, backoff.factor, backoff.max_delay, backoff.jitter) == (
        1.0, 2.0, 32.0, 0.1)
    assert 0.9 <= backoff.next() <= 1.1


@pytest.mark.parametrize("field,value", [
    ("initial", -1), ("factor", 0.5), ("max_delay", 0.1), ("jitter", 1.0), ("jitter", -0.1)])
def test_invalid_settings_name_the_field(field, value):
    with pytest.raises(InvalidConfigurationException) as info:
        Backoff(**{field: value})
    assert info.value.field == field
    assert info.value.value == value
