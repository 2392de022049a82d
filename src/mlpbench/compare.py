"""Machines as a dimension: this run beside other machines' bundles and the lesson's slides.

A *bundle* (:mod:`mlpbench.bundle`) is one run's stage tables, machine record and config.
:func:`compare_tables` takes this run's own results as a bundle
(:func:`mlpbench.bundle.bundle_from_results`) and the bundles of the config's ``compare:``,
and returns the four tidy tables declared in :mod:`mlpbench.contract` (``machines``,
``machines_matmul``, ``machines_epoch_time``, ``machines_agreement``); with no other machine
they are empty and nothing is computed. The findings drawn from them are
:func:`mlpbench.findings.machine_findings`.

Like with like
--------------
Rows of two machines are compared only where their keys match exactly: a product by backend,
device, dtype, case, kind and shape (m, k, n); an epoch time by data set, device, width, depth,
ensemble members and method, and only when the two runs trained the same data with the same
threads, momentum and batch size; losses and accuracies per member (width, depth, lr, seed,
epochs) under the same conditions. Anything else is left out and said so
(:func:`config_differences` lists the keys whose values differ).

Roofs
-----
Each machine's roof shares (``bandwidth_share``, ``compute_share``, ``bound``) are the ones
its own matmul job computed from its own measured roofs (:mod:`mlpbench.matmul`); they are
carried over, never recomputed. The lesson's slides have no roof (NaN).

Agreement of losses and accuracies
----------------------------------
Same config and seeds give the same weights on every machine (:mod:`mlpbench.ensemble`), so:

- **CPU** runs must be bit-identical (``CPU_TOLERANCE`` = 0). A difference is listed; it can
  come from another torch or BLAS build, or CPU instructions (e.g. FMA) that round in another
  order.
- **CUDA** runs agree within ``CUDA_LOSS_RTOL`` (relative) for losses and within one point of
  the data set (1 / its training or test points) for accuracies: GPUs of other models, drivers
  or cuBLAS versions sum in other orders, and PyTorch does not promise bitwise equal results
  across them (PyTorch notes, "Reproducibility"). A float32 rounding difference (about 1e-7
  relative per operation) grows over thousands of SGD steps at most to about 1e-4 of the loss
  with the lesson's learning rates; 1e-3 is above that and far below the seed-to-seed spread
  of the loss (1e-2 and more), so a loss beyond it is a different result, not rounding. A test
  point near a decision boundary can flip on such a difference: one point is allowed.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from mlpbench import contract
from mlpbench.config import LESSON_MACHINE, REPORT_ONLY_KEYS
from mlpbench.contract import SUMMARY
from mlpbench.tables import lesson_reference_table

__all__ = [
    "COMPARE_TABLES",
    "CPU_TOLERANCE",
    "CUDA_LOSS_RTOL",
    "LESSON_MACHINE",
    "MATMUL_KEY",
    "TRAIN_KEY",
    "compare_from_files",
    "compare_tables",
    "config_differences",
    "empty_tables",
    "measurement_config",
]

COMPARE_TABLES = ("machines", "machines_matmul", "machines_epoch_time", "machines_agreement")
CPU_TOLERANCE = 0.0          # CPU losses and accuracies: bit-identical
CUDA_LOSS_RTOL = 1e-3        # CUDA losses: relative difference allowed (see module docstring)
CUDA_ACC_POINTS = 1          # CUDA accuracies: this many points of the set may differ

MATMUL_KEY = ["backend", "device", "dtype", "case", "kind", "m", "k", "n"]
TRAIN_KEY = ["dataset", "device", "width", "depth", "n_members", "method"]
MEMBER_KEY = ["width", "depth", "lr", "seed", "epochs"]
METRICS = ("loss", "train_acc", "test_acc")
# Config keys that name or choose what is shown, not what is measured.
NOT_MEASURED = ("machine_id", *REPORT_ONLY_KEYS)
# Per data set, what a training result depends on besides the member's own key.
TRAINING_CONDITIONS = ("data", "momentum", "batch_size")


def empty_tables() -> dict[str, pd.DataFrame]:
    """The four tables with their declared columns and no rows (one machine: nothing compared)."""
    return {name: contract.empty_frame(SUMMARY[name]) for name in COMPARE_TABLES}


# --------------------------------------------------------------------------- configs


def measurement_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """The part of a run's config that decides what it measured (``compare`` and
    ``machine_id`` left out)."""
    return {k: v for k, v in (config or {}).items() if k not in NOT_MEASURED}


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key in sorted(value):
            out.update(_flatten(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def config_differences(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None
                       ) -> dict[str, list[Any]]:
    """Dotted config keys whose values differ between two runs' measurement configs:
    ``{key: [value in a, value in b]}`` (None where a key is absent), sorted by key."""
    fa, fb = _flatten(measurement_config(a)), _flatten(measurement_config(b))
    return {key: [fa.get(key), fb.get(key)] for key in sorted(set(fa) | set(fb))
            if fa.get(key) != fb.get(key)}


def _training_conditions(config: Mapping[str, Any] | None, dataset: str) -> dict[str, Any]:
    train = (config or {}).get("train") or {}
    exp = (train.get("experiments") or {}).get(dataset) or {}
    out = {f"train.experiments.{dataset}.{k}": exp.get(k) for k in TRAINING_CONDITIONS}
    out["train.threads"] = train.get("threads")
    return out


def _condition_differences(a: Any, b: Any, dataset: str) -> dict[str, list[Any]]:
    ca, cb = _training_conditions(a.config, dataset), _training_conditions(b.config, dataset)
    return {k: [ca[k], cb[k]] for k in ca if ca[k] != cb[k]}


# --------------------------------------------------------------------------- one bundle


def _stack(machines: Sequence[Any], table: contract.Table, *, prefix: str, suffix: str,
           exclude: Sequence[str] = (), columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The bundles' tables whose names match, stacked as Arrow (declared types) with a
    ``machine_id`` column, converted to pandas once: a per-table conversion costs more than
    the rows do when a hundred machines are compared."""
    names = list(columns or table.column_names)
    schema = pa.schema([table.schema().field(n) for n in names])
    parts = []
    for bundle in machines:
        for name in sorted(bundle.tables):
            if not (name.startswith(prefix) and name.endswith(suffix)) or any(
                    x in name for x in exclude):
                continue
            t = bundle.tables[name]
            if t.num_rows:
                t = t.select(names).cast(schema)
                parts.append(t.append_column("machine_id", pa.array(
                    [bundle.machine_id] * t.num_rows, pa.string())))
    if not parts:
        return pd.DataFrame(columns=[*names, "machine_id"])
    return pa.concat_tables(parts).to_pandas()


