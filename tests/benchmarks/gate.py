"""Performance regression gate: run the benchmark suite for real and compare with a baseline.

    python tests/benchmarks/gate.py                      # compare with the CI baseline
    python tests/benchmarks/gate.py --baseline tests/benchmarks/baselines/NAME.json
    python tests/benchmarks/gate.py --spread 5 --save-baseline tests/benchmarks/baselines/NAME.json

The first two forms run ``pytest tests/benchmarks`` measuring, with
``--benchmark-compare=<baseline> --benchmark-compare-fail=median:<threshold>%``. The gate fails
(exit code 1) when

- a benchmark's median is more than ``threshold`` percent above the baseline's;
- a ratio check (ensemble vs loop, same run) or any benchmark's own result check fails;
- a baseline entry (benchmark or ratio check) was not measured: skipped (a baseline recorded
  with a GPU, on a runner whose GPU is gone), deselected (``-- -k ...``) or removed from the
  suite; what was not measured is named, with the reason pytest gave;
- a measured benchmark has no baseline entry (it would otherwise go unguarded).

A baseline only judges its own machine class (``CLASS_KEYS``). The default baseline (the 2-core
CI machine class) elsewhere gives a loud "other machine class: ratio checks only" run. A
baseline named with ``--baseline`` or ``MLPBENCH_BENCH_BASELINE`` is the runner's own: on
another class the gate stops (exit code 2) before running anything, unless
``--allow-other-class`` (ratio checks only) or ``--force`` (compare absolute times anyway).
Exit code 2 also means a baseline that is missing, damaged or of another thread count.

The third form runs the suite N times, prints the spread of each benchmark's median over the
runs and the largest clean-run deviation a threshold must absorb, and saves the most typical
run as a new baseline.

The threshold defaults to ``MLPBENCH_BENCH_THRESHOLD``, else to the value below. Arguments
after ``--`` go to pytest.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
SUITE = "tests/benchmarks"
DEFAULT_BASELINE = "tests/benchmarks/baselines/ci-cpu-2core.json"
BASELINE_ENV = "MLPBENCH_BENCH_BASELINE"
THRESHOLD_ENV = "MLPBENCH_BENCH_THRESHOLD"
# Percent the median may rise above the baseline's. Chosen from measured noise on the CI machine
# class (docs/benchmarks.md): the largest spread of a benchmark's median over clean runs was
# 24 %; 40 % sits near sqrt(2) - 1, as far (in ratio) from that noise as from a 2x slowdown.
DEFAULT_THRESHOLD = 40
# What makes two machines one class: a baseline only judges runs on the same CPU model, core
# count, torch build and GPU. Elsewhere its absolute times mean nothing.
CLASS_KEYS = ("cpu_model", "logical_cores", "torch_version", "gpu")
# Exit codes: 1 the gate failed on this run's numbers; 2 it could not judge (nothing measured).
FAILED, REFUSED = 1, 2

# (json_out, extra pytest arguments) -> pytest's exit code; writes pytest-benchmark's JSON.
Runner = Callable[[Path, list[str]], int]


class GateError(Exception):
    """The gate cannot judge: a baseline or run file that is missing or damaged."""


def machine_class() -> dict[str, Any]:
    """This machine's values of ``CLASS_KEYS``, as the suite's conftest writes them."""
    from mlpbench.machine import collect

    record = collect("-")
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


@dataclass
class Run:
    """One pytest-benchmark JSON file of this suite: a baseline or the run just made."""

    path: Path
    machine_info: dict[str, Any]
    medians: dict[str, float]  # benchmark fullname -> median seconds per call
    devices: dict[str, str]  # benchmark fullname -> extra_info["device"] where stated
    ratios: list[str]  # cases of the ratio checks (ensemble vs loop) in this run
    not_run: dict[str, str] = field(default_factory=dict)  # test id -> why it did not run

    @classmethod
    def load(cls, path: Path, what: str) -> Run:
        """Read ``path``; a missing or damaged file raises GateError naming it and the field."""
        try:
            data = json.loads(path.read_text())
        except OSError as exc:
            raise GateError(f"{what} {path}: cannot be read ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise GateError(f"{what} {path}: not valid JSON ({exc})") from None
        try:
            medians, devices = {}, {}
            for b in data["benchmarks"]:
                medians[b["fullname"]] = float(b["stats"]["median"])
                device = (b.get("extra_info") or {}).get("device")
                if device:
                    devices[b["fullname"]] = device
            return cls(path=path, machine_info=dict(data["machine_info"]), medians=medians,
                       devices=devices,
                       ratios=[str(r["case"]) for r in data.get("mlpbench_ratios", [])],
                       not_run=dict(data.get("mlpbench_not_run", {})))
        except KeyError as exc:
            raise GateError(f"{what} {path}: not a pytest-benchmark JSON of this suite "
                            f"(field {exc.args[0]!r} missing)") from None
        except (TypeError, ValueError) as exc:
            raise GateError(f"{what} {path}: not a pytest-benchmark JSON of this suite "
                            f"(a field of the wrong type: {exc})") from None

    def machine_class(self) -> dict[str, Any]:
        return {key: self.machine_info.get(key) for key in CLASS_KEYS}


def unmeasured(baseline: Run, now: Run) -> list[str]:
    """Lines naming each baseline entry this run did not measure, with why where known."""
    lines = []
    for name in sorted(set(baseline.medians) - set(now.medians)):
        why = now.not_run.get(name, "not in this run (not collected, or it failed before "
                                    "measuring)")
        if baseline.devices.get(name) == "cuda" and now.machine_info.get("gpu") == "none":
            why += f"; the baseline was recorded with the GPU {baseline.machine_info.get('gpu')}" \
                   f", this machine has none ({now.machine_info.get('gpu_reason')})"
        lines.append(f"{name}: {why}")
    for case in sorted(set(baseline.ratios) - set(now.ratios)):
        lines.append(f"ratio check {case!r} (tests/benchmarks/test_ratios.py): not in this run")
    return lines


def gate(baseline: Path, threshold: float, json_out: Path | None, extra: list[str], *,
         named: bool, allow_other_class: bool = False, force: bool = False,
         here: dict[str, Any] | None = None, runner: Runner = _pytest) -> int:
    """Run the suite with ``runner`` and judge it against ``baseline``; returns the exit code.

    ``named``: the baseline was chosen for this runner (argument or environment variable), so
    a machine class mismatch refuses to run unless ``allow_other_class`` or ``force``.
    ``here``: this machine's class (default: ``machine_class()``).
    """
    try:
        then = Run.load(baseline, "baseline")
    except GateError as exc:
        hint = ("" if baseline.exists() else
                f"\n  record one on this machine class with\n"
                f"  python {SUITE}/gate.py --spread 5 --save-baseline {baseline}")
        print(f"gate: {exc}{hint}", file=sys.stderr)
        return REFUSED
    threads = str(then.machine_info.get("mlpbench_threads", 1))
    env_threads = os.environ.get("MLPBENCH_BENCH_THREADS", "1")
    if env_threads != threads:
        print(f"gate: the baseline was measured with {threads} thread(s), this run would use "
              f"{env_threads} (MLPBENCH_BENCH_THREADS): not comparable", file=sys.stderr)
        return REFUSED
    here = machine_class() if here is None else here
    theirs = then.machine_class()
    # pytest runs in REPO: a path relative to it reads better in pytest-benchmark's tables.
    shown = baseline.relative_to(REPO) if baseline.is_relative_to(REPO) else baseline
    absolute = here == theirs or force
    if not absolute:
        mismatch = (f"the baseline {shown} is for another machine class\n"
                    f"  baseline: {theirs}\n  here:     {here}")
        if named and not allow_other_class:
            print(f"gate: REFUSED: {mismatch}\n"
                  f"gate: it was named for this runner ({BASELINE_ENV} or --baseline), so this "
                  "runner is not what the baseline describes (a lost GPU looks like this).\n"
                  "  Fix the runner, record a baseline for it (--spread 5 --save-baseline), or "
                  "pass --allow-other-class (ratio checks only) or --force (compare anyway)",
                  file=sys.stderr)
            return REFUSED
        print(f"gate: {mismatch}\n"
              "gate: absolute comparison SKIPPED (record a baseline for this machine with "
              "--spread 5 --save-baseline, or pass --force); ratio checks still run",
              file=sys.stderr)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        out = json_out or Path(tmp) / "benchmarks.json"
        compare = ([f"--benchmark-compare={shown}",
                    f"--benchmark-compare-fail=median:{threshold:g}%"] if absolute else [])
        rc = runner(out, [*compare, *extra])
        try:
            now = Run.load(out, "this run's benchmark JSON")
        except GateError as exc:
            print(f"gate: {exc}", file=sys.stderr)
            now = None
    problems = []
    if rc != 0:
        problems.append(f"pytest exit code {rc}")
    if now is None:
        problems.append("no benchmark JSON from this run")
    else:
        missing = unmeasured(then, now)
        if missing:
            print(f"gate: {len(missing)} baseline entr{'y' if len(missing) == 1 else 'ies'} "
                  f"of {shown} not measured in this run:\n  " + "\n  ".join(missing),
                  file=sys.stderr)
            problems.append(f"{len(missing)} baseline entries not measured")
        if absolute:
            problems += _compare(then, now, threshold, shown)
    mode = (f"against {shown} with median threshold +{threshold:g}%" if absolute
            else f"with ratio checks only ({shown} is for another machine class)")
    verdict = "passed" if not problems else f"FAILED ({'; '.join(problems)})"
    print(f"gate: {verdict} {mode} in {time.monotonic() - t0:.0f} s")
    return 0 if not problems else FAILED


def _compare(then: Run, now: Run, threshold: float, shown: Path) -> list[str]:
    """Print each median against the baseline's; the problems found (regressions, no entry)."""
    problems = []
    if now.medians:
        print(f"\ngate: median now vs {shown} (fails above +{threshold:g} %)")
    regressed = 0
    for name in sorted(set(now.medians) & set(then.medians)):
        change = (now.medians[name] / then.medians[name] - 1) * 100
        flag = "REGRESSED" if change > threshold else "ok"
        regressed += change > threshold
        print(f"  {name.split('::')[-1]:<40} {then.medians[name] * 1e3:10.3f} ms -> "
              f"{now.medians[name] * 1e3:10.3f} ms  {change:+7.1f} %  {flag}")
    if regressed:
        problems.append(f"{regressed} regressed above +{threshold:g} %")
    new = sorted(set(now.medians) - set(then.medians))
    if new:
        print("gate: no baseline entry for (re-record the baseline):\n  " + "\n  ".join(new),
              file=sys.stderr)
        problems.append(f"{len(new)} benchmarks without a baseline entry")
    return problems


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
        per_run = [Run.load(p, f"spread run {i}").medians for i, p in enumerate(paths, 1)]
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


