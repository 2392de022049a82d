"""The run's conclusions are computed from small hand-made tables, edge cases included."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from mlpbench.findings import FINDINGS_COLUMNS, RULES, findings_table

# --------------------------------------------------------------------------- hand-made tables


def mm_row(backend="numpy", device="cpu", dtype="float64", case="lesson", kind="matmul",
           m=1, k=640, n=500, t=1e-4, status="ok", **extra):
    nbytes = (m * k + k * n + m * n) * (4 if dtype == "float32" else 8)
    flop = 2.0 * m * k * n
    row = {"host": "h", "backend": backend, "device": device, "dtype": dtype, "case": case,
           "kind": kind, "m": m, "k": k, "n": n, "threads": 1, "method": "Timer",
           "time_s_median": t if status == "ok" else math.nan,
           "time_s_iqr": t * 0.01 if status == "ok" else math.nan, "n_runs": 5,
           "number_per_run": 10, "flop": flop, "bytes": float(nbytes),
           "gflop_s": flop / t / 1e9, "gb_s": nbytes / t / 1e9,
           "intensity_flop_per_byte": flop / nbytes, "bandwidth_gb_s": 20.0,
           "bandwidth_share": nbytes / t / 1e9 / 20.0, "status": status,
           "reason": "" if status == "ok" else "CUDA unavailable: no GPU",
           "speedup_vs_numpy_float64": math.nan}
    row.update(extra)
    return row


def lesson_cpu(np64=2e-4, np32=1e-4, t32=1e-4, t64=2e-4, **kw) -> list[dict]:
    return [mm_row("numpy", "cpu", "float64", t=np64, **kw),
            mm_row("numpy", "cpu", "float32", t=np32, **kw),
            mm_row("torch", "cpu", "float32", t=t32, **kw),
            mm_row("torch", "cpu", "float64", t=t64, **kw)]


LESSON_REF = pd.DataFrame([
    {"backend": "torch", "device": "cuda", "dtype": "float32", "m": 1, "k": 6400, "n": 5000,
     "time_s": 515e-6, "gb_s": 249.0, "bytes": 128e6},
    {"backend": "torch", "device": "cpu", "dtype": "float32", "m": 1, "k": 6400, "n": 5000,
     "time_s": 9.04e-3, "gb_s": 14.2, "bytes": 128e6},
    {"backend": "numpy", "device": "cpu", "dtype": "float64", "m": 1, "k": 6400, "n": 5000,
     "time_s": 18.8e-3, "gb_s": 13.6, "bytes": 256e6},
])


def summary_row(dataset="toy", device="cpu", width=4, depth=1, lr=0.1, epochs=100,
                variant="baseline", acc=(0.5, 0.4, 0.6), loss=(1.0, 0.9, 1.1), n_seeds=8,
                n_ok=None, acc_range=(0.3, 0.7), status=None):
    n_ok = n_seeds if n_ok is None else n_ok
    status = status or ("ok" if n_ok else "diverged")
    row = {"dataset": dataset, "device": device, "width": width, "depth": depth, "lr": lr,
           "epochs": epochs, "variant": variant, "status": status, "reason": "",
           "n_seeds": n_seeds, "n_ok": n_ok, "n_diverged": n_seeds - n_ok,
           "share_diverged": (n_seeds - n_ok) / n_seeds if n_seeds else math.nan}
    for metric, (mean, lo, hi) in (("test_acc", acc), ("loss", loss),
                                   ("train_acc", acc)):
        if not n_ok:
            mean = lo = hi = math.nan
        row.update({f"{metric}_mean": mean, f"{metric}_std": 0.1, f"{metric}_ci95_low": lo,
                    f"{metric}_ci95_high": hi,
                    f"{metric}_min": acc_range[0] if n_ok else math.nan,
                    f"{metric}_max": acc_range[1] if n_ok else math.nan})
    return row


def run(**tables) -> pd.DataFrame:
    return findings_table({k: pd.DataFrame(v) if isinstance(v, list) else v
                           for k, v in tables.items()})


def pick(findings: pd.DataFrame, finding: str, **where) -> list[dict]:
    rows = findings[findings["finding"] == finding]
    for column, value in where.items():
        rows = rows[(rows[column] == value).fillna(False)]
    return [{**r, "ev": json.loads(r["evidence"])} for r in rows.to_dict("records")]


def only(findings, finding, **where) -> dict:
    rows = pick(findings, finding, **where)
    assert len(rows) == 1, (finding, where, rows)
    return rows[0]


# --------------------------------------------------------------------------- schema


def test_columns_types_and_evidence_are_declared():
    f = run(matmul=lesson_cpu(), lesson_reference=LESSON_REF,
            train_summary=[summary_row(), summary_row(width=8, variant="width")])
    assert list(f.columns) == FINDINGS_COLUMNS
    assert f["value"].dtype == "float64" and f["reference_value"].dtype == "float64"
    for col in set(FINDINGS_COLUMNS) - {"value", "reference_value"}:
        assert f[col].dtype == "string", col
    assert set(f["section"]) <= {"matmul", "training", "lesson", "machine"}
    assert f["rule"].notna().all() and (f["rule"].str.len() > 10).all()
    assert set(f["finding"]) <= set(RULES)
    for evidence in f["evidence"]:
        assert isinstance(json.loads(evidence), dict)  # strict JSON: NaN is written as null


def test_no_tables_give_an_empty_table_with_the_columns():
    f = findings_table({})
    assert f.empty and list(f.columns) == FINDINGS_COLUMNS


# --------------------------------------------------------------------------- seed luck


def test_an_axis_beyond_seed_luck_is_better_with_its_evidence():
    base = summary_row(acc=(0.5, 0.45, 0.55), loss=(1.0, 0.9, 1.1))
    wide = summary_row(width=16, variant="width", acc=(0.9, 0.85, 0.95), loss=(0.3, 0.2, 0.4))
    f = run(train_summary=[base, wide])
    acc = only(f, "axis_effect", subject="width 16 vs baseline 4 (test_acc)")
    loss = only(f, "axis_effect", subject="width 16 vs baseline 4 (loss)")
    assert acc["verdict"] == "better" and loss["verdict"] == "better"  # lower loss is better
    assert (acc["value"], acc["reference_value"], acc["unit"]) == (0.9, 0.5, "fraction")
    assert acc["ev"]["row"]["width"] == 16 and acc["ev"]["baseline"]["width"] == 4
    assert acc["ev"]["row_ci95"] == {"mean": 0.9, "ci95_low": 0.85, "ci95_high": 0.95}
    assert acc["dataset"] == "toy" and acc["device"] == "cpu"


def test_worse_and_overlapping_intervals():
    base = summary_row(acc=(0.5, 0.45, 0.55))
    deep = summary_row(depth=4, variant="depth", acc=(0.2, 0.15, 0.25), loss=(1.05, 0.8, 1.2))
    f = run(train_summary=[base, deep])
    assert only(f, "axis_effect", subject="depth 4 vs baseline 1 (test_acc)")["verdict"] == "worse"
    assert only(f, "axis_effect", subject="depth 4 vs baseline 1 (loss)")["verdict"] == \
        "within_seed_noise"


def test_touching_intervals_count_as_overlapping():
    base = summary_row(acc=(0.5, 0.4, 0.6))
    wide = summary_row(width=8, variant="width", acc=(0.7, 0.6, 0.8))
    f = run(train_summary=[base, wide])
    assert only(f, "axis_effect", subject="width 8 vs baseline 4 (test_acc)")["verdict"] == \
        "within_seed_noise"


def test_one_seed_has_no_interval_and_says_so():
    base = summary_row(n_seeds=1, acc=(0.5, math.nan, math.nan), loss=(1.0, math.nan, math.nan))
    wide = summary_row(width=8, variant="width", n_seeds=1, acc=(1.0, math.nan, math.nan),
                       loss=(0.1, math.nan, math.nan))
    f = run(train_summary=[base, wide])
    for metric in ("loss", "test_acc"):
        assert only(f, "axis_effect", subject=f"width 8 vs baseline 4 ({metric})")["verdict"] \
            == "too_few_seeds"
    assert only(f, "best_variant")["verdict"] == "too_few_seeds"
    assert only(f, "seeds")["value"] == 1


# --------------------------------------------------------------------------- divergence


def test_diverged_learning_rates_are_findings_and_left_out_of_the_comparison():
    rows = [summary_row(lr=0.001), summary_row(lr=10, variant="lr", acc=(0.6, 0.55, 0.65)),
            summary_row(lr=100, variant="lr", n_ok=0),
            summary_row(lr=10000, variant="lr", n_ok=0)]
    f = run(train_summary=rows)
    lost = pick(f, "divergence")
    assert sorted(r["ev"]["row"]["lr"] for r in lost) == [100, 10000]
    assert {r["verdict"] for r in lost} == {"all_diverged"} and {r["value"] for r in lost} == {1.0}
    # The comparison is with the farthest setting that trained, not with a diverged one.
    effect = only(f, "axis_effect", subject="lr 10 vs baseline 0.001 (test_acc)")
    assert effect["ev"]["values"] == [0.001, 10, 100, 10000]
    assert effect["ev"]["ok_values"] == [0.001, 10]


def test_some_seeds_diverged_is_its_own_verdict():
    f = run(train_summary=[summary_row(), summary_row(lr=1, variant="lr", n_seeds=8, n_ok=6)])
    d = only(f, "divergence")
    assert d["verdict"] == "some_diverged" and d["value"] == pytest.approx(0.25)


def test_every_member_diverged_along_an_axis():
    f = run(train_summary=[summary_row(), summary_row(lr=100, variant="lr", n_ok=0)])
    assert only(f, "axis_effect")["verdict"] == "too_few_ok"
    assert only(f, "best_variant")["verdict"] == "none_trained"


def test_every_member_of_a_dataset_diverged():
    rows = [summary_row(n_ok=0), summary_row(width=8, variant="width", n_ok=0)]
    f = run(train_summary=rows)
    assert only(f, "training_result")["verdict"] == "diverged"
    assert only(f, "best_variant")["verdict"] == "none_trained"
    assert only(f, "axis_effect")["verdict"] == "too_few_ok"
    assert [r["verdict"] for r in pick(f, "divergence")] == ["all_diverged"] * 2


def test_a_dataset_with_no_trained_device():
    rows = [summary_row(device="cuda", n_seeds=0, status="unavailable")]
    result = only(run(train_summary=rows), "training_result")
    assert result["verdict"] == "not_trained" and result["ev"]["devices"] == ["cuda"]


# --------------------------------------------------------------------------- devices


def test_a_device_missing_from_a_dataset():
    """CUDA-only training: its device is used; the CPU's absence is not invented."""
    rows = [summary_row(device="cuda"), summary_row(device="cuda", width=8, variant="width")]
    f = run(train_summary=rows)
    assert only(f, "training_result")["device"] == "cuda"
    assert only(f, "cuda_status", subject="train_summary")["verdict"] == "available"


