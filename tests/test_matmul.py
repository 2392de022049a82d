"""The matmul stage table: contract columns, one row per key, consistent numbers, every path."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

import mlpbench.matmul as mm
from mlpbench.contract import MATMUL, read, write
from mlpbench.matmul import COLUMNS, run_matmul_stage, shapes_from_config
from mlpbench.timing import blas_num_threads

KEY = ["backend", "device", "dtype", "case", "m", "k", "n", "kind"]
TINY = [("lesson", 1, 64, 40), ("square", 16, 16, 16), ("gemv", 1, 32, 24)]
DTYPES = ["float32", "float64"]
FAST = {"min_run_time_s": 0.005, "bandwidth_mib": 1}


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
    # numpy + torch, 2 dtypes, one copy row + one matmul row per shape
    assert len(cpu_table) == 2 * 2 * (1 + len(TINY))
    assert not cpu_table.duplicated(KEY).any()
    assert set(cpu_table["backend"]) == {"numpy", "torch"}
    assert set(cpu_table["kind"]) == {"matmul", "copy"}
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
    assert (df["n_runs"] >= 1).all() and (df["number_per_run"] >= 1).all()
    assert (df["threads"] == 2).all()


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
    # torch only; per dtype one copy row + matmul/h2d/d2h per shape
    assert len(df) == 2 * (1 + 3 * 2)
    assert not df.duplicated(KEY).any()
    assert set(df["backend"]) == {"torch"}
    assert set(df["kind"]) == {"copy", "matmul", "h2d", "d2h"}
    assert (df["status"] == "unavailable").all()
    assert df["reason"].str.startswith("CUDA unavailable: torch.cuda.is_available() is False").all()
    for col in ["time_s_median", "time_s_iqr", "gflop_s", "gb_s", "bandwidth_gb_s",
                "bandwidth_share"]:
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


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_stage_measures_everything():
    df = run_matmul_stage("cuda", DTYPES, TINY, threads=1, min_run_time_s=0.01,
                          bandwidth_mib=16)
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * (1 + 3 * len(TINY))
    assert (df["status"] == "ok").all(), df.loc[df["status"] != "ok", "reason"].tolist()
    assert (df["time_s_median"] > 0).all()
    assert df["method"].str.contains("torch.cuda.synchronize()", regex=False).all()
    copies = df[df["kind"] == "copy"]
    assert np.allclose(df["bandwidth_gb_s"], copies["gb_s"].max())
