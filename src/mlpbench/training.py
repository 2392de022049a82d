"""The lesson's training loop, and one training job: one dataset on one device, every shape.

``run_training_job`` returns the tidy tables of ``results/train/{dataset}/{device}/``; their
columns, types and units are declared in :data:`mlpbench.contract.TRAIN` (write each with
``mlpbench.contract.write(df, path, TRAIN[name])``). Conventions the tables follow:

* ``losses.epoch`` runs 1..E; its loss is the one computed *before* that epoch's step, as the
  lesson's ``loss_history`` holds (with mini-batches: the sample-weighted mean of the epoch's
  batch losses). After a member diverges its later losses are NaN.
* ``metrics``/``predictions`` at checkpoint ``epochs = e`` describe the model after e steps;
  ``metrics.loss`` is its full-batch training loss. A member that diverged at or before e gets
  status "diverged", NaN numbers and no predictions; earlier checkpoints stay "ok".
* ``gradnorms``: Frobenius norm of each Linear weight's full-batch gradient, at initialisation
  and at the final checkpoint (NaN for a diverged member).
* ``decision``: logits on a resolution x resolution grid over the data's range +- margin, at
  every checkpoint ``epochs`` of each shape, so a figure can show any network at exactly the
  epoch count its metrics describe (members diverged by then left out). Rows are ordered by
  checkpoint, then member, then grid point (x0 fastest).
* ``timings``: time per epoch of each shape's ensemble and, for comparison, of the lesson's
  loop for one member, each from ``TIMING_WINDOWS`` timed windows of ``WINDOW_EPOCHS`` epochs
  (fewer when the shape trains fewer epochs), after a short untimed warm-up; CUDA is
  synchronised around every window. The row keeps the median over windows and their spread
  (min, max, interquartile range; NaN from a single window). The windows are separate short
  runs from the shape's initial weights, after the training that gives the other tables.
* ``environment``: what was in effect while the job measured (threads, thread pools, thread
  variables, affinity, load, clocks; see :mod:`mlpbench.environment`), read before the first
  and after the last timed window.

Timings and the environment are the only columns that differ between reruns; on the CPU
every other table is identical from run to run.

Importing this module imports neither torch nor scikit-learn: a "cuda" job on a machine
without CUDA writes its "unavailable" rows without them (the data set's number of classes comes
from the registry, :func:`mlpbench.data.n_classes`); the functions that train import torch.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mlpbench.config import machine_id
from mlpbench.contract import TRAIN, pandas_dtypes, to_arrow
from mlpbench.devices import cuda_unavailable_reason, sync
from mlpbench.environment import environment_rows, snapshot
from . import data as datamod
from .grid import ShapePlan, plan_shapes, resolve_seeds

if TYPE_CHECKING:
    import torch
    from torch import nn

    from . import ensemble as ens

__all__ = [
    "COLUMNS",
    "TIMING_WINDOWS",
    "WINDOW_EPOCHS",
    "lesson_loop",
    "run_training_job",
    "window_plan",
    "window_stats",
]

# Each timing is TIMING_WINDOWS windows of WINDOW_EPOCHS epochs. Five windows give a median
# that one disturbed window (another process, a clock change) cannot move, and a min-max range
# and IQR that show how far the machine let the timing wander. 5 x 20 epochs keeps the run
# time of the default pipeline where it was: the loop's single 200-epoch timing became 100
# epochs, which pays for the ensemble's 100 new timed epochs (on a 2-core laptop an ensemble
# epoch costs about what a loop epoch does). The shortest windows (toy, width 4) still last
# milliseconds, far above the clock's resolution.
TIMING_WINDOWS = 5
WINDOW_EPOCHS = 20
WARMUP_EPOCHS = 3  # untimed, so one-off costs (allocator, BLAS/cuBLAS set-up) stay out of timings

COLUMNS: dict[str, list[str]] = {name: table.column_names for name, table in TRAIN.items()}
# decision: + logit_0 .. logit_{C-1} (the pattern declared in mlpbench.contract)


def lesson_loop(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    n_epochs: int = 1000,
    lr: float = 0.001,
    momentum: float = 0.0,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """The lesson's loop: zero_grad -> CrossEntropyLoss(model(X), Y) -> backward -> SGD step.

    ``y_train`` holds one-hot float targets. Returns the loss of every epoch (before its step),
    float32. ``batch_size`` (default: the lesson's full batch) visits the data each epoch in the
    order ``torch.randperm(n, generator=generator)``; the epoch's loss is then the
    sample-weighted mean of its batch losses.
    """
    import torch
    from torch import nn

    loss_func = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    loss_history = []
    n = x_train.shape[0]
    if batch_size is None or batch_size >= n:
        for _ in range(n_epochs):
            opt.zero_grad()
            loss_value = loss_func(model(x_train), y_train)
            loss_value.backward()
            opt.step()
            loss_history.append(loss_value.detach().cpu().numpy())
    else:
        for _ in range(n_epochs):
            order = torch.randperm(n, generator=generator).to(x_train.device)
            total = torch.zeros((), device=x_train.device)
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                opt.zero_grad()
                loss_value = loss_func(model(x_train[idx]), y_train[idx])
                loss_value.backward()
                opt.step()
                total = total + loss_value.detach() * idx.shape[0]
            loss_history.append((total / n).cpu().numpy())
    return np.array(loss_history, dtype=np.float32)


def _frame(name: str, columns: Mapping[str, Any], extra: list[str] = ()) -> pd.DataFrame:
    dtypes = pandas_dtypes(TRAIN[name], len(extra))
    order = [*COLUMNS[name], *extra]
    df = pd.DataFrame({c: columns[c] for c in order}, columns=order)
    return df.astype({c: dtypes[c] for c in order})


def _environment_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """The environment rows with the contract's columns and types (nulls stay nulls)."""
    table = TRAIN["environment"]
    return to_arrow(pd.DataFrame(rows, columns=table.column_names), table).to_pandas()


def _empty(name: str, n_classes: int = 0) -> pd.DataFrame:
    count = n_classes if name == "decision" else 0
    return pd.DataFrame({c: pd.Series(dtype=dt)
                         for c, dt in pandas_dtypes(TRAIN[name], count).items()})


def _unavailable_tables(
    dataset: str, device: str, plan: list[ShapePlan], n_seeds: int, threads: int, reason: str,
    n_classes: int,
) -> dict[str, pd.DataFrame]:
    """One metrics and one timings row per shape, saying why nothing ran; other tables empty."""
    k = len(plan)
    metrics = _frame("metrics", {
        "dataset": [dataset] * k, "device": [device] * k,
        "width": [p.width for p in plan], "depth": [p.depth for p in plan],
        "lr": [p.lrs[0] if len(p.lrs) == 1 else np.nan for p in plan],
        "seed": pd.array([pd.NA] * k, dtype="Int64"), "epochs": [p.max_epochs for p in plan],
        "loss": np.nan, "train_acc": np.nan, "test_acc": np.nan,
        "status": ["unavailable"] * k, "reason": [reason] * k,
    })
    timings = _frame("timings", {
        "host": [machine_id(None)] * k, "dataset": [dataset] * k, "device": [device] * k,
        "width": [p.width for p in plan], "depth": [p.depth for p in plan],
        "n_members": [n_seeds * len(p.lrs) for p in plan], "n_windows": [0] * k,
        "epochs_per_window": [0] * k, "epochs_trained": [0] * k,
        "threads": [threads] * k, "method": ["ensemble"] * k, "time_s": np.nan,
        "time_per_epoch_s": np.nan, "time_per_epoch_s_min": np.nan,
        "time_per_epoch_s_max": np.nan, "time_per_epoch_s_iqr": np.nan,
        "time_per_member_epoch_s": np.nan,
        "status": ["unavailable"] * k, "reason": [reason] * k,
    })
    tables = {name: _empty(name, n_classes) for name in COLUMNS}
    tables["metrics"], tables["timings"] = metrics, timings
    return tables


def window_plan(max_epochs: int, windows: int = TIMING_WINDOWS,
                epochs: int = WINDOW_EPOCHS) -> tuple[int, int]:
    """(number of windows, epochs per window) for a shape trained ``max_epochs`` epochs:
    ``windows`` windows of ``epochs`` epochs, shortened to ``max_epochs // windows`` (at least
    1) when the shape trains fewer epochs than that in all."""
    if max_epochs < 1 or windows < 1 or epochs < 1:
        raise ValueError(f"window_plan: got max_epochs={max_epochs}, windows={windows}, "
                         f"epochs={epochs}; allowed: integers >= 1")
    return windows, max(1, min(epochs, max_epochs // windows))


def window_stats(window_times_s: list[float], epochs_per_window: int) -> dict[str, float]:
    """Time per epoch from the windows' wall times (s): median, min, max and interquartile
    range (numpy's linear quantiles), and the total time. The spread is NaN from one window."""
    per_epoch = np.asarray(window_times_s, dtype=float) / epochs_per_window
    if per_epoch.size == 0:
        raise ValueError("window_stats: no windows")
    several = per_epoch.size >= 2
    q25, q75 = np.percentile(per_epoch, [25, 75])
    return {
        "time_s": float(np.sum(window_times_s)),
        "time_per_epoch_s": float(np.median(per_epoch)),
        "time_per_epoch_s_min": float(per_epoch.min()) if several else np.nan,
        "time_per_epoch_s_max": float(per_epoch.max()) if several else np.nan,
        "time_per_epoch_s_iqr": float(q75 - q25) if several else np.nan,
    }


def _time_loop(
    arch: ens.Architecture, ds: datamod.Dataset, seed: int, lr: float, windows: int,
    epochs: int, momentum: float, batch_size: int | None, device: torch.device,
) -> list[float]:
    """Wall time of each of ``windows`` runs of the lesson's loop for one member (``epochs``
    epochs each, from the seed's initial weights), after a short untimed warm-up."""
    import torch

    y = datamod.one_hot(ds.y_train, ds.n_classes)

    def run(n_epochs: int) -> float:
        torch.manual_seed(seed)
        net = arch.module().to(device)
        gen = torch.Generator().manual_seed(seed)
        sync(device)
        t0 = time.perf_counter()
        lesson_loop(net, ds.x_train, y, n_epochs, lr, momentum, batch_size, gen)
        sync(device)
        return time.perf_counter() - t0

    with torch.random.fork_rng(devices=[]):  # seeding here must not change the caller's RNG
        run(min(WARMUP_EPOCHS, epochs))
        return [run(epochs) for _ in range(windows)]


def _decision_points(ds: datamod.Dataset, resolution: int, margin: float) -> torch.Tensor:
    """(resolution**2, 2) grid over the train+test range +- margin; x0 varies fastest."""
    import torch

    x = torch.cat([ds.x_train, ds.x_test]).cpu()
    lo, hi = x.min(0).values - margin, x.max(0).values + margin
    g1, g0 = torch.meshgrid(
        torch.linspace(lo[1], hi[1], resolution), torch.linspace(lo[0], hi[0], resolution), indexing="ij"
    )
    return torch.stack([g0.reshape(-1), g1.reshape(-1)], 1)


class _Members:
    """The ensemble's members (learning-rate major, then seeds) as table columns."""

    def __init__(self, lrs: tuple[float, ...], seeds: list[int]):
        self.lr = np.repeat(np.array(lrs, dtype=np.float64), len(seeds))
        self.seed = np.tile(np.array(seeds, dtype=np.int64), len(lrs))

    def __len__(self) -> int:
        return len(self.lr)

    def rows(self, keep: np.ndarray, each: int) -> dict[str, np.ndarray]:
        """lr/seed columns for the kept members, each repeated ``each`` times."""
        return {"lr": np.repeat(self.lr[keep], each), "seed": np.repeat(self.seed[keep], each)}


def _loss_columns(run: ens.EnsembleRun, members: _Members) -> dict[str, Any]:
    losses = run.losses.double().cpu().numpy()  # (epochs, M)
    e, m = losses.shape
    return {
        "lr": np.tile(members.lr, e), "seed": np.tile(members.seed, e),
        "epoch": np.repeat(np.arange(1, e + 1), m), "loss": losses.reshape(-1),
    }


def _checkpoint_columns(
    arch: ens.Architecture, ds: datamod.Dataset, run: ens.EnsembleRun, members: _Members,
    checkpoints: tuple[int, ...], diverged_at: np.ndarray,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """metrics and predictions columns at every checkpoint."""
    from . import ensemble as ens

    y_onehot = datamod.one_hot(ds.y_train, ds.n_classes)
    y_test = ds.y_test.cpu().numpy()
    n_test, m = len(y_test), len(members)
    met: dict[str, list[np.ndarray]] = {}
    pred: dict[str, list[np.ndarray]] = {}

    def add(table: dict[str, list[np.ndarray]], **columns: np.ndarray) -> None:
        for key, value in columns.items():
            table.setdefault(key, []).append(value)

    for cp in checkpoints:
        params = run.snapshots[cp]
        logits = ens.forward(arch, params, ds.x_train)
        test_logits = ens.forward(arch, params, ds.x_test)
        loss = ens.member_losses(logits, y_onehot).double().cpu().numpy()
        train_acc = datamod.accuracy(logits, ds.y_train).double().cpu().numpy()
        test_acc = datamod.accuracy(test_logits, ds.y_test).double().cpu().numpy()
        test_pred = test_logits.argmax(-1).cpu().numpy()
        bad = (diverged_at > 0) & (diverged_at <= cp)
        keep = ~bad
        reason = [f"loss became non-finite at epoch {d}" if b else "" for b, d in zip(bad, diverged_at)]
        add(
            met, **members.rows(np.ones(m, bool), 1), epochs=np.full(m, cp),
            loss=np.where(bad, np.nan, loss), train_acc=np.where(bad, np.nan, train_acc),
            test_acc=np.where(bad, np.nan, test_acc), status=np.where(bad, "diverged", "ok"),
            reason=np.array(reason, dtype=object),
        )
        k = int(keep.sum())
        add(
            pred, **members.rows(keep, n_test), epochs=np.full(k * n_test, cp),
            point=np.tile(np.arange(n_test), k), label=np.tile(y_test, k), pred=test_pred[keep].reshape(-1),
        )
    return (
        {key: np.concatenate(v) for key, v in met.items()},
        {key: np.concatenate(v) for key, v in pred.items()},
    )


def _shared_checkpoint(plan: list[ShapePlan], dataset_cfg: Mapping[str, Any]) -> int:
    """The epoch count at which every shape is evaluated: the baseline's if all shapes have it
    (always in a sweep), else the smallest shared one (a grid), else the shortest training."""
    shared = set.intersection(*(set(shape.checkpoints) for shape in plan))
    baseline = int(dataset_cfg.get("baseline", {}).get("epochs", 0))
    if baseline in shared:
        return baseline
    return min(shared) if shared else min(shape.max_epochs for shape in plan)


def _gradnorm_columns(
    arch: ens.Architecture, ds: datamod.Dataset, stages: dict[str, torch.Tensor], members: _Members,
    diverged_at: np.ndarray,
) -> dict[str, Any]:
    from . import ensemble as ens

    y_onehot = datamod.one_hot(ds.y_train, ds.n_classes)
    n_layers, m = arch.depth + 1, len(members)
    norms = []
    for stage, (epochs, params) in stages.items():
        g = ens.weight_grad_norms(arch, params, ds.x_train, y_onehot).double().cpu().numpy()
        if stage == "final":
            g[(diverged_at > 0) & (diverged_at <= epochs)] = np.nan
        norms.append(g.reshape(-1))
    every = np.ones(m, bool)
    return {
        "lr": np.tile(members.rows(every, n_layers)["lr"], len(stages)),
        "seed": np.tile(members.rows(every, n_layers)["seed"], len(stages)),
        "stage": np.repeat(list(stages), m * n_layers),
        "epochs": np.repeat([epochs for epochs, _ in stages.values()], m * n_layers),
        "layer": np.tile(np.arange(n_layers), len(stages) * m),
        "grad_norm": np.concatenate(norms),
    }


def _decision_columns(
    arch: ens.Architecture, run: ens.EnsembleRun, members: _Members, checkpoints: tuple[int, ...],
    diverged_at: np.ndarray, grid_points: torch.Tensor,
) -> dict[str, Any]:
    """Logits on the grid at every checkpoint, for the members not yet diverged there."""
    import torch

    from . import ensemble as ens

    pts = grid_points.numpy()
    parts: list[dict[str, np.ndarray]] = []
    for cp in checkpoints:
        params = run.snapshots[cp]
        keep = ~((diverged_at > 0) & (diverged_at <= cp))
        logits = ens.forward(arch, params[torch.from_numpy(keep).to(params.device)],
                             grid_points.to(params.device))
        logits = logits.float().cpu().numpy()  # (kept members, points, classes)
        k, p = logits.shape[:2]
        parts.append({
            **members.rows(keep, p), "epochs": np.full(k * p, cp, dtype=np.int64),
            "x0": np.tile(pts[:, 0], k), "x1": np.tile(pts[:, 1], k),
            **{f"logit_{c}": logits[:, :, c].reshape(-1) for c in range(arch.n_out)},
        })
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _train_shape(
    ds: datamod.Dataset, shape: ShapePlan, seeds: list[int], momentum: float,
    batch_size: int | None, device: torch.device, grid_points: torch.Tensor, grad_epochs: int,
) -> tuple[dict[str, dict[str, Any]], tuple[int, int], list[float], list[float]]:
    """Train one shape's ensemble; returns the columns of each table, the window plan
    (windows, epochs per window) and the windows' wall times of the ensemble and the loop."""
    from . import ensemble as ens

    arch = ens.Architecture(ds.n_features, shape.width, shape.depth, ds.n_classes)
    members = _Members(shape.lrs, seeds)
    params0 = ens.init_params(arch, members.seed.tolist(), device)

    def train(epochs: int, checkpoints: tuple[int, ...]) -> ens.EnsembleRun:
        return ens.train_ensemble(
            arch, params0, ds.x_train, ds.y_train, members.lr.tolist(), epochs, checkpoints,
            momentum=momentum, batch_size=batch_size, shuffle_seeds=members.seed.tolist(),
        )

    run = train(shape.max_epochs, shape.checkpoints)
    # Timing windows: separate short runs from params0, after the run above has warmed up.
    windows, window_epochs = window_plan(shape.max_epochs)
    train(min(WARMUP_EPOCHS, window_epochs), ())
    ens_times = [train(window_epochs, ()).time_s for _ in range(windows)]
    loop_times = _time_loop(arch, ds, seeds[0], shape.lrs[0], windows, window_epochs, momentum,
                            batch_size, device)

    diverged_at = run.diverged_at.cpu().numpy()
    final_epochs = grad_epochs if grad_epochs in shape.checkpoints else shape.max_epochs
    metrics, predictions = _checkpoint_columns(arch, ds, run, members, shape.checkpoints, diverged_at)
    cols = {
        "losses": _loss_columns(run, members),
        "metrics": metrics,
        "predictions": predictions,
        "gradnorms": _gradnorm_columns(
            arch, ds, {"init": (0, params0), "final": (final_epochs, run.snapshots[final_epochs])},
            members, diverged_at),
        "decision": _decision_columns(arch, run, members, shape.checkpoints, diverged_at, grid_points),
    }
    ids = {"width": shape.width, "depth": shape.depth}
    return ({name: {**ids, **c} for name, c in cols.items()}, (windows, window_epochs),
            ens_times, loop_times)


def _timing_row(
    host: str, dataset: str, device: str, shape: ShapePlan, method: str, n_members: int,
    window_times_s: list[float], epochs_per_window: int, *, threads: int,
) -> dict[str, Any]:
    stats = window_stats(window_times_s, epochs_per_window)
    return {
        "host": host, "dataset": dataset, "device": device, "width": shape.width, "depth": shape.depth,
        "n_members": n_members, "n_windows": len(window_times_s),
        "epochs_per_window": epochs_per_window,
        "epochs_trained": len(window_times_s) * epochs_per_window, "threads": threads,
        "method": method, **stats,
        "time_per_member_epoch_s": stats["time_per_epoch_s"] / n_members, "status": "ok",
        "reason": "",
    }


def run_training_job(
    dataset_name: str,
    dataset_cfg: Mapping[str, Any],
    device: str,
    threads: int,
    decision_grid: Mapping[str, Any],
) -> dict[str, pd.DataFrame]:
    """Train every shape the dataset's config plans, on one device; return the job's tables.

    Keys: losses, metrics, predictions, timings, gradnorms, decision, environment (the file
    stems of ``results/train/{dataset}/{device}/``). Without CUDA a "cuda" job returns
    "unavailable" rows instead of raising, before building the data set and without importing
    torch where no GPU driver exists (:func:`mlpbench.devices.cuda_unavailable_reason`); its
    environment is still read, as it is. torch's intra-op threads are set to ``threads`` for the
    job and restored afterwards; the environment is read under that setting, before the first
    shape and after the last.
    """
    resolution, margin = decision_grid["resolution"], decision_grid["margin"]
    plan = plan_shapes(dataset_cfg)
    seeds = resolve_seeds(dataset_cfg["seeds"])
    momentum = float(dataset_cfg.get("momentum") or 0.0)
    batch_size = dataset_cfg.get("batch_size")

    host = machine_id(None)
    gpu = 0 if device == "cuda" else None
    reason = cuda_unavailable_reason() if device == "cuda" else None
    if reason is not None:
        tables = _unavailable_tables(dataset_name, device, plan, len(seeds), threads, reason,
                                     datamod.n_classes(dataset_name, dataset_cfg))
        now = snapshot(cuda_device=gpu)
        tables["environment"] = _environment_frame(environment_rows(
            now, now, host=host, stage="train", device=device, threads=threads,
            dataset=dataset_name))
        return tables

    import torch

    ds_cpu = datamod.load(dataset_name, dataset_cfg)
    logit_cols = [f"logit_{c}" for c in range(ds_cpu.n_classes)]
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in COLUMNS
                                             if name not in ("timings", "environment")}
    timing_rows = []
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        before = snapshot(cuda_device=gpu)
        dev = torch.device(device)
        ds = ds_cpu.to(dev)
        grid_points = _decision_points(ds_cpu, resolution, margin)
        grad_epochs = _shared_checkpoint(plan, dataset_cfg)
        for shape in plan:
            cols, (windows, window_epochs), ens_times, loop_times = _train_shape(
                ds, shape, seeds, momentum, batch_size, dev, grid_points, grad_epochs)
            for name, columns in cols.items():
                columns = {"dataset": dataset_name, "device": device, **columns}
                frames[name].append(_frame(name, columns, logit_cols if name == "decision" else []))
            n_members = len(seeds) * len(shape.lrs)
            row = functools.partial(_timing_row, host, dataset_name, device, shape, threads=threads)
            timing_rows += [
                row("ensemble", n_members, ens_times, window_epochs),
                row("loop", 1, loop_times, window_epochs),
            ]
        after = snapshot(cuda_device=gpu)
    finally:
        torch.set_num_threads(previous_threads)

    tables = {name: pd.concat(parts, ignore_index=True) for name, parts in frames.items()}
    tables["timings"] = _frame("timings", pd.DataFrame(timing_rows).to_dict("list"))
    tables["environment"] = _environment_frame(environment_rows(
        before, after, host=host, stage="train", device=device, threads=threads,
        dataset=dataset_name))
    return tables
