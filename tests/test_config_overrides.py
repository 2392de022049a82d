"""The README's examples of changing nested keys work as written.

The examples are taken from the "Configuration" section of README.md itself (its override files
and its ``snakemake`` command lines), run as dry runs in a temporary copy of the pipeline, and
the effective config (after the merge, the validation and the schema's defaults) is compared with
what the README says they do: each file or ``--config`` value, read as YAML, merged over the
default config, nested keys key by key, lists replaced whole.
"""

from __future__ import annotations

import copy
import json
import re
import shlex

import pytest
import yaml

from workflow_helpers import REPO, copy_pipeline, snakemake

# Appended to the copy's Snakefile: the config every rule sees, written at parse time.
DUMP_CONFIG = """

import json as _json

with open("effective-config.json", "w") as _handle:
    _json.dump(config, _handle)
"""


def configuration_section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("\n## Configuration\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", configuration_section(), re.S | re.M)


def override_files() -> dict[str, str]:
    """YAML blocks whose first line names the file (``# quick.yaml: ...``), by name."""
    files = {}
    for block in code_blocks("yaml"):
        named = re.match(r"#\s*([\w.-]+\.ya?ml)\b", block)
        if named:
            files[named.group(1)] = block
    return files


def commands() -> list[list[str]]:
    return [
        shlex.split(line, comments=True)
        for block in code_blocks("bash")
        for line in block.splitlines()
        if line.startswith("snakemake ")
    ]


def merged(base: dict, override: dict) -> dict:
    """``override`` over ``base`` as the README describes: mappings key by key, the rest replaced."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def requested(command: list[str], work) -> dict:
    """The keys a README command changes: its --configfile files, then its --config values."""
    files, values, option = {}, {}, None
    for arg in command[1:]:
        if arg.startswith("-"):
            option = arg
        elif option in ("--configfile", "--configfiles"):
            files = merged(files, yaml.safe_load((work / arg).read_text()))
        elif option in ("--config", "-C"):
            key, _, text = arg.partition("=")
            values = merged(values, {key: yaml.safe_load(text)})
    return merged(files, values)


def effective_config(work, *args: str) -> dict:
    out = work / "effective-config.json"
    out.unlink(missing_ok=True)
    result = snakemake(work, *args, "--dry-run")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    work = copy_pipeline(tmp_path_factory.mktemp("overrides"))
    with open(work / "workflow" / "Snakefile", "a") as handle:
        handle.write(DUMP_CONFIG)
    for name, text in override_files().items():
        (work / name).write_text(text)
    return work


@pytest.fixture(scope="module")
def default_config(pipeline):
    return effective_config(pipeline, "--cores", "1")


def test_readme_shows_both_forms_for_the_keys_people_change():
    assert override_files(), "no override file (a yaml block starting '# name.yaml') in README"
    found = commands()
    assert any("--configfile" in command for command in found)
    assert any("--config" in command for command in found)

    def leaves(tree, path=()):
        for key, value in tree.items():
            if isinstance(value, dict):
                yield from leaves(value, (*path, key))
            else:
                yield (*path, key)

    changed = set()
    for text in override_files().values():
        changed |= {leaf[-1] for leaf in leaves(yaml.safe_load(text))}
    for command in found:
        for arg in command:
            key, sep, text = arg.partition("=")
            if sep and not arg.startswith("-"):
                value = yaml.safe_load(text)
                changed |= {leaf[-1] for leaf in leaves(value)} if isinstance(value, dict) else {key}
    assert {"threads", "seeds", "epochs", "devices"} <= changed, changed


@pytest.mark.parametrize("command", commands(), ids=shlex.join)
def test_readme_example_gives_the_config_it_describes(pipeline, default_config, command):
    assert command[0] == "snakemake"
    override = requested(command, pipeline)
    assert override, f"the example changes nothing: {shlex.join(command)}"
    assert effective_config(pipeline, *command[1:]) == merged(default_config, override)


def test_nested_command_line_value_is_typed_and_merged(pipeline, default_config):
    config = effective_config(pipeline, "--cores", "1", "--config",
                              "matmul={threads: 3}", "train={experiments: {toy: {batch_size: null}}}")
    assert config["matmul"]["threads"] == 3
    assert config["matmul"]["devices"] == default_config["matmul"]["devices"]
    assert config["train"]["experiments"]["toy"]["batch_size"] is None
    assert config["train"]["experiments"]["toy"]["seeds"] == default_config["train"]["experiments"]["toy"]["seeds"]


def test_command_line_value_comes_after_configfile(pipeline):
    (pipeline / "two-threads.yaml").write_text("matmul:\n  threads: 2\n  devices: [cpu]\n")
    config = effective_config(pipeline, "--cores", "1", "--configfile", "two-threads.yaml",
                              "--config", "matmul={threads: 1}")
    assert config["matmul"]["threads"] == 1
    assert config["matmul"]["devices"] == ["cpu"]
