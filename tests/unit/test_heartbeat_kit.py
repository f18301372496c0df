"""HubHeartbeat (the kit's proof that nothing blocks the hub): a greenlet holding the hub
counts in full, the time the kernel gave the CPU to other processes does not."""
import os
import time

import gevent
import pytest

from supervisor.testing import HubHeartbeat, wait_for
from supervisor.testing.heartbeat import RunQueueClock


@pytest.mark.timeout(10)
def test_a_greenlet_holding_the_hub_counts_in_full():
    beat = HubHeartbeat(0.005).start()
    gevent.sleep(0.02)

    def hog():
        until = time.thread_time() + 0.08
        while time.thread_time() < until:  # 80 ms of CPU work without a switch
            pass

    hogger = gevent.spawn(hog)
    hogger.join()
    gevent.sleep(0.02)
    beat.stop()
    # the worst gap says who held the hub, and that it was CPU work
    assert beat.worst.holder == repr(hogger) and beat.worst.held >= 0.08
    assert beat.worst.on_cpu >= 0.07 and "on a CPU" in str(beat.worst)
    # counted as a hold, over the 50 ms limit the fixture enforces (the kernel's run-queue
    # figure, subtracted under load, is not exact to the millisecond: 64-69 ms were seen)
    assert beat.max_stall > 0.05 and beat.max_wall_stall >= beat.max_stall


@pytest.mark.timeout(10)
def test_a_blocking_system_call_counts_too():
    beat = HubHeartbeat(0.005).start()
    gevent.sleep(0.02)
    _unpatched_sleep(0.08)  # sleeping in the kernel, not waiting for a CPU
    gevent.sleep(0.02)
    beat.stop()
    # counted as a hold, over the 50 ms limit the fixture enforces: not left out as a wait
    # for a CPU. Not to the millisecond: the gap starts up to one tick (5 ms) before the
    # sleep, and the host's steal time, left out too, comes in 10 ms steps (CI: 69.8 ms)
    assert beat.max_stall > 0.05, beat.worst


@pytest.mark.skipif(not os.path.exists("/proc/thread-self"), reason="Linux /proc only")
@pytest.mark.timeout(10)
def test_a_gap_names_the_blocking_call_and_the_hubs_python_stack():
    beat = HubHeartbeat(0.005).start()
    _ticked(beat)
    _unpatched_sleep(0.08)
    _ticked(beat)
    beat.stop()
    samples = beat.worst.samples
    assert samples, "no sample taken in an 80 ms gap: %s" % (beat.worst,)
    # the hub's thread was asleep in the kernel (state S, a system call number), and its
    # Python stack names this test's line
    assert any(" S (" in sample and "syscall=" in sample for sample in samples), samples
    assert any("test_a_gap_names_the_blocking_call" in sample for sample in samples), samples
    assert "sampled" in str(beat.worst)


@pytest.mark.skipif(not os.path.exists("/proc/thread-self"), reason="Linux /proc only")
@pytest.mark.timeout(10)
def test_a_gap_names_what_another_thread_runs():
    import gevent.monkey

    started = []
    go = gevent.monkey.get_original("_thread", "allocate_lock")()
    go.acquire()

    def spin():
        started.append(True)
        go.acquire()  # a real lock: the GIL stays free until the hub's thread sleeps
        until = time.thread_time() + 0.15
        while time.thread_time() < until:
            pass

    beat = HubHeartbeat(0.005).start()
    _ticked(beat)
    spinning = gevent.get_hub().threadpool.spawn(spin)
    wait_for(lambda: started, 5, message="the pool's thread never started")
    # Spinning from here only: had it spun while the hub waited for it to start, the hub
    # would have been late already (the GIL), and the sampler, busy with that earlier gap
    # (each of its system calls waits a switch interval for the GIL), could miss this one.
    _ticked(beat)
    go.release()
    _unpatched_sleep(0.1)  # the sampler contends for the GIL with the spinning thread alone
    spinning.get()
    _ticked(beat)
    beat.stop()
    assert any(" spin " in sample for sample in beat.worst.samples), beat.worst


def _ticked(beat):
    """Wait until the heartbeat ticked twice more (a gap is measured at the next tick)."""
    ticks = beat.ticks
    wait_for(lambda: beat.ticks > ticks + 1, 5, message="the heartbeat never ticked")


def _unpatched_sleep(seconds):
    import gevent.monkey

    gevent.monkey.get_original("time", "sleep")(seconds)


def test_the_run_queue_clock_reads_the_kernel_and_only_grows():
    clock = RunQueueClock()
    try:
        first = clock.seconds()
        until = time.perf_counter() + 0.02
        while time.perf_counter() < until:
            pass
        assert 0.0 <= first <= clock.seconds()
    finally:
        clock.close()
    assert clock.seconds() == 0.0  # closed: says nothing


def test_the_clock_reads_each_cpus_steal_time():
    clock = RunQueueClock()
    try:
        _cpu, _waited, stolen = clock.read()
        assert len(stolen) == os.cpu_count() and all(s >= 0.0 for s in stolen)
    finally:
        clock.close()
    assert clock.read() == (0.0, 0.0, ())


@pytest.mark.timeout(10)
def test_time_the_host_stole_from_the_cpu_is_left_out():
    """A gap whose every millisecond the host took (a fake clock says so) is no stall; the
    wall-clock figure keeps it."""

    class Stolen(RunQueueClock):
        def read(self):
            cpu, waited, _stolen = super().read()
            return cpu, waited, (0.0, time.perf_counter())  # the 2nd CPU: all stolen

    class Beat(HubHeartbeat):
        clock_class = Stolen

    beat = Beat(0.005).start()
    gevent.sleep(0.02)
    _unpatched_sleep(0.08)
    gevent.sleep(0.02)
    beat.stop()
    assert beat.max_wall_stall >= 0.07 and beat.max_stall < 0.01


def test_a_wait_between_the_clock_and_the_run_queue_reads_is_read_again():
    """Descheduled between the two reads, the wait would land in one gap's wall time and
    the next gap's run-queue time: the reads are repeated until nothing came between."""
    clock = iter([10.0, 10.060, 10.060, 10.0601]).__next__  # 60 ms away after the 1st read

    class RunQueue:
        readings = iter([(0.5, 1.0, ()), (0.5, 1.060, ())])

        def read(self):
            return next(self.readings)

    assert HubHeartbeat._read(RunQueue(), clock) == (10.0601, (0.5, 1.060, ()))

