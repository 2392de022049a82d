"""Config checks that turn a JSON-schema failure into one plain sentence.

The workflow validates the config with ``snakemake.utils.validate`` against
``workflow/schemas/config.schema.yaml`` before any job runs; this module only makes the
resulting error readable: which key, which value, and what is allowed.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import socket
from typing import Any

from jsonschema.exceptions import ValidationError


def key_path(path) -> str:
    """``['train', 'datasets', 'toy', 'width', 0]`` -> ``train.datasets.toy.width[0]``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _resolve(schema: dict, root: dict) -> dict:
    """Follow a local ``$ref`` (``#/$defs/...``) and merge it under the sibling keywords."""
    ref = schema.get("$ref")
    if not ref or not ref.startswith("#/"):
        return schema
    target = root
    for part in ref[2:].split("/"):
        target = target[part]
    merged = dict(_resolve(target, root))
    merged["properties"] = {**target.get("properties", {}), **schema.get("properties", {})}
    merged.update({k: v for k, v in schema.items() if k not in ("$ref", "properties")})
    return merged


def _allowed(schema: dict, root: dict) -> str:
    schema = _resolve(schema, root)
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    if "properties" in schema and schema.get("propertyNames", {}).get("enum"):
        return "keys " + ", ".join(schema["propertyNames"]["enum"])
    if "properties" in schema:
        return "keys " + ", ".join(schema["properties"])
    bounds = []
    for word, key in (("type", "type"), (">=", "minimum"), (">", "exclusiveMinimum"),
                      ("<=", "maximum"), ("<", "exclusiveMaximum")):
        if key in schema:
            bounds.append(f"{word} {schema[key]}")
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
    allowed = _allowed(error.schema, root)
    description = _resolve(error.schema, root).get("description")
    if error.validator == "oneOf" and description:
        allowed = description
    return f"invalid config at '{where}': {what}. Allowed: {allowed.rstrip('.')}."


def find_validation_error(exc: BaseException) -> ValidationError | None:
    """Snakemake wraps the jsonschema error in a WorkflowError; dig it out."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ValidationError):
            return exc
        inner = [a for a in getattr(exc, "args", ()) if isinstance(a, BaseException)]
        exc = inner[0] if inner else (exc.__cause__ or exc.__context__)
    return None




def config_hash(config: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the effective config (sorted keys, no whitespace)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                           allow_nan=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def machine_id(explicit: str | None = None) -> str:
    """``explicit`` if given (checked: it names files), else the sanitised short hostname."""
    if explicit is not None:
        if not isinstance(explicit, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", explicit):
            raise ValueError(
                f"machine_id: got {explicit!r}; allowed: letters, digits, '.', '_', '-', "
                "starting with a letter or digit"
            )
        return explicit
    name = (socket.gethostname() or platform.node()).split(".")[0].lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", name).strip("-_")
    return name or "unknown-host"
