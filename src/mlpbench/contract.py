"""The results contract: every table the pipeline writes, declared once.

Each stage table (``results/matmul/``, ``results/train/``) and each summary table
(``results/tables/``) is a :class:`Table`: its path, the rule that writes it, and its columns,
each with an Arrow type, a unit and a one-line meaning. Units are also in the column names
(``time_s``, ``gb_s``, ``intensity_flop_per_byte``); ``unit`` is ``None`` for labels and ids,
``"1"`` for counts and dimensionless ratios.

Writers go through :func:`write` (or :func:`to_arrow`), so an empty table has the same schema
as a full one and a table that does not match its contract is refused before it is written.
Readers go through :func:`read` / :func:`read_many`, which check each file against its
contract and stop with one line naming the file, the column, what was expected and what was
found, and the command that writes the file again (:class:`ContractError`). A file that is
missing or not a readable parquet file is named the same way; no file is ever skipped.

Text columns are declared ``string``; a file that stores them as ``large_string`` (what
pandas >= 3 writes for its ``str`` dtype) is read as the same text. Every other type must
match exactly. Floating-point NaN is stored as a null, so a column whose values may be NaN
is declared nullable.

This module imports only the standard library and pyarrow, so the workflow can take the
table and figure names from here while it builds the DAG (pandas is imported by pyarrow only
when a frame is converted).
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "Column",
    "ColumnPattern",
    "ContractError",
    "FIGURES",
    "LESSON_TIMEIT_LOOPS",
    "MATMUL",
    "MATMUL_ENVIRONMENT",
    "MATMUL_SAMPLES",
    "LESSON",
    "LESSON_TABLES",
    "MACHINE_FIGURES",
    "SUMMARY",
    "SUMMARY_TABLES",
    "TRAIN",
    "TRAIN_TABLES",
    "Table",
    "all_tables",
    "check",
    "describe",
    "empty_frame",
    "pandas_dtypes",
    "matmul_bytes",
    "matmul_environment_file",
    "matmul_flop",
    "read",
    "read_many",
    "to_arrow",
    "write",
    "write_arrow",
]

PathLike = str | os.PathLike
COMPRESSION = "zstd"


class ContractError(ValueError):
    """A table that does not match its declaration: the message is one line, naming the file
    (or table), the column, expected vs found, and the command that writes the file again."""


@dataclass(frozen=True)
class Column:
    """One column: name (snake_case, unit in the name), Arrow type, unit, meaning."""

    name: str
    type: pa.DataType
    description: str
    unit: str | None = None
    nullable: bool = False

    def field(self) -> pa.Field:
        meta = {"description": self.description}
        if self.unit is not None:
            meta["unit"] = self.unit
        return pa.field(self.name, self.type, nullable=self.nullable, metadata=meta)


@dataclass(frozen=True)
class ColumnPattern:
    """A run of columns ``<prefix>0``, ``<prefix>1``, ... whose count depends on the data
    (e.g. one logit per class); they follow the fixed columns, in index order."""

    prefix: str
    type: pa.DataType
    description: str
    unit: str | None = None
    nullable: bool = False

    def matches(self, name: str) -> bool:
        return re.fullmatch(re.escape(self.prefix) + r"(0|[1-9][0-9]*)", name) is not None

    def column(self, name: str) -> Column:
        return Column(name, self.type, self.description.replace("<i>", name[len(self.prefix):]),
                      self.unit, self.nullable)


@dataclass(frozen=True)
class Table:
    """A declared table: ``path`` (template), ``rule`` (the Snakemake rule that writes it),
    ``description`` (one row is ...), ``columns`` and an optional ``pattern``."""

    name: str
    path: str
    rule: str
    description: str
    columns: tuple[Column, ...]
    pattern: ColumnPattern | None = None

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def remedy(self, path: PathLike) -> str:
        """How to write ``path`` again: Snakemake's ``--forcerun`` takes the file itself, so only
        the job that writes it (a ``{self.rule}`` job) reruns, with everything after it."""
        return f"rerun: snakemake --cores 4 --forcerun {os.fspath(path)}"

    def schema(self, extra: Iterable[str] = ()) -> pa.Schema:
        """The Arrow schema; ``extra`` names the pattern columns present (e.g. ``logit_0``)."""
        return pa.schema([c.field() for c in self.columns]
                         + [self._pattern_column(n).field() for n in extra])

    def pattern_columns(self, count: int) -> list[str]:
        """Names of ``count`` pattern columns: ``[<prefix>0, ..., <prefix>{count-1}]``."""
        if self.pattern is None:
            return []
        return [f"{self.pattern.prefix}{i}" for i in range(count)]

    def _pattern_column(self, name: str) -> Column:
        if self.pattern is None or not self.pattern.matches(name):
            raise ContractError(f"{self.path}: unexpected column {name!r} (not in the "
                                f"{self.name} table's contract)")
        return self.pattern.column(name)


# --------------------------------------------------------------------------- column vocabulary

STR, I64, F64, F32, BOOL = pa.string(), pa.int64(), pa.float64(), pa.float32(), pa.bool_()


def _c(name: str, type_: pa.DataType, description: str, unit: str | None = None,
       nullable: bool = False) -> Column:
    return Column(name, type_, description, unit, nullable)


_DATASET = _c("dataset", STR,
              "data set: a registered name (mlpbench.data), e.g. toy (the lesson's nine points)")
_DEVICE = _c("device", STR, "device the work ran on: cpu or cuda")
_WIDTH = _c("width", I64, "units per hidden layer", "1")
_DEPTH = _c("depth", I64, "number of hidden layers", "1")
_LR = _c("lr", F64, "SGD learning rate", "1")
_SEED = _c("seed", I64, "seed of torch.manual_seed before the weights were drawn", "1")
_EPOCHS = _c("epochs", I64, "checkpoint: SGD epochs taken before the evaluation", "1")
_STATUS = _c("status", STR, "ok, diverged (non-finite loss), unavailable (device absent) or error")
_REASON = _c("reason", STR, "why the status is not ok; empty when ok")
_HOST = _c("host", STR, "machine id of the host that ran the job")
_THREADS = _c("threads", I64, "CPU threads given to torch and NumPy's BLAS", "1")
_SHAPE = (_DATASET, _DEVICE, _WIDTH, _DEPTH, _LR)
_MEMBER = (*_SHAPE, _SEED)


# Calls per %timeit run in the lesson's timings (lesson_reference) and in the matmul_nosync rows,
# which time the lesson's product the lesson's way.
LESSON_TIMEIT_LOOPS = 100


def matmul_flop(m: int, k: int, n: int) -> float:
    """Floating-point operations of (m x k) @ (k x n): 2·m·k·n (a multiply and an add)."""
    return 2.0 * m * k * n


def matmul_bytes(m: int, k: int, n: int, itemsize: int) -> float:
    """Operand bytes of (m x k) @ (k x n): every element of x, y and z once."""
    return float((m * k + k * n + m * n) * itemsize)


# --------------------------------------------------------------------------- stage tables

_MATMUL_KEY = (
    _HOST,
    _c("backend", STR, "library that ran the product: a registered backend (mlpbench.backends)"),
    _DEVICE,
    _c("dtype", STR, "element type of the operands: float32 or float64"),
    _c("case", STR, "lesson (the lesson's product), square, gemv, or bandwidth (the copy)"),
    _c("kind", STR, "matmul (x @ y, synchronised; on CUDA with TF32 off, torch's default), "
                    "matmul_cold (the lesson's product with the caches emptied before every "
                    "call, mlpbench.caches), "
                    "matmul_nosync (the same timed without synchronising, the lesson's way), "
                    "matmul_tf32 (float32 with TF32 allowed), h2d (copy y to the GPU from "
                    "pageable memory), h2d_pinned (from pinned memory), d2h (copy z back) or "
                    "copy (the bandwidth reference)"),
    _c("m", I64, "rows of x and z", "1"),
    _c("k", I64, "columns of x, rows of y", "1"),
    _c("n", I64, "columns of y and z", "1"),
)

_MATMUL_COLUMNS = (
    *_MATMUL_KEY,
    _THREADS,
    _c("method", STR, "how it was timed: timer, samples, statement, warm-up, threads, "
                      "synchronisation"),
    _c("time_s_median", F64, "median per-call time over the samples", "s", True),
    _c("time_s_iqr", F64, "interquartile range of the samples' per-call times (NaN below "
                          "matmul.min_samples samples: never a 0 from one sample)", "s", True),
    _c("n_runs", I64, "samples (timed blocks of calls) the median is over: at least "
                      "matmul.min_samples when measured, 0 when not", "1"),
    _c("number_per_run", I64, "calls per sample (0 when not measured)", "1"),
    _c("attempts", I64, "timings made of this row: 1, more when the guard found one disturbed "
                        "(0 when not measured)", "1"),
    _c("cpu_wait_threads", F64, "threads of the job that were ready to run but waited for a "
                                "CPU during the reported timing, on average (run delay from "
                                "/proc schedstat / wall time; NaN where unavailable)", "1", True),
    _c("noisy", BOOL, "every attempt was disturbed (cpu_wait_threads above the guard's limit): "
                      "kept, shown with this flag, and used for no conclusion"),
    _c("noise_reason", STR, "why the row is noisy; empty when not"),
    _c("flop", F64, "floating-point operations of one call: 2·m·k·n for products, 0 otherwise",
       "FLOP"),
    _c("bytes", F64, "bytes moved by one call: operands (m·k + k·n + m·n)·itemsize for "
                     "products; read + written for copy", "B"),
    _c("gflop_s", F64, "flop / time_s_median / 1e9", "GFLOP/s", True),
    _c("gb_s", F64, "bytes / time_s_median / 1e9", "GB/s", True),
    _c("intensity_flop_per_byte", F64, "arithmetic intensity: flop / bytes", "FLOP/B", True),
    _c("bandwidth_gb_s", F64, "memory roof: best copy rate measured on this device (rows not "
                              "noisy)", "GB/s", True),
    _c("bandwidth_share", F64, "gb_s / bandwidth_gb_s", "1", True),
    _c("compute_roof_gflop_s", F64, "compute roof: best GFLOP/s of a square product (kind "
                                    "matmul, not noisy) on this device in this dtype", "GFLOP/s",
       True),
    _c("compute_share", F64, "gflop_s / compute_roof_gflop_s (products only)", "1", True),
    _c("ridge_flop_per_byte", F64, "ridge point: compute_roof_gflop_s / bandwidth_gb_s",
       "FLOP/B", True),
    _c("bound", STR, "memory (intensity below the ridge point), compute (at or above it), or "
                     "empty when not judged (not a product, not ok, a roof missing)"),
    _STATUS,
    _REASON,
)

MATMUL = Table(
    "matmul", "results/matmul/{device}.parquet", "matmul",
    "one row per backend x device x dtype x case x shape x kind",
    _MATMUL_COLUMNS,
)

_ENVIRONMENT_COLUMNS = (
    _HOST,
    _c("stage", STR, "the timing job: matmul or train"),
    _c("dataset", STR, "data set of a train job (null for matmul)", None, True),
    _DEVICE,
    _c("moment", STR, "before or after the job's timed work"),
    _c("threads", I64, "the job's own thread count (its rule's threads)", "1"),
    _c("time_utc", STR, "when the reading was taken (ISO 8601, UTC)"),
    _c("torch_num_threads", I64, "torch.get_num_threads() in the job (null when the job never "
       "imported torch: a CUDA job on a machine without a GPU driver)", "1", True),
    _c("torch_num_interop_threads", I64, "torch.get_num_interop_threads() in the job (null "
       "when the job never imported torch)", "1", True),
    _c("blas_num_threads", I64, "largest thread count of the loaded BLAS pools "
                                "(threadpoolctl; null when none is loaded)", "1", True),
    _c("openmp_num_threads", I64, "largest thread count of the loaded OpenMP pools "
                                  "(threadpoolctl; null when none is loaded)", "1", True),
    _c("omp_num_threads", STR, "OMP_NUM_THREADS in the job (null when unset)", None, True),
    _c("mkl_num_threads", STR, "MKL_NUM_THREADS in the job (null when unset)", None, True),
    _c("openblas_num_threads", STR, "OPENBLAS_NUM_THREADS in the job (null when unset)", None,
       True),
    _c("thread_env_json", STR, "every thread variable of mlpbench.environment.THREAD_ENV_VARS, "
                               "as JSON"),
    _c("threadpools_json", STR, "every thread pool threadpoolctl found (api, library, "
                                "threads), as JSON"),
    _c("affinity", STR, "CPUs the job may run on, as ranges (e.g. 0-3)", None, True),
    _c("affinity_count", I64, "number of CPUs the job may run on", "1", True),
    _c("load_1m", F64, "load average over 1 minute", "1", True),
    _c("load_5m", F64, "load average over 5 minutes", "1", True),
    _c("load_15m", F64, "load average over 15 minutes", "1", True),
    _c("cpu_mhz_mean", F64, "mean current clock of the job's CPUs", "MHz", True),
    _c("cpu_mhz_min", F64, "lowest current clock of the job's CPUs", "MHz", True),
    _c("cpu_mhz_max", F64, "highest current clock of the job's CPUs", "MHz", True),
    _c("cpu_mhz_source", STR, "where the clock was read, or unavailable: why"),
    _c("gpu_source", STR, "nvml or nvidia-smi (null when not read)", None, True),
    _c("gpu_sm_clock_mhz", F64, "GPU streaming-multiprocessor clock", "MHz", True),
    _c("gpu_mem_clock_mhz", F64, "GPU memory clock", "MHz", True),
    _c("gpu_temperature_c", F64, "GPU temperature", "°C", True),
    _c("gpu_power_w", F64, "GPU power draw", "W", True),
    _c("gpu_pstate", STR, "GPU performance state, P0 (fastest) .. P12", None, True),
    _c("gpu_reason", STR, "why the GPU was not read (empty when it was)"),
)


def matmul_environment_file(matmul_file: PathLike) -> str:
    """The environment table written beside a matmul table: ``<stem>.environment.parquet``."""
    text = os.fspath(matmul_file)
    if not text.endswith(".parquet"):
        raise ContractError(f"{text}: not a matmul table (expected a .parquet file)")
    return text.removesuffix(".parquet") + ".environment.parquet"


MATMUL_ENVIRONMENT = Table(
    "environment", "results/matmul/{device}.environment.parquet", "matmul",
    "the matmul job's environment: one row before and one after its timed work",
    _ENVIRONMENT_COLUMNS,
)

MATMUL_SAMPLES = Table(
    "matmul_samples", "results/matmul/{device}.samples.parquet", "matmul",
    "one row per timed sample of every attempt of every measured matmul-table row",
    (*_MATMUL_KEY,
     _c("attempt", I64, "which timing of the row (1 first; more when disturbed)", "1"),
     _c("sample", I64, "index of the sample within its attempt, in the order measured", "1"),
     _c("number_per_run", I64, "calls timed together in this sample", "1"),
     _c("time_s", F64, "the sample's time divided by number_per_run: seconds per call", "s"),
     _c("reported", BOOL, "this attempt is the one whose median the matmul table reports")),
)

_TIMINGS_COLUMNS = (
    _HOST, _DATASET, _DEVICE, _WIDTH, _DEPTH,
    _c("n_members", I64, "networks trained at once (seeds x learning rates; 1 for the loop)", "1"),
    _c("n_windows", I64, "timed windows (0 when not timed)", "1"),
    _c("epochs_per_window", I64, "epochs in each timed window (0 when not timed)", "1"),
    _c("epochs_trained", I64, "epochs timed, over all windows", "1"),
    _THREADS,
    _c("method", STR, "ensemble (all members batched) or loop (the lesson's loop, one member)"),
    _c("time_s", F64, "wall time of all windows together (CUDA synchronised)", "s", True),
    _c("time_per_epoch_s", F64, "median over windows of the window's time per epoch", "s", True),
    _c("time_per_epoch_s_min", F64, "fastest window's time per epoch", "s", True),
    _c("time_per_epoch_s_max", F64, "slowest window's time per epoch", "s", True),
    _c("time_per_epoch_s_iqr", F64, "interquartile range of the windows' times per epoch "
                                    "(NaN below 2 windows)", "s", True),
    _c("time_per_member_epoch_s", F64, "time_per_epoch_s / n_members", "s", True),
    _STATUS, _REASON,
)

_TRAIN_DIR = "results/train/{dataset}/{device}/"
TRAIN: dict[str, Table] = {
    t.name: t for t in (
        Table("losses", _TRAIN_DIR + "losses.parquet", "train",
              "one row per member x epoch",
              (*_MEMBER,
               _c("epoch", I64, "epoch 1..E; its loss is the one before that epoch's step", "1"),
               _c("loss", F64, "mean cross-entropy on the training set (NaN after divergence)",
                  "nat", True))),
        Table("metrics", _TRAIN_DIR + "metrics.parquet", "train",
              "one row per member x checkpoint (one row per shape when the device was "
              "unavailable: seed null)",
              (*_SHAPE[:4], _c("lr", F64, "SGD learning rate (null when an unavailable row "
                                          "stands for several)", "1", True),
               _c("seed", I64, "seed of torch.manual_seed (null when unavailable)", "1", True),
               _EPOCHS,
               _c("loss", F64, "full-batch training loss after `epochs` steps", "nat", True),
               _c("train_acc", F64, "accuracy on the training set", "1", True),
               _c("test_acc", F64, "accuracy on the test set", "1", True),
               _STATUS, _REASON)),
        Table("predictions", _TRAIN_DIR + "predictions.parquet", "train",
              "one row per member x checkpoint x test point (diverged members left out)",
              (*_MEMBER, _EPOCHS,
               _c("point", I64, "index of the test point", "1"),
               _c("label", I64, "true class", "1"),
               _c("pred", I64, "predicted class (arg-max of the logits)", "1"))),
        Table("timings", _TRAIN_DIR + "timings.parquet", "train",
              "one row per shape x method", _TIMINGS_COLUMNS),
        Table("environment", _TRAIN_DIR + "environment.parquet", "train",
              "the train job's environment: one row before and one after its timed work",
              _ENVIRONMENT_COLUMNS),
        Table("gradnorms", _TRAIN_DIR + "gradnorms.parquet", "train",
              "one row per member x stage x Linear layer",
              (*_MEMBER,
               _c("stage", STR, "init (epochs 0) or final (the epoch count all shapes share)"),
               _EPOCHS,
               _c("layer", I64, "index of the Linear layer: 0 first, depth the output", "1"),
               _c("grad_norm", F64, "Frobenius norm of the weight's full-batch gradient "
                                    "(NaN once the member diverged)", "1", True))),
        Table("decision", _TRAIN_DIR + "decision.parquet", "train",
              "one row per checkpoint x member x grid point (x0 fastest), members diverged by "
              "then left out",
              (*_MEMBER, _EPOCHS,
               _c("x0", F32, "first input feature of the grid point"),
               _c("x1", F32, "second input feature of the grid point")),
              ColumnPattern("logit_", F32, "logit of class <i> at the grid point (one column "
                                           "per class: logit_0 .. logit_{C-1})")),
    )
}
TRAIN_TABLES: tuple[str, ...] = tuple(TRAIN)


# --------------------------------------------------------------------------- summary tables


def _stats(prefix: str, what: str, unit: str | None, *, n: bool = False) -> tuple[Column, ...]:
    cols = [
        _c(f"{prefix}_mean", F64, f"mean {what} over seeds", unit, True),
        _c(f"{prefix}_std", F64, f"sample standard deviation (ddof 1) of {what}", unit, True),
        _c(f"{prefix}_ci95_low", F64, f"lower end of Student's t 95 % interval of the mean "
                                      f"{what} (NaN below 2 seeds)", unit, True),
        _c(f"{prefix}_ci95_high", F64, f"upper end of that interval", unit, True),
        _c(f"{prefix}_min", F64, f"smallest {what} of a single seed", unit, True),
        _c(f"{prefix}_max", F64, f"largest {what} of a single seed", unit, True),
    ]
    return tuple(cols)


_SUMMARY_DIR = "results/tables/"


def _summary(name: str, description: str, columns: Sequence[Column]) -> Table:
    return Table(name, f"{_SUMMARY_DIR}{name}.parquet", "aggregate", description, tuple(columns))


SUMMARY: dict[str, Table] = {
    t.name: t for t in (
        _summary("matmul", "every row of results/matmul/*.parquet, plus the speed-ups", (
            *_MATMUL_COLUMNS,
            _c("speedup_vs_numpy_float64", F64, "time of NumPy float64 on the CPU for the same "
               "case and shape / this row's time (NaN where either is noisy)", "1", True),
            _c("speedup_vs_numpy_same_dtype", F64, "the same against NumPy of this row's dtype",
               "1", True),
        )),
        _summary("train_summary", "one row per dataset x device x width x depth x lr x epochs", (
            _DATASET, _DEVICE, _WIDTH, _DEPTH,
            _c("lr", F64, "SGD learning rate (null when an unavailable row stands for several)",
               "1", True),
            _EPOCHS,
            _c("variant", STR, "baseline, or the homework axes that differ from it "
                               "(epochs/width/depth/lr, joined by +)"),
            _c("status", STR, "ok; diverged when every seed diverged; unavailable"),
            _REASON,
            _c("n_seeds", I64, "seeds trained", "1"),
            _c("n_ok", I64, "seeds that did not diverge", "1"),
            _c("n_diverged", I64, "seeds whose loss became non-finite", "1"),
            _c("share_diverged", F64, "n_diverged / n_seeds", "1", True),
            *_stats("loss", "training loss", "nat"),
            *_stats("train_acc", "training accuracy", "1"),
            *_stats("test_acc", "test accuracy", "1"),
        )),
        _summary("loss_curves", "one row per dataset x device x width x depth x lr x epoch", (
            *_SHAPE,
            _c("epoch", I64, "epoch 1..E (the loss before that epoch's step)", "1"),
            _c("n_seeds", I64, "seeds averaged (not diverged)", "1"),
            _c("n_diverged", I64, "seeds left out because their loss became non-finite", "1"),
            *_stats("loss", "training loss", "nat"),
        )),
        _summary("epoch_time", "every row of timings.parquet, plus the speed-up over the CPU", (
            *_TIMINGS_COLUMNS,
            _c("speedup_vs_cpu", F64, "the CPU's time per epoch for the same dataset, shape and "
                                      "method / this row's", "1", True),
        )),
        _summary("grad_norms", "one row per dataset x device x width x depth x lr x stage x "
                               "layer", (
            *_SHAPE,
            _c("stage", STR, "init or final"),
            _EPOCHS,
            _c("layer", I64, "index of the Linear layer: 0 first, depth the output", "1"),
            _c("n_seeds", I64, "seeds with a finite gradient norm", "1"),
            *(c for c in _stats("grad_norm", "gradient norm", "1")
              if not c.name.startswith("grad_norm_ci95")),
        )),
        _summary("lesson_reference", "the lesson's three %timeit numbers and the rates they "
                                     "imply", (
            _c("source", STR, "where the number comes from: lesson"),
            _c("label", STR, "short name for tables and figures"),
            _c("backend", STR, "a registered backend (mlpbench.backends)"),
            _DEVICE,
            _c("dtype", STR, "element type the lesson's code used"),
            _c("case", STR, "lesson"),
            _c("m", I64, "rows of x", "1"), _c("k", I64, "columns of x, rows of y", "1"),
            _c("n", I64, "columns of y", "1"),
            _c("time_s", F64, "the lesson's %timeit mean", "s"),
            _c("timer", STR, "the timer the lesson used"),
            _c("sync", STR, "whether the timing waited for the device"),
            _c("note", STR, "what the number does and does not measure"),
            _c("flop", F64, "2·m·k·n", "FLOP"),
            _c("bytes", F64, "(m·k + k·n + m·n)·itemsize", "B"),
            _c("gflop_s", F64, "flop / time_s / 1e9", "GFLOP/s"),
            _c("gb_s", F64, "bytes / time_s / 1e9", "GB/s"),
        )),
        _summary("decision_regions", "per dataset, the baseline and the best variant for one "
                                     "representative seed, one row per grid point", (
            _DATASET, _DEVICE,
            _c("role", STR, "baseline or best"),
            _WIDTH, _DEPTH, _LR, _SEED, _EPOCHS,
            _c("test_acc", F64, "test accuracy of this seed", "1"),
            _c("test_acc_mean", F64, "mean test accuracy over seeds", "1"),
            _c("x0", F64, "first input feature of the grid point"),
            _c("x1", F64, "second input feature of the grid point"),
            _c("pred", I64, "arg-max class of the logits at the point", "1"),
        )),
        _summary("data_points", "the data sets' points, one row per point", (
            _DATASET,
            _c("split", STR, "train or test"),
            _c("x0", F64, "first input feature"),
            _c("x1", F64, "second input feature"),
            _c("label", I64, "class", "1"),
        )),
        _summary("machine", "one row per machine record (results/machine/*.json); the full "
                            "record is record_json", (
            _c("machine_id", STR, "the record's machine id (else the file stem)"),
            _c("host", STR, "sanitised host name", None, True),
            _c("cpu_model", STR, "CPU model name", None, True),
            _c("physical_cores", I64, "physical CPU cores", "1", True),
            _c("logical_cores", I64, "logical CPUs", "1", True),
            _c("usable_cores", I64, "CPUs this process may run on", "1", True),
            _c("gpu_available", BOOL, "whether CUDA was usable", None, True),
            _c("gpu_count", I64, "CUDA devices", "1", True),
            _c("gpu_name", STR, "name of CUDA device 0 (none without one)", None, True),
            _c("gpu_memory_gib", F64, "memory of CUDA device 0", "GiB", True),
            _c("gpu_driver", STR, "NVIDIA driver version", None, True),
            _c("gpu_cuda_version", STR, "CUDA version torch was built with", None, True),
            _c("gpu_reason", STR, "why CUDA was unavailable; empty when available", None, True),
            _c("git_commit", STR, "commit of the code that ran", None, True),
            _c("git_dirty", BOOL, "whether the working tree had changes", None, True),
            _c("config_hash", STR, "hash of the effective config", None, True),
            _c("created_utc", STR, "when the record was written (ISO 8601, UTC)", None, True),
            _c("config_json", STR, "the effective config, as JSON", None, True),
            _c("record_json", STR, "the whole record except the config, as JSON"),
        )),
        _summary("environment", "every row of the timing jobs' environment tables "
                                "(results/matmul/*.environment.parquet, "
                                "results/train/*/*/environment.parquet)", _ENVIRONMENT_COLUMNS),
        _summary("findings", "one row per conclusion the report states", (
            _c("finding", STR, "id of the rule that made the finding, e.g. axis_effect"),
            _c("section", STR, "report section: matmul, training, lesson, machine or "
                               "machines (the comparison with other machines)"),
            _c("dataset", STR, "data set the finding is about (null when none)", None, True),
            _c("device", STR, "device the finding is about (null when none)", None, True),
            _c("subject", STR, "what is judged, e.g. 'width 64 vs baseline'"),
            _c("verdict", STR, "the outcome as one machine-readable word, e.g. better, worse, "
                               "within_seed_noise"),
            _c("value", F64, "the number judged, in `unit`", None, True),
            _c("reference_value", F64, "the number it is compared with, in `unit`", None, True),
            _c("unit", STR, "unit of value and reference_value", None, True),
            _c("rule", STR, "the rule applied, in words"),
            _c("evidence", STR, "JSON of the rows and values the finding rests on"),
        )),
        # Machines as a dimension (mlpbench.compare): empty unless other machines' bundles
        # are compared (config `compare:`).
        _summary("machines", "one row per compared machine: this run, each bundle, and the "
                             "lesson's slides (machine_id lesson)", (
            _c("machine_id", STR, "the machine's id (lesson for the lesson's slides)"),
            _c("origin", STR, "this run, bundle (compare.bundles), reference (shipped with "
                              "the project) or lesson (the slides' %timeit numbers)"),
            _c("source", STR, "the bundle file, the results folder, or the lesson"),
            _c("is_baseline", BOOL, "the machine speed-ups and agreement are measured against"),
            _c("created_utc", STR, "when the machine's record was written (ISO 8601, UTC)",
               None, True),
            _c("cpu_model", STR, "CPU model name", None, True),
            _c("physical_cores", I64, "physical CPU cores", "1", True),
            _c("logical_cores", I64, "logical CPUs", "1", True),
            _c("gpu_name", STR, "name of CUDA device 0 (null without one)", None, True),
            _c("torch_version", STR, "torch version of the run", None, True),
            _c("numpy_version", STR, "NumPy version of the run", None, True),
            _c("git_commit", STR, "commit of the code that ran", None, True),
            _c("config_hash", STR, "hash of the run's effective config", None, True),
            _c("config_json", STR, "the run's measurement config (without compare and "
                                   "machine_id), as JSON; null for the lesson", None, True),
            _c("note", STR, "what to keep in mind when reading this machine's numbers"),
        )),
        _summary("machines_matmul", "one row per machine x backend x device x dtype x case x "
                                    "shape (kind matmul; the lesson's slides as machine "
                                    "lesson)", (
            _c("machine_id", STR, "the machine (see the machines table)"),
            *_MATMUL_KEY[1:],
            _c("threads", I64, "CPU threads of the timing (null for the lesson's slides)", "1",
               True),
            *(c for c in _MATMUL_COLUMNS if c.name in (
                "time_s_median", "time_s_iqr", "gflop_s", "gb_s", "intensity_flop_per_byte",
                "bandwidth_gb_s", "bandwidth_share", "compute_roof_gflop_s", "compute_share",
                "ridge_flop_per_byte", "bound")),
            _c("noisy", BOOL, "disturbed in every attempt (kept, used for no conclusion)"),
            _STATUS, _REASON,
            _c("note", STR, "caveat of the number (the lesson's timing method); empty for "
                            "measured rows"),
            _c("speedup_vs_baseline", F64, "the baseline machine's time for the same backend, "
                                           "device, dtype, case, kind and shape / this row's "
                                           "(NaN where either is missing, not ok or noisy)",
               "1", True),
            _c("speedup_vs_lesson", F64, "the lesson's time for the same backend, device and "
                                         "dtype / this row's (lesson case only)", "1", True),
        )),
        _summary("machines_epoch_time", "one row per machine x dataset x device x shape x "
                                        "method (the timings tables of every machine)", (
            _c("machine_id", STR, "the machine (see the machines table)"),
            *(c for c in _TIMINGS_COLUMNS if c.name not in ("host", "n_windows",
                                                            "epochs_per_window",
                                                            "epochs_trained", "time_s",
                                                            "time_per_epoch_s_iqr")),
            _c("speedup_vs_baseline", F64, "the baseline machine's time per epoch for the same "
                                           "dataset, device, shape, members and method / this "
                                           "row's", "1", True),
        )),
        _summary("machines_agreement", "one row per machine x dataset x device x metric: its "
                                       "losses and accuracies against the baseline machine's", (
            _c("machine_id", STR, "the machine compared"),
            _c("baseline_machine_id", STR, "the machine it is compared with"),
            _DATASET, _DEVICE,
            _c("metric", STR, "loss, train_acc or test_acc (per member and checkpoint)"),
            _c("n_compared", I64, "members x checkpoints present and ok on both", "1"),
            _c("n_differ", I64, "of those, how many differ beyond the tolerance", "1"),
            _c("max_abs_diff", F64, "largest |difference| over the compared rows", None, True),
            _c("tolerance", STR, "the tolerance applied, in words"),
            _c("verdict", STR, "identical, within_tolerance, differs, or not_compared"),
            _c("reason", STR, "why not compared (configs differ, no common rows); empty "
                              "otherwise"),
            _c("worst_json", STR, "the row with the largest difference (shape, seed, epochs, "
                                  "both values), as JSON; {} when none"),
        )),
    )
}
SUMMARY_TABLES: tuple[str, ...] = tuple(SUMMARY)

# Figures: file stem (results/figures/<name>.png) -> report category (snakemake --report).
FIGURES: dict[str, str] = {
    "matmul_time": "Matmul",
    "matmul_roofline": "Matmul",
    "lesson_comparison": "Matmul",
    "loss_curves": "Training",
    "test_accuracy": "Training",
    "decision_regions": "Training",
    "grad_norms": "Training",
    "epoch_time": "Training",
    "machines": "Machines",
}
# Figures drawn only when other machines are compared (config `compare:`).
MACHINE_FIGURES: tuple[str, ...] = ("machines",)


# --------------------------------------------------------------------------- writing


def _pattern_names(table: Table, names: Iterable[str], where: PathLike | None = None,
                   remedy: str = "") -> list[str]:
    """The pattern columns among ``names``, in index order; ContractError if not 0..C-1."""
    if table.pattern is None:
        return []
    found = [n for n in names if table.pattern.matches(n)]
    found.sort(key=lambda n: int(n[len(table.pattern.prefix):]))
    if found != table.pattern_columns(len(found)):
        prefix = table.pattern.prefix
        tail = f"; {remedy}" if remedy else ""
        raise ContractError(f"{where or table.path}: pattern columns {found} are not "
                            f"{prefix}0 .. {prefix}{len(found) - 1}{tail}")
    return found


def to_arrow(df: pd.DataFrame, table: Table) -> pa.Table:
    """``df`` as an Arrow table with ``table``'s schema (columns in declared order).

    Raises :class:`ContractError` naming the column when one is missing, not declared, or
    cannot be converted to its declared type without loss (e.g. 1.5 into int64, a null in a
    column declared not nullable).
    """
    names = [str(c) for c in df.columns]
    missing = [c for c in table.columns if c.name not in names]
    if missing:
        raise ContractError(f"{table.path}: column {missing[0].name!r} missing "
                            f"(expected {missing[0].type})")
    extra = _pattern_names(table, names)
    for name in names:
        if name not in table.column_names and name not in extra:
            raise ContractError(f"{table.path}: unexpected column {name!r} (not in the "
                                f"{table.name} table's contract)")
    schema = table.schema(extra)
    ordered = df[[*table.column_names, *extra]]
    try:
        return pa.Table.from_pandas(ordered, schema=schema, preserve_index=False, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        column = _failed_column(exc, schema)
        raise ContractError(f"{table.path}: column {column!r} does not convert to "
                            f"{schema.field(column).type if column in schema.names else '?'}: "
                            f"{_one_line(exc)}") from None


def _failed_column(exc: BaseException, schema: pa.Schema) -> str:
    text = str(exc)
    for name in schema.names:
        if re.search(rf"(column|Field pyarrow\.Field<)\s*{re.escape(name)}\b", text):
            return name
    return "?"


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def write(df: pd.DataFrame, path: PathLike, table: Table) -> None:
    """Write ``df`` to ``path`` with ``table``'s schema, atomically (temp file, then rename).

    zstd-compressed parquet, no index; identical frames give identical bytes.
    """
    write_arrow(to_arrow(df, table), path)


def write_arrow(data: pa.Table, path: PathLike) -> None:
    """Write an Arrow table (from :func:`to_arrow`) to ``path`` atomically, as :func:`write`."""
    from mlpbench.io import write_bytes_atomic  # late: io imports pandas

    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression=COMPRESSION)
    write_bytes_atomic(buffer.getvalue(), path)


def pandas_dtypes(table: Table, pattern_count: int = 0) -> dict[str, str]:
    """pandas dtype names of the columns (pattern columns included) that convert to the
    declared Arrow types: int64 (``Int64`` where nullable), float64, float32, bool
    (``boolean`` where nullable), ``str``."""
    out = {}
    for field in table.schema(table.pattern_columns(pattern_count)):
        t = field.type
        if pa.types.is_integer(t):
            dtype = str(t).capitalize() if field.nullable else str(t)
        elif pa.types.is_floating(t):
            dtype = {16: "float16", 32: "float32", 64: "float64"}[t.bit_width]
        elif pa.types.is_boolean(t):
            dtype = "boolean" if field.nullable else "bool"
        else:
            dtype = "str"
        out[field.name] = dtype
    return out


def empty_frame(table: Table, pattern_count: int = 0) -> pd.DataFrame:
    """An empty frame with ``table``'s columns and the pandas dtypes of its Arrow types."""
    return table.schema(table.pattern_columns(pattern_count)).empty_table().to_pandas()