def test_cuda_unavailable_or_not_configured():
    mm = lesson_cpu() + [mm_row("torch", "cuda", "float32", status="unavailable")]
    f = run(matmul=mm, lesson_reference=LESSON_REF, train_summary=[summary_row()])
    m = only(f, "cuda_status", subject="matmul")
    assert m["verdict"] == "unavailable" and m["ev"]["reason"] == "CUDA unavailable: no GPU"
    assert only(f, "cuda_status", subject="train_summary")["verdict"] == "not_configured"
    assert pick(f, "gpu_vs_cpu") == []


def test_gpu_against_cpu_and_the_copy():
    mm = lesson_cpu(t32=1e-4) + [mm_row("torch", "cuda", "float32", t=2e-5),
                                 mm_row("torch", "cuda", "float32", kind="h2d", t=1e-4)]
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    g = only(f, "gpu_vs_cpu")
    assert g["verdict"] == "gpu_faster" and g["ev"]["cpu_over_cuda"] == pytest.approx(5)
    c = only(f, "transfer_cost")
    assert c["verdict"] == "copy_dominates" and c["ev"]["copy_over_product"] == pytest.approx(5)


# --------------------------------------------------------------------------- the lesson's gap


@pytest.mark.parametrize("times, verdict", [
    ((2e-4, 1e-4, 1e-4, 2e-4), "dtype"),      # float64 doubles both libraries' time
    ((3e-4, 3e-4, 1e-4, 1e-4), "library"),    # NumPy slower at both dtypes, dtype costs nothing
    ((2e-4, 1e-4, 0.5e-4, 1e-4), "dtype"),    # a tie: dtype 2x, library 2x -> dtype (>=)
])
def test_dtype_or_library(times, verdict):
    np64, np32, t32, t64 = times
    f = run(matmul=lesson_cpu(np64, np32, t32, t64), lesson_reference=LESSON_REF)
    split = only(f, "dtype_vs_library")
    assert split["verdict"] == verdict
    assert split["ev"]["dtype_numpy64_over_numpy32"] == pytest.approx(np64 / np32)
    assert split["ev"]["library_float32"] == pytest.approx(np32 / t32)


