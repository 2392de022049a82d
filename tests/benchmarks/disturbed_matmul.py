"""Disturb the matmul stage on purpose and check that the pipeline notices.

Run as a script from the repository root::

    python tests/benchmarks/disturbed_matmul.py [--cpu N] [--keep DIR]

It copies the pipeline into a temporary folder and runs it twice up to the summary tables
(``snakemake --cores 2 <tables>``, a small training grid and the default matmul sweep on the
CPU):

1. *quiet*: nothing else is started;
2. *disturbed*: as soon as the matmul job has started (its log file exists) a CPU-bound Python
   process is started, pinned to one CPU (``--cpu``, default the first this process may use) by
   its PID, and killed by its PID when the matmul table has been written.

For each run it prints how many timings the guard flagged ``noisy``, the largest number of
threads seen waiting for a CPU, and the report's headline (the "At a glance" bullets). It exits
non-zero when the disturbed run flags nothing, or when the headline of either run rests on a
flagged row. A quiet run should flag none; on a machine that other work keeps busy it flags
what that work disturbed, which the output shows (the script does not fail for it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from workflow_helpers import TINY, copy_pipeline  # noqa: E402

# The default matmul sweep on the CPU only, a tiny training grid (it is not what is tested).
MATMUL = ("matmul={devices: [cpu], threads: 0, min_run_time_s: 0.1, min_samples: 5, "
          "max_attempts: 3, square: [256, 512, 1024], "
          "gemv: [[800, 625], [1600, 1250], [3200, 2500], [6400, 5000]], "
          "lesson_case: {m: 1, k: 6400, n: 5000}, bandwidth_mib: 256}")
TRAIN = "train={devices: [cpu]}"


def run_pipeline(workdir: Path, cpu: int | None) -> dict:
    """Run the pipeline to the summary tables; with ``cpu``, disturb the matmul job there."""
    cmd = [sys.executable, "-m", "snakemake", "results/tables/findings.parquet", "--cores", "2",
           "--configfile", str(TINY), "--config", MATMUL, TRAIN, "machine_id=disturbed-test"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    started = time.perf_counter()
    pipeline = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    hog = None
    log, table = workdir / "logs/matmul/cpu.log", workdir / "results/matmul/cpu.parquet"
    try:
        while pipeline.poll() is None:
            if cpu is not None and hog is None and log.exists():
                hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
                os.sched_setaffinity(hog.pid, {cpu})
                print(f"  started CPU-bound process PID {hog.pid} on CPU {cpu}")
            if hog is not None and table.exists():
                break
            time.sleep(0.05)
    finally:
        if hog is not None:
            hog.kill()  # by its PID
            hog.wait()
            print(f"  stopped PID {hog.pid}")
    out, _ = pipeline.communicate()
    if pipeline.returncode != 0:
        print(out[-4000:])
        raise SystemExit(f"snakemake failed with exit status {pipeline.returncode}")
    return summarise(workdir, time.perf_counter() - started)


def summarise(workdir: Path, seconds: float) -> dict:
    from mlpbench.narrative import Story
    from mlpbench.tables import load_tables

    tables = load_tables(workdir / "results/tables")
    mm, findings = tables["matmul"], tables["findings"]
    measured = mm[mm["status"] == "ok"]
    noisy = measured[measured["noisy"]]
    fastest = findings[findings["finding"] == "lesson_fastest"]
    headline_noisy = False
    if len(fastest):
        import json

        row = json.loads(fastest["evidence"].iloc[0])["fastest"]
        match = measured[(measured["backend"] == row["backend"])
                         & (measured["device"] == row["device"])
                         & (measured["dtype"] == row["dtype"]) & (measured["case"] == "lesson")
                         & (measured["kind"] == "matmul")]
        headline_noisy = bool(match["noisy"].any())
    return {"seconds": seconds, "measured": len(measured), "noisy": len(noisy),
            "max_wait": float(measured["cpu_wait_threads"].max()),
            "noisy_rows": noisy[["backend", "dtype", "case", "kind", "n", "cpu_wait_threads",
                                 "attempts"]],
            "headline_noisy": headline_noisy, "glance": Story(tables).glance()}


def report(name: str, r: dict) -> None:
    print(f"{name}: {r['noisy']} of {r['measured']} timings flagged noisy; most threads "
          f"waiting for a CPU: {r['max_wait']:.2f}; pipeline to the tables {r['seconds']:.0f} s")
    if r["noisy"]:
        print(r["noisy_rows"].to_string(index=False))
    print("  headline rests on a noisy row:", r["headline_noisy"])
    print("  " + r["glance"].replace("\n", "\n  "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", type=int, default=min(os.sched_getaffinity(0)),
                        help="CPU the disturbing process is pinned to")
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "src"))
    results = {}
    for name, cpu in (("quiet", None), ("disturbed", args.cpu)):
        base = (args.keep / name) if args.keep else Path(tempfile.mkdtemp(prefix=f"{name}-"))
        base.mkdir(parents=True, exist_ok=True)
        print(f"{name} run in {base}")
        results[name] = run_pipeline(copy_pipeline(base), cpu)
        report(name, results[name])
    failures = []
    if results["disturbed"]["noisy"] == 0:
        failures.append("the disturbed run flagged no timing")
    failures += [f"the {n} run's headline rests on a noisy row" for n, r in results.items()
                 if r["headline_noisy"]]
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
