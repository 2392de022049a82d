"""One timer for every backend: ``torch.utils.benchmark.Timer`` with stated threads and warm-up.

NumPy, torch on the CPU and torch on CUDA are all timed the same way: the statement is a Python
string whose operands come in through ``globals`` (created and filled before timing, so no page
faults and no random-number generation land inside the measurement), a few warm-up calls run
first (library initialisation such as the first cuBLAS handle or the BLAS thread pool start-up
must not count, nor fool the block-size estimate), then ``Timer.blocked_autorange`` measures.

What differs between array libraries is said by two small values a backend supplies (see
:mod:`mlpbench.backends`): a :class:`ThreadControl` (how its thread pools are set) and, for a
device that runs work asynchronously, a :class:`Sync` (the call that waits for queued work).
"""

from __future__ import annotations

import math
import timeit
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from threadpoolctl import threadpool_info, threadpool_limits
from torch.utils.benchmark import Timer

__all__ = [
    "CUDA_SYNC",
    "TORCH_AND_BLAS_THREADS",
    "Measurement",
    "Sync",
    "ThreadControl",
    "blas_num_threads",
    "describe_method",
    "measure",
    "thread_limits",
]


@dataclass(frozen=True)
class Measurement:
    """Summary of one ``blocked_autorange`` run; times are seconds per call of ``stmt``."""

    median_s: float
    iqr_s: float
    n_runs: int  # measurements the median is taken over
    number_per_run: int  # calls of stmt inside one measurement
    warmup_calls: int
    threads: int
    method: str


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
# torch on CUDA: kernels are launched asynchronously.
CUDA_SYNC = Sync(torch.cuda.synchronize, "cuda", "torch.cuda.synchronize()")


def describe_method(
    stmt: str,
    *,
    min_run_time_s: float,
    warmup: int,
    threads: int,
    sync: Sync | None = None,
    thread_control: ThreadControl = TORCH_AND_BLAS_THREADS,
) -> str:
    """The ``method`` string stored with each row: enough to repeat the measurement."""
    parts = [
        f"torch.utils.benchmark.Timer.blocked_autorange(min_run_time={min_run_time_s:g})",
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
) -> Measurement:
    """Time ``stmt`` with ``threads`` threads; return median/IQR seconds per call.

    ``warmup`` calls run first and are not measured. ``thread_control`` sets the thread pools
    for the warm-up and the measurement (torch's and every BLAS by default). With ``sync`` (for
    torch on CUDA: :data:`CUDA_SYNC`) the clock synchronises the device before each read, so
    queued kernels are always inside the measured interval (kernel launches are asynchronous;
    an unsynchronised clock times only the launch).
    """
    _check_threads(threads)
    if not (isinstance(min_run_time_s, (int, float)) and math.isfinite(min_run_time_s)
            and min_run_time_s > 0):
        raise ValueError(f"min_run_time_s: got {min_run_time_s!r}; allowed: a number > 0")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: got {warmup!r}; allowed: an integer >= 0")

    clock: Callable[[], float] = sync.clock if sync is not None else timeit.default_timer
    namespace = {"torch": torch, **globals}  # Timer adds torch too; the warm-up must match
    with thread_control.limits(threads):
        if warmup:
            # Plain timeit.Timer runs the same stmt/setup/globals without timing bookkeeping;
            # Timer's own warm-ups (inside the block-size estimate) come on top of these.
            timeit.Timer(stmt, setup, timer=clock, globals=dict(namespace)).timeit(warmup)
        timer = Timer(stmt, setup=setup, globals=namespace, num_threads=threads, timer=clock)
        result = timer.blocked_autorange(min_run_time=min_run_time_s)

    return Measurement(
        median_s=float(result.median),
        iqr_s=float(result.iqr),
        n_runs=len(result.times),
        number_per_run=int(result.number_per_run),
        warmup_calls=warmup,
        threads=threads,
        method=describe_method(stmt, min_run_time_s=min_run_time_s, warmup=warmup,
                               threads=threads, sync=sync, thread_control=thread_control),
    )


def _check_threads(threads: int) -> None:
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads: got {threads!r}; allowed: an integer >= 1")