# --------------------------------------------------------------------------- reading


def _same_type(found: pa.DataType, expected: pa.DataType) -> bool:
    if found.equals(expected):
        return True
    text = (pa.string(), pa.large_string())
    return any(found.equals(t) for t in text) and any(expected.equals(t) for t in text)


def check(found: pa.Schema, table: Table, where: PathLike) -> list[str]:
    """Check a file's schema; return its pattern columns. Raises ContractError (one line)."""
    remedy = table.remedy(where)
    names = list(found.names)
    for column in table.columns:
        if column.name not in names:
            raise ContractError(f"{where}: column {column.name!r} missing (expected "
                                f"{column.type}); {remedy}")
        got = found.field(column.name).type
        if not _same_type(got, column.type):
            raise ContractError(f"{where}: column {column.name!r}: expected {column.type}, "
                                f"found {got}; {remedy}")
    extra = _pattern_names(table, names, where, remedy)
    for name in names:
        if name not in table.column_names and name not in extra:
            raise ContractError(f"{where}: unexpected column {name!r} (not in the "
                                f"{table.name} table's contract); {remedy}")
        if name in extra and not _same_type(found.field(name).type, table.pattern.type):
            raise ContractError(f"{where}: column {name!r}: expected {table.pattern.type}, "
                                f"found {found.field(name).type}; {remedy}")
    return extra


