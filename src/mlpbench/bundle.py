"""Bundles: one run's results as one shareable zip file, and the checks that read one back.

A bundle (``results/bundles/<machine_id>.zip``, written by ``snakemake --cores 1 bundle``)
holds, under their paths relative to ``results/``:

- ``manifest.json`` (the first member): ``format`` (:data:`FORMAT`), ``format_version``
  (:data:`FORMAT_VERSION`), ``machine_id``, ``created_utc`` (when the run's machine record was
  written, ISO 8601), ``config_hash``, ``git_commit``, ``git_dirty``, ``packages`` (name ->
  version: the run's, from its machine record, plus the ``mlpbench`` and ``pyarrow`` that wrote
  the bundle), ``hardware`` (:attr:`Bundle.hardware`) and ``members`` (path -> ``sha256`` hex
  digest and size in ``bytes`` of every other member);
- ``machine.json``: the run's machine record (``results/machine/<machine_id>.json``), with the
  thread pools' library paths cut to file names (:func:`shareable_record`);
- ``config.yaml``: the run's effective config (as its machine record holds it);
- the stage tables, byte for byte as the run wrote them: ``matmul/<device>.parquet`` with its
  ``.environment`` and ``.samples`` tables, ``train/<dataset>/<device>/<table>.parquet`` for
  every training table except the decision grid (``decision.parquet``) and the per-epoch loss
  curves (``losses.parquet``): the two largest tables, together about 21 MB of the default
  run's 22 MB of stage tables, and neither compared across machines (the comparison checks
  each member's loss and accuracies at every checkpoint, from ``metrics.parquet``); and
  ``lesson/<table>.parquet``. Which devices and data sets is read from the run's config, never
  globbed, so files of an earlier config are left out.

No member is a pickle: JSON, YAML and parquet only. Members are written in a fixed order with a
fixed timestamp, so the same results give the same bytes.

:func:`open_bundle` reads a zip entirely in memory (nothing is extracted) and refuses it, with a
:class:`BundleError` of one line ``<file>: <problem>; <what to do>``, before anything from it is
used, when it is not a zip, truncated or damaged, not a bundle, from a newer format, has a member
whose name is unsafe or unexpected, missing, not in the manifest, edited (checksum) or too large,
or a table that does not match the results contract (:mod:`mlpbench.contract`), or claims the
machine_id reserved for the lesson's slides (:data:`mlpbench.config.LESSON_MACHINE`).
:func:`load_bundles` also refuses a second bundle that claims an existing ``machine_id`` with
different hardware.

This module imports neither torch nor pandas.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from mlpbench import __version__ as _MLPBENCH_VERSION
from mlpbench import contract
from mlpbench.config import LESSON_MACHINE
from mlpbench.config import config_hash as _config_hash
from mlpbench.io import write_bytes_atomic

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "MAX_BUNDLE_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_MEMBERS",
    "MAX_TOTAL_BYTES",
    "Bundle",
    "BundleError",
    "bundle_from_results",
    "hardware",
    "host_hardware",
    "load_bundles",
    "member_paths",
    "open_bundle",
    "write_bundle",
]

PathLike = str | os.PathLike

FORMAT = "mlpbench-bundle"
# Raise it whenever a reader of the previous version would misread a new bundle (a member or a
# manifest field added, renamed or changed in meaning, a table's contract changed).
FORMAT_VERSION = 1

# Limits that keep a hostile or broken file from exhausting memory (a zip bomb): the zip itself,
# one member's and all members' uncompressed sizes, and the number of members. The default
# config's bundle is about 0.5 MB with 36 members, the manifest included.
MAX_BUNDLE_BYTES = 512 * 2**20
MAX_MEMBER_BYTES = 256 * 2**20
MAX_TOTAL_BYTES = 1024 * 2**20
MAX_MEMBERS = 2000

MANIFEST = "manifest.json"
MACHINE = "machine.json"
CONFIG = "config.yaml"
# Training tables left out of a bundle: large and not compared across machines. Without the
# loss curves (1.0 MB and 208,000 rows per data set in the default run) a bundle opens in a
# third of the time and holds a tenth of the memory, which is what keeps a merge of 100
# bundles within seconds; losses at every checkpoint stay in metrics.parquet.
LEFT_OUT_TRAIN_TABLES = ("decision", "losses")

# Every member's timestamp: the earliest a zip can store, so the same results give the same bytes.
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_RESULTS = "results/"
# A path part of a member name (device, data set): what Snakemake wildcards hold here.
_PART = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# The config schema's pattern of machine_id (workflow/schemas/config.schema.yaml).
_MACHINE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")

# libyaml's safe loader where PyYAML has it (several times faster), else PyYAML's own
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# The remedies, one per kind of problem.
_RESEND = ("ask its sender for the file again, written by `snakemake --cores 1 bundle` "
           "(results/bundles/<machine_id>.zip)")
_REWRITE = ("ask its sender to write it again with `snakemake --cores 1 bundle` and the same "
            "mlpbench version as yours, and to send the new file")


class BundleError(ValueError):
    """One line: ``<file>: <problem>; <what to do>``. Raised before anything from the bundle
    is used."""


@dataclass(frozen=True)
class Bundle:
    """One run's results, from a bundle file or from a results folder, checked.

    ``source``: the zip's path, or the results folder for this run's own results.
    ``manifest``: the manifest (see the module docstring). ``machine``: the machine record.
    ``config``: the run's effective config. ``tables``: Arrow tables keyed by their path relative
    to ``results/`` (e.g. ``"matmul/cpu.parquet"``, ``"train/toy/cpu/metrics.parquet"``,
    ``"lesson/ops.parquet"``), each checked against its contract (declared order and types).
    """

    source: str
    manifest: dict[str, Any]
    machine: dict[str, Any]
    config: dict[str, Any]
    tables: dict[str, pa.Table]

    @property
    def machine_id(self) -> str:
        return self.manifest["machine_id"]

    @property
    def hardware(self) -> dict[str, Any]:
        """The fingerprint that tells machines apart: ``cpu_model``, ``logical_cores``,
        ``physical_cores`` and ``gpu_names`` (one name per GPU, empty without CUDA)."""
        return self.manifest["hardware"]

    def table(self, name: str) -> pa.Table | None:
        """The table at ``name`` (path relative to ``results/``), or None when the run has none."""
        return self.tables.get(name)


# --------------------------------------------------------------------------- members


def _relative(template: str) -> str:
    return template.removeprefix(_RESULTS)


def _bundled_train_tables() -> list[str]:
    return [t for t in contract.TRAIN_TABLES if t not in LEFT_OUT_TRAIN_TABLES]


def _table_templates() -> list[contract.Table]:
    return [contract.MATMUL, contract.MATMUL_ENVIRONMENT, contract.MATMUL_SAMPLES,
            *(contract.TRAIN[t] for t in _bundled_train_tables()),
            *(contract.LESSON[t] for t in contract.LESSON_TABLES)]


def _template_pattern(template: str) -> re.Pattern[str]:
    parts = re.split(r"(\{device\}|\{dataset\})", _relative(template))
    return re.compile("".join(_PART if p in ("{device}", "{dataset}") else re.escape(p)
                              for p in parts))


# member name pattern -> its contract
_TABLE_PATTERNS = [(_template_pattern(t.path), t) for t in _table_templates()]


def _contract_of(member: str) -> contract.Table | None:
    for pattern, table in _TABLE_PATTERNS:
        if pattern.fullmatch(member):
            return table
    return None


def member_paths(config: Mapping[str, Any]) -> list[str]:
    """The table members of a run's bundle, in bundle order, as paths relative to ``results/``:
    for each of ``config``'s matmul devices its three matmul tables, for each of its training
    data sets x devices every training table but the decision grid and the loss curves
    (:data:`LEFT_OUT_TRAIN_TABLES`), then every lesson table.

    Raises ``KeyError``/``TypeError`` when ``config`` lacks ``matmul.devices``,
    ``train.datasets`` or ``train.devices`` (the effective config always has them).
    """
    out = []
    for device in config["matmul"]["devices"]:
        for table in (contract.MATMUL, contract.MATMUL_ENVIRONMENT, contract.MATMUL_SAMPLES):
            out.append(_relative(table.path).format(device=device))
    for dataset in config["train"]["datasets"]:
        for device in config["train"]["devices"]:
            for name in _bundled_train_tables():
                out.append(_relative(contract.TRAIN[name].path).format(dataset=dataset,
                                                                       device=device))
    out += [_relative(contract.LESSON[name].path) for name in contract.LESSON_TABLES]
    return out


def hardware(machine: Mapping[str, Any]) -> dict[str, Any]:
    """The hardware fingerprint of a machine record: ``cpu_model``, ``logical_cores``,
    ``physical_cores`` and ``gpu_names`` (the GPU's name once per device; empty when CUDA was
    unavailable)."""
    gpu = machine.get("gpu") or {}
    count = gpu.get("count") or 0
    names = [gpu.get("name")] * count if gpu.get("available") else []
    return {"cpu_model": machine.get("cpu_model"), "logical_cores": machine.get("logical_cores"),
            "physical_cores": machine.get("physical_cores"), "gpu_names": names}


def host_hardware() -> dict[str, Any]:
    """The hardware fingerprint of the machine this runs on, read without torch, as
    :func:`hardware` gives it from a machine record that this machine would write: ``cpu_model``,
    ``logical_cores`` and ``physical_cores`` as :mod:`mlpbench.cpu` reads them (and so as
    :mod:`mlpbench.machine` records them), and ``gpu_names`` empty where no GPU driver is
    installed (:func:`mlpbench.devices.no_driver_reason`).

    Where a driver is present, the GPUs' names cannot be read without importing torch (or
    running nvidia-smi, seconds on some machines), which parsing the workflow must not do:
    ``gpu_names`` is then left out, and :func:`load_bundles` compares the CPU alone.
    """
    from mlpbench.cpu import core_counts, cpu_model
    from mlpbench.devices import no_driver_reason

    physical, logical = core_counts()
    out: dict[str, Any] = {"cpu_model": cpu_model(), "logical_cores": logical,
                           "physical_cores": physical}
    if no_driver_reason() is not None:
        out["gpu_names"] = []
    return out


# --------------------------------------------------------------------------- writing


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _packages(machine: Mapping[str, Any]) -> dict[str, str | None]:
    packages = dict(machine.get("versions") or {})
    packages["mlpbench"] = _version("mlpbench") or _MLPBENCH_VERSION
    packages["pyarrow"] = _version("pyarrow") or pa.__version__
    return dict(sorted(packages.items()))


def shareable_record(machine: Mapping[str, Any]) -> dict[str, Any]:
    """The machine record as a bundle carries it: every thread pool's ``filepath`` cut to its
    file name (``libgomp.so.1``), so that a bundle shows which libraries ran, not the folders of
    the machine they were installed in (a home folder, say). Everything else as recorded."""
    out = json.loads(json.dumps(machine))
    for pool in (out.get("blas") or {}).get("threadpools") or []:
        if isinstance(pool, dict) and pool.get("filepath"):
            pool["filepath"] = Path(str(pool["filepath"])).name
    return out


def _config_text(config: Mapping[str, Any]) -> bytes:
    return yaml.safe_dump(dict(config), sort_keys=True, default_flow_style=False,
                          allow_unicode=True).encode()


def _collect(results: PathLike, machine_id: str) -> tuple[dict[str, bytes], Bundle]:
    """The members' bytes (manifest first, in bundle order) and the checked Bundle of a
    results folder."""
    results = Path(results)
    machine_path = results / "machine" / f"{machine_id}.json"
    remedy = f"rerun: snakemake --cores 4 --forcerun {machine_path}"
    try:
        machine_bytes = machine_path.read_bytes()
    except OSError as exc:
        raise BundleError(f"{machine_path}: cannot be read ({exc.strerror or exc}); "
                          f"{remedy}") from None
    machine = _parse_machine(machine_bytes, str(machine_path), remedy)
    if machine["machine_id"] != machine_id:
        raise BundleError(f"{machine_path}: machine_id is {machine['machine_id']!r}, expected "
                          f"{machine_id!r}; {remedy}")
    config = machine["config"]
    machine = shareable_record(machine)
    machine_bytes = json.dumps(machine, indent=2, sort_keys=True).encode()
    members: dict[str, bytes] = {MACHINE: machine_bytes, CONFIG: _config_text(config)}
    tables = {}
    for member in _member_paths_checked(config, str(machine_path), remedy):
        path = results / member
        table = _contract_of(member)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise BundleError(f"{path}: file not found; {table.remedy(path)}") from None
        except OSError as exc:
            raise BundleError(f"{path}: cannot be read ({exc.strerror or exc}); "
                              f"{table.remedy(path)}") from None
        try:
            tables[member] = _parse_table(data, table, str(path))
        except contract.ContractError as err:
            raise BundleError(str(err)) from None
        members[member] = data
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "machine_id": machine_id,
        "created_utc": machine["created_utc"],
        "config_hash": machine["config_hash"],
        "git_commit": machine["git_commit"],
        "git_dirty": machine["git_dirty"],
        "packages": _packages(machine),
        "hardware": hardware(machine),
        "members": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                    for name, data in members.items()},
    }
    ordered = {MANIFEST: _json_bytes(manifest), **members}
    return ordered, Bundle(str(results), manifest, machine, config, tables)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def bundle_from_results(results: PathLike, machine_id: str) -> Bundle:
    """This run's own results as a :class:`Bundle`, in memory: the same members and checks as
    a written bundle (no zip). ``results`` is the results folder, ``machine_id`` names its
    machine record ``results/machine/<machine_id>.json``, whose config says which tables belong
    to the run.

    Raises :class:`BundleError` (one line naming the file and the command that writes it again)
    when the record or a table is missing, unreadable or does not match its contract.
    """
    return _collect(results, machine_id)[1]


def _zip_bytes(members: Mapping[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            # parquet is compressed already (zstd); JSON and YAML deflate well
            info.compress_type = (zipfile.ZIP_STORED if name.endswith(".parquet")
                                  else zipfile.ZIP_DEFLATED)
            info.create_system = 3  # Unix, whatever system writes it
            info.external_attr = 0o644 << 16
            zf.writestr(info, data, compresslevel=9)
    return buffer.getvalue()


def write_bundle(results: PathLike, machine_id: str, out: PathLike) -> Path:
    """Write the bundle of the run in ``results`` (see :func:`bundle_from_results`) to ``out``
    (by convention ``results/bundles/<machine_id>.zip``), atomically; return ``out``.

    The bytes are read back with the checks of :func:`open_bundle` before they are written, so a
    written bundle always opens. Raises :class:`BundleError` as :func:`bundle_from_results`.
    """
    members, _ = _collect(results, machine_id)
    data = _zip_bytes(members)
    _open_bytes(data, os.fspath(out))
    write_bytes_atomic(data, out)
    return Path(out)


# --------------------------------------------------------------------------- reading


def _fail(source: str, problem: str, remedy: str) -> BundleError:
    return BundleError(f"{source}: {problem}; {remedy}")


def _parse_machine(data: bytes, where: str, remedy: str) -> dict[str, Any]:
    try:
        machine = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(where, f"not valid JSON ({exc})", remedy) from None
    if not isinstance(machine, dict):
        raise _fail(where, "not a machine record (a JSON object)", remedy)
    needed = ("machine_id", "cpu_model", "logical_cores", "physical_cores", "gpu", "versions",
              "git_commit", "git_dirty", "config_hash", "config", "created_utc")
    missing = [k for k in needed if k not in machine]
    if missing:
        raise _fail(where, f"machine record without {', '.join(missing)}", remedy)
    if not isinstance(machine["machine_id"], str) or not _MACHINE_ID.fullmatch(
            machine["machine_id"]):
        raise _fail(where, f"machine_id {machine['machine_id']!r} is not a machine id "
                           f"(letters, digits, '.', '_', '-', starting with a letter or digit)",
                    remedy)
    if machine["machine_id"] == LESSON_MACHINE:
        raise _fail(where, f"machine_id {LESSON_MACHINE!r} is reserved for the lesson's slides "
                           f"in the machine comparison; allowed: any other machine id",
                    "rerun with another name (`snakemake --cores 4 --config machine_id=NAME`, "
                    "then `snakemake --cores 1 bundle --config machine_id=NAME`) and use that "
                    "bundle")
    if not isinstance(machine["config"], dict):
        raise _fail(where, "the machine record holds no config", remedy)
    if _config_hash(machine["config"]) != machine["config_hash"]:
        raise _fail(where, "its config does not hash to its config_hash", remedy)
    return machine


def _member_paths_checked(config: Mapping[str, Any], where: str, remedy: str) -> list[str]:
    try:
        members = member_paths(config)
    except (KeyError, TypeError) as exc:
        raise _fail(where, f"its config has no usable matmul.devices, train.datasets or "
                           f"train.devices ({exc!r})", remedy) from None
    bad = [m for m in members if _contract_of(m) is None]
    if bad:
        raise _fail(where, f"its config names a device or data set that is not a path part "
                           f"({bad[0]!r})", remedy)
    return members


def _parse_table(data: bytes, table: contract.Table, where: str) -> pa.Table:
    """``data`` (parquet bytes) checked against ``table`` as :func:`mlpbench.contract.read`
    checks a file: ContractError naming ``where`` on any mismatch."""
    remedy = table.remedy(where)
    try:
        # one thread: a bundle's tables are small, and load_bundles reads bundles side by side
        arrow = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
    except (pa.ArrowException, OSError) as exc:
        text = " ".join(str(exc).split())[:120]
        raise contract.ContractError(f"{where}: not a readable parquet file ({text}); "
                                     f"{remedy}") from None
    extra = contract.check(arrow.schema, table, where)
    schema = table.schema(extra)
    for field in schema:
        if not field.nullable and arrow.column(field.name).null_count:
            raise contract.ContractError(
                f"{where}: column {field.name!r}: expected no missing values, found "
                f"{arrow.column(field.name).null_count}; {remedy}")
    return arrow.select(schema.names).cast(schema).replace_schema_metadata(arrow.schema.metadata)


def _unsafe(name: str) -> str | None:
    """Why a member name could write outside a folder if extracted, or None."""
    if not name:
        return "is empty"
    if "\\" in name:
        return "holds a backslash"
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts or "." in parts or "" in name.split("/"):
        return "holds '..', '.' or an empty path part"
    if any(ord(c) < 32 for c in name):
        return "holds a control character"
    return None


def _expected_name(name: str) -> bool:
    return name in (MANIFEST, MACHINE, CONFIG) or _contract_of(name) is not None


def open_bundle(path: PathLike) -> Bundle:
    """Read the bundle at ``path`` entirely in memory (nothing is extracted) and check it.

    Returns the :class:`Bundle`. Raises :class:`BundleError`, one line
    ``<path>: <problem>; <what to do>``, when the file cannot be read or is larger than
    :data:`MAX_BUNDLE_BYTES`, is not a zip, is truncated or damaged, is not an mlpbench bundle
    (no manifest, another ``format``), comes from a newer ``format_version``, has a member name
    that is unsafe (absolute, ``..``, backslash) or not a bundle member, a member that is missing,
    not in the manifest, larger than :data:`MAX_MEMBER_BYTES` or whose sha256 differs from the
    manifest (edited), a machine record or config that does not match the manifest, a machine_id
    reserved for the lesson's slides (:data:`mlpbench.config.LESSON_MACHINE`), or a table that
    does not match its contract (a missing, extra or renamed column, a wrong type).
    """
    source = os.fspath(path)
    try:
        size = os.path.getsize(source)
        if size > MAX_BUNDLE_BYTES:
            raise _fail(source, f"{size} bytes, more than a bundle may hold "
                                f"({MAX_BUNDLE_BYTES} bytes)", _RESEND)
        with open(source, "rb") as fh:
            data = fh.read(MAX_BUNDLE_BYTES + 1)
    except OSError as exc:
        raise _fail(source, f"cannot be read ({exc.strerror or exc})",
                    "check the path and that the file is readable") from None
    return _open_bytes(data, source)


def _open_bytes(data: bytes, source: str) -> Bundle:
    if len(data) > MAX_BUNDLE_BYTES:
        raise _fail(source, f"more than a bundle may hold ({MAX_BUNDLE_BYTES} bytes)", _RESEND)
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        if data.startswith(b"PK\x03\x04"):
            raise _fail(source, "a truncated or damaged zip file (it starts as a zip, but its "
                                "table of contents cannot be read)",
                        "copy the file again from its sender") from None
        raise _fail(source, "not a zip file, so not an mlpbench bundle", _RESEND) from None
    with zf:
        return _check_zip(zf, source)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> bytes:
    try:
        with zf.open(info) as fh:
            data = fh.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, RuntimeError,
            NotImplementedError) as exc:  # RuntimeError: an encrypted member
        raise _fail(source, f"member {info.filename} cannot be read, the zip is damaged ({exc})",
                    "copy the file again from its sender") from None
    if len(data) != info.file_size:
        raise _fail(source, f"member {info.filename} holds {len(data)} bytes where the zip "
                            f"declares {info.file_size}, the zip is damaged",
                    "copy the file again from its sender")
    return data


def _check_manifest(manifest: Any, source: str) -> dict[str, Any]:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise _fail(source, f"not an mlpbench bundle (its manifest's format is {found!r}, "
                            f"expected {FORMAT!r})", _RESEND)
    version = manifest.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise _fail(source, f"manifest format_version {version!r} is not a format version "
                            f"(a whole number from 1)", _RESEND)
    if version > FORMAT_VERSION:
        raise _fail(source, f"bundle format version {version} is newer than this mlpbench "
                            f"({_MLPBENCH_VERSION}) reads (format version up to "
                            f"{FORMAT_VERSION})",
                    "upgrade mlpbench (git pull, then pip install -e .) to read it")
    fields = {"machine_id": str, "created_utc": str, "config_hash": str, "packages": dict,
              "hardware": dict, "members": dict}
    for key, kind in fields.items():
        if not isinstance(manifest.get(key), kind):
            raise _fail(source, f"manifest field {key!r} is {manifest.get(key)!r}, expected a "
                                f"{'JSON object' if kind is dict else 'string'}", _RESEND)
    for key in ("git_commit", "git_dirty"):
        if key not in manifest:
            raise _fail(source, f"manifest field {key!r} is missing", _RESEND)
    for name, entry in manifest["members"].items():
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str)
                and _SHA256.fullmatch(entry["sha256"]) and isinstance(entry.get("bytes"), int)
                and not isinstance(entry.get("bytes"), bool)):
            raise _fail(source, f"manifest entry of member {name!r} is not "
                                f"{{sha256: 64 hex digits, bytes: a whole number}}", _RESEND)
    return manifest


def _check_zip(zf: zipfile.ZipFile, source: str) -> Bundle:
    infos = zf.infolist()
    if len(infos) > MAX_MEMBERS:
        raise _fail(source, f"{len(infos)} members, more than a bundle may hold "
                            f"({MAX_MEMBERS})", _RESEND)
    # 1. Names: refuse any that could leave a folder if extracted, and repeated names.
    seen: set[str] = set()
    for info in infos:
        problem = _unsafe(info.filename)
        if problem:
            raise _fail(source, f"member name {info.filename!r} {problem}, so the file is "
                                f"refused (nothing is ever extracted)", _RESEND)
        if info.filename in seen:
            raise _fail(source, f"member {info.filename} appears twice", _RESEND)
        seen.add(info.filename)
        if info.file_size > MAX_MEMBER_BYTES:
            raise _fail(source, f"member {info.filename} declares {info.file_size} bytes, more "
                                f"than a bundle member may hold ({MAX_MEMBER_BYTES})", _RESEND)
    total = sum(info.file_size for info in infos)
    if total > MAX_TOTAL_BYTES:
        raise _fail(source, f"members declare {total} bytes in all, more than a bundle may hold "
                            f"({MAX_TOTAL_BYTES})", _RESEND)
    by_name = {info.filename: info for info in infos}
    # 2. The manifest: a bundle, of a format this mlpbench reads.
    if MANIFEST not in by_name:
        raise _fail(source, f"a zip file without {MANIFEST}, so not an mlpbench bundle",
                    _RESEND)
    try:
        manifest = json.loads(_read_member(zf, by_name[MANIFEST], source))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise _fail(source, f"{MANIFEST} is not valid JSON ({exc})", _RESEND) from None
    manifest = _check_manifest(manifest, source)
    # 3. Members: exactly those of the manifest, each a known bundle member, none edited.
    declared = manifest["members"]
    for name in by_name:
        if name == MANIFEST:
            continue
        if not _expected_name(name):
            raise _fail(source, f"member {name} is not a member of a bundle of format version "
                                f"{manifest['format_version']}", _RESEND)
        if name not in declared:
            raise _fail(source, f"member {name} is not in the manifest (added after the bundle "
                                f"was written)", _RESEND)
    for name in declared:
        if name not in by_name:
            raise _fail(source, f"member {name}, listed in the manifest, is missing", _RESEND)
    data: dict[str, bytes] = {}
    for name, entry in declared.items():
        raw = _read_member(zf, by_name[name], source)
        if len(raw) != entry["bytes"] or hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise _fail(source, f"member {name} does not match its checksum in the manifest "
                                f"(edited or damaged after the bundle was written)", _RESEND)
        data[name] = raw
    for name in (MACHINE, CONFIG):
        if name not in data:
            raise _fail(source, f"member {name} is missing", _RESEND)
    # 4. Machine record and config: consistent with the manifest and with each other.
    machine = _parse_machine(data[MACHINE], f"{source}: {MACHINE}", _REWRITE)
    try:
        config = yaml.load(data[CONFIG], Loader=_YAML_LOADER)
    except (yaml.YAMLError, RecursionError) as exc:
        raise _fail(source, f"member {CONFIG} is not valid YAML "
                            f"({' '.join(str(exc).split())})", _REWRITE) from None
    for what, found, expected in (
            ("machine_id", machine["machine_id"], manifest["machine_id"]),
            ("config_hash", machine["config_hash"], manifest["config_hash"]),
            ("hardware", hardware(machine), manifest["hardware"]),
    ):
        if found != expected:
            said = (_difference(found, expected) if what == "hardware"
                    else f"{what} {found!r} vs {expected!r}")
            raise _fail(source, f"{MACHINE} and the manifest disagree ({MACHINE} vs "
                                f"manifest: {said})", _REWRITE)
    if config != machine["config"]:
        raise _fail(source, f"{CONFIG} is not the config of {MACHINE}", _REWRITE)
    expected_members = set(_member_paths_checked(config, f"{source}: {CONFIG}", _REWRITE))
    tables_found = {n for n in data if n not in (MACHINE, CONFIG)}
    for name in sorted(expected_members - tables_found):
        raise _fail(source, f"member {name} is missing (the bundle's config asks for it)",
                    _REWRITE)
    for name in sorted(tables_found - expected_members):
        raise _fail(source, f"member {name} is not a table of the bundle's config", _REWRITE)
    # 5. Tables: each against its contract.
    tables = {}
    for name in member_paths(config):
        table = _contract_of(name)
        try:
            tables[name] = _parse_table(data[name], table, name)
        except contract.ContractError as err:
            problem = str(err).removesuffix(f"; {table.remedy(name)}").removeprefix(f"{name}: ")
            raise _fail(source, f"member {name}: {problem}", _REWRITE) from None
    return Bundle(source, manifest, machine, config, tables)


# --------------------------------------------------------------------------- several bundles


def _same_content(a: Bundle, b: Bundle) -> bool:
    return a.machine_id == b.machine_id and a.manifest["members"] == b.manifest["members"]


def _difference(a: Mapping[str, Any], b: Mapping[str, Any], *, common: bool = False) -> str:
    """The keys whose values differ, in words ("" when none): of either mapping, or with
    ``common`` of both only."""
    keys = set(a) & set(b) if common else set(a) | set(b)
    keys = [k for k in sorted(keys) if a.get(k) != b.get(k)]
    return ", ".join(f"{k} {a.get(k)!r} vs {b.get(k)!r}" for k in keys)


def load_bundles(paths: Sequence[PathLike], own: Bundle | None = None, *,
                 reference: Sequence[PathLike] = ()) -> list[Bundle]:
    """Open every bundle in ``paths`` (:func:`open_bundle`) and check them together.

    Returns the distinct bundles in the order given: a file given twice, or a bundle with the
    same machine_id and members (checksums) as another or as ``own`` (this run's own results,
    :func:`bundle_from_results`), counts once; ``own`` itself is not in the list. Two bundles with
    the same ``machine_id`` and the same :attr:`Bundle.hardware` (two runs on one machine) are
    both kept.

    Raises :class:`BundleError` on the first bad bundle, and when a bundle claims the
    ``machine_id`` of another (or of ``own``) with different hardware, naming both files; nothing
    from a refused set is used. ``reference``: those of ``paths`` that were shipped with the
    project; in such a clash the user's bundle is the one named as refused (a shipped one only
    when it clashes with ``own``), and the message adds how to leave the shipped ones out.
    Hardware is compared on the keys both fingerprints hold (the hardware of ``own`` read at
    parse time may lack ``gpu_names``: :func:`host_hardware`).
    """
    unique: list[PathLike] = []
    seen_paths: set[str] = set()
    for path in paths:
        key = os.path.realpath(path)
        if key not in seen_paths:
            seen_paths.add(key)
            unique.append(path)
    # Side by side: parquet decoding and hashing release the GIL. Results come back in the
    # order given, so the first bad bundle in that order is the one reported.
    cpus = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1)
    workers = max(1, min(len(unique), cpus))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        opened = list(pool.map(open_bundle, unique))
    shipped = {os.path.realpath(p) for p in reference}

    def is_shipped(b: Bundle) -> bool:
        return b is not own and os.path.realpath(b.source) in shipped

    kept: list[Bundle] = []
    for bundle in opened:
        others = ([own] if own is not None else []) + kept
        duplicate = False
        for other in others:
            if other.machine_id != bundle.machine_id:
                continue
            # common keys: own's hardware read at parse time may lack the GPUs' names
            if _difference(bundle.hardware, other.hardware, common=True):
                # The user's bundle is refused, not the shipped one it clashes with.
                refused, holder = ((other, bundle) if is_shipped(bundle)
                                   and not is_shipped(other) and other is not own
                                   else (bundle, other))
                remedy = ("two machines need two machine ids: rerun one of them with "
                          "`snakemake --cores 4 --config machine_id=NAME`, then "
                          "`snakemake --cores 1 bundle --config machine_id=NAME`, and use "
                          "that bundle instead")
                if is_shipped(bundle) or is_shipped(other):
                    remedy += (", or leave the shipped reference bundles out with "
                               "`--config 'compare={reference: false}'`")
                raise _fail(refused.source,
                            f"machine_id {bundle.machine_id!r} is already used by "
                            f"{holder.source} with different hardware "
                            f"({_difference(refused.hardware, holder.hardware, common=True)})",
                            remedy)
            duplicate = duplicate or _same_content(bundle, other)
        if not duplicate:
            kept.append(bundle)
    return kept
