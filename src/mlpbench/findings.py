"""The run's conclusions, as data: every judgement the report states, with its evidence.

``findings_table(tables)`` takes the summary tables of ``mlpbench.tables`` by name and
returns one row per conclusion. The report turns rows into sentences; it decides nothing.

Columns (``FINDINGS_COLUMNS``)
------------------------------
finding          id of the rule (see ``RULES``), e.g. ``axis_effect``
section          ``matmul``, ``training``, ``lesson``, ``machine``, or ``machines`` (the comparison
                 with other machines' bundles: :func:`machine_findings`)
dataset, device  what the finding is about (None where it does not apply)
subject          what is judged, in words, e.g. ``"width 8 vs baseline (test_acc)"``
verdict          a short machine-readable word, e.g. ``better``, ``within_seed_noise``
value            the number judged (float64, NaN where there is none)
reference_value  what it is judged against (float64, NaN where there is none)
unit             unit of ``value`` and ``reference_value``: ``s``, ``ratio``, ``fraction``,
                 ``nats``, ``GB/s``, ``GFLOP/s``, ``FLOP/byte``, ``count`` (None if no value)
rule             the rule applied, in words
evidence         JSON object: the rows (by their key columns) and numbers the finding rests on

Thresholds are module constants so a reader finds each in one place; ``findings_table``
takes them as keyword arguments for callers that want another rule.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from mlpbench.guard import WAIT_LIMIT_THREADS
from mlpbench.tables import HOMEWORK_AXES, rank_configurations

FINDINGS_COLUMNS = ["finding", "section", "dataset", "device", "subject", "verdict", "value",
                    "reference_value", "unit", "rule", "evidence"]

TWIN_TOLERANCE = 0.25        # twin timings of one product that differ by more disagree
NON_MONOTONIC_FACTOR = 1.5   # a product this much slower than a larger one is flagged
CACHE_EFFECT = 0.10          # a warm lesson product this much faster than cold: the cache helps
COPY_AGREEMENT = 1.25        # copy rates of one device within this factor of each other agree
CHANCE_MARGIN = 0.05         # test accuracy within this of chance is "at chance"
STALL_SHARE = 0.9            # final loss above this share of the initial loss: stalled
ABOVE_COPY = 1.05            # bandwidth share above this beats the copy benchmark
BANDWIDTH_BOUND = 0.5        # bandwidth share at least this: bandwidth is the limit
MEMORY_BOUND_INTENSITY = 1.0  # FLOP per byte below this: memory bound on any current device
SMALL_TEST_SET = 5           # a test set of at most this many points moves in big steps
REAL_GAIN = 1.1              # a setting this much faster (time ratio) is a real gain

RULES = {
    "cuda_status": "CUDA is available for a stage when any of its CUDA rows has status ok",
    "lesson_case_shape": "the run's lesson case has the lesson's shape m, k, n",
    "lesson_fastest": "the lesson-case product with the smallest median time",
    "lesson_numpy_gap": "the lesson's NumPy time over its torch CPU time; bytes / time = GB/s",
    "gpu_vs_cpu": "torch float32 lesson-case median time on the CPU over the same on CUDA",
    "transfer_cost": "copy of y to the GPU (h2d) against the product's own CUDA time",
    "lesson_intensity": f"FLOP per operand byte below {MEMORY_BOUND_INTENSITY:g}: memory bound",
    "copy_bandwidth": "the highest copy bandwidth measured on each device",
    "copy_agreement": f"the copy rates of one device (every backend and dtype) agree when the "
                      f"highest is at most {COPY_AGREEMENT:g}× the lowest; the memory roof is "
                      f"the highest either way",
    "dtype_vs_library": "the dtype explains most of the NumPy/torch gap when |log| of NumPy "
                        "float64/float32 is at least |log| of NumPy/torch at either dtype",
    "twin_timing": f"one product timed in two series disagrees when the times differ by more "
                   f"than {TWIN_TOLERANCE:.0%} (|log ratio| > log {1 + TWIN_TOLERANCE:g})",
    "lesson_bandwidth_share": f"the lesson product's best share of the measured copy bandwidth: "
                              f"above {ABOVE_COPY:g} beats the copy benchmark, at least "
                              f"{BANDWIDTH_BOUND:g} is bandwidth bound, below is held back",
    "gemv_cache": "matrix-vector products above the copy bandwidth (share > 1) run from cache",
    "lesson_cache": f"the cache helps when the lesson product's warm timing (operands reused "
                    f"call after call; median ± IQR/2) lies wholly below its cold one (caches "
                    f"emptied before every call) and its median more than {CACHE_EFFECT:.0%} "
                    f"below; otherwise within the spread (or cold faster)",
    "best_square": "the square product with the highest GFLOP/s",
    "rises_with_size": f"within one series a product that took more than "
                       f"{NON_MONOTONIC_FACTOR:g}× the time of a larger one does not rise "
                       f"with size (the worst such pair is kept)",
    "training_result": "the baseline (variant 'baseline') on the dataset's training device "
                       "(CPU when it has ok rows, else the first device that has)",
    "best_variant": "best ok configuration other than the baseline by rank_configurations "
                    "(test accuracy, then loss, then the smaller network); 95% CIs compared",
    "axis_effect": "the ok setting farthest from the baseline along one axis vs the baseline: "
                   "a real change when the 95% CIs of the means do not overlap, within seed "
                   "noise when they do, too few seeds when either CI is undefined",
    "axis_best": "the best configuration along an axis by rank_configurations",
    "divergence": "share of seeds with a non-finite loss; all_diverged when every seed did",
    "at_chance": f"mean test accuracy within {CHANCE_MARGIN:g} of 1 / number of classes",
    "stalled": f"mean final loss above the mean loss before the first step: rose; above "
               f"{STALL_SHARE:g} × it: stalled; else learned",
    "seed_spread": "worst and best single-seed test accuracy of a configuration",
    "chance_level": "expected accuracy of guessing one of the dataset's classes at random",
    "test_set_size": f"a test set of at most {SMALL_TEST_SET} points allows only coarse "
                     f"accuracies",
    "grad_ratio": "first-layer over output-layer mean gradient norm at initialisation, "
                  "baseline width and lr, per depth",
    "cuda_vs_cpu_epoch": "per shape, CUDA's ensemble epoch time is faster or slower than the "
                         "CPU's only when the two min-max ranges of their timed windows do not "
                         "overlap; verdict: the direction every separated shape agrees on "
                         "(mixed when they disagree, within_spread when no shape is separated); "
                         "value: median over shapes of the CPU's median time over CUDA's",
    "ensemble_gain": "per shape, the ensemble's per-member epoch time is faster or slower than "
                     "the loop's only when the min-max ranges of their timed windows (the "
                     "ensemble's divided by its members) do not overlap; verdict: the direction "
                     "every separated shape agrees on (mixed, within_spread otherwise); value: "
                     "median over shapes of the loop's median over the ensemble's",
    "epoch_time_step": "one step along width (at the most common depth) or depth (at the most "
                       "common width): the larger shape's epoch is slower or faster only when "
                       "the min-max ranges of the two shapes' timed windows do not overlap; "
                       "within_spread when they overlap, no_spread when either has one window",
    "member_epoch_range": "fastest and slowest ensemble time per member-epoch",
    "matmul_samples": "fewest and most samples behind one median (products and copies)",
    "noisy_timings": f"timings during which the job's threads waited for a CPU (on average "
                     f"more than {WAIT_LIMIT_THREADS:g} threads) in every attempt: kept, shown "
                     f"flagged, and left out of every other finding",
    "lesson_twin_left_out": "lesson-case timings whose twin in the matrix-vector series "
                            "disagrees are left out of the headline",
    "compute_roof": "the highest GFLOP/s of a square product on the device in the dtype "
                    "(rows not noisy): the measured compute roof, the best over several "
                    "shapes as mamf-finder takes it",
    "ridge_point": "compute roof / memory roof (FLOP per byte): products of lower arithmetic "
                   "intensity are memory bound, of higher intensity compute bound",
    "lesson_bound": "the lesson product's intensity against its device's ridge point",
    "unsynchronised_lesson": "the lesson's CUDA time against this run's float32 lesson product "
                             "on CUDA timed the lesson's way (no synchronisation) and "
                             "synchronised: it is closer (|log ratio|) to the one it most "
                             "likely measured",
    "pinned_copy": f"copy of y to the GPU from pinned vs pageable host memory; pinned is "
                   f"faster when the time ratio exceeds {REAL_GAIN:g}",
    "tf32": f"float32 product on CUDA with TF32 allowed vs torch's default (TF32 off, since "
            f"torch 1.12), largest square product; TF32 helps when the time ratio exceeds "
            f"{REAL_GAIN:g}",
    "seeds": "most seeds trained per configuration of a dataset",
    "machines_compared": "the machines compared (this run, other machines' bundles, the "
                         "reference bundles shipped with the project) and the baseline that "
                         "speed-ups and agreement are measured against",
    "machine_config": "keys of a machine's measurement config (compare and machine_id left "
                      "out) whose values differ from the baseline's: only rows whose keys "
                      "match are compared, the rest is left out",
    "machine_fastest": "per series (backend, device, dtype) of the lesson product: the "
                       "measured machine with the smallest median time (rows ok and not "
                       "noisy), against the baseline machine's time",
    "machine_speedup": f"a machine's fastest float32 lesson product (any backend and device, "
                       f"rows ok and not noisy) against the baseline's: faster or slower when "
                       f"the time ratio exceeds {REAL_GAIN:g}, similar otherwise",
    "machine_epoch_fastest": "per data set and device, the ensemble time per epoch of the "
                             "shape most machines timed (same data, threads, momentum and "
                             "batch size as the baseline): the fastest machine",
    "machine_agreement": "losses and accuracies per member and checkpoint against the "
                         "baseline machine's: the worst of the three metrics (differs, then "
                         "not_compared, within_tolerance, identical); tolerances in "
                         "mlpbench.compare (CPU bit-identical)",
}


# --------------------------------------------------------------------------- helpers


def plain(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, NaN/inf to None."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _row(finding: str, section: str, subject: str, verdict: str, evidence: Mapping[str, Any],
         *, dataset: str | None = None, device: str | None = None, value: float = math.nan,
         reference_value: float = math.nan, unit: str | None = None) -> dict[str, Any]:
    return {"finding": finding, "section": section, "dataset": dataset, "device": device,
            "subject": subject, "verdict": verdict, "value": _float(value),
            "reference_value": _float(reference_value), "unit": unit, "rule": RULES[finding],
            "evidence": json.dumps(plain(evidence), sort_keys=True, allow_nan=False)}


def _float(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _finite(*xs: Any) -> bool:
    return all(math.isfinite(_float(x)) for x in xs)


def _key(row: pd.Series, columns: list[str]) -> dict[str, Any]:
    return {c: row[c] for c in columns if c in row.index}


MM_KEY = ["backend", "device", "dtype", "case", "kind", "m", "k", "n", "time_s_median",
          "time_s_iqr", "n_runs", "status"]
TRAIN_KEY = ["dataset", "device", "width", "depth", "lr", "epochs", "variant", "status",
             "n_seeds", "n_ok"]


def _series(backend: str, device: str, dtype: str) -> str:
    return f"{backend} {device} {dtype}"


# --------------------------------------------------------------------------- machine


def cuda_status(tables: Mapping[str, pd.DataFrame]) -> list[dict]:
    """One row per stage that has a device column: is CUDA available, and if not why."""
    out = []
    for stage in ("matmul", "epoch_time", "train_summary"):
        df = tables.get(stage)
        if df is None:
            continue
        rows = df[df["device"] == "cuda"]
        if rows.empty:
            verdict, reason = "not_configured", "CUDA was not part of this run's configuration"
        elif (rows["status"] == "ok").any():
            verdict, reason = "available", ""
        else:
            reasons = rows["reason"].dropna().astype(str)
            verdict, reason = "unavailable", reasons.iloc[0] if len(reasons) else "no CUDA results"
        out.append(_row("cuda_status", "machine", stage, verdict,
                        {"stage": stage, "n_cuda_rows": len(rows), "reason": reason},
                        device="cuda"))
    return out


# --------------------------------------------------------------------------- matmul


def _lesson_ok(mm: pd.DataFrame) -> pd.DataFrame:
    return mm[(mm["case"] == "lesson") & (mm["kind"] == "matmul") & (mm["status"] == "ok")]


def _lesson_time(mm: pd.DataFrame, backend: str, device: str, dtype: str) -> float:
    r = _lesson_ok(mm)
    r = r[(r["backend"] == backend) & (r["device"] == device) & (r["dtype"] == dtype)]
    return float(r["time_s_median"].iloc[0]) if len(r) else math.nan


def matmul_findings(mm: pd.DataFrame, lesson: pd.DataFrame, *,
                    twin_tolerance: float = TWIN_TOLERANCE,
                    non_monotonic_factor: float = NON_MONOTONIC_FACTOR) -> list[dict]:
    out: list[dict] = _noisy_timings(mm)
    if "noisy" in mm.columns:  # no conclusion rests on a row flagged noisy
        mm = mm[~mm["noisy"].astype(bool)]
    ok = mm[(mm["kind"] == "matmul") & (mm["status"] == "ok")]
    lesson_ok = _lesson_ok(mm)
    ours = mm[(mm["case"] == "lesson") & (mm["kind"] == "matmul")]
    if len(ours) and len(lesson):
        r, ref = ours.iloc[0], lesson.iloc[0]
        same = (int(r["m"]), int(r["k"]), int(r["n"])) == (int(ref["m"]), int(ref["k"]),
                                                            int(ref["n"]))
        out.append(_row("lesson_case_shape", "lesson", f"x({r['m']}×{r['k']}) @ y({r['k']}×"
                        f"{r['n']})", "same" if same else "differs",
                        {"run": _key(r, ["m", "k", "n"]), "lesson": _key(ref, ["m", "k", "n"])}))
    twins = _twin_timings(mm, twin_tolerance)
    # The headline rests on no lesson-case timing that its twin contradicts.
    doubted = [(f["ev_backend"], f["ev_dtype"]) for f in twins if f["verdict"] == "disagree"]
    for f in twins:
        del f["ev_backend"], f["ev_dtype"]
    if doubted:
        trusted = pd.Series([(b, dt) not in doubted for b, dt in
                             zip(lesson_ok["backend"], lesson_ok["dtype"])], index=lesson_ok.index)
        headline = lesson_ok[trusted | (lesson_ok["device"] != "cpu")]
        out.append(_row("lesson_twin_left_out", "matmul", "lesson-case timings left out of "
                        "the headline", "left_out",
                        {"series": [_series(b, "cpu", dt) for b, dt in doubted]},
                        value=len(doubted), unit="count"))
    else:
        headline = lesson_ok
    np64 = _lesson_time(mm, "numpy", "cpu", "float64")
    if len(headline):
        f = headline.sort_values(["time_s_median", "backend", "device", "dtype"]).iloc[0]
        out.append(_row("lesson_fastest", "matmul", _series(f["backend"], f["device"], f["dtype"]),
                        "fastest", {"fastest": _key(f, MM_KEY), "numpy_float64_s": np64,
                                    "candidates": len(headline),
                                    "speedup_vs_numpy_float64": np64 / f["time_s_median"]},
                        device=f["device"], value=f["time_s_median"], reference_value=np64,
                        unit="s"))
    if len(lesson):
        l_np = lesson[lesson["backend"] == "numpy"]
        l_t = lesson[(lesson["backend"] == "torch") & (lesson["device"] == "cpu")]
        if len(l_np) and len(l_t):
            a, b = l_np.iloc[0], l_t.iloc[0]
            out.append(_row("lesson_numpy_gap", "lesson", "lesson: NumPy float64 vs torch CPU "
                            "float32", "twice_the_bytes" if a["dtype"] != b["dtype"]
                            else "same_dtype",
                            {"numpy": _key(a, ["dtype", "time_s", "gb_s", "bytes"]),
                             "torch": _key(b, ["dtype", "time_s", "gb_s", "bytes"])},
                            value=a["time_s"] / b["time_s"], unit="ratio"))
    cpu32 = _lesson_time(mm, "torch", "cpu", "float32")
    cuda32 = _lesson_time(mm, "torch", "cuda", "float32")
    if _finite(cpu32, cuda32):
        out.append(_row("gpu_vs_cpu", "matmul", "torch float32 lesson product, CUDA vs CPU",
                        "gpu_faster" if cuda32 <= cpu32 else "gpu_slower",
                        {"cpu_s": cpu32, "cuda_s": cuda32, "cpu_over_cuda": cpu32 / cuda32},
                        device="cuda",
                        value=cuda32, reference_value=cpu32, unit="s"))
        h2d = mm[(mm["case"] == "lesson") & (mm["kind"] == "h2d") & (mm["dtype"] == "float32")
                 & (mm["status"] == "ok")]
        if len(h2d):
            t = float(h2d["time_s_median"].iloc[0])
            out.append(_row("transfer_cost", "matmul", "copy y to the GPU vs the product",
                            "copy_dominates" if t > cuda32 else "product_dominates",
                            {"h2d": _key(h2d.iloc[0], MM_KEY), "cuda_product_s": cuda32,
                             "copy_over_product": t / cuda32},
                            device="cuda", value=t, reference_value=cuda32, unit="s"))
    l32 = lesson_ok[lesson_ok["dtype"] == "float32"]
    if len(l32):
        i = float(l32["intensity_flop_per_byte"].iloc[0])
        out.append(_row("lesson_intensity", "matmul", "lesson product in float32",
                        "memory_bound" if i < MEMORY_BOUND_INTENSITY else "compute_capable",
                        {"row": _key(l32.iloc[0], MM_KEY)}, value=i,
                        reference_value=MEMORY_BOUND_INTENSITY, unit="FLOP/byte"))
    copies = mm[(mm["kind"] == "copy") & (mm["status"] == "ok")]
    for device, g in copies.groupby("device", sort=True):
        top = g.sort_values("gb_s").iloc[-1]
        out.append(_row("copy_bandwidth", "matmul", f"copy on {device}", "measured",
                        {"row": _key(top, [*MM_KEY, "gb_s"]), "n_rows": len(g)}, device=device,
                        value=top["gb_s"], unit="GB/s"))
        if len(g) > 1:
            low = g.sort_values("gb_s").iloc[0]
            ratio = float(top["gb_s"]) / float(low["gb_s"])
            out.append(_row("copy_agreement", "matmul", f"copy on {device}",
                            "agree" if ratio <= COPY_AGREEMENT else "disagree",
                            {"rates": [_key(r, ["backend", "dtype", "threads", "gb_s"])
                                       for _, r in g.iterrows()],
                             "highest": _key(top, ["backend", "dtype", "gb_s"]),
                             "lowest": _key(low, ["backend", "dtype", "gb_s"]),
                             "factor": COPY_AGREEMENT},
                            device=device, value=ratio, reference_value=COPY_AGREEMENT,
                            unit="ratio"))
    out += _dtype_vs_library(mm, lesson_ok, np64, cpu32)
    out += twins
    out += _cache_effect(mm)
    shared = lesson_ok[np.isfinite(lesson_ok["bandwidth_share"].astype(float))]
    if len(shared):  # no share, no verdict: without a memory roof there is nothing to judge
        top = shared.sort_values("bandwidth_share").iloc[-1]
        share = float(top["bandwidth_share"])
        verdict = ("above_copy_bandwidth" if share > ABOVE_COPY else
                   "bandwidth_bound" if share >= BANDWIDTH_BOUND else "below_bandwidth")
        out.append(_row("lesson_bandwidth_share", "matmul",
                        _series(top["backend"], top["device"], top["dtype"]), verdict,
                        {"row": _key(top, [*MM_KEY, "bytes", "gb_s", "bandwidth_gb_s"])},
                        device=top["device"], value=share, reference_value=1.0, unit="ratio"))
    mv = ok[ok["case"] == "gemv"]
    if len(mv) and mv["bandwidth_share"].max() > 1:
        top = mv.sort_values("bandwidth_share").iloc[-1]
        out.append(_row("gemv_cache", "matmul", _series(top["backend"], top["device"],
                                                        top["dtype"]), "above_copy_bandwidth",
                        {"row": _key(top, [*MM_KEY, "bytes", "gb_s"])}, device=top["device"],
                        value=top["bandwidth_share"], reference_value=1.0, unit="ratio"))
    sq = ok[ok["case"] == "square"]
    if len(sq):
        top = sq.sort_values("gflop_s").iloc[-1]
        out.append(_row("best_square", "matmul", _series(top["backend"], top["device"],
                                                         top["dtype"]), "best",
                        {"row": _key(top, [*MM_KEY, "gflop_s", "intensity_flop_per_byte"])},
                        device=top["device"], value=top["gflop_s"], unit="GFLOP/s"))
    out += _rises_with_size(ok, non_monotonic_factor)
    out += _roofs(mm)
    out += _gpu_pitfalls(mm, lesson)
    n_runs = mm.loc[mm["status"] == "ok", "n_runs"].dropna()
    if len(n_runs):
        out.append(_row("matmul_samples", "matmul", "samples per matmul median", "measured",
                        {"n_rows": len(n_runs)}, value=n_runs.min(),
                        reference_value=n_runs.max(), unit="count"))
    return out


def _noisy_timings(mm: pd.DataFrame) -> list[dict]:
    """One row: how many measured rows the guard flagged noisy, and which."""
    if "noisy" not in mm.columns:
        return []
    measured = mm[mm["status"] == "ok"]
    noisy = measured[measured["noisy"].astype(bool)]
    return [_row("noisy_timings", "matmul", "timings flagged noisy",
                 "flagged" if len(noisy) else "none",
                 {"rows": [_key(r, [*MM_KEY, "cpu_wait_threads", "attempts", "noise_reason"])
                           for _, r in noisy.iterrows()],
                  "n_measured": len(measured), "wait_limit_threads": WAIT_LIMIT_THREADS},
                 value=len(noisy), reference_value=len(measured), unit="count")]


def _roofs(mm: pd.DataFrame) -> list[dict]:
    """Per device x dtype the measured compute roof and the ridge point; the lesson's side."""
    out = []
    if "compute_roof_gflop_s" not in mm.columns:
        return out
    ok = mm[(mm["kind"] == "matmul") & (mm["status"] == "ok")]
    for (device, dtype), g in ok.groupby(["device", "dtype"], sort=True):
        sq = g[g["case"] == "square"]
        if sq.empty or not np.isfinite(sq["gflop_s"]).any():
            continue
        top = sq.sort_values("gflop_s").iloc[-1]
        roof, bw = float(top["gflop_s"]), float(top["bandwidth_gb_s"])
        out.append(_row("compute_roof", "matmul", f"{device} {dtype}", "measured",
                        {"row": _key(top, [*MM_KEY, "gflop_s"]), "shapes": len(sq)},
                        device=device, value=roof, unit="GFLOP/s"))
        if not _finite(bw):
            continue
        ridge = roof / bw
        sides = g["intensity_flop_per_byte"] < ridge
        out.append(_row("ridge_point", "matmul", f"{device} {dtype}", "measured",
                        {"compute_roof_gflop_s": roof, "bandwidth_gb_s": bw,
                         "memory_bound": int(sides.sum()), "compute_bound": int((~sides).sum()),
                         "largest_square": _key(sq.sort_values("n").iloc[-1],
                                                [*MM_KEY, "intensity_flop_per_byte",
                                                 "compute_share", "bound"])},
                        device=device, value=ridge, reference_value=roof, unit="FLOP/byte"))
        for _, r in g[g["case"] == "lesson"].iterrows():
            i = float(r["intensity_flop_per_byte"])
            out.append(_row("lesson_bound", "matmul", _series(r["backend"], device, dtype),
                            "memory_bound" if i < ridge else "compute_bound",
                            {"row": _key(r, [*MM_KEY, "intensity_flop_per_byte", "gflop_s",
                                             "bandwidth_share", "compute_share"]),
                             "compute_roof_gflop_s": roof, "bandwidth_gb_s": bw},
                            device=device, value=i, reference_value=ridge, unit="FLOP/byte"))
    return out