def _matmul_rows(machines: Sequence[Any]) -> pd.DataFrame:
    names = [c for c in contract.MATMUL.column_names if c in set(
        SUMMARY["machines_matmul"].column_names)]
    df = _stack(machines, contract.MATMUL, prefix="matmul/", suffix=".parquet",
                exclude=(".environment.", ".samples."), columns=names)
    return df[df["kind"] == "matmul"].assign(note="")


def _lesson_rows() -> pd.DataFrame:
    ref = lesson_reference_table()
    return pd.DataFrame({
        "machine_id": LESSON_MACHINE, **{c: ref[c] for c in
                                         ("backend", "device", "dtype", "case", "m", "k", "n",
                                          "gflop_s", "gb_s")},
        "kind": "matmul", "threads": pd.NA, "time_s_median": ref["time_s"],
        "time_s_iqr": math.nan, "intensity_flop_per_byte": ref["flop"] / ref["bytes"],
        "noisy": False, "status": "ok", "reason": "", "bound": "",
        **dict.fromkeys(("bandwidth_gb_s", "bandwidth_share", "compute_roof_gflop_s",
                         "compute_share", "ridge_flop_per_byte"), math.nan),  # no roofs
        "note": ref["timer"] + ", " + ref["sync"] + ": " + ref["note"],
    })


def _timing_rows(machines: Sequence[Any]) -> pd.DataFrame:
    names = [c for c in SUMMARY["machines_epoch_time"].column_names
             if c in contract.TRAIN["timings"].column_names]
    return _stack(machines, contract.TRAIN["timings"], prefix="train/",
                  suffix="/timings.parquet", columns=names)


_METRIC_COLUMNS = ["dataset", "device", *MEMBER_KEY, *METRICS, "status"]


def _metric_rows(machines: Sequence[Any]) -> pd.DataFrame:
    df = _stack(machines, contract.TRAIN["metrics"], prefix="train/",
                suffix="/metrics.parquet", columns=_METRIC_COLUMNS)
    return df[df["status"] == "ok"].drop(columns="status")


