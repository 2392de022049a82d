"""Reading and checking the config: every failure is one plain sentence.

The workflow validates the config with ``snakemake.utils.validate`` against
``workflow/schemas/config.schema.yaml`` before any job runs; this module makes the resulting
error readable (which key, which value, and what is allowed), reads config files with errors
that name the file, line and column, and reads nested ``--config KEY={...}`` values as YAML.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import socket
from collections.abc import Mapping
from typing import Any

import yaml
from jsonschema.exceptions import ValidationError


def key_path(path) -> str:
    """``['train', 'datasets', 'toy', 'width', 0]`` -> ``train.datasets.toy.width[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def resolve(schema: dict, root: dict) -> dict:
    """Follow a local ``$ref`` (``#/$defs/...``) and merge it under the sibling keywords."""
    ref = schema.get("$ref")
    if not ref or not ref.startswith("#/"):
        return schema
    target = root
    for part in ref[2:].split("/"):
        target = target[part]
    merged = dict(resolve(target, root))
    merged["properties"] = {**target.get("properties", {}), **schema.get("properties", {})}
    merged.update({k: v for k, v in schema.items() if k not in ("$ref", "properties")})
    return merged


def number_bounds(schema: dict) -> list[str]:
    """``[">= 1", "< 1"]``: the bounds a schema puts on a number, as the messages write them."""
    return [f"{word} {schema[key]}"
            for word, key in ((">=", "minimum"), (">", "exclusiveMinimum"),
                              ("<=", "maximum"), ("<", "exclusiveMaximum"))
            if key in schema]


def allowed_values(schema: dict, root: dict) -> str:
    """What the schema allows at a key, in words: its enum, keys, type and bounds, or description."""
    schema = resolve(schema, root)
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "properties" in schema and schema.get("propertyNames", {}).get("enum"):
        return "keys " + ", ".join(schema["propertyNames"]["enum"])
    if "properties" in schema:
        return "keys " + ", ".join(schema["properties"])
    bounds = [f"type {schema['type']}"] if "type" in schema else []
    bounds += number_bounds(schema)
    if schema.get("minItems"):
        bounds.append(f"at least {schema['minItems']} item(s)")
    return ", ".join(bounds) or schema.get("description", "see the schema")


def explain(error: ValidationError, root: dict) -> str:
    """One sentence naming the key, the offending value and what is allowed there."""
    where = key_path(error.absolute_path)
    if error.validator in ("additionalProperties", "unevaluatedProperties"):
        what = error.message
    elif error.validator in ("enum", "oneOf"):
        what = f"{json.dumps(error.instance, default=str)} is not allowed"
    else:
        what = f"{json.dumps(error.instance, default=str)} is not allowed ({error.message})"
    allowed = allowed_values(error.schema, root)
    description = resolve(error.schema, root).get("description")
    if error.validator == "oneOf" and description:
        allowed = description
    return invalid(where, what, allowed)


def invalid(where: str, what: str, allowed: str) -> str:
    """``invalid config at 'KEY': WHAT. Allowed: ALLOWED.``: the one style of every config error."""
    return f"invalid config at '{where}': {what}. Allowed: {allowed.rstrip('.')}."


def validate_config(config: dict[str, Any], schema: dict[str, Any]) -> None:
    """Validate ``config`` against the parsed ``schema`` (JSON Schema 2020-12), filling defaults.

    As ``snakemake.utils.validate`` does, a key left out takes its ``default`` (before its own
    keys are checked, so defaults fill nested mappings too); each default is a copy, so no two
    keys share one mutable value. Takes the schema as a document, not a file, so that the
    workflow can check against the schema with the registered data sets filled in (see
    :func:`mlpbench.data.config_schema`). Raises ``jsonschema.ValidationError`` at the first
    error, which :func:`explain` turns into one sentence.
    """
    import copy

    from jsonschema import Draft202012Validator, validators

    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    validator = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    validator(schema).validate(config)


class ConfigError(ValueError):
    """A config file or ``--config`` value that cannot be read; the message is one line."""


def _yaml_problem(err: yaml.YAMLError) -> str:
    """``line L, column C: problem (context at line L', column C')``, 1-based as editors count."""
    if not isinstance(err, yaml.MarkedYAMLError):
        return " ".join(str(err).split())
    where = ""
    if err.problem_mark is not None:
        where = f"line {err.problem_mark.line + 1}, column {err.problem_mark.column + 1}: "
    text = err.problem or "invalid YAML"
    if err.context:
        context = err.context
        mark = err.context_mark
        if mark is not None and (err.problem_mark is None or mark.line != err.problem_mark.line
                                 or mark.column != err.problem_mark.column):
            context += f" at line {mark.line + 1}, column {mark.column + 1}"
        text += f" ({context})"
    return where + text


def read_config_file(path) -> dict[str, Any]:
    """Read a config file as Snakemake does (JSON first, then YAML) and return its mapping.

    Raises ``ConfigError`` with a one-line message naming ``path``: the file is missing or
    unreadable; it is not valid YAML (with the line and column of the problem, 1-based); or
    its top level is not a mapping of keys (an empty file included).
    """
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} cannot be read: {err}") from None
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    if not isinstance(data, dict):
        got = "nothing" if data is None else "a list" if isinstance(data, list) else repr(data)
        raise ConfigError(f"config file {path} must hold a mapping of keys at its top level, "
                          f"got {got}")
    return data


