import copy

import numpy as np
import pandas as pd
import pytest
import torch

from mlpbench import data
from mlpbench.contract import TRAIN, write
from mlpbench.devices import cuda_unavailable_reason
from mlpbench.grid import ShapePlan, plan_shapes, resolve_seeds
from mlpbench.models import MLP
from mlpbench.training import (
    COLUMNS,
    TIMING_WINDOWS,
    WINDOW_EPOCHS,
    lesson_loop,
    run_training_job,
    window_plan,
    window_stats,
)

DEFAULT_TOY = {
    "mode": "sweep",
    "baseline": {"epochs": 1000, "width": 4, "depth": 1, "lr": 0.001},
    "epochs": [1000, 2000, 5000, 10000],
    "width": [4, 8, 16, 32, 64],
    "depth": [1, 2, 3, 4, 6],
    "lr": [0.001],
    "seeds": 16,
    "momentum": 0.0,
    "batch_size": None,
}

# Small enough for a unit test, still a sweep with an epochs axis, a width and a depth variant.
SMALL = {
    "mode": "sweep",
    "baseline": {"epochs": 20, "width": 4, "depth": 1, "lr": 0.05},
    "epochs": [10, 20, 30],
    "width": [4, 8],
    "depth": [1, 2],
    "lr": [0.05, 0.1],
    "seeds": 3,
}
GRID = {"resolution": 5, "margin": 1.0}


def test_lesson_loop_records_the_loss_before_each_step():
    ds = data.toy()
    torch.manual_seed(0)
    net = MLP(2, 4, 1, 3)
    y = data.one_hot(ds.y_train, 3)
    initial = torch.nn.CrossEntropyLoss()(net(ds.x_train), y).item()
    losses = lesson_loop(net, ds.x_train, y, n_epochs=200, lr=0.1)
    assert losses.dtype == np.float32 and losses.shape == (200,)
    assert losses[0] == pytest.approx(initial)
    assert losses[-1] < losses[0]


def test_plan_of_the_default_toy_sweep():
    plan = plan_shapes(DEFAULT_TOY)
    shapes = [(p.width, p.depth) for p in plan]
    assert shapes == [(4, 1), (4, 2), (4, 3), (4, 4), (4, 6), (8, 1), (16, 1), (32, 1), (64, 1)]
    baseline = plan[0]
    assert baseline == ShapePlan(4, 1, 10000, (1000, 2000, 5000, 10000), (0.001,))
    for p in plan[1:]:
        assert (p.max_epochs, p.checkpoints, p.lrs) == (1000, (1000,), (0.001,))


def test_sweep_varies_lr_only_on_the_baseline_shape_and_grid_is_the_product():
    cfg = dict(SMALL, baseline={"epochs": 20, "width": 16, "depth": 3, "lr": 0.05})
    plan = {(p.width, p.depth): p for p in plan_shapes(cfg)}
    assert set(plan) == {(16, 3), (4, 3), (8, 3), (16, 1), (16, 2)}
    assert plan[(16, 3)].lrs == (0.05, 0.1) and plan[(16, 3)].checkpoints == (10, 20, 30)
    assert plan[(4, 3)].lrs == (0.05,) and plan[(4, 3)].checkpoints == (20,)
    grid = plan_shapes(dict(cfg, mode="grid"))
    assert [(p.width, p.depth) for p in grid] == [(4, 1), (4, 2), (8, 1), (8, 2)]
    assert all(p.checkpoints == (10, 20, 30) and p.lrs == (0.05, 0.1) and p.max_epochs == 30 for p in grid)


def test_seeds_count_or_list():
    assert resolve_seeds(3) == [0, 1, 2]
    assert resolve_seeds([5, 1]) == [5, 1]


@pytest.fixture(scope="module")
def toy_job():
    return run_training_job("toy", SMALL, "cpu", 1, GRID)


def test_job_tables_have_the_contract_columns(toy_job):
    assert set(toy_job) == {"losses", "metrics", "predictions", "timings", "environment",
                            "gradnorms", "decision"}
    for name, df in toy_job.items():
        extra = ["logit_0", "logit_1", "logit_2"] if name == "decision" else []
        assert list(df.columns) == COLUMNS[name] + extra, name
        assert len(df) > 0, name
    assert toy_job["losses"]["loss"].dtype == np.float64
    assert toy_job["decision"]["logit_0"].dtype == np.float32
    assert (toy_job["metrics"]["status"] == "ok").all()