def _one(mm: pd.DataFrame, **where: Any) -> pd.Series | None:
    rows = mm[mm["status"] == "ok"]
    for col, value in where.items():
        rows = rows[rows[col] == value]
    return rows.iloc[0] if len(rows) else None


def _gpu_pitfalls(mm: pd.DataFrame, lesson: pd.DataFrame) -> list[dict]:
    """The lesson's GPU pitfalls, measured: no synchronisation, pageable copies, TF32."""
    out = []
    cuda = mm[(mm["device"] == "cuda") & (mm["dtype"] == "float32")]
    synced = _one(cuda, case="lesson", kind="matmul")
    nosync = _one(cuda, case="lesson", kind="matmul_nosync")
    ref = lesson[lesson["device"] == "cuda"] if len(lesson) else lesson
    if synced is not None and nosync is not None and len(ref):
        t_lesson = float(ref["time_s"].iloc[0])
        t_sync, t_nosync = float(synced["time_s_median"]), float(nosync["time_s_median"])
        near_sync = abs(math.log(t_lesson / t_sync)) <= abs(math.log(t_lesson / t_nosync))
        out.append(_row("unsynchronised_lesson", "lesson", "the lesson's CUDA time",
                        "closer_to_synchronised" if near_sync else "closer_to_unsynchronised",
                        {"lesson_s": t_lesson, "synchronised": _key(synced, MM_KEY),
                         "unsynchronised": _key(nosync, [*MM_KEY, "number_per_run"]),
                         "synchronised_over_unsynchronised": t_sync / t_nosync},
                        device="cuda", value=t_nosync, reference_value=t_sync, unit="s"))
    pageable = _one(cuda, case="lesson", kind="h2d")
    pinned = _one(cuda, case="lesson", kind="h2d_pinned")
    if pageable is not None and pinned is not None:
        ratio = float(pageable["time_s_median"]) / float(pinned["time_s_median"])
        out.append(_row("pinned_copy", "matmul", "copy y to the GPU: pinned vs pageable",
                        "pinned_faster" if ratio > REAL_GAIN else "no_real_gain",
                        {"pageable": _key(pageable, [*MM_KEY, "gb_s"]),
                         "pinned": _key(pinned, [*MM_KEY, "gb_s"]),
                         "pageable_over_pinned": ratio},
                        device="cuda", value=pinned["time_s_median"],
                        reference_value=pageable["time_s_median"], unit="s"))
    squares = cuda[(cuda["case"] == "square") & (cuda["status"] == "ok")]
    both = sorted(set(squares.loc[squares["kind"] == "matmul", "n"])
                  & set(squares.loc[squares["kind"] == "matmul_tf32", "n"]))
    if both:
        n = both[-1]
        off = _one(squares, kind="matmul", n=n)
        on = _one(squares, kind="matmul_tf32", n=n)
        ratio = float(off["time_s_median"]) / float(on["time_s_median"])
        out.append(_row("tf32", "matmul", f"float32 {n}×{n} product on CUDA, TF32 on vs off",
                        "tf32_faster" if ratio > REAL_GAIN else "no_real_gain",
                        {"off": _key(off, [*MM_KEY, "gflop_s"]),
                         "on": _key(on, [*MM_KEY, "gflop_s"]), "off_over_on": ratio,
                         "torch_default": "allow_tf32 = False (since torch 1.12)"},
                        device="cuda", value=on["time_s_median"],
                        reference_value=off["time_s_median"], unit="s"))
    return out


