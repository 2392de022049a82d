"""What the config schema cannot say, checked once, before any job runs.

``workflow/rules/common.smk`` validates the config against ``workflow/schemas/config.schema.yaml``
with the registered data sets filled in (:func:`mlpbench.data.config_schema`; the validation
fills in the defaults) and then calls :func:`check_config`, so that a config is refused
before Snakemake schedules anything and an existing ``results/`` is never touched by it. The
library trusts what passes: it receives ``int`` where the schema says integer, finite ``float``
where it says number, and does not check again.

:func:`check_config` covers, in this order:

1. **Non-finite numbers** anywhere (``.nan``, ``.inf``): JSON Schema's bounds compare false with
   NaN and so let it through.
2. **Types as the schema means them**: JSON Schema's ``integer`` accepts ``20.0`` (and YAML reads
   ``20.0`` as a float), so an integer-valued float where an integer is meant becomes that ``int``;
   an ``int`` where a number is meant becomes a ``float``. The config is changed in place, before
   its hash is taken, so ``epochs: [20.0]`` and ``epochs: [20]`` are one config.
3. **Cross-field rules** of the data sets that this run trains (``train.datasets``): a grid-mode
   ``baseline`` must lie on the grid's axes; every data set must leave at least one training
   point per class after its split; ``batch_size`` must not exceed the training set. And
   ``machine_id`` (or this host's name, where it is null) must not be
   :data:`mlpbench.config.LESSON_MACHINE` (``"lesson"``), the lesson's slides' row in the
   machine comparison.
4. **Sizes that cannot fit**: the bytes each job must hold at once (see
   :func:`matmul_parts` and :func:`training_parts`) against this machine's memory.

Every refusal is a :class:`mlpbench.config.ConfigError` with one line in the style of
:func:`mlpbench.config.explain`: the key, the value and what is allowed.

The other machines of ``compare:`` are checked by two more calls, also before any job:
:func:`compare_sources` expands ``compare.bundles`` (a pattern that matches no file is refused)
and finds the shipped ``reference/*.zip``; :func:`check_compare` opens and verifies every bundle
in memory (:func:`mlpbench.bundle.load_bundles`: a bad bundle is refused with its one-line
:class:`mlpbench.bundle.BundleError`) and checks ``compare.baseline``. Without bundles neither
reads a file nor imports the bundle module.

This module is imported when Snakemake parses the workflow, on every call: it imports neither
torch nor NumPy nor pandas.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from . import data
from .config import (LESSON_MACHINE, ConfigError, invalid, key_path, machine_id,
                     number_bounds, resolve)
from .grid import AXES, plan_shapes, resolve_seeds

__all__ = [
    "CompareSources",
    "MemoryPart",
    "check_compare",
    "check_config",
    "compare_sources",
    "machine_memory",
    "matmul_parts",
    "training_parts",
]

ITEMSIZE = {"float32": 4, "float64": 8}


def _show(value: Any) -> str:
    return json.dumps(value, default=str)


def _refuse(path: list, value: Any, reason: str, allowed: str) -> ConfigError:
    return ConfigError(invalid(key_path(path), f"{_show(value)} is not allowed ({reason})", allowed))


def check_config(config: dict[str, Any], schema: dict[str, Any], *,
                 memory_bytes: int | None = None) -> None:
    """Check what the schema cannot, and normalise the types in place; raise ``ConfigError``.

    ``config`` must already have passed the schema (with its defaults filled in), as
    :func:`mlpbench.config.validate_config` leaves it; ``schema`` is that schema document.
    ``memory_bytes`` is the memory every job is measured against; by default this machine's
    (:func:`machine_memory`), and where that is unknown the size checks are skipped.
    """
    _walk(config, schema, schema, [])
    _check_machine_id(config.get("machine_id"))
    train = config["train"]
    for name in train["datasets"]:
        _check_experiment(name, train["experiments"][name])
    memory = machine_memory() if memory_bytes is None else memory_bytes
    if memory is not None:
        _check_sizes(config, schema, memory)


# -------------------------------------------------------------------------------------------
# 1 and 2: non-finite numbers, and types as the schema means them


def _types(schema: Mapping[str, Any]) -> list[str]:
    types = schema.get("type", [])
    return [types] if isinstance(types, str) else list(types)


def _walk(value: Any, schema: Mapping[str, Any], root: dict, path: list) -> Any:
    """Refuse non-finite numbers under ``value``; return it with the schema's types (containers
    are changed in place)."""
    schema = resolve(schema, root)
    types = _types(schema)
    if isinstance(value, float):
        if not math.isfinite(value):
            allowed = ", ".join(["finite numbers", *number_bounds(schema)])
            raise _refuse(path, value, "not a finite number", allowed)
        if "integer" in types and "number" not in types and value.is_integer():
            return int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        if "number" in types and "integer" not in types:
            try:
                return float(value)
            except OverflowError:
                allowed = ", ".join(["finite numbers", *number_bounds(schema)])
                raise _refuse(path, value, "too large for a floating-point number",
                              allowed) from None
    elif isinstance(value, dict):
        properties = schema.get("properties", {})
        for key in value:
            value[key] = _walk(value[key], properties.get(key, {}), root, [*path, key])
    elif isinstance(value, list):
        items = schema.get("items", {})
        for i, item in enumerate(value):
            value[i] = _walk(item, items if isinstance(items, dict) else {}, root, [*path, i])
    for branch in schema.get("oneOf", []) + schema.get("anyOf", []):
        # Only the branch whose structure the value has changes anything (seeds: n or a list).
        value = _walk(value, branch, root, path)
    return value


def _check_machine_id(explicit: str | None) -> None:
    """Refuse the machine_id reserved for the lesson's slides (given, or this host's name)."""
    if machine_id(explicit) == LESSON_MACHINE:
        reason = (f"{_show(LESSON_MACHINE)} names the lesson's slides in the machine comparison"
                  + ("" if explicit is not None else "; null uses this host's name, which is "
                     f"{_show(LESSON_MACHINE)}"))
        raise _refuse(["machine_id"], explicit, reason,
                      f"any other name of letters, digits, '.', '_' and '-' (not "
                      f"{_show(LESSON_MACHINE)})")


# -------------------------------------------------------------------------------------------
# 3: cross-field rules of one data set's experiment


def _check_experiment(name: str, exp: Mapping[str, Any]) -> None:
    path = ["train", "experiments", name]
    if exp["mode"] == "grid":
        for axis in AXES:
            value = exp["baseline"][axis]
            if value not in exp[axis]:
                raise _refuse(
                    [*path, "baseline", axis], value,
                    "grid mode trains only the values on its axes, and the report compares "
                    "every run with the baseline",
                    f"one of {key_path([*path, axis])}: {', '.join(map(_show, exp[axis]))}")
    n_train, _ = data.split_sizes(name, exp)
    classes = data.n_classes(name, exp)
    if n_train < classes:
        # Any registered data set; the bound on n_samples where its generator has one and a
        # test_size split (blobs: the homework's make_blobs + train_test_split).
        params = data.get(name).params(exp)
        sized = "n_samples" in params and "test_size" in params
        key, value = ([*path, "data", "n_samples"], params["n_samples"]) if sized else \
            ([*path, "data"], params)
        split = f"test_size {_show(params['test_size'])}" if sized else "the split"
        allowed = "at least one training point per class"
        if sized:
            allowed += (": n_samples - ceil(test_size * n_samples) >= classes, here n_samples >= "
                        f"{_smallest_n_samples(params['test_size'], classes)}")
        raise _refuse(key, value, f"{split} leaves {n_train} training point(s) for {classes} "
                      "classes, so some class has none", allowed)
    batch_size = exp["batch_size"]
    if batch_size is not None and batch_size > n_train:
        raise _refuse([*path, "batch_size"], batch_size,
                      f"larger than the {n_train} training points of {name}",
                      f"null (full batch) or an integer from 1 to {n_train}")


def _smallest_n_samples(test_size: float, classes: int) -> int:
    """Smallest n with n - ceil(test_size * n) >= classes (that difference never decreases in n)."""
    def enough(n: int) -> bool:
        return n - math.ceil(test_size * n) >= classes

    lo, hi = classes, 2 * classes
    while not enough(hi):
        lo, hi = hi, 2 * hi
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


# -------------------------------------------------------------------------------------------
# 4: sizes that cannot fit


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (``sysconf``), or None where it does not say.

    A lower limit set for this process (a container's or a batch job's cgroup) is not seen, and
    GPU memory cannot be known without importing torch, which parsing the workflow must not do.
    On a cluster this is the memory of the machine that parses the workflow: the submitting
    node, and again each compute node when its job starts.
    """
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