def main(argv: list[str] | None = None, *, runner: Runner = _pytest,
         here: dict[str, Any] | None = None) -> int:
    """The command line; ``runner`` and ``here`` replace pytest and this machine in tests."""
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1:]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path,
                        help=f"this runner's baseline JSON (default: ${BASELINE_ENV}, else the "
                             f"CI baseline {DEFAULT_BASELINE}); a named baseline must match "
                             "this machine class")
    parser.add_argument("--threshold", type=float,
                        default=float(os.environ.get(THRESHOLD_ENV, DEFAULT_THRESHOLD)),
                        help="percent a median may rise above the baseline's (default: %(default)g)")
    parser.add_argument("--json", type=Path, help="also keep this run's pytest-benchmark JSON here")
    parser.add_argument("--allow-other-class", action="store_true",
                        help="run a named baseline of another machine class with ratio checks "
                             "only, instead of refusing")
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
    # Named: chosen for this runner. An empty variable counts as unset.
    from_env = os.environ.get(BASELINE_ENV) or None
    named = args.baseline or (Path(from_env) if from_env else None)
    baseline = named or REPO / DEFAULT_BASELINE
    return gate(baseline.resolve(), args.threshold, args.json and args.json.resolve(), extra,
                named=named is not None, allow_other_class=args.allow_other_class,
                force=args.force, here=here, runner=runner)


if __name__ == "__main__":
    sys.exit(main())
