"""The matmul stage table: contract columns, one row per key, consistent numbers, every path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

import mlpbench.matmul as mm
from mlpbench.contract import MATMUL, MATMUL_SAMPLES, read, write
from mlpbench.devices import cuda_unavailable_reason
from mlpbench.guard import unavailable_reason
from mlpbench.matmul import COLUMNS, measure_matmul_stage, run_matmul_stage, shapes_from_config
from mlpbench.timing import blas_num_threads

KEY = ["backend", "device", "dtype", "case", "m", "k", "n", "kind"]
TINY = [("lesson", 1, 64, 40), ("square", 16, 16, 16), ("gemv", 1, 32, 24)]
DTYPES = ["float32", "float64"]
# The guard is off here (an infinite limit): these tests check the numbers and must pass on a
# busy machine too; the guard's own tests below turn it on.
FAST = {"min_run_time_s": 0.005, "bandwidth_mib": 1, "wait_limit_threads": math.inf}


@pytest.fixture(scope="module")
def cpu_run() -> tuple[pd.DataFrame, tuple[int, set[int]]]:
    """The stage on tiny shapes with 2 threads, started from 1 torch and 1 BLAS thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            df = run_matmul_stage("cpu", DTYPES, TINY, threads=2, host="testhost", **FAST)
            after = (torch.get_num_threads(), set(blas_num_threads()))
    finally:
        torch.set_num_threads(before)
    return df, after


@pytest.fixture
def cpu_table(cpu_run) -> pd.DataFrame:
    return cpu_run[0].copy()


def test_shapes_from_the_default_config():
    cfg = {
        "lesson_case": {"m": 1, "k": 6400, "n": 5000},
        "square": [256, 4096],
        "gemv": [[800, 625], [6400, 5000]],
    }
    assert shapes_from_config(cfg) == [
        ("lesson", 1, 6400, 5000),
        ("square", 256, 256, 256),
        ("square", 4096, 4096, 4096),
        ("gemv", 1, 800, 625),
        ("gemv", 1, 6400, 5000),
    ]


def test_cpu_table_has_exactly_the_contract_columns_and_one_row_per_key(cpu_table):
    assert list(cpu_table.columns) == COLUMNS
    # numpy + torch, 2 dtypes, one copy row + one matmul row per shape + the cold lesson case
    assert len(cpu_table) == 2 * 2 * (1 + len(TINY) + 1)
    assert not cpu_table.duplicated(KEY).any()
    assert set(cpu_table["backend"]) == {"numpy", "torch"}
    assert set(cpu_table["kind"]) == {"matmul", "matmul_cold", "copy"}
    assert set(cpu_table.loc[cpu_table["kind"] == "matmul_cold", "case"]) == {"lesson"}
    assert (cpu_table["status"] == "ok").all(), cpu_table.loc[cpu_table["status"] != "ok", "reason"]
    assert (cpu_table["reason"] == "").all()
    assert (cpu_table["host"] == "testhost").all()
    assert (cpu_table["device"] == "cpu").all()


def test_cpu_numbers_are_consistent(cpu_table):
    df = cpu_table
    mat = df[df["kind"] == "matmul"]
    size = mat["dtype"].map({"float32": 4, "float64": 8})
    assert np.allclose(mat["flop"], 2.0 * mat["m"] * mat["k"] * mat["n"])
    assert np.allclose(mat["bytes"], (mat["m"] * mat["k"] + mat["k"] * mat["n"]
                                      + mat["m"] * mat["n"]) * size)
    assert np.allclose(df["gflop_s"], df["flop"] / df["time_s_median"] / 1e9)
    assert np.allclose(df["gb_s"], df["bytes"] / df["time_s_median"] / 1e9)
    assert np.allclose(df["intensity_flop_per_byte"], df["flop"] / df["bytes"])
    assert np.allclose(df["bandwidth_share"], df["gb_s"] / df["bandwidth_gb_s"])
    assert (df["time_s_median"] > 0).all() and (df["time_s_iqr"] >= 0).all()
    assert (df["n_runs"] >= 5).all() and (df["number_per_run"] >= 1).all()  # min_samples 5
    assert (df["threads"] == 2).all()
    assert (df["attempts"] == 1).all() and not df["noisy"].any()
    assert (df["noise_reason"] == "").all()


