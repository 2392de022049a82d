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

Compute roof: the best GFLOP/s of any square product (kind ``matmul``) on the device in the
same dtype, as Stas Bekman's mamf-finder takes the maximum achievable matmul FLOPS over many
shapes. Every product row carries its share of both roofs, the ridge point (compute roof /
bandwidth, in FLOP per byte) and whether its intensity puts it left of the ridge (``bound`` =
memory) or right of it (compute).

Samples and disturbances: every timing rests on at least ``min_samples`` samples
(:func:`mlpbench.timing.measure`), all of them returned in a second table
(:data:`mlpbench.contract.MATMUL_SAMPLES`). :mod:`mlpbench.guard` watches each timing; a
disturbed one is measured again, up to ``max_attempts`` times in all. If every attempt was
disturbed the least disturbed is kept with ``noisy`` set and the reason; noisy rows set no roof.

The backends (their statements, operands, synchronisation and thread control) are the entries
of :mod:`mlpbench.backends`; nothing here is specific to one library.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from mlpbench import backends, guard
from mlpbench.backends import OperandSpec
from mlpbench.caches import FLUSH_FACTOR, CacheFlush
from mlpbench.config import machine_id
from mlpbench.contract import (LESSON_TIMEIT_LOOPS, MATMUL, MATMUL_SAMPLES, matmul_bytes,
                               matmul_flop)
from mlpbench.timing import MIN_SAMPLES, describe_method, measure

__all__ = [
    "CASES",
    "COLUMNS",
    "DEVICES",
    "DTYPES",
    "MAX_ATTEMPTS",
    "Shape",
    "StageResult",
    "measure_matmul_stage",
    "run_matmul_stage",
    "shapes_from_config",
    "with_roofs",
]

DEVICES = backends.devices()
DTYPES = ("float32", "float64")
CASES = ("lesson", "square", "gemv")
# Transfers and the lesson's GPU pitfalls exist on cuda only; a backend times the kinds it has
# statements for. matmul_nosync: the lesson case only (the lesson's way of timing it);
# matmul_tf32: float32 lesson and square products (what TF32 tensor cores change).
KINDS = {"cpu": ("matmul", "matmul_cold"),
         "cuda": ("matmul", "matmul_cold", "h2d", "h2d_pinned", "d2h", "matmul_nosync",
                  "matmul_tf32")}
_PRODUCT_KINDS = ("matmul", "matmul_cold", "matmul_nosync", "matmul_tf32")
# Kinds that time another kind's statement in another way: matmul_cold is the backend's matmul
# with the caches emptied before every call (mlpbench.caches), for the lesson's case only.
_STATEMENT_OF = {"matmul_cold": "matmul"}
# The method of a matmul_cold row that was not measured (the measured one says the sizes).
COLD_TEXT = (f"the caches emptied by writing a buffer of {FLUSH_FACTOR} x the device's "
             "last-level cache")
MAX_ATTEMPTS = 3  # default of matmul.max_attempts: timings of one row while it is disturbed

COLUMNS = MATMUL.column_names  # the table's columns, declared in mlpbench.contract
SAMPLE_COLUMNS = MATMUL_SAMPLES.column_names
_MEASURED = ["time_s_median", "time_s_iqr", "gflop_s", "gb_s", "bandwidth_gb_s", "bandwidth_share",
             "compute_roof_gflop_s", "compute_share", "ridge_flop_per_byte"]

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
        return matmul_flop(self.m, self.k, self.n) if self.kind in _PRODUCT_KINDS else 0.0

    def nbytes(self, bandwidth_mib: int) -> float:
        m, k, n, size = self.m, self.k, self.n, self.itemsize
        if self.kind in _PRODUCT_KINDS:
            return matmul_bytes(m, k, n, size)
        if self.kind in ("h2d", "h2d_pinned"):
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
                    if _STATEMENT_OF.get(kind, kind) not in statements:  # a backend without transfers has no such rows
                        continue
                    if kind in ("matmul_nosync", "matmul_cold") and case != "lesson":
                        continue
                    if kind == "matmul_tf32" and (dtype != "float32" or case == "gemv"):
                        continue
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


