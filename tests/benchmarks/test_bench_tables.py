"""Aggregation benchmark: ``mlpbench.tables.build_tables`` over a results set of realistic size.

The inputs come from ``synthetic_results`` (contract-shaped stage outputs) scaled to the
default experiment of ``config/config.yaml``: 16 seeds, epochs 1000..10000, widths 4..64,
depths 1..6 (sweep mode), a 60 x 60 decision grid, the default matmul shapes, CPU results and
unavailable CUDA. That is about 290 000 loss rows per data set and 16 MB of parquet.
Arrow's CPU thread pool (parquet decoding) gets the suite's thread count, like torch and BLAS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import synthetic_results as synth

from mlpbench.tables import build_tables

# The default experiment's sizes (config/config.yaml).
SCALE = {
    "SEEDS": list(range(16)),
    "EPOCHS": [1000, 2000, 5000, 10000],
    "WIDTHS": [4, 8, 16, 32, 64],
    "DEPTHS": [1, 2, 3, 4, 6],
    "BASELINE": {"epochs": 1000, "width": 4, "depth": 1, "lr": 0.001},
    "GRID": 60,
}
MATMUL_SHAPES = (
    [("lesson", 1, 6400, 5000)]
    + [("square", s, s, s) for s in (256, 512, 1024, 2048, 4096)]
    + [("gemv", 1, k, n) for k, n in ((800, 625), (1600, 1250), (3200, 2500), (6400, 5000))]
)
ROUNDS, WARMUP_ROUNDS = 7, 1


@pytest.fixture(scope="module")
def realistic_inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Write the scaled synthetic results once; returns build_tables' arguments and sizes."""
    root = tmp_path_factory.mktemp("results")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in SCALE.items():
            mp.setattr(synth, name, value)
        mp.setattr(synth, "matmul_shapes", lambda: list(MATMUL_SHAPES))
        inputs = synth.write_inputs(root)
        expected_curves = sum(  # one loss_curves row per shape x epoch of each dataset's CPU job
            trained for _, _, trained in synth.sweep_shapes()) * len(synth.DATASETS)
    files = [*inputs.matmul_files, *inputs.machine_files,
             *(p for d in inputs.train_dirs for p in Path(d).glob("*.parquet"))]
    return {
        "args": (inputs.matmul_files, inputs.train_dirs, inputs.machine_files),
        "kwargs": {"train_cfg": inputs.train_cfg, "points_loader": synth.load_points},
        "expected_curves": expected_curves,
        "input_rows": sum(len(pd.read_parquet(p)) for p in files if p.suffix == ".parquet"),
        "input_bytes": sum(p.stat().st_size for p in files),
    }


def test_build_tables(bench: Any, realistic_inputs: dict[str, Any], arrow_threads: int) -> None:
    inp = realistic_inputs
    tables = bench.run(lambda: build_tables(*inp["args"], **inp["kwargs"]),
                       group="aggregation", rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    # Every table is there and the big ones have a row per thing they describe.
    assert {"matmul", "train_summary", "loss_curves", "epoch_time", "grad_norms",
            "machine"} <= set(tables)
    assert len(tables["loss_curves"]) == inp["expected_curves"]
    assert len(tables["matmul"]) == len(pd.concat(pd.read_parquet(p) for p in inp["args"][0]))
    assert (tables["loss_curves"]["n_seeds"] > 0).all()

    bench.extra_info.update(input_rows=inp["input_rows"], input_bytes=inp["input_bytes"],
                            arrow_threads=arrow_threads)
    t = bench.median_s
    if t is not None:
        bench.extra_info.update(input_rows_per_s=inp["input_rows"] / t,
                                input_mb_per_s=inp["input_bytes"] / t / 1e6)
