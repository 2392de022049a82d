"""Machines as a dimension: this run beside other machines' bundles and the lesson's slides.

One tiny pipeline run (``tests/configs/tiny.yaml``, machine ``test-machine``) is the source of
every machine here: a second laptop is the same stage tables under another machine record
(``laptop-b``, one CPU loss changed in its last bits), a GPU machine (``gpu-box``) has CUDA
rows made from the CPU rows (faster products, losses within the CUDA tolerance). The pipeline
then compares them through ``compare:`` and the report is read back. Unit tests build variants
of those bundles in memory.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mlpbench import compare, contract
from mlpbench.bundle import bundle_from_results, open_bundle, write_bundle
from mlpbench.checks import check_compare, compare_sources
from mlpbench.config import ConfigError
from mlpbench.figures import FIGURES
from mlpbench.findings import machine_findings
from mlpbench.tables import lesson_reference_table
from workflow_helpers import TINY, copy_pipeline, run_tiny, snakemake

OWN = "test-machine"
LAPTOP_CREATED = "2026-01-02T03:04:05+00:00"
GPU_CREATED = "2026-02-03T04:05:06+00:00"
GPU_NAME = "NVIDIA H200"
CUDA_SPEEDUP = 20.0


# --------------------------------------------------------------------------- helpers


def results_snapshot(results: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``results`` with its checksum and modification time."""
    return {str(p.relative_to(results)): (hashlib.sha256(p.read_bytes()).hexdigest(),
                                          p.stat().st_mtime_ns)
            for p in sorted(results.rglob("*")) if p.is_file()}


def rewrite(path: Path, table: contract.Table, change) -> None:
    """Read a stage table, change it (a function of the DataFrame), write it with its contract."""
    contract.write(change(contract.read(path, table).to_pandas()), path, table)


def another_machine(source: Path, dest: Path, machine_id: str, **record) -> Path:
    """A copy of ``source``'s stage tables under another machine record; returns results/."""
    results = dest / "results"
    shutil.copytree(source, results,
                    ignore=shutil.ignore_patterns("tables", "figures", "report", "bundles"))
    own = results / "machine" / f"{OWN}.json"
    data = json.loads(own.read_text())
    own.unlink()
    data.update(machine_id=machine_id, host=machine_id, **record)
    (results / "machine" / f"{machine_id}.json").write_text(json.dumps(data, indent=2))
    return results


def as_cuda(df: pd.DataFrame, **changes) -> pd.DataFrame:
    df = df.assign(device="cuda")
    for column, fn in changes.items():
        df[column] = fn(df)
    return df


def make_gpu_machine(source: Path, dest: Path) -> Path:
    """A machine with a usable GPU: its CUDA tables are its CPU tables made faster (products
    by CUDA_SPEEDUP, epochs by 2) with losses within the CUDA tolerance."""
    results = another_machine(source, dest, "gpu-box", cpu_model="GPU box CPU @ 2.0GHz",
                              created_utc=GPU_CREATED,
                              gpu={"available": True, "count": 1, "name": GPU_NAME,
                                   "memory_gib": 139.8, "driver": "570.0", "cuda_version": "12.8",
                                   "reason": ""})
    cpu = contract.read(results / "matmul" / "cpu.parquet", contract.MATMUL).to_pandas()
    torch = cpu[cpu["backend"] == "torch"]
    cuda = as_cuda(torch, time_s_median=lambda d: d["time_s_median"] / CUDA_SPEEDUP,
                   gflop_s=lambda d: d["gflop_s"] * CUDA_SPEEDUP,
                   gb_s=lambda d: d["gb_s"] * CUDA_SPEEDUP, noisy=lambda d: False,
                   noise_reason=lambda d: "")
    contract.write(cuda, results / "matmul" / "cuda.parquet", contract.MATMUL)
    for dataset in ("toy", "blobs"):
        cpu_dir, cuda_dir = (results / "train" / dataset / d for d in ("cpu", "cuda"))
        for name in ("losses", "predictions", "gradnorms", "environment"):
            table = contract.TRAIN[name]
            df = contract.read(cpu_dir / f"{name}.parquet", table).to_pandas()
            contract.write(df.assign(device="cuda"), cuda_dir / f"{name}.parquet", table)
        metrics = contract.read(cpu_dir / "metrics.parquet", contract.TRAIN["metrics"]).to_pandas()
        contract.write(as_cuda(metrics, loss=lambda d: d["loss"] * (1 + 1e-5)),
                       cuda_dir / "metrics.parquet", contract.TRAIN["metrics"])
        timings = contract.read(cpu_dir / "timings.parquet", contract.TRAIN["timings"]).to_pandas()
        contract.write(as_cuda(timings, time_per_epoch_s=lambda d: d["time_per_epoch_s"] / 2),
                       cuda_dir / "timings.parquet", contract.TRAIN["timings"])
    return results