def test_the_split_needs_all_four_timings():
    mm = lesson_cpu()[:3]  # no torch float64
    assert only(run(matmul=mm, lesson_reference=LESSON_REF), "dtype_vs_library")["verdict"] \
        == "incomplete"


def test_the_lesson_numbers_say_twice_the_bytes():
    f = run(matmul=lesson_cpu(), lesson_reference=LESSON_REF)
    gap = only(f, "lesson_numpy_gap")
    assert gap["value"] == pytest.approx(18.8 / 9.04) and gap["verdict"] == "twice_the_bytes"
    assert only(f, "lesson_case_shape")["verdict"] == "differs"  # 640 x 500, not 6400 x 5000


@pytest.mark.parametrize("factor, verdict", [(1.3, "disagree"), (1.2, "agree"),
                                             (1 / 1.3, "disagree"), (1.25, "agree")])
def test_twin_timings_of_one_product(factor, verdict):
    mm = lesson_cpu() + [mm_row("numpy", "cpu", "float64", case="gemv", t=2e-4 * factor)]
    twin = only(run(matmul=mm, lesson_reference=LESSON_REF), "twin_timing")
    assert twin["verdict"] == verdict
    assert twin["subject"] == "numpy cpu float64"
    assert twin["reference_value"] == pytest.approx(2e-4 * factor)


