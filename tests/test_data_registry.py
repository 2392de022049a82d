"""The data set registry: every entry is what it declares, and the config schema follows it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from jsonschema import ValidationError

from mlpbench import data
from mlpbench.config import explain, validate_config
from mlpbench.data import DatasetEntry
from workflow_helpers import REPO



@pytest.fixture
def registry(monkeypatch):
    """A copy of the registry that a test may add to; the real one is back afterwards."""
    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    return data


@pytest.fixture(scope="module")
def static_schema() -> dict:
    return yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def line(n_points: int = 6, offset: float = 0.0) -> data.Dataset:
    """A fixed little data set: points on a line, two classes by sign."""
    xs = [[i - n_points / 2 + offset, 0.0] for i in range(n_points)]
    ys = [int(x[0] > 0) for x in xs]
    return data._dataset("line", xs[::2], ys[::2], xs[1::2], ys[1::2], n_classes=2)


def line_entry(**changes) -> DatasetEntry:
    fields = {
        "name": "line", "generator": line, "n_classes": lambda p: 2,
        "split_sizes": lambda p: ((p["n_points"] + 1) // 2, p["n_points"] // 2),
        "split": "every other point", "title": "Line",
        "parameters": {"n_points": {"type": "integer", "minimum": 2}, "offset": {"type": "number"}},
    }
    return DatasetEntry(**(fields | changes))


def test_the_lessons_data_sets_are_registered_in_order():
    assert data.names() == ("toy", "blobs")
    assert data.get("toy").parameters == {} and data.get("toy").defaults == {}
    assert data.BLOBS_DEFAULTS == {"n_samples": 400, "centers": 4, "cluster_std": 2.0,
                                   "random_state": 10, "test_size": 0.4, "split_random_state": 2}


@pytest.mark.parametrize(
    ("name", "cfg"),
    [("toy", None), ("blobs", None),
     ("blobs", {"data": {"n_samples": 100, "centers": 3, "test_size": 0.5}}),
     ("blobs", {"data": {"n_samples": 7, "test_size": 0.4}}),
     ("blobs", {"data": {"n_samples": 1001, "test_size": 0.33}})],
)
def test_declared_sizes_are_those_of_the_built_data(name, cfg):
    """The config check counts a data set without building it; the counts are the real ones."""
    ds = data.load(name, cfg)
    assert ds.name == name
    assert data.split_sizes(name, cfg) == (len(ds.y_train), len(ds.y_test))
    assert data.n_classes(name, cfg) == ds.n_classes
    assert data.get(name).n_features == ds.n_features


def test_config_schema_holds_every_registered_data_set(static_schema):
    schema = data.config_schema(static_schema)
    assert schema["$defs"]["dataset"]["enum"] == ["toy", "blobs"]
    experiments = schema["properties"]["train"]["properties"]["experiments"]["properties"]
    assert list(experiments) == ["toy", "blobs"]
    assert "properties" not in experiments["toy"]  # toy is fixed: no data: key
    blobs = experiments["blobs"]["properties"]["data"]["properties"]
    assert {key: block["default"] for key, block in blobs.items()} == data.BLOBS_DEFAULTS
    assert static_schema["$defs"]["dataset"]["enum"] == []  # the file itself is left as it was


def test_registering_a_data_set_is_all_it_takes(registry, static_schema):
    registry.register(line_entry())
    assert registry.names() == ("toy", "blobs", "line")
    schema = registry.config_schema(static_schema)
    config = {"train": {"datasets": ["line"], "experiments": {"line": {"data": {"n_points": 8}}}}}
    validate_config(config, schema)
    line_cfg = config["train"]["experiments"]["line"]
    assert line_cfg["data"] == {"n_points": 8, "offset": 0.0}  # the generator's default filled in
    assert line_cfg["mode"] == "sweep" and line_cfg["seeds"] == 16  # the experiment's defaults
    ds = registry.load("line", line_cfg)
    assert ds.x_train.shape == (4, 2) and ds.n_classes == 2
    assert registry.split_sizes("line", line_cfg) == (4, 4)

    bad = {"train": {"experiments": {"line": {"data": {"n_points": 1}}}}}
    with pytest.raises(ValidationError) as err:
        validate_config(bad, schema)
    assert "'train.experiments.line.data.n_points': 1 is not allowed" in explain(err.value, schema)
    with pytest.raises(ValidationError) as err:
        validate_config({"train": {"datasets": ["moons"]}}, schema)
    assert "Allowed: one of 'toy', 'blobs', 'line'." in explain(err.value, schema)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "blobs"}, r"^name: got 'blobs'; allowed: a name not yet registered"),
        ({"name": "Line"}, r"^name: got 'Line'; allowed: a lower-case Python identifier"),
        ({"name": "two-words"}, r"^name: got 'two-words'"),
        ({"parameters": {"n_pts": {"type": "integer"}}},
         r"^line\.parameters: got 'n_pts'; allowed: keyword arguments with a default of line\(\)"),
    ],
)
def test_register_rejects_a_bad_entry_naming_the_field(registry, changes, message):
    with pytest.raises(ValueError, match=message):
        registry.register(line_entry(**changes))
    assert registry.names() == ("toy", "blobs")


def test_defaults_are_copies_not_shared_between_keys(static_schema):
    schema = data.config_schema(static_schema)
    config: dict = {}
    validate_config(config, schema)
    toy, blobs = (config["train"]["experiments"][n] for n in ("toy", "blobs"))
    assert toy["baseline"] == blobs["baseline"] and toy["baseline"] is not blobs["baseline"]
    toy["baseline"]["width"] = 8
    assert blobs["baseline"]["width"] == 4


def test_importing_the_registry_imports_neither_torch_nor_sklearn():
    code = ("import sys, mlpbench.data as d; d.names(); d.get('blobs').data_schema(); "
            "print(sorted(m for m in ('torch', 'sklearn', 'numpy', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", data.names())
def test_points_without_torch_are_the_points_the_network_sees(name):
    """``data.points`` (the aggregation's torch-free reader) gives exactly ``data.load``'s
    points, with the dtypes the network trains on, for every registered data set."""
    import numpy as np

    got, ds = data.points(name), data.load(name)
    for key in ("x_train", "x_test", "y_train", "y_test"):
        want = getattr(ds, key).numpy()
        assert got[key].dtype == want.dtype and np.array_equal(got[key], want), key


def test_points_of_an_entry_without_arrays_come_from_its_generator(monkeypatch):
    import dataclasses

    import numpy as np

    entry = dataclasses.replace(data.get("blobs"), name="blobs_copy", arrays=None)
    monkeypatch.setitem(data._REGISTRY, "blobs_copy", entry)
    got, want = data.points("blobs_copy", {"data": {"n_samples": 40}}), data.points(
        "blobs", {"data": {"n_samples": 40}})
    assert all(np.array_equal(got[k], want[k]) for k in want)
