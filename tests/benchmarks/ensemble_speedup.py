"""Ensemble vs the lesson's loop: 64 seeds of one shape, trained one by one or as one batch.

Run as a script (``python tests/benchmarks/ensemble_speedup.py``): it times both ways on the toy
data (the lesson's 2-4-3 network) and on blobs (2-32-4), prints the ratios and the medians, and
exits non-zero when toy is under 30x or blobs under 8x. ``prepare`` and ``measure`` are importable
so a pytest-benchmark suite can time the same work.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mlpbench import data, ensemble
from mlpbench.training import lesson_loop

THRESHOLDS = {"toy": 30.0, "blobs": 8.0}
CASES = {"toy": (4, 1), "blobs": (32, 1)}  # dataset -> (width, depth)


@dataclass
class Case:
    """One comparison: ``loop_one(seed)`` trains one member the lesson's way, ``ensemble()`` all."""

    name: str
    seeds: list[int]
    epochs: int
    loop_one: Callable[[int], object]
    ensemble: Callable[[], object]

    def loop_all(self) -> None:
        for seed in self.seeds:
            self.loop_one(seed)


def prepare(
    dataset: str, width: int, depth: int, n_seeds: int = 64, epochs: int = 1000, lr: float = 0.001
) -> Case:
    """Seeds 0..n_seeds-1 of one shape, full batch, SGD at ``lr``: the lesson's set-up."""
    ds = data.load(dataset)
    arch = ensemble.Architecture(ds.n_features, width, depth, ds.n_classes)
    y_onehot = data.one_hot(ds.y_train, ds.n_classes)
    seeds = list(range(n_seeds))

    def loop_one(seed: int) -> object:
        torch.manual_seed(seed)
        return lesson_loop(arch.module(), ds.x_train, y_onehot, epochs, lr)

    def run_ensemble() -> object:
        params = ensemble.init_params(arch, seeds)
        return ensemble.train_ensemble(arch, params, ds.x_train, ds.y_train, [lr] * n_seeds, epochs)

    name = f"{dataset} {ds.n_features}-{'-'.join([str(width)] * depth)}-{ds.n_classes}"
    return Case(name, seeds, epochs, loop_one, run_ensemble)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(case: Case, rounds: int = 5) -> dict[str, float]:
    """Time every seed through the loop once and the whole ensemble ``rounds`` times.

    The two are interleaved (each round: one ensemble run, then the next share of the loop's
    seeds) so that a busy machine slows both alike. The ratio is the loop's total over the
    ensemble's median; both start after one untimed warm-up.
    """
    case.loop_one(case.seeds[0])
    case.ensemble()
    loop_runs: list[float] = []
    ens_runs: list[float] = []
    shares = [case.seeds[i::rounds] for i in range(rounds)]
    for share in shares:
        ens_runs.append(_timed(case.ensemble))
        loop_runs.extend(_timed(lambda s=s: case.loop_one(s)) for s in share)
    loop_total = sum(loop_runs)
    ens_median = statistics.median(ens_runs)
    return {
        "loop_total_s": loop_total,
        "loop_run_median_s": statistics.median(loop_runs),
        "ensemble_median_s": ens_median,
        "ensemble_iqr_s": _iqr(ens_runs),
        "ratio": loop_total / ens_median,
    }


def _iqr(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch intra-op threads (default 1, as the training stage)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="ensemble runs to take the median of")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seeds} seeds, {args.epochs} epochs, CPU")
    failed = []
    for dataset, (width, depth) in CASES.items():
        case = prepare(dataset, width, depth, args.seeds, args.epochs)
        r = measure(case, args.rounds)
        verdict = "ok" if r["ratio"] >= THRESHOLDS[dataset] else "TOO SLOW"
        print(
            f"{case.name}: loop {r['loop_total_s']:.2f} s ({args.seeds} runs, median "
            f"{r['loop_run_median_s'] * 1e3:.1f} ms/run), ensemble median {r['ensemble_median_s'] * 1e3:.1f} ms "
            f"(IQR {r['ensemble_iqr_s'] * 1e3:.1f} ms, {args.rounds} runs) -> {r['ratio']:.1f}x "
            f"(need >= {THRESHOLDS[dataset]:.0f}x: {verdict})"
        )
        if r["ratio"] < THRESHOLDS[dataset]:
            failed.append(dataset)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
