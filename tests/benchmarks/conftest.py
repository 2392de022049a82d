"""Shared settings of the pytest-benchmark suite (the performance regression guard).

Plain ``pytest`` runs every benchmark body exactly once, unmeasured, as a correctness test:
pytest-benchmark's ``--benchmark-disable`` semantics, without anything in the project's pytest
options. The suite measures for real as soon as a run asks for numbers, i.e. with any of
``--benchmark-enable``, ``--benchmark-only``, ``--benchmark-json``, ``--benchmark-save``,
``--benchmark-autosave`` or ``--benchmark-compare`` (``tests/benchmarks/gate.py`` does this).
An explicit ``--benchmark-disable`` always wins.

Threads are stated, not inherited: every benchmark runs inside
``mlpbench.timing.thread_limits(THREADS)`` (torch's intra-op pool and NumPy's BLAS alike).
``THREADS`` is 1 unless ``MLPBENCH_BENCH_THREADS`` says otherwise; one thread keeps the
numbers steady on a small shared CI machine, where a second thread competes with other jobs.
A baseline only compares with runs that use the same thread count (it is in ``machine_info``).

Clock: with one thread, CPU benchmarks are timed with ``time.process_time`` (the CPU time of
this process), which on a shared machine leaves out the time the benchmark waits for a core
that another job holds: a regression costs CPU time, a busy neighbour does not. With more than
one thread (CPU time would add up the threads and their spin-waits) and on CUDA (the work is
on the device) the clock is the wall clock, ``time.perf_counter``.

Warm-up: every benchmark runs in pedantic mode with fixed warm-up rounds (the first torch
call allocates, starts thread pools and picks kernels) and a fixed number of measured rounds,
so the gate's run time is known in advance.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mlpbench.config import config_hash
from mlpbench.machine import collect
from mlpbench.timing import thread_limits

# tests/ holds synthetic_results (contract-shaped stage outputs); tests/benchmarks/ itself is
# put on sys.path by pytest, which is where ensemble_speedup comes from.
_TESTS = str(Path(__file__).resolve().parents[1])
if _TESTS not in sys.path:
    sys.path.insert(0, _TESTS)


def _threads_from_env() -> int:
    raw = os.environ.get("MLPBENCH_BENCH_THREADS", "1")
    try:
        threads = int(raw)
    except ValueError:
        threads = 0
    if threads < 1:
        raise pytest.UsageError(f"MLPBENCH_BENCH_THREADS: got {raw!r}; allowed: an integer >= 1")
    return threads


THREADS = _threads_from_env()
CPU_TIMER = time.process_time if THREADS == 1 else time.perf_counter

# Options of pytest-benchmark that ask for measured numbers.
_MEASURING_OPTIONS = (
    "benchmark_enable", "benchmark_only", "benchmark_json", "benchmark_save",
    "benchmark_autosave", "benchmark_compare",
)
_RATIOS = pytest.StashKey[list[dict[str, Any]]]()


def measuring(config: pytest.Config) -> bool:
    """True when this run measures for real; False for a plain (correctness-only) run."""
    if config.getoption("benchmark_disable") and not config.getoption("benchmark_enable"):
        return False
    return any(config.getoption(name) for name in _MEASURING_OPTIONS)


@pytest.fixture
def benchmark(benchmark: Any, request: pytest.FixtureRequest) -> Any:
    """pytest-benchmark's fixture, disabled (one plain call) unless the run is measuring."""
    if not measuring(request.config):
        benchmark.disabled = True
    return benchmark


class Bench:
    """pytest-benchmark's fixture with this suite's rules: stated threads, pedantic warm-up."""

    def __init__(self, benchmark: Any, node: pytest.Item):
        self.benchmark = benchmark
        self.extra_info: dict[str, Any] = benchmark.extra_info
        marker = node.get_closest_marker("benchmark")
        timer = (marker.kwargs if marker else {}).get("timer", time.perf_counter)
        self.extra_info["timer"] = f"{timer.__module__}.{timer.__name__}"

    def run(self, fn: Callable[[], Any], *, group: str, rounds: int, warmup_rounds: int,
            iterations: int = 1) -> Any:
        """Time ``fn`` with ``THREADS`` threads; returns what ``fn`` returned (once if disabled)."""
        self.benchmark.group = group
        self.extra_info["threads"] = THREADS
        with thread_limits(THREADS):
            return self.benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup_rounds,
                                           iterations=iterations)

    @property
    def median_s(self) -> float | None:
        """Median seconds per call of the run just made; None when nothing was measured."""
        if self.benchmark.disabled or self.benchmark.stats is None:
            return None
        return float(self.benchmark.stats.stats.median)


@pytest.fixture
def bench(benchmark: Any, request: pytest.FixtureRequest) -> Bench:
    return Bench(benchmark, request.node)


@pytest.fixture(scope="session")
def bench_threads() -> int:
    """Threads for torch and NumPy's BLAS in every measurement of the suite."""
    return THREADS


@pytest.fixture
def arrow_threads(bench_threads: int) -> Any:
    """Arrow's CPU pool set to the suite's threads for one benchmark, restored afterwards."""
    import pyarrow as pa

    previous = pa.cpu_count()
    pa.set_cpu_count(bench_threads)
    yield bench_threads
    pa.set_cpu_count(previous)