def _machine_row(bundle: Any, origin: str, is_baseline: bool) -> dict[str, Any]:
    record = bundle.machine or {}
    gpu = record.get("gpu") or {}
    versions = record.get("versions") or {}
    return {
        "machine_id": bundle.machine_id, "origin": origin, "source": str(bundle.source),
        "is_baseline": is_baseline, "created_utc": record.get("created_utc"),
        "cpu_model": record.get("cpu_model"), "physical_cores": record.get("physical_cores"),
        "logical_cores": record.get("logical_cores"),
        "gpu_name": gpu.get("name") if gpu.get("available") else None,
        "torch_version": versions.get("torch"), "numpy_version": versions.get("numpy"),
        "git_commit": record.get("git_commit"), "config_hash": record.get("config_hash"),
        "config_json": json.dumps(measurement_config(bundle.config), sort_keys=True,
                                  default=str),
        "note": "" if origin == "this run" else (
            f"measured on {bundle.machine_id}, not on this machine"),
    }


def _lesson_machine_row() -> dict[str, Any]:
    return {
        "machine_id": LESSON_MACHINE, "origin": "lesson", "source": "the lesson's slides",
        "is_baseline": False, "created_utc": None, "cpu_model": None, "physical_cores": None,
        "logical_cores": None, "gpu_name": None, "torch_version": None, "numpy_version": None,
        "git_commit": None, "config_hash": None, "config_json": None,
        "note": "three %timeit means of the lesson's product only, on unstated hardware; "
                "the CUDA number was not synchronised and NumPy ran in float64",
    }


# --------------------------------------------------------------------------- speed-ups


def _speedup(df: pd.DataFrame, reference: pd.DataFrame, key: list[str], time: str,
             usable: pd.Series) -> pd.Series:
    """reference time for the same key / this row's time (NaN where either is unusable)."""
    ref = reference.groupby(key, dropna=False)[time].median().rename("_ref").reset_index()
    merged = df[key].merge(ref, on=key, how="left")
    out = merged["_ref"].to_numpy(dtype=float) / df[time].where(usable).to_numpy(dtype=float)
    return pd.Series(out, index=df.index)


def _matmul_usable(df: pd.DataFrame) -> pd.Series:
    return (df["status"] == "ok") & ~df["noisy"].astype(bool) & (df["time_s_median"] > 0)


# --------------------------------------------------------------------------- agreement


def _tolerance(device: str, metric: str, n_points: int | None) -> str:
    """The tolerance of one comparison, in words."""
    if device == "cpu":
        return "bit-identical (CPU)"
    if metric == "loss":
        return f"relative {CUDA_LOSS_RTOL:g} (CUDA)"
    if n_points:
        return f"{CUDA_ACC_POINTS} of {n_points} points (CUDA)"
    return "bit-identical (CUDA, the set's size unknown)"


@functools.lru_cache(maxsize=None)
def _split_sizes(dataset: str, experiment_json: str) -> tuple[int, int] | None:
    from mlpbench import data  # the registry (no torch at import)

    try:
        return data.split_sizes(dataset, json.loads(experiment_json))
    except (KeyError, TypeError, ValueError):
        return None


def _points(dataset: str, config: Mapping[str, Any] | None, metric: str) -> int | None:
    """Training or test points of ``dataset`` under ``config`` (None when not registered)."""
    exp = (((config or {}).get("train") or {}).get("experiments") or {}).get(dataset)
    sizes = _split_sizes(dataset, json.dumps(exp, sort_keys=True, default=str))
    if sizes is None:
        return None
    return sizes[0] if metric == "train_acc" else sizes[1]


