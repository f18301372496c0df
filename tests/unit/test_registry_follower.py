"""The registry follower's retries: a registry not read yet is tried again within seconds,
not only after the supervisor's whole interval (a leader without one assigns nothing)."""
import gevent
import gevent.queue
import pytest

from instances.registry.desired import RegistryUnavailable
from instances.registry.follower import RegistryFollower
from supervisor.testing import holds, wait_for

pytestmark = pytest.mark.timeout(20)


class _Registry:
    """A table registry that is unavailable for its first ``failures`` reloads."""

    dsn, channel, location = "dbname=x", "pgvisor_registry", "table pgvisor.registry"

    def __init__(self, failures):
        self.failures, self.loaded, self.reloads = failures, False, 0

    def reload(self):
        self.reloads += 1
        if self.reloads <= self.failures:
            raise RegistryUnavailable("the table is not there yet")
        self.loaded = True
        return True

    def __len__(self):
        return 0


class _Subscription:
    connected = True

    def is_alive(self):
        return True

    def start(self):
        pass

    def stop(self):
        pass




@pytest.mark.parametrize("failures", [0, 2])
def test_an_unread_registry_is_read_again_within_seconds_then_every_interval(failures):
    registry = _Registry(failures)
    follower = RegistryFollower.__new__(RegistryFollower)
    follower.registry, follower.interval, follower.retry_first = registry, 3600.0, 0.05
    follower.queue, follower.subscription = gevent.queue.Queue(), _Subscription()
    follower.reloads = follower.changes = 0
    follower.last_error = follower._told = None
    glet = gevent.spawn(follower._run)
    try:
        wait_for(lambda: registry.loaded, 5, message="the registry was not read again")
        assert registry.reloads == failures + 1 and follower.last_error is None
        assert holds(lambda: registry.reloads == failures + 1, 0.3, 0.01,
                     "read: the next look is an interval away")
    finally:
        glet.kill()


def test_a_registry_without_notifications_is_read_every_unfollowed_poll():
    """A standby refuses LISTEN: rows replicated after the first read must not wait an
    interval (a leader on a standby planned nothing for a whole interval)."""
    registry = _Registry(0)
    follower = RegistryFollower.__new__(RegistryFollower)
    follower.registry, follower.interval = registry, 3600.0
    follower.retry_first, follower.unfollowed_poll = 0.05, 0.05
    follower.queue, follower.subscription = gevent.queue.Queue(), _Subscription()
    follower.subscription.connected = False
    follower.reloads = follower.changes = 0
    follower.last_error = follower._told = None
    glet = gevent.spawn(follower._run)
    try:
        wait_for(lambda: registry.reloads >= 3, 5, message="not read again while unfollowed")
    finally:
        glet.kill()