@pytest.fixture
def record_ratio(request: pytest.FixtureRequest) -> Callable[[dict[str, Any]], None]:
    """Keep a ratio check's numbers for the terminal summary and the saved JSON."""
    return request.config.stash.setdefault(_RATIOS, []).append


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gate_only: a ratio check too slow for plain pytest; runs when measuring")
    config.addinivalue_line("markers", "cuda: a benchmark of CUDA work (timed by the wall clock)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Pick each benchmark's clock; plain runs leave out (deselect, visibly) ``gate_only`` checks."""
    here = Path(__file__).parent
    for item in items:
        if (item.path.parent == here and "bench" in getattr(item, "fixturenames", ())
                and not item.get_closest_marker("benchmark")):
            timer = time.perf_counter if item.get_closest_marker("cuda") else CPU_TIMER
            item.add_marker(pytest.mark.benchmark(timer=timer))
    if measuring(config):
        return
    gate_only = [item for item in items if item.get_closest_marker("gate_only")]
    if gate_only:
        config.hook.pytest_deselected(items=gate_only)
        items[:] = [item for item in items if not item.get_closest_marker("gate_only")]


# --- what the saved JSON says about the machine -------------------------------------------------

_BENCH_SETTINGS = {"threads": THREADS, "suite": "tests/benchmarks"}
_BLAS_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE")
_machine_cache: dict[str, Any] = {}


def _machine_record() -> dict[str, Any]:
    if not _machine_cache:
        _machine_cache.update(collect(config_hash(_BENCH_SETTINGS), _BENCH_SETTINGS))
    return _machine_cache


def pytest_benchmark_update_machine_info(config: pytest.Config,
                                         machine_info: dict[str, Any]) -> None:
    """Add what explains a number: threads, CPU, BLAS, GPU and library versions.

    Only keys that stay the same from run to run on one machine (no time stamp, no commit:
    pytest-benchmark keeps the commit in ``commit_info``), because pytest-benchmark warns when
    the baseline's ``machine_info`` differs from the current one.
    """
    record = _machine_record()
    # NumPy's and torch's BLAS, without threadpoolctl's list of every loaded library: that list
    # grows as tests import more (scipy, scikit-learn), so it would differ between the moment a
    # comparison reads machine_info (start-up) and the moment a run is saved (the end).
    blas = {"numpy": record["blas"]["numpy"], "torch": record["blas"]["torch"]}
    numpy_blas = blas["numpy"]
    gpu = record["gpu"]
    # py-cpuinfo's current clock frequency changes from run to run on most machines.
    for volatile in ("hz_actual", "hz_actual_friendly"):
        machine_info.get("cpu", {}).pop(volatile, None)
    machine_info.update({
        "mlpbench_threads": THREADS,
        "mlpbench_cpu_timer": f"{CPU_TIMER.__module__}.{CPU_TIMER.__name__}",
        "cpu_model": record["cpu_model"],
        "physical_cores": record["physical_cores"],
        "logical_cores": record["logical_cores"],
        "usable_cores": record["usable_cores"],
        "torch_version": record["versions"]["torch"],
        "numpy_version": record["versions"]["numpy"],
        "numpy_blas": " ".join(str(numpy_blas.get(key)) for key in
                               ("internal_api", "version", "architecture", "threading_layer")),
        "torch_blas": blas["torch"].get("blas_info"),
        "torch_cpu_capability": blas["torch"].get("cpu_capability"),
        "gpu": gpu["name"] if gpu["available"] else "none",
        "gpu_reason": gpu["reason"],
        "mlpbench_machine": {"machine_id": record["machine_id"], "blas": blas,
                             # this process's thread variables: the suite measures in it
                             "blas_env": {var: os.environ.get(var) for var in _BLAS_ENV_VARS},
                             "gpu": gpu,
                             "versions": record["versions"]},
    })


# Tests of this run that did not run, with why: the gate names them when a baseline entry is
# missing from the run ("skipped: CUDA unavailable" reads differently from "deselected").
_not_run: dict[str, str] = {}


def pytest_deselected(items: list[pytest.Item]) -> None:
    for item in items:
        _not_run[item.nodeid] = "deselected (-k, -m or --deselect)"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and report.when in ("setup", "call"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _not_run[report.nodeid] = "skipped: " + reason.removeprefix("Skipped: ")


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list,
                                 output_json: dict[str, Any]) -> None:
    """Saved JSON carries the ratio checks of the same run beside the timings, and what did
    not run (test id -> reason)."""
    output_json["mlpbench_ratios"] = config.stash.get(_RATIOS, [])
    output_json["mlpbench_not_run"] = dict(sorted(_not_run.items()))


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ratios = config.stash.get(_RATIOS, [])
    if not ratios:
        return
    terminalreporter.section("ensemble vs lesson loop (same process, same run)")
    for r in ratios:
        verdict = "ok" if r["ratio"] >= r["min_ratio"] else "TOO SLOW"
        terminalreporter.write_line(
            f"{r['case']}: {r['seeds']} seeds x {r['epochs']} epochs, loop {r['loop_total_s']:.2f} s,"
            f" ensemble median {r['ensemble_median_s'] * 1e3:.1f} ms -> {r['ratio']:.1f}x"
            f" (need >= {r['min_ratio']:g}x: {verdict}), {r['threads']} thread(s)"
        )