def _agreement(machines: Sequence[Any], base: Any) -> pd.DataFrame:
    """One row per other machine x data set x device x metric (see the module docstring)."""
    metrics = _metric_rows(machines)
    columns = SUMMARY["machines_agreement"].column_names
    mine = metrics[metrics["machine_id"] != base.machine_id]
    theirs = metrics[metrics["machine_id"] == base.machine_id].drop(columns="machine_id")
    if mine.empty or theirs.empty:
        return pd.DataFrame(columns=columns)
    # Only data sets and devices both trained (a device unavailable on either: nothing to say).
    pairs = mine[["machine_id", "dataset", "device"]].drop_duplicates()
    pairs = pairs.merge(theirs[["dataset", "device"]].drop_duplicates(), on=["dataset", "device"])
    by_id = {b.machine_id: b for b in machines}
    differ = {(m, d): _condition_differences(by_id[m], base, d)
              for m, d in pairs[["machine_id", "dataset"]].drop_duplicates().itertuples(
                  index=False)}
    alike = [not differ[(m, d)] for m, d in zip(pairs["machine_id"], pairs["dataset"])]
    keys = ["dataset", "device", *MEMBER_KEY]
    common = mine.merge(pairs[alike], on=["machine_id", "dataset", "device"]).merge(
        theirs, on=keys, suffixes=("", "_base"))
    group = ["machine_id", "dataset", "device"]
    rows = []
    for metric in METRICS:
        x = common[metric].to_numpy(dtype=float)
        y = common[f"{metric}_base"].to_numpy(dtype=float)
        diff = np.abs(x - y)
        cpu = (common["device"] == "cpu").to_numpy()
        if metric == "loss":
            limit = np.where(cpu, 0.0, CUDA_LOSS_RTOL * np.maximum(np.abs(x), np.abs(y)))
        else:
            sizes = {d: _points(d, base.config, metric) or 0 for d in set(common["dataset"])}
            points = common["dataset"].map(sizes).to_numpy(dtype=float)
            share = np.where(points > 0, CUDA_ACC_POINTS / np.maximum(points, 1), 0.0)
            limit = np.where(cpu, 0.0, share + 1e-12)
        frame = common[group].assign(_diff=diff, _bad=np.where(cpu, x != y, diff > limit))
        stats = frame.groupby(group, sort=False).agg(
            n_compared=("_diff", "size"), n_differ=("_bad", "sum"),
            max_abs_diff=("_diff", "max"), worst=("_diff", "idxmax")).reset_index()
        found = {tuple(r[:3]): r for r in stats.itertuples(index=False)}
        for (mid, dataset, device), ok in zip(pairs[group].itertuples(index=False), alike):
            n_points = _points(dataset, base.config, metric)
            row = {"machine_id": mid, "baseline_machine_id": base.machine_id,
                   "dataset": dataset, "device": device, "metric": metric, "n_compared": 0,
                   "n_differ": 0, "max_abs_diff": math.nan,
                   "tolerance": _tolerance(device, metric, n_points),
                   "verdict": "not_compared", "reason": "", "worst_json": "{}"}
            st = found.get((mid, dataset, device))
            if not ok:
                row["reason"] = "; ".join(
                    f"{k} differs: {json.dumps(v[0], default=str)} vs "
                    f"{json.dumps(v[1], default=str)}" for k, v in differ[(mid, dataset)].items())
            elif st is None:
                row["reason"] = "no member and checkpoint is ok on both"
            else:
                w = common.loc[st.worst]
                row.update(n_compared=int(st.n_compared), n_differ=int(st.n_differ),
                           max_abs_diff=float(st.max_abs_diff),
                           verdict=("differs" if st.n_differ else "identical"
                                    if st.max_abs_diff == 0 else "within_tolerance"),
                           worst_json=json.dumps(
                               {**{k: _plain(w[k]) for k in MEMBER_KEY},
                                mid: float(w[metric]), base.machine_id: float(w[f"{metric}_base"])},
                               sort_keys=True))
            rows.append(row)
    out = pd.DataFrame(rows, columns=columns)
    order = {m: i for i, m in enumerate(by_id)}
    return out.sort_values(["machine_id", "dataset", "device"],
                           key=lambda c: c.map(order) if c.name == "machine_id" else c,
                           kind="stable").reset_index(drop=True)


def _renamed(bundle: Any, machine_id: str) -> Any:
    """``bundle`` under another machine_id (a second run of one machine)."""
    import dataclasses

    return dataclasses.replace(bundle, manifest={**bundle.manifest, "machine_id": machine_id})


