"""A guard against disturbed timings: did this process wait for a CPU while it was timed?

A timing is disturbed when something else takes the cores it runs on. The kernel counts that
directly: for every thread, ``/proc/<pid>/task/<tid>/schedstat`` holds the nanoseconds the
thread has run and the nanoseconds it has been *runnable but waiting on a run queue* (its run
delay; see the kernel's ``Documentation/scheduler/sched-stats.rst``). :class:`CpuWaitProbe`
reads the run delay of every thread of this process before and after a measurement; the sum of
the differences over the wall time is ``cpu_wait_threads``, the average number of this
process's threads that were ready to compute but had no CPU. On a quiet machine it is close to
0; with one CPU-bound process on one of the cores a two-thread product uses it is about 0.5
(each of the three runnable threads gets two thirds of a core).

A measurement is judged disturbed (:func:`judge`) when ``cpu_wait_threads`` exceeds
:data:`WAIT_LIMIT_THREADS`: then at least a tenth of one thread's time went to waiting, which
for a multi-threaded BLAS (whose threads meet at barriers, so the slowest sets the pace) can
slow the product by about as much.

What it does not see (docs/measurement.md says more): contention that takes no CPU from this
process, such as another process on *other* cores sharing the memory bandwidth, the last-level
cache or an SMT sibling; lower clock frequencies (thermal limits, turbo shared among busy
cores); time a hypervisor steals from the virtual CPU; work by other processes on the GPU.
Where the kernel does not provide schedstat (not Linux, or a kernel built without
``CONFIG_SCHED_INFO``) the probe reports NaN and :func:`judge` flags nothing, saying why in
:func:`unavailable_reason`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

__all__ = [
    "WAIT_LIMIT_THREADS",
    "CpuWait",
    "CpuWaitProbe",
    "judge",
    "run_delay_ns",
    "unavailable_reason",
]

# Average threads of this process waiting for a CPU above which a timing counts as disturbed.
WAIT_LIMIT_THREADS = 0.1

_TASKS = "/proc/self/task"


def run_delay_ns() -> dict[str, int] | None:
    """Thread id -> nanoseconds that thread has waited on a run queue; None without schedstat."""
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return None
    out: dict[str, int] = {}
    for tid in tids:
        try:
            with open(f"{_TASKS}/{tid}/schedstat") as f:
                fields = f.read().split()
        except FileNotFoundError:  # the thread ended between listdir and open
            continue
        except OSError:
            return None
        if len(fields) < 2:
            return None
        out[tid] = int(fields[1])
    return out


def unavailable_reason() -> str | None:
    """None where the probe works here; else why ``cpu_wait_threads`` will be NaN."""
    if run_delay_ns() is None:
        return ("the guard against disturbed timings needs /proc/<pid>/task/<tid>/schedstat "
                "(Linux with CONFIG_SCHED_INFO), which this system does not provide")
    return None


@dataclass(frozen=True)
class CpuWait:
    """What the probe saw: ``wait_threads`` (average threads of this process waiting for a
    CPU; NaN when unavailable), over ``wall_s`` seconds."""

    wait_threads: float
    wall_s: float


class CpuWaitProbe:
    """Context manager: ``with CpuWaitProbe() as probe: ...``, then ``probe.result``.

    Threads created inside the block count from zero; threads that end inside it are lost
    (their wait is not counted), which can only make a disturbance look smaller.
    """

    def __init__(self) -> None:
        self.result = CpuWait(math.nan, math.nan)
        self._start: dict[str, int] | None = None
        self._t0 = 0.0

    def __enter__(self) -> CpuWaitProbe:
        self._start = run_delay_ns()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._t0
        end = run_delay_ns()
        if self._start is None or end is None or wall <= 0:
            self.result = CpuWait(math.nan, wall)
            return
        waited = sum(ns - self._start.get(tid, 0) for tid, ns in end.items())
        self.result = CpuWait(max(waited, 0) / 1e9 / wall, wall)


def judge(wait_threads: float, limit: float = WAIT_LIMIT_THREADS) -> str | None:
    """None when the timing looks undisturbed (or cannot be judged: NaN); else the reason."""
    if not math.isfinite(wait_threads) or wait_threads <= limit:
        return None
    return (f"disturbed: on average {wait_threads:.2f} of this job's threads were ready to run "
            f"but waited for a CPU taken by other work (limit {limit:g})")