def _dtype_vs_library(mm, lesson_ok, np64, cpu32) -> list[dict]:
    np32 = _lesson_time(mm, "numpy", "cpu", "float32")
    t64 = _lesson_time(mm, "torch", "cpu", "float64")
    ratios = {"numpy64_over_torch32": np64 / cpu32 if _finite(np64, cpu32) else math.nan,
              "dtype_numpy64_over_numpy32": np64 / np32 if _finite(np64, np32) else math.nan,
              "library_float32": np32 / cpu32 if _finite(np32, cpu32) else math.nan,
              "library_float64": np64 / t64 if _finite(np64, t64) else math.nan}
    times = {"numpy_float64_s": np64, "numpy_float32_s": np32, "torch_float32_s": cpu32,
             "torch_float64_s": t64}
    if not _finite(*ratios.values()):
        return [_row("dtype_vs_library", "lesson", "NumPy float64 vs torch float32 on the CPU",
                     "incomplete", {**times, **ratios}, device="cpu")]
    dtype = abs(math.log(ratios["dtype_numpy64_over_numpy32"]))
    library = max(abs(math.log(ratios["library_float32"])),
                  abs(math.log(ratios["library_float64"])))
    return [_row("dtype_vs_library", "lesson", "NumPy float64 vs torch float32 on the CPU",
                 "dtype" if dtype >= library else "library", {**times, **ratios},
                 device="cpu", value=ratios["dtype_numpy64_over_numpy32"],
                 reference_value=math.exp(library), unit="ratio")]


