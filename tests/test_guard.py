"""The guard against disturbed timings: a CPU-bound process on our core is seen; sleep is not."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time

import pytest

from mlpbench.guard import WAIT_LIMIT_THREADS, CpuWaitProbe, judge, unavailable_reason

needs_schedstat = pytest.mark.skipif(unavailable_reason() is not None,
                                     reason="no /proc/<pid>/task/<tid>/schedstat here")


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@needs_schedstat
def test_a_cpu_bound_process_on_our_core_is_seen_as_waiting():
    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        time.sleep(0.1)  # let the hog start spinning
        with CpuWaitProbe() as probe:
            _spin(0.6)
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()  # by its PID
        hog.wait()
    # two runnable threads on one core: ours waits about half the time
    assert probe.result.wait_threads > 0.25
    assert judge(probe.result.wait_threads) is not None


@needs_schedstat
def test_a_sleeping_thread_does_not_wait_for_a_cpu():
    with CpuWaitProbe() as probe:
        time.sleep(0.3)
    assert 0 <= probe.result.wait_threads < WAIT_LIMIT_THREADS
    assert probe.result.wall_s >= 0.3


def test_judge_flags_only_above_the_limit_and_never_nan():
    assert judge(0.0) is None
    assert judge(WAIT_LIMIT_THREADS) is None
    assert judge(math.nan) is None  # cannot be judged: not flagged (the method column says why)
    reason = judge(0.55)
    assert reason is not None and "0.55" in reason and "waited for a CPU" in reason
