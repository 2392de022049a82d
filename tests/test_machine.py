"""The machine record: every key, JSON-safe, honest about what is missing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import datetime, timedelta, timezone

import pytest
import torch

from mlpbench.config import config_hash
from mlpbench.devices import cuda_unavailable_reason
from mlpbench.machine import KEYS, collect

CONFIG = {"matmul": {"dtypes": ["float32", "float64"], "threads": 2}, "machine_id": None}


@pytest.fixture(scope="module")
def record() -> dict:
    return collect(config_hash(CONFIG), CONFIG)


def test_record_has_every_key_and_is_plain_json(record):
    assert set(record) == set(KEYS)
    # plain json.dumps (no default=str): every value is a JSON type
    assert json.loads(json.dumps(record)) == record
    assert record["config_hash"] == config_hash(CONFIG)
    assert record["config"] == CONFIG


def test_cpu_and_core_counts(record):
    assert isinstance(record["cpu_model"], str) and record["cpu_model"]
    assert record["logical_cores"] == os.cpu_count()
    assert 1 <= record["physical_cores"] <= record["logical_cores"]
    assert 1 <= record["usable_cores"] <= record["logical_cores"]


def test_blas_of_numpy_and_torch(record):
    numpy_blas = record["blas"]["numpy"]
    for key in ("internal_api", "version", "architecture"):
        assert key in numpy_blas
    assert numpy_blas["internal_api"] in {"openblas", "mkl", "blis", "accelerate", "flexiblas"}
    torch_blas = record["blas"]["torch"]
    assert torch_blas["blas_info"]  # e.g. "mkl" or "open"
    assert torch_blas["mkldnn_available"] == torch.backends.mkldnn.is_available()


def test_record_keeps_static_facts_only(monkeypatch):
    """Threads and thread variables belong to the timing jobs (mlpbench.environment): the record
    of the job that writes it must not look like the benchmarks' threads."""
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    torch.set_num_threads(torch.get_num_threads())
    rec = collect(config_hash({}))
    text = json.dumps(rec)
    assert "num_threads" not in text and "OMP_NUM_THREADS" not in text
    assert "threads" not in rec and "blas_env" not in rec
    assert os.environ["OMP_NUM_THREADS"] == "7"  # read, never changed


def test_versions_and_timestamp(record):
    versions = record["versions"]
    for key in ("python", "torch", "numpy", "pandas", "snakemake", "sklearn", "matplotlib"):
        assert key in versions
    assert versions["torch"] == torch.__version__
    created = datetime.fromisoformat(record["created_utc"])
    assert created.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - created) < timedelta(minutes=5)


def test_gpu_absent_is_said_in_words(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    gpu = collect(config_hash({}))["gpu"]
    assert gpu["available"] is False
    assert gpu["name"] == "none" and gpu["driver"] == "none" and gpu["memory_gib"] is None
    # the one reason mlpbench.devices gives here: no GPU driver, or torch's answer behind it
    assert gpu["reason"] == cuda_unavailable_reason()
    assert gpu["reason"].startswith("CUDA unavailable: ")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_gpu_present_is_described(record):
    gpu = record["gpu"]
    assert gpu["available"] is True and gpu["reason"] == ""
    assert gpu["name"] == torch.cuda.get_device_name(0)
    assert gpu["memory_gib"] > 0
    assert gpu["cuda_version"] == torch.version.cuda


def test_git_commit_none_outside_git(tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))  # don't look above
    rec = collect(config_hash({}), repo_dir=tmp_path)
    assert rec["git_commit"] is None and rec["git_dirty"] is None


def test_git_missing_does_not_crash(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git, no nvidia-smi on PATH
    assert collect(config_hash({}))["git_commit"] is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
def test_git_commit_of_a_repository(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t",
                               "-c", "user.email=t@example.org", *args],
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    (tmp_path / "f.txt").write_text("a\n")
    git("add", "f.txt")
    git("commit", "-q", "-m", "one")
    rec = collect(config_hash({}), repo_dir=tmp_path)
    assert rec["git_commit"] == git("rev-parse", "HEAD")
    assert rec["git_dirty"] is False
    (tmp_path / "f.txt").write_text("b\n")
    assert collect(config_hash({}), repo_dir=tmp_path)["git_dirty"] is True


def test_config_hash_is_canonical():
    same = {"machine_id": None, "matmul": {"threads": 2, "dtypes": ["float32", "float64"]}}
    assert config_hash(CONFIG) == config_hash(same)
    assert len(config_hash(CONFIG)) == 64
    assert config_hash(CONFIG) != config_hash(CONFIG | {"machine_id": "x"})
    reordered = {"matmul": {"dtypes": ["float64", "float32"], "threads": 2}, "machine_id": None}
    assert config_hash(CONFIG) != config_hash(reordered)  # list order is meaningful


def test_mismatched_hash_is_rejected():
    with pytest.raises(ValueError, match=r"^config_hash: got 'abc'; allowed: the hash"):
        collect("abc", CONFIG)


def test_thread_pools_in_a_fixed_order_whatever_the_load_order(monkeypatch):
    import mlpbench.machine as machine

    loaded = machine.threadpool_info()
    fake = [  # two BLAS and an OpenMP runtime, as a process that imported scipy might hold
        {"user_api": "openmp", "internal_api": "openmp", "prefix": "libgomp",
         "filepath": "/x/torch/lib/libgomp.so.1", "version": None, "num_threads": 2},
        {"user_api": "blas", "internal_api": "openblas", "prefix": "libscipy_openblas",
         "filepath": "/x/scipy.libs/libscipy_openblas.so", "version": "0.3.27",
         "num_threads": 2, "architecture": "Haswell", "threading_layer": "pthreads"},
        {"user_api": "blas", "internal_api": "openblas", "prefix": "libscipy_openblas",
         "filepath": "/x/numpy.libs/libscipy_openblas64_.so", "version": "0.3.31",
         "num_threads": 2, "architecture": "SkylakeX", "threading_layer": "pthreads"},
    ]
    records = []
    for order in (fake, fake[::-1], [fake[1], fake[0], fake[2]]):
        monkeypatch.setattr(machine, "threadpool_info", lambda order=order: list(order))
        records.append(collect(config_hash({}))["blas"])
    assert records[0] == records[1] == records[2]
    pools = records[0]["threadpools"]
    assert [(p["user_api"], p["filepath"]) for p in pools] == [
        ("blas", "/x/numpy.libs/libscipy_openblas64_.so"),
        ("blas", "/x/scipy.libs/libscipy_openblas.so"),
        ("openmp", "/x/torch/lib/libgomp.so.1"),
    ]
    assert records[0]["numpy"]["filename"] == "libscipy_openblas64_.so"
    # the real list, read twice, gives the same record
    monkeypatch.setattr(machine, "threadpool_info", lambda: list(loaded[::-1]))
    reversed_blas = collect(config_hash({}))["blas"]["threadpools"]
    monkeypatch.setattr(machine, "threadpool_info", lambda: list(loaded))
    assert collect(config_hash({}))["blas"]["threadpools"] == reversed_blas