def with_tables(bundle, machine_id: str | None = None, **tables):
    """``bundle`` with some tables replaced (keyword: path with '/' as '__') and another id."""
    new = {**bundle.tables, **{k.replace("__", "/") + ".parquet": v for k, v in tables.items()}}
    manifest = {**bundle.manifest, "machine_id": machine_id or bundle.machine_id}
    return dataclasses.replace(bundle, tables=new, manifest=manifest,
                               source=f"{bundle.source}#{machine_id}")


def frame(bundle, name: str) -> pd.DataFrame:
    return bundle.tables[name].to_pandas()


def arrow(df: pd.DataFrame, table: contract.Table) -> pa.Table:
    return contract.to_arrow(df, table)


def html_text(path: Path) -> str:
    from bs4 import BeautifulSoup

    text = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser").get_text(" ")
    text = text.replace("\u2019", "'")  # Quarto's typographic apostrophes
    return re.sub(r"\s+([,.;:)])", r"\1", re.sub(r"\s+", " ", text))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """The tiny run (one machine), its report kept, and the other machines' bundles."""
    work, _ = run_tiny(tmp_path_factory.mktemp("compare"))
    kept = work / "kept"
    kept.mkdir()
    shutil.copy(work / "results" / "report" / "report.html", kept / "one_machine.html")
    shutil.copy(work / "results" / "tables" / "machines.csv", kept / "one_machine_machines.csv")

    others = tmp_path_factory.mktemp("others")
    laptop = another_machine(work / "results", others / "laptop", "laptop-b",
                             cpu_model="Laptop CPU B @ 1.8GHz", created_utc=LAPTOP_CREATED)
    # One member's loss differs in its last bits: CPU runs must be bit-identical, so it is listed.
    rewrite(laptop / "train" / "toy" / "cpu" / "metrics.parquet", contract.TRAIN["metrics"],
            lambda d: d.assign(loss=np.where(d.index == 0, np.nextafter(d["loss"], 10),
                                             d["loss"])))
    gpu = make_gpu_machine(work / "results", others / "gpu")
    shared = work / "shared"
    shared.mkdir()
    write_bundle(laptop, "laptop-b", shared / "laptop-b.zip")
    write_bundle(gpu, "gpu-box", shared / "gpu-box.zip")
    return work


