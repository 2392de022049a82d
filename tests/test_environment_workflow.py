"""Each timing job records the threads it really ran with, and the plan does not depend on
--cores: the real pipeline on the tiny config, with --set-threads and an exported
OMP_NUM_THREADS that the jobs must not take for their own."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from workflow_helpers import TINY, copy_pipeline

# The config asks for 2 matmul threads and 1 training thread; the command line overrides both.
CONFIG = ["--configfile", "tiny.yaml", "--config", "matmul={threads: 2}"]
SET_THREADS = ["--set-threads", "matmul=1", "train=2"]


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "7"}
    return subprocess.run([sys.executable, "-m", "snakemake", *CONFIG, *args], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work = copy_pipeline(tmp_path_factory.mktemp("environment"))
    shutil.copy(TINY, work / "tiny.yaml")
    result = snakemake(work, "--cores", "2", *SET_THREADS)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work


def test_matmul_records_the_threads_set_on_the_command_line(run):
    table = pd.read_parquet(run / "results" / "matmul" / "cpu.parquet")
    assert set(table["threads"]) == {1}
    env = pd.read_parquet(run / "results" / "matmul" / "cpu.environment.parquet")
    assert list(env["moment"]) == ["before", "after"]
    assert set(env["threads"]) == {1} and set(env["torch_num_threads"]) == {1}
    assert set(env["blas_num_threads"]) == {1}
    # Snakemake sets the thread variables from the job's threads, over the exported 7.
    for var in ("omp_num_threads", "mkl_num_threads", "openblas_num_threads"):
        assert set(env[var]) == {"1"}, var
    assert json.loads(env["thread_env_json"][0])["OMP_NUM_THREADS"] == "1"
    # The CUDA job reads the GPU's state, or says why it could not.
    cuda = pd.read_parquet(run / "results" / "matmul" / "cuda.environment.parquet")
    for _, row in cuda.iterrows():
        if row["gpu_reason"]:
            assert pd.isna(row["gpu_source"]) and pd.isna(row["gpu_temperature_c"])
        else:
            assert row["gpu_source"] in ("nvml", "nvidia-smi")
            assert pd.notna(row["gpu_sm_clock_mhz"])
    assert set(env["gpu_reason"]) == {"not a CUDA job"}


def test_training_records_the_threads_set_on_the_command_line(run):
    for dataset in ("toy", "blobs"):
        timings = pd.read_parquet(run / "results" / "train" / dataset / "cpu" / "timings.parquet")
        assert set(timings["threads"]) == {2}
        env = pd.read_parquet(run / "results" / "train" / dataset / "cpu" / "environment.parquet")
        assert set(env["threads"]) == {2} and set(env["torch_num_threads"]) == {2}
        assert set(env["omp_num_threads"]) == {"2"}
        assert set(env["dataset"]) == {dataset}


def test_machine_record_holds_no_thread_counts(run):
    record = json.loads((run / "results" / "machine" / "test-machine.json").read_text())
    text = json.dumps(record)
    assert "threads" not in record and "blas_env" not in record
    assert "num_threads" not in text and "OMP_NUM_THREADS" not in text


def test_environment_summary_has_every_timing_job(run):
    env = pd.read_parquet(run / "results" / "tables" / "environment.parquet")
    jobs = set(map(tuple, env[["stage", "device"]].fillna("").values))
    assert jobs == {("matmul", "cpu"), ("matmul", "cuda"), ("train", "cpu"), ("train", "cuda")}
    assert len(env) == 2 * (2 + 2 * 2)  # before and after: 2 matmul jobs, 2 x 2 train jobs
    report = (run / "results" / "report" / "report.html").read_text()
    assert "OMP_NUM_THREADS=1" in report and "OMP_NUM_THREADS=2" in report


def test_training_timings_have_windows_and_a_spread(run):
    timings = pd.read_parquet(run / "results" / "train" / "toy" / "cpu" / "timings.parquet")
    assert (timings["n_windows"] >= 2).all()
    assert (timings["epochs_trained"] == timings["n_windows"] * timings["epochs_per_window"]).all()
    assert (timings["time_per_epoch_s_min"] <= timings["time_per_epoch_s"]).all()
    assert (timings["time_per_epoch_s"] <= timings["time_per_epoch_s_max"]).all()
    assert timings["time_per_epoch_s_iqr"].notna().all()


@pytest.mark.parametrize("cores", [[], ["--cores", "1"], ["--cores", "2"]])
def test_dry_run_after_a_complete_run_plans_nothing(run, cores):
    result = snakemake(run, "-n", *cores)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stdout + result.stderr, result.stdout[-3000:]