class MemoryPart(NamedTuple):
    """Bytes one job must hold for one reason, and the config key that sets them."""

    path: list  # the config key, as a path
    value: Any  # its value
    what: str  # what needs the bytes, in words
    nbytes: int


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if nbytes < 1024 or unit == "PiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


def matmul_parts(matmul: Mapping[str, Any], device: str) -> list[MemoryPart]:
    """Host memory of each allocation of one matmul job; the job holds one of them at a time.

    Each measurement creates its operands, times them and frees them before the next
    (``mlpbench.matmul``), so a job needs the largest single part, with the widest dtype of
    ``matmul.dtypes`` (4 or 8 bytes per element):

    * a product ``x(m, k) @ y(k, n)`` on the CPU: ``(m*k + k*n + m*n) * itemsize`` (x, y and the
      result); on CUDA the host holds ``y`` for the host-to-device copy and the result for the
      copy back: ``max(k*n, m*n) * itemsize`` (the operands on the GPU are not checked);
    * the bandwidth reference on the CPU: source and destination of ``bandwidth_mib`` MiB each,
      ``2 * bandwidth_mib * 2**20`` (on CUDA both live on the GPU).
    """
    size = max(ITEMSIZE[d] for d in matmul["dtypes"])
    dtype = "float64" if size == 8 else "float32"
    shapes: list[tuple[list, Any, int, int, int]] = []
    case = matmul.get("lesson_case")
    if case is not None:
        shapes.append((["matmul", "lesson_case"], case, case["m"], case["k"], case["n"]))
    shapes += [(["matmul", "square", i], s, s, s, s) for i, s in enumerate(matmul["square"])]
    shapes += [(["matmul", "gemv", i], kn, 1, kn[0], kn[1]) for i, kn in enumerate(matmul["gemv"])]
    parts = []
    if device == "cpu":
        mib = matmul["bandwidth_mib"]
        parts.append(MemoryPart(["matmul", "bandwidth_mib"], mib,
                                f"the bandwidth reference copies {mib} MiB into a second buffer",
                                2 * mib * 2**20))
    for path, value, m, k, n in shapes:
        product = f"x({m}, {k}) @ y({k}, {n}) in {dtype}"
        if device == "cpu":
            parts.append(MemoryPart(path, value, f"{product} holds m*k + k*n + m*n elements",
                                    (m * k + k * n + m * n) * size))
        else:
            parts.append(MemoryPart(path, value, f"{product} copies max(k*n, m*n) elements "
                                                 "between host and GPU", max(k * n, m * n) * size))
    return parts