@pytest.fixture(scope="module")
def compared(project):
    """The same project with the two bundles compared (config compare.bundles: a glob)."""
    (project / "compare.yaml").write_text('compare: {bundles: ["shared/*.zip"]}\n')
    result = snakemake(project, "--cores", "2", "--configfile", "tiny.yaml", "compare.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    tables = project / "results" / "tables"
    return {"work": project, "log": result.stdout + result.stderr,
            **{name: pd.read_parquet(tables / f"{name}.parquet")
               for name in ("machines", "machines_matmul", "machines_epoch_time",
                            "machines_agreement", "findings")},
            "text": html_text(project / "results" / "report" / "report.html"),
            "html": (project / "results" / "report" / "report.html").read_text()}


@pytest.fixture(scope="module")
def bundles(compared):
    work = compared["work"]
    return {"own": bundle_from_results(work / "results", OWN),
            "laptop": open_bundle(work / "shared" / "laptop-b.zip"),
            "gpu": open_bundle(work / "shared" / "gpu-box.zip")}


# --------------------------------------------------------------------------- one machine


def test_one_machine_reads_as_before(project):
    html = (project / "kept" / "one_machine.html").read_text()
    text = html_text(project / "kept" / "one_machine.html")
    headings = re.findall(r"<h2[^>]*>.*?</h2>", html, re.S)
    assert headings and not any("Machines" in h for h in headings)
    assert "is compared with" not in text
    assert pd.read_csv(project / "kept" / "one_machine_machines.csv").empty


def test_no_bundle_computes_nothing(project):
    tables = compare.compare_from_files(project / "results", OWN)
    assert set(tables) == set(compare.COMPARE_TABLES)
    for name, df in tables.items():
        assert df.empty and list(df.columns) == contract.SUMMARY[name].column_names
    assert machine_findings({**tables, "findings": pd.DataFrame()}).empty


# --------------------------------------------------------------------------- the pipeline


def test_every_machine_is_a_row_with_its_provenance(compared):
    m = compared["machines"].set_index("machine_id")
    assert list(m.index) == [OWN, "gpu-box", "laptop-b", "lesson"]
    assert m.loc[OWN, "origin"] == "this run" and m.loc[OWN, "is_baseline"]
    assert m.loc["laptop-b", "origin"] == "bundle" and not m.loc["laptop-b", "is_baseline"]
    assert m.loc["laptop-b", "created_utc"] == LAPTOP_CREATED
    assert m.loc["laptop-b", "cpu_model"] == "Laptop CPU B @ 1.8GHz"
    assert m.loc["gpu-box", "gpu_name"] == GPU_NAME
    assert pd.isna(m.loc[OWN, "gpu_name"])
    assert m.loc["laptop-b", "source"].endswith("shared/laptop-b.zip")
    assert m.loc["lesson", "origin"] == "lesson" and "not synchronised" in m.loc["lesson", "note"]
    assert "compared machine laptop-b (bundle)" in (compared["work"] / "logs" /
                                                    "aggregate.log").read_text()


def test_lesson_product_per_machine_with_its_own_roofs(compared, bundles):
    mm = compared["machines_matmul"]
    assert set(mm["kind"]) == {"matmul"}
    # Each machine's roof shares are its own matmul job's, carried over unchanged.
    for key, bundle in bundles.items():
        mine = frame(bundle, "matmul/cpu.parquet")
        mine = mine[mine["kind"] == "matmul"].set_index(compare.MATMUL_KEY).sort_index()
        rows = mm[mm["machine_id"] == bundle.machine_id].set_index(compare.MATMUL_KEY)
        rows = rows.loc[mine.index]
        for column in ("time_s_median", "bandwidth_share", "compute_share", "bound"):
            pd.testing.assert_series_equal(rows[column], mine[column], check_names=False)
    gpu = mm[(mm["machine_id"] == "gpu-box") & (mm["device"] == "cuda")]
    assert len(gpu) and (gpu["status"] == "ok").all()
    own_cuda = mm[(mm["machine_id"] == OWN) & (mm["device"] == "cuda")]
    assert (own_cuda["status"] == "unavailable").all()
    # The lesson's three numbers, as a machine of their own, with their caveats.
    lesson = mm[mm["machine_id"] == "lesson"]
    ref = lesson_reference_table()
    assert sorted(lesson["time_s_median"]) == sorted(ref["time_s"])
    assert lesson["note"].str.contains("%timeit").all()
    assert lesson["bandwidth_share"].isna().all()


def test_speedups_against_the_baseline_compare_like_with_like(compared):
    mm = compared["machines_matmul"]
    usable = (mm["status"] == "ok") & ~mm["noisy"]
    base = mm[(mm["machine_id"] == OWN) & usable].set_index(compare.MATMUL_KEY)["time_s_median"]
    checked = 0
    for _, row in mm[usable & (mm["machine_id"] != OWN)].iterrows():
        key = tuple(row[compare.MATMUL_KEY])
        if key in base.index:
            assert row["speedup_vs_baseline"] == pytest.approx(base[key] / row["time_s_median"])
            checked += 1
        else:  # the baseline has no usable row of this key (CUDA, a noisy timing): no speed-up
            assert pd.isna(row["speedup_vs_baseline"])
    assert (mm.loc[~usable, "speedup_vs_baseline"].isna()).all()
    # The tiny config's lesson case is not the lesson's shape: never divided by the slides.
    assert mm["speedup_vs_lesson"].isna().all()
    et = compared["machines_epoch_time"]
    assert set(et["machine_id"]) == {OWN, "gpu-box", "laptop-b"}
    # gpu-box's CPU timings are this run's (copied): a speed-up of exactly 1 on every ok row.
    gpu = et[(et["machine_id"] == "gpu-box") & (et["status"] == "ok")]
    on_cpu = gpu[gpu["device"] == "cpu"]
    assert len(on_cpu) and (on_cpu["speedup_vs_baseline"] == 1.0).all()
    # Its CUDA rows have no baseline row to be divided by (CUDA unavailable here).
    assert len(gpu[gpu["device"] == "cuda"])
    assert gpu.loc[gpu["device"] == "cuda", "speedup_vs_baseline"].isna().all()


def test_losses_and_accuracies_agree_or_are_listed(compared):
    a = compared["machines_agreement"]
    assert set(a["baseline_machine_id"]) == {OWN}
    assert set(a["device"]) == {"cpu"}  # the baseline has no CUDA rows to compare with
    laptop_toy = a[(a["machine_id"] == "laptop-b") & (a["dataset"] == "toy")].set_index("metric")
    assert laptop_toy.loc["loss", "verdict"] == "differs"
    assert laptop_toy.loc["loss", "n_differ"] == 1
    assert 0 < laptop_toy.loc["loss", "max_abs_diff"] < 1e-12
    assert laptop_toy.loc["loss", "tolerance"] == "bit-identical (CPU)"
    assert json.loads(laptop_toy.loc["loss", "worst_json"])["seed"] is not None
    assert (laptop_toy.loc[["train_acc", "test_acc"], "verdict"] == "identical").all()
    rest = a[~((a["machine_id"] == "laptop-b") & (a["dataset"] == "toy"))]
    assert (rest["verdict"] == "identical").all() and (rest["n_compared"] > 0).all()


def test_findings_of_the_comparison(compared):
    f = compared["findings"]
    f = f[f["section"] == "machines"]
    assert f.loc[f["finding"] == "machines_compared", "value"].tolist() == [3]
    agreement = f[f["finding"] == "machine_agreement"].set_index(["subject", "dataset"])
    assert agreement.loc[("laptop-b vs test-machine", "toy"), "verdict"] == "differs"
    assert agreement.loc[("gpu-box vs test-machine", "blobs"), "verdict"] == "identical"
    cuda = f[(f["finding"] == "machine_fastest") & (f["device"] == "cuda")]
    assert set(cuda["verdict"]) == {"other_machine"}
    assert all(json.loads(e)["fastest"] == "gpu-box" for e in cuda["evidence"])
    assert not (f["finding"] == "machine_config").any()  # same config everywhere
    for rule in f["rule"]:
        assert rule


def test_report_shows_every_machine(compared):
    text, html = compared["text"], compared["html"]
    assert re.search(r"<h2[^>]*>.*Machines", html)
    if 'id="TOC"' in html:  # Quarto's table of contents lists the section like the others
        toc = html[html.index('id="TOC"'):html.index("</nav>", html.index('id="TOC"'))]
        assert ">Machines</a>" in toc
    assert "This run is compared with 2 other machines" in text
    for needle in ("laptop-b", "gpu-box", f"{OWN} (this run)", "the lesson's slides",
                   LAPTOP_CREATED, GPU_CREATED, "Laptop CPU B @ 1.8GHz", GPU_NAME,
                   "measured on laptop-b, not on this machine", "not synchronised",
                   "Fastest machine for the lesson's product",
                   "torch CUDA float32: gpu-box",
                   "CPU runs must be bit-identical", "What differs, or was not compared",
                   "differs", "No timing on CUDA: test-machine, laptop-b"):
        assert needle in text, needle
    assert html.count("<img") == len(FIGURES)
    assert (compared["work"] / "results" / "figures" / "machines.png").stat().st_size > 10_000


def test_changed_bundle_reruns_only_the_aggregation(compared):
    work = compared["work"]
    dry = snakemake(work, "-n", "--cores", "2", "--configfile", "tiny.yaml", "compare.yaml")
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr
    laptop = work / "shared" / "laptop-b.zip"
    original = laptop.read_bytes()
    try:  # another (valid) bundle's content under the same name
        laptop.write_bytes((work / "shared" / "gpu-box.zip").read_bytes())
        dry = snakemake(work, "-n", "--cores", "2", "--configfile", "tiny.yaml", "compare.yaml")
    finally:
        laptop.write_bytes(original)
    out = dry.stdout + dry.stderr
    assert dry.returncode == 0, out
    assert re.search(r"aggregate\s+1", out) and not re.search(r"\btrain\s+\d", out), out
    assert not re.search(r"\bmatmul\s+\d", out), out


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("case", ["edited", "truncated", "not_a_bundle", "own_id_other_cpu",
                                  "no_match", "unknown_baseline", "own_id_lesson"])
def test_refused_before_any_job_changes_nothing(compared, tmp_path, case):
    work = compared["work"]
    good = work / "shared" / "laptop-b.zip"
    bad = tmp_path / f"{case}.zip"
    config = {"compare": {"bundles": [str(bad)]}}
    if case == "edited":  # a stored table's bytes changed: its checksum no longer matches
        data = good.read_bytes()
        assert data.count(b"time_s_median") >= 1
        bad.write_bytes(data.replace(b"time_s_median", b"time_s_MEDIAN", 1))
        expected = f"{bad}: "
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:5000])
        expected = f"{bad}: "
    elif case == "not_a_bundle":
        bad.write_text("hello")
        expected = f"{bad}: "
    elif case == "own_id_other_cpu":  # claims this run's machine_id with other hardware
        other = another_machine(work / "results", tmp_path / "impostor", OWN,
                                cpu_model="Impostor CPU")
        write_bundle(other, OWN, bad)
        expected = f"{bad}: machine_id '{OWN}' is already used by"
    elif case == "own_id_lesson":  # the lesson's slides' machine_id is reserved
        config = {"machine_id": compare.LESSON_MACHINE}
        expected = "invalid config at 'machine_id': \"lesson\" is not allowed"
    elif case == "no_match":
        config = {"compare": {"bundles": ["shared/nothing-*.zip"]}}
        expected = "invalid config at 'compare.bundles[0]': \"shared/nothing-*.zip\""
    else:
        config = {"compare": {"bundles": ["shared/*.zip"], "baseline": "nobody"}}
        expected = ("invalid config at 'compare.baseline': \"nobody\" is not allowed (no "
                    "compared machine has this machine_id). Allowed: null (this run) or one of "
                    f"\"{OWN}\", ")
    (tmp_path / "bad.yaml").write_text(json.dumps(config))
    before = results_snapshot(work / "results")
    result = snakemake(work, "--cores", "2", "--configfile", "tiny.yaml", str(tmp_path /
                                                                              "bad.yaml"))
    out = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in out.splitlines() if expected in line]
    assert lines, out[-3000:]
    assert results_snapshot(work / "results") == before


