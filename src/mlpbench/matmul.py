"""The lesson's matmul comparison, measured right: NumPy vs torch on CPU vs torch on CUDA.

One row per backend x device x dtype x case x shape x kind; the columns, their types and units
are declared in :data:`mlpbench.contract.MATMUL` (write the table with
``mlpbench.contract.write(df, path, MATMUL)``). Every backend is
timed by :func:`mlpbench.timing.measure`; each row is set against a bandwidth reference measured
in the same stage on the same device, so a GEMV can be judged by the share of the memory
bandwidth it reaches rather than by its GFLOP/s.

Bandwidth reference: a STREAM-like copy of ``bandwidth_mib`` MiB per backend and dtype (CPU:
``np.copyto`` and ``Tensor.copy_``; CUDA: a device-to-device ``Tensor.copy_``), counted as bytes
read + bytes written. ``bandwidth_gb_s`` of every row is the best copy rate of its device.
Operand bytes of a matmul are (m*k + k*n + m*n) * itemsize; operands that fit in the caches
can therefore show a share above 1.

The backends (their statements, operands, synchronisation and thread control) are the entries
of :mod:`mlpbench.backends`; nothing here is specific to one library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mlpbench import backends
from mlpbench.backends import OperandSpec
from mlpbench.config import machine_id
from mlpbench.contract import MATMUL, matmul_bytes, matmul_flop
from mlpbench.timing import describe_method, measure

__all__ = [
    "CASES",
    "COLUMNS",
    "DEVICES",
    "DTYPES",
    "Shape",
    "run_matmul_stage",
    "shapes_from_config",
]

DEVICES = backends.devices()
DTYPES = ("float32", "float64")
CASES = ("lesson", "square", "gemv")
KINDS = {"cpu": ("matmul",), "cuda": ("matmul", "h2d", "d2h")}  # transfers exist on cuda only

COLUMNS = MATMUL.column_names  # the table's columns, declared in mlpbench.contract
_MEASURED = ["time_s_median", "time_s_iqr", "gflop_s", "gb_s", "bandwidth_gb_s", "bandwidth_share"]

Shape = tuple[str, int, int, int]  # (case, m, k, n)

_SEED = 0


# ---------------------------------------------------------------------------------------------
# inputs


def shapes_from_config(matmul_cfg: Mapping[str, Any]) -> list[Shape]:
    """Shapes from the config keys ``lesson_case`` {m,k,n}, ``square`` [s] and ``gemv`` [[k,n]]."""
    shapes: list[Shape] = []
    lesson = matmul_cfg.get("lesson_case")
    if lesson is not None:
        shapes.append(("lesson", lesson["m"], lesson["k"], lesson["n"]))
    shapes += [("square", s, s, s) for s in matmul_cfg.get("square", [])]
    shapes += [("gemv", 1, k, n) for k, n in matmul_cfg.get("gemv", [])]
    return shapes


# ---------------------------------------------------------------------------------------------
# one measurement job


@dataclass(frozen=True)
class _Job:
    backend: str
    device: str
    dtype: str
    case: str
    kind: str
    m: int
    k: int
    n: int

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def flop(self) -> float:
        return matmul_flop(self.m, self.k, self.n) if self.kind == "matmul" else 0.0

    def nbytes(self, bandwidth_mib: int) -> float:
        m, k, n, size = self.m, self.k, self.n, self.itemsize
        if self.kind == "matmul":
            return matmul_bytes(m, k, n, size)
        if self.kind == "h2d":
            return float(k * n * size)
        if self.kind == "d2h":
            return float(m * n * size)
        # copy: every byte is read once and written once, as STREAM counts it
        return 2.0 * (bandwidth_mib * 2**20 // size) * size


def _plan(device: str, dtypes: Sequence[str], shapes: Sequence[Shape]) -> list[_Job]:
    jobs: list[_Job] = []
    for backend in backends.by_device()[device]:
        statements = backends.get(backend).statements
        for dtype in dtypes:
            jobs.append(_Job(backend, device, dtype, "bandwidth", "copy", 0, 0, 0))
            for case, m, k, n in shapes:
                for kind in KINDS[device]:
                    if kind in statements:  # a backend without transfers has no such rows
                        jobs.append(_Job(backend, device, dtype, case, kind, m, k, n))
    return jobs


def _operands(job: _Job, bandwidth_mib: int) -> dict[str, Any]:
    """Create and fill (touch every page of) the operands of ``job``: nothing here is timed."""
    count = bandwidth_mib * 2**20 // job.itemsize if job.kind == "copy" else 0
    spec = OperandSpec(job.kind, job.device, job.dtype, job.m, job.k, job.n, count, _SEED)
    return backends.get(job.backend).operands(spec)


def _one_line(exc: BaseException, limit: int = 500) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------------------------------------
# the stage


def run_matmul_stage(
    device: str,
    dtypes: Sequence[str],
    shapes: Iterable[Sequence[Any]],
    threads: int,
    min_run_time_s: float,
    bandwidth_mib: int,
    *,
    host: str | None = None,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> pd.DataFrame:
    """Measure every backend x dtype x shape x kind on ``device``; return the tidy table.

    ``host`` defaults to :func:`mlpbench.machine.machine_id` (sanitised hostname). Without a GPU,
    ``device="cuda"`` gives the full set of rows with status "unavailable"; a failure of one
    measurement (out of memory, say) gives status "error" for that row and the rest go on.
    """
    host = machine_id(host)
    unavailable = {name: backends.get(name).unavailable_reason(device)
                   for name in backends.by_device()[device]}

    rows: list[dict[str, Any]] = []
    for job in _plan(device, list(dtypes), [tuple(s) for s in shapes]):
        backend = backends.get(job.backend)
        stmt = backend.statements[job.kind]
        sync, thread_control = backend.sync(device), backend.threads()
        flop, nbytes = job.flop, job.nbytes(bandwidth_mib)
        row: dict[str, Any] = {
            "host": host, "backend": job.backend, "device": job.device, "dtype": job.dtype,
            "case": job.case, "kind": job.kind, "m": job.m, "k": job.k, "n": job.n,
            "threads": threads,
            "method": describe_method(stmt, min_run_time_s=min_run_time_s, warmup=warmup,
                                      threads=threads, sync=sync,
                                      thread_control=thread_control),
            "time_s_median": math.nan, "time_s_iqr": math.nan, "n_runs": 0, "number_per_run": 0,
            "flop": flop, "bytes": nbytes, "gflop_s": math.nan, "gb_s": math.nan,
            "intensity_flop_per_byte": flop / nbytes,
            "bandwidth_gb_s": math.nan, "bandwidth_share": math.nan,
            "status": "unavailable", "reason": unavailable[job.backend] or "",
        }
        if unavailable[job.backend] is None:
            row.update(_measure_job(job, backend, threads, min_run_time_s, warmup,
                                    bandwidth_mib, flop, nbytes))
        rows.append(row)
        if log is not None:
            log(_describe_row(row))

    return _with_bandwidth(pd.DataFrame(rows, columns=COLUMNS))


def _measure_job(job: _Job, backend: backends.Backend, threads: int, min_run_time_s: float,
                 warmup: int, bandwidth_mib: int, flop: float, nbytes: float) -> dict[str, Any]:
    operands: dict[str, Any] = {}
    try:
        operands = _operands(job, bandwidth_mib)
        result = measure(backend.statements[job.kind], operands, threads=threads,
                         min_run_time_s=min_run_time_s, warmup=warmup,
                         sync=backend.sync(job.device), thread_control=backend.threads())
    except Exception as exc:  # one failed measurement (OOM, say) must not stop the others
        return {"status": "error", "reason": _one_line(exc)}
    finally:
        operands.clear()  # free big operands before the next job allocates its own
        backend.release(job.device)
    t = result.median_s
    return {
        "method": result.method, "time_s_median": t, "time_s_iqr": result.iqr_s,
        "n_runs": result.n_runs, "number_per_run": result.number_per_run,
        "gflop_s": flop / t / 1e9, "gb_s": nbytes / t / 1e9, "status": "ok", "reason": "",
    }


def _with_bandwidth(df: pd.DataFrame) -> pd.DataFrame:
    """Set every row against its device's bandwidth: the best copy rate measured on it.

    The device's best copy, not each backend's own: ``np.copyto`` runs on one thread while
    ``Tensor.copy_`` uses the thread pool, so NumPy's own copy understates what the memory
    system delivers (and a 2-thread NumPy GEMV would "exceed" it).
    """
    copies = df[(df["kind"] == "copy") & (df["status"] == "ok")]
    best = copies.groupby("device")["gb_s"].max()
    df["bandwidth_gb_s"] = df["device"].map(best).astype("float64")
    df["bandwidth_share"] = df["gb_s"] / df["bandwidth_gb_s"]
    df.loc[df["status"] != "ok", _MEASURED] = math.nan
    for col in ("m", "k", "n", "threads", "n_runs", "number_per_run"):
        df[col] = df[col].astype("int64")
    for col in ("flop", "bytes", "intensity_flop_per_byte", *_MEASURED):
        df[col] = df[col].astype("float64")
    return df


def _describe_row(row: Mapping[str, Any]) -> str:
    what = (f"{row['backend']:5} {row['device']:4} {row['dtype']:7} {row['case']:9} "
            f"{row['kind']:6} m={row['m']} k={row['k']} n={row['n']}")
    if row["status"] != "ok":
        return f"{what}: {row['status']} ({row['reason']})"
    return (f"{what}: median {row['time_s_median'] * 1e3:.4g} ms over {row['n_runs']} x "
            f"{row['number_per_run']}, {row['gflop_s']:.4g} GFLOP/s, {row['gb_s']:.4g} GB/s")