def _twin_timings(mm: pd.DataFrame, tolerance: float) -> list[dict]:
    """Lesson-case CPU products that the matrix-vector series timed again (each row carries
    ``ev_backend``/``ev_dtype`` for the caller, which removes them)."""
    out = []
    ok = mm[(mm["kind"] == "matmul") & (mm["status"] == "ok") & (mm["device"] == "cpu")]
    for _, row in ok[ok["case"] == "lesson"].iterrows():
        twin = ok[(ok["case"] == "gemv") & (ok["backend"] == row["backend"])
                  & (ok["dtype"] == row["dtype"]) & (ok["m"] == row["m"])
                  & (ok["k"] == row["k"]) & (ok["n"] == row["n"])]
        if twin.empty:
            continue
        t, t_twin = float(row["time_s_median"]), float(twin["time_s_median"].iloc[0])
        disagree = abs(math.log(t_twin / t)) > math.log(1 + tolerance)
        found = _row("twin_timing", "lesson", _series(row["backend"], "cpu", row["dtype"]),
                     "disagree" if disagree else "agree",
                     {"lesson_case": _key(row, MM_KEY), "gemv_twin": _key(twin.iloc[0], MM_KEY),
                      "iqr_share": row["time_s_iqr"] / t, "tolerance": tolerance},
                     device="cpu", value=t, reference_value=t_twin, unit="s")
        out.append({**found, "ev_backend": row["backend"], "ev_dtype": row["dtype"]})
    return out


