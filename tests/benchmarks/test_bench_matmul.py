"""Matmul benchmarks: the lesson's GEMV and one GEMM, float32, NumPy and torch (CPU, CUDA).

The timed statements are the matmul stage's own (``np.matmul(x, y, out=z)``,
``torch.matmul(x, y, out=z)``), with operands created and filled before timing. On CUDA the
timed function synchronises the device, so every round contains the finished kernel, not
just its launch. ``extra_info`` carries GFLOP/s (2*m*k*n / t) and GB/s (operand bytes / t,
as the stage counts them).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

SHAPES = {  # name -> (m, k, n)
    "gemv_lesson": (1, 6400, 5000),  # the lesson's x(1, 6400) @ y(6400, 5000)
    "gemm_1024": (1024, 1024, 1024),
}
DTYPE = "float32"
# CPU rounds take 10-100 ms at one thread; a GPU call a few hundred microseconds at most.
ROUNDS = {"cpu": (30, 3), "cuda": (200, 10)}  # device -> (rounds, warm-up rounds)
_CHECK_COLUMNS = 16  # columns of z compared with a float64 product (the whole GEMM is slow)
_NO_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")

CASES = [
    pytest.param("numpy", "cpu", id="numpy-cpu"),
    pytest.param("torch", "cpu", id="torch-cpu"),
    pytest.param("torch", "cuda", id="torch-cuda", marks=[_NO_CUDA, pytest.mark.cuda]),
]


def _operands(backend: str, device: str, m: int, k: int, n: int) -> dict[str, Any]:
    """x, y filled with uniform [0, 1) values (seed 0) and z filled, as the stage fills them."""
    if backend == "numpy":
        rng = np.random.default_rng(0)
        return {"x": rng.random((m, k), dtype=DTYPE), "y": rng.random((k, n), dtype=DTYPE),
                "z": np.full((m, n), 0.0, DTYPE)}
    gen = torch.Generator(device=device).manual_seed(0)
    dt = getattr(torch, DTYPE)
    return {"x": torch.rand(m, k, dtype=dt, device=device, generator=gen),
            "y": torch.rand(k, n, dtype=dt, device=device, generator=gen),
            "z": torch.full((m, n), 0.0, dtype=dt, device=device)}


def _timed_call(backend: str, device: str, ops: dict[str, Any]):
    x, y, z = ops["x"], ops["y"], ops["z"]
    if backend == "numpy":
        return lambda: np.matmul(x, y, out=z)
    if device == "cuda":
        def call() -> torch.Tensor:
            out = torch.matmul(x, y, out=z)
            torch.cuda.synchronize()
            return out
        return call
    return lambda: torch.matmul(x, y, out=z)


def _as_numpy(a: Any) -> np.ndarray:
    return a.cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize(("backend", "device"), CASES)
def test_matmul(bench: Any, backend: str, device: str, shape: str) -> None:
    m, k, n = SHAPES[shape]
    ops = _operands(backend, device, m, k, n)
    rounds, warmup = ROUNDS[device]
    result = bench.run(_timed_call(backend, device, ops), group=f"matmul {shape} {DTYPE}",
                       rounds=rounds, warmup_rounds=warmup)

    # The product is right: it was written into z, and z's first columns match float64.
    assert tuple(result.shape) == (m, n)
    z = _as_numpy(ops["z"])
    x64 = _as_numpy(ops["x"]).astype(np.float64)
    y64 = _as_numpy(ops["y"])[:, :_CHECK_COLUMNS].astype(np.float64)
    np.testing.assert_allclose(z[:, :_CHECK_COLUMNS], x64 @ y64, rtol=1e-4)

    flop = 2.0 * m * k * n
    nbytes = float((m * k + k * n + m * n) * np.dtype(DTYPE).itemsize)
    bench.extra_info.update(backend=backend, device=device, dtype=DTYPE, m=m, k=k, n=n,
                            flop=flop, bytes=nbytes)
    t = bench.median_s
    if t is not None:
        bench.extra_info.update(gflop_s=flop / t / 1e9, gb_s=nbytes / t / 1e9)