def test_own_id_with_other_hardware_is_refused_on_a_fresh_clone(compared, tmp_path):
    """No machine record yet (a fresh clone): the bundle is checked against this machine's
    hardware at parse time, before the machine job, so results/ is never made."""
    impostor = another_machine(compared["work"] / "results", tmp_path / "impostor", OWN,
                               cpu_model="Impostor CPU @ 9.9GHz")
    bad = write_bundle(impostor, OWN, tmp_path / "impostor.zip")
    fresh = copy_pipeline(tmp_path / "fresh")
    shutil.copy(TINY, fresh / "tiny.yaml")
    (fresh / "compare.yaml").write_text(json.dumps({"compare": {"bundles": [str(bad)]}}))
    result = snakemake(fresh, "--cores", "2", "--configfile", "tiny.yaml", "compare.yaml")
    out = result.stdout + result.stderr
    assert result.returncode != 0
    lines = [line for line in out.splitlines()
             if line.startswith(f"{bad}: machine_id '{OWN}' is already used by this run on this "
                                f"machine (no results/machine/{OWN}.json yet")]
    assert len(lines) == 1, out[-3000:]
    assert "cpu_model 'Impostor CPU @ 9.9GHz' vs " in lines[0]
    assert not (fresh / "results").exists()


def test_own_id_is_checked_against_this_machine_without_a_record(compared, tmp_path):
    """The same check in the library; a bundle of this very machine under its id passes."""
    from mlpbench.bundle import BundleError, host_hardware
    from mlpbench.cpu import core_counts, cpu_model

    impostor = another_machine(compared["work"] / "results", tmp_path / "impostor", OWN,
                               cpu_model="Impostor CPU @ 9.9GHz")
    bad = write_bundle(impostor, OWN, tmp_path / "impostor.zip")
    config = {"compare": {"bundles": [str(bad)], "reference": False}}
    with pytest.raises(BundleError, match=r"already used by this run on this machine"):
        check_compare(config, compare_sources(config, tmp_path), OWN, tmp_path)
    physical, logical = core_counts()
    assert host_hardware()["cpu_model"] == cpu_model()
    same = another_machine(compared["work"] / "results", tmp_path / "same", OWN,
                           cpu_model=cpu_model(), physical_cores=physical,
                           logical_cores=logical)
    good = write_bundle(same, OWN, tmp_path / "same.zip")
    config = {"compare": {"bundles": [str(good)], "reference": False}}
    assert [b.machine_id for b in check_compare(config, compare_sources(config, tmp_path), OWN,
                                                tmp_path)] == [OWN]