def _cache_effect(mm: pd.DataFrame, threshold: float = CACHE_EFFECT) -> list[dict]:
    """Per lesson-case series: the warm timing (``matmul``, operands reused call after call, as
    ``%timeit`` takes it) against the cold one (``matmul_cold``, caches emptied before every
    call). Each is taken as the range median ± IQR/2 (its middle half of samples, about);
    verdict ``cache_helps`` when the warm range lies wholly below the cold one and the warm
    median is more than ``threshold`` below the cold median, ``cold_faster`` when the cold range
    lies wholly below the warm one, else ``within_spread`` (the rule of :func:`compare_ranges`,
    as for training times). value = warm, reference = cold (s)."""
    out = []
    ok = mm[(mm["case"] == "lesson") & (mm["status"] == "ok")]
    warm, cold = ok[ok["kind"] == "matmul"], ok[ok["kind"] == "matmul_cold"]
    for _, w in warm.iterrows():
        c = cold[(cold["backend"] == w["backend"]) & (cold["device"] == w["device"])
                 & (cold["dtype"] == w["dtype"])]
        if c.empty:
            continue
        c = c.iloc[0]
        t_warm, t_cold = float(w["time_s_median"]), float(c["time_s_median"])
        half_w, half_c = float(w["time_s_iqr"]) / 2, float(c["time_s_iqr"]) / 2
        order = compare_ranges(t_warm - half_w, t_warm + half_w, t_cold - half_c,
                               t_cold + half_c)
        verdict = ("cache_helps" if order == "slower" and t_warm < (1 - threshold) * t_cold
                   else "cold_faster" if order == "faster" else "within_spread")
        out.append(_row("lesson_cache", "matmul", _series(w["backend"], w["device"], w["dtype"]),
                        verdict,
                        {"warm": _key(w, [*MM_KEY, "gb_s", "bandwidth_share"]),
                         "cold": _key(c, [*MM_KEY, "gb_s", "bandwidth_share"]),
                         "cold_over_warm": t_cold / t_warm, "threshold": threshold,
                         "ranges": "median ± IQR/2"},
                        device=w["device"], value=t_warm, reference_value=t_cold, unit="s"))
    return out


def _rises_with_size(ok: pd.DataFrame, factor: float) -> list[dict]:
    """Per backend x device x dtype, matrix-vector and square series apart: the worst pair
    of a product slower than a larger one."""
    out = []
    series = ok[ok["case"].isin(["gemv", "lesson", "square"])]
    for (backend, device, dtype), g in series.groupby(["backend", "device", "dtype"], sort=True):
        for vector, h in g.groupby(g["m"] == 1, sort=False):
            kind = "matrix-vector" if vector else "square"
            h = h.assign(size=h["k"] * h["n"] * h["m"]).sort_values(["size", "case"])
            h = h.drop_duplicates("size")
            t = h["time_s_median"].to_numpy(dtype=float)
            pairs = [(t[i] / t[j], i, j) for i in range(len(t)) for j in range(i + 1, len(t))]
            subject = f"{_series(backend, device, dtype)}, {kind}"
            if not pairs:
                out.append(_row("rises_with_size", "matmul", subject, "too_few_sizes",
                                {"sizes": len(h)}, device=device))
                continue
            ratio, i, j = max(pairs)
            a, b = h.iloc[i], h.iloc[j]
            out.append(_row("rises_with_size", "matmul", subject,
                            "does_not_rise" if ratio > factor else "rises",
                            {"smaller": _key(a, MM_KEY), "larger": _key(b, MM_KEY),
                             "sizes": len(h), "factor": factor},
                            device=device, value=ratio, reference_value=factor, unit="ratio"))
    return out


# --------------------------------------------------------------------------- training


def train_device(summary: pd.DataFrame, dataset: str) -> str | None:
    """The device whose rows tell ``dataset``'s story: CPU when it has ok rows, else the first
    device (by name) that has; failing that, the same choice among devices whose every seed
    diverged; None when no device trained at all (e.g. CUDA only, and unavailable)."""
    d = summary[summary["dataset"] == dataset]
    for status in (["ok"], ["diverged"]):
        devices = set(d.loc[d["status"].isin(status), "device"])
        if devices:
            return "cpu" if "cpu" in devices else sorted(devices)[0]
    return None


def ci_verdict(base: pd.Series, row: pd.Series, metric: str, higher_is_better: bool) -> str:
    """``row`` against ``base`` on ``metric`` by their 95% intervals over seeds (the
    ``<metric>_ci95_low``/``_high`` columns of ``train_summary``): better or worse only when the
    intervals do not overlap, else within seed noise; too few seeds without intervals."""
    b = base[f"{metric}_ci95_low"], base[f"{metric}_ci95_high"]
    r = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    if not _finite(*b, *r):
        return "too_few_seeds"
    if r[0] > b[1] or r[1] < b[0]:
        up = row[f"{metric}_mean"] > base[f"{metric}_mean"]
        return "better" if up == higher_is_better else "worse"
    return "within_seed_noise"


def _ci(row: pd.Series, metric: str) -> dict[str, Any]:
    return {s: row[f"{metric}_{s}"] for s in ("mean", "ci95_low", "ci95_high")}


def config_label(row: pd.Series, axes: tuple[str, ...] = ("width", "depth", "epochs", "lr")) -> str:
    return ", ".join(f"{a} {float(row[a]):g}" for a in axes)


def _compare(finding: str, dataset: str, device: str, base: pd.Series, row: pd.Series,
             subject: str, metric: str, extra: Mapping[str, Any]) -> dict:
    higher = metric != "loss"
    return _row(finding, "training", f"{subject} ({metric})",
                ci_verdict(base, row, metric, higher),
                {**extra, "metric": metric, "row": _key(row, TRAIN_KEY),
                 "baseline": _key(base, TRAIN_KEY), "row_ci95": _ci(row, metric),
                 "baseline_ci95": _ci(base, metric)},
                dataset=dataset, device=device, value=row[f"{metric}_mean"],
                reference_value=base[f"{metric}_mean"],
                unit="nats" if metric == "loss" else "fraction")


def _chance(points: pd.DataFrame, dataset: str) -> float:
    if points is None or points.empty:
        return math.nan
    labels = points.loc[points["dataset"] == dataset, "label"]
    return 1 / labels.nunique() if len(labels) else math.nan


def _seed_spread(dataset, device, row, subject) -> dict:
    lo, hi = row["test_acc_min"], row["test_acc_max"]
    return _row("seed_spread", "training", subject,
                "seed_independent" if np.isclose(lo, hi) else "seed_dependent",
                {"row": _key(row, TRAIN_KEY), "share_diverged": row["share_diverged"]},
                dataset=dataset, device=device, value=lo, reference_value=hi, unit="fraction")


def _initial_loss(curves: pd.DataFrame, dataset: str, row: pd.Series) -> float:
    if curves is None or curves.empty:
        return math.nan
    c = curves[(curves["dataset"] == dataset) & (curves["device"] == row["device"])
               & (curves["epoch"] == 1) & np.isclose(curves["width"], row["width"])
               & np.isclose(curves["depth"], row["depth"]) & np.isclose(curves["lr"], row["lr"])]
    return float(c["loss_mean"].iloc[0]) if len(c) else math.nan


def axis_rows(rows: pd.DataFrame, base: pd.Series, axis: str) -> pd.DataFrame:
    """The baseline and the configurations differing from it only along ``axis`` (at the
    baseline's epochs unless the axis is epochs), sorted along it."""
    sel = rows[rows["variant"].isin(["baseline", axis])]
    if axis != "epochs":
        sel = sel[np.isclose(sel["epochs"].astype(float), float(base["epochs"]))]
    return sel.sort_values(axis)


