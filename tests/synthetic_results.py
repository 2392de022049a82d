"""Small, contract-shaped stage outputs for tests of the tables, figures and report.

The numbers are made up but plausible (float64 slower than float32, losses that fall, one
seed that diverges), and every file is written with its declared schema
(``mlpbench.contract``), as the stages write them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlpbench import contract
from mlpbench.io import write_json_atomic
from mlpbench.matmul import COLUMNS, with_roofs  # the stage's own rule for the two roofs

HOST = "synthhost"
CUDA_REASON = "CUDA unavailable: torch.cuda.is_available() is False"
BASELINE = {"epochs": 20, "width": 4, "depth": 1, "lr": 0.1}
EPOCHS = [20, 40]
WIDTHS = [4, 8]
DEPTHS = [1, 2]
SEEDS = [0, 1, 2]
DATASETS = {"toy": 3, "blobs": 4}  # name -> number of classes
GRID = 8  # decision grid resolution
# The points of each synthetic dataset: class c sits around angle 2*pi*c/C.
N_TRAIN, N_TEST = 9, 6


@dataclass
class SyntheticInputs:
    matmul_files: list[Path]
    train_dirs: list[Path]
    machine_files: list[Path]
    train_cfg: dict[str, Any] = field(default_factory=dict)


def sweep_shapes() -> list[tuple[int, int, int]]:
    """(width, depth, epochs trained) of the sweep: the baseline shape trains to max(EPOCHS)."""
    shapes = [(BASELINE["width"], BASELINE["depth"], max(EPOCHS))]
    shapes += [(w, BASELINE["depth"], BASELINE["epochs"]) for w in WIDTHS if w != BASELINE["width"]]
    shapes += [(BASELINE["width"], d, BASELINE["epochs"]) for d in DEPTHS if d != BASELINE["depth"]]
    return shapes


def checkpoints(width: int, depth: int) -> list[int]:
    base = (width, depth) == (BASELINE["width"], BASELINE["depth"])
    return list(EPOCHS) if base else [BASELINE["epochs"]]


def points(name: str, n_classes: int) -> dict[str, np.ndarray]:
    """Deterministic 2-D points per class; what ``mlpbench.data.load`` would return."""
    rng = np.random.default_rng(len(name))
    out = {}
    for split, n in (("train", N_TRAIN), ("test", N_TEST)):
        y = np.arange(n) % n_classes
        angle = 2 * np.pi * y / n_classes
        x = np.c_[2 * np.cos(angle), 2 * np.sin(angle)] + rng.normal(0, 0.3, (n, 2))
        out[f"x_{split}"], out[f"y_{split}"] = x, y
    return out


def load_points(name: str, cfg: dict[str, Any]) -> dict[str, np.ndarray]:
    return points(name, DATASETS[name])


# --------------------------------------------------------------------------- matmul


def matmul_shapes() -> list[tuple[str, int, int, int]]:
    shapes = [("lesson", 1, 6400, 5000)]
    shapes += [("square", s, s, s) for s in (256, 512)]
    shapes += [("gemv", 1, k, n) for k, n in ((800, 625), (1600, 1250))]
    return shapes


STMT = {("numpy", "matmul"): "stmt `np.matmul(x, y, out=z)`",
        ("torch", "matmul"): "stmt `torch.matmul(x, y, out=z)`",
        ("torch", "copy"): "stmt `dst.copy_(src)`", ("torch", "h2d"): "stmt `y_dev.copy_(y_host)`",
        ("torch", "d2h"): "stmt `z_host.copy_(z_dev)`",
        ("torch", "h2d_pinned"): "stmt `y_dev.copy_(y_host)`",
        ("torch", "matmul_nosync"): "stmt `torch.matmul(x, y, out=z)`",
        ("torch", "matmul_tf32"): "stmt `torch.matmul(x, y, out=z)`"}


def _row(backend, device, dtype, case, kind, m, k, n, time_s, bandwidth_gb_s,
         status="ok", reason="", threads=2) -> dict[str, Any]:
    size = np.dtype(dtype).itemsize
    if kind.startswith("matmul"):
        flop, nbytes = 2.0 * m * k * n, float((m * k + k * n + m * n) * size)
    elif kind == "copy":
        flop, nbytes = 0.0, 2.0 * 64 * 2**20
    elif kind in ("h2d", "h2d_pinned"):
        flop, nbytes = 0.0, float(k * n * size)
    else:
        flop, nbytes = 0.0, float(m * n * size)
    ok = status == "ok"
    nan = float("nan")
    gb_s = nbytes / time_s / 1e9 if ok else nan
    return {
        "host": HOST, "backend": backend, "device": device, "dtype": dtype, "case": case,
        "kind": kind, "m": m, "k": k, "n": n, "threads": threads,
        "method": "torch.utils.benchmark.Timer.blocked_autorange(min_run_time=0.2); "
        + STMT.get((backend, kind), "stmt `x`") + "; 1 warm-up call before timing; "
        f"{threads} threads" + ("; cuda synchronised" if device == "cuda" else ""),
        "time_s_median": time_s if ok else nan,
        "time_s_iqr": time_s * 0.02 if ok else nan,
        "n_runs": 10 if ok else 0, "number_per_run": 5 if ok else 0,
        "attempts": 1 if ok else 0, "cpu_wait_threads": 0.01 if ok else nan,
        "noisy": False, "noise_reason": "",
        "flop": flop, "bytes": nbytes,
        "gflop_s": flop / time_s / 1e9 if ok else nan,
        "gb_s": gb_s,
        "intensity_flop_per_byte": flop / nbytes if nbytes else nan,
        "bandwidth_gb_s": bandwidth_gb_s if ok else nan,
        "bandwidth_share": gb_s / bandwidth_gb_s if ok else nan,
        # the roofs are set from the rows by mlpbench.matmul.with_roofs, as the stage does
        "compute_roof_gflop_s": nan, "compute_share": nan, "ridge_flop_per_byte": nan,
        "bound": "",
        "status": status, "reason": reason,
    }


def _model_time(m, k, n, dtype, gflops, gbs) -> float:
    size = np.dtype(dtype).itemsize
    return max(2.0 * m * k * n / (gflops * 1e9), (m * k + k * n + m * n) * size / (gbs * 1e9))


def matmul_frame(device: str, cuda: bool) -> pd.DataFrame:
    rows = []
    if device == "cpu":
        bw = 12.0
        for backend, speed in (("numpy", 1.0), ("torch", 1.1)):
            for dtype in ("float32", "float64"):
                gflops = speed * (60.0 if dtype == "float32" else 30.0)
                for case, m, k, n in matmul_shapes():
                    t = _model_time(m, k, n, dtype, gflops, bw * 0.9)
                    rows.append(_row(backend, "cpu", dtype, case, "matmul", m, k, n, t, bw))
        for dtype in ("float32", "float64"):
            rows.append(_row("torch", "cpu", dtype, "bandwidth", "copy", 0, 0, 0,
                             2.0 * 64 * 2**20 / (bw * 1e9), bw))
        return with_roofs(pd.DataFrame(rows, columns=COLUMNS))
    for dtype in ("float32", "float64"):
        for case, m, k, n in matmul_shapes():
            if not cuda:
                rows.append(_row("torch", "cuda", dtype, case, "matmul", m, k, n, 1.0, 1.0,
                                 status="unavailable", reason=CUDA_REASON))
                continue
            t = _model_time(m, k, n, dtype, 9000.0 if dtype == "float32" else 300.0, 250.0)
            rows.append(_row("torch", "cuda", dtype, case, "matmul", m, k, n, t, 300.0))
            if case == "lesson":
                size = np.dtype(dtype).itemsize
                rows.append(_row("torch", "cuda", dtype, case, "h2d", m, k, n,
                                 k * n * size / 12e9, 300.0))
                rows.append(_row("torch", "cuda", dtype, case, "h2d_pinned", m, k, n,
                                 k * n * size / 25e9, 300.0))
                rows.append(_row("torch", "cuda", dtype, case, "d2h", m, k, n, 2e-5, 300.0))
                rows.append(_row("torch", "cuda", dtype, case, "matmul_nosync", m, k, n, 8e-6,
                                 300.0))
            if dtype == "float32" and case in ("lesson", "square"):
                rows.append(_row("torch", "cuda", dtype, case, "matmul_tf32", m, k, n,
                                 _model_time(m, k, n, dtype, 30000.0, 250.0), 300.0))
        if cuda:
            rows.append(_row("torch", "cuda", dtype, "bandwidth", "copy", 0, 0, 0,
                             2.0 * 64 * 2**20 / 300e9, 300.0))
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.loc[df["kind"] == "matmul_nosync", ["n_runs", "number_per_run"]] = [5, 100]  # %timeit
    return with_roofs(df)


# --------------------------------------------------------------------------- training


def _loss_curve(seed: int, width: int, depth: int, epochs: int, dataset: str) -> np.ndarray:
    """Falling cross-entropy: wider/deeper nets fall faster; each seed has its own level."""
    rate = 0.03 * (1 + 0.1 * width) * (1 + 0.2 * (depth - 1))
    floor = 0.05 + 0.04 * ((seed * 7 + len(dataset)) % 5)
    e = np.arange(epochs)
    return floor + (np.log(DATASETS[dataset]) - floor) * np.exp(-rate * e)


def decision_logits(n_classes: int, seed: int, epochs: int) -> tuple[np.ndarray, np.ndarray,
                                                                      np.ndarray]:
    """x0, x1 and logits of a GRID x GRID decision grid: class c wins around angle 2*pi*c/C,
    turned by the seed and, so checkpoints differ visibly, by the epoch count."""
    axis = np.linspace(-3, 3, GRID)
    x0, x1 = np.meshgrid(axis, axis)
    angle = np.arctan2(x1.ravel(), x0.ravel()) + 0.1 * seed + 0.03 * epochs
    centres = 2 * np.pi * np.arange(n_classes) / n_classes
    logits = np.cos(angle[:, None] - centres[None, :]).astype("float32")
    return x0.ravel().astype("float32"), x1.ravel().astype("float32"), logits


def decision_block(dataset: str, device: str, width: int, depth: int, lr: float, seed: int,
                   epochs: int) -> dict[str, Any]:
    n_classes = DATASETS[dataset]
    x0, x1, logits = decision_logits(n_classes, seed, epochs)
    dec = {"dataset": dataset, "device": device, "width": width, "depth": depth, "lr": lr,
           "seed": seed, "epochs": epochs, "x0": x0, "x1": x1}
    dec.update({f"logit_{c}": logits[:, c] for c in range(n_classes)})
    return dec


def train_frames(dataset: str, device: str, available: bool,
                 diverged: bool) -> dict[str, pd.DataFrame]:
    """The tables of one training job (``diverged``: seed 2 of width 8 blows up)."""
    n_classes = DATASETS[dataset]
    lr = BASELINE["lr"]
    tables: dict[str, list[dict[str, Any]]] = {k: [] for k in
                                               ("losses", "metrics", "predictions", "timings",
                                                "gradnorms", "decision")}
    pts = points(dataset, n_classes)
    for width, depth, trained in sweep_shapes():
        n_members = len(SEEDS)
        windows, window_epochs = (5, max(1, trained // 5)) if available else (0, 0)
        timing = {"host": HOST, "dataset": dataset, "device": device, "width": width,
                  "depth": depth, "n_members": n_members, "n_windows": windows,
                  "epochs_per_window": window_epochs, "epochs_trained": windows * window_epochs,
                  "threads": 1, "method": "ensemble"}
        nan_spread = {"time_per_epoch_s_min": np.nan, "time_per_epoch_s_max": np.nan,
                      "time_per_epoch_s_iqr": np.nan}
        if not available:
            for epochs in checkpoints(width, depth):
                tables["metrics"].append({"dataset": dataset, "device": device, "width": width,
                                          "depth": depth, "lr": lr, "seed": np.nan,
                                          "epochs": epochs, "loss": np.nan, "train_acc": np.nan,
                                          "test_acc": np.nan, "status": "unavailable",
                                          "reason": CUDA_REASON})
            tables["timings"].append({**timing, "time_s": np.nan, "time_per_epoch_s": np.nan,
                                      **nan_spread, "time_per_member_epoch_s": np.nan,
                                      "status": "unavailable", "reason": CUDA_REASON})
            continue
        per_epoch = (2e-4 if device == "cpu" else 5e-4) * (1 + 0.05 * width * depth)
        timed = timing["epochs_trained"]
        tables["timings"].append({**timing, "time_s": per_epoch * timed,
                                  "time_per_epoch_s": per_epoch, **spread(per_epoch),
                                  "time_per_member_epoch_s": per_epoch / n_members,
                                  "status": "ok", "reason": ""})
        # The lesson's one-network loop, timed beside the ensemble.
        loop = per_epoch * 0.8
        tables["timings"].append({**timing, "n_members": 1, "method": "loop",
                                  "time_s": loop * timed, "time_per_epoch_s": loop,
                                  **spread(loop), "time_per_member_epoch_s": loop,
                                  "status": "ok", "reason": ""})
        for seed in SEEDS:
            blows_up = diverged and width == 8 and seed == 2
            curve = _loss_curve(seed, width, depth, trained, dataset)
            if blows_up:
                curve[trained // 2:] = np.nan
            for epoch, loss in enumerate(curve, start=1):
                tables["losses"].append({"dataset": dataset, "device": device, "width": width,
                                         "depth": depth, "lr": lr, "seed": seed,
                                         "epoch": epoch, "loss": float(loss)})
            for epochs in checkpoints(width, depth):
                loss = float(curve[epochs - 1]) if not blows_up else float("nan")
                acc = 1.0 - min(loss, 1.0) / 2 if not blows_up else float("nan")
                test_acc = round(acc * N_TEST) / N_TEST if not blows_up else float("nan")
                tables["metrics"].append({"dataset": dataset, "device": device, "width": width,
                                          "depth": depth, "lr": lr, "seed": seed,
                                          "epochs": epochs, "loss": loss, "train_acc": acc,
                                          "test_acc": test_acc,
                                          "status": "diverged" if blows_up else "ok",
                                          "reason": "non-finite loss" if blows_up else ""})
                for point, label in enumerate(pts["y_test"]):
                    tables["predictions"].append({"dataset": dataset, "device": device,
                                                  "width": width, "depth": depth, "lr": lr,
                                                  "seed": seed, "epochs": epochs,
                                                  "point": point, "label": int(label),
                                                  "pred": int(label if point else 0)})
            for stage in ("init", "final"):
                for layer in range(depth + 1):
                    scale = 0.5 if stage == "init" else 0.05
                    norm = scale * 0.6 ** (depth - layer) * (1 + 0.1 * seed)
                    tables["gradnorms"].append({"dataset": dataset, "device": device,
                                                "width": width, "depth": depth, "lr": lr,
                                                "seed": seed, "stage": stage,
                                                "epochs": 0 if stage == "init" else min(checkpoints(width, depth)),
                                                "layer": layer,
                                                "grad_norm": float("nan") if blows_up else norm})
            for epochs in checkpoints(width, depth):
                if blows_up:
                    continue
                tables["decision"].append(decision_block(dataset, device, width, depth, lr,
                                                         seed, epochs))
    frames = {k: pd.DataFrame(v) for k, v in tables.items() if k != "decision"}
    frames["environment"] = environment_frame("train", device, dataset)
    frames["decision"] = (pd.concat([pd.DataFrame(d) for d in tables["decision"]],
                                    ignore_index=True)
                          if tables["decision"] else
                          contract.empty_frame(contract.TRAIN["decision"], n_classes))
    for name, df in frames.items():
        if df.empty:  # e.g. no losses when the device was unavailable
            frames[name] = contract.empty_frame(contract.TRAIN[name],
                                                n_classes if name == "decision" else 0)
    return frames


def spread(per_epoch: float) -> dict[str, float]:
    """The windows' spread of a timing whose windows ran within +-5 % of the median."""
    return {"time_per_epoch_s_min": per_epoch * 0.95, "time_per_epoch_s_max": per_epoch * 1.05,
            "time_per_epoch_s_iqr": per_epoch * 0.04}


