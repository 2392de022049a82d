"""Machine comparison benchmark: merge 100 bundles of the default experiment's size.

A class or a cluster sweep compares tens to hundreds of machines, so the aggregate job's
comparison must stay quick: opening and checking every bundle (checksums and results contract,
:func:`mlpbench.bundle.load_bundles`), reading this run's own results
(:func:`mlpbench.bundle.bundle_from_results`) and building the machine tables
(:func:`mlpbench.compare.compare_tables`), all as :func:`mlpbench.compare.compare_from_files`
does it in the pipeline. The target is 10 s or less for 100 bundles on a 2-core machine.

The bundles are generated: one written from ``synthetic_results`` scaled to the default config
(16 seeds, epochs 1000..10000, widths 4..64, depths 1..6, the default matmul shapes; as
``test_bench_tables``), then rewritten 100 times with another machine_id and CPU model (its
machine record, and the manifest's checksum of it), so each is a distinct, valid bundle.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest
import synthetic_results as synth
from test_bench_tables import MATMUL_SHAPES, SCALE

from mlpbench import contract
from mlpbench.bundle import bundle_from_results, hardware, open_bundle, write_bundle
from mlpbench.compare import compare_from_files
from mlpbench.config import config_hash
from mlpbench.io import write_json_atomic

N_BUNDLES = 100
ROUNDS, WARMUP_ROUNDS = 3, 1
CONFIG = {
    "machine_id": synth.HOST,
    "matmul": {"devices": ["cpu", "cuda"], "threads": 2},
    "train": {"devices": ["cpu", "cuda"], "datasets": ["toy", "blobs"], "threads": 1},
    "lesson": {"depth_epochs": False},
}


def _results(root: Path) -> Path:
    """Synthetic results of the default size, with the tables a bundle holds."""
    results = root / "results"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SCALE.items():
            mp.setattr(synth, name, value)
        mp.setattr(synth, "matmul_shapes", lambda: list(MATMUL_SHAPES))
        inputs = synth.write_inputs(results)
    for path in inputs.matmul_files:
        contract.write(contract.empty_frame(contract.MATMUL_SAMPLES),
                       path.with_name(f"{path.stem}.samples.parquet"), contract.MATMUL_SAMPLES)
    for name in contract.LESSON_TABLES:
        table = contract.LESSON[name]
        contract.write(contract.empty_frame(table), results / "lesson" / f"{name}.parquet", table)
    record = synth.machine_info(cuda=False)
    record.update(config=CONFIG, config_hash=config_hash(CONFIG))
    write_json_atomic(record, results / "machine" / f"{synth.HOST}.json")
    return results


def _rewrite(source: Path, out: Path, machine_id: str, cpu_model: str) -> Path:
    """``source`` as the bundle of another machine: new machine record and manifest."""
    with zipfile.ZipFile(source) as zf:
        members = {info.filename: (info, zf.read(info)) for info in zf.infolist()}
    machine = json.loads(members["machine.json"][1])
    machine.update(machine_id=machine_id, host=machine_id, cpu_model=cpu_model)
    machine_bytes = json.dumps(machine, indent=2, sort_keys=True).encode()
    manifest = json.loads(members["manifest.json"][1])
    manifest.update(machine_id=machine_id, hardware=hardware(machine))
    manifest["members"]["machine.json"] = {"sha256": hashlib.sha256(machine_bytes).hexdigest(),
                                           "bytes": len(machine_bytes)}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, (info, data) in members.items():
            if name == "manifest.json":
                data = json.dumps(manifest, indent=2, sort_keys=True).encode()
            elif name == "machine.json":
                data = machine_bytes
            zf.writestr(info, data)
    out.write_bytes(buffer.getvalue())
    return out


@pytest.fixture(scope="module")
def hundred_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("compare")
    results = _results(root)
    first = write_bundle(results, synth.HOST, root / "one.zip")
    (root / "bundles").mkdir()
    paths = [_rewrite(first, root / "bundles" / f"node-{i:03d}.zip", f"node-{i:03d}",
                      f"Synthetic CPU model {i % 7}") for i in range(N_BUNDLES)]
    return {"results": results, "paths": paths, "bytes": first.stat().st_size}


# The target is wall time on the machine's cores (bundles are opened side by side), so the wall
# clock, not this process's CPU time.
@pytest.mark.benchmark(timer=time.perf_counter)
def test_merge_100_bundles(bench: Any, hundred_bundles: dict[str, Any], arrow_threads: int
                           ) -> None:
    inp = hundred_bundles
    assert open_bundle(inp["paths"][0]).machine_id == "node-000"  # a valid, distinct bundle
    tables = bench.run(lambda: compare_from_files(inp["results"], synth.HOST,
                                                  bundles=inp["paths"]),
                       group="compare", rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    # Every machine is there, once, with its own rows; the lesson's slides as one more.
    machines = tables["machines"]
    assert len(machines) == N_BUNDLES + 2
    assert machines["machine_id"].is_unique
    own = bundle_from_results(inp["results"], synth.HOST)
    own_rows = sum(t.num_rows for name, t in own.tables.items() if name.endswith(
        "/timings.parquet"))
    assert len(tables["machines_epoch_time"]) == own_rows * (N_BUNDLES + 1)
    # Same synthetic numbers everywhere: every CPU comparison is bit-identical.
    cpu = tables["machines_agreement"][tables["machines_agreement"]["device"] == "cpu"]
    assert set(cpu["machine_id"]) == {f"node-{i:03d}" for i in range(N_BUNDLES)}
    assert (cpu["verdict"] == "identical").all()

    bench.extra_info.update(bundles=N_BUNDLES, bundle_bytes=inp["bytes"],
                            arrow_threads=arrow_threads)
    t = bench.median_s
    if t is not None:
        bench.extra_info.update(bundles_per_s=N_BUNDLES / t)