# --------------------------------------------------------------------------- time against size


def test_a_product_slower_than_a_larger_one_is_named():
    mm = [mm_row(case="gemv", k=100, n=100, t=10e-3), mm_row(case="gemv", k=200, n=200, t=1e-4),
          mm_row(case="gemv", k=400, n=400, t=2e-4)]
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    odd = only(f, "rises_with_size")
    assert odd["verdict"] == "does_not_rise" and odd["value"] == pytest.approx(100)
    assert (odd["ev"]["smaller"]["k"], odd["ev"]["larger"]["k"]) == (100, 200)


def test_ties_and_a_lone_block_of_timings():
    mm = [mm_row(case="square", m=64, k=64, n=64, t=1e-4),
          mm_row(case="square", m=128, k=128, n=128, t=1e-4),  # a tie: not slower
          mm_row(case="gemv", backend="torch", t=1e-4)]         # one size only
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    assert only(f, "rises_with_size", subject="numpy cpu float64, square")["verdict"] == "rises"
    lone = only(f, "rises_with_size", subject="torch cpu float64, matrix-vector")
    assert lone["verdict"] == "too_few_sizes" and math.isnan(lone["value"])


@pytest.mark.parametrize("share, verdict", [(1.2, "above_copy_bandwidth"),
                                            (0.7, "bandwidth_bound"), (0.2, "below_bandwidth")])
def test_bandwidth_share_of_the_lesson_product(share, verdict):
    mm = [mm_row(bandwidth_share=share)]
    assert only(run(matmul=mm, lesson_reference=LESSON_REF), "lesson_bandwidth_share")[
        "verdict"] == verdict


# --------------------------------------------------------------------------- learning


def points(n_classes: int, n_test: int) -> pd.DataFrame:
    train = [{"dataset": "toy", "split": "train", "x0": 0.0, "x1": 0.0, "label": i % n_classes}
             for i in range(9)]
    test = [{"dataset": "toy", "split": "test", "x0": 0.0, "x1": 0.0, "label": i % n_classes}
            for i in range(n_test)]
    return pd.DataFrame(train + test)


def curve(loss_at_start: float, **shape) -> dict:
    return {"dataset": "toy", "device": "cpu", "width": 4, "depth": 1, "lr": 0.1, "epoch": 1,
            "loss_mean": loss_at_start, **shape}


