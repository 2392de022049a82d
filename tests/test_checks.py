"""What the schema cannot say is checked once, before any job: mlpbench.checks.check_config."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml
from snakemake.utils import update_config

from mlpbench.checks import check_config, machine_memory, matmul_parts, training_parts
from mlpbench.config import (LESSON_MACHINE, ConfigError, config_hash, read_config_file,
                             validate_config)
from mlpbench.data import config_schema
from workflow_helpers import REPO

SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"
# The schema as the workflow checks it: with the registered data sets filled in.
SCHEMA = config_schema(yaml.safe_load(SCHEMA_PATH.read_text()))
DEFAULT = read_config_file(REPO / "config" / "config.yaml")
GIB = 2**30
MEMORY = 16 * GIB  # what the checks are set against in these tests, whatever this machine has


def checked(override: dict, memory: int = MEMORY) -> dict:
    """The default config with ``override`` merged in, as common.smk checks it."""
    config = copy.deepcopy(DEFAULT)
    update_config(config, copy.deepcopy(override))
    validate_config(config, SCHEMA)
    check_config(config, SCHEMA, memory_bytes=memory)
    return config


def refused(override: dict, memory: int = MEMORY) -> str:
    with pytest.raises(ConfigError) as raised:
        checked(override, memory)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("invalid config at '"), message
    assert "is not allowed (" in message and ". Allowed: " in message, message
    return message


def toy(**keys) -> dict:
    return {"train": {"experiments": {"toy": keys}}}


def blobs(**keys) -> dict:
    return {"train": {"experiments": {"blobs": keys}}}


def test_default_config_passes_unchanged():
    config = checked({})
    reference = copy.deepcopy(DEFAULT)
    validate_config(reference, SCHEMA)
    assert config == reference


# ------------------------------------------------------------------------------------------
# non-finite numbers


@pytest.mark.parametrize(
    ("override", "key", "shown", "allowed"),
    [
        (toy(lr=[0.01, float("nan")]), "train.experiments.toy.lr[1]", "NaN", "finite numbers, > 0"),
        (toy(lr=[float("inf")]), "train.experiments.toy.lr[0]", "Infinity", "finite numbers, > 0"),
        (toy(baseline={"lr": float("nan")}), "train.experiments.toy.baseline.lr", "NaN",
         "finite numbers, > 0"),
        (toy(momentum=float("nan")), "train.experiments.toy.momentum", "NaN",
         "finite numbers, >= 0, < 1"),
        ({"train": {"decision_grid": {"margin": float("inf")}}}, "train.decision_grid.margin",
         "Infinity", "finite numbers, >= 0"),
        (blobs(data={"cluster_std": float("inf")}), "train.experiments.blobs.data.cluster_std",
         "Infinity", "finite numbers, > 0"),
        (blobs(data={"test_size": float("nan")}), "train.experiments.blobs.data.test_size", "NaN",
         "finite numbers, > 0, < 1"),
        ({"matmul": {"min_run_time_s": float("inf")}}, "matmul.min_run_time_s", "Infinity",
         "finite numbers, > 0"),
    ],
)
def test_non_finite_numbers_are_refused(override, key, shown, allowed):
    message = refused(override)
    assert message == (f"invalid config at '{key}': {shown} is not allowed (not a finite number). "
                       f"Allowed: {allowed}.")


def test_non_finite_number_in_a_data_set_not_trained_is_refused_too():
    message = refused({"train": {"datasets": ["toy"], "experiments": {"blobs": {"lr": [float("nan")]}}}})
    assert message.startswith("invalid config at 'train.experiments.blobs.lr[0]': NaN")


def test_number_too_large_for_a_float_is_refused():
    message = refused(toy(lr=[10**400]))
    assert message.startswith("invalid config at 'train.experiments.toy.lr[0]': 1000")
    assert "too large for a floating-point number" in message


# ------------------------------------------------------------------------------------------
# integer-valued floats where integers are meant


def test_integer_valued_floats_become_integers_before_any_job():
    config = checked({
        "matmul": {"threads": 2.0, "square": [256.0], "gemv": [[800.0, 625.0]],
                   "lesson_case": {"m": 1.0, "k": 640.0, "n": 500.0}, "bandwidth_mib": 4.0},
        "train": {"threads": 1.0, "decision_grid": {"resolution": 12.0, "margin": 1},
                  "experiments": {
                      "toy": {"epochs": [20.0, 50.0], "baseline": {"epochs": 20.0, "width": 4.0},
                              "width": [4.0, 8.0], "seeds": 3.0, "batch_size": 4.0, "lr": [1]},
                      "blobs": {"seeds": [0.0, 5.0], "data": {"n_samples": 80.0, "centers": 4.0}}}},
    })
    m, t = config["matmul"], config["train"]
    toy_cfg, blobs_cfg = t["experiments"]["toy"], t["experiments"]["blobs"]
    ints = [m["threads"], *m["square"], *m["gemv"][0], *m["lesson_case"].values(), m["bandwidth_mib"],
            t["threads"], t["decision_grid"]["resolution"], *toy_cfg["epochs"],
            toy_cfg["baseline"]["epochs"], toy_cfg["baseline"]["width"], *toy_cfg["width"],
            toy_cfg["seeds"], toy_cfg["batch_size"], *blobs_cfg["seeds"],
            blobs_cfg["data"]["n_samples"], blobs_cfg["data"]["centers"]]
    assert all(type(v) is int for v in ints), ints
    assert toy_cfg["epochs"] == [20, 50] and toy_cfg["seeds"] == 3 and blobs_cfg["seeds"] == [0, 5]
    # An integer where a number is meant becomes a float: the library gets one type per key.
    assert type(toy_cfg["lr"][0]) is float and type(t["decision_grid"]["margin"]) is float


def test_integer_valued_floats_give_the_same_config_hash():
    assert config_hash(checked(toy(epochs=[20.0, 50.0]))) == config_hash(checked(toy(epochs=[20, 50])))


def test_a_float_with_a_fraction_stays_a_schema_error():
    from jsonschema import ValidationError

    with pytest.raises(ValidationError):
        checked(toy(epochs=[20.5]))


# ------------------------------------------------------------------------------------------
# cross-field rules


@pytest.mark.parametrize(
    ("baseline", "axis", "allowed"),
    [
        ({"width": 5}, "width", "4, 8, 16, 32, 64"),
        ({"depth": 5}, "depth", "1, 2, 3, 4, 6"),
        ({"epochs": 1500}, "epochs", "1000, 2000, 5000"),
        ({"lr": 0.01}, "lr", "0.001"),
    ],
)
def test_grid_baseline_must_lie_on_the_grid_axes(baseline, axis, allowed):
    message = refused(blobs(mode="grid", baseline=baseline))
    value = next(iter(baseline.values()))
    assert message.startswith(f"invalid config at 'train.experiments.blobs.baseline.{axis}': "
                              f"{value} is not allowed (grid mode trains only the values on its axes")
    assert message.endswith(f"Allowed: one of train.experiments.blobs.{axis}: {allowed}.")


def test_sweep_baseline_may_lie_off_the_axes_and_untrained_sets_are_not_cross_checked():
    # A sweep trains its baseline whatever the axes hold.
    checked(blobs(mode="sweep", baseline={"width": 5}))
    # Cross-field rules apply to the data sets this run trains.
    checked({"train": {"datasets": ["toy"],
                       "experiments": {"blobs": {"mode": "grid", "baseline": {"width": 5}}}}})


def test_blobs_too_small_for_its_classes_names_the_smallest_size():
    message = refused(blobs(data={"n_samples": 6}))
    assert message == (
        "invalid config at 'train.experiments.blobs.data.n_samples': 6 is not allowed (test_size "
        "0.4 leaves 3 training point(s) for 4 classes, so some class has none). "
        "Allowed: at least one training point per class: n_samples - ceil(test_size * n_samples) "
        ">= classes, here n_samples >= 7.")
    checked(blobs(data={"n_samples": 7}))


@pytest.mark.parametrize(("test_size", "centers"), [(0.4, 4), (0.9, 4), (0.5, 3), (0.999, 2), (0.01, 50)])
def test_smallest_blobs_size_named_is_exact(test_size, centers):
    message = refused(blobs(data={"n_samples": centers, "test_size": test_size, "centers": centers}))
    smallest = int(message.rsplit(">= ", 1)[1].rstrip("."))
    checked(blobs(data={"n_samples": smallest, "test_size": test_size, "centers": centers}))
    refused(blobs(data={"n_samples": smallest - 1, "test_size": test_size, "centers": centers}))


@pytest.mark.parametrize(
    ("override", "key", "n_train"),
    [
        (toy(batch_size=10), "train.experiments.toy.batch_size", 9),
        (blobs(batch_size=241), "train.experiments.blobs.batch_size", 240),
        (blobs(batch_size=51, data={"n_samples": 100, "test_size": 0.5}), "train.experiments.blobs.batch_size", 50),
    ],
)
def test_batch_larger_than_the_training_set_is_refused(override, key, n_train):
    message = refused(override)
    value = override["train"]["experiments"][key.split(".")[2]]["batch_size"]
    assert message == (f"invalid config at '{key}': {value} is not allowed (larger than the "
                       f"{n_train} training points of {key.split('.')[2]}). Allowed: null (full "
                       f"batch) or an integer from 1 to {n_train}.")


def test_batch_equal_to_the_training_set_is_allowed():
    checked(toy(batch_size=9))
    checked(blobs(batch_size=240))


# ------------------------------------------------------------------------------------------
# sizes that cannot fit


def test_default_config_fits_a_small_laptop():
    checked({}, memory=1 * GIB)


@pytest.mark.parametrize(
    ("override", "key", "value", "what"),
    [
        ({"matmul": {"bandwidth_mib": 10**7}}, "matmul.bandwidth_mib", "10000000",
         "the bandwidth reference copies 10000000 MiB into a second buffer: 19.1 TiB"),
        ({"matmul": {"square": [256, 10**5]}}, "matmul.square[1]", "100000",
         "x(100000, 100000) @ y(100000, 100000) in float64 holds m*k + k*n + m*n elements: 223.5 GiB"),
        ({"matmul": {"dtypes": ["float32"], "gemv": [[10**6, 10**4]]}}, "matmul.gemv[0]",
         "[1000000, 10000]",
         "x(1, 1000000) @ y(1000000, 10000) in float32 holds m*k + k*n + m*n elements: 37.3 GiB"),
        ({"matmul": {"devices": ["cuda"], "lesson_case": {"m": 1, "k": 10**6, "n": 10**4}}},
         "matmul.lesson_case", '{"m": 1, "k": 1000000, "n": 10000}',
         "x(1, 1000000) @ y(1000000, 10000) in float64 copies max(k*n, m*n) elements between "
         "host and GPU: 74.5 GiB"),
    ],
)
def test_matmul_sizes_that_cannot_fit_are_refused(override, key, value, what):
    message = refused(override)
    device = override["matmul"].get("devices", ["cpu"])[0]
    assert message == (f"invalid config at '{key}': {value} is not allowed ({what}, more than "
                       f"this machine's 16.0 GiB of memory). Allowed: sizes whose {device} matmul "
                       f"job fits in 16.0 GiB.")


def test_gpu_side_of_a_cuda_job_is_not_checked():
    # On CUDA the bandwidth buffers live on the GPU, whose memory is not known here.
    checked({"matmul": {"devices": ["cuda"], "bandwidth_mib": 10**6}})
    refused({"matmul": {"devices": ["cpu"], "bandwidth_mib": 10**6}})


@pytest.mark.parametrize(
    ("override", "key", "largest"),
    [
        (toy(seeds=100_000), "train.experiments.toy.seeds", "decision-grid logits"),
        ({"train": {"decision_grid": {"resolution": 1000}, "experiments": {"toy": {"seeds": 20}}}},
         "train.decision_grid.resolution", "decision-grid logits"),
        (toy(epochs=[10**8]), "train.experiments.toy.epochs", "loss curves"),
        (blobs(data={"n_samples": 10**10}), "train.experiments.blobs.data.n_samples",
         "per-point buffers, test predictions and data"),
        (blobs(seeds=list(range(0, 2 * 10**6, 2))), "train.experiments.blobs.seeds", "decision-grid logits"),
    ],
)
def test_training_jobs_that_cannot_fit_are_refused_naming_the_key_that_grew(override, key, largest):
    message = refused(override)
    assert message.startswith(f"invalid config at '{key}': ")
    assert "training job of " in message and " needs at least " in message
    assert f"({largest} " in message  # the parts, largest first
    assert "more than this machine's 16.0 GiB of memory). Allowed: a job that fits in 16.0 GiB" in message


def test_training_estimate_grows_with_members_and_ignores_the_gpu_side():
    exp = checked({})["train"]["experiments"]["toy"]
    grid = {"resolution": 60, "margin": 1.0}
    cpu = sum(p.nbytes for p in training_parts("toy", exp, grid, "cpu"))
    cuda = sum(p.nbytes for p in training_parts("toy", exp, grid, "cuda"))
    double = sum(p.nbytes for p in training_parts("toy", dict(exp, seeds=32), grid, "cpu"))
    assert 0 < cuda < cpu and double == pytest.approx(2 * cpu, rel=0.01)
    assert max(p.nbytes for p in matmul_parts(checked({})["matmul"], "cpu")) == 512 * 2**20


def test_machine_memory_is_the_physical_memory():
    import os

    memory = machine_memory()
    assert memory == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") and memory > 0


def test_the_lessons_machine_id_is_refused():
    """'lesson' is the lesson's slides' row in the machine comparison."""
    message = refused({"machine_id": LESSON_MACHINE})
    assert message.startswith("invalid config at 'machine_id': \"lesson\" is not allowed "
                              "(\"lesson\" names the lesson's slides in the machine comparison)")
    assert "Allowed: any other name" in message
    assert checked({"machine_id": "lesson-laptop"})["machine_id"] == "lesson-laptop"


def test_a_host_named_like_the_lesson_needs_a_machine_id(monkeypatch):
    monkeypatch.setattr("socket.gethostname", lambda: "Lesson.example.org")
    message = refused({})
    assert message.startswith("invalid config at 'machine_id': null is not allowed"), message
    assert "this host's name, which is \"lesson\"" in message


def test_checking_imports_no_heavy_library():
    """common.smk imports mlpbench.checks on every snakemake call: no torch, NumPy or pandas."""
    code = ("import sys, mlpbench.checks; "
            "print(sorted(m for m in ('torch', 'numpy', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