def command_line_value(entry: str) -> dict[str, Any] | None:
    """``{key: value}`` for a ``--config KEY=VALUE`` entry whose value is a YAML mapping or list.

    ``matmul={threads: 1}`` gives ``{"matmul": {"threads": 1}}``: the value is read as YAML
    (``yaml.safe_load``), exactly as the same text in a config file. Snakemake itself reads such
    values with YAML's BaseLoader, which leaves every number inside them a string. Returns
    ``None`` when the value does not start with ``{`` or ``[`` (a plain scalar, which Snakemake's
    own reading keeps). Raises ``ConfigError`` naming the key when the value is not valid YAML.
    """
    key, _, text = entry.partition("=")
    if not text.lstrip().startswith(("{", "[")):
        return None
    try:
        return {key: yaml.safe_load(text)}
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {key}: {text!r} is not valid YAML: {_yaml_problem(err)}") from None


# Keys that say how the report is put together, not what the run measures (other machines'
# bundles): left out of the machine record, of its config hash and so of a bundle, so that
# changing them reruns only the aggregation, the figures and the report.
REPORT_ONLY_KEYS = ("compare",)

# The machine_id of the lesson's slides, a row of their own in the machine comparison
# (mlpbench.compare): reserved, so that no run and no bundle can mix its rows into theirs.
LESSON_MACHINE = "lesson"


def recorded_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The config a run records about itself: ``config`` without :data:`REPORT_ONLY_KEYS`."""
    return {k: v for k, v in config.items() if k not in REPORT_ONLY_KEYS}


def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the effective config (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def machine_id(explicit: str | None = None) -> str:
    """``explicit`` if given (the schema's pattern has checked it), else the sanitised short hostname."""
    if explicit is not None:
        return explicit
    name = (socket.gethostname() or platform.node()).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")
    return name or "unknown-host"


def main(argv: list[str] | None = None) -> int:
    """``python -m mlpbench.config FILE...``: read each config file, one line per broken one.

    Snakemake reads ``--configfile`` files before the workflow starts and names neither the file
    nor the line of a YAML error; this names both. Returns the exit status (1 if any is broken).
    """
    import sys

    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python -m mlpbench.config FILE...", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        try:
            read_config_file(path)
        except ConfigError as err:
            print(err, file=sys.stderr)
            status = 1
        else:
            print(f"config file {path}: valid YAML, a mapping of keys")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
