"""The report's epoch-time and environment passages: medians with their spread, differences
only where the windows allow them, and each timing job's own threads."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from mlpbench.findings import findings_table
from mlpbench.narrative import Story
from mlpbench.present import spread_time
from mlpbench.tables import build_tables
from synthetic_results import load_points, write_inputs


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    inputs = write_inputs(tmp_path_factory.mktemp("results"), cuda=False)
    return build_tables(inputs.matmul_files, inputs.train_dirs, inputs.machine_files,
                        train_cfg=inputs.train_cfg, points_loader=load_points)


def with_times(tables, change) -> Story:
    """A Story of ``tables`` whose epoch_time table went through ``change`` first."""
    t = dict(tables)
    t["epoch_time"] = change(tables["epoch_time"].copy())
    t["findings"] = findings_table(t)
    return Story(t)


def test_spread_time():
    assert spread_time(5.12e-4, 4.98e-4, 5.3e-4) == "512 µs (498–530 µs)"
    assert spread_time(9.9e-4, 9.8e-4, 1.2e-3) == "990 µs (980 µs–1.2 ms)"
    assert spread_time(5e-4, math.nan, math.nan) == "500 µs, one window"
    assert spread_time(math.nan, 1, 2) == "n/a"


def test_table_shows_median_and_range(tables):
    table = Story(tables).epoch_time_table()
    column = "CPU ensemble, per epoch, median (range)"
    assert column in table
    toy = table[(table["dataset"] == "toy") & (table["width"] == 4) & (table["depth"] == 1)]
    assert toy[column].iloc[0] == "240 µs (228–252 µs)"


def test_overlapping_windows_are_not_called_different(tables):
    def overlap(df):  # width 8's windows now reach down into width 4's
        wide = (df["width"] == 8) & (df["status"] == "ok")
        df.loc[wide, "time_per_epoch_s_min"] = df.loc[wide, "time_per_epoch_s"] * 0.5
        return df

    story = with_times(tables, overlap)
    text = " ".join(story.epoch_step_sentences())
    assert "width 4 → 8" in text and "within the spread of the timed windows" in text.lower()
    toy = [s for s in story.epoch_step_sentences() if s.startswith("Toy data, CPU")][0]
    assert "width 4 → 8 (slower" not in toy and "depth 1 → 2 (slower" in toy


def test_single_windows_are_never_compared(tables):
    def one_window(df):
        df[["time_per_epoch_s_min", "time_per_epoch_s_max", "time_per_epoch_s_iqr"]] = math.nan
        df["n_windows"] = df["n_windows"].clip(upper=1)
        return df

    story = with_times(tables, one_window)
    steps = story.find("epoch_time_step")
    assert steps and {r["verdict"] for r in steps} == {"no_spread"}
    assert story.one("ensemble_gain")["verdict"] == "within_spread"
    assert "one window" in story.epoch_time_table().iloc[0, 4]


def test_environment_table_shows_each_jobs_threads(tables):
    jobs = Story(tables).environment_tables()[-1]
    assert list(jobs["job"]) == ["matmul cpu", "matmul cuda", "train blobs cpu",
                                 "train blobs cuda", "train toy cpu", "train toy cuda"]
    matmul = jobs[jobs["job"] == "matmul cpu"].iloc[0]
    assert matmul["threads (job)"] == "2" and "OMP_NUM_THREADS=2" in matmul["thread variables"]
    train = jobs[jobs["job"] == "train toy cpu"].iloc[0]
    assert train["torch threads"] == "1" and train["load (1 min)"] == "0.5 → 1"
    assert jobs[jobs["job"] == "train toy cuda"].iloc[0]["GPU"] == "nvidia-smi: not found"


def test_environment_absent_is_said(tables):
    t = {k: v for k, v in tables.items() if k != "environment"}
    jobs = Story(t).environment_tables()[-1]
    assert list(jobs["job"]) == ["no environment recorded"]
    assert isinstance(jobs, pd.DataFrame)