@pytest.mark.parametrize("final, verdict", [(1.05, "stalled"), (0.5, "learned"), (5.0, "rose")])
def test_stalled_learning(final, verdict):
    rows = [summary_row(), summary_row(epochs=200, variant="epochs", loss=(final, 0, 9))]
    f = run(train_summary=rows, loss_curves=[curve(1.1)])
    s = only(f, "stalled")
    assert s["verdict"] == verdict and (s["value"], s["reference_value"]) == (final, 1.1)


def test_chance_level_and_a_small_test_set():
    rows = [summary_row(), summary_row(width=8, variant="width", acc=(0.36, 0.3, 0.4))]
    f = run(train_summary=rows, data_points=points(3, 3))
    assert only(f, "chance_level")["value"] == pytest.approx(1 / 3)
    assert only(f, "at_chance")["verdict"] == "at_chance"
    assert only(f, "test_set_size")["verdict"] == "small"
    f = run(train_summary=rows, data_points=points(2, 40))
    assert only(f, "at_chance")["verdict"] == "above_chance"  # 36% is far from 50%
    assert only(f, "test_set_size")["verdict"] == "adequate"


def test_best_variant_ties_go_to_the_smaller_network():
    rows = [summary_row(), summary_row(width=16, variant="width", acc=(0.8, 0.7, 0.9)),
            summary_row(width=8, variant="width", acc=(0.8, 0.7, 0.9))]
    best = only(run(train_summary=rows), "best_variant")
    assert best["ev"]["row"]["width"] == 8
    axis_best = only(run(train_summary=rows), "axis_best")
    assert axis_best["verdict"] == "variant" and axis_best["ev"]["row"]["width"] == 8


def test_seed_spread():
    f = run(train_summary=[summary_row(acc_range=(0.5, 0.5))])
    assert only(f, "seed_spread")["verdict"] == "seed_independent"
    f = run(train_summary=[summary_row(acc_range=(0.2, 0.9))])
    s = only(f, "seed_spread")
    assert s["verdict"] == "seed_dependent" and (s["value"], s["reference_value"]) == (0.2, 0.9)


def test_gradient_ratio_per_depth():
    grads = [{"dataset": "toy", "device": "cpu", "width": 4, "lr": 0.1, "stage": "init",
              "depth": d, "layer": layer, "grad_norm_mean": norm}
             for d, norms in ((1, [0.5, 1.0]), (3, [0.01, 0.1, 0.5, 1.0]))
             for layer, norm in enumerate(norms)]
    f = run(train_summary=[summary_row()], grad_norms=grads)
    ratios = {r["ev"]["depth"]: r for r in pick(f, "grad_ratio")}
    assert ratios[1]["value"] == pytest.approx(0.5) and ratios[3]["value"] == pytest.approx(0.01)
    assert {r["verdict"] for r in ratios.values()} == {"first_smaller"}


# --------------------------------------------------------------------------- epoch times


def timing(device, method, per_epoch, per_member, width=4, speedup=math.nan, status="ok",
           spread=0.1, depth=1, n_members=8):
    """An epoch_time row whose windows ran within +-spread (a fraction) of the median."""
    return {"dataset": "toy", "device": device, "width": width, "depth": depth,
            "n_members": n_members, "threads": 1, "method": method,
            "time_per_epoch_s": per_epoch,
            "time_per_epoch_s_min": per_epoch * (1 - spread),
            "time_per_epoch_s_max": per_epoch * (1 + spread),
            "time_per_member_epoch_s": per_member, "speedup_vs_cpu": speedup, "status": status,
            "reason": ""}


def test_ensemble_gain_is_the_median_over_shapes():
    times = [timing("cpu", "ensemble", 8e-4, 1e-4, w) for w in (4, 8, 16)]
    times += [timing("cpu", "loop", l, l, w) for w, l in ((4, 2e-4), (8, 1e-3), (16, 5e-4))]
    g = only(run(epoch_time=times), "ensemble_gain")
    assert g["value"] == pytest.approx(5) and g["verdict"] == "ensemble_faster"
    assert g["ev"]["n_pairs"] == 3 and g["ev"]["n_faster"] == 3
    assert "do not overlap" in g["rule"]
    r = only(run(epoch_time=times), "member_epoch_range")
    assert (r["value"], r["reference_value"]) == (1e-4, 1e-4)