def _params_per_member(n_in: int, width: int, depth: int, n_out: int) -> int:
    sizes = [n_in] + [width] * depth + [n_out]
    return sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))


def training_parts(name: str, exp: Mapping[str, Any], decision_grid: Mapping[str, Any],
                   device: str) -> list[MemoryPart]:
    """Host memory one training job (data set ``name`` on ``device``) must hold at once, by cause.

    Notation, per shape of the plan (``mlpbench.grid.plan_shapes``): ``M`` members (seeds x its
    learning rates), ``P`` parameters per member, ``E`` epochs trained, ``K`` checkpoints,
    ``b`` points per step (the training set, or ``batch_size``); ``C`` classes, ``R`` =
    resolution**2 decision-grid points, ``n_in`` = 2 features, ``n_test`` test points. Tensors
    are float32 (4 bytes); tables hold 8 bytes per int64/float64/object cell and 4 per float32
    cell, and each table is held twice (every shape's frame and their concatenation exist
    together when the job ends). Counted are only the largest buffers, so the estimate is
    approximate: a refused config needs about this machine's whole memory or more, and one
    that passes may still run short. Parts, each with the key that sets it:

    * ``seeds`` -- the ensemble of the largest shape, on the CPU only (on CUDA it lives on the
      GPU, which is not checked): ``4 * (M*P*(4 + [momentum] + K) + E*M)``: initial parameters,
      working copy, gradients, masked update (and momentum buffer), one snapshot per
      checkpoint (``mlpbench.ensemble.train_ensemble``), and the loss record.
    * ``data.n_samples`` (blobs; ``seeds`` for toy) -- what grows with the points: on the CPU
      the largest shape's per-point buffers ``4 * M*b*(2*width*depth + n_in + 4*C)`` (each
      layer's pre-activations and input gradients, three C-wide loss buffers:
      ``mlpbench.ensemble._Workspace``); the predictions table, ``sum(K*M*n_test)`` rows of
      10 columns x 8 bytes, twice; and for blobs the data, 64 bytes per sample (make_blobs'
      float64 points and int64 labels, their train/test copies, the float32/int64 tensors).
    * ``decision_grid.resolution`` -- the decision table, ``sum(K*M*R)`` rows of 7 x 8 + (2 + C)
      x 4 bytes, twice; on the CPU also the grid forward pass of the largest shape,
      ``4 * 2*M*R*max(width, C)`` (a layer's output and its ReLU).
    * ``epochs`` -- the loss table, ``sum(E*M)`` rows of 8 columns x 8 bytes, twice.
    """
    path = ["train", "experiments", name]
    n_seeds = len(resolve_seeds(exp["seeds"]))
    n_train, n_test = data.split_sizes(name, exp)
    classes = data.n_classes(name, exp)
    batch = n_train if exp["batch_size"] is None else exp["batch_size"]
    buffers = 4 + (1 if exp["momentum"] else 0)
    points = decision_grid["resolution"] ** 2
    cpu = device == "cpu"

    ensemble = per_point = decision = losses = 0
    workspace = forward = 0
    for shape in plan_shapes(exp):
        m, k = n_seeds * len(shape.lrs), len(shape.checkpoints)
        p = _params_per_member(data.get(name).n_features, shape.width, shape.depth, classes)
        if cpu:
            ensemble = max(ensemble, 4 * (m * p * (buffers + k) + shape.max_epochs * m))
            workspace = max(workspace, 4 * m * batch * (2 * shape.width * shape.depth
                                                        + data.get(name).n_features + 4 * classes))
            forward = max(forward, 4 * 2 * m * points * max(shape.width, classes))
        per_point += 2 * k * m * n_test * 10 * 8
        decision += 2 * k * m * points * (7 * 8 + (2 + classes) * 4)
        losses += 2 * shape.max_epochs * m * 8 * 8
    if name == "blobs":
        n_samples = data.get("blobs").params(exp)["n_samples"]
        points_key: tuple[list, Any] = ([*path, "data", "n_samples"], n_samples)
        per_point += 64 * n_samples
    else:
        points_key = ([*path, "seeds"], exp["seeds"])
    return [
        MemoryPart([*path, "seeds"], exp["seeds"], "ensemble parameters", ensemble),
        MemoryPart(*points_key, "per-point buffers, test predictions and data",
                   workspace + per_point),
        MemoryPart(["train", "decision_grid", "resolution"], decision_grid["resolution"],
                   "decision-grid logits", decision + forward),
        MemoryPart([*path, "epochs"], exp["epochs"], "loss curves", losses),
    ]