def environment_frame(stage: str, device: str, dataset: str | None = None) -> pd.DataFrame:
    """A timing job's environment rows (before, after), as mlpbench.environment writes them."""
    from mlpbench.environment import THREAD_ENV_VARS, environment_rows

    threads = 2 if stage == "matmul" else 1
    gpu = ({"gpu_source": None, "gpu_sm_clock_mhz": None, "gpu_mem_clock_mhz": None,
            "gpu_temperature_c": None, "gpu_power_w": None, "gpu_pstate": None,
            "gpu_reason": "not a CUDA job" if device == "cpu" else "nvidia-smi: not found"})

    def snap(load: float, mhz: float) -> dict[str, Any]:
        return {"time_utc": "2024-01-01T00:00:00.000+00:00", "torch_num_threads": threads,
                "torch_num_interop_threads": 2, "blas_num_threads": threads,
                "openmp_num_threads": threads,
                "threadpools": [{"user_api": "blas", "internal_api": "openblas",
                                 "num_threads": threads, "filename": "libopenblas.so"}],
                "thread_env": {v: (str(threads) if v.endswith("THREADS") else None)
                               for v in THREAD_ENV_VARS},
                "affinity": "0-1", "affinity_count": 2, "load_1m": load, "load_5m": load,
                "load_15m": load, "cpu_mhz_mean": mhz, "cpu_mhz_min": mhz, "cpu_mhz_max": mhz,
                "cpu_mhz_source": "cpufreq scaling_cur_freq", **gpu}

    rows = environment_rows(snap(0.5, 2400.0), snap(1.0, 2300.0), host=HOST, stage=stage,
                            device=device, threads=threads, dataset=dataset)
    table = contract.MATMUL_ENVIRONMENT if stage == "matmul" else contract.TRAIN["environment"]
    return pd.DataFrame(rows, columns=table.column_names)