def _plain(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


# --------------------------------------------------------------------------- entry point


def compare_tables(own: Any, bundles: Sequence[Any], *, reference: Collection[str] = (),
                   baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """The four machine tables for this run (``own``) beside ``bundles``.

    ``own`` and each of ``bundles`` is a :class:`mlpbench.bundle.Bundle` (already verified);
    a bundle with ``own``'s machine_id is this run again and is left out. ``reference``: the
    sources (bundle paths) that were shipped with the project (origin ``reference``);
    ``baseline``: the machine_id speed-ups and agreement are measured against (None: ``own``).
    With no other machine, returns :func:`empty_tables` without reading anything.

    Raises ``ValueError`` naming ``compare.baseline`` when it is not a compared machine.
    """
    others = [b for b in bundles if b.machine_id != own.machine_id]
    if not others:
        return empty_tables()
    machines = [own, *others]
    by_id: dict[str, Any] = {}
    for b in machines:
        # Two runs on one machine (same id and hardware): the later one is "<id>#2", ...
        mid, i = b.machine_id, 1
        while mid in by_id:
            i += 1
            mid = f"{b.machine_id}#{i}"
        by_id[mid] = b if mid == b.machine_id else _renamed(b, mid)
    machines = list(by_id.values())
    base_id = baseline or own.machine_id
    if base_id not in by_id:
        raise ValueError(f"invalid config at 'compare.baseline': {base_id!r} is not a compared "
                         f"machine. Allowed: null or one of {', '.join(by_id)}.")
    base = by_id[base_id]
    ref_sources = {str(s) for s in reference}

    def origin(b: Any) -> str:
        if b is own:
            return "this run"
        return "reference" if str(b.source) in ref_sources else "bundle"

    out: dict[str, pd.DataFrame] = {}
    out["machines"] = pd.DataFrame(
        [_machine_row(b, origin(b), b.machine_id == base_id) for b in machines]
        + [_lesson_machine_row()], columns=SUMMARY["machines"].column_names)

    # Products: each machine's own rows (its own roofs), the lesson's slides as a machine.
    mm = pd.concat([_matmul_rows(machines), _lesson_rows()], ignore_index=True)
    usable = _matmul_usable(mm)
    base_rows = mm[(mm["machine_id"] == base_id) & usable]
    mm["speedup_vs_baseline"] = _speedup(mm, base_rows, MATMUL_KEY, "time_s_median", usable)
    lesson = mm[mm["machine_id"] == LESSON_MACHINE]
    vs_lesson = _speedup(mm, lesson, MATMUL_KEY, "time_s_median", usable)
    mm["speedup_vs_lesson"] = vs_lesson.where(mm["machine_id"] != LESSON_MACHINE)
    columns = SUMMARY["machines_matmul"].column_names
    for col in SUMMARY["machines_matmul"].columns:
        if col.name not in mm:  # the lesson's note and the speed-ups come after
            mm[col.name] = (math.nan if col.type == contract.F64 else
                            pd.NA if col.nullable else "")
    order = {m: i for i, m in enumerate([*by_id, LESSON_MACHINE])}
    mm = mm.sort_values(["machine_id", *MATMUL_KEY], key=lambda c: c.map(order)
                        if c.name == "machine_id" else c, kind="stable")
    out["machines_matmul"] = mm[columns].reset_index(drop=True)

    # Epoch times: like with like only (same data, threads, momentum, batch size as the
    # baseline); others keep their rows, without a speed-up.
    et = _timing_rows(machines)
    columns = SUMMARY["machines_epoch_time"].column_names
    if et.empty:
        out["machines_epoch_time"] = contract.empty_frame(SUMMARY["machines_epoch_time"])
    else:
        alike = pd.Series(True, index=et.index)
        for (mid, dataset), idx in et.groupby(["machine_id", "dataset"]).groups.items():
            if _condition_differences(by_id[mid], base, dataset):
                alike[idx] = False
        usable_t = (et["status"] == "ok") & alike & (et["time_per_epoch_s"] > 0)
        et["speedup_vs_baseline"] = _speedup(et, et[(et["machine_id"] == base_id) & usable_t],
                                             TRAIN_KEY, "time_per_epoch_s", usable_t)
        et = et.sort_values(["machine_id", *TRAIN_KEY], key=lambda c: c.map(order)
                            if c.name == "machine_id" else c, kind="stable")
        out["machines_epoch_time"] = et[columns].reset_index(drop=True)

    agreement = _agreement(machines, base)
    out["machines_agreement"] = (agreement if len(agreement)
                                 else contract.empty_frame(SUMMARY["machines_agreement"]))
    # The contract's types (nullable integers, strings) for every table.
    return {name: contract.to_arrow(df, SUMMARY[name]).to_pandas() for name, df in out.items()}


def compare_from_files(results: str | os.PathLike, machine_id: str, *,
                       bundles: Sequence[str | os.PathLike] = (),
                       reference: Sequence[str | os.PathLike] = (),
                       baseline: str | None = None) -> dict[str, pd.DataFrame]:
    """:func:`compare_tables` for this run's ``results`` folder (its machine ``machine_id``)
    and the bundle files ``bundles`` (the config's ``compare.bundles``) and ``reference``
    (the shipped ones). Without bundle files, returns :func:`empty_tables` and reads nothing.

    Raises :class:`mlpbench.bundle.BundleError` for a bad bundle (or a damaged own table).
    """
    if not bundles and not reference:
        return empty_tables()
    from mlpbench.bundle import bundle_from_results, load_bundles

    own = bundle_from_results(results, machine_id)
    opened = load_bundles([*bundles, *reference], own=own, reference=reference)
    return compare_tables(own, opened, reference=[str(p) for p in reference], baseline=baseline)
