"""Training-grid configuration: validation and the plan of shapes one dataset needs.

Training is organised by shape (width, depth): all seeds x learning rates of a shape form one
ensemble, trained once to the largest epoch count the shape needs and evaluated at every epoch
count it needs (with a constant learning rate the 1000-epoch model *is* epoch 1000 of a longer run).

* ``grid`` mode: the full product of the ``width``, ``depth``, ``epochs`` and ``lr`` axes.
* ``sweep`` mode (the homework): every point that differs from ``baseline`` in at most one axis.
  The baseline shape therefore needs every ``epochs`` value and every ``lr``; a shape that differs
  in width or depth needs only ``baseline.epochs`` and ``baseline.lr``.

Errors are ``ValueError``s that name the config key, the bad value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any, NamedTuple

from . import data as datasets
from .data import BLOBS_DEFAULTS

DEVICES = ("cpu", "cuda")
MODES = ("sweep", "grid")
AXES = ("epochs", "width", "depth", "lr")
DATASET_KEYS = ("mode", "baseline", *AXES, "seeds", "momentum", "batch_size", "data")
MAX_SEED = 2**63 - 1


class ShapePlan(NamedTuple):
    """One ensemble to train: a shape, how far, where to evaluate, and its learning rates."""

    width: int
    depth: int
    max_epochs: int
    checkpoints: tuple[int, ...]
    lrs: tuple[float, ...]


def _prefix(name: str | None) -> str:
    return f"train.experiments.{name}" if name else "train.experiments.<dataset>"


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_int(key: str, value: Any, minimum: int) -> int:
    if not _is_int(value) or value < minimum:
        raise ValueError(f"{key}: got {value!r}; allowed: integers >= {minimum}")
    return int(value)


def _check_lr(key: str, value: Any) -> float:
    if not _is_real(value) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{key}: got {value!r}; allowed: finite numbers > 0")
    return float(value)


def _axis(cfg: Mapping[str, Any], key: str, path: str) -> list[Any]:
    if key not in cfg:
        raise ValueError(f"{path}.{key}: missing; allowed: a non-empty list")
    values = cfg[key]
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Sequence):
        values = [values]  # a single value is a one-point axis
    if len(values) == 0:
        raise ValueError(f"{path}.{key}: got []; allowed: a non-empty list")
    return list(values)


def _check_axis_value(path: str, key: str, value: Any) -> int | float:
    return _check_lr(f"{path}.{key}", value) if key == "lr" else _check_int(f"{path}.{key}", value, 1)


def resolve_seeds(seeds: Any, name: str | None = None) -> list[int]:
    """``seeds: n`` means seeds 0..n-1; a list is taken as given (distinct integers >= 0)."""
    key = f"{_prefix(name)}.seeds"
    if _is_int(seeds):
        return list(range(_check_int(key, seeds, 1)))
    if isinstance(seeds, (str, bytes, Mapping)) or not isinstance(seeds, Sequence):
        raise ValueError(f"{key}: got {seeds!r}; allowed: an integer >= 1 or a non-empty list of integers")
    if len(seeds) == 0:
        raise ValueError(f"{key}: got []; allowed: an integer >= 1 or a non-empty list of integers")
    out = []
    for s in seeds:
        if not _is_int(s) or not 0 <= s <= MAX_SEED:
            raise ValueError(f"{key}: got {s!r} in {list(seeds)!r}; allowed: integers 0..{MAX_SEED}")
        out.append(int(s))
    if len(set(out)) != len(out):
        raise ValueError(f"{key}: got {list(seeds)!r}; allowed: distinct integers (found duplicates)")
    return out


def validate_device(device: Any) -> str:
    if device not in DEVICES:
        raise ValueError(f"train.devices: got {device!r}; allowed: {', '.join(DEVICES)}")
    return device


def validate_threads(threads: Any) -> int:
    return _check_int("train.threads", threads, 1)


def validate_decision_grid(decision_grid: Mapping[str, Any]) -> tuple[int, float]:
    """``{resolution, margin}`` -> (resolution >= 2, margin >= 0)."""
    if not isinstance(decision_grid, Mapping):
        raise ValueError(f"train.decision_grid: got {decision_grid!r}; allowed: a mapping with resolution, margin")
    unknown = sorted(set(decision_grid) - {"resolution", "margin"})
    if unknown:
        raise ValueError(f"train.decision_grid: unknown key(s) {unknown}; allowed: resolution, margin")
    resolution = _check_int("train.decision_grid.resolution", decision_grid.get("resolution", 60), 2)
    margin = decision_grid.get("margin", 1.0)
    if not _is_real(margin) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"train.decision_grid.margin: got {margin!r}; allowed: finite numbers >= 0")
    return resolution, float(margin)


def _validate_data(path: str, data: Any) -> None:
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: got {data!r}; allowed: a mapping with keys {sorted(BLOBS_DEFAULTS)}")
    unknown = sorted(set(data) - set(BLOBS_DEFAULTS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {sorted(BLOBS_DEFAULTS)}")
    merged = {**BLOBS_DEFAULTS, **data}
    n = _check_int(f"{path}.n_samples", merged["n_samples"], 2)
    _check_int(f"{path}.centers", merged["centers"], 2)
    for key in ("random_state", "split_random_state"):
        _check_int(f"{path}.{key}", merged[key], 0)
    std = merged["cluster_std"]
    if not _is_real(std) or not math.isfinite(std) or std <= 0:
        raise ValueError(f"{path}.cluster_std: got {std!r}; allowed: finite numbers > 0")
    ts = merged["test_size"]
    n_test = math.ceil(ts * n) if _is_real(ts) and 0 < ts < 1 else 0
    if not 1 <= n_test <= n - 1:
        raise ValueError(
            f"{path}.test_size: got {ts!r}; allowed: a fraction in (0, 1) leaving at least one "
            f"train and one test point of n_samples={n}"
        )


def validate_dataset_cfg(name: Any, cfg: Any) -> None:
    """Raise ``ValueError`` naming the key, the bad value and what is allowed; else return None."""
    if name not in datasets.names():
        raise ValueError(f"train.datasets: got dataset {name!r}; allowed: {', '.join(datasets.names())}")
    path = _prefix(name)
    if not isinstance(cfg, Mapping):
        raise ValueError(f"{path}: got {cfg!r}; allowed: a mapping with keys {', '.join(DATASET_KEYS)}")
    unknown = sorted(set(cfg) - set(DATASET_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; allowed: {', '.join(DATASET_KEYS)}")
    mode = cfg.get("mode")
    if mode not in MODES:
        raise ValueError(f"{path}.mode: got {mode!r}; allowed: {', '.join(MODES)}")
    for key in AXES:
        for value in _axis(cfg, key, path):
            _check_axis_value(path, key, value)
    if mode == "sweep" or cfg.get("baseline") is not None:
        baseline = cfg.get("baseline")
        if not isinstance(baseline, Mapping):
            raise ValueError(
                f"{path}.baseline: got {baseline!r}; allowed: a mapping with keys {', '.join(AXES)} "
                f"(sweep mode varies one axis at a time from it)"
            )
        unknown = sorted(set(baseline) - set(AXES))
        if unknown:
            raise ValueError(f"{path}.baseline: unknown key(s) {unknown}; allowed: {', '.join(AXES)}")
        for key in AXES:
            if key not in baseline:
                raise ValueError(f"{path}.baseline.{key}: missing; allowed: a single value")
            _check_axis_value(f"{path}.baseline", key, baseline[key])
    resolve_seeds(cfg.get("seeds"), name)
    momentum = cfg.get("momentum")
    momentum = 0.0 if momentum is None else momentum
    if not _is_real(momentum) or not 0 <= momentum < 1:
        raise ValueError(f"{path}.momentum: got {momentum!r}; allowed: numbers in [0, 1)")
    batch_size = cfg.get("batch_size")
    if batch_size is not None:
        _check_int(f"{path}.batch_size", batch_size, 1)
    if "data" in cfg:
        if not datasets.get(name).parameters:
            raise ValueError(f"{path}.data: got {cfg['data']!r}; allowed: only for data sets with "
                             f"parameters ({name} is fixed)")
        if cfg["data"] is not None and name == "blobs":  # others: checked by the config schema
            _validate_data(f"{path}.data", cfg["data"])


def plan_shapes(dataset_cfg: Mapping[str, Any], name: str | None = None) -> list[ShapePlan]:
    """Config of one dataset -> the ensembles to train, sorted by (width, depth).

    ``name`` only makes error messages name the dataset; the config is validated here too.
    """
    path = _prefix(name)
    if name is not None:
        validate_dataset_cfg(name, dataset_cfg)
    axes = {
        key: sorted({_check_axis_value(path, key, v) for v in _axis(dataset_cfg, key, path)})
        for key in AXES
    }
    mode = dataset_cfg.get("mode")
    needs: dict[tuple[int, int], tuple[set[int], set[float]]] = {}
    if mode == "grid":
        for width in axes["width"]:
            for depth in axes["depth"]:
                needs[(width, depth)] = (set(axes["epochs"]), set(axes["lr"]))
    elif mode == "sweep":
        base = dataset_cfg.get("baseline")
        if not isinstance(base, Mapping) or any(k not in base for k in AXES):
            raise ValueError(f"{path}.baseline: got {base!r}; allowed: a mapping with keys {', '.join(AXES)}")
        b = {key: _check_axis_value(f"{path}.baseline", key, base[key]) for key in AXES}

        def need(width: int, depth: int, epochs: set[int], lrs: set[float]) -> None:
            have = needs.setdefault((width, depth), (set(), set()))
            have[0].update(epochs)
            have[1].update(lrs)

        need(b["width"], b["depth"], set(axes["epochs"]) | {b["epochs"]}, set(axes["lr"]) | {b["lr"]})
        for width in axes["width"]:
            need(width, b["depth"], {b["epochs"]}, {b["lr"]})
        for depth in axes["depth"]:
            need(b["width"], depth, {b["epochs"]}, {b["lr"]})
    else:
        raise ValueError(f"{path}.mode: got {mode!r}; allowed: {', '.join(MODES)}")
    return [
        ShapePlan(width, depth, max(epochs), tuple(sorted(epochs)), tuple(sorted(lrs)))
        for (width, depth), (epochs, lrs) in sorted(needs.items())
    ]