def test_cold_lesson_rows_empty_the_caches_before_every_single_call(cpu_table):
    """matmul_cold: the lesson's product, min_samples single calls, each after the caches were
    emptied by writing twice the last-level cache (mlpbench.caches), untimed."""
    from mlpbench.caches import FLUSH_FACTOR, last_level_cache

    cold = cpu_table[cpu_table["kind"] == "matmul_cold"]
    assert len(cold) == 4 and (cold["status"] == "ok").all()
    assert (cold["n_runs"] == 5).all() and (cold["number_per_run"] == 1).all()
    llc = last_level_cache("cpu")
    flushed = f"{FLUSH_FACTOR * llc.size_bytes / 2**20:.4g} MiB buffer"
    assert cold["method"].str.contains("5 single calls, each timed alone").all()
    assert cold["method"].str.contains(f"before each call, untimed: the caches emptied by "
                                       f"writing a {flushed}", regex=False).all()
    # each backend empties the caches with its own library (no other thread pool spinning)
    assert cold.loc[cold["backend"] == "numpy", "method"].str.contains(") with numpy", regex=False).all()
    assert cold.loc[cold["backend"] == "torch", "method"].str.contains(") with torch", regex=False).all()
    warm = cpu_table[(cpu_table["kind"] == "matmul") & (cpu_table["case"] == "lesson")]
    key = ["backend", "dtype", "m", "k", "n", "flop", "bytes"]
    assert (cold[key].to_numpy() == warm[key].to_numpy()).all()  # the same product


def test_copy_rows_are_the_bandwidth_reference(cpu_table):
    copies = cpu_table[cpu_table["kind"] == "copy"]
    assert (copies["case"] == "bandwidth").all()
    assert (copies[["m", "k", "n"]] == 0).all().all()
    assert (copies["flop"] == 0).all() and (copies["gflop_s"] == 0).all()
    assert np.allclose(copies["bytes"], 2 * FAST["bandwidth_mib"] * 2**20)
    # every row of the device is set against the best copy measured on it
    assert np.allclose(cpu_table["bandwidth_gb_s"], copies["gb_s"].max())
    assert copies["bandwidth_share"].max() == pytest.approx(1.0)


def test_threads_applied_then_restored(cpu_run):
    cpu_table, (torch_after, blas_after) = cpu_run
    assert torch_after == 1 and blas_after == {1}
    assert cpu_table["method"].str.contains("2 threads").all()


def test_table_survives_parquet(cpu_table, tmp_path):
    path = tmp_path / "cpu.parquet"
    write(cpu_table, path, MATMUL)
    back = read(path, MATMUL).to_pandas()
    assert list(back.columns) == COLUMNS
    assert back["n_runs"].dtype == np.int64 and back["gflop_s"].dtype == np.float64
    pd.testing.assert_frame_equal(back, cpu_table, check_dtype=False)