def test_job_rows_follow_the_plan(toy_job):
    plan = plan_shapes(SMALL)
    losses, metrics = toy_job["losses"], toy_job["metrics"]
    n_seeds, n_test, n_grid = 3, 3, GRID["resolution"] ** 2
    assert len(losses) == sum(p.max_epochs * len(p.lrs) * n_seeds for p in plan)
    assert len(metrics) == sum(len(p.checkpoints) * len(p.lrs) * n_seeds for p in plan)
    assert len(toy_job["predictions"]) == len(metrics) * n_test
    assert len(toy_job["gradnorms"]) == sum(2 * (p.depth + 1) * len(p.lrs) * n_seeds for p in plan)
    # Decision logits at every checkpoint of every shape, one block per member and checkpoint.
    assert len(toy_job["decision"]) == len(metrics) * n_grid
    base = metrics[(metrics.width == 4) & (metrics.depth == 1)]
    assert sorted(base.epochs.unique()) == [10, 20, 30] and sorted(base.lr.unique()) == [0.05, 0.1]
    assert sorted(metrics[metrics.width == 8].epochs.unique()) == [20]
    timings = toy_job["timings"]
    assert len(timings) == 2 * len(plan) and set(timings.method) == {"ensemble", "loop"}
    assert (timings.threads == 1).all() and (timings.time_s > 0).all()
    ens_rows = timings[timings.method == "ensemble"]
    np.testing.assert_allclose(ens_rows.time_per_member_epoch_s,
                               ens_rows.time_per_epoch_s / ens_rows.n_members)
    # Several windows per timing: a median inside its windows' range, and a spread.
    assert (timings.n_windows == TIMING_WINDOWS).all() and TIMING_WINDOWS >= 2
    assert (timings.epochs_trained == timings.n_windows * timings.epochs_per_window).all()
    assert (timings.time_per_epoch_s_min <= timings.time_per_epoch_s).all()
    assert (timings.time_per_epoch_s <= timings.time_per_epoch_s_max).all()
    assert (timings.time_per_epoch_s_iqr >= 0).all()
    # Windows never run longer than the shape trains (width 8 trains 20 epochs: 5 x 4).
    for p in plan:
        rows = timings[(timings.width == p.width) & (timings.depth == p.depth)]
        assert (rows.epochs_per_window == window_plan(p.max_epochs)[1]).all()


def test_window_plan_and_stats():
    assert window_plan(10000) == (TIMING_WINDOWS, WINDOW_EPOCHS)
    assert window_plan(20) == (5, 4) and window_plan(3) == (5, 1)
    with pytest.raises(ValueError, match="max_epochs=0"):
        window_plan(0)
    stats = window_stats([0.5, 0.1, 0.2, 0.3, 0.4], 10)
    assert stats["time_s"] == pytest.approx(1.5)
    assert stats["time_per_epoch_s"] == pytest.approx(0.03)
    assert (stats["time_per_epoch_s_min"], stats["time_per_epoch_s_max"]) == \
        pytest.approx((0.01, 0.05))
    assert stats["time_per_epoch_s_iqr"] == pytest.approx(0.04 - 0.02)
    one = window_stats([0.2], 10)  # a single window has a median but no spread
    assert one["time_per_epoch_s"] == pytest.approx(0.02)
    assert all(np.isnan(one[k]) for k in ("time_per_epoch_s_min", "time_per_epoch_s_max",
                                          "time_per_epoch_s_iqr"))


def test_job_records_its_environment(toy_job):
    env = toy_job["environment"]
    assert list(env.moment) == ["before", "after"]
    assert set(env.stage) == {"train"} and set(env.dataset) == {"toy"}
    assert (env.threads == 1).all() and (env.torch_num_threads == 1).all()
    assert env.time_utc.iloc[0] <= env.time_utc.iloc[1]


