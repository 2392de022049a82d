"""One timer for every backend: ``torch.utils.benchmark.Timer`` with stated threads and warm-up.

NumPy, torch on the CPU and torch on CUDA are all timed the same way: the statement is a Python
string whose operands come in through ``globals`` (created and filled before timing, so no page
faults and no random-number generation land inside the measurement), a few warm-up calls run
first (library initialisation such as the first cuBLAS handle or the BLAS thread pool start-up
must not count, nor fool the block-size estimate), then ``Timer.blocked_autorange`` measures.

Every measurement rests on at least ``min_samples`` independent samples (a sample is one timed
block of ``number_per_run`` calls, divided by that number). ``blocked_autorange`` stops once
``min_run_time`` has passed, so a product slower than that gives it a single block; the missing
samples are then timed one by one, with the same block size, statement, namespace and clock.
The median and interquartile range are computed here from those samples (the spread is NaN
below ``min_samples`` or 2 samples, never a 0 that looks exact), and the samples are kept.
:mod:`mlpbench.guard` watches the sampling for time this process spent waiting for a CPU.

What differs between array libraries is said by two small values a backend supplies (see
:mod:`mlpbench.backends`): a :class:`ThreadControl` (how its thread pools are set) and, for a
device that runs work asynchronously, a :class:`Sync` (the call that waits for queued work).

Importing this module does not import torch (a CUDA job on a machine without a GPU describes
its rows with :func:`describe_method` and times nothing); the functions that time import it.
"""

from __future__ import annotations

import math
import timeit
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from mlpbench.guard import CpuWaitProbe

__all__ = [
    "CUDA_SYNC",
    "MIN_SAMPLES",
    "TORCH_AND_BLAS_THREADS",
    "Measurement",
    "Sync",
    "ThreadControl",
    "blas_num_threads",
    "describe_method",
    "measure",
    "summarise",
    "thread_limits",
]


@dataclass(frozen=True)
class Measurement:
    """Summary of one ``blocked_autorange`` run; times are seconds per call of ``stmt``."""

    median_s: float
    iqr_s: float  # NaN below min_samples (or 2) samples
    n_runs: int  # samples (timed blocks) the median is taken over
    number_per_run: int  # calls of stmt inside one sample
    warmup_calls: int
    threads: int
    method: str
    times_s: tuple[float, ...] = ()  # per-call time of each sample, in the order measured
    cpu_wait_threads: float = math.nan  # mlpbench.guard: threads waiting for a CPU, on average


MIN_SAMPLES = 5  # default of matmul.min_samples: samples behind every median


def summarise(times_s: Sequence[float], min_samples: int) -> tuple[float, float]:
    """Median and interquartile range (numpy's linear quantiles) of per-call times in seconds.

    The range is NaN with fewer than ``max(min_samples, 2)`` samples: one sample has no spread,
    and reporting 0 would read as an exact time. No samples: both NaN.
    """
    if len(times_s) == 0:
        return math.nan, math.nan
    values = np.asarray(times_s, dtype=float)
    median = float(np.median(values))
    if len(values) < max(min_samples, 2):
        return median, math.nan
    q1, q3 = np.quantile(values, [0.25, 0.75])
    return median, float(q3 - q1)


def blas_num_threads() -> list[int]:
    """Thread counts of every BLAS library loaded in this process (NumPy's among them)."""
    return [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]


