"""A bad config stops the run before any job, naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft202012Validator

from mlpbench.config import config_hash, explain, key_path, machine_id
from workflow_helpers import REPO, copy_pipeline, snakemake

SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def first_error(config: dict) -> str:
    error = next(iter(sorted(Draft202012Validator(SCHEMA).iter_errors(config), key=str)))
    return explain(error, SCHEMA)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"train": {"experiments": {"toy": {"width": [0]}}}}, ["train.experiments.toy.width[0]", "0", ">= 1"]),
        ({"train": {"experiments": {"toy": {"depth": [-1]}}}}, ["train.experiments.toy.depth[0]", "-1", ">= 1"]),
        ({"train": {"experiments": {"toy": {"epochs": [0]}}}}, ["epochs[0]", ">= 1"]),
        ({"train": {"experiments": {"toy": {"lr": [0]}}}}, ["lr[0]", "> 0"]),
        ({"train": {"experiments": {"toy": {"width": []}}}}, ["train.experiments.toy.width", "at least 1"]),
        ({"train": {"datasets": ["mnist"]}}, ["mnist", "toy", "blobs"]),
        ({"train": {"devices": ["gpu"]}}, ["train.devices[0]", '"gpu"', "'cpu', 'cuda'"]),
        ({"matmul": {"dtypes": ["float16"]}}, ["matmul.dtypes[0]", "float32", "float64"]),
        ({"train": {"experiments": {"toy": {"widht": [8]}}}}, ["'widht'", "width"]),
        ({"train": {"experiments": {"toy": {"data": {}}}}}, ["'data'"]),
        ({"train": {"experiments": {"toy": {"seeds": 0}}}}, ["seeds", "integer n >= 1"]),
        ({"matmul": {"min_run_time_s": 0}}, ["matmul.min_run_time_s", "> 0"]),
    ],
)
def test_schema_errors_name_key_value_and_allowed(config, expected):
    message = first_error(config)
    for fragment in expected:
        assert fragment in message, message


def test_defaults_are_the_lessons():
    from snakemake.utils import validate

    config: dict = {}
    validate(config, str(REPO / "workflow" / "schemas" / "config.schema.yaml"))
    toy = config["train"]["experiments"]["toy"]
    assert toy["baseline"] == {"epochs": 1000, "width": 4, "depth": 1, "lr": 0.001}
    assert toy["batch_size"] is None and toy["momentum"] == 0.0
    assert config["train"]["datasets"] == ["toy", "blobs"]
    blobs = config["train"]["experiments"]["blobs"]["data"]
    assert blobs == {"n_samples": 400, "centers": 4, "cluster_std": 2.0, "random_state": 10,
                     "test_size": 0.4, "split_random_state": 2}
    assert config["matmul"]["lesson_case"] == {"m": 1, "k": 6400, "n": 5000}


def test_default_config_file_is_valid():
    errors = list(Draft202012Validator(SCHEMA).iter_errors(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    assert errors == []


def test_helpers():
    assert key_path(["a", "b", 0, "c"]) == "a.b[0].c"
    assert machine_id("lab-pc_1") == "lab-pc_1"
    assert machine_id(None) and "/" not in machine_id(None)
    with pytest.raises(ValueError, match="machine_id"):
        machine_id("../etc")
    assert config_hash({"a": 1, "b": [2]}) == config_hash({"b": [2], "a": 1})
    assert config_hash({"a": 1}) != config_hash({"a": 2})


def test_bad_config_stops_snakemake_before_any_job(tmp_path):
    work = copy_pipeline(tmp_path)
    (work / "bad.yaml").write_text("train:\n  experiments:\n    toy:\n      width: [0]\n")
    result = snakemake(work, "--cores", "1", "--configfile", "bad.yaml")
    assert result.returncode != 0
    assert "invalid config at 'train.experiments.toy.width[0]'" in result.stderr + result.stdout
    assert not (work / "results").exists()


def test_machine_id_defaults_to_a_sanitised_short_hostname(monkeypatch):
    import mlpbench.config as cfg

    monkeypatch.setattr(cfg.socket, "gethostname", lambda: "My Host!.example.org")
    assert machine_id(None) == "my-host"
    monkeypatch.setattr(cfg.socket, "gethostname", lambda: "...")
    monkeypatch.setattr(cfg.platform, "node", lambda: "")
    assert machine_id(None) == "unknown-host"