def _default(schema: dict, path: list) -> Any:
    """The schema's default at a config key (``None`` if it has none)."""
    node: Mapping[str, Any] = schema
    for key in path:
        node = resolve(node, schema)
        node = node.get("properties", {}).get(key, {}) if isinstance(key, str) else node.get("items", {})
    return resolve(node, schema).get("default")


def _above_default(part: MemoryPart, schema: dict) -> bool:
    """Whether the key of ``part`` is set above the schema's default (the larger for lists)."""
    default = _default(schema, part.path)
    if isinstance(part.value, list) and isinstance(default, list):
        return max(part.value) > max(default)
    return isinstance(default, int) and isinstance(part.value, int) and part.value > default


def _check_sizes(config: Mapping[str, Any], schema: dict, memory: int) -> None:
    """Refuse a job whose estimate exceeds ``memory``.

    Jobs that measure time run one at a time (the ``timing`` resource), so each job is set
    against the whole memory. A matmul job holds one part at a time: the part's key is named.
    A training job holds its parts together; every part grows with the members (seeds x
    learning rates), so the key named is the largest part's own key where it is set above the
    schema's default, else ``seeds``.
    """
    have = f"this machine's {_size(memory)} of memory"
    matmul = config["matmul"]
    for device in matmul["devices"]:
        for part in matmul_parts(matmul, device):
            if part.nbytes > memory:
                raise _refuse(part.path, part.value,
                              f"{part.what}: {_size(part.nbytes)}, more than {have}",
                              f"sizes whose {device} matmul job fits in {_size(memory)}")
    train = config["train"]
    for name in train["datasets"]:
        for device in train["devices"]:
            parts = training_parts(name, train["experiments"][name], train["decision_grid"],
                                   device)
            total = sum(part.nbytes for part in parts)
            if total > memory:
                largest = max(parts, key=lambda part: part.nbytes)
                named = largest if _above_default(largest, schema) else parts[0]
                detail = "; ".join(f"{p.what} {_size(p.nbytes)}"
                                   for p in sorted(parts, key=lambda part: -part.nbytes) if p.nbytes)
                raise _refuse(
                    named.path, named.value,
                    f"the {device} training job of {name} needs at least {_size(total)} "
                    f"({detail}), more than {have}",
                    f"a job that fits in {_size(memory)}: fewer seeds, learning rates, shapes "
                    "or epochs, fewer points, or a smaller train.decision_grid.resolution")


# -------------------------------------------------------------------------------------------
# 5: the other machines of `compare:` (bundles found, opened and checked at parse time)