def machine_info(cuda: bool) -> dict[str, Any]:
    """A record shaped like ``mlpbench.machine.collect``'s."""
    return {
        "host": HOST, "machine_id": HOST, "cpu_model": "Synthetic CPU @ 2.0GHz",
        "physical_cores": 2, "logical_cores": 2, "usable_cores": 2,
        # Static facts only: thread counts are in each timing job's environment table.
        "blas": {"numpy": {"internal_api": "openblas", "version": "0.3.27",
                           "architecture": "Haswell", "threading_layer": "pthreads",
                           "prefix": "libscipy_openblas", "filename": "libscipy_openblas.so"},
                 "torch": {"blas_info": "mkl", "lapack_info": "mkl", "mkl": None,
                           "mkldnn": None, "openmp": "OpenMP 201511",
                           "cpu_capability": "AVX2", "cuda_build": "0", "build_type": "Release",
                           "parallel_backend": "OpenMP", "mkl_available": True,
                           "mkldnn_available": True, "openmp_available": True},
                 "threadpools": [{"user_api": "blas", "internal_api": "openblas",
                                  "filepath": "/lib/libopenblas.so"}]},
        "gpu": ({"available": True, "count": 1, "name": "Synthetic GPU", "memory_gib": 16.0,
                 "driver": "550.0", "cuda_version": "12.4", "reason": ""} if cuda else
                {"available": False, "count": 0, "name": "none", "memory_gib": None,
                 "driver": "none", "cuda_version": "none", "reason": CUDA_REASON}),
        "versions": {"python": "3.11.0", "torch": "2.3.0", "numpy": "1.26.0",
                     "pandas": "2.2.0", "snakemake": "9.0.0", "sklearn": "1.4.0",
                     "matplotlib": "3.8.0", "threadpoolctl": "3.5.0"},
        "git_commit": "0123456789abcdef", "git_dirty": False, "config_hash": "f" * 64,
        "config": {"train": {"threads": 1}}, "created_utc": "2024-01-01T00:00:00+00:00",
    }