def test_refused_bundle_in_the_library_names_the_file(bundles, tmp_path):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}: "):
        check_compare({"compare": {"baseline": None}},
                      compare_sources({"compare": {"bundles": [str(bad)], "reference": False}}),
                      OWN)


# --------------------------------------------------------------------------- sources


def test_sources_expand_globs_and_add_the_shipped_reference(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "reference").mkdir()
    for name in ("a/x.zip", "a/y.zip", "reference/gpu.zip"):
        (tmp_path / name).write_bytes(b"")
    cfg = {"compare": {"bundles": ["a/*.zip", "a/x.zip"], "reference": True}}
    assert compare_sources(cfg, tmp_path) == (["a/x.zip", "a/y.zip"], ["reference/gpu.zip"])
    cfg["compare"]["reference"] = False
    assert compare_sources(cfg, tmp_path).reference == []
    # The shipped bundle named by the user counts once, as the user's.
    cfg = {"compare": {"bundles": ["reference/*.zip"], "reference": True}}
    assert compare_sources(cfg, tmp_path) == (["reference/gpu.zip"], [])
    with pytest.raises(ConfigError, match=r"^invalid config at 'compare\.bundles\[0\]': "
                                          r"\"b/\*\.zip\" is not allowed \(no file matches it\)"):
        compare_sources({"compare": {"bundles": ["b/*.zip"]}}, tmp_path)


