"""Aggregate the per-job result files into the tidy tables the figures and the report read.

``build_tables`` takes explicit file lists (exactly the files the config asks for, never a
glob, so a stale file from an earlier config cannot leak in), checks each against its
declared schema (``mlpbench.contract``: a damaged or outdated file stops the aggregation with
one line naming it and the rule to rerun, it is never skipped) and returns the tables below;
``write_tables`` writes each as ``<name>.parquet`` (with its declared schema) and
``<name>.csv``, atomically.

Statistics over seeds
---------------------
Means are over the seeds that did not diverge. ``*_std`` is the sample standard deviation
(ddof = 1). The 95 % confidence interval of a mean is Student's t interval over seeds:
``mean ± t(0.975, n - 1) · std / sqrt(n)``; it is NaN when fewer than two seeds remain.
It describes the uncertainty of the *mean* (unclipped: with few seeds an accuracy interval
can leave [0, 1]); ``*_min``/``*_max`` show what a single seed can give. Accuracies are
fractions in [0, 1]; losses are the mean cross-entropy in nats.

Tables and their columns
------------------------
``matmul``
    Every input row of ``results/matmul/*.parquet`` with all its columns (declared in
    ``mlpbench.contract.MATMUL``), plus

    - ``speedup_vs_numpy_float64``: time of NumPy float64 on the CPU for the same host, case
      and shape divided by this row's time. On ``case == "lesson"`` this is the speed-up
      against the lesson's baseline (NumPy float64, 1 x 6400 @ 6400 x 5000).
    - ``speedup_vs_numpy_same_dtype``: the same against NumPy of this row's dtype.

    Both are NaN for non-matmul rows, rows that are not ``ok``, rows flagged ``noisy`` (or
    whose NumPy reference is) and shapes without a NumPy row.

``train_summary``
    One row per dataset x device x width x depth x lr x epochs (checkpoint):
    dataset, device, width, depth, lr, epochs, ``variant`` (``baseline``, or the homework
    axis that differs from the baseline: ``epochs``/``width``/``depth``/``lr``, several joined
    by ``+`` in grid mode), status (``ok``; ``diverged`` when every seed diverged;
    ``unavailable`` when the device was), reason, n_seeds (seeds trained), n_ok, n_diverged,
    share_diverged, and for each of ``loss``, ``train_acc``, ``test_acc``:
    ``<m>_mean``, ``<m>_std``, ``<m>_ci95_low``, ``<m>_ci95_high``, ``<m>_min``, ``<m>_max``
    (over non-diverged seeds).

``loss_curves``
    One row per dataset x device x width x depth x lr x epoch (the loss before that epoch's
    step): dataset, device, width, depth, lr, epoch, n_seeds (non-diverged seeds averaged),
    n_diverged (seeds left out because their curve reached NaN/inf), loss_mean, loss_std,
    loss_ci95_low, loss_ci95_high, loss_min, loss_max. The figures draw the mean with the
    min-max band (the spread of single seeds).

``epoch_time``
    Every row of ``timings.parquet`` (columns declared in ``mlpbench.contract.TRAIN``)
    including ``unavailable`` rows, plus ``speedup_vs_cpu``: the CPU's
    time per epoch for the same host, dataset, shape and method divided by this row's. Each
    row's ``time_per_epoch_s`` is the median over its timed windows; ``time_per_epoch_s_min``,
    ``_max`` and ``_iqr`` are the windows' spread (NaN from a single window).

``grad_norms``
    One row per dataset x device x width x depth x lr x stage x layer: n_seeds (finite
    values), grad_norm_mean, grad_norm_std, grad_norm_min, grad_norm_max. Layer 0 is the
    first Linear, layer ``depth`` the output Linear; stage is ``init`` or ``final``.

``lesson_reference``
    The lesson's three ``%timeit`` numbers for x(1 x 6400) @ y(6400 x 5000): source, label,
    backend, device, dtype, case, m, k, n, time_s, timer, sync, note, and the rates they
    imply with this package's definitions: flop, bytes, gflop_s, gb_s.

``decision_regions``
    For each dataset, two networks, each for one representative seed (test accuracy closest
    to the median over seeds): the baseline at exactly the baseline's width, depth, lr and
    epochs (the lesson's network after the lesson's epochs), and the best variant, the
    configuration other than the baseline with the highest mean test accuracy (see
    ``rank_configurations``), at its own epoch checkpoint. Columns: dataset, device, role
    (``baseline``/``best``), width, depth, lr, seed, epochs, test_acc (that seed's),
    test_acc_mean (over seeds), x0, x1, pred (arg-max class of the logits at that point).

``data_points``
    The datasets' points, when a training config is given: dataset, split (train/test),
    x0, x1, label.

``machine``
    One row per machine file: machine_id (the record's, else the file stem), the record's
    scalar keys flattened with ``_`` (host, cpu_model, cores, threads, ``gpu_*``, git and
    config hash), the recorded config as one JSON string, ``config_json``, and the whole
    record (without the config) as ``record_json`` (BLAS details and package versions are
    read from there).

``environment``
    Every row of the timing jobs' environment tables (``results/matmul/<device>.environment
    .parquet`` beside each matmul table, ``environment.parquet`` of each training job): two
    rows per job, ``before`` and ``after`` its timed work, with the threads, thread pools,
    thread variables, affinity, load, CPU clock and GPU state that job saw (see
    :mod:`mlpbench.environment`). Ordered by stage (matmul, train), dataset, device, moment.

``findings``
    One row per conclusion the report states (see ``mlpbench.contract.SUMMARY["findings"]``).

``machines``, ``machines_matmul``, ``machines_epoch_time``, ``machines_agreement``
    This run beside other machines (config ``compare:``), built by :mod:`mlpbench.compare`;
    ``build_tables`` returns them empty (one machine).

Every table's columns, Arrow types, units and meanings are declared in
:mod:`mlpbench.contract`; this docstring explains how the numbers are computed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpbench import contract
from mlpbench.contract import (
    LESSON_TIMEIT_LOOPS,
    MATMUL,
    MATMUL_ENVIRONMENT,
    SUMMARY,
    SUMMARY_TABLES,
    TRAIN,
    matmul_bytes,
    matmul_environment_file,
    matmul_flop,
)
from mlpbench.io import write_csv_atomic
from mlpbench.present import dataset_order

PathLike = str | os.PathLike

TABLE_NAMES = SUMMARY_TABLES  # declared, with their columns, in mlpbench.contract
METRICS = ("loss", "train_acc", "test_acc")
HOMEWORK_AXES = ("epochs", "width", "depth", "lr")
SHAPE = ["dataset", "device", "width", "depth", "lr"]

# The lesson's slide "PyTorch's tensors vs NumPy's arrays": %timeit of z = x @ y with
# x (1 x 6400), y (6400 x 5000), 100 loops each.
LESSON_CASE = {"m": 1, "k": 6400, "n": 5000}
LESSON_NUMBERS = [
    {
        "label": "lesson: torch, CUDA",
        "backend": "torch",
        "device": "cuda",
        "dtype": "float32",
        "time_s": 515e-6,
        "sync": "not synchronised",
        "note": "torch.rand gives float32; CUDA kernels launch asynchronously and %timeit "
        "never calls torch.cuda.synchronize(), so it times launches and the queue, not "
        "necessarily the finished product; the copy to the GPU is outside the timing",
    },
    {
        "label": "lesson: torch, CPU",
        "backend": "torch",
        "device": "cpu",
        "dtype": "float32",
        "time_s": 9.04e-3,
        "sync": "synchronous (CPU)",
        "note": "torch.rand gives float32; threads = torch's default (all cores)",
    },
    {
        "label": "lesson: NumPy",
        "backend": "numpy",
        "device": "cpu",
        "dtype": "float64",
        "time_s": 18.8e-3,
        "sync": "synchronous (CPU)",
        "note": "np.random.random gives float64: twice the bytes of the float32 tensors",
    },
]


# --------------------------------------------------------------------------- reading


def _read_many(files: Sequence[PathLike], table: contract.Table) -> pd.DataFrame:
    """Every file, checked against its contract and concatenated (empty files included)."""
    return contract.read_many(list(files), table)


def _read_train(train_dirs: Sequence[PathLike], stem: str) -> pd.DataFrame:
    return _read_many([Path(d) / f"{stem}.parquet" for d in train_dirs], TRAIN[stem])


# --------------------------------------------------------------------------- statistics


def _t_half_width(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of Student's t 95 % interval of a mean; NaN for n < 2.

    The quantile is ``scipy.special.stdtrit(dof, 0.975)``, the inverse of Student's t CDF
    that ``scipy.stats.t.ppf`` evaluates too (same values), without importing scipy.stats
    (about a second on a small machine, for one function).
    """
    n = n.astype(float)
    dof = (n - 1).where(n >= 2)
    from scipy.special import stdtrit  # here: figures import this module and need no scipy

    t = pd.Series(stdtrit(dof.to_numpy(), 0.975), index=std.index)
    return t * std / np.sqrt(n)