def write_inputs(root: Path, *, cuda: bool = False, diverged: bool = True) -> SyntheticInputs:
    """Write results/{matmul,train,machine} under ``root`` as the stages would."""
    root = Path(root)
    matmul_files = []
    for device in ("cpu", "cuda"):
        path = root / "matmul" / f"{device}.parquet"
        contract.write(matmul_frame(device, cuda), path, contract.MATMUL)
        contract.write(environment_frame("matmul", device),
                       contract.matmul_environment_file(path), contract.MATMUL_ENVIRONMENT)
        matmul_files.append(path)
    train_dirs = []
    for dataset in DATASETS:
        for device in ("cpu", "cuda"):
            d = root / "train" / dataset / device
            available = device == "cpu" or cuda
            for stem, df in train_frames(dataset, device, available, diverged).items():
                contract.write(df, d / f"{stem}.parquet", contract.TRAIN[stem])
            train_dirs.append(d)
    machine = root / "machine" / f"{HOST}.json"
    write_json_atomic(machine_info(cuda), machine)
    cfg = {"datasets": {name: {"mode": "sweep", "baseline": dict(BASELINE), "epochs": EPOCHS,
                               "width": WIDTHS, "depth": DEPTHS, "lr": [BASELINE["lr"]],
                               "seeds": len(SEEDS)} for name in DATASETS}}
    return SyntheticInputs(matmul_files, train_dirs, [machine], json.loads(json.dumps(cfg)))


def write_results(root: Path, *, cuda: bool = False, figures: bool = True,
                  only_cuda: bool = False) -> Path:
    """Inputs, tables and (optionally) figures under ``root``: a results folder for the report.

    ``only_cuda`` aggregates the CUDA files alone: with ``cuda=False``, nothing is available.
    """
    from mlpbench.figures import FIGURES, make_figure
    from mlpbench.tables import build_tables, write_tables

    inputs = write_inputs(root, cuda=cuda)
    mm, train = inputs.matmul_files, inputs.train_dirs
    if only_cuda:
        mm = [p for p in mm if p.stem == "cuda"]
        train = [d for d in train if d.name == "cuda"]
    tables = build_tables(mm, train, inputs.machine_files, train_cfg=inputs.train_cfg,
                          points_loader=load_points)
    write_tables(tables, Path(root) / "tables")
    if figures:
        for name in FIGURES:
            make_figure(name, Path(root) / "tables", Path(root) / "figures" / f"{name}.png")
    return Path(root)