def training_findings(summary: pd.DataFrame, curves: pd.DataFrame | None,
                      points: pd.DataFrame | None, grads: pd.DataFrame | None, *,
                      chance_margin: float = CHANCE_MARGIN,
                      stall_share: float = STALL_SHARE) -> list[dict]:
    out: list[dict] = []
    for dataset in sorted(set(summary["dataset"].dropna())):
        device = train_device(summary, dataset)
        rows = summary[(summary["dataset"] == dataset) & (summary["device"] == device)]
        base = rows[rows["variant"] == "baseline"]
        chance = _chance(points, dataset)
        out.append(_row("seeds", "training", f"seeds of {dataset}", "measured",
                        {"n_configurations": int((summary["dataset"] == dataset).sum())},
                        dataset=dataset,
                        value=summary.loc[summary["dataset"] == dataset, "n_seeds"].max(),
                        unit="count"))
        if math.isfinite(chance):
            p = points[points["dataset"] == dataset]
            n_test = int((p["split"] == "test").sum())
            out.append(_row("chance_level", "training", f"{dataset}: random guess", "reference",
                            {"n_classes": int(p["label"].nunique())}, dataset=dataset,
                            value=chance, unit="fraction"))
            out.append(_row("test_set_size", "training", f"{dataset}: test points",
                            "small" if 0 < n_test <= SMALL_TEST_SET else "adequate",
                            {"n_test": n_test, "n_train": int((p["split"] == "train").sum())},
                            dataset=dataset, value=n_test, reference_value=SMALL_TEST_SET,
                            unit="count"))
        if device is None or base.empty:
            out.append(_row("training_result", "training", f"{dataset}: baseline", "not_trained",
                            {"devices": sorted(set(summary.loc[summary["dataset"] == dataset,
                                                               "device"].dropna()))},
                            dataset=dataset))
            continue
        base = base.iloc[0]
        out.append(_row("training_result", "training", f"{dataset}: baseline "
                        f"({config_label(base)})", "ok" if base["status"] == "ok"
                        else str(base["status"]),
                        {"row": _key(base, TRAIN_KEY), "test_acc_ci95": _ci(base, "test_acc")},
                        dataset=dataset, device=device, value=base["test_acc_mean"],
                        unit="fraction"))
        out.append(_seed_spread(dataset, device, base, f"{dataset}: baseline"))
        ranked = rank_configurations(rows)
        best = ranked[ranked["variant"] != "baseline"]
        if len(best) and base["status"] == "ok":
            b = best.iloc[0]
            out.append(_compare("best_variant", dataset, device, base, b,
                                f"{config_label(b)} vs baseline", "test_acc",
                                {"ranked": len(ranked)}))
        else:
            out.append(_row("best_variant", "training", f"{dataset}: best variant",
                            "none_trained", {"ranked": len(ranked)}, dataset=dataset,
                            device=device))
        for _, r in rows[rows["share_diverged"] > 0].iterrows():
            out.append(_row("divergence", "training", config_label(r),
                            "all_diverged" if r["n_ok"] == 0 else "some_diverged",
                            {"row": _key(r, [*TRAIN_KEY, "n_diverged"])}, dataset=dataset,
                            device=device, value=r["share_diverged"], unit="fraction"))
        for axis in HOMEWORK_AXES:
            out += _axis_findings(rows, base, axis, dataset, device, curves, chance,
                                  chance_margin, stall_share)
        out += _grad_findings(grads, dataset, device, base)
    return out


def _axis_findings(rows, base, axis, dataset, device, curves, chance, chance_margin,
                   stall_share) -> list[dict]:
    sel = axis_rows(rows, base, axis)
    if len(sel) < 2:
        return []
    out = []
    ok = sel[sel["status"] == "ok"]
    others = ok[~np.isclose(ok[axis].astype(float), float(base[axis]))]
    evidence = {"axis": axis, "values": sorted(sel[axis].astype(float)),
                "ok_values": sorted(ok[axis].astype(float))}
    if base["status"] != "ok" or others.empty:
        return [_row("axis_effect", "training", f"{axis}: no ok setting to compare",
                     "too_few_ok", evidence, dataset=dataset, device=device)]
    # The setting farthest from the lesson's along this axis (usually the largest).
    top = others.loc[(others[axis].astype(float) - float(base[axis])).abs().idxmax()]
    subject = f"{axis} {float(top[axis]):g} vs baseline {float(base[axis]):g}"
    for metric in ("loss", "test_acc"):
        out.append(_compare("axis_effect", dataset, device, base, top, subject, metric,
                            evidence))
    if math.isfinite(chance):
        near = abs(top["test_acc_mean"] - chance) < chance_margin
        out.append(_row("at_chance", "training", f"{axis} {float(top[axis]):g}",
                        "at_chance" if near else "above_chance",
                        {"axis": axis, "row": _key(top, TRAIN_KEY), "margin": chance_margin,
                         "n_classes": round(1 / chance)},
                        dataset=dataset, device=device, value=top["test_acc_mean"],
                        reference_value=chance, unit="fraction"))
    start = _initial_loss(curves, dataset, top)
    if _finite(start, top["loss_mean"]):
        out.append(_row("stalled", "training", f"{axis} {float(top[axis]):g}",
                        "rose" if top["loss_mean"] > start else
                        "stalled" if top["loss_mean"] > stall_share * start else "learned",
                        {"axis": axis, "row": _key(top, TRAIN_KEY), "share": stall_share},
                        dataset=dataset, device=device, value=top["loss_mean"],
                        reference_value=start, unit="nats"))
    best = rank_configurations(sel)
    if len(best):
        b = best.iloc[0]
        out.append(_row("axis_best", "training", f"{axis} {float(b[axis]):g}",
                        "baseline" if b["variant"] == "baseline" else "variant",
                        {"axis": axis, "row": _key(b, TRAIN_KEY),
                         "compared": float(top[axis])},
                        dataset=dataset, device=device, value=b["test_acc_mean"],
                        unit="fraction"))
    out.append(_seed_spread(dataset, device, top, f"{axis} {float(top[axis]):g}"))
    return out


def _grad_findings(grads, dataset, device, base) -> list[dict]:
    if grads is None or grads.empty:
        return []
    g = grads[(grads["dataset"] == dataset) & (grads["device"] == device)
              & (grads["stage"] == "init") & np.isclose(grads["width"], base["width"])
              & np.isclose(grads["lr"], base["lr"])]
    out = []
    for depth, d in g.groupby("depth", sort=True):
        d = d.set_index("layer")["grad_norm_mean"]
        if 0 not in d.index or depth not in d.index:
            continue
        ratio = d.loc[0] / d.loc[depth]
        out.append(_row("grad_ratio", "training", f"depth {int(depth)}",
                        "first_smaller" if ratio < 1 else "first_larger",
                        {"depth": int(depth), "first_layer": d.loc[0], "output_layer": d.loc[depth],
                         "width": base["width"], "lr": base["lr"]},
                        dataset=dataset, device=device, value=ratio, reference_value=1.0,
                        unit="ratio"))
    return out


def compare_ranges(low_a: float, high_a: float, low_b: float, high_b: float) -> str:
    """b against a, from the min-max ranges of their timed windows: ``slower`` when every
    window of b took longer than every window of a (low_b > high_a), ``faster`` when every
    window of b was quicker (high_b < low_a), ``within_spread`` when the ranges overlap, and
    ``no_spread`` when either range is unknown (NaN: a single window)."""
    if not _finite(low_a, high_a, low_b, high_b):
        return "no_spread"
    if low_b > high_a:
        return "slower"
    if high_b < low_a:
        return "faster"
    return "within_spread"


def _direction(verdicts: list[str], faster: str, slower: str) -> str:
    """One verdict from per-shape comparisons: the direction every separated shape agrees on."""
    n_faster, n_slower = verdicts.count("faster"), verdicts.count("slower")
    if n_faster and n_slower:
        return "mixed"
    return faster if n_faster else slower if n_slower else "within_spread"


