"""Performance regression gate: run the benchmark suite for real and compare with a baseline.

    python tests/benchmarks/gate.py                      # compare with this machine class's baseline
    python tests/benchmarks/gate.py --spread 5 --save-baseline tests/benchmarks/baselines/NAME.json

The first form runs ``pytest tests/benchmarks`` measuring, with
``--benchmark-compare=<baseline> --benchmark-compare-fail=median:<threshold>%``: it fails when
a benchmark's median is more than ``threshold`` percent above the baseline's, when a ratio
check (ensemble vs loop, same run) fails, or when a benchmark has no baseline entry (it would
otherwise go unguarded). The second form runs the suite N times, prints the spread of each
benchmark's median over the runs and the largest clean-run deviation a threshold must absorb,
and saves the most typical run as a new baseline.

The baseline and threshold default to ``MLPBENCH_BENCH_BASELINE`` / ``MLPBENCH_BENCH_THRESHOLD``,
else to the values below (the 2-core CI machine class). Arguments after ``--`` go to pytest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUITE = "tests/benchmarks"
DEFAULT_BASELINE = "tests/benchmarks/baselines/ci-cpu-2core.json"
# Percent the median may rise above the baseline's. Chosen from measured noise on the CI machine
# class (docs/benchmarks.md): the largest spread of a benchmark's median over clean runs was
# 24 %; 40 % sits near sqrt(2) - 1, as far (in ratio) from that noise as from a 2x slowdown.
DEFAULT_THRESHOLD = 40
# What makes two machines one class: a baseline only judges runs on the same CPU model, core
# count, torch build and GPU. Elsewhere its absolute times mean nothing, so the gate says so and
# keeps only the machine-independent ratio checks.
CLASS_KEYS = ("cpu_model", "logical_cores", "torch_version", "gpu")


def machine_class() -> dict[str, Any]:
    from mlpbench.machine import collect

    record = collect(1, "-")
    gpu = record["gpu"]
    return {"cpu_model": record["cpu_model"], "logical_cores": record["logical_cores"],
            "torch_version": record["versions"]["torch"],
            "gpu": gpu["name"] if gpu["available"] else "none"}


def _pytest(json_out: Path, extra: list[str]) -> int:
    # pytest-benchmark's storage stays the default, the git-ignored .benchmarks/: it must lie
    # under the working directory (its machine_info warning fails on a storage outside it).
    cmd = [
        sys.executable, "-m", "pytest", SUITE, "-p", "no:cacheprovider",
        "--benchmark-enable", "--benchmark-warmup=on", f"--benchmark-json={json_out}",
        "--benchmark-columns=min,median,max,iqr,rounds", "--benchmark-sort=name", *extra,
    ]
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=REPO)


def _medians(path: Path) -> dict[str, float]:
    data = json.loads(path.read_text())
    return {b["fullname"]: float(b["stats"]["median"]) for b in data["benchmarks"]}


def gate(baseline: Path, threshold: float, json_out: Path | None, extra: list[str],
         force: bool = False) -> int:
    if not baseline.is_file():
        print(f"gate: no baseline at {baseline}. Record one on this machine class with\n"
              f"  python {SUITE}/gate.py --spread 5 --save-baseline {baseline}", file=sys.stderr)
        return 2
    saved = json.loads(baseline.read_text())
    threads = str(saved["machine_info"].get("mlpbench_threads", 1))
    env_threads = os.environ.get("MLPBENCH_BENCH_THREADS", "1")
    if env_threads != threads:
        print(f"gate: the baseline was measured with {threads} thread(s), this run would use "
              f"{env_threads} (MLPBENCH_BENCH_THREADS): not comparable", file=sys.stderr)
        return 2
    here = machine_class()
    theirs = {key: saved["machine_info"].get(key) for key in CLASS_KEYS}
    if here != theirs and not force:
        print(f"gate: the baseline {baseline.name} is for another machine class\n"
              f"  baseline: {theirs}\n  here:     {here}\n"
              "gate: absolute comparison SKIPPED (record a baseline for this machine with "
              f"--spread 5 --save-baseline, or pass --force); ratio checks still run",
              file=sys.stderr)
        with tempfile.TemporaryDirectory() as tmp:
            rc = _pytest(json_out or Path(tmp) / "benchmarks.json", extra)
        print(f"gate: {'passed' if rc == 0 else f'FAILED (pytest exit code {rc})'} "
              "(ratio checks only)")
        return rc
    with tempfile.TemporaryDirectory() as tmp:
        out = json_out or Path(tmp) / "benchmarks.json"
        t0 = time.monotonic()
        # pytest runs in REPO: a path relative to it reads better in pytest-benchmark's tables.
        shown = baseline.relative_to(REPO) if baseline.is_relative_to(REPO) else baseline
        rc = _pytest(out, [
            f"--benchmark-compare={shown}", f"--benchmark-compare-fail=median:{threshold:g}%",
            *extra])
        now = _medians(out) if out.is_file() else {}
    then = _medians(baseline)
    missing = sorted(set(now) - set(then))
    if now:
        print(f"\ngate: median now vs {shown} (fails above +{threshold:g} %)")
        for name in sorted(now):
            if name in then:
                change = (now[name] / then[name] - 1) * 100
                flag = "REGRESSED" if change > threshold else "ok"
                print(f"  {name.split('::')[-1]:<40} {then[name] * 1e3:10.3f} ms -> "
                      f"{now[name] * 1e3:10.3f} ms  {change:+7.1f} %  {flag}")
    if missing:
        print("gate: no baseline entry for (re-record the baseline):\n  " + "\n  ".join(missing),
              file=sys.stderr)
        rc = rc or 1
    verdict = "passed" if rc == 0 else f"FAILED (pytest exit code {rc})"
    print(f"gate: {verdict} against {shown} with median threshold +{threshold:g}% "
          f"in {time.monotonic() - t0:.0f} s")
    return rc


def spread(runs: int, keep_dir: Path | None, save_baseline: Path | None, extra: list[str]) -> int:
    """Run the suite ``runs`` times; print each benchmark's median spread; keep the typical run."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = keep_dir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for i in range(1, runs + 1):
            path = folder / f"run{i}.json"
            rc = _pytest(path, extra)
            if rc != 0:
                print(f"spread: run {i} failed (exit code {rc}); a noise study needs clean runs",
                      file=sys.stderr)
                return rc
            paths.append(path)
        per_run = [_medians(p) for p in paths]
        names = sorted(set.intersection(*(set(m) for m in per_run)))
        center = {n: statistics.median(m[n] for m in per_run) for n in names}
        width = max(len(n.split("::")[-1]) for n in names)
        print(f"\nmedian of each run, {runs} runs (ms): min / median / max, max/min - 1")
        worst = 0.0
        for n in names:
            values = [m[n] for m in per_run]
            dev = max(values) / min(values) - 1
            worst = max(worst, dev)
            print(f"  {n.split('::')[-1]:<{width}}  {min(values) * 1e3:10.3f} "
                  f"{center[n] * 1e3:10.3f} {max(values) * 1e3:10.3f}  {dev * 100:6.1f} %")
        print(f"largest max/min - 1: {worst * 100:.1f} % (a threshold must exceed it; "
              f"a 2x slowdown is +100 %; sqrt(2) - 1 = 41 % splits the two evenly)")
        if save_baseline is not None:
            # The run closest to the per-benchmark median leaves the most room on both sides.
            def distance(m: dict[str, float]) -> float:
                return max(abs(math.log(m[n] / center[n])) for n in names)

            best = min(range(runs), key=lambda i: distance(per_run[i]))
            save_baseline.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(paths[best], save_baseline)
            print(f"saved run {best + 1} (largest deviation from the median "
                  f"{(math.exp(distance(per_run[best])) - 1) * 100:.1f} %) as {save_baseline}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path,
                        default=Path(os.environ.get("MLPBENCH_BENCH_BASELINE", DEFAULT_BASELINE)),
                        help="baseline JSON of this machine class (default: %(default)s)")
    parser.add_argument("--threshold", type=float,
                        default=float(os.environ.get("MLPBENCH_BENCH_THRESHOLD", DEFAULT_THRESHOLD)),
                        help="percent a median may rise above the baseline's (default: %(default)g)")
    parser.add_argument("--json", type=Path, help="also keep this run's pytest-benchmark JSON here")
    parser.add_argument("--force", action="store_true",
                        help="compare with the baseline even if it is for another machine class")
    parser.add_argument("--spread", type=int, metavar="N",
                        help="noise study: run the suite N times and print each median's spread")
    parser.add_argument("--keep", type=Path, help="with --spread: keep the runs' JSON in this folder")
    parser.add_argument("--save-baseline", type=Path, metavar="PATH",
                        help="with --spread: save the most typical run as the baseline PATH")
    args = parser.parse_args(argv)
    if args.threshold <= 0 or args.threshold != int(args.threshold):
        parser.error(f"--threshold: got {args.threshold:g}; allowed: a whole number of percent > 0")
    if args.spread is not None:
        if args.spread < 2:
            parser.error(f"--spread: got {args.spread}; allowed: 2 runs or more")
        return spread(args.spread, args.keep and args.keep.resolve(),
                      args.save_baseline and args.save_baseline.resolve(), extra)
    if args.save_baseline or args.keep:
        parser.error("--save-baseline and --keep go with --spread")
    return gate(args.baseline.resolve(), args.threshold, args.json and args.json.resolve(), extra,
                force=args.force)


if __name__ == "__main__":
    sys.exit(main())
