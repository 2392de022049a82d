"""The real pipeline, run by snakemake on the tiny config in a temporary copy of the workflow."""

from __future__ import annotations

import json
import os
import re
import shutil

import pandas as pd
import pytest
import torch
import yaml

from mlpbench.contract import TRAIN_TABLES
from mlpbench.rendering import quarto_version
from workflow_helpers import REPO, TINY, run_tiny, snakemake

CUDA = torch.cuda.is_available()
QUARTO_PROBLEM = quarto_version()[1]
needs_quarto = pytest.mark.skipif(QUARTO_PROBLEM is not None,
                                  reason=f"Quarto render path not exercised: {QUARTO_PROBLEM}")
OLD_QUARTO = "1.3.450"


def _keep_report(work, name: str, result) -> dict:
    """Copy the report and its log aside: a later re-render replaces them."""
    kept = work / "kept" / name
    kept.mkdir(parents=True)
    shutil.copy(work / "results" / "report" / "report.html", kept / "report.html")
    shutil.copy(work / "logs" / "report.log", kept / "report.log")
    (kept / "terminal.txt").write_text(result.stdout + result.stderr, encoding="utf-8")
    return {"html": (kept / "report.html").read_text(encoding="utf-8"),
            "log": (kept / "report.log").read_text(encoding="utf-8"),
            "terminal": result.stdout + result.stderr}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    work, result = run_tiny(tmp_path_factory.mktemp("pipeline"))
    _keep_report(work, "auto", result)
    return work


@pytest.fixture(scope="module")
def auto_report(run):
    """The full run's report: Quarto where a usable one is on PATH, else the fallback."""
    kept = run / "kept" / "auto"
    return {name: (kept / file).read_text(encoding="utf-8")
            for name, file in (("html", "report.html"), ("log", "report.log"),
                               ("terminal", "terminal.txt"))}


@pytest.fixture(scope="module")
def fallback_report(run, tmp_path_factory):
    """The report step alone again, with a Quarto too old for percent scripts first on PATH."""
    bin_dir = tmp_path_factory.mktemp("old-quarto")
    fake = bin_dir / "quarto"
    fake.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo {OLD_QUARTO} && exit 0\n"
                    "echo 'this Quarto cannot render report.py' >&2; exit 1\n")
    fake.chmod(0o755)
    (run / "logs" / "report.log").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        result = snakemake(run, "--cores", "2", "--configfile", "tiny.yaml", "--forcerun",
                           "report", "--until", "report")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return _keep_report(run, "fallback", result)


def test_declared_names_match_the_library():
    from mlpbench import contract
    from mlpbench.figures import FIGURES

    common = (REPO / "workflow" / "rules" / "common.smk").read_text()
    assert re.search(r"^from mlpbench\.contract import FIGURES, MACHINE_FIGURES, SUMMARY_TABLES, "
                     r"TRAIN_TABLES$", common, re.M)
    assert list(FIGURES) == list(contract.FIGURES)
    captions = {p.stem for p in (REPO / "workflow" / "report").glob("*.rst")}
    assert set(contract.FIGURES) <= captions


def test_noop_rerun_does_nothing(run):
    result = snakemake(run, "--cores", "2", "--configfile", "tiny.yaml")
    assert result.returncode == 0
    assert "Nothing to be done" in result.stdout + result.stderr


def test_snakemake_report(run):
    result = snakemake(run, "--configfile", "tiny.yaml", "--report", "results/snakemake-report.html")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (run / "results" / "snakemake-report.html").stat().st_size > 10_000


def test_machine_record(run):
    record = json.loads((run / "results" / "machine" / "test-machine.json").read_text())
    for key in ("cpu_model", "physical_cores", "logical_cores", "blas", "gpu", "versions",
                "git_commit", "config_hash"):
        assert key in record
    # Static facts only: each timing job records its own threads (tests/test_environment_workflow)
    assert "threads" not in record
    assert record["gpu"]["available"] is CUDA
    assert {"python", "torch", "numpy", "pandas", "snakemake"} <= set(record["versions"])