def test_baseline_must_be_a_compared_machine():
    none = compare_sources({"compare": {"bundles": [], "reference": False}})
    assert check_compare({"compare": {"baseline": OWN}}, none, OWN) == []
    with pytest.raises(ConfigError, match=r"compare\.baseline.*Allowed: null \(this run\) or "
                                          r"one of \"test-machine\""):
        check_compare({"compare": {"baseline": "gpu-box"}}, none, OWN)
    with pytest.raises(ConfigError, match=r"^invalid config at 'compare\.baseline': \"lesson\" "
                                          r"is not allowed \(the lesson's slides are compared "
                                          r"against"):
        check_compare({"compare": {"baseline": "lesson"}}, none, OWN)


# --------------------------------------------------------------------------- the library


def test_cuda_agreement_within_its_tolerance(bundles):
    gpu = bundles["gpu"]

    def variant(machine_id: str, factor: float):
        tables = {}
        for dataset in ("toy", "blobs"):
            m = frame(gpu, f"train/{dataset}/cuda/metrics.parquet")
            tables[f"train__{dataset}__cuda__metrics"] = arrow(
                m.assign(loss=m["loss"] * factor), contract.TRAIN["metrics"])
        return with_tables(gpu, machine_id, **tables)

    close, far = variant("gpu-close", 1 + 1e-5), variant("gpu-far", 1 + 1e-2)
    tables = compare.compare_tables(gpu, [close, far])
    a = tables["machines_agreement"]
    cuda = a[(a["device"] == "cuda") & (a["metric"] == "loss")].set_index(
        ["machine_id", "dataset"])
    assert (cuda.loc["gpu-close", "verdict"] == "within_tolerance").all()
    assert (cuda.loc["gpu-far", "verdict"] == "differs").all()
    assert (cuda["tolerance"] == f"relative {compare.CUDA_LOSS_RTOL:g} (CUDA)").all()
    acc = a[(a["device"] == "cuda") & (a["metric"] == "test_acc")]
    assert acc["tolerance"].str.fullmatch(r"1 of \d+ points \(CUDA\)").all()
    assert (acc["verdict"] == "identical").all()


def test_configs_that_differ_are_named_and_not_compared(bundles):
    laptop = bundles["laptop"]
    config = json.loads(json.dumps(laptop.config))
    config["train"]["threads"] = 2
    config["train"]["experiments"]["blobs"]["data"]["n_samples"] = 120
    other = dataclasses.replace(with_tables(laptop, "other-config"), config=config)
    tables = compare.compare_tables(bundles["own"], [other])
    a = tables["machines_agreement"]
    blobs = a[a["dataset"] == "blobs"]
    assert (blobs["verdict"] == "not_compared").all()
    assert blobs["reason"].str.contains("train.experiments.blobs.data differs").all()
    assert blobs["reason"].str.contains("train.threads differs: 2 vs 1").all()
    et = tables["machines_epoch_time"]
    assert et.loc[et["machine_id"] == "other-config", "speedup_vs_baseline"].isna().all()
    f = machine_findings(tables)
    keys = json.loads(f.loc[f["finding"] == "machine_config", "evidence"].iloc[0])["keys"]
    assert keys["train.threads"] == [2, 1]
    assert keys["train.experiments.blobs.data.n_samples"] == [120, 80]