def _describe(df: pd.DataFrame, keys: list[str], value: str, prefix: str) -> pd.DataFrame:
    """n, mean, std, t-CI, min, max of ``value`` per group (NaNs dropped)."""
    g = df.groupby(keys, dropna=False, sort=True)[value]
    out = g.agg(n="count", mean="mean", std="std", min="min", max="max").reset_index()
    half = _t_half_width(out["std"], out["n"])
    out[f"{prefix}_ci95_low"] = out["mean"] - half
    out[f"{prefix}_ci95_high"] = out["mean"] + half
    return out.rename(
        columns={s: f"{prefix}_{s}" for s in ("mean", "std", "min", "max")}
    )


# --------------------------------------------------------------------------- matmul


def matmul_table(raw: pd.DataFrame) -> pd.DataFrame:
    """The input rows plus the two NumPy speed-ups (see the module docstring)."""
    df = raw.reset_index(drop=True).copy()
    # A row flagged noisy (disturbed in every attempt) is neither a reference nor sped up.
    ok = (df["status"] == "ok") & (df["kind"] == "matmul") & ~df["noisy"].astype(bool)
    ref = df[ok & (df["backend"] == "numpy") & (df["device"] == "cpu")]
    # Not keyed by host: the aggregate reads one config's files, and on a cluster the CPU and CUDA
    # jobs run on different nodes.
    keys = ["case", "m", "k", "n"]
    # One reference time per key; if several NumPy rows share it (e.g. two thread counts),
    # their median stands for NumPy.
    ref = ref.groupby([*keys, "dtype"], as_index=False)["time_s_median"].median()
    f64 = ref[ref["dtype"] == "float64"].drop(columns="dtype")
    f64 = f64.rename(columns={"time_s_median": "_t_f64"})
    same = ref.rename(columns={"time_s_median": "_t_same"})
    df = df.merge(f64, on=keys, how="left").merge(same, on=[*keys, "dtype"], how="left")
    t = df["time_s_median"].where(ok)
    df["speedup_vs_numpy_float64"] = df["_t_f64"] / t
    df["speedup_vs_numpy_same_dtype"] = df["_t_same"] / t
    df = df.drop(columns=["_t_f64", "_t_same"])
    order = ["host", "device", "backend", "dtype", "case", "kind", "m", "k", "n"]
    return df.sort_values(order, kind="stable").reset_index(drop=True)