def test_matmul_tables(run):
    cpu = pd.read_parquet(run / "results" / "matmul" / "cpu.parquet")
    assert (cpu["status"] == "ok").all()
    assert set(cpu["backend"]) == {"numpy", "torch"} and set(cpu["dtype"]) == {"float32", "float64"}
    mm = cpu[cpu["kind"] == "matmul"]
    # lesson case + 2 square + 1 gemv, per backend x dtype
    assert len(mm) == 4 * 2 * 2
    assert set(map(tuple, mm[["m", "k", "n"]].drop_duplicates().values)) == {
        (1, 640, 500), (64, 64, 64), (128, 128, 128), (1, 256, 128)}
    assert (cpu["threads"] == 1).all()
    expected = 2 * mm["m"] * mm["k"] * mm["n"] / mm["time_s_median"] / 1e9
    assert (abs(mm["gflop_s"] - expected) <= 1e-9 * expected).all()
    assert (cpu[cpu["kind"] == "copy"]["gb_s"] > 0).all()

    cuda = pd.read_parquet(run / "results" / "matmul" / "cuda.parquet")
    if CUDA:
        assert (cuda["status"] == "ok").all()
    else:
        assert (cuda["status"] == "unavailable").all()
        assert cuda["reason"].str.contains("CUDA unavailable").all()
        assert {"h2d", "d2h", "matmul"} <= set(cuda["kind"])


def test_training_tables(run):
    base = run / "results" / "train"
    toy = pd.read_parquet(base / "toy" / "cpu" / "metrics.parquet")
    # Sweep from the baseline (20 epochs, width 4, depth 1): the baseline shape at 20 and 50
    # epochs, width 8 and depth 2 at the baseline's 20 epochs; 3 seeds each.
    shapes = toy.groupby(["width", "depth"])["epochs"].unique().map(sorted).to_dict()
    assert shapes == {(4, 1): [20, 50], (8, 1): [20], (4, 2): [20]}
    assert len(toy) == (2 + 1 + 1) * 3 and (toy["status"] == "ok").all()
    assert toy["test_acc"].between(0, 1).all()

    blobs = pd.read_parquet(base / "blobs" / "cpu" / "metrics.parquet")
    # Full grid: 2 widths x 2 depths x 2 epochs x 2 lrs x 2 seeds.
    assert len(blobs) == 32
    assert sorted(blobs["lr"].unique()) == [0.01, 0.1] and sorted(blobs["seed"].unique()) == [0, 1]

    losses = pd.read_parquet(base / "toy" / "cpu" / "losses.parquet")
    last = losses[(losses.width == 4) & (losses.depth == 1) & (losses.epoch == 50)]
    assert len(last) == 3
    assert losses.groupby(["width", "depth", "seed"])["epoch"].max().to_dict()[(4, 1, 0)] == 50

    for dataset in ("toy", "blobs"):
        metrics = pd.read_parquet(base / dataset / "cuda" / "metrics.parquet")
        if CUDA:
            assert (metrics["status"] == "ok").all()
        else:
            assert (metrics["status"] == "unavailable").all()
            assert metrics["reason"].str.contains("CUDA unavailable").all()


def test_cpu_training_rerun_is_byte_identical(run):
    out = run / "results" / "train" / "toy" / "cpu"
    measured = ("timings", "environment")  # differ between runs by nature
    before = {t: (out / f"{t}.parquet").read_bytes() for t in TRAIN_TABLES if t not in measured}
    result = snakemake(run, "--cores", "2", "--configfile", "tiny.yaml", "--forcerun", "train",
                       "--until", "train")
    assert result.returncode == 0, result.stderr[-2000:]
    for table, data in before.items():
        assert (out / f"{table}.parquet").read_bytes() == data, table