def test_the_lesson_case_is_divided_by_the_slides(bundles):
    laptop = bundles["laptop"]
    mm = frame(laptop, "matmul/cpu.parquet")
    lesson = mm["case"] == "lesson"
    mm.loc[lesson, ["m", "k", "n"]] = [1, 6400, 5000]
    mm["noisy"] = False
    other = with_tables(laptop, "lesson-shaped", matmul__cpu=arrow(mm, contract.MATMUL))
    out = compare.compare_tables(bundles["own"], [other])["machines_matmul"]
    row = out[(out["machine_id"] == "lesson-shaped") & (out["case"] == "lesson")
              & (out["backend"] == "torch") & (out["dtype"] == "float32")].iloc[0]
    assert row["speedup_vs_lesson"] == pytest.approx(9.04e-3 / row["time_s_median"])
    f64 = out[(out["machine_id"] == "lesson-shaped") & (out["case"] == "lesson")
              & (out["backend"] == "torch") & (out["dtype"] == "float64")]
    assert f64["speedup_vs_lesson"].isna().all()  # the slides have no torch float64


def test_two_runs_of_one_machine_are_both_kept(bundles):
    laptop = bundles["laptop"]
    again = dataclasses.replace(laptop, source="later.zip")
    ids = compare.compare_tables(bundles["own"], [laptop, again])["machines"]["machine_id"]
    assert list(ids) == [OWN, "laptop-b", "laptop-b#2", "lesson"]


def test_baseline_not_compared_is_refused(bundles):
    with pytest.raises(ValueError, match="compare.baseline"):
        compare.compare_tables(bundles["own"], [bundles["laptop"]], baseline="nobody")


def test_shipped_reference_bundles_are_labelled_as_such(compared):
    work = compared["work"]
    gpu = work / "shared" / "gpu-box.zip"
    tables = compare.compare_from_files(work / "results", OWN, bundles=[work / "shared" /
                                                                        "laptop-b.zip"],
                                        reference=[gpu], baseline="gpu-box")
    m = tables["machines"].set_index("machine_id")
    assert m.loc["gpu-box", "origin"] == "reference" and m.loc["gpu-box", "is_baseline"]
    assert m.loc["laptop-b", "origin"] == "bundle"
    assert set(tables["machines_agreement"]["baseline_machine_id"]) == {"gpu-box"}


def test_ensembles_of_other_sizes_compare_the_lessons_loop(bundles):
    """4 seeds here, 2 there: no ensemble row matches, so the loop rows (one network) are
    compared and the report says why, never an unexplained empty table."""
    from mlpbench.narrative import MachinePassages

    laptop = bundles["laptop"]
    tables = {}
    for dataset in ("toy", "blobs"):
        t = frame(laptop, f"train/{dataset}/cpu/timings.parquet")
        ens = t["method"] == "ensemble"
        assert (t.loc[ens, "n_members"] > 2).all() and (t.loc[~ens, "n_members"] == 1).all()
        t.loc[ens, "n_members"] = 2
        tables[f"train__{dataset}__cpu__timings"] = arrow(t, contract.TRAIN["timings"])
    other = with_tables(laptop, "two-seeds", **tables)
    out = compare.compare_tables(bundles["own"], [other])
    f = machine_findings(out)
    epoch = f[f["finding"] == "machine_epoch_fastest"]
    assert set(epoch["dataset"]) == {"toy", "blobs"}
    for _, row in epoch.iterrows():
        ev = json.loads(row["evidence"])
        assert ev["method"] == "loop" and ev["n_members"] == 1
        assert set(ev["times_per_epoch_s"]) == {OWN, "two-seeds"}
        assert ev["ensemble_members"]["two-seeds"] == [2]
        assert ev["ensemble_members"][OWN] != [2]
        assert "one network (the lesson's loop)" in row["subject"]
    passages = MachinePassages({**out, "findings": f})
    table = passages.epoch_table()
    assert len(table) == 4 and table["network"].str.endswith(
        "one network (the lesson's loop)").all()
    assert (table[f"× {OWN}"] != "n/a").all()
    note = passages.epoch_note()
    assert note.startswith("Ensemble rows are not compared for ")
    assert "`two-seeds` 2 members" in note and "one network at a time" in note
    # The same sizes compare ensembles, and need no note.
    same = machine_findings(compare.compare_tables(bundles["own"], [laptop]))
    ev = [json.loads(e) for e in same.loc[same["finding"] == "machine_epoch_fastest",
                                           "evidence"]]
    assert ev and all(e["method"] == "ensemble" and "ensemble_members" not in e for e in ev)
    assert MachinePassages({**compare.compare_tables(bundles["own"], [laptop]),
                            "findings": same}).epoch_note() == ""