REFERENCE_GLOB = "reference/*.zip"  # the bundles shipped with the project


class CompareSources(NamedTuple):
    """The bundle files of ``compare:``: ``bundles`` (the user's, from ``compare.bundles``)
    and ``reference`` (the shipped ones, when ``compare.reference``), each sorted, relative
    to the root as given, with no file in both."""

    bundles: list[str]
    reference: list[str]


def compare_sources(config: Mapping[str, Any], root: str | os.PathLike = ".") -> CompareSources:
    """Expand ``compare.bundles`` (paths or globs; ``**`` crosses folders) under ``root``.

    Raises ``ConfigError`` naming the key, the pattern and what is allowed when a pattern
    matches no file (a typo would otherwise silently compare nothing). Reads no bundle.
    """
    cfg = config.get("compare") or {}
    root = Path(root)
    found: list[str] = []
    for i, pattern in enumerate(cfg.get("bundles", [])):
        matches = sorted(
            os.path.relpath(p, root) if not os.path.isabs(pattern) else p
            for p in glob.glob(str(root / pattern), recursive=True)
            if os.path.isfile(p))
        if not matches:
            raise _refuse(["compare", "bundles", i], pattern,
                          "no file matches it", "paths or glob patterns of existing bundle "
                          "files (results/bundles/<machine_id>.zip written by `snakemake "
                          "bundle`), relative to the repository root")
        found += [m for m in matches if m not in found]
    reference: list[str] = []
    if cfg.get("reference", True):
        reference = sorted(os.path.relpath(p, root)
                           for p in glob.glob(str(root / REFERENCE_GLOB)) if os.path.isfile(p))
        reference = [r for r in reference
                     if os.path.realpath(root / r) not in
                     {os.path.realpath(root / f) for f in found}]
    return CompareSources(found, reference)


def check_compare(config: Mapping[str, Any], sources: CompareSources, own_machine_id: str,
                  root: str | os.PathLike = ".") -> list[Any]:
    """Open and verify every bundle of ``sources`` (in memory) and check ``compare.baseline``.

    Returns the opened :class:`mlpbench.bundle.Bundle` objects (empty, and nothing imported,
    when there are none). A bundle with ``own_machine_id`` is checked against this run's
    hardware: its machine record under ``root/results/machine/`` where one exists, else this
    machine's (:func:`mlpbench.bundle.host_hardware`). Raises
    :class:`mlpbench.bundle.BundleError` (one line naming the file and the problem) for the
    first bad bundle, so nothing from a refused set is used and no job runs; ``ConfigError``
    when ``compare.baseline`` is neither this run's machine_id nor that of a compared bundle
    (the lesson's slides are not: they did not run the config).
    """
    paths = [Path(root) / p for p in (*sources.bundles, *sources.reference)]
    bundles: list[Any] = []
    if paths:
        from .bundle import Bundle, hardware, host_hardware, load_bundles  # only when needed

        # This run's hardware, so that a bundle claiming this machine_id with other hardware is
        # refused now, before the machine job runs and the aggregate job would fail: from its
        # machine record where an earlier run wrote one, else read from this machine now, with
        # neither torch nor a job (mlpbench.bundle.host_hardware). Where a GPU driver is
        # installed, the GPUs' names cannot be read without torch, so only the CPU model and
        # core counts are compared then; the aggregate job compares the GPUs too.
        record = Path(root) / "results" / "machine" / f"{own_machine_id}.json"
        machine = None
        if record.is_file():
            try:
                machine = json.loads(record.read_text())
            except (OSError, ValueError):
                machine = None  # the machine rule writes it again
        if isinstance(machine, dict):
            own_hardware, source = hardware(machine), str(record)
        else:
            own_hardware = host_hardware()
            source = f"this run on this machine (no {record} yet, its hardware read now)"
        own = Bundle(source, {"machine_id": own_machine_id, "hardware": own_hardware,
                              "members": {}}, machine if isinstance(machine, dict) else {},
                     {}, {})
        bundles = load_bundles(paths, own=own,
                               reference=[Path(root) / p for p in sources.reference])
    baseline = (config.get("compare") or {}).get("baseline")
    if baseline is not None:
        ids = list(dict.fromkeys([own_machine_id, *(b.machine_id for b in bundles)]))
        if baseline not in ids:
            reason = ("the lesson's slides are compared against (speedup_vs_lesson), but "
                      "they are not a machine that ran this config"
                      if baseline == LESSON_MACHINE else
                      "no compared machine has this machine_id")
            raise _refuse(["compare", "baseline"], baseline, reason,
                          f"null (this run) or one of {', '.join(map(_show, ids))}")
    return bundles