def read(path: PathLike, table: Table) -> pa.Table:
    """Read ``path`` and check it against ``table``; returns the Arrow table (declared order,
    declared types). Raises ContractError, one line naming the file and the remedy, when the
    file is missing, unreadable, has a column missing, an undeclared column, a wrong type or a
    null where none is allowed."""
    remedy = table.remedy(path)
    if not os.path.exists(path):
        raise ContractError(f"{path}: file not found; {remedy}")
    try:
        data = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise ContractError(f"{path}: not a readable parquet file ({_one_line(exc, 120)}); "
                            f"{remedy}") from None
    extra = check(data.schema, table, path)
    schema = table.schema(extra)
    for field in schema:
        if not field.nullable and data.column(field.name).null_count:
            raise ContractError(f"{path}: column {field.name!r}: expected no missing values, "
                                f"found {data.column(field.name).null_count}; {remedy}")
    # Declared order and types; the file's pandas metadata is kept so that to_pandas() gives
    # back the frame that was written.
    return data.select(schema.names).cast(schema).replace_schema_metadata(data.schema.metadata)


def read_many(paths: Sequence[PathLike], table: Table) -> pd.DataFrame:
    """Check and concatenate every file in ``paths``, empty ones included, as one frame.

    Pattern columns missing from a file (a data set with fewer classes) are null there. No
    paths: an empty frame with the declared columns.
    """
    if not paths:
        return empty_frame(table)
    parts = [read(p, table).replace_schema_metadata(None) for p in paths]
    names = max((p.schema.names for p in parts), key=len)
    schema = table.schema(_pattern_names(table, names))
    parts = [_widen(p, schema) for p in parts]
    return pa.concat_tables(parts).to_pandas()