def test_cuda_unavailable_gives_every_row_with_reason(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    df = run_matmul_stage("cuda", DTYPES, TINY[:2], threads=1, **FAST)
    assert list(df.columns) == COLUMNS
    # torch only; per dtype one copy row + matmul/h2d/h2d_pinned/d2h per shape, the product
    # timed unsynchronised and cold for the lesson case, and TF32 products (float32 lesson
    # and square)
    assert len(df) == 2 * (1 + 4 * 2 + 2) + 2
    assert not df.duplicated(KEY).any()
    assert set(df["backend"]) == {"torch"}
    assert set(df["kind"]) == {"copy", "matmul", "h2d", "h2d_pinned", "d2h", "matmul_nosync",
                               "matmul_tf32", "matmul_cold"}
    assert set(df.loc[df["kind"] == "matmul_nosync", "case"]) == {"lesson"}
    assert set(df.loc[df["kind"] == "matmul_tf32", "dtype"]) == {"float32"}
    assert (df["attempts"] == 0).all() and (df["n_runs"] == 0).all() and not df["noisy"].any()
    assert (df["bound"] == "").all()
    nosync = df[df["kind"] == "matmul_nosync"]
    assert nosync["method"].str.contains("NOT synchronised").all()
    assert not nosync["method"].str.contains("torch.cuda.synchronize()", regex=False).any()
    assert nosync["method"].str.contains("number=100", regex=False).all()  # the lesson's loops
    products = df[df["kind"].isin(["matmul", "matmul_nosync"])]
    assert products["method"].str.contains("allow_tf32 = False (torch's default",
                                           regex=False).all()
    tf32 = df[df["kind"] == "matmul_tf32"]
    assert tf32["method"].str.contains("allow_tf32 = True", regex=False).all()
    assert (df["status"] == "unavailable").all()
    # the one reason mlpbench.devices gives here: no GPU driver, or torch's answer behind it
    assert (df["reason"] == cuda_unavailable_reason()).all()
    assert df["reason"].str.startswith("CUDA unavailable: ").all()
    for col in ["time_s_median", "time_s_iqr", "gflop_s", "gb_s", "bandwidth_gb_s",
                "bandwidth_share", "compute_roof_gflop_s", "compute_share",
                "ridge_flop_per_byte", "cpu_wait_threads"]:
        assert df[col].isna().all(), col
    h2d = df[(df["kind"] == "h2d") & (df["case"] == "square") & (df["dtype"] == "float64")]
    assert h2d["bytes"].item() == 16 * 16 * 8  # y, k x n


def test_one_failed_measurement_does_not_stop_the_others(monkeypatch):
    real = mm._operands

    def failing(job, bandwidth_mib):
        if job.backend == "torch" and job.case == "square":
            raise RuntimeError("out of memory: tried to allocate 1 PiB")
        return real(job, bandwidth_mib)

    monkeypatch.setattr(mm, "_operands", failing)
    df = run_matmul_stage("cpu", ["float32"], TINY, threads=1, **FAST)
    bad = df[df["status"] == "error"]
    assert len(bad) == 1
    assert bad["reason"].item() == "RuntimeError: out of memory: tried to allocate 1 PiB"
    assert math.isnan(bad["time_s_median"].item()) and math.isnan(bad["gflop_s"].item())
    assert (df.drop(bad.index)["status"] == "ok").all()


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_max_attempts_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match=r"^max_attempts: got .*; allowed: an integer >= 1"):
        run_matmul_stage("cpu", ["float32"], TINY, threads=1, min_run_time_s=0.01,
                         bandwidth_mib=1, max_attempts=bad)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_stage_measures_everything():
    df = run_matmul_stage("cuda", DTYPES, TINY, threads=1, min_run_time_s=0.01,
                          bandwidth_mib=16)
    assert list(df.columns) == COLUMNS
    # per dtype: copy, 4 transfer/product kinds per shape, nosync for the lesson; TF32 for the
    # float32 lesson and square products
    assert len(df) == 2 * (1 + 4 * len(TINY) + 1) + 2
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "reason"].tolist()
    assert (df["time_s_median"] > 0).all() and (df["n_runs"] >= 5).all()
    synced = df[df["kind"] != "matmul_nosync"]
    assert synced["method"].str.contains("torch.cuda.synchronize()", regex=False).all()
    assert torch.backends.cuda.matmul.allow_tf32 is False  # restored after the TF32 rows
    copies = df[df["kind"] == "copy"]
    assert np.allclose(df["bandwidth_gb_s"], copies["gb_s"].max())


# ------------------------------------------------------------------ samples, roofs, the guard


@pytest.fixture(scope="module")
def slow_run():
    """A product slower than the minimum run time, and the samples table."""
    return measure_matmul_stage("cpu", ["float64"], [("square", 192, 192, 192)], threads=1,
                                min_run_time_s=1e-4, bandwidth_mib=1, min_samples=4,
                                wait_limit_threads=math.inf)


def test_every_row_rests_on_min_samples_samples_kept_in_the_samples_table(slow_run):
    table, samples = slow_run
    assert list(samples.columns) == MATMUL_SAMPLES.column_names
    assert (table["n_runs"] >= 4).all() and table["time_s_iqr"].notna().all()
    for _, row in table.iterrows():
        mine = samples[(samples["backend"] == row["backend"]) & (samples["kind"] == row["kind"])
                       & samples["reported"]]
        assert len(mine) == row["n_runs"]
        assert row["time_s_median"] == pytest.approx(mine["time_s"].median())
        q1, q3 = mine["time_s"].quantile([0.25, 0.75])
        assert row["time_s_iqr"] == pytest.approx(q3 - q1)


