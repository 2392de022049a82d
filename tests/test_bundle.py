"""Bundles: write one run's results as one zip, read it back, and refuse every bad file."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlpbench import bundle as bundle_module
from mlpbench import contract
from mlpbench.bundle import (
    FORMAT,
    FORMAT_VERSION,
    BundleError,
    bundle_from_results,
    load_bundles,
    member_paths,
    open_bundle,
    write_bundle,
)
from mlpbench.config import LESSON_MACHINE, config_hash
from mlpbench.io import write_json_atomic
from synthetic_results import HOST, machine_info, write_inputs
from workflow_helpers import run_tiny

# The effective config of the synthetic run: which tables its bundle holds.
CONFIG = {
    "machine_id": HOST,
    "matmul": {"devices": ["cpu", "cuda"], "threads": 2},
    "train": {"devices": ["cpu", "cuda"], "datasets": ["toy", "blobs"], "threads": 1},
    "lesson": {"depth_epochs": False},
}


def make_results(root: Path, *, cpu_model: str | None = None,
                 created_utc: str | None = None) -> Path:
    """A contract-shaped results folder: the synthetic stage tables, empty matmul samples and
    lesson tables, and a machine record holding the run's config and its hash."""
    results = root / "results"
    inputs = write_inputs(results)
    for path in inputs.matmul_files:
        samples = path.with_name(f"{path.stem}.samples.parquet")
        contract.write(contract.empty_frame(contract.MATMUL_SAMPLES), samples,
                       contract.MATMUL_SAMPLES)
    for name in contract.LESSON_TABLES:
        table = contract.LESSON[name]
        contract.write(contract.empty_frame(table), results / "lesson" / f"{name}.parquet", table)
    record = machine_info(cuda=False)
    record.update(config=CONFIG, config_hash=config_hash(CONFIG))
    if cpu_model is not None:
        record["cpu_model"] = cpu_model
    if created_utc is not None:
        record["created_utc"] = created_utc
    write_json_atomic(record, results / "machine" / f"{HOST}.json")
    return results


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    return make_results(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def good(results, tmp_path_factory) -> Path:
    return write_bundle(results, HOST, tmp_path_factory.mktemp("bundles") / f"{HOST}.zip")


def members_of(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def rezip(members: dict[str, bytes], path: Path, *, manifest: dict | None = None,
          reseal: bool = False) -> Path:
    """Write ``members`` as a zip at ``path``; ``manifest`` replaces manifest.json, and
    ``reseal`` recomputes its checksums (a bundle whose writer meant every byte of it)."""
    members = dict(members)
    if manifest is None and "manifest.json" in members:
        manifest = json.loads(members["manifest.json"])
    if manifest is not None:
        if reseal:
            manifest["members"] = {
                name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                for name, data in members.items() if name != "manifest.json"}
        members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return path


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` and the folder beside it, with its bytes."""
    return {str(p.relative_to(root.parent)): p.read_bytes()
            for p in sorted(root.parent.rglob("*")) if p.is_file()}


def refusal(path: Path) -> str:
    with pytest.raises(BundleError) as info:
        open_bundle(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert "; " in message
    return message


# --------------------------------------------------------------------------- a good bundle


def test_round_trip_keeps_every_table_and_the_record(results, good):
    opened = open_bundle(good)
    own = bundle_from_results(results, HOST)
    assert opened.source == str(good) and own.source == str(results)
    assert opened.machine_id == HOST
    assert list(opened.tables) == member_paths(CONFIG) == list(own.tables)
    for name, table in opened.tables.items():
        on_disk = contract.read(results / name, bundle_module._contract_of(name))
        assert table.equals(on_disk), name
        assert opened.table(name).equals(own.table(name)), name
    assert opened.table("train/toy/cpu/decision.parquet") is None
    assert opened.table("train/toy/cpu/losses.parquet") is None
    record = json.loads((results / "machine" / f"{HOST}.json").read_text())
    assert opened.machine == bundle_module.shareable_record(record)
    assert opened.config == CONFIG
    assert opened.manifest == own.manifest


def test_manifest_fields(results, good):
    manifest = open_bundle(good).manifest
    record = json.loads((results / "machine" / f"{HOST}.json").read_text())
    assert manifest["format"] == FORMAT and manifest["format_version"] == FORMAT_VERSION
    for key in ("machine_id", "created_utc", "config_hash", "git_commit", "git_dirty"):
        assert manifest[key] == record[key], key
    assert manifest["config_hash"] == config_hash(CONFIG)
    assert manifest["packages"]["torch"] == record["versions"]["torch"]
    assert {"python", "mlpbench", "numpy", "pandas", "pyarrow"} <= set(manifest["packages"])
    assert manifest["hardware"] == {"cpu_model": record["cpu_model"],
                                    "logical_cores": 2, "physical_cores": 2, "gpu_names": []}
    members = members_of(good)
    assert list(members)[0] == "manifest.json"
    assert set(manifest["members"]) == set(members) - {"manifest.json"}
    for name, entry in manifest["members"].items():
        assert entry == {"sha256": hashlib.sha256(members[name]).hexdigest(),
                         "bytes": len(members[name])}, name


def test_members_are_the_runs_files_and_no_pickles(results, good):
    members = members_of(good)
    assert set(members) == {"manifest.json", "machine.json", "config.yaml",
                            *member_paths(CONFIG)}
    assert all(n.endswith((".json", ".yaml", ".parquet")) for n in members)
    assert not any(n.endswith(("decision.parquet", "losses.parquet")) for n in members)
    for name in member_paths(CONFIG):  # byte for byte as the run wrote them
        assert members[name] == (results / name).read_bytes(), name


def test_same_results_give_the_same_bytes(results, good, tmp_path):
    again = write_bundle(results, HOST, tmp_path / "again.zip")
    assert again.read_bytes() == good.read_bytes()


def test_bundle_is_small(results, good):
    """The zip adds little to its tables, and the decision grids and loss curves stay out."""
    tables = sum((results / n).stat().st_size for n in member_paths(CONFIG))
    decision = sum(p.stat().st_size for p in results.rglob("decision.parquet"))
    size = good.stat().st_size
    assert decision > 0
    assert tables < size < tables + 64 * 1024


def test_write_refuses_a_missing_table_and_names_its_rerun(results, tmp_path):
    broken = tmp_path / "results"
    shutil.copytree(results, broken)
    (broken / "lesson" / "ops.parquet").unlink()
    with pytest.raises(BundleError, match=r"lesson/ops\.parquet: file not found; rerun: "):
        write_bundle(broken, HOST, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_write_refuses_a_table_that_breaks_its_contract(results, tmp_path):
    broken = tmp_path / "results"
    shutil.copytree(results, broken)
    path = broken / "train" / "toy" / "cpu" / "metrics.parquet"
    data = pq.read_table(path)
    pq.write_table(data.rename_columns(["seed_id" if n == "seed" else n for n in data.column_names]),
                   path)
    with pytest.raises(BundleError, match=r"metrics\.parquet: column 'seed' missing"):
        bundle_from_results(broken, HOST)


# --------------------------------------------------------------------------- refusals


def test_not_a_zip(tmp_path):
    path = tmp_path / "notes.zip"
    path.write_text("hello\n")
    assert "not a zip file, so not an mlpbench bundle" in refusal(path)


def test_zip_without_manifest(tmp_path):
    path = rezip({"readme.txt": b"hello"}, tmp_path / "other.zip")
    assert "a zip file without manifest.json, so not an mlpbench bundle" in refusal(path)


def test_another_format(good, tmp_path):
    manifest = json.loads(members_of(good)["manifest.json"])
    manifest["format"] = "something-else"
    path = rezip(members_of(good), tmp_path / "b.zip", manifest=manifest)
    assert "not an mlpbench bundle (its manifest's format is 'something-else'" in refusal(path)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file(good, tmp_path, keep):
    data = good.read_bytes()
    path = tmp_path / "cut.zip"
    path.write_bytes(data[: int(len(data) * keep)])
    message = refusal(path)
    assert "a truncated or damaged zip file" in message
    assert message.endswith("copy the file again from its sender")


def test_damaged_bytes_inside_a_member(good, tmp_path):
    members = members_of(good)
    data = good.read_bytes()
    target = members["lesson/findings.parquet"]
    at = data.index(target) + len(target) // 2
    path = tmp_path / "damaged.zip"
    path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:])
    message = refusal(path)
    assert "lesson/findings.parquet" in message and "damaged" in message


def test_edited_member_fails_its_checksum(good, tmp_path):
    members = members_of(good)
    record = json.loads(members["machine.json"])
    record["cpu_model"] = "A faster CPU"
    members["machine.json"] = json.dumps(record).encode()
    path = rezip(members, tmp_path / "edited.zip")
    message = refusal(path)
    assert ("member machine.json does not match its checksum in the manifest (edited or "
            "damaged after the bundle was written)") in message


def test_edited_table_fails_its_checksum(good, tmp_path):
    members = members_of(good)
    table = pq.read_table(io.BytesIO(members["matmul/cpu.parquet"]))
    members["matmul/cpu.parquet"] = parquet_bytes(
        table.set_column(table.schema.get_field_index("time_s_median"), "time_s_median",
                         pa.compute.multiply(table["time_s_median"], 0.5)))
    path = rezip(members, tmp_path / "faster.zip")
    assert "member matmul/cpu.parquet does not match its checksum" in refusal(path)


def test_newer_format_version(good, tmp_path):
    manifest = json.loads(members_of(good)["manifest.json"])
    manifest["format_version"] = FORMAT_VERSION + 1
    path = rezip(members_of(good), tmp_path / "future.zip", manifest=manifest)
    message = refusal(path)
    assert f"bundle format version {FORMAT_VERSION + 1} is newer than this mlpbench" in message
    assert f"(format version up to {FORMAT_VERSION})" in message
    assert message.endswith("upgrade mlpbench (git pull, then pip install -e .) to read it")


@pytest.mark.parametrize("name, problem", [
    ("../x", "holds '..'"),
    ("lesson/../../x", "holds '..'"),
    ("/etc/x", "is an absolute path"),
    ("C:/x", "is an absolute path"),
    ("lesson\\ops.parquet", "holds a backslash"),
])
def test_unsafe_member_names(good, tmp_path, name, problem):
    members = members_of(good)
    members[name] = b"payload"
    path = rezip(members, tmp_path / "slip.zip", reseal=True)
    message = refusal(path)
    assert f"member name {name!r} {problem}" in message
    assert "nothing is ever extracted" in message


def test_member_not_in_the_manifest(good, tmp_path):
    members = members_of(good)
    members["matmul/tpu.parquet"] = members["matmul/cpu.parquet"]
    path = rezip(members, tmp_path / "extra.zip")
    assert "member matmul/tpu.parquet is not in the manifest" in refusal(path)


def test_member_that_no_bundle_holds(good, tmp_path):
    members = members_of(good)
    members["results.pkl"] = b"\x80\x04K\x01."
    path = rezip(members, tmp_path / "pickle.zip", reseal=True)
    assert "member results.pkl is not a member of a bundle of format version 1" in refusal(path)


def test_member_of_the_manifest_missing(good, tmp_path):
    members = members_of(good)
    del members["lesson/ops.parquet"]
    path = rezip(members, tmp_path / "short.zip")
    assert "member lesson/ops.parquet, listed in the manifest, is missing" in refusal(path)


def test_table_of_the_config_missing(good, tmp_path):
    members = members_of(good)
    del members["train/blobs/cuda/timings.parquet"]
    path = rezip(members, tmp_path / "short.zip", reseal=True)
    assert ("member train/blobs/cuda/timings.parquet is missing (the bundle's config asks "
            "for it)") in refusal(path)


@pytest.mark.parametrize("change, expected", [
    ("rename", "member train/toy/cpu/metrics.parquet: column 'seed' missing (expected int64)"),
    ("extra", "member train/toy/cpu/metrics.parquet: unexpected column 'note' (not in the "
              "metrics table's contract)"),
    ("type", "member train/toy/cpu/metrics.parquet: column 'seed': expected int64, found "
             "double"),
])
def test_contract_mismatch(good, tmp_path, change, expected):
    """A bundle sealed by its writer (checksums right) whose table breaks the contract: from an
    mlpbench with another contract, or written by hand."""
    members = members_of(good)
    name = "train/toy/cpu/metrics.parquet"
    table = pq.read_table(io.BytesIO(members[name]))
    if change == "rename":
        table = table.rename_columns(["seed_id" if n == "seed" else n for n in table.column_names])
    elif change == "extra":
        table = table.append_column("note", pa.array(["x"] * table.num_rows))
    else:
        table = table.set_column(table.schema.get_field_index("seed"), "seed",
                                 table["seed"].cast(pa.float64()))
    members[name] = parquet_bytes(table)
    path = rezip(members, tmp_path / "contract.zip", reseal=True)
    message = refusal(path)
    assert expected in message
    assert "rerun: snakemake" not in message  # the sender's files, not ours, need writing again
    assert message.endswith("and to send the new file")


def test_machine_record_that_contradicts_the_manifest(good, tmp_path):
    members = members_of(good)
    record = json.loads(members["machine.json"])
    record["logical_cores"] = 64
    members["machine.json"] = json.dumps(record).encode()
    path = rezip(members, tmp_path / "liar.zip", reseal=True)
    assert ("machine.json and the manifest disagree (machine.json vs manifest: logical_cores "
            "64 vs 2)") in refusal(path)


def test_the_lessons_machine_id_is_refused(good, results, tmp_path):
    """'lesson' names the lesson's slides' row: a bundle under it would mix into their rows."""
    members = members_of(good)
    record = json.loads(members["machine.json"])
    record["machine_id"] = LESSON_MACHINE
    members["machine.json"] = json.dumps(record).encode()
    manifest = json.loads(members["manifest.json"])
    manifest["machine_id"] = LESSON_MACHINE
    path = rezip(members, tmp_path / "lesson.zip", manifest=manifest, reseal=True)
    message = refusal(path)
    assert message.startswith(f"{path}: machine.json: machine_id 'lesson' is reserved for the "
                              f"lesson's slides"), message
    assert "allowed: any other machine id" in message and "machine_id=NAME" in message
    with pytest.raises(BundleError, match=r"machine_id 'lesson' is reserved"):
        load_bundles([good, path])
    # Nor can a run under that name write one.
    run = shutil.copytree(results, tmp_path / "run" / "results")
    machine = json.loads((run / "machine" / f"{HOST}.json").read_text())
    machine["machine_id"] = LESSON_MACHINE
    write_json_atomic(machine, run / "machine" / f"{LESSON_MACHINE}.json")
    with pytest.raises(BundleError, match=r"machine_id 'lesson' is reserved"):
        write_bundle(run, LESSON_MACHINE, tmp_path / "out.zip")
    assert not (tmp_path / "out.zip").exists()


def test_member_larger_than_the_cap(good, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 1024)
    message = refusal(good)
    assert "more than a bundle member may hold (1024)" in message


def test_members_larger_than_the_cap_in_all(good, monkeypatch):
    monkeypatch.setattr(bundle_module, "MAX_TOTAL_BYTES", 100_000)
    assert "bytes in all, more than a bundle may hold (100000)" in refusal(good)


def test_zip_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    """A member that inflates far beyond the cap is refused on its declared size."""
    monkeypatch.setattr(bundle_module, "MAX_MEMBER_BYTES", 2**20)
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("manifest.json", b"{}")
        zf.writestr("lesson/ops.parquet", bytes(64 * 2**20))
    assert path.stat().st_size < 2**20
    assert ("member lesson/ops.parquet declares 67108864 bytes, more than a bundle member may "
            "hold (1048576)") in refusal(path)


def test_missing_file(tmp_path):
    assert "cannot be read" in refusal(tmp_path / "nowhere.zip")


def test_refused_bundles_change_nothing_under_results(results, good, tmp_path):
    """Opening and loading refused bundles, zip-slip names included, writes nothing anywhere
    under results/ (nor beside it)."""
    run = tmp_path / "project"
    shutil.copytree(results, run / "results")
    bundles = run / "results" / "bundles"
    bundles.mkdir()
    members = members_of(good)
    bad = [
        rezip({**members, "../../escaped.txt": b"x", "/tmp/escaped.txt": b"x"},
              bundles / "slip.zip", reseal=True),
        rezip({**members, "machine.json": b"{}"}, bundles / "edited.zip"),
    ]
    (bundles / "cut.zip").write_bytes(good.read_bytes()[:1000])
    bad.append(bundles / "cut.zip")
    before = snapshot(run / "results")
    for path in bad:
        with pytest.raises(BundleError):
            open_bundle(path)
        with pytest.raises(BundleError):
            load_bundles([good, path])
    assert snapshot(run / "results") == before
    assert not Path("/tmp/escaped.txt").exists()


# --------------------------------------------------------------------------- several bundles


def test_machine_id_conflict_with_other_hardware(good, tmp_path):
    other_results = make_results(tmp_path / "other", cpu_model="Another CPU @ 3.0GHz")
    other = write_bundle(other_results, HOST, tmp_path / "other.zip")
    with pytest.raises(BundleError) as info:
        load_bundles([good, other])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{other}: machine_id {HOST!r} is already used by {good} with "
                              f"different hardware (cpu_model 'Another CPU @ 3.0GHz' vs ")
    assert "config machine_id=NAME" in message


def test_a_clash_with_a_shipped_reference_refuses_the_users_bundle(good, tmp_path):
    """The user's bundle is the one refused, whatever the order, with the easy remedy."""
    other_results = make_results(tmp_path / "other", cpu_model="Another CPU @ 3.0GHz")
    users = write_bundle(other_results, HOST, tmp_path / "users.zip")
    with pytest.raises(BundleError) as info:
        load_bundles([users, good], reference=[good])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{users}: machine_id {HOST!r} is already used by {good} with "
                              f"different hardware (cpu_model 'Another CPU @ 3.0GHz' vs ")
    assert message.endswith("or leave the shipped reference bundles out with "
                            "`--config 'compare={reference: false}'`")
    # Between two bundles of the user's, the later one is refused, without that remedy.
    with pytest.raises(BundleError) as info:
        load_bundles([good, users])
    assert str(info.value).startswith(f"{users}: machine_id {HOST!r} is already used by {good}")
    assert "reference: false" not in str(info.value)
    # This run under a shipped bundle's machine_id: the shipped one cannot be used.
    with pytest.raises(BundleError) as info:
        load_bundles([good], own=bundle_from_results(other_results, HOST), reference=[good])
    assert str(info.value).startswith(f"{good}: machine_id {HOST!r} is already used by "
                                      f"{other_results}")
    assert str(info.value).endswith("`--config 'compare={reference: false}'`")


def test_machine_id_conflict_with_own_results(results, tmp_path):
    other_results = make_results(tmp_path / "other", cpu_model="Another CPU @ 3.0GHz")
    other = write_bundle(other_results, HOST, tmp_path / "other.zip")
    own = bundle_from_results(results, HOST)
    with pytest.raises(BundleError, match=rf"is already used by {results} with different"):
        load_bundles([other], own=own)


def test_same_id_and_hardware_is_accepted(good, tmp_path):
    """Two runs on one machine (another time, same hardware) are both kept."""
    later_results = make_results(tmp_path / "later", created_utc="2024-02-01T00:00:00+00:00")
    later = write_bundle(later_results, HOST, tmp_path / "later.zip")
    loaded = load_bundles([good, later])
    assert [b.source for b in loaded] == [str(good), str(later)]


def test_duplicates_count_once(results, good, tmp_path):
    copy = tmp_path / "copy.zip"
    shutil.copy(good, copy)
    assert [b.source for b in load_bundles([good, good, copy])] == [str(good)]
    own = bundle_from_results(results, HOST)
    assert load_bundles([good, copy], own=own) == []


def test_load_refuses_the_whole_set_on_one_bad_bundle(good, tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_text("not a bundle")
    with pytest.raises(BundleError, match=rf"^{bad}: not a zip file"):
        load_bundles([good, bad])


def test_reading_bundles_imports_neither_torch_nor_pandas():
    """The workflow imports mlpbench.bundle while it builds the DAG."""
    code = ("import sys, mlpbench.bundle; mlpbench.bundle.host_hardware(); "
            "print(sorted(m for m in ('torch', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- the workflow


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory):
    """`snakemake bundle` on the tiny config: only the stages the bundle needs run."""
    work, _ = run_tiny(tmp_path_factory.mktemp("pipeline"), "bundle")
    return work


def test_snakemake_bundle_writes_a_bundle_that_opens(tiny_bundle):
    path = tiny_bundle / "results" / "bundles" / "test-machine.zip"
    opened = open_bundle(path)
    assert opened.machine_id == "test-machine"
    assert opened.config["train"]["datasets"] == ["toy", "blobs"]
    assert set(opened.tables) == set(member_paths(opened.config))
    assert opened.table("train/toy/cpu/metrics.parquet").num_rows > 0
    assert path.stat().st_size < 5 * 2**20
    # the bundle is not part of the default run: nothing past the stages ran
    assert not (tiny_bundle / "results" / "report").exists()
    assert "bundle: " in (tiny_bundle / "logs" / "bundle" / "test-machine.log").read_text()


def test_a_bundle_names_libraries_not_the_folders_they_live_in(results, good):
    """The thread pools' paths (a home folder, a virtual environment) stay on the machine."""
    record = json.loads((results / "machine" / f"{HOST}.json").read_text())
    record["blas"] = {"threadpools": [
        {"filepath": "/home/alice/venv/lib/libgomp.so.1", "user_api": "openmp"}]}
    shared = bundle_module.shareable_record(record)
    assert shared["blas"]["threadpools"][0] == {"filepath": "libgomp.so.1", "user_api": "openmp"}
    assert record["blas"]["threadpools"][0]["filepath"].startswith("/home/alice")  # not changed
    for pool in (open_bundle(good).machine.get("blas") or {}).get("threadpools") or []:
        assert "/" not in pool["filepath"]