@contextmanager
def thread_limits(threads: int) -> Iterator[None]:
    """Run the block with ``threads`` threads in torch and in every loaded BLAS; restore after.

    torch's intra-op pool (``torch.set_num_threads``, which also drives its MKL/OpenMP) and
    NumPy's BLAS (via threadpoolctl) are separate pools: setting only one leaves the other at
    whatever the environment gave it.
    """
    import torch

    _check_threads(threads)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with threadpool_limits(limits=threads, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


@dataclass(frozen=True)
class ThreadControl:
    """How a backend's thread pools are set: ``limits(threads)`` is a context manager that runs
    its block with that many threads and restores the previous counts; ``text`` names the
    mechanism in the ``method`` column."""

    limits: Callable[[int], AbstractContextManager[None]]
    text: str


@dataclass(frozen=True)
class Sync:
    """How to wait for a device's queued work: ``call()`` returns once the work has finished.

    ``device`` and ``text`` (the call as written in Python) name it in the ``method`` column.
    """

    call: Callable[[], None]
    device: str
    text: str

    def clock(self) -> float:
        """Wall clock read only after the device has finished all queued work."""
        self.call()
        return timeit.default_timer()


# torch's intra-op pool and every loaded BLAS (NumPy's included): what NumPy and torch both use.
TORCH_AND_BLAS_THREADS = ThreadControl(
    thread_limits, "torch.set_num_threads + threadpoolctl BLAS limit"
)


def _cuda_synchronize() -> None:
    """``torch.cuda.synchronize()``; torch is imported on the first call, not with this module."""
    import torch

    torch.cuda.synchronize()


# torch on CUDA: kernels are launched asynchronously.
CUDA_SYNC = Sync(_cuda_synchronize, "cuda", "torch.cuda.synchronize()")


def describe_method(
    stmt: str,
    *,
    min_run_time_s: float,
    warmup: int,
    threads: int,
    sync: Sync | None = None,
    thread_control: ThreadControl = TORCH_AND_BLAS_THREADS,
    min_samples: int = MIN_SAMPLES,
    unsynchronised: str | None = None,
    number: int | None = None,
    before_each: str | None = None,
) -> str:
    """The ``method`` string stored with each row: enough to repeat the measurement.

    ``unsynchronised`` names a device deliberately timed without waiting for it (the lesson's
    way), which the string then says; ``number`` a fixed block size (see :func:`measure`);
    ``before_each`` what runs, untimed, before every single call (see :func:`measure`).
    """
    s = "s" if min_samples != 1 else ""
    parts = [
        f"{min_samples} single call{s}, each timed alone",
        f"before each call, untimed: {before_each}",
    ] if before_each is not None else [
        f"torch.utils.benchmark.Timer.blocked_autorange(min_run_time={min_run_time_s:g})",
        f"at least {min_samples} sample{s} (further blocks timed singly when the autorange "
        "gives fewer)",
    ] if number is None else [
        f"timeit.Timer.repeat(repeat={min_samples}, number={number})",
        f"{min_samples} sample{s} of {number} calls each, as %timeit -r {min_samples} "
        f"-n {number}",
    ]
    parts += [
        f"stmt `{stmt}`",
        f"{warmup} warm-up call{'s' if warmup != 1 else ''} before timing",
        "operands created and filled before timing",
        f"{threads} thread{'s' if threads != 1 else ''} ({thread_control.text})",
    ]
    if sync is not None:
        parts.append(
            f"{sync.device} synchronised: {sync.text} before every clock read"
            " (each block of calls is timed to completion)"
        )
    elif unsynchronised is not None:
        parts.append(f"{unsynchronised} NOT synchronised (the lesson's way): the clock may stop "
                     "before queued kernels finish")
    return "; ".join(parts)


def measure(
    stmt: str,
    globals: dict[str, Any],
    *,
    threads: int,
    min_run_time_s: float,
    warmup: int = 1,
    sync: Sync | None = None,
    thread_control: ThreadControl = TORCH_AND_BLAS_THREADS,
    setup: str = "pass",
    min_samples: int = MIN_SAMPLES,
    unsynchronised: str | None = None,
    number: int | None = None,
    before_each: Callable[[], None] | None = None,
    before_each_text: str = "an untimed preparation",
) -> Measurement:
    """Time ``stmt`` with ``threads`` threads; return median/IQR seconds per call.

    At least ``min_samples`` samples (see the module docstring); the per-call time of each is
    in ``times_s`` and ``cpu_wait_threads`` says how many threads of this process waited for a
    CPU during the sampling, on average (:class:`mlpbench.guard.CpuWaitProbe`).
    ``unsynchronised`` (with ``sync=None``) names a device timed without synchronisation on
    purpose, so that the ``method`` string says so. A fixed ``number`` replaces the autorange:
    exactly ``min_samples`` samples of ``number`` calls each, back to back, as IPython's
    ``%timeit -r min_samples -n number`` takes them (``min_run_time_s`` is then unused).
    ``before_each`` (a callable; for instance :class:`mlpbench.caches.CacheFlush`) replaces both:
    exactly ``min_samples`` single calls, each after an untimed ``before_each()``;
    ``before_each_text`` says what it does, for the ``method`` string.

    ``warmup`` calls run first and are not measured. ``thread_control`` sets the thread pools
    for the warm-up and the measurement (torch's and every BLAS by default). With ``sync`` (for
    torch on CUDA: :data:`CUDA_SYNC`) the clock synchronises the device before each read, so
    queued kernels are always inside the measured interval (kernel launches are asynchronous;
    an unsynchronised clock times only the launch).
    """
    import torch
    from torch.utils.benchmark import Timer

    _check_threads(threads)
    if not (isinstance(min_run_time_s, (int, float)) and math.isfinite(min_run_time_s)
            and min_run_time_s > 0):
        raise ValueError(f"min_run_time_s: got {min_run_time_s!r}; allowed: a number > 0")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: got {warmup!r}; allowed: an integer >= 0")
    if isinstance(min_samples, bool) or not isinstance(min_samples, int) or min_samples < 1:
        raise ValueError(f"min_samples: got {min_samples!r}; allowed: an integer >= 1")
    if number is not None and (isinstance(number, bool) or not isinstance(number, int)
                               or number < 1):
        raise ValueError(f"number: got {number!r}; allowed: None or an integer >= 1")
    if before_each is not None and number is not None:
        raise ValueError(f"number: got {number!r} with before_each; allowed: None (a call "
                         "after each preparation is timed alone)")

    fixed = number
    clock: Callable[[], float] = sync.clock if sync is not None else timeit.default_timer
    namespace = {"torch": torch, **globals}  # Timer adds torch too; the warm-up must match
    with thread_control.limits(threads):
        if warmup:
            # Plain timeit.Timer runs the same stmt/setup/globals without timing bookkeeping;
            # Timer's own warm-ups (inside the block-size estimate) come on top of these.
            timeit.Timer(stmt, setup, timer=clock, globals=dict(namespace)).timeit(warmup)
        timer = Timer(stmt, setup=setup, globals=namespace, num_threads=threads, timer=clock)
        with CpuWaitProbe() as probe:
            if before_each is not None:
                single = timeit.Timer(stmt, setup, timer=clock, globals=dict(namespace))
                number, times = 1, []
                for _ in range(min_samples):
                    before_each()
                    times.append(single.timeit(1))
            elif number is None:
                result = timer.blocked_autorange(min_run_time=min_run_time_s)
                number = int(result.number_per_run)
                times = [float(t) for t in result.times]
            else:
                times = []
            missing = min_samples - len(times)
            if missing > 0:  # a slow product (or a fixed number): time the blocks one by one
                single = timeit.Timer(stmt, setup, timer=clock, globals=dict(namespace))
                times += [total / number for total in single.repeat(missing, number)]

    median, iqr = summarise(times, min_samples)
    return Measurement(
        median_s=median,
        iqr_s=iqr,
        n_runs=len(times),
        number_per_run=number,
        warmup_calls=warmup,
        threads=threads,
        method=describe_method(stmt, min_run_time_s=min_run_time_s, warmup=warmup,
                               threads=threads, sync=sync, thread_control=thread_control,
                               min_samples=min_samples, unsynchronised=unsynchronised,
                               number=fixed,
                               before_each=before_each_text if before_each else None),
        times_s=tuple(times),
        cpu_wait_threads=probe.result.wait_threads,
    )


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: got {threads!r}; allowed: an integer >= 1")