def _widen(part: pa.Table, schema: pa.Schema) -> pa.Table:
    """``part`` with the columns of ``schema`` it lacks, as nulls."""
    for field in schema:
        if field.name not in part.schema.names:
            part = part.append_column(field.with_nullable(True),
                                      pa.nulls(len(part), field.type))
    loose = pa.schema([f.with_nullable(True) for f in schema])
    return part.select(schema.names).cast(loose)


def describe(table: Table) -> str:
    """The table's contract as Markdown: one line per column (name, type, unit, meaning)."""
    lines = [f"`{table.path}` — {table.description} (written by rule `{table.rule}`)", "",
             "| column | type | unit | meaning |", "|---|---|---|---|"]
    rows: list[Any] = list(table.columns)
    if table.pattern is not None:
        p = table.pattern
        rows.append(Column(f"{p.prefix}<i>", p.type, p.description, p.unit, p.nullable))
    for c in rows:
        null = " (may be null)" if c.nullable else ""
        lines.append(f"| `{c.name}` | {c.type} | {c.unit or ''} | {c.description}{null} |")
    return "\n".join(lines)


def all_tables() -> Mapping[str, Table]:
    """Every declared table by its path template."""
    return {t.path: t for t in (MATMUL, MATMUL_ENVIRONMENT, MATMUL_SAMPLES, *TRAIN.values(),
                                *SUMMARY.values(), *LESSON.values())}