class StageResult(NamedTuple):
    """The stage's two tables: ``table`` (:data:`mlpbench.contract.MATMUL`, one row per
    measurement) and ``samples`` (:data:`mlpbench.contract.MATMUL_SAMPLES`, one row per
    timed sample of every attempt)."""

    table: pd.DataFrame
    samples: pd.DataFrame


def run_matmul_stage(*args: Any, **kwargs: Any) -> pd.DataFrame:
    """The measurement table of :func:`measure_matmul_stage` (same arguments)."""
    return measure_matmul_stage(*args, **kwargs).table


def measure_matmul_stage(
    device: str,
    dtypes: Sequence[str],
    shapes: Iterable[Sequence[Any]],
    threads: int,
    min_run_time_s: float,
    bandwidth_mib: int,
    *,
    min_samples: int = MIN_SAMPLES,
    max_attempts: int = MAX_ATTEMPTS,
    wait_limit_threads: float = guard.WAIT_LIMIT_THREADS,
    host: str | None = None,
    warmup: int = 1,
    log: Callable[[str], None] | None = None,
) -> StageResult:
    """Measure every backend x dtype x shape x kind on ``device``; return both tidy tables.

    Each timing rests on at least ``min_samples`` samples; one that :mod:`mlpbench.guard`
    judges disturbed is timed again, ``max_attempts`` times in all at most, and kept flagged
    ``noisy`` (with the reason) if every attempt was disturbed; ``wait_limit_threads`` is the
    guard's limit (:func:`mlpbench.guard.judge`; ``math.inf`` turns the guard off, a negative
    value flags every timing). ``host`` defaults to
    :func:`mlpbench.machine.machine_id` (sanitised hostname). Without a GPU, ``device="cuda"``
    gives the full set of rows with status "unavailable"; a failure of one measurement (out of
    memory, say) gives status "error" for that row and the rest go on.
    """
    if isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1:
        raise ValueError(f"max_attempts: got {max_attempts!r}; allowed: an integer >= 1")
    host = machine_id(host)
    unavailable = {name: backends.get(name).unavailable_reason(device)
                   for name in backends.by_device()[device]}
    no_guard = guard.unavailable_reason()
    if no_guard and log is not None:
        log(f"no disturbance check: {no_guard}")

    rows: list[dict[str, Any]] = []
    samples: list[dict[str, Any]] = []
    flushes: dict[tuple[str, str], CacheFlush] = {}

    def flush(on: str, library: str) -> CacheFlush:  # one buffer each, made when first needed
        if (on, library) not in flushes:
            flushes[on, library] = CacheFlush(on, library=library)
        return flushes[on, library]

    for job in _plan(device, list(dtypes), [tuple(s) for s in shapes]):
        backend = backends.get(job.backend)
        stmt = backend.statements[_statement_kind(job)]
        sync, thread_control = _sync(backend, job), backend.threads()
        flop, nbytes = job.flop, job.nbytes(bandwidth_mib)
        key = {"host": host, "backend": job.backend, "device": job.device, "dtype": job.dtype,
               "case": job.case, "kind": job.kind, "m": job.m, "k": job.k, "n": job.n}
        row: dict[str, Any] = {
            **key, "threads": threads,
            "method": _with_note(backend, job, describe_method(
                stmt, min_run_time_s=min_run_time_s, warmup=warmup, threads=threads, sync=sync,
                thread_control=thread_control, min_samples=min_samples,
                unsynchronised=_unsynchronised(backend, job), number=_number(job),
                before_each=COLD_TEXT if job.kind == "matmul_cold" else None)),
            "time_s_median": math.nan, "time_s_iqr": math.nan, "n_runs": 0, "number_per_run": 0,
            "attempts": 0, "cpu_wait_threads": math.nan, "noisy": False, "noise_reason": "",
            "flop": flop, "bytes": nbytes, "gflop_s": math.nan, "gb_s": math.nan,
            "intensity_flop_per_byte": flop / nbytes,
            "bandwidth_gb_s": math.nan, "bandwidth_share": math.nan,
            "compute_roof_gflop_s": math.nan, "compute_share": math.nan,
            "ridge_flop_per_byte": math.nan, "bound": "",
            "status": "unavailable", "reason": unavailable[job.backend] or "",
        }
        if unavailable[job.backend] is None:
            measured, timed = _measure_job(job, backend, threads, min_run_time_s, warmup,
                                           bandwidth_mib, min_samples, max_attempts,
                                           wait_limit_threads, flush)
            row.update(measured)
            samples += [{**key, **s} for s in timed]
        rows.append(row)
        if log is not None:
            log(_describe_row(row))

    for buffer in flushes.values():
        buffer.release()
    table = with_roofs(pd.DataFrame(rows, columns=COLUMNS))
    sample_table = pd.DataFrame(samples, columns=SAMPLE_COLUMNS)
    for col in ("m", "k", "n", "attempt", "sample", "number_per_run"):
        sample_table[col] = sample_table[col].astype("int64")
    sample_table["time_s"] = sample_table["time_s"].astype("float64")
    sample_table["reported"] = sample_table["reported"].astype(bool)
    return StageResult(table, sample_table)


