"""Ratio checks that do not depend on the machine's speed: ensemble vs the lesson's loop.

Both ways of training 64 seeds are timed in this process, interleaved by
``ensemble_speedup.measure`` so that a busy machine slows both alike, and the test asserts
the ensemble's advantage (the loop's total over the ensemble's median). A faster or slower
machine moves both numbers together; a regression in either code path moves the ratio.

The toy check takes a few seconds and runs in plain ``pytest`` too. The blobs check takes
about ten and is marked ``gate_only``: plain runs deselect it, measuring runs (the gate) keep it.
"""

from __future__ import annotations

from typing import Any

import pytest
from ensemble_speedup import measure, prepare

from mlpbench.timing import thread_limits

SEEDS = 64
EPOCHS = 100
ROUNDS = 5  # ensemble runs the median is taken over
# dataset -> (width, depth, least ratio): well below the ratios measured under pytest on the
# 2-core CI machine class with other jobs running (over 30 runs at 100 epochs, one thread:
# toy 22-38x, blobs 8.0-10.2x). Building 64 networks weighs more at 100 epochs than at the
# lesson's 1000, where ensemble_speedup.py sees about 100x and 10x.
CASES = {
    "toy": (4, 1, 15.0),
    "blobs": (32, 1, 5.0),
}


@pytest.mark.parametrize(
    "dataset", [pytest.param("toy"), pytest.param("blobs", marks=pytest.mark.gate_only)])
def test_ensemble_faster_than_loop(dataset: str, bench_threads: int, record_ratio: Any) -> None:
    width, depth, least = CASES[dataset]
    case = prepare(dataset, width, depth, n_seeds=SEEDS, epochs=EPOCHS)
    with thread_limits(bench_threads):
        r = measure(case, rounds=ROUNDS)
    record_ratio({"case": case.name, "seeds": SEEDS, "epochs": EPOCHS, "threads": bench_threads,
                  "min_ratio": least, **r})
    assert r["ratio"] >= least, (
        f"{case.name}: {SEEDS} seeds as one ensemble are only {r['ratio']:.1f}x faster than "
        f"{SEEDS} runs of the lesson's loop (need >= {least:g}x): loop {r['loop_total_s']:.2f} s, "
        f"ensemble median {r['ensemble_median_s'] * 1e3:.1f} ms"
    )