def test_ensemble_gain_within_the_spread_is_not_a_gain():
    # Per member the ensemble's median is faster (1.0e-4 vs 1.1e-4), but the windows overlap.
    times = [timing("cpu", "ensemble", 8e-4, 1e-4, spread=0.2),
             timing("cpu", "loop", 1.1e-4, 1.1e-4, spread=0.2)]
    g = only(run(epoch_time=times), "ensemble_gain")
    assert g["value"] == pytest.approx(1.1) and g["verdict"] == "within_spread"
    # A single window has no spread: nothing is called different.
    one = [{**t, "time_per_epoch_s_min": math.nan, "time_per_epoch_s_max": math.nan}
           for t in times]
    assert only(run(epoch_time=one), "ensemble_gain")["ev"]["n_no_spread"] == 1


def test_cuda_epoch_times_without_a_cpu_twin_are_not_comparable():
    times = [timing("cuda", "ensemble", 1e-4, 1e-5)]
    assert only(run(epoch_time=times), "cuda_vs_cpu_epoch")["verdict"] == "not_comparable"
    times = [timing("cpu", "ensemble", 1e-4, 1e-5),
             timing("cuda", "ensemble", 2e-4, 2e-5, speedup=0.5)]
    slow = only(run(epoch_time=times), "cuda_vs_cpu_epoch")
    assert slow["verdict"] == "gpu_slower" and slow["value"] == 0.5
    # Twice the median but windows that overlap: not called slower.
    times[1] = timing("cuda", "ensemble", 2e-4, 2e-5, speedup=0.5, spread=0.6)
    assert only(run(epoch_time=times), "cuda_vs_cpu_epoch")["verdict"] == "within_spread"
    assert np.isnan(only(run(epoch_time=times), "cuda_status")["reference_value"])


def test_shape_steps_use_the_windows_spread():
    # Width 32 has the larger median, but its windows overlap width 64's: within the spread.
    times = [timing("cpu", "ensemble", t, t / 8, width=w, spread=sp)
             for w, t, sp in ((4, 1e-4, 0.05), (8, 2e-4, 0.05), (32, 3.6e-4, 0.3),
                              (64, 3.0e-4, 0.3))]
    times += [timing("cpu", "ensemble", 5e-4, 5e-4 / 8, width=4, depth=2)]
    steps = {r["subject"]: r for r in pick(run(epoch_time=times), "epoch_time_step")}
    assert steps["ensemble: width 4 to 8"]["verdict"] == "slower"
    assert steps["ensemble: width 8 to 32"]["verdict"] == "slower"
    assert steps["ensemble: width 32 to 64"]["verdict"] == "within_spread"
    assert steps["ensemble: depth 1 to 2"]["verdict"] == "slower"  # at width 4, the usual one
    assert steps["ensemble: width 32 to 64"]["value"] == pytest.approx(3.0e-4)
    assert steps["ensemble: width 32 to 64"]["reference_value"] == pytest.approx(3.6e-4)
    assert "do not overlap" in steps["ensemble: width 4 to 8"]["rule"]


@pytest.mark.parametrize("a, b, verdict", [
    ((1.0, 2.0), (2.5, 3.0), "slower"), ((1.0, 2.0), (0.1, 0.9), "faster"),
    ((1.0, 2.0), (1.9, 3.0), "within_spread"), ((1.0, 2.0), (math.nan, math.nan), "no_spread"),
])
def test_compare_ranges(a, b, verdict):
    from mlpbench.findings import compare_ranges

    assert compare_ranges(*a, *b) == verdict


# --------------------------------------------------------------------------- disturbed timings


def quiet(rows: list[dict]) -> list[dict]:
    return [{"noisy": False, "cpu_wait_threads": 0.01, "attempts": 1, "noise_reason": "", **r}
            for r in rows]


def test_a_quiet_run_flags_nothing():
    f = run(matmul=quiet(lesson_cpu()), lesson_reference=LESSON_REF)
    noisy = only(f, "noisy_timings")
    assert noisy["verdict"] == "none" and noisy["value"] == 0 and noisy["reference_value"] == 4