def test_job_numbers_are_consistent(toy_job):
    losses, metrics, preds = toy_job["losses"], toy_job["metrics"], toy_job["predictions"]
    key = ["width", "depth", "lr", "seed"]
    # The checkpoint's loss is the loss the next epoch starts from.
    nxt = losses.assign(epochs=losses.epoch - 1).rename(columns={"loss": "next_loss"})
    joined = metrics.merge(nxt[[*key, "epochs", "next_loss"]], on=[*key, "epochs"])
    assert len(joined) > 0
    np.testing.assert_allclose(joined.loss, joined.next_loss, rtol=1e-6)
    # Test accuracy is the share of right predictions.
    acc = preds.assign(right=preds.label == preds.pred).groupby([*key, "epochs"]).right.mean()
    merged = metrics.set_index([*key, "epochs"]).test_acc
    np.testing.assert_allclose(merged.loc[acc.index], acc)
    assert set(preds.label) == {0, 1, 2} and preds.point.max() == 2
    grads = toy_job["gradnorms"]
    assert set(grads.stage) == {"init", "final"} and (grads.grad_norm > 0).all()
    assert grads[grads.depth == 2].layer.max() == 2
    # Every shape's "final" norms come from the same epoch count, so depths compare fairly.
    assert set(grads[grads.stage == "init"].epochs) == {0}
    assert grads[grads.stage == "final"].epochs.nunique() == 1


def test_decision_grid_is_stored_at_every_checkpoint(toy_job):
    dec, metrics = toy_job["decision"], toy_job["metrics"]
    key = ["width", "depth", "lr", "seed", "epochs"]
    blocks = dec.groupby(key).size()
    assert set(blocks) == {GRID["resolution"] ** 2}
    assert sorted(blocks.index) == sorted(map(tuple, metrics[key].itertuples(index=False)))
    base = dec[(dec.width == 4) & (dec.depth == 1) & (dec.lr == 0.05) & (dec.seed == 1)]
    assert sorted(base.epochs.unique()) == [10, 20, 30]
    # The grid at checkpoint e is the lesson's model after e epochs, not the longest run's.
    ds = data.toy()
    for epochs in (10, 30):
        grid = base[base.epochs == epochs]
        torch.manual_seed(1)
        net = MLP(2, 4, 1, 3)
        lesson_loop(net, ds.x_train, data.one_hot(ds.y_train, 3), epochs, 0.05)
        with torch.no_grad():
            ref = net(torch.tensor(grid[["x0", "x1"]].to_numpy())).numpy()
        got = grid[["logit_0", "logit_1", "logit_2"]].to_numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)
    early, late = (base[base.epochs == e][["logit_0"]].to_numpy() for e in (10, 30))
    assert not np.allclose(early, late)


def test_job_members_match_the_lesson_loop(toy_job):
    losses = toy_job["losses"]
    ds = data.toy()
    torch.manual_seed(2)
    ref = lesson_loop(MLP(2, 8, 1, 3), ds.x_train, data.one_hot(ds.y_train, 3), 20, 0.05)
    got = losses[(losses.width == 8) & (losses.seed == 2)].sort_values("epoch").loss.to_numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


def test_job_reruns_are_identical_bytes(toy_job, tmp_path):
    again = run_training_job("toy", SMALL, "cpu", 1, GRID)
    for name in COLUMNS:
        if name in ("timings", "environment"):  # measured, so they differ between runs
            continue
        pd.testing.assert_frame_equal(toy_job[name], again[name])
        write(toy_job[name], tmp_path / f"a_{name}.parquet", TRAIN[name])
        write(again[name], tmp_path / f"b_{name}.parquet", TRAIN[name])
        assert (tmp_path / f"a_{name}.parquet").read_bytes() == (tmp_path / f"b_{name}.parquet").read_bytes()


def test_job_sets_and_restores_threads():
    before = torch.get_num_threads()
    cfg = dict(SMALL, mode="grid", width=[4], depth=[1], epochs=[5], lr=[0.1], seeds=2)
    tables = run_training_job("toy", cfg, "cpu", 2, GRID)
    assert (tables["timings"].threads == 2).all()
    assert torch.get_num_threads() == before