def _counts(verdicts: list[str]) -> dict[str, int]:
    return {f"n_{v}": verdicts.count(v) for v in ("faster", "slower", "within_spread",
                                                  "no_spread")}


_RANGE = ("time_per_epoch_s_min", "time_per_epoch_s_max")


def _cuda_vs_cpu(ens: pd.DataFrame) -> list[dict]:
    cuda = ens[ens["device"] == "cuda"]
    if not len(cuda):
        return []
    keys = ["dataset", "width", "depth"]
    cpu = ens[ens["device"] == "cpu"]
    pair = cuda.merge(cpu[[*keys, *_RANGE]], on=keys, suffixes=("", "_cpu"))
    ratio = cuda["speedup_vs_cpu"].median()
    if not len(pair) or not math.isfinite(ratio):
        return [_row("cuda_vs_cpu_epoch", "training", "ensemble epoch, CUDA vs CPU",
                     "not_comparable", {"n_shapes": len(cuda)}, device="cuda", value=ratio,
                     reference_value=1.0, unit="ratio")]
    verdicts = [compare_ranges(r["time_per_epoch_s_min_cpu"], r["time_per_epoch_s_max_cpu"],
                               r["time_per_epoch_s_min"], r["time_per_epoch_s_max"])
                for _, r in pair.iterrows()]
    verdict = _direction(verdicts, "gpu_faster", "gpu_slower")
    return [_row("cuda_vs_cpu_epoch", "training", "ensemble epoch, CUDA vs CPU", verdict,
                 {"n_shapes": len(pair), **_counts(verdicts)}, device="cuda", value=ratio,
                 reference_value=1.0, unit="ratio")]


def _ensemble_gain(ens: pd.DataFrame, loop: pd.DataFrame) -> list[dict]:
    keys = ["dataset", "device", "width", "depth"]
    pair = ens.merge(loop, on=keys, suffixes=("_ens", "_loop"))
    if not len(pair):
        return []
    gain = (pair["time_per_member_epoch_s_loop"] / pair["time_per_member_epoch_s_ens"]).median()
    members = pair["n_members_ens"].astype(float)
    verdicts = [compare_ranges(lo_l, hi_l, lo_e / n, hi_e / n) for lo_l, hi_l, lo_e, hi_e, n in zip(
        pair["time_per_epoch_s_min_loop"], pair["time_per_epoch_s_max_loop"],
        pair["time_per_epoch_s_min_ens"], pair["time_per_epoch_s_max_ens"], members)]
    verdict = _direction(verdicts, "ensemble_faster", "ensemble_slower")
    return [_row("ensemble_gain", "training", "ensemble vs the lesson's loop", verdict,
                 {"n_pairs": len(pair), "max_members": int(ens["n_members"].max()),
                  **_counts(verdicts)},
                 value=gain, reference_value=1.0, unit="ratio")]


def _most_common(values: pd.Series) -> Any:
    counts = values.value_counts()
    return min(counts[counts == counts.max()].index)


def _shape_steps(ok: pd.DataFrame) -> list[dict]:
    """Consecutive widths (at the most common depth) and depths (at the most common width)."""
    out = []
    for (dataset, device, method), d in ok.groupby(["dataset", "device", "method"], sort=True):
        for axis, other in (("width", "depth"), ("depth", "width")):
            fixed = _most_common(d[other])
            line = (d[d[other] == fixed].groupby(axis)
                    .agg(median=("time_per_epoch_s", "median"),
                         low=("time_per_epoch_s_min", "min"),
                         high=("time_per_epoch_s_max", "max"))
                    .sort_index())
            steps = list(line.itertuples())
            for a, b in zip(steps, steps[1:]):
                verdict = compare_ranges(a.low, a.high, b.low, b.high)
                out.append(_row(
                    "epoch_time_step", "training",
                    f"{method}: {axis} {int(a.Index)} to {int(b.Index)}", verdict,
                    {"method": method, "axis": axis, "from": int(a.Index), "to": int(b.Index),
                     other: int(fixed), "from_range_s": [a.low, a.high],
                     "to_range_s": [b.low, b.high]},
                    dataset=dataset, device=device, value=b.median, reference_value=a.median,
                    unit="s"))
    return out


def epoch_time_findings(times: pd.DataFrame) -> list[dict]:
    """Findings on training epoch times: every comparison uses the spread of the windows
    (``compare_ranges``), never the medians alone. ``times`` is the ``epoch_time`` table."""
    out = []
    ok = times[times["status"] == "ok"]
    ens = ok[ok["method"] == "ensemble"]
    out += _cuda_vs_cpu(ens)
    if len(ens):
        out.append(_row("member_epoch_range", "training", "ensemble time per member-epoch",
                        "measured", {"n_rows": len(ens),
                                     "max_members": int(ens["n_members"].max())},
                        value=ens["time_per_member_epoch_s"].min(),
                        reference_value=ens["time_per_member_epoch_s"].max(), unit="s"))
    loop = ok[ok["method"] == "loop"]
    if len(ens) and len(loop):
        out += _ensemble_gain(ens, loop)
    out += _shape_steps(ok)
    return out


# --------------------------------------------------------------------------- entry point


# --------------------------------------------------------------------------- machines

_AGREEMENT_ORDER = ("differs", "not_compared", "within_tolerance", "identical")


