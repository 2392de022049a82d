"""A bad config stops the run before any job, naming the key, the value and what is allowed."""

from __future__ import annotations

import pytest
import yaml
from jsonschema import Draft202012Validator

from mlpbench.config import (
    ConfigError,
    command_line_value,
    config_hash,
    explain,
    key_path,
    machine_id,
    main,
    read_config_file,
    validate_config,
)
from mlpbench.data import config_schema
from workflow_helpers import REPO, copy_pipeline, snakemake

# The schema as the workflow checks it: with the registered data sets filled in.
SCHEMA = config_schema(yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text()))


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
        ({"machine_id": "../etc"}, ["machine_id", '"../etc"', "does not match"]),
        ({"train": {"threads": 0}}, ["train.threads", ">= 1"]),
        ({"train": {"decision_grid": {"resolution": 1}}}, ["train.decision_grid.resolution", ">= 2"]),
        ({"train": {"experiments": {"toy": {"seeds": [1, 1]}}}}, ["toy.seeds", "distinct integers"]),
        ({"train": {"experiments": {"toy": {"seeds": [2**63]}}}}, ["toy.seeds", "2**63 - 1"]),
        ({"train": {"experiments": {"toy": {"mode": "random"}}}}, ["toy.mode", "'sweep', 'grid'"]),
        ({"train": {"experiments": {"toy": {"momentum": 1.5}}}}, ["toy.momentum", "< 1"]),
        ({"train": {"experiments": {"toy": {"batch_size": 0}}}}, ["toy.batch_size", ">= 1"]),
        ({"train": {"experiments": {"toy": {"baseline": {"width": 0}}}}}, ["toy.baseline.width", ">= 1"]),
        ({"train": {"experiments": {"toy": {"epochs": [20.5]}}}}, ["toy.epochs[0]", "20.5", "integer"]),
        ({"train": {"experiments": {"blobs": {"data": {"test_size": 1.5}}}}},
         ["blobs.data.test_size", "1.5", "< 1"]),
        ({"train": {"experiments": {"blobs": {"data": {"random_state": 2**32}}}}},
         ["blobs.data.random_state", "<= 4294967295"]),
    ],
)
def test_schema_errors_name_key_value_and_allowed(config, expected):
    message = first_error(config)
    for fragment in expected:
        assert fragment in message, message


def test_defaults_are_the_lessons():
    config: dict = {}
    validate_config(config, SCHEMA)
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


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("matmul:\n  threads: [1\n", "is not valid YAML: line 3, column 1: expected ',' or ']'"),
        ("matmul:\n\tthreads: 1\n", "is not valid YAML: line 2, column 1: found character '\\t'"),
        ("matmul:\n  threads: 1\n bad: 2\n", "is not valid YAML: line 3, column 2:"),
        ("", "must hold a mapping of keys at its top level, got nothing"),
        ("- cpu\n", "must hold a mapping of keys at its top level, got a list"),
        ("threads\n", "must hold a mapping of keys at its top level, got 'threads'"),
    ],
)
def test_broken_config_file_is_named_in_one_line(tmp_path, text, expected):
    path = tmp_path / "my.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        read_config_file(path)
    message = str(raised.value)
    assert message.startswith(f"config file {path} ") and expected in message, message
    assert "\n" not in message


def test_config_file_read_as_json_then_yaml(tmp_path):
    (tmp_path / "a.json").write_text('{"matmul": {"threads": 2}}')
    (tmp_path / "a.yaml").write_text("matmul: {threads: 2, devices: [cpu]}\nmachine_id: null\n")
    assert read_config_file(tmp_path / "a.json") == {"matmul": {"threads": 2}}
    assert read_config_file(tmp_path / "a.yaml") == {"matmul": {"threads": 2, "devices": ["cpu"]},
                                                     "machine_id": None}
    with pytest.raises(ConfigError, match=r"^config file \S+missing.yaml not found$"):
        read_config_file(tmp_path / "missing.yaml")


def test_command_line_values_are_read_as_yaml():
    assert command_line_value("matmul={threads: 1, devices: [cpu]}") == {
        "matmul": {"threads": 1, "devices": ["cpu"]}}
    assert command_line_value('matmul={"threads": 1}') == {"matmul": {"threads": 1}}
    assert command_line_value("train={experiments: {toy: {batch_size: null, lr: [0.01]}}}") == {
        "train": {"experiments": {"toy": {"batch_size": None, "lr": [0.01]}}}}
    # Plain values keep Snakemake's own reading.
    assert command_line_value("machine_id=lab-pc") is None
    assert command_line_value("machine_id=") is None
    with pytest.raises(ConfigError, match=r"^--config matmul: '\{threads: 1' is not valid YAML: "
                                          r"line 1, column 12: expected ',' or '\}'"):
        command_line_value("matmul={threads: 1")
    with pytest.raises(ConfigError, match="--config matmul: .* could not determine a constructor"):
        command_line_value("matmul={a: !!python/name:os.system }")