def test_samples_table_survives_parquet(slow_run, tmp_path):
    write(slow_run.samples, tmp_path / "cpu.samples.parquet", MATMUL_SAMPLES)
    back = read(tmp_path / "cpu.samples.parquet", MATMUL_SAMPLES).to_pandas()
    pd.testing.assert_frame_equal(back, slow_run.samples, check_dtype=False)


def test_one_sample_gives_no_spread():
    df = run_matmul_stage("cpu", ["float32"], [("square", 8, 8, 8)], threads=1,
                          min_run_time_s=1e-4, bandwidth_mib=1, min_samples=1,
                          wait_limit_threads=math.inf)
    single = df[df["n_runs"] == 1]
    assert single["time_s_iqr"].isna().all()
    assert not (df["time_s_iqr"] == 0).any() or (df.loc[df["time_s_iqr"] == 0, "n_runs"] > 1).all()


def test_both_roofs_ridge_and_bound(cpu_table):
    df = cpu_table
    products = df[df["kind"] == "matmul"]
    for (device, dtype), g in products.groupby(["device", "dtype"]):
        roof = g.loc[g["case"] == "square", "gflop_s"].max()
        assert np.allclose(g["compute_roof_gflop_s"], roof)
        assert np.allclose(g["compute_share"], g["gflop_s"] / roof)
        assert np.allclose(g["ridge_flop_per_byte"], roof / g["bandwidth_gb_s"])
    expected = np.where(products["intensity_flop_per_byte"] < products["ridge_flop_per_byte"],
                        "memory", "compute")
    assert (products["bound"] == expected).all()
    assert (df.loc[df["kind"] == "copy", "bound"] == "").all()
    assert df.loc[df["kind"] == "copy", "compute_share"].isna().all()


@pytest.mark.skipif(unavailable_reason() is not None, reason="no schedstat on this system")
def test_a_disturbed_row_is_timed_again_then_kept_flagged_noisy_and_sets_no_roof():
    # A negative limit makes every timing count as disturbed.
    result = measure_matmul_stage("cpu", ["float32"], [("square", 8, 8, 8)], threads=1,
                                  min_run_time_s=1e-3, bandwidth_mib=1, min_samples=3,
                                  max_attempts=2, wait_limit_threads=-1.0)
    df, samples = result
    assert df["noisy"].all() and (df["attempts"] == 2).all()
    assert df["noise_reason"].str.contains("waited for a CPU").all()
    assert df["noise_reason"].str.contains("in each of 2 attempts").all()
    assert (df["status"] == "ok").all() and df["time_s_median"].notna().all()  # kept
    assert df["bandwidth_gb_s"].isna().all() and df["compute_roof_gflop_s"].isna().all()
    assert (df["bound"] == "").all()
    assert set(samples["attempt"]) == {1, 2}
    per_row = samples.groupby(["backend", "kind"])
    assert (per_row["reported"].sum() == df.set_index(["backend", "kind"])["n_runs"]).all()


@pytest.mark.skipif(unavailable_reason() is not None, reason="no schedstat on this system")
def test_an_undisturbed_row_is_timed_once():
    df = run_matmul_stage("cpu", ["float32"], [("square", 8, 8, 8)], threads=1,
                          min_run_time_s=1e-3, bandwidth_mib=1, max_attempts=3,
                          wait_limit_threads=math.inf)
    assert (df["attempts"] == 1).all() and not df["noisy"].any()


@pytest.mark.skipif(unavailable_reason() is not None, reason="no schedstat on this system")
def test_a_cpu_bound_process_on_the_timed_core_gets_the_rows_flagged():
    """A busy loop started by its PID on the one CPU the stage runs on, stopped by its PID."""
    import os
    import subprocess
    import sys

    before = os.sched_getaffinity(0)
    cpu = min(before)
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        os.sched_setaffinity(hog.pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        df = run_matmul_stage("cpu", ["float32"], [("square", 64, 64, 64)], threads=1,
                              min_run_time_s=0.05, bandwidth_mib=1, max_attempts=2)
    finally:
        os.sched_setaffinity(0, before)
        hog.kill()
        hog.wait()
    # two runnable threads on one CPU: the stage's thread waits about half the time
    assert df["noisy"].all(), df[["backend", "kind", "cpu_wait_threads"]]
    assert (df["attempts"] == 2).all() and (df["cpu_wait_threads"] > 0.25).all()
    assert df["bandwidth_gb_s"].isna().all()  # a noisy copy sets no roof