def test_aggregated_tables_and_figures(run):
    tables = run / "results" / "tables"
    summary = pd.read_parquet(tables / "train_summary.parquet")
    toy_cpu = summary[(summary.dataset == "toy") & (summary.device == "cpu")]
    assert len(toy_cpu) == 4 and (toy_cpu["n_seeds"] == 3).all()
    assert pd.read_csv(tables / "train_summary.csv").shape == summary.shape
    matmul = pd.read_parquet(tables / "matmul.parquet")
    lesson_np64 = matmul[(matmul.case == "lesson") & (matmul.backend == "numpy")
                         & (matmul.dtype == "float64") & (matmul.kind == "matmul")]
    # the reference against itself: 1, unless the guard flagged the row (then no speed-up)
    expected = [float("nan")] if lesson_np64["noisy"].item() else [1.0]
    assert lesson_np64["speedup_vs_numpy_float64"].tolist() == pytest.approx(expected,
                                                                               nan_ok=True)
    assert (run / "results" / "matmul" / "cpu.samples.parquet").exists()
    for png in (run / "results" / "figures").glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((run / "results" / "figures").glob("*.png"))) == 8


def _assert_self_contained(html: str) -> None:
    assert html.count("data:image/png;base64,") >= 8
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert "test-machine" in html  # the config's machine_id
    if not CUDA:
        assert "CUDA unavailable" in html or "CUDA was unavailable" in html


def test_report_is_self_contained(auto_report):
    _assert_self_contained(auto_report["html"])
    assert "nbconvert" in auto_report["html"] or "Quarto" in auto_report["html"]


def test_no_kernel_noise_on_the_terminal(auto_report, fallback_report):
    # ipykernel's "Kernel is running over TCP without encryption" and the like.
    for report in (auto_report, fallback_report):
        assert "IPKernelApp" not in report["terminal"]
        assert "without encryption" not in report["terminal"]


@needs_quarto
def test_report_is_rendered_by_quarto(run, auto_report):
    html, log = auto_report["html"], auto_report["log"]
    _assert_self_contained(html)
    assert '<meta name="generator" content="quarto-' in html
    assert re.search(r"Rendered by Quarto \d+\.\d+", html)
    assert "Quarto was not used" not in html
    # Quarto's own output is kept in the job's log, as plain text.
    assert "Output created: report.html" in log and "\x1b" not in log
    assert not (run / "results" / "report" / ".report.quarto").exists()


def test_fallback_renders_and_says_why_quarto_was_not_used(fallback_report):
    html, log = fallback_report["html"], fallback_report["log"]
    _assert_self_contained(html)
    assert "the fallback renderer: jupytext" in html
    reason = f"is Quarto {OLD_QUARTO}, older than 1.4, the first Quarto that renders a " \
             f"percent-format .py script"
    assert "Quarto not used: " in log and reason in log
    assert "Quarto was not used: " in html and reason in html
    assert "IPKernelApp" not in log  # the fallback's kernel talks IPC: no TCP warning


def test_changed_config_rebuilds_only_what_it_must_and_never_reads_stale_files(run, tmp_path):
    # Drop blobs from the config: the aggregate must not pick up the old blobs files.
    config = yaml.safe_load(TINY.read_text())
    config["train"]["datasets"] = ["toy"]
    (run / "toy_only.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(run, "--cores", "2", "--configfile", "toy_only.yaml", "--until", "aggregate",
                       "--forcerun", "aggregate")
    assert result.returncode == 0, result.stderr[-2000:]
    summary = pd.read_parquet(run / "results" / "tables" / "train_summary.parquet")
    assert set(summary["dataset"]) == {"toy"}
    assert (run / "results" / "train" / "blobs" / "cpu" / "metrics.parquet").exists()


def test_bad_config_after_a_run_loses_nothing(run):
    metrics = run / "results" / "train" / "toy" / "cpu" / "metrics.parquet"
    before = metrics.read_bytes(), metrics.stat().st_mtime_ns
    (run / "bad.yaml").write_text("train:\n  devices: [gpu]\n")
    result = snakemake(run, "--cores", "2", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert "invalid config at 'train.devices[0]'" in result.stdout + result.stderr
    assert (metrics.read_bytes(), metrics.stat().st_mtime_ns) == before