def test_no_headline_verdict_or_ratio_rests_on_a_noisy_row():
    # torch float32 is the fastest, but its timing was disturbed in every attempt
    mm = quiet(lesson_cpu(t32=1e-5))
    mm[2].update(noisy=True, cpu_wait_threads=0.7, attempts=3, noise_reason="disturbed")
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    noisy = only(f, "noisy_timings")
    assert noisy["verdict"] == "flagged" and noisy["value"] == 1
    assert noisy["ev"]["rows"][0]["backend"] == "torch"
    assert noisy["ev"]["rows"][0]["cpu_wait_threads"] == 0.7
    fastest = only(f, "lesson_fastest")
    assert fastest["subject"] != "torch cpu float32"
    assert fastest["ev"]["candidates"] == 3
    # the ratios that need torch float32 on the CPU are not computed from the flagged row
    assert only(f, "dtype_vs_library")["verdict"] == "incomplete"
    # the flagged time (1e-05 s) appears in the evidence of no other finding
    for row in f.itertuples():
        if row.finding != "noisy_timings":
            assert "1e-05" not in row.evidence, row.finding


def test_a_lesson_timing_its_twin_contradicts_is_left_out_of_the_headline():
    mm = lesson_cpu(t32=1e-5) + [mm_row("torch", "cpu", "float32", case="gemv", t=1e-4)]
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    assert only(f, "twin_timing", subject="torch cpu float32")["verdict"] == "disagree"
    left = only(f, "lesson_twin_left_out")
    assert left["ev"]["series"] == ["torch cpu float32"]
    assert only(f, "lesson_fastest")["subject"] != "torch cpu float32"


# --------------------------------------------------------------------------- the two roofs


def roofed(rows: list[dict], roof: float, bw: float = 20.0) -> list[dict]:
    out = []
    for r in rows:
        ridge = roof / bw
        out.append({**r, "bandwidth_gb_s": bw, "compute_roof_gflop_s": roof,
                    "compute_share": r["gflop_s"] / roof, "ridge_flop_per_byte": ridge,
                    "bound": "memory" if r["intensity_flop_per_byte"] < ridge else "compute"})
    return out


def test_compute_roof_ridge_point_and_the_lesson_side():
    sq = [mm_row("torch", "cpu", "float32", case="square", m=s, k=s, n=s, t=2.0 * s**3 / g / 1e9)
          for s, g in ((256, 40e0), (1024, 80e0))]  # 40 and 80 GFLOP/s
    mm = roofed(sq + [mm_row("torch", "cpu", "float32", t=1e-4)], roof=80.0)
    f = run(matmul=mm, lesson_reference=LESSON_REF)
    roof = only(f, "compute_roof")
    assert roof["value"] == pytest.approx(80.0) and roof["ev"]["row"]["n"] == 1024
    ridge = only(f, "ridge_point")
    assert ridge["value"] == pytest.approx(4.0)  # 80 GFLOP/s / 20 GB/s
    assert ridge["ev"]["memory_bound"] == 1 and ridge["ev"]["compute_bound"] == 2
    lesson = only(f, "lesson_bound")
    assert lesson["verdict"] == "memory_bound" and lesson["reference_value"] == pytest.approx(4.0)


def test_no_square_product_gives_no_compute_roof():
    f = run(matmul=roofed([mm_row("torch", "cpu", "float32")], roof=math.nan),
            lesson_reference=LESSON_REF)
    assert not pick(f, "compute_roof") and not pick(f, "ridge_point")


# --------------------------------------------------------------------------- GPU pitfalls


def cuda_rows(nosync=1e-5, synced=5e-4, pageable=1e-2, pinned=5e-3, off=1e-3, on=2.5e-4):
    k, n = 6400, 5000
    return [mm_row("torch", "cuda", "float32", k=k, n=n, t=synced),
            mm_row("torch", "cuda", "float32", kind="matmul_nosync", k=k, n=n, t=nosync,
                   number_per_run=100),
            mm_row("torch", "cuda", "float32", kind="h2d", k=k, n=n, t=pageable),
            mm_row("torch", "cuda", "float32", kind="h2d_pinned", k=k, n=n, t=pinned),
            mm_row("torch", "cuda", "float32", case="square", m=2048, k=2048, n=2048, t=off),
            mm_row("torch", "cuda", "float32", case="square", kind="matmul_tf32", m=2048,
                   k=2048, n=2048, t=on)]


@pytest.mark.parametrize("synced, verdict", [(5e-4, "closer_to_synchronised"),
                                             (5e-2, "closer_to_unsynchronised")])