def test_no_shared_network_says_why_the_epoch_table_is_empty(bundles):
    from mlpbench.narrative import MachinePassages

    laptop = bundles["laptop"]
    config = json.loads(json.dumps(laptop.config))
    config["train"]["threads"] = 2  # other conditions: no epoch time is comparable
    other = dataclasses.replace(with_tables(laptop, "other-threads"), config=config)
    out = compare.compare_tables(bundles["own"], [other])
    f = machine_findings(out)
    assert f[f["finding"] == "machine_epoch_fastest"].empty
    passages = MachinePassages({**out, "findings": f})
    assert passages.epoch_table().empty
    assert passages.epoch_note().startswith("No network was timed on two machines")


def test_noisy_machines_are_named_in_the_figure_and_counted_in_the_sentence(bundles):
    """A machine whose lesson product was flagged noisy is left out of the fastest machine
    and of the bars, and both say so; a shipped reference is labelled as one."""
    from mlpbench.figures import fig_machines
    from mlpbench.narrative import MachinePassages

    def flagged(bundle, machine_id, noisy):
        mm = frame(bundle, "matmul/cpu.parquet")
        mm["noisy"] = noisy & (mm["case"] == "lesson")
        return with_tables(bundle, machine_id, matmul__cpu=arrow(mm, contract.MATMUL))

    own = flagged(bundles["own"], OWN, False)
    laptop = flagged(bundles["laptop"], "laptop-b", True)
    gpu = flagged(bundles["gpu"], "gpu-box", False)
    out = compare.compare_tables(own, [laptop, gpu], reference=[gpu.source])
    f = machine_findings(out)
    fastest = f[f["finding"] == "machine_fastest"]
    cpu = [json.loads(e) for e, d in zip(fastest["evidence"], fastest["device"]) if d == "cpu"]
    assert cpu and all(e["noisy_left_out"] == ["laptop-b"] for e in cpu)
    assert all("laptop-b" not in e["times_s"] for e in cpu)
    sentence = MachinePassages({**out, "findings": f}).speedup_sentences()[0]
    assert sentence.startswith("Fastest machine for the lesson's product, per series: ")
    assert sentence.count("the timing of 1 other machine was flagged noisy and left out") \
        == len(cpu)
    fig = fig_machines({**out, "findings": f})
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    cpu_axes = [ax for ax in axes if "CPU" in ax.get_title().split("\n")[0]
                and not ax.get_title().startswith("epoch")]
    assert cpu_axes
    for ax in cpu_axes:
        assert "flagged noisy, left out: laptop-b" in ax.get_title()
        ticks = [t.get_text() for t in ax.get_yticklabels()]
        assert "gpu-box (reference)" in ticks and not any(t.startswith("laptop-b")
                                                          for t in ticks)
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_every_core_threads_say_what_the_run_used(bundles):
    """matmul.threads 0 means every core: the note says how many threads that was, and that
    both runs used as many."""
    from mlpbench.narrative import MachinePassages

    laptop = bundles["laptop"]
    config = json.loads(json.dumps(laptop.config))
    config["matmul"]["threads"] = 0
    mm = frame(laptop, "matmul/cpu.parquet")
    assert (mm["threads"] == 1).all()  # what the tiny config's matmul.threads 1 ran
    other = dataclasses.replace(with_tables(laptop, "all-cores"), config=config)
    out = compare.compare_tables(bundles["own"], [other])
    notes = MachinePassages({**out, "findings": machine_findings(out)}).config_notes()
    assert len(notes) == 1
    assert ("`matmul.threads` 0 (= every core: 1 thread) vs 1, both ran 1 thread"
            in notes[0]), notes
    # Where the rows do not say one number, the note says what 0 means.
    mm["threads"] = [1, 2] * (len(mm) // 2) + [1] * (len(mm) % 2)
    mixed = dataclasses.replace(with_tables(laptop, "mixed", matmul__cpu=arrow(
        mm, contract.MATMUL)), config=config)
    out = compare.compare_tables(bundles["own"], [mixed])
    notes = MachinePassages({**out, "findings": machine_findings(out)}).config_notes()
    assert "`matmul.threads` 0 (= every core) vs 1;" in notes[0] or \
        "`matmul.threads` 0 (= every core) vs 1." in notes[0], notes
