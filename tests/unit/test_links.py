"""Links: every callback hears of the end; a failing one is logged, never raised."""
import logging

import gevent.event
import pytest

from instances.links import Links


class Part:
    name = "part"


@pytest.mark.timeout(5)
def test_a_failing_callback_is_logged_and_the_others_still_run(caplog):
    links, heard = Links("pool"), []

    def broken(part):
        raise RuntimeError("boom")

    links.add(broken)
    links.add(heard.append)
    with caplog.at_level(logging.ERROR):
        links.notify(Part())
    assert len(heard) == 1
    record = caplog.records[-1]
    assert record.action == "pool.link_error" and record.instance == "part"
    assert "boom" in record.exc_text


@pytest.mark.timeout(5)
def test_notify_soon_runs_in_the_hub_later_and_removed_callbacks_are_not_called():
    links, done = Links("component"), gevent.event.Event()
    removed = []
    links.add(removed.append)
    links.remove(removed.append)
    links.remove(removed.append)  # twice: harmless
    links.add(lambda part: done.set())
    links.notify_soon(Part())
    assert not done.is_set()
    assert done.wait(2)
    assert removed == []