def test_job_records_divergence_without_crashing():
    cfg = dict(SMALL, mode="grid", width=[4], depth=[1], epochs=[5, 100], lr=[0.001, 100.0], seeds=3)
    tables = run_training_job("toy", cfg, "cpu", 1, GRID)
    m = tables["metrics"]
    late = m[m.epochs == 100]
    assert (late[late.lr == 100.0].status == "diverged").all()
    assert late[late.lr == 100.0].reason.str.contains("non-finite at epoch").all()
    assert late[late.lr == 100.0].test_acc.isna().all()
    assert (m[m.lr == 0.001].status == "ok").all() and m[m.lr == 0.001].test_acc.notna().all()
    assert (m[(m.lr == 100.0) & (m.epochs == 5)].status == "ok").all()  # not yet diverged at epoch 5
    preds = tables["predictions"]
    assert preds[(preds.lr == 100.0) & (preds.epochs == 100)].empty
    dec = tables["decision"]
    assert set(dec[dec.epochs == 100].lr) == {0.001}  # diverged members have no grid there
    assert set(dec[dec.epochs == 5].lr) == {0.001, 100.0}  # but do before they diverged
    final = tables["gradnorms"][tables["gradnorms"].stage == "final"]
    # Final norms are taken at the epoch count all shapes share; NaN only once a member diverged.
    at = m[(m.lr == 100.0) & (m.epochs == int(final.epochs.iloc[0]))]
    blown = final[final.lr == 100.0].grad_norm
    assert blown.isna().all() if (at.status == "diverged").all() else blown.notna().all()
    assert final[final.lr == 0.001].grad_norm.notna().all()


def test_cuda_unavailable_gives_rows_not_a_crash(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    tables = run_training_job("blobs", SMALL, "cuda", 1, GRID)
    plan = plan_shapes(SMALL)
    for name in ("metrics", "timings"):
        df = tables[name]
        assert list(df.columns) == COLUMNS[name]
        assert len(df) == len(plan) and (df.status == "unavailable").all()
        # the one reason mlpbench.devices gives here: no GPU driver, or torch's answer behind it
        assert (df.reason == cuda_unavailable_reason()).all()
        assert df.reason.str.startswith("CUDA unavailable: ").all()
        assert sorted(zip(df.width, df.depth)) == [(p.width, p.depth) for p in plan]
    assert tables["metrics"].seed.isna().all()
    assert list(tables["metrics"].epochs) == [p.max_epochs for p in plan]
    for name in ("losses", "predictions", "gradnorms", "decision"):
        assert tables[name].empty
    assert list(tables["decision"].columns) == COLUMNS["decision"] + [f"logit_{c}" for c in range(4)]


def test_blobs_job_with_mini_batches_and_momentum():
    cfg = dict(SMALL, mode="grid", width=[8], depth=[2], epochs=[3, 6], lr=[0.05], seeds=[4, 9],
               momentum=0.9, batch_size=64, data={"n_samples": 200})
    tables = run_training_job("blobs", cfg, "cpu", 1, GRID)
    assert (tables["metrics"].status == "ok").all()
    assert len(tables["losses"]) == 6 * 2 and sorted(tables["losses"].seed.unique()) == [4, 9]
    assert len(tables["predictions"]) == 2 * 2 * 80  # checkpoints x seeds x test points
    assert [c for c in tables["decision"].columns if c.startswith("logit_")] == [f"logit_{c}" for c in range(4)]
    ds = data.load("blobs", cfg)
    torch.manual_seed(9)
    gen = torch.Generator().manual_seed(9)
    ref = lesson_loop(MLP(2, 8, 2, 4), ds.x_train, data.one_hot(ds.y_train, 4), 6, 0.05, 0.9, 64, gen)
    got = tables["losses"].query("seed == 9").sort_values("epoch").loss.to_numpy()
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_job_does_not_modify_its_config():
    cfg = copy.deepcopy(SMALL)
    run_training_job("toy", dict(cfg, mode="grid", width=[4], depth=[1], epochs=[2], seeds=1), "cpu", 1, GRID)
    assert cfg == SMALL


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA unavailable")
def test_cuda_job_runs_and_agrees_with_cpu():
    cfg = dict(SMALL, mode="grid", width=[8], depth=[2], epochs=[50], lr=[0.05], seeds=4)
    cpu = run_training_job("blobs", cfg, "cpu", 1, GRID)
    gpu = run_training_job("blobs", cfg, "cuda", 1, GRID)
    assert (gpu["metrics"].status == "ok").all() and (gpu["timings"].status == "ok").all()
    np.testing.assert_allclose(gpu["losses"].loss, cpu["losses"].loss, rtol=0, atol=1e-4)