def test_what_the_lessons_unsynchronised_time_most_likely_measured(synced, verdict):
    f = run(matmul=cuda_rows(synced=synced), lesson_reference=LESSON_REF)
    u = only(f, "unsynchronised_lesson")
    assert u["verdict"] == verdict
    assert u["value"] == pytest.approx(1e-5) and u["reference_value"] == pytest.approx(synced)
    assert u["ev"]["lesson_s"] == pytest.approx(515e-6)


def test_pinned_copy_and_tf32():
    f = run(matmul=cuda_rows(), lesson_reference=LESSON_REF)
    pinned = only(f, "pinned_copy")
    assert pinned["verdict"] == "pinned_faster"
    assert pinned["ev"]["pageable_over_pinned"] == pytest.approx(2.0)
    tf32 = only(f, "tf32")
    assert tf32["verdict"] == "tf32_faster" and tf32["ev"]["off_over_on"] == pytest.approx(4.0)
    assert "2048×2048" in tf32["subject"]
    f = run(matmul=cuda_rows(pinned=9.5e-3, on=9.9e-4), lesson_reference=LESSON_REF)
    assert only(f, "pinned_copy")["verdict"] == "no_real_gain"
    assert only(f, "tf32")["verdict"] == "no_real_gain"


def test_without_cuda_rows_there_are_no_gpu_pitfall_findings():
    f = run(matmul=lesson_cpu() + [mm_row("torch", "cuda", "float32", status="unavailable",
                                          kind=k) for k in ("matmul_nosync", "h2d_pinned")],
            lesson_reference=LESSON_REF)
    for name in ("unsynchronised_lesson", "pinned_copy", "tf32"):
        assert not pick(f, name)


def test_warm_and_cold_lesson_timings_say_whether_the_cache_helped():
    rows = lesson_cpu(np64=2e-4, np32=1e-4, t32=1e-4, t64=2e-4)
    rows += [mm_row("numpy", "cpu", "float64", kind="matmul_cold", t=2.1e-4),  # within 10 %
             mm_row("torch", "cpu", "float32", kind="matmul_cold", t=1.5e-4),  # cache helps
             # 40 % slower cold, but spreads (median ± IQR/2) that overlap: not a verdict
             mm_row("numpy", "cpu", "float32", kind="matmul_cold", t=1.4e-4, time_s_iqr=1e-4),
             mm_row("torch", "cpu", "float64", kind="matmul_cold", t=1.5e-4)]  # cold faster
    f = run(matmul=rows)
    by = {r["subject"]: r for r in pick(f, "lesson_cache")}
    assert set(by) == {"numpy cpu float64", "torch cpu float32", "numpy cpu float32",
                       "torch cpu float64"}
    assert by["numpy cpu float64"]["verdict"] == "within_spread"
    assert by["numpy cpu float32"]["verdict"] == "within_spread"
    assert by["torch cpu float64"]["verdict"] == "cold_faster"
    t = by["torch cpu float32"]
    assert t["verdict"] == "cache_helps"
    assert (t["value"], t["reference_value"]) == (1e-4, 1.5e-4)
    assert t["ev"]["cold_over_warm"] == pytest.approx(1.5)
    assert t["ev"]["cold"]["kind"] == "matmul_cold" and t["ev"]["warm"]["kind"] == "matmul"
    # the headline still rests on the warm timings, as the lesson's %timeit took them
    assert pick(f, "lesson_fastest")[0]["ev"]["fastest"]["kind"] == "matmul"


def test_copy_rates_that_differ_by_more_than_the_factor_disagree():
    copies = [mm_row("numpy", "cpu", "float32", case="bandwidth", kind="copy", m=1, k=1, n=1,
                     t=1.0, gb_s=12.0),
              mm_row("torch", "cpu", "float32", case="bandwidth", kind="copy", m=1, k=1, n=1,
                     t=1.0, gb_s=24.0)]
    f = only(run(matmul=lesson_cpu() + copies), "copy_agreement")
    assert (f["verdict"], f["value"]) == ("disagree", 2.0)
    assert f["ev"]["highest"]["backend"] == "torch" and f["ev"]["lowest"]["backend"] == "numpy"
    assert len(f["ev"]["rates"]) == 2
    copies[0]["gb_s"] = 22.0
    assert only(run(matmul=lesson_cpu() + copies), "copy_agreement")["verdict"] == "agree"
