"""Whether CUDA can run: the driver probe, torch's answer behind it, and the cheap CUDA jobs.

Without a GPU driver a CUDA job has nothing to do; it must then write its "unavailable" tables
without importing torch or scikit-learn, and those tables must be the ones the torch path
writes (only the reason, which says what was checked, differs).
"""

from __future__ import annotations

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpbench import devices
from mlpbench.contract import TRAIN
from mlpbench.grid import plan_shapes

REPO = Path(__file__).resolve().parents[1]
PREFIX = "CUDA unavailable: "
NO_DRIVER = (PREFIX + "no GPU driver on this machine (none of /proc/driver/nvidia, "
             "/dev/nvidiactl, /dev/nvidia[0-9]*, /dev/kfd, /dev/dxg, /dev/nvmap, "
             "/dev/nvhost-ctrl-gpu exists)")
DRIVER_FILES = ["proc/driver/nvidia/version", "dev/nvidiactl", "dev/nvidia0", "dev/nvidia12",
                "dev/kfd", "dev/dxg", "dev/nvmap", "dev/nvhost-ctrl-gpu"]


def _root_with(tmp_path: Path, *files: str) -> Path:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "proc" / "driver").mkdir(parents=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


# --------------------------------------------------------------------------- the probe


def test_linux_without_driver_files_has_no_cuda(tmp_path):
    root = _root_with(tmp_path, "dev/null", "dev/nvidia-caps-readme", "proc/driver/rtc")
    assert devices.no_driver_reason("linux", root) == NO_DRIVER


def test_a_missing_dev_or_proc_folder_means_no_driver(tmp_path):
    assert devices.no_driver_reason("linux", tmp_path / "nothing-here") == NO_DRIVER


@pytest.mark.parametrize("name", DRIVER_FILES)
def test_any_driver_file_leaves_the_answer_to_torch(tmp_path, name):
    assert devices.no_driver_reason("linux", _root_with(tmp_path, name)) is None


def test_macos_never_has_cuda(tmp_path):
    reason = devices.no_driver_reason("darwin", _root_with(tmp_path, "dev/nvidia0"))
    assert reason.startswith(PREFIX) and "macOS" in reason


def test_other_platforms_ask_torch(tmp_path):
    assert devices.no_driver_reason("win32", tmp_path) is None


def test_an_unreadable_folder_leaves_the_answer_to_torch(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    root = _root_with(tmp_path)
    monkeypatch.setattr(devices.os, "scandir", refuse)
    assert devices.no_driver_reason("linux", root) is None


def test_without_driver_the_reason_comes_without_torch(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(devices, "DRIVER_ROOT", _root_with(tmp_path))
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("torch was asked"))
    assert devices.cuda_unavailable_reason() == NO_DRIVER


@pytest.mark.parametrize("available", [False, True])
def test_with_a_driver_torch_decides(tmp_path, monkeypatch, available):
    import torch

    monkeypatch.setattr(devices, "DRIVER_ROOT", _root_with(tmp_path, "dev/nvidia0"))
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    reason = devices.cuda_unavailable_reason()
    if available:
        assert reason is None
    else:
        assert reason.startswith(PREFIX + "torch.cuda.is_available() is False")


def test_importing_devices_does_not_import_torch():
    code = "import sys, mlpbench.devices; print('torch' in sys.modules)"
    assert _python(code).stdout.strip() == "False"


# --------------------------------------------------------------------------- the CUDA jobs

MATMUL_CFG = {"dtypes": ["float32", "float64"], "min_run_time_s": 0.1, "min_samples": 5,
              "max_attempts": 3, "lesson_case": {"m": 1, "k": 6400, "n": 5000},
              "square": [256, 512], "gemv": [[800, 625]], "bandwidth_mib": 256}
EXPERIMENT = {"mode": "sweep", "baseline": {"epochs": 20, "width": 4, "depth": 1, "lr": 0.05},
              "epochs": [10, 20], "width": [4, 8], "depth": [1, 2], "lr": [0.05], "seeds": 3,
              "momentum": 0.0, "batch_size": None}
GRID = {"resolution": 5, "margin": 1.0}
DATASETS = ("toy", "blobs")


class _Files(list):
    """A job's outputs as Snakemake gives them: a list whose items are also named."""

    def __init__(self, **named: str):
        super().__init__(named.values())
        self.__dict__.update(named)


def _run_cuda_jobs(out: Path) -> None:
    """Run scripts/matmul.py and scripts/train.py (toy, blobs) for device cuda into ``out``,
    as Snakemake's ``script:`` directive runs them."""
    out = Path(out)
    m = out / "matmul"
    jobs = [("matmul.py", SimpleNamespace(
        output=_Files(table=str(m / "cuda.parquet"),
                      environment=str(m / "cuda.environment.parquet"),
                      samples=str(m / "cuda.samples.parquet")),
        log=[str(out / "logs" / "matmul.log")], params=SimpleNamespace(cfg=MATMUL_CFG),
        wildcards=SimpleNamespace(device="cuda"), threads=2))]
    for dataset in DATASETS:
        d = out / "train" / dataset
        jobs.append(("train.py", SimpleNamespace(
            output=_Files(**{t: str(d / f"{t}.parquet") for t in TRAIN}),
            log=[str(out / "logs" / f"train_{dataset}.log")],
            params=SimpleNamespace(cfg=EXPERIMENT, decision_grid=GRID),
            wildcards=SimpleNamespace(dataset=dataset, device="cuda"), threads=1)))
    for script, smk in jobs:
        for path in smk.output:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        runpy.run_path(str(REPO / "scripts" / script), init_globals={"snakemake": smk})


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def without_driver(tmp_path_factory) -> tuple[Path, dict[str, bool]]:
    """The three CUDA jobs run in a fresh process whose probe finds no driver; the tables it
    wrote and which heavy modules it loaded."""
    out = tmp_path_factory.mktemp("no-driver")
    empty = tmp_path_factory.mktemp("empty-root")
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "import mlpbench.devices as devices\n"
        f"devices.DRIVER_ROOT = Path({str(empty)!r})\n"
        "sys.platform = 'linux'\n"
        "from test_devices import _run_cuda_jobs\n"
        f"_run_cuda_jobs(Path({str(out)!r}))\n"
        "print(json.dumps({m: m in sys.modules for m in ('torch', 'sklearn')}))\n"
    )
    loaded = json.loads(_python(code).stdout.strip().splitlines()[-1])
    return out, loaded


@pytest.fixture(scope="module")
def with_torch(tmp_path_factory) -> Path:
    """The same jobs in this process, where a driver file exists and torch says no CUDA."""
    import torch

    out = tmp_path_factory.mktemp("torch-says-no")
    root = _root_with(tmp_path_factory.mktemp("driver-root"), "dev/nvidia0")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(devices, "DRIVER_ROOT", root)
        mp.setattr(devices.sys, "platform", "linux")
        mp.setattr(torch.cuda, "is_available", lambda: False)
        _run_cuda_jobs(out)
    return out


def test_cuda_jobs_without_driver_import_neither_torch_nor_sklearn(without_driver):
    _, loaded = without_driver
    assert loaded == {"torch": False, "sklearn": False}


def _tables(out: Path) -> dict[str, tuple[pa.Schema, pd.DataFrame]]:
    return {str(p.relative_to(out)): (pq.read_schema(p), pd.read_parquet(p))
            for p in sorted(out.rglob("*.parquet"))}


def _fields(schema: pa.Schema) -> list[tuple]:
    return [(f.name, f.type, f.nullable, f.metadata) for f in schema]


# The readings of the moment (time, load, clocks, thread pools loaded, torch's threads: 0
# without torch) differ between any two runs; who ran, where and with how many threads do not.
ENVIRONMENT_KEY = ["host", "stage", "dataset", "device", "moment", "threads", "thread_env_json",
                   "gpu_source", "gpu_reason"]


def test_cuda_jobs_write_the_tables_of_the_torch_path(without_driver, with_torch):
    cheap, full = _tables(without_driver[0]), _tables(with_torch)
    assert sorted(cheap) == sorted(full)
    assert len(cheap) == 3 + len(DATASETS) * len(TRAIN)
    for name, (schema, table) in cheap.items():
        other_schema, other = full[name]
        assert _fields(schema) == _fields(other_schema), name  # columns and their types
        if name.endswith("environment.parquet"):
            assert len(table) == len(other) == 2, name
            pd.testing.assert_frame_equal(table[ENVIRONMENT_KEY], other[ENVIRONMENT_KEY])
            assert table["torch_num_threads"].isna().all(), name  # torch never loaded
            continue
        if "reason" in table and len(table):
            assert (table["status"] == "unavailable").all(), name
            assert set(table["reason"]) == {NO_DRIVER}, name
            assert other["reason"].str.startswith(
                PREFIX + "torch.cuda.is_available() is False").all(), name
            table, other = table.drop(columns="reason"), other.drop(columns="reason")
        pd.testing.assert_frame_equal(table, other, check_exact=True)
    # the unavailable rows are there, one per shape and per matmul measurement
    cheap = {name: table for name, (_, table) in cheap.items()}
    assert len(cheap["train/blobs/metrics.parquet"]) == len(plan_shapes(EXPERIMENT)) == 3
    assert [c for c in cheap["train/blobs/decision.parquet"].columns if c.startswith("logit_")] \
        == ["logit_0", "logit_1", "logit_2", "logit_3"]  # blobs: 4 centres, without the data
    assert len(cheap["matmul/cuda.parquet"]) > 0
