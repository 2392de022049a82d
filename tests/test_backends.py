"""The matmul backend registry: entries drive the stage, a new entry is timed like the others."""

from __future__ import annotations

import math

import subprocess
import sys

import numpy as np
import pytest
import torch

from mlpbench import backends
from mlpbench.backends import Backend, OperandSpec
from mlpbench.matmul import COLUMNS, run_matmul_stage

TINY = [("lesson", 1, 64, 40), ("square", 16, 16, 16)]
# The guard against disturbed timings is off (infinite limit): on a busy machine it would flag
# rows, and noisy rows set no roof; tests/test_matmul.py tests the guard.
FAST = {"min_run_time_s": 0.005, "bandwidth_mib": 1, "wait_limit_threads": math.inf}


@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry that a test may add to; the real one is back afterwards."""
    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))
    return backends


def _einsum_operands(spec: OperandSpec) -> dict:
    return {**backends.get("numpy").operands(spec), "einsum": np.einsum}


def _entry(**changes) -> Backend:
    """A CPU backend that multiplies with np.einsum: any library the stage can time."""
    fields = {
        "name": "einsum", "label": "NumPy einsum", "module": "numpy", "devices": ("cpu",),
        "statements": {"matmul": "einsum('mk,kn->mn', x, y, out=z)", "copy": "dst[...] = src"},
        "operands": _einsum_operands, "unavailable": lambda device: None,
        "sync": lambda device: None, "threads": backends.get("numpy").threads,
        "version": lambda: np.__version__,
    }
    return Backend(**(fields | changes))


def test_the_lessons_backends_and_where_they_run():
    assert [b.name for b in backends.backends()] == ["numpy", "torch"]
    assert backends.by_device() == {"cpu": ("numpy", "torch"), "cuda": ("torch",)}
    assert backends.devices() == ("cpu", "cuda")
    assert backends.label("numpy") == "NumPy" and backends.label("torch") == "torch"
    assert backends.versions() == {"numpy": np.__version__, "torch": torch.__version__}


def test_importing_the_registry_imports_no_array_library():
    code = ("import sys, mlpbench.backends as b; b.devices(); "
            "print(sorted(m for m in ('numpy', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_registered_backend_is_timed_like_the_others(registry):
    registry.register(_entry())
    df = run_matmul_stage("cpu", ["float64"], TINY, threads=1, host="h", **FAST)
    assert list(df.columns) == COLUMNS
    assert list(dict.fromkeys(df["backend"])) == ["numpy", "torch", "einsum"]
    ours = df[df["backend"] == "einsum"]
    # the lesson case warm and cold (caches emptied before each call), then the square
    assert list(ours["kind"]) == ["copy", "matmul", "matmul_cold", "matmul"]
    assert (ours["status"] == "ok").all(), ours["reason"].tolist()
    assert ours["method"].str.contains("einsum('mk,kn->mn', x, y, out=z)", regex=False).sum() == 3
    assert ours["method"].str.contains("1 thread (torch.set_num_threads", regex=False).all()
    # every row of the device is set against the best copy, the new backend's included
    assert np.allclose(ours["bandwidth_gb_s"], df.loc[df["kind"] == "copy", "gb_s"].max())


def test_a_backend_whose_library_is_missing_gives_unavailable_rows(registry):
    registry.register(_entry(name="cupyish", module="no_such_array_library", extra="cupyish"))
    df = run_matmul_stage("cpu", ["float32"], TINY, threads=1, **FAST)
    ours = df[df["backend"] == "cupyish"]
    assert len(ours) == 1 + len(TINY) + 1  # the cold lesson case too
    assert (ours["status"] == "unavailable").all()
    assert (ours["reason"] == "NumPy einsum unavailable: module 'no_such_array_library' is not "
                              "installed (pip install 'mlpbench[cupyish]')").all()
    assert ours["time_s_median"].isna().all()
    assert (df.loc[df["backend"] != "cupyish", "status"] == "ok").all()
    assert registry.versions()["cupyish"] is None


def test_transfers_are_timed_only_for_backends_that_state_them(registry, monkeypatch):
    registry.register(_entry(name="gpuish", devices=("cpu", "cuda")))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    df = run_matmul_stage("cuda", ["float32"], TINY, threads=1, **FAST)
    assert set(df.loc[df["backend"] == "torch", "kind"]) == {
        "copy", "matmul", "h2d", "d2h", "h2d_pinned", "matmul_nosync", "matmul_tf32",
        "matmul_cold"}
    assert set(df.loc[df["backend"] == "gpuish", "kind"]) == {"copy", "matmul", "matmul_cold"}
    # this entry says it runs anywhere it is installed: its cuda rows are measured, except the
    # cold one, whose caches torch (without CUDA here) cannot empty: an error, with the reason
    ours = df[df["backend"] == "gpuish"].set_index("kind")
    assert (ours.loc[["copy", "matmul"], "status"] == "ok").all()
    assert ours.loc["matmul_cold", "status"] == "error"
    assert "CUDA" in ours.loc["matmul_cold", "reason"]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "numpy"}, r"^name: got 'numpy'; allowed: a name not yet registered"),
        ({"name": "two words"}, r"^name: got 'two words'; allowed: a Python identifier"),
        ({"devices": ("tpu",)}, r"^einsum\.devices: got \['tpu'\]; allowed: .*'cpu', 'cuda'"),
        ({"devices": ()}, r"^einsum\.devices: got \[\]"),
        ({"statements": {"matmul": "x @ y"}}, r"^einsum\.statements: got kinds \['matmul'\]"),
        ({"statements": {"matmul": "m", "copy": "c", "fft": "f"}}, r"^einsum\.statements: "),
    ],
)
def test_register_rejects_a_bad_entry_naming_the_field(registry, changes, message):
    with pytest.raises(ValueError, match=message):
        registry.register(_entry(**changes))
    assert [b.name for b in registry.backends()] == ["numpy", "torch"]


def test_unknown_backend_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"^backend: got 'jax'; allowed: numpy, torch$"):
        backends.get("jax")