def test_check_command_names_broken_files(tmp_path, capsys):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("matmul: {threads: 2}\n")
    bad.write_text("matmul: {threads: 2\n")
    assert main([str(good)]) == 0
    assert main([str(good), str(bad), str(tmp_path / "missing.yaml")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"config file {bad} is not valid YAML: line 2, column 1:")
    assert err[1] == f"config file {tmp_path / 'missing.yaml'} not found"
    assert len(err) == 2
    assert main([]) == 2


def one_line_error(result, fragment: str) -> str:
    """The run failed before any job, without a traceback, with ``fragment`` on one line."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if fragment in line]
    assert len(lines) == 1, output
    return lines[0]


def test_broken_default_config_names_file_line_and_column(tmp_path):
    work = copy_pipeline(tmp_path)
    (work / "config" / "config.yaml").write_text("matmul:\n  threads: [1\n")
    line = one_line_error(snakemake(work, "--dry-run"), "config/config.yaml")
    assert "config file config/config.yaml is not valid YAML: line 3, column 1:" in line
    assert not (work / "results").exists()


def test_missing_default_config_is_one_line_unless_a_configfile_is_given(tmp_path):
    work = copy_pipeline(tmp_path)
    (work / "config" / "config.yaml").unlink()
    one_line_error(snakemake(work, "--dry-run"),
                   "Workflow defines configfile config/config.yaml but it is not present")
    (work / "tiny.yaml").write_text((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    result = snakemake(work, "--dry-run", "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stderr[-2000:]


def test_broken_command_line_value_names_the_key(tmp_path):
    work = copy_pipeline(tmp_path)
    line = one_line_error(snakemake(work, "--dry-run", "--config", "matmul={threads: 1"), "--config matmul")
    assert "'{threads: 1' is not valid YAML: line 1, column 12" in line


def test_wrong_nested_command_line_value_is_a_schema_error(tmp_path):
    work = copy_pipeline(tmp_path)
    result = snakemake(work, "--dry-run", "--config", "matmul={threads: -1, devices: [cpu]}")
    one_line_error(result, "invalid config at 'matmul.threads': -1 is not allowed")
    result = snakemake(work, "--dry-run", "--config", "train={experiments: {toy: {sedes: 4}}}")
    one_line_error(result, "invalid config at 'train.experiments.toy'")


def test_snakemake_refuses_dotted_keys_as_the_readme_says(tmp_path):
    work = copy_pipeline(tmp_path)
    result = snakemake(work, "--dry-run", "--config", "matmul.threads=2")
    assert result.returncode != 0
    assert "Config entry must start with a valid identifier" in result.stdout + result.stderr
    readme = " ".join((REPO / "README.md").read_text().split())
    assert '--config matmul.threads=2` stops with "Config entry must start with a valid identifier"' in readme


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("train={experiments: {toy: {lr: [.nan]}}}",
         "invalid config at 'train.experiments.toy.lr[0]': NaN is not allowed (not a finite number)"),
        ("matmul={bandwidth_mib: 10000000}",
         "invalid config at 'matmul.bandwidth_mib': 10000000 is not allowed (the bandwidth reference"),
    ],
)
def test_what_the_schema_cannot_say_stops_snakemake_in_one_line(tmp_path, value, fragment):
    work = copy_pipeline(tmp_path)
    line = one_line_error(snakemake(work, "--dry-run", "--config", value), fragment)
    assert "Allowed: " in line
    assert not (work / "results").exists()


def test_integer_valued_floats_run_as_integers(tmp_path):
    work = copy_pipeline(tmp_path)
    (work / "tiny.yaml").write_text((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    result = snakemake(work, "--dry-run", "--configfile", "tiny.yaml",
                       "--config", "train={experiments: {toy: {epochs: [20.0, 50.0], seeds: 3.0}}}")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def snapshot(folder) -> dict:
    """Every file under ``folder``: its bytes and modification time."""
    return {path.relative_to(folder): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_refused_cross_field_config_leaves_existing_results_byte_identical(tmp_path):
    work = copy_pipeline(tmp_path)
    tiny = (REPO / "tests" / "configs" / "tiny.yaml").read_text()
    (work / "tiny.yaml").write_text(tiny)
    good = snakemake(work, "results/machine/test-machine.json", "--cores", "1",
                     "--configfile", "tiny.yaml")
    assert good.returncode == 0, good.stderr[-2000:]
    before = snapshot(work / "results")
    assert before
    # Passes the schema; its grid's baseline (width 16) is not on the grid's width axis [4, 8].
    bad = yaml.safe_load(tiny)
    bad["train"]["experiments"]["blobs"]["baseline"]["width"] = 16
    (work / "bad.yaml").write_text(yaml.safe_dump(bad))
    line = one_line_error(snakemake(work, "--cores", "1", "--configfile", "bad.yaml"),
                          "invalid config at 'train.experiments.blobs.baseline.width'")
    assert "16 is not allowed" in line and "Allowed: one of train.experiments.blobs.width: 4, 8." in line
    assert snapshot(work / "results") == before