def _unsynchronised(backend: backends.Backend, job: _Job) -> str | None:
    """The device a matmul_nosync row deliberately leaves unsynchronised (the lesson's way)."""
    if job.kind == "matmul_nosync" and backend.sync(job.device) is not None:
        return backend.sync(job.device).device
    return None


def _sync(backend: backends.Backend, job: _Job):
    return None if job.kind == "matmul_nosync" else backend.sync(job.device)


def _statement_kind(job: _Job) -> str:
    """The backend statement a job times (its own kind, or the kind it is a variant of)."""
    return _STATEMENT_OF.get(job.kind, job.kind)


def _number(job: _Job) -> int | None:
    """Calls per sample: the lesson's %timeit loops for matmul_nosync, else the autorange's."""
    return LESSON_TIMEIT_LOOPS if job.kind == "matmul_nosync" else None


def _with_note(backend: backends.Backend, job: _Job, method: str) -> str:
    note = backend.context_note(_statement_kind(job), job.device)
    return f"{method}; {note}" if note else method


def _measure_job(job: _Job, backend: backends.Backend, threads: int, min_run_time_s: float,
                 warmup: int, bandwidth_mib: int, min_samples: int, max_attempts: int,
                 wait_limit: float, flush: Callable[[str, str], CacheFlush] | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Time one job, again while the guard finds it disturbed; (row values, sample rows).
    ``flush`` gives the device's :class:`mlpbench.caches.CacheFlush` for a matmul_cold job."""

    def disturbed(result) -> str | None:
        return guard.judge(result.cpu_wait_threads, wait_limit)

    operands: dict[str, Any] = {}
    results = []
    try:
        operands = _operands(job, bandwidth_mib)
        cold = (flush(job.device, backend.flush_with)
                if job.kind == "matmul_cold" and flush else None)
        with backend.context(_statement_kind(job), job.device):
            for _ in range(max_attempts):
                result = measure(backend.statements[_statement_kind(job)], operands,
                                 threads=threads,
                                 min_run_time_s=min_run_time_s, warmup=warmup,
                                 sync=_sync(backend, job), thread_control=backend.threads(),
                                 min_samples=min_samples,
                                 unsynchronised=_unsynchronised(backend, job),
                                 number=_number(job), before_each=cold,
                                 before_each_text=cold.text if cold else "")
                results.append(result)
                if disturbed(result) is None:
                    break
    except Exception as exc:  # one failed measurement (OOM, say) must not stop the others
        return {"status": "error", "reason": _one_line(exc), "attempts": len(results)}, []
    finally:
        operands.clear()  # free big operands before the next job allocates its own
        backend.release(job.device)
    # The last attempt when it was quiet; else the least disturbed of them.
    best = (len(results) - 1 if disturbed(results[-1]) is None else
            min(range(len(results)), key=lambda i: results[i].cpu_wait_threads))
    result = results[best]
    noise = disturbed(result)
    t = result.median_s
    flop, nbytes = job.flop, job.nbytes(bandwidth_mib)
    samples = [{"attempt": a + 1, "sample": i, "number_per_run": r.number_per_run, "time_s": x,
                "reported": a == best}
               for a, r in enumerate(results) for i, x in enumerate(r.times_s)]
    return {
        "method": _with_note(backend, job, result.method),
        "time_s_median": t, "time_s_iqr": result.iqr_s,
        "n_runs": result.n_runs, "number_per_run": result.number_per_run,
        "attempts": len(results), "cpu_wait_threads": result.cpu_wait_threads,
        "noisy": noise is not None,
        "noise_reason": (f"{noise}, in each of {len(results)} attempts" if noise else ""),
        "gflop_s": flop / t / 1e9, "gb_s": nbytes / t / 1e9, "status": "ok", "reason": "",
    }, samples


def with_roofs(df: pd.DataFrame) -> pd.DataFrame:
    """Set every row against its device's two measured roofs (fills ``bandwidth_gb_s``,
    ``bandwidth_share``, ``compute_roof_gflop_s``, ``compute_share``, ``ridge_flop_per_byte``
    and ``bound`` of a frame with the matmul table's columns; returns it).

    Memory roof: the best copy rate measured on the device. The device's best copy, not each
    backend's own: ``np.copyto`` runs on one thread while ``Tensor.copy_`` uses the thread
    pool, so NumPy's own copy understates what the memory system delivers (and a 2-thread
    NumPy GEMV would "exceed" it). Compute roof: the best GFLOP/s of a square product on the
    device in the row's dtype. Rows flagged noisy set neither roof.
    """
    trusted = (df["status"] == "ok") & ~df["noisy"].astype(bool)
    copies = df[trusted & (df["kind"] == "copy")]
    best = copies.groupby("device")["gb_s"].max()
    df["bandwidth_gb_s"] = df["device"].map(best).astype("float64")
    df["bandwidth_share"] = df["gb_s"] / df["bandwidth_gb_s"]
    square = df[trusted & (df["kind"] == "matmul") & (df["case"] == "square")]
    roof = square.groupby(["device", "dtype"])["gflop_s"].max()
    keys = pd.MultiIndex.from_frame(df[["device", "dtype"]])
    df["compute_roof_gflop_s"] = roof.reindex(keys).to_numpy(dtype="float64")
    product = df["kind"].isin(_PRODUCT_KINDS)
    df["compute_share"] = (df["gflop_s"] / df["compute_roof_gflop_s"]).where(product)
    df["ridge_flop_per_byte"] = df["compute_roof_gflop_s"] / df["bandwidth_gb_s"]
    judged = product & np.isfinite(df["ridge_flop_per_byte"]) & (df["status"] == "ok")
    df["bound"] = np.where(~judged, "",
                           np.where(df["intensity_flop_per_byte"] < df["ridge_flop_per_byte"],
                                    "memory", "compute"))
    df.loc[df["status"] != "ok", _MEASURED] = math.nan
    for col in ("m", "k", "n", "threads", "n_runs", "number_per_run", "attempts"):
        df[col] = df[col].astype("int64")
    for col in ("flop", "bytes", "intensity_flop_per_byte", "cpu_wait_threads", *_MEASURED):
        df[col] = df[col].astype("float64")
    df["noisy"] = df["noisy"].astype(bool)
    for col in ("bound", "noise_reason"):
        df[col] = df[col].astype(str)
    return df


def _describe_row(row: Mapping[str, Any]) -> str:
    what = (f"{row['backend']:5} {row['device']:4} {row['dtype']:7} {row['case']:9} "
            f"{row['kind']:13} m={row['m']} k={row['k']} n={row['n']}")
    if row["status"] != "ok":
        return f"{what}: {row['status']} ({row['reason']})"
    return (f"{what}: median {row['time_s_median'] * 1e3:.4g} ms over {row['n_runs']} x "
            f"{row['number_per_run']}, {row['gflop_s']:.4g} GFLOP/s, {row['gb_s']:.4g} GB/s, "
            f"{row['cpu_wait_threads']:.3f} threads waiting for a CPU, {row['attempts']} "
            f"attempt(s)" + (f"; NOISY: {row['noise_reason']}" if row["noisy"] else ""))
