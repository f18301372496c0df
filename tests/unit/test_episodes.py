"""What repeating failures look like in the log: one line per message, items cut, an
Episode's start / summaries / end, and a LogLimiter's burst with the count held back."""
import logging

import pytest

from instances.episodes import Episode, LogLimiter, duration, one_line, shorten
from instances.processors import ProcessorPool
from instances.queues import MemoryQueue
from supervisor.testing import wait_for

LIBPQ = ('connection to server at "127.0.0.1", port 1 failed: Connection refused\n'
         '\tIs the server running on that host and accepting TCP/IP connections?\n')


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_libpq_continuation_lines_are_folded_into_one_line():
    assert one_line(LIBPQ) == ('connection to server at "127.0.0.1", port 1 failed: '
                               'Connection refused Is the server running on that host and '
                               'accepting TCP/IP connections?')


def test_a_long_item_is_cut_and_says_how_much_was_cut():
    assert shorten("x" * 10, 20) == "x" * 10
    assert shorten("x" * 250, 200) == "x" * 200 + "... (50 more characters)"
    assert "\n" not in shorten("a\nb" * 300)


def test_durations_read_like_people_write_them():
    assert [duration(s) for s in (0.25, 12, 312, 7380)] == ["250ms", "12s", "5m12s", "2h03m"]


def test_an_episode_starts_once_summarizes_by_the_clock_and_ends():
    clock = Clock()
    episode = Episode(300.0, clock=clock)
    steps = []
    for _ in range(700):  # one failure a second
        steps.append(episode.failed("refused"))
        clock.now += 1.0
    assert steps[0] == "started"
    assert [i for i, step in enumerate(steps) if step == "summary"] == [300, 600]
    assert episode.describe() == "for 11m40s, 700 attempts, last error: refused"
    assert episode.snapshot() == (700.0, 700)
    assert episode.ended() is True and not episode.open and episode.ended() is False
    assert episode.failed("again") == "started"


def test_a_log_limiter_lets_a_burst_through_then_counts_until_the_next_window():
    clock = Clock()
    limiter = LogLimiter(burst=3, window=60.0, clock=clock)
    answers = [limiter.allow("river") for _ in range(10)]
    assert answers == [(True, 0)] * 3 + [(False, 0)] * 7
    assert limiter.allow("other") == (True, 0)  # keys are apart
    clock.now += 60.0
    assert limiter.allow("river") == (True, 7)  # the next line says what was held back
    assert limiter.allow("river") == (True, 0)


@pytest.mark.timeout(10)
def test_a_poison_backlog_logs_a_few_lines_with_the_count_held_back(caplog):
    """Handler failures are rate-limited per pool with counts; items are truncated."""
    caplog.set_level(logging.ERROR, logger="instances.processors")
    queue = MemoryQueue(1000)
    for i in range(200):
        queue.put("poison-%d-%s" % (i, "x" * 500))

    def handler(item):
        raise ValueError("bad row")

    pool = ProcessorPool(queue, handler, 1, 1, None, name="poison")
    pool.retries = 0  # 200 failures at full speed: this test counts their log lines
    pool.start()
    try:
        wait_for(lambda: pool.failed == 200, 5)
    finally:
        pool.stop(5)
    lines = [r for r in caplog.records if r.action == "handler.error"]
    assert len(lines) == LogLimiter.burst  # 200 failures, a minute's burst of lines
    assert all(len(r.getMessage()) < 400 and "more characters" in r.getMessage()
               for r in lines)
    assert all(r.exc_info for r in lines)  # the traceback is still there