# --------------------------------------------------------------------------- lesson tables
# Written by the `lesson` rule (mlpbench.lesson): the lesson's exercises and worked examples.

_LESSON_DIR = "results/lesson/"


def _lesson(name: str, description: str, columns: Sequence[Column],
            pattern: ColumnPattern | None = None) -> Table:
    return Table(name, f"{_LESSON_DIR}{name}.parquet", "lesson", description, tuple(columns),
                 pattern)


LESSON: dict[str, Table] = {
    t.name: t for t in (
        _lesson("ops", "one row per number of hidden layers: the chain-rule counting exercise, "
                       "formula against the autograd graph", (
            _DEPTH, _WIDTH,
            _c("operations_formula", I64, "operations between W_0 x and the loss of one point "
                                          "by the formula 2L + 4", "1"),
            _c("operations_graph", I64, "autograd nodes on the chain from the slide's loss back "
                                        "to W_0", "1"),
            _c("multiplications_formula", I64, "multiplications in the chain rule of dL/dW_0 "
                                               "by the formula 2L + 4", "1"),
            _c("backward_steps_graph", I64, "nodes of that chain whose backward step ran in "
                                            "loss.backward() (one multiplication each)", "1"),
            _c("graph_chain", STR, "the chain's node names, W_0 end first"),
            _c("training_nodes_formula", I64, "nodes on the chain of the trained "
                                              "CrossEntropyLoss by the formula 2L + 6", "1"),
            _c("training_nodes_graph", I64, "nodes on the chain from the trained "
                                            "CrossEntropyLoss back to W_0 (transposes of the "
                                            "stored weight left out)", "1"),
            _c("training_backward_steps_graph", I64, "nodes of that chain whose backward step "
                                                     "ran", "1"),
            _c("training_graph_chain", STR, "that chain's node names, W_0 end first"),
        )),
        _lesson("autograd", "one row per component of x in the slide's autograd example", (
            _c("component", I64, "index i of x_i", "1"),
            _c("x", F64, "x_i"),
            _c("grad", F64, "x.grad[i] after f = x.pow(2).sum(); f.backward()"),
            _c("expected_grad", F64, "the slide's value, 2 x_i"),
            _c("matches", BOOL, "grad equals expected_grad exactly"),
        )),
        _lesson("parameters", "one row per entry of each parameter of the lesson's network for "
                              "its representative seed, in mynet.parameters() order", (
            _DATASET, _DEVICE, _WIDTH, _DEPTH, _LR, _SEED, _EPOCHS,
            _c("test_acc", F64, "this seed's test accuracy after `epochs` (training job)", "1"),
            _c("tensor", STR, "parameter name, e.g. input_to_hidden_layer.weight"),
            _c("position", I64, "index of the tensor in mynet.parameters()", "1"),
            _c("kind", STR, "weight or bias"),
            _c("row", I64, "row of the entry (output unit)", "1"),
            _c("col", I64, "column of the entry (input unit; 0 for a bias)", "1"),
            _c("n_rows", I64, "rows of the tensor", "1"),
            _c("n_cols", I64, "columns of the tensor (0 for a bias, a vector)", "1"),
            _c("value", F64, "the learned value"),
        )),
        _lesson("test_points", "one row per test point: the representative seed's logits and "
                               "class beside the lesson's printed class", (
            _DATASET, _DEVICE, _SEED, _EPOCHS,
            _c("point", I64, "index of the test point", "1"),
            _c("x0", F64, "first input feature"),
            _c("x1", F64, "second input feature"),
            _c("label", I64, "true class", "1"),
            _c("pred", I64, "predicted class (arg-max of the logits)", "1"),
            _c("correct", BOOL, "pred equals label"),
            _c("lesson_pred", I64, "the class the lesson's run printed (null for other data)",
               "1", True),
            _c("share_seeds_correct", F64, "share of the baseline's seeds (not diverged) that "
                                           "classify this point right", "1", True),
            _c("n_seeds", I64, "seeds in that share", "1"),
        ), ColumnPattern("logit_", F64, "logit of class <i> at the test point")),
        _lesson("code", "one row per piece of code shown in the report: the lesson's, and the "
                        "mlpbench source that ran instead", (
            _c("section", STR, "report section: matmul, training, ops, autograd, parameters, "
                               "testing, epoch_time"),
            _c("side", STR, "lesson (the slides' code) or mlpbench (the source that ran)"),
            _c("title", STR, "what the code is"),
            _c("source", STR, "the code"),
        )),
        _lesson("depth_epochs", "one row per depth x epoch count of the lesson's network on the "
                                "toy data, over seeds (empty unless the config's "
                                "lesson.depth_epochs is on)", (
            _DEPTH, _WIDTH, _LR, _EPOCHS,
            _c("n_seeds", I64, "seeds trained", "1"),
            _c("n_diverged", I64, "seeds whose loss became non-finite", "1"),
            _c("loss_mean", F64, "mean final training loss over the seeds not diverged", "nat",
               True),
            _c("train_acc_mean", F64, "mean training accuracy", "1", True),
            *(c for c in _stats("test_acc", "test accuracy", "1") if c.name != "test_acc_std"),
        )),
        _lesson("findings", "the lesson section's conclusions, one row each (gathered into "
                            "results/tables/findings by the aggregate rule)",
                SUMMARY["findings"].columns),
    )
}
LESSON_TABLES: tuple[str, ...] = tuple(LESSON)
