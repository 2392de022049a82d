"""Aggregation: hand-made stage outputs in, hand-computed statistics out."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlpbench import contract
from mlpbench.contract import MATMUL, TRAIN, ContractError
from mlpbench.io import write_json_atomic
from mlpbench.tables import (
    TABLE_NAMES,
    build_tables,
    epoch_time_by_shape,
    infer_baselines,
    load_tables,
    write_tables,
)
from synthetic_results import (
    CUDA_REASON,
    DATASETS,
    decision_logits,
    environment_frame,
    load_points,
    machine_info,
    matmul_frame,
    write_inputs,
)

# Student t quantile t(0.975, dof), from printed tables, so the test does not reuse scipy.
T975 = {1: 12.706204736174698, 2: 4.302652729749464, 3: 3.182446305284263}


def _mm_row(backend, device, dtype, case, m, k, n, time_s, status="ok", reason=""):
    row = matmul_frame("cpu", False).iloc[0].to_dict()
    row.update(backend=backend, device=device, dtype=dtype, case=case, kind="matmul", m=m, k=k,
               n=n, time_s_median=time_s if status == "ok" else np.nan, status=status,
               reason=reason)
    return row


def _metrics(dataset, device, width, depth, epochs, losses, accs, statuses=None, lr=0.001):
    statuses = statuses or ["ok"] * len(losses)
    return pd.DataFrame({
        "dataset": dataset, "device": device, "width": width, "depth": depth, "lr": lr,
        "seed": range(len(losses)), "epochs": epochs, "loss": losses, "train_acc": accs,
        "test_acc": accs, "status": statuses,
        "reason": ["" if s == "ok" else "non-finite loss" for s in statuses],
    })


def _write_train_dir(d: Path, metrics: pd.DataFrame, losses=None, timings=None, grads=None):
    """The six files of one training job; the tables not given are empty, as a stage writes
    them (with the declared schema)."""
    frames = {name: contract.empty_frame(TRAIN[name]) for name in TRAIN}
    frames["metrics"] = metrics
    for key, value in (("losses", losses), ("timings", timings), ("gradnorms", grads)):
        if value is not None:
            frames[key] = value
    for stem, df in frames.items():
        contract.write(df, d / f"{stem}.parquet", TRAIN[stem])
    return d


@pytest.fixture
def hand_made(tmp_path):
    """Two matmul files, one train dir per device, one machine file, plus decoys."""
    mm = tmp_path / "matmul"
    cpu = pd.DataFrame([
        _mm_row("numpy", "cpu", "float64", "lesson", 1, 6400, 5000, 0.020),
        _mm_row("numpy", "cpu", "float32", "lesson", 1, 6400, 5000, 0.010),
        _mm_row("torch", "cpu", "float32", "lesson", 1, 6400, 5000, 0.008),
        _mm_row("torch", "cpu", "float64", "lesson", 1, 6400, 5000, 0.016),
        _mm_row("numpy", "cpu", "float64", "square", 64, 64, 64, 0.004),
        _mm_row("torch", "cpu", "float64", "square", 64, 64, 64, 0.001),
    ])
    cuda = pd.DataFrame([_mm_row("torch", "cuda", "float32", "lesson", 1, 6400, 5000, np.nan,
                                 status="unavailable", reason=CUDA_REASON)])
    contract.write(cpu, mm / "cpu.parquet", MATMUL)
    contract.write(cuda, mm / "cuda.parquet", MATMUL)
    for device in ("cpu", "cuda"):
        contract.write(environment_frame("matmul", device), mm / f"{device}.environment.parquet",
                       contract.MATMUL_ENVIRONMENT)
    # A stale file from an earlier config: it must not be read.
    contract.write(cpu.assign(backend="stale"), mm / "old.parquet", MATMUL)

    toy_cpu = _metrics("toy", "cpu", 4, 1, 1000, [0.2, 0.4, 0.6, np.nan],
                       [1.0, 2 / 3, 2 / 3, np.nan], ["ok", "ok", "ok", "diverged"])
    toy_cpu = pd.concat([toy_cpu, _metrics("toy", "cpu", 4, 1, 2000, [0.1, 0.2, 0.3],
                                           [1.0, 1.0, 2 / 3]),
                         _metrics("toy", "cpu", 8, 1, 1000, [0.3, 0.5], [1.0, 1.0])],
                        ignore_index=True)
    losses = pd.DataFrame({
        "dataset": "toy", "device": "cpu", "width": 4, "depth": 1, "lr": 0.001,
        "seed": [0, 0, 1, 1, 2, 2], "epoch": [1, 2, 1, 2, 1, 2],
        "loss": [1.0, 0.5, 2.0, 1.5, 3.0, np.inf],  # seed 2 diverges at epoch 2
    })
    timing_cols = dict(host="h", dataset="toy", width=4, depth=1, n_members=4, n_windows=5,
                       epochs_per_window=400, epochs_trained=2000, threads=1, method="ensemble")
    timings_cpu = pd.DataFrame([{**timing_cols, "device": "cpu", "time_s": 2.0,
                                 "time_per_epoch_s": 1e-3, "time_per_epoch_s_min": 0.9e-3,
                                 "time_per_epoch_s_max": 1.2e-3, "time_per_epoch_s_iqr": 1e-4,
                                 "time_per_member_epoch_s": 2.5e-4, "status": "ok",
                                 "reason": ""}])
    grads = pd.DataFrame({
        "dataset": "toy", "device": "cpu", "width": 4, "depth": 1, "lr": 0.001,
        "seed": [0, 1, 2, 0, 1, 2], "stage": "init", "epochs": 0, "layer": [0, 0, 0, 1, 1, 1],
        "grad_norm": [1.0, 2.0, 3.0, 0.5, 0.5, np.nan],
    })
    d_cpu = _write_train_dir(tmp_path / "train/toy/cpu", toy_cpu, losses, timings_cpu, grads)
    toy_cuda = pd.DataFrame([{
        "dataset": "toy", "device": "cuda", "width": w, "depth": 1, "lr": 0.001, "seed": np.nan,
        "epochs": e, "loss": np.nan, "train_acc": np.nan, "test_acc": np.nan,
        "status": "unavailable", "reason": CUDA_REASON} for w, e in ((4, 1000), (4, 2000),
                                                                     (8, 1000))])
    timings_cuda = pd.DataFrame([{**timing_cols, "device": "cuda", "n_windows": 0,
                                  "epochs_per_window": 0, "epochs_trained": 0, "time_s": np.nan,
                                  "time_per_epoch_s": np.nan, "time_per_epoch_s_min": np.nan,
                                  "time_per_epoch_s_max": np.nan, "time_per_epoch_s_iqr": np.nan,
                                  "time_per_member_epoch_s": np.nan,
                                  "status": "unavailable", "reason": CUDA_REASON}])
    d_cuda = _write_train_dir(tmp_path / "train/toy/cuda", toy_cuda, timings=timings_cuda)
    # A dataset the config no longer asks for.
    _write_train_dir(tmp_path / "train/stale/cpu", _metrics("stale", "cpu", 4, 1, 10, [1.0], [0.0]))
    machine = tmp_path / "machine/h.json"
    write_json_atomic(machine_info(False), machine)
    return {"matmul": [mm / "cpu.parquet", mm / "cuda.parquet"], "train": [d_cpu, d_cuda],
            "machine": [machine]}


def test_matmul_speedups_against_numpy(hand_made):
    t = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["matmul"]
    assert "stale" not in set(t["backend"])
    assert len(t) == 7

    def row(backend, device, dtype, case="lesson"):
        return t[(t["backend"] == backend) & (t["device"] == device) & (t["dtype"] == dtype)
                 & (t["case"] == case)].iloc[0]

    torch32 = row("torch", "cpu", "float32")
    assert torch32["speedup_vs_numpy_float64"] == pytest.approx(0.020 / 0.008)
    assert torch32["speedup_vs_numpy_same_dtype"] == pytest.approx(0.010 / 0.008)
    assert row("numpy", "cpu", "float32")["speedup_vs_numpy_float64"] == pytest.approx(2.0)
    assert row("numpy", "cpu", "float64")["speedup_vs_numpy_float64"] == pytest.approx(1.0)
    # The same shape in another case is compared with that case's NumPy, not the lesson's.
    square = row("torch", "cpu", "float64", "square")
    assert square["speedup_vs_numpy_float64"] == pytest.approx(4.0)
    cuda = row("torch", "cuda", "float32")
    assert cuda["status"] == "unavailable" and cuda["reason"] == CUDA_REASON
    assert math.isnan(cuda["speedup_vs_numpy_float64"])


def test_train_summary_means_and_t_intervals_over_non_diverged_seeds(hand_made):
    s = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["train_summary"]
    assert set(s["dataset"]) == {"toy"}  # the unlisted dataset was not read
    base = s[(s["device"] == "cpu") & (s["width"] == 4) & (s["epochs"] == 1000)].iloc[0]
    assert (base["n_seeds"], base["n_ok"], base["n_diverged"]) == (4, 3, 1)
    assert base["share_diverged"] == pytest.approx(0.25)
    assert base["status"] == "ok"
    assert base["loss_mean"] == pytest.approx(0.4)
    assert base["loss_std"] == pytest.approx(0.2)  # sample std of 0.2, 0.4, 0.6
    half = T975[2] * 0.2 / math.sqrt(3)
    assert base["loss_ci95_low"] == pytest.approx(0.4 - half)
    assert base["loss_ci95_high"] == pytest.approx(0.4 + half)
    assert (base["loss_min"], base["loss_max"]) == pytest.approx((0.2, 0.6))
    assert base["test_acc_mean"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    wide = s[(s["device"] == "cpu") & (s["width"] == 8)].iloc[0]
    assert wide["loss_ci95_high"] - wide["loss_mean"] == pytest.approx(
        T975[1] * np.std([0.3, 0.5], ddof=1) / math.sqrt(2))


def test_train_summary_variants_and_unavailable_rows(hand_made):
    s = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["train_summary"]
    cpu = s[s["device"] == "cpu"].set_index(["width", "epochs"])["variant"]
    assert cpu[(4, 1000)] == "baseline"
    assert cpu[(4, 2000)] == "epochs"
    assert cpu[(8, 1000)] == "width"
    cuda = s[s["device"] == "cuda"]
    assert len(cuda) == 3
    assert set(cuda["status"]) == {"unavailable"}
    assert set(cuda["reason"]) == {CUDA_REASON}
    assert (cuda["n_seeds"] == 0).all()
    assert cuda["loss_mean"].isna().all()


def test_explicit_baseline_from_config_wins_over_the_guess(hand_made):
    cfg = {"datasets": {"toy": {"baseline": {"epochs": 1000, "width": 8, "depth": 1,
                                             "lr": 0.001}}}}
    s = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"],
                     train_cfg=cfg, points_loader=load_points)["train_summary"]
    cpu = s[s["device"] == "cpu"].set_index(["width", "epochs"])["variant"]
    assert cpu[(8, 1000)] == "baseline"
    assert cpu[(4, 1000)] == "width"
    assert cpu[(4, 2000)] == "epochs+width"


def test_infer_baselines_picks_the_shape_with_most_checkpoints():
    m = pd.concat([_metrics("toy", "cpu", 8, 1, 1000, [0.1], [1.0]),
                   _metrics("toy", "cpu", 4, 1, 1000, [0.1], [1.0]),
                   _metrics("toy", "cpu", 4, 1, 5000, [0.1], [1.0]),
                   _metrics("toy", "cpu", 4, 2, 1000, [0.1], [1.0])])
    assert infer_baselines(m) == {"toy": {"epochs": 1000, "width": 4, "depth": 1, "lr": 0.001}}


def test_loss_curves_leave_out_diverged_seeds(hand_made):
    c = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["loss_curves"]
    assert list(c["epoch"]) == [1, 2]
    first, second = c.iloc[0], c.iloc[1]
    assert (first["n_seeds"], first["n_diverged"]) == (2, 1)
    assert first["loss_mean"] == pytest.approx(1.5)  # seeds 0 and 1; seed 2 diverged later
    assert (second["loss_min"], second["loss_max"]) == pytest.approx((0.5, 1.5))
    half = T975[1] * np.std([0.5, 1.5], ddof=1) / math.sqrt(2)
    assert second["loss_ci95_low"] == pytest.approx(1.0 - half)


def test_epoch_time_keeps_unavailable_rows(hand_made):
    e = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["epoch_time"]
    assert set(e["device"]) == {"cpu", "cuda"}
    cuda = e[e["device"] == "cuda"].iloc[0]
    assert cuda["status"] == "unavailable" and cuda["reason"] == CUDA_REASON
    assert math.isnan(cuda["speedup_vs_cpu"])
    assert e[e["device"] == "cpu"]["speedup_vs_cpu"].iloc[0] == pytest.approx(1.0)


def test_grad_norms_mean_and_std_per_layer(hand_made):
    g = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["grad_norms"]
    by_layer = g.set_index("layer")
    assert by_layer.loc[0, "grad_norm_mean"] == pytest.approx(2.0)
    assert by_layer.loc[0, "grad_norm_std"] == pytest.approx(1.0)
    assert by_layer.loc[1, "n_seeds"] == 2  # the NaN norm is left out
    assert by_layer.loc[1, "grad_norm_mean"] == pytest.approx(0.5)


def test_lesson_reference_holds_the_lessons_three_numbers():
    ref = build_tables([], [], [])["lesson_reference"].set_index("backend", append=True)
    times = {(r["device"], r["dtype"]): r["time_s"] for _, r in ref.iterrows()}
    assert times == {("cuda", "float32"): pytest.approx(515e-6),
                     ("cpu", "float32"): pytest.approx(9.04e-3),
                     ("cpu", "float64"): pytest.approx(18.8e-3)}
    numpy = ref[ref["dtype"] == "float64"].iloc[0]
    assert numpy["gb_s"] == pytest.approx((6400 + 6400 * 5000 + 5000) * 8 / 18.8e-3 / 1e9)
    cuda = ref[ref["device"] == "cuda"].iloc[0]
    assert cuda["sync"] == "not synchronised"


def test_machine_table_flattens_the_record(hand_made):
    m = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["machine"]
    row = m.iloc[0]
    assert row["machine_id"] == "synthhost"  # the record's own id; the file stem otherwise
    assert row["gpu_available"] == False  # noqa: E712 (numpy bool)
    assert row["gpu_reason"] == CUDA_REASON
    assert "config_json" in m.columns
    assert json.loads(row["record_json"])["gpu"]["reason"] == CUDA_REASON


def test_decision_regions_and_points_from_the_synthetic_run(tmp_path):
    inputs = write_inputs(tmp_path, cuda=False)
    tables = build_tables(inputs.matmul_files, inputs.train_dirs, inputs.machine_files,
                          train_cfg=inputs.train_cfg, points_loader=load_points)
    d = tables["decision_regions"]
    assert set(d["dataset"]) == {"toy", "blobs"}
    assert set(d["device"]) == {"cpu"}
    for dataset, n_classes in DATASETS.items():
        roles = d[d["dataset"] == dataset].groupby("role")
        assert set(roles.groups) == {"baseline", "best"}
        # The lesson's network at the lesson's epochs, not after the longest training; the
        # best variant here is the same shape trained longer, at its own checkpoint.
        for role, epochs in (("baseline", 20), ("best", 40)):
            g = roles.get_group(role)
            assert (g["width"].unique(), g["depth"].unique(), g["epochs"].unique()) == (
                [4], [1], [epochs])
            (seed,) = g["seed"].unique()
            _, _, logits = decision_logits(n_classes, seed, epochs)
            assert list(g["pred"]) == list(logits.argmax(axis=1))
    p = tables["data_points"]
    assert set(p["split"]) == {"train", "test"}
    assert len(p[p["dataset"] == "toy"]) == 15


def _constant_grid(width: int, epochs: int, seeds: int, winner: int) -> pd.DataFrame:
    """A 2 x 2 decision grid of toy (3 classes) on which class ``winner`` wins everywhere."""
    rows = []
    for seed in range(seeds):
        for x0, x1 in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)):
            logits = {f"logit_{c}": np.float32(1.0 if c == winner else 0.0) for c in range(3)}
            rows.append({"dataset": "toy", "device": "cpu", "width": width, "depth": 1,
                         "lr": 0.001, "seed": seed, "epochs": epochs, "x0": np.float32(x0),
                         "x1": np.float32(x1), **logits})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("longer_is_best", [False, True])
def test_decision_regions_pick_each_network_at_its_own_checkpoint(tmp_path, longer_is_best):
    # Baseline: width 4 at 1000 epochs (class 0 wins on its grid); the same shape at 2000
    # epochs (class 1) and width 8 at 1000 epochs (class 2) are the candidates for "best".
    long_acc = [1.0, 1.0, 1.0] if longer_is_best else [2 / 3, 2 / 3, 1 / 3]
    metrics = pd.concat([
        _metrics("toy", "cpu", 4, 1, 1000, [0.9, 0.8, 0.7], [1 / 3, 1 / 3, 2 / 3]),
        _metrics("toy", "cpu", 4, 1, 2000, [0.2, 0.3, 0.4], long_acc),
        _metrics("toy", "cpu", 8, 1, 1000, [0.5, 0.4, 0.6], [2 / 3, 1.0, 2 / 3]),
    ], ignore_index=True)
    d = _write_train_dir(tmp_path / "train/toy/cpu", metrics)
    grid = pd.concat([_constant_grid(4, 1000, 3, 0), _constant_grid(4, 2000, 3, 1),
                      _constant_grid(8, 1000, 3, 2)], ignore_index=True)
    contract.write(grid, d / "decision.parquet", TRAIN["decision"])
    cfg = {"datasets": {"toy": {"baseline": {"epochs": 1000, "width": 4, "depth": 1,
                                             "lr": 0.001}}}}
    regions = build_tables([], [d], [], train_cfg=cfg, points_loader=load_points)[
        "decision_regions"]
    by_role = {role: g for role, g in regions.groupby("role")}
    base = by_role["baseline"]
    assert (base["width"].unique(), base["epochs"].unique()) == ([4], [1000])
    assert set(base["pred"]) == {0} and len(base) == 4
    # Accuracies 1/3, 1/3, 2/3: seeds 0 and 1 sit at the median; seed 1 has the lower loss.
    assert list(base["seed"].unique()) == [1]
    assert base["test_acc_mean"].iloc[0] == pytest.approx(4 / 9)
    best = by_role["best"]
    if longer_is_best:
        assert (best["width"].unique(), best["epochs"].unique()) == ([4], [2000])
        assert set(best["pred"]) == {1}
    else:
        assert (best["width"].unique(), best["epochs"].unique()) == ([8], [1000])
        assert set(best["pred"]) == {2}


def test_decision_grid_without_checkpoints_is_refused(tmp_path):
    d = _write_train_dir(tmp_path / "train/toy/cpu",
                         _metrics("toy", "cpu", 4, 1, 1000, [0.5], [1.0]))
    # As an older training stage wrote it: no epochs column.
    _constant_grid(4, 1000, 1, 0).drop(columns="epochs").to_parquet(d / "decision.parquet")
    with pytest.raises(ContractError, match="decision.parquet: column 'epochs' missing .*"
                                            "--forcerun .*decision.parquet"):
        build_tables([], [d], [])


def test_epoch_time_by_shape_is_one_row_per_dataset_and_shape(hand_made):
    e = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])["epoch_time"]
    loop = e[e["device"] == "cpu"].assign(method="loop", n_members=1, time_per_epoch_s=4e-3,
                                          time_per_member_epoch_s=4e-3)
    wide = epoch_time_by_shape(pd.concat([e, loop], ignore_index=True))
    assert len(wide) == 1
    row = wide.iloc[0]
    assert (row["dataset"], row["width"], row["depth"], row["n_members"]) == ("toy", 4, 1, 4)
    assert row["cpu_ensemble_time_per_epoch_s"] == pytest.approx(1e-3)
    assert row["cpu_ensemble_time_per_member_epoch_s"] == pytest.approx(2.5e-4)
    assert row["cpu_loop_time_per_epoch_s"] == pytest.approx(4e-3)
    assert (row["cpu_status"], row["cpu_reason"]) == ("ok", "")
    assert (row["cuda_status"], row["cuda_reason"]) == ("unavailable", CUDA_REASON)
    assert math.isnan(row["cuda_ensemble_time_per_epoch_s"])
    assert math.isnan(row["cuda_loop_time_per_epoch_s"])


def test_data_points_from_the_real_data_module(tmp_path):
    inputs = write_inputs(tmp_path, cuda=False)
    cfg = {"datasets": {"toy": inputs.train_cfg["datasets"]["toy"]}}
    p = build_tables([], [], [], train_cfg=cfg)["data_points"]
    # The lesson's nine training and three test points.
    assert p.groupby("split").size().to_dict() == {"test": 3, "train": 9}
    assert sorted(p[p["split"] == "test"]["label"]) == [0, 1, 2]


def test_write_and_load_round_trip(tmp_path, hand_made):
    tables = build_tables(hand_made["matmul"], hand_made["train"], hand_made["machine"])
    assert set(tables) == set(TABLE_NAMES)
    written = write_tables(tables, tmp_path / "tables")
    assert {p.name for p in written} == {f"{n}.{ext}" for n in tables
                                         for ext in ("parquet", "csv")}
    back = load_tables(tmp_path / "tables")
    pd.testing.assert_frame_equal(back["train_summary"], tables["train_summary"])
    csv = pd.read_csv(tmp_path / "tables" / "matmul.csv")
    assert list(csv.columns) == list(tables["matmul"].columns)
    assert not list((tmp_path / "tables").glob(".*tmp"))  # no temp files left behind


def test_t_interval_half_width_matches_scipy_stats():
    """The 95 % half-width uses Student's t quantile, as scipy.stats.t.ppf gives it."""
    from scipy import stats

    from mlpbench.tables import _t_half_width

    std = pd.Series([1.0, 2.0, 0.5, 3.0])
    n = pd.Series([1, 2, 5, 16])
    got = _t_half_width(std, n)
    assert np.isnan(got.iloc[0])  # one value: no interval
    want = stats.t.ppf(0.975, n.iloc[1:] - 1) * std.iloc[1:] / np.sqrt(n.iloc[1:])
    assert np.allclose(got.iloc[1:], want, rtol=1e-12)