def machine_findings(tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The conclusions of the machine comparison (section ``machines``), from the tables of
    :func:`mlpbench.compare.compare_tables`; no rows when fewer than two machines were
    measured (the lesson's slides not counted). Columns: ``FINDINGS_COLUMNS``."""
    rows: list[dict] = []
    machines = tables.get("machines")
    if machines is not None and (machines["origin"] != "lesson").sum() > 1:
        rows = _machine_rows(machines, tables["machines_matmul"],
                             tables["machines_epoch_time"], tables["machines_agreement"])
    return _frame(rows)


def _machine_rows(machines: pd.DataFrame, mm: pd.DataFrame, et: pd.DataFrame,
                  agreement: pd.DataFrame) -> list[dict]:
    from mlpbench.compare import LESSON_MACHINE, config_differences

    measured = machines[machines["origin"] != "lesson"]
    base_id = str(measured.loc[measured["is_baseline"], "machine_id"].iloc[0])
    rows = [_row("machines_compared", "machines", f"{len(measured)} machines", "compared",
                 {"baseline": base_id,
                  "machines": [{"machine_id": r["machine_id"], "origin": r["origin"],
                                "source": r["source"]} for _, r in measured.iterrows()]},
                 value=len(measured), unit="count")]
    configs = {r["machine_id"]: json.loads(r["config_json"]) for _, r in machines.iterrows()
               if isinstance(r.get("config_json"), str)} if "config_json" in machines else {}
    for mid, config in configs.items():
        if mid == base_id:
            continue
        differ = config_differences(config, configs.get(base_id))
        if differ:
            rows.append(_row("machine_config", "machines", f"config of {mid} vs {base_id}",
                             "differs", {"machine_id": mid, "baseline": base_id,
                                         "keys": differ}, value=len(differ), unit="count"))
    ok = mm[(mm["status"] == "ok") & ~mm["noisy"].astype(bool)
            & (mm["machine_id"] != LESSON_MACHINE) & (mm["kind"] == "matmul")]
    lesson_case = ok[ok["case"] == "lesson"]
    # Machines whose lesson product of a series was timed but flagged noisy (and so is not
    # compared): the sentence naming the fastest says how many were left out.
    flagged = mm[(mm["status"] == "ok") & mm["noisy"].astype(bool) & (mm["case"] == "lesson")
                 & (mm["machine_id"] != LESSON_MACHINE) & (mm["kind"] == "matmul")]
    noisy = {key: set(g["machine_id"]) for key, g in
             flagged.groupby(["backend", "device", "dtype"], sort=True)}
    for (backend, device, dtype), g in lesson_case.groupby(["backend", "device", "dtype"],
                                                          sort=True):
        best = g.loc[g["time_s_median"].idxmin()]
        base = g[g["machine_id"] == base_id]
        verdict = "baseline" if best["machine_id"] == base_id else "other_machine"
        left_out = sorted(noisy.get((backend, device, dtype), set()) - set(g["machine_id"]))
        rows.append(_row(
            "machine_fastest", "machines", f"lesson product, {_series(backend, device, dtype)}",
            verdict, {"fastest": best["machine_id"], "baseline": base_id,
                      "backend": backend, "dtype": dtype,
                      "shape": _key(best, ["m", "k", "n"]),
                      "times_s": dict(zip(g["machine_id"], g["time_s_median"])),
                      "noisy_left_out": left_out},
            device=device, value=best["time_s_median"],
            reference_value=base["time_s_median"].min() if len(base) else math.nan, unit="s"))
    f32 = lesson_case[lesson_case["dtype"] == "float32"]
    best_per = {mid: g.loc[g["time_s_median"].idxmin()] for mid, g in f32.groupby("machine_id")}
    if base_id in best_per:
        ref = best_per[base_id]
        for mid, row in best_per.items():
            if mid == base_id:
                continue
            if (row[["m", "k", "n"]].to_numpy() != ref[["m", "k", "n"]].to_numpy()).any():
                continue  # another shape: not like with like
            ratio = ref["time_s_median"] / row["time_s_median"]
            verdict = ("faster" if ratio > REAL_GAIN else "slower" if ratio < 1 / REAL_GAIN
                       else "similar")
            rows.append(_row(
                "machine_speedup", "machines", f"{mid} vs {base_id}, lesson product", verdict,
                {"machine_id": mid, "baseline": base_id,
                 "machine_series": _key(row, ["backend", "device", "dtype"]),
                 "baseline_series": _key(ref, ["backend", "device", "dtype"]),
                 "time_s": row["time_s_median"], "baseline_time_s": ref["time_s_median"],
                 "speedup": ratio},
                device=row["device"], value=row["time_s_median"],
                reference_value=ref["time_s_median"], unit="s"))
    rows += _epoch_fastest(et, base_id)
    for (mid, dataset, device), g in agreement.groupby(["machine_id", "dataset", "device"],
                                                     sort=False):
        verdict = min(g["verdict"], key=_AGREEMENT_ORDER.index)
        rows.append(_row(
            "machine_agreement", "machines", f"{mid} vs {g['baseline_machine_id'].iloc[0]}",
            verdict, {"machine_id": mid, "baseline": g["baseline_machine_id"].iloc[0],
                      "metrics": g[["metric", "n_compared", "n_differ", "max_abs_diff",
                                    "tolerance", "verdict", "reason"]].to_dict("records")},
            dataset=dataset, device=device, value=g["n_differ"].sum(),
            reference_value=g["n_compared"].sum(), unit="count"))
    return rows


def _shared_shape(g: pd.DataFrame) -> tuple[int, int, int] | None:
    """(width, depth, n_members) timed on the most machines (the smallest network among
    equals), or None when no shape was timed on two machines."""
    shapes = g.groupby(["width", "depth", "n_members"])["machine_id"].nunique()
    shapes = shapes.reset_index().sort_values(
        ["machine_id", "width", "depth", "n_members"], ascending=[False, True, True, True])
    if shapes.empty or shapes.iloc[0]["machine_id"] < 2:
        return None
    return tuple(int(shapes.iloc[0][c]) for c in ("width", "depth", "n_members"))


def _epoch_fastest(et: pd.DataFrame, base_id: str) -> list[dict]:
    """``machine_epoch_fastest``: per data set x device, the fastest machine for one network
    timed on the most machines under the baseline's conditions (a speed-up exists).

    Ensemble rows first. An ensemble trains all its members at once, so its time per epoch
    grows with the members: when no ensemble of the same size was timed on two machines
    (16 seeds here, 4 there), the lesson's loop rows are used instead (one network at a time,
    the same work on every machine), and the evidence says why (``ensemble_members``: each
    machine's ensemble sizes)."""
    timed = et[et["status"] == "ok"]
    usable = timed[timed["speedup_vs_baseline"].notna()]
    rows = []
    for (dataset, device), g in usable.groupby(["dataset", "device"], sort=True):
        method, shape, why = "ensemble", _shared_shape(g[g["method"] == "ensemble"]), {}
        if shape is None:
            method, shape = "loop", _shared_shape(g[g["method"] == "loop"])
            ens = timed[(timed["dataset"] == dataset) & (timed["device"] == device)
                        & (timed["method"] == "ensemble")]
            why = {"ensemble_members": {
                str(mid): sorted(int(n) for n in set(m["n_members"]))
                for mid, m in ens.groupby("machine_id", sort=False)}}
        if shape is None:
            continue
        width, depth, members = shape
        s = g[(g["method"] == method) & (g["width"] == width) & (g["depth"] == depth)
              & (g["n_members"] == members)]
        best = s.loc[s["time_per_epoch_s"].idxmin()]
        base = s[s["machine_id"] == base_id]
        network = (f"{members} members" if method == "ensemble"
                   else "one network (the lesson's loop)")
        rows.append(_row(
            "machine_epoch_fastest", "machines",
            f"{dataset}, width {width}, depth {depth}, {network}",
            "baseline" if best["machine_id"] == base_id else "other_machine",
            {"fastest": best["machine_id"], "baseline": base_id, "width": width,
             "depth": depth, "n_members": members, "method": method,
             "times_per_epoch_s": dict(zip(s["machine_id"], s["time_per_epoch_s"])), **why},
            dataset=dataset, device=device, value=best["time_per_epoch_s"],
            reference_value=base["time_per_epoch_s"].min() if len(base) else math.nan,
            unit="s"))
    return rows


def _frame(rows: list[dict]) -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=FINDINGS_COLUMNS)
    for col in ("value", "reference_value"):
        df[col] = df[col].astype("float64")
    for col in set(FINDINGS_COLUMNS) - {"value", "reference_value"}:
        df[col] = df[col].astype("string")
    return df.reset_index(drop=True)


def findings_table(tables: Mapping[str, pd.DataFrame], *,
                   twin_tolerance: float = TWIN_TOLERANCE,
                   non_monotonic_factor: float = NON_MONOTONIC_FACTOR,
                   chance_margin: float = CHANCE_MARGIN,
                   stall_share: float = STALL_SHARE) -> pd.DataFrame:
    """Every conclusion the report states, one row each (columns: ``FINDINGS_COLUMNS``).

    ``tables`` maps table names of ``mlpbench.tables.TABLE_NAMES`` to DataFrames; uses
    matmul, lesson_reference, train_summary, loss_curves, grad_norms, epoch_time and
    data_points, and skips the findings of any that is absent. Raises ``KeyError`` naming a
    column a present table lacks.
    """
    rows: list[dict] = cuda_status(tables)
    if "matmul" in tables:
        rows += matmul_findings(tables["matmul"], tables.get("lesson_reference", pd.DataFrame(
            columns=["backend", "device"])), twin_tolerance=twin_tolerance,
            non_monotonic_factor=non_monotonic_factor)
    if "train_summary" in tables:
        rows += training_findings(tables["train_summary"], tables.get("loss_curves"),
                                  tables.get("data_points"), tables.get("grad_norms"),
                                  chance_margin=chance_margin, stall_share=stall_share)
    if "epoch_time" in tables:
        rows += epoch_time_findings(tables["epoch_time"])
    return _frame(rows)
