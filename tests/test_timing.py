"""The shared timer: threads applied and restored, warm-up excluded, per-call times, CUDA sync."""

from __future__ import annotations

import math
import time
import timeit

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from mlpbench.timing import CUDA_SYNC, blas_num_threads, measure, summarise, thread_limits


@pytest.fixture
def one_thread():
    """Start each test from 1 torch thread and 1 BLAS thread, so a change to 2 is visible."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1, user_api="blas"):
        yield
    torch.set_num_threads(before)


def test_thread_limits_sets_torch_and_blas_then_restores(one_thread):
    assert blas_num_threads(), "NumPy's BLAS should be visible to threadpoolctl"
    with thread_limits(2):
        assert torch.get_num_threads() == 2
        assert set(blas_num_threads()) == {2}
    assert torch.get_num_threads() == 1
    assert set(blas_num_threads()) == {1}


def test_thread_limits_restores_after_an_exception(one_thread):
    with pytest.raises(RuntimeError), thread_limits(2):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 1
    assert set(blas_num_threads()) == {1}


def test_measure_applies_threads_during_timing_and_restores(one_thread):
    seen: list[tuple[int, tuple[int, ...]]] = []

    def probe() -> None:
        seen.append((torch.get_num_threads(), tuple(blas_num_threads())))

    result = measure("probe()", {"probe": probe}, threads=2, min_run_time_s=0.01)
    assert seen, "the statement never ran"
    assert {torch_threads for torch_threads, _ in seen} == {2}
    assert {n for _, blas in seen for n in blas} == {2}
    assert result.threads == 2
    assert "2 threads" in result.method
    assert torch.get_num_threads() == 1
    assert set(blas_num_threads()) == {1}


def test_slow_first_call_is_a_warm_up_not_a_measurement():
    calls = {"n": 0}

    def first_call_slow() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            time.sleep(0.3)

    result = measure("f()", {"f": first_call_slow}, threads=1, min_run_time_s=0.02, warmup=1)
    assert result.warmup_calls == 1
    assert result.median_s < 0.01
    # Without the warm-up the 0.3 s call would set the block size to a single call.
    assert result.number_per_run > 1
    assert calls["n"] >= 1 + result.n_runs * result.number_per_run


def test_median_is_seconds_per_call_of_the_statement():
    result = measure("time.sleep(0.0005)", {"time": time}, threads=1, min_run_time_s=0.05)
    # at least the sleep; per call, not per block of number_per_run calls (loose: a busy
    # machine may stretch the sleep, never the other way)
    assert 0.0005 <= result.median_s
    assert result.number_per_run == 1 or result.median_s < 0.0005 * result.number_per_run
    assert result.iqr_s >= 0
    assert result.n_runs >= 1 and result.number_per_run >= 1
    assert result.n_runs * result.number_per_run * result.median_s >= 0.04


def test_numpy_statement_with_globals():
    import numpy as np

    x = np.ones((8, 8))
    result = measure("np.matmul(x, x, out=z)", {"np": np, "x": x, "z": np.zeros((8, 8))},
                     threads=1, min_run_time_s=0.01)
    assert result.median_s > 0
    assert "np.matmul(x, x, out=z)" in result.method
    assert "blocked_autorange(min_run_time=0.01)" in result.method
    assert "cuda" not in result.method


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"threads": 0, "min_run_time_s": 0.01}, "threads"),
        ({"threads": True, "min_run_time_s": 0.01}, "threads"),
        ({"threads": 1, "min_run_time_s": 0}, "min_run_time_s"),
        ({"threads": 1, "min_run_time_s": float("nan")}, "min_run_time_s"),
        ({"threads": 1, "min_run_time_s": 0.01, "warmup": -1}, "warmup"),
    ],
)
def test_bad_arguments_are_rejected_by_name(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}: got .*allowed"):
        measure("pass", {}, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_clock_waits_for_queued_kernels():
    a = torch.rand(4096, 4096, device="cuda")
    b = torch.rand(4096, 4096, device="cuda")
    a @ b  # first cuBLAS call: handle creation, kernel selection
    torch.cuda.synchronize()
    start = timeit.default_timer()
    for _ in range(10):
        a @ b  # ~10 x 137 GFLOP fp32: several ms on any GPU, microseconds to launch
    launched = timeit.default_timer() - start
    finished = CUDA_SYNC.clock() - start
    assert finished > 1e-3
    assert finished > launched


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_measurement_is_synchronised():
    a = torch.rand(2048, 2048, device="cuda")
    z = torch.empty_like(a)
    result = measure("torch.matmul(a, a, out=z)", {"a": a, "z": z}, threads=1,
                     min_run_time_s=0.05, sync=CUDA_SYNC)
    assert "torch.cuda.synchronize()" in result.method
    # 2 * 2048^3 = 17 GFLOP: well above a microsecond-scale launch on any GPU.
    assert 2 * 2048**3 / result.median_s < 2e15


# ------------------------------------------------------------------ samples


def test_a_product_slower_than_the_minimum_run_time_is_sampled_min_samples_times():
    calls = {"n": 0}

    def slow() -> None:  # 30 ms per call, against a minimum run time of 10 ms
        calls["n"] += 1
        time.sleep(0.03)

    result = measure("slow()", {"slow": slow}, threads=1, min_run_time_s=0.01, warmup=0,
                     min_samples=4)
    assert result.n_runs == 4 == len(result.times_s)
    assert result.number_per_run == 1  # each sample is one call
    assert all(t >= 0.03 for t in result.times_s)
    assert result.iqr_s >= 0 and math.isfinite(result.iqr_s)
    assert result.median_s == pytest.approx(float(np.median(result.times_s)))
    assert "at least 4 samples" in result.method


def test_fast_products_keep_every_autorange_sample():
    result = measure("x + 1", {"x": 1}, threads=1, min_run_time_s=0.02, min_samples=3)
    assert result.n_runs >= 3 and result.n_runs == len(result.times_s)
    q1, q3 = np.quantile(result.times_s, [0.25, 0.75])
    assert result.iqr_s == pytest.approx(q3 - q1)


def test_one_sample_has_no_spread_never_zero():
    assert summarise([0.5], 1) == (0.5, pytest.approx(math.nan, nan_ok=True))
    median, iqr = summarise([0.5, 0.5, 0.5], 5)  # below min_samples: no spread reported
    assert median == 0.5 and math.isnan(iqr)
    median, iqr = summarise([1.0, 2.0, 3.0, 4.0, 5.0], 5)
    assert (median, iqr) == (3.0, 2.0)
    assert all(math.isnan(v) for v in summarise([], 5))


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "5"])
def test_min_samples_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="min_samples: got"):
        measure("pass", {}, threads=1, min_run_time_s=0.01, min_samples=bad)


def test_measure_reports_how_long_its_threads_waited_for_a_cpu():
    result = measure("time.sleep(0.002)", {"time": time}, threads=1, min_run_time_s=0.02)
    # a sleeping thread is not runnable, so it hardly waits for a CPU (NaN without schedstat)
    assert math.isnan(result.cpu_wait_threads) or 0 <= result.cpu_wait_threads < 0.5


def test_a_fixed_number_takes_exactly_min_samples_blocks_like_timeit():
    calls = {"n": 0}

    def f() -> None:
        calls["n"] += 1

    result = measure("f()", {"f": f}, threads=1, min_run_time_s=10.0, warmup=1, number=7,
                     min_samples=3)
    assert result.n_runs == 3 and result.number_per_run == 7
    assert calls["n"] == 1 + 3 * 7  # warm-up, then the samples: no autorange
    assert "timeit.Timer.repeat(repeat=3, number=7)" in result.method
    assert "%timeit -r 3 -n 7" in result.method