def lesson_reference_table() -> pd.DataFrame:
    """The lesson's three numbers, with the rates they imply (same formulas as the stage)."""
    m, k, n = LESSON_CASE["m"], LESSON_CASE["k"], LESSON_CASE["n"]
    rows = []
    for item in LESSON_NUMBERS:
        itemsize = np.dtype(item["dtype"]).itemsize
        flop = matmul_flop(m, k, n)
        nbytes = matmul_bytes(m, k, n, itemsize)
        rows.append(
            {
                "source": "lesson",
                **{key: item[key] for key in ("label", "backend", "device", "dtype")},
                "case": "lesson",
                "m": m,
                "k": k,
                "n": n,
                "time_s": item["time_s"],
                "timer": f"%timeit, {LESSON_TIMEIT_LOOPS} loops",
                "sync": item["sync"],
                "note": item["note"],
                "flop": flop,
                "bytes": nbytes,
                "gflop_s": flop / item["time_s"] / 1e9,
                "gb_s": nbytes / item["time_s"] / 1e9,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- training


def infer_baselines(metrics: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Guess each dataset's baseline when no config is given.

    In sweep mode the baseline shape is the one evaluated at the most epoch checkpoints and
    the baseline epoch count is the checkpoint most shapes share; ties (grid mode) go to the
    smallest width, depth, lr and epochs, which is the lesson's network. Pass the config's
    baselines to ``build_tables`` to avoid guessing.
    """
    out: dict[str, dict[str, Any]] = {}
    rows = metrics.dropna(subset=["epochs", "lr"])
    for dataset, d in rows.groupby("dataset", sort=True):
        shapes = d.groupby(["width", "depth", "lr"])["epochs"].nunique().reset_index()
        shapes = shapes.sort_values(
            ["epochs", "width", "depth", "lr"], ascending=[False, True, True, True]
        )
        width, depth, lr = shapes.iloc[0][["width", "depth", "lr"]]
        per_epoch = d.groupby("epochs")[["width", "depth"]].apply(
            lambda g: len(g.drop_duplicates())
        )
        per_epoch = per_epoch.reset_index(name="n").sort_values(
            ["n", "epochs"], ascending=[False, True]
        )
        out[str(dataset)] = {
            "epochs": int(per_epoch.iloc[0]["epochs"]),
            "width": int(width),
            "depth": int(depth),
            "lr": float(lr),
        }
    return out


def _variant(row: Mapping[str, Any], base: Mapping[str, Any] | None) -> str:
    if base is None:
        return ""
    differ = []
    for axis in HOMEWORK_AXES:
        value = row[axis]
        if value is None or (isinstance(value, float) and np.isnan(value)):
            continue  # not applicable (e.g. an unavailable device's row)
        if not np.isclose(float(value), float(base[axis])):
            differ.append(axis)
    return "+".join(differ) or "baseline"


def train_summary_table(
    metrics: pd.DataFrame, baselines: Mapping[str, Mapping[str, Any]]
) -> pd.DataFrame:
    keys = [*SHAPE, "epochs"]
    m = metrics.copy()
    trained = m[m["status"].isin(["ok", "diverged"])]
    ok = trained[trained["status"] == "ok"]
    counts = trained.assign(_ok=(trained["status"] == "ok").astype("int64"))
    counts = counts.groupby(keys, dropna=False).agg(
        n_seeds=("_ok", "size"), n_ok=("_ok", "sum")
    ).reset_index()
    counts["n_diverged"] = counts["n_seeds"] - counts["n_ok"]
    counts["share_diverged"] = counts["n_diverged"] / counts["n_seeds"]
    counts["status"] = np.where(counts["n_ok"] > 0, "ok", "diverged")
    counts["reason"] = np.where(
        counts["n_ok"] > 0, "", "every seed diverged (non-finite loss)"
    )
    out = counts
    for metric in METRICS:
        desc = _describe(ok, keys, metric, metric).drop(columns="n")
        out = out.merge(desc, on=keys, how="left")

    unavailable = m[m["status"] == "unavailable"]
    if len(unavailable):
        un = unavailable.groupby(keys, dropna=False).agg(reason=("reason", "first")).reset_index()
        un = un.assign(status="unavailable", n_seeds=0, n_ok=0, n_diverged=0)
        un["share_diverged"] = np.nan
        out = pd.concat([out, un], ignore_index=True) if len(out) else un

    out["variant"] = [_variant(r, baselines.get(r["dataset"])) for _, r in out.iterrows()]
    cols = [*keys, "variant", "status", "reason", "n_seeds", "n_ok", "n_diverged",
            "share_diverged"]
    cols += [f"{m_}_{s}" for m_ in METRICS
             for s in ("mean", "std", "ci95_low", "ci95_high", "min", "max")]
    out = out.reindex(columns=cols)
    for col in ("n_seeds", "n_ok", "n_diverged"):
        out[col] = out[col].astype("int64")
    return out.sort_values(keys, kind="stable").reset_index(drop=True)


def loss_curves_table(losses: pd.DataFrame) -> pd.DataFrame:
    curve = [*SHAPE, "seed"]
    if len(losses) == 0:
        return contract.empty_frame(SUMMARY["loss_curves"])
    finite = np.isfinite(losses["loss"].to_numpy(dtype=float))
    bad = losses.loc[~finite, curve].drop_duplicates()
    bad_count = bad.groupby(SHAPE).size().rename("n_diverged").reset_index()
    clean = losses.merge(bad.assign(_bad=True), on=curve, how="left")
    clean = clean[clean["_bad"].isna()].drop(columns="_bad")
    out = _describe(clean, [*SHAPE, "epoch"], "loss", "loss").rename(columns={"n": "n_seeds"})
    out = out.merge(bad_count, on=SHAPE, how="left")
    out["n_diverged"] = out["n_diverged"].fillna(0).astype("int64")
    cols = [*SHAPE, "epoch", "n_seeds", "n_diverged", "loss_mean", "loss_std",
            "loss_ci95_low", "loss_ci95_high", "loss_min", "loss_max"]
    return out[cols].sort_values([*SHAPE, "epoch"], kind="stable").reset_index(drop=True)


def epoch_time_table(timings: pd.DataFrame) -> pd.DataFrame:
    df = timings.reset_index(drop=True).copy()
    keys = ["dataset", "width", "depth", "method"]  # not host: see matmul_table
    cpu = df[(df["device"] == "cpu") & (df["status"] == "ok")]
    cpu = cpu.groupby(keys, as_index=False)["time_per_epoch_s"].median()
    df = df.merge(cpu.rename(columns={"time_per_epoch_s": "_cpu"}), on=keys, how="left")
    t = df["time_per_epoch_s"].where(df["status"] == "ok")
    df["speedup_vs_cpu"] = df["_cpu"] / t
    df = df.drop(columns="_cpu")
    return df.sort_values(["dataset", "width", "depth", "device", "method"],
                          kind="stable").reset_index(drop=True)


def environment_table(matmul_env: pd.DataFrame, train_env: pd.DataFrame) -> pd.DataFrame:
    """The timing jobs' environment rows, matmul jobs first, then training jobs; within a
    stage by dataset, device and moment (before, then after)."""
    parts = [df for df in (matmul_env, train_env) if len(df)]
    if not parts:
        return contract.empty_frame(SUMMARY["environment"])
    df = pd.concat(parts, ignore_index=True)
    order = {"matmul": 0, "train": 1}
    df["_stage"] = df["stage"].map(lambda s: order.get(s, len(order)))
    df["_moment"] = (df["moment"] != "before").astype(int)
    df["_dataset"] = df["dataset"].fillna("")
    df = df.sort_values(["_stage", "_dataset", "device", "_moment"], kind="stable")
    return df.drop(columns=["_stage", "_moment", "_dataset"]).reset_index(drop=True)


def grad_norms_table(grads: pd.DataFrame) -> pd.DataFrame:
    keys = [*SHAPE, "stage", "epochs", "layer"]
    g = grads.copy()
    g["grad_norm"] = g["grad_norm"].astype(float).where(np.isfinite(g["grad_norm"].astype(float)))
    out = _describe(g, keys, "grad_norm", "grad_norm").rename(columns={"n": "n_seeds"})
    cols = [*keys, "n_seeds", "grad_norm_mean", "grad_norm_std", "grad_norm_min",
            "grad_norm_max"]
    return out[cols].sort_values(keys, kind="stable").reset_index(drop=True)


def rank_configurations(summary: pd.DataFrame) -> pd.DataFrame:
    """``ok`` rows of ``train_summary``, best first: highest mean test accuracy, then lowest
    mean loss, then the smaller network (width, depth), the fewer epochs and the smaller lr.

    The report and the decision-region figure both name "the best variant" from this order.
    """
    ok = summary[summary["status"] == "ok"]
    return ok.sort_values(["test_acc_mean", "loss_mean", "width", "depth", "epochs", "lr"],
                          ascending=[False, True, True, True, True, True], kind="stable")


def epoch_time_by_shape(epoch_time: pd.DataFrame) -> pd.DataFrame:
    """The ``epoch_time`` table, one row per dataset x width x depth (for reading, not a file).

    Columns: dataset, width, depth, n_members (of the ensemble), and for each device ``d``
    in the table (cpu first, then cuda, then any other): ``d_ensemble_time_per_epoch_s``,
    ``d_ensemble_time_per_member_epoch_s``, ``d_loop_time_per_epoch_s`` (medians over the
    timed windows; NaN where that timing is not ``ok``), the windows' range of the two
    per-epoch times as ``d_ensemble_time_per_epoch_s_min``/``_max`` and
    ``d_loop_time_per_epoch_s_min``/``_max`` (NaN from a single window), ``d_status`` (``ok``
    when the ensemble was timed, else its status) and ``d_reason`` ("" when ok). Several hosts'
    rows are combined by their median (ranges: the smallest minimum, the largest maximum).
    """
    keys = ["dataset", "width", "depth"]
    if epoch_time.empty:
        return pd.DataFrame(columns=[*keys, "n_members"])
    df = epoch_time.copy()
    ok = df[df["status"] == "ok"]
    ens = df[df["method"] == "ensemble"]
    out = ens.groupby(keys, as_index=False)["n_members"].max()
    devices = sorted(set(df["device"]), key=lambda d: (d != "cpu", d != "cuda", d))
    for device in devices:
        times = []
        for method, column, name in (
            ("ensemble", "time_per_epoch_s", "ensemble_time_per_epoch_s"),
            ("ensemble", "time_per_member_epoch_s", "ensemble_time_per_member_epoch_s"),
            ("loop", "time_per_epoch_s", "loop_time_per_epoch_s"),
        ):
            rows = ok[(ok["device"] == device) & (ok["method"] == method)]
            times.append(rows.groupby(keys)[column].median().rename(f"{device}_{name}"))
            if column == "time_per_epoch_s":
                times.append(rows.groupby(keys)["time_per_epoch_s_min"].min()
                             .rename(f"{device}_{name}_min"))
                times.append(rows.groupby(keys)["time_per_epoch_s_max"].max()
                             .rename(f"{device}_{name}_max"))
        state = ens[ens["device"] == device].groupby(keys).agg(
            status=("status", lambda s: "ok" if (s == "ok").any() else s.iloc[0]),
            reason=("reason", lambda r: "" if r.isna().all() else str(r.dropna().iloc[0])),
        )
        state["reason"] = state["reason"].where(state["status"] != "ok", "")
        state = state.add_prefix(f"{device}_")
        out = out.merge(pd.concat([*times, state], axis=1).reset_index(), on=keys, how="left")
    def order(c: pd.Series) -> pd.Series:
        if c.name != "dataset":
            return c
        return c.map({name: i for i, name in enumerate(dataset_order(c.dropna()))})

    return out.sort_values(keys, key=order, kind="stable").reset_index(drop=True)


def pick_device(df: pd.DataFrame) -> str | None:
    """The device a figure of ``df``'s rows draws: CPU when present, else the first by name."""
    devices = set(df["device"].unique())  # unique() first: a decision grid has ~10^6 rows
    return "cpu" if "cpu" in devices else (sorted(devices)[0] if devices else None)


def representative_seed(metrics: pd.DataFrame) -> pd.Series:
    """The seed whose test accuracy is closest to the median (then lowest loss, lowest seed)."""
    m = metrics.assign(_dist=(metrics["test_acc"] - metrics["test_acc"].median()).abs())
    return m.sort_values(["_dist", "loss", "seed"]).iloc[0]


def _close(df: pd.DataFrame, **values: Any) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for key, value in values.items():
        mask &= np.isclose(df[key].astype(float), float(value))
    return mask


def decision_regions_table(
    summary: pd.DataFrame, metrics: pd.DataFrame, decision_dirs: Sequence[PathLike]
) -> pd.DataFrame:
    """Baseline and best variant per dataset, each at its own checkpoint and one
    representative seed, as arg-max classes on the decision grid."""
    decision = _read_train(decision_dirs, "decision")
    frames = []
    for dataset, dec in decision.groupby("dataset", sort=True):
        device = pick_device(dec)
        dec = dec[dec["device"] == device]
        s = summary[(summary["dataset"] == dataset) & (summary["device"] == device)
                    & (summary["status"] == "ok")]
        if s.empty:
            continue
        # The grid is stored at every checkpoint: show each network at exactly the epochs its
        # row of train_summary describes.
        ranked = rank_configurations(s)
        picks = [("baseline", s[s["variant"] == "baseline"]),
                 ("best", ranked[ranked["variant"] != "baseline"])]
        for role, rows in picks:
            if rows.empty:
                continue
            row = rows.iloc[0]
            config = {k: row[k] for k in ("width", "depth", "lr", "epochs")}
            sel = metrics[(metrics["dataset"] == dataset) & (metrics["device"] == device)
                          & (metrics["status"] == "ok")]
            sel = sel[_close(sel, **config)]
            if sel.empty:
                continue
            seed_row = representative_seed(sel)
            grid = dec[_close(dec, **config) & (dec["seed"] == seed_row["seed"])]
            # Datasets with fewer classes have NaN in the other datasets' logit columns.
            logits = sorted((c for c in grid.columns
                             if c.startswith("logit_") and grid[c].notna().any()),
                            key=lambda c: int(c.split("_")[1]))
            if grid.empty or not logits:
                continue
            frames.append(pd.DataFrame({
                "dataset": dataset, "device": device, "role": role,
                "width": int(config["width"]), "depth": int(config["depth"]),
                "lr": float(config["lr"]), "seed": int(seed_row["seed"]),
                "epochs": int(config["epochs"]), "test_acc": float(seed_row["test_acc"]),
                "test_acc_mean": float(row["test_acc_mean"]),
                "x0": grid["x0"].to_numpy(dtype=float), "x1": grid["x1"].to_numpy(dtype=float),
                "pred": np.argmax(grid[logits].to_numpy(dtype=float), axis=1).astype("int64"),
            }))
    columns = SUMMARY["decision_regions"].column_names
    if not frames:
        return contract.empty_frame(SUMMARY["decision_regions"])
    return pd.concat(frames, ignore_index=True)[columns]


def data_points_table(
    datasets_cfg: Mapping[str, Mapping[str, Any]] | None,
    loader: Callable[[str, Mapping[str, Any]], Any] | None = None,
) -> pd.DataFrame:
    """The train/test points of each dataset, regenerated from its config (deterministic).

    ``loader(name, cfg)`` returns x_train, y_train, x_test, y_test (as attributes or keys);
    it defaults to ``mlpbench.data.points`` (the points of ``mlpbench.data.load``, without torch).
    """
    columns = SUMMARY["data_points"].column_names
    if not datasets_cfg:
        return contract.empty_frame(SUMMARY["data_points"])
    if loader is None:
        from mlpbench.data import points as loader  # late: only this table needs the data

    frames = []
    for name, cfg in datasets_cfg.items():
        ds = loader(name, cfg)
        for split in ("train", "test"):
            x = np.asarray(_field(ds, f"x_{split}"), dtype=float)
            y = np.asarray(_field(ds, f"y_{split}"))
            if y.ndim == 2:  # one-hot labels, as the lesson writes them
                y = y.argmax(axis=1)
            frames.append(pd.DataFrame({"dataset": name, "split": split, "x0": x[:, 0],
                                        "x1": x[:, 1], "label": y.astype("int64")}))
    return pd.concat(frames, ignore_index=True)[columns]


def _field(obj: Any, name: str) -> Any:
    value = obj[name] if isinstance(obj, Mapping) else getattr(obj, name)
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


# --------------------------------------------------------------------------- machine


def machine_table(machine_files: Sequence[PathLike]) -> pd.DataFrame:
    """One row per machine record, with the columns declared in ``contract.SUMMARY["machine"]``:
    the record's scalar keys flattened with ``_`` (``gpu_available``, ...), the config as
    ``config_json`` and the whole record (without the config) as ``record_json``."""
    table = SUMMARY["machine"]
    rows = []
    for path in machine_files:
        info = json.loads(Path(path).read_text())
        config = info.pop("config", None)  # the whole config: one JSON cell, not 100 columns
        flat = pd.json_normalize(info, sep="_").iloc[0].to_dict()
        row = {name: flat.get(name) for name in table.column_names}
        row["machine_id"] = info.get("machine_id") or Path(path).stem
        row["config_json"] = (None if config is None
                              else json.dumps(config, sort_keys=True, default=str))
        # The nested record, for readers that want what the columns leave out (BLAS, versions).
        row["record_json"] = json.dumps(info, sort_keys=True, default=str)
        rows.append(row)
    if not rows:
        return contract.empty_frame(table)
    # The contract's types (a GPU's memory is a float, or null without a GPU).
    return contract.to_arrow(pd.DataFrame(rows, columns=table.column_names), table).to_pandas()


# --------------------------------------------------------------------------- entry points


def build_tables(
    matmul_files: Sequence[PathLike],
    train_dirs: Sequence[PathLike],
    machine_files: Sequence[PathLike],
    *,
    train_cfg: Mapping[str, Any] | None = None,
    points_loader: Callable[[str, Mapping[str, Any]], Any] | None = None,
) -> dict[str, pd.DataFrame]:
    """Read exactly the given files and return every table of the module docstring.

    ``train_cfg`` (optional) is ``{"datasets": {name: experiment}}`` for the data sets of this
    run, each experiment as under the config's ``train.experiments``: its ``baseline``
    names the baseline (otherwise guessed, see ``infer_baselines``) and their data
    parameters let ``data_points`` regenerate the points for the decision-region figure
    (with ``points_loader``, default ``mlpbench.data.points``).
    """
    metrics = _read_train(train_dirs, "metrics")
    datasets_cfg = (train_cfg or {}).get("datasets") or {}
    baselines = infer_baselines(metrics)
    baselines.update({name: cfg["baseline"] for name, cfg in datasets_cfg.items()
                      if "baseline" in cfg})
    summary = train_summary_table(metrics, baselines)
    tables = {
        "matmul": matmul_table(_read_many(matmul_files, MATMUL)),
        "train_summary": summary,
        "loss_curves": loss_curves_table(_read_train(train_dirs, "losses")),
        "epoch_time": epoch_time_table(_read_train(train_dirs, "timings")),
        "grad_norms": grad_norms_table(_read_train(train_dirs, "gradnorms")),
        "lesson_reference": lesson_reference_table(),
        "decision_regions": decision_regions_table(summary, metrics, train_dirs),
        "data_points": data_points_table(datasets_cfg, points_loader),
        "machine": machine_table(machine_files),
        # Written by the same job as each matmul table, beside it.
        "environment": environment_table(
            _read_many([matmul_environment_file(f) for f in matmul_files], MATMUL_ENVIRONMENT),
            _read_train(train_dirs, "environment")),
    }
    # The conclusions are computed from the tables above (mlpbench.findings imports this module).
    from mlpbench.findings import findings_table

    tables["findings"] = findings_table(tables)
    # One machine: the machine tables are empty; mlpbench.compare fills them (and adds its
    # findings) when other machines' bundles are compared (config `compare:`).
    from mlpbench.compare import empty_tables

    tables.update(empty_tables())
    return tables


def write_tables(tables: Mapping[str, pd.DataFrame], out_dir: PathLike) -> list[Path]:
    """Write each table as ``<name>.parquet`` (with its declared schema, see
    :mod:`mlpbench.contract`) and ``<name>.csv``; returns the paths written.

    Raises ``mlpbench.contract.ContractError`` for a name that is not a declared summary
    table or a frame that does not match its declaration, before anything is written.
    """
    out = Path(out_dir)
    unknown = [name for name in tables if name not in SUMMARY]
    if unknown:
        raise contract.ContractError(f"table {unknown[0]!r}: not a declared summary table; "
                                     f"declared: {', '.join(SUMMARY)}")
    arrow = {name: contract.to_arrow(df, SUMMARY[name]) for name, df in tables.items()}
    written = []
    for name, df in tables.items():
        path = out / f"{name}.parquet"
        contract.write_arrow(arrow[name], path)
        write_csv_atomic(df[list(arrow[name].schema.names)], out / f"{name}.csv")
        written += [path, out / f"{name}.csv"]
    return written


def load_tables(tables_dir: PathLike) -> dict[str, pd.DataFrame]:
    """Read back the summary tables that exist in ``tables_dir``, each checked against its
    contract (``mlpbench.contract.ContractError`` names a damaged file and the remedy)."""
    d = Path(tables_dir)
    return {name: contract.read(d / f"{name}.parquet", SUMMARY[name]).to_pandas()
            for name in TABLE_NAMES if (d / f"{name}.parquet").exists()}


def load_lesson_tables(lesson_dir: PathLike) -> dict[str, pd.DataFrame]:
    """Read the lesson rule's tables (``results/lesson/<name>.parquet``, declared in
    ``mlpbench.contract.LESSON``), each checked against its contract. Every declared table
    must be there: a missing or damaged file raises ``mlpbench.contract.ContractError`` naming
    it and the rule that writes it."""
    d = Path(lesson_dir)
    return {name: contract.read(d / f"{name}.parquet", table).to_pandas()
            for name, table in contract.LESSON.items()}
