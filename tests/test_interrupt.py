"""A hard kill in the middle of writing a job's outputs leaves no debris for the next run.

The training job writes its six tables one after the other, each to a hidden temp file renamed
into place. The kill lands after the first table has its final name and while the second one is
still a temp file: the worst moment. The next run must rerun the job, end with no temp file and
a complete set of tables, and never take the half-set for finished.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mlpbench.contract import TRAIN_TABLES
from workflow_helpers import TINY, copy_pipeline
OUT = Path("results/train/toy/cpu")
TARGET = str(OUT / "losses.parquet")

# Prepended to the copy's scripts/train.py: the second rename of a table into results/ never
# happens; instead SIGKILL hits the whole Snakemake run ("run") or the job alone ("job", as the
# OOM killer or a cluster's time limit would).
KILL_ON_SECOND_TABLE = """
import os, signal
_rename = os.replace
_renamed = []
def _rename_or_die(src, dst):
    if str(dst).endswith(".parquet"):
        if _renamed:
            if {whole_run}:
                os.killpg(os.getsid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        _renamed.append(dst)
    _rename(src, dst)
os.replace = _rename_or_die
"""


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    # A session of its own, so that killing the run's process group spares pytest.
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "tiny.yaml", *args],
        cwd=work, capture_output=True, text=True, timeout=600, start_new_session=True,
    )


def debris(work: Path) -> list[str]:
    return sorted(p.name for p in (work / OUT).iterdir() if p.name.endswith(".tmp"))


@pytest.mark.parametrize("killed", ["run", "job"])
def test_next_run_after_a_kill_mid_write_starts_clean(tmp_path, killed):
    work = copy_pipeline(tmp_path)
    shutil.copy(TINY, work / "tiny.yaml")
    script = work / "scripts" / "train.py"
    original = script.read_text()
    script.write_text(KILL_ON_SECOND_TABLE.format(whole_run=killed == "run") + original)

    first = snakemake(work, "--cores", "1", TARGET)
    assert first.returncode != 0, first.stderr[-2000:]
    # Killed mid-write: the second table's temp file is there, under its hidden name.
    assert len(debris(work)) == 1 and debris(work)[0].startswith(".metrics.parquet."), debris(work)
    if killed == "run":
        # The worst case: a table with its final name, the rest missing, and a stale lock.
        assert (work / OUT / "losses.parquet").exists()
        assert not (work / OUT / "metrics.parquet").exists()
        assert snakemake(work, "--unlock").returncode == 0
    else:
        # Snakemake saw its job fail and removed what the job had finished.
        assert not (work / OUT / "losses.parquet").exists()

    script.write_text(original)
    plan = snakemake(work, "-n", TARGET)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "rule train:" in plan.stdout + plan.stderr
    if killed == "run":
        # Snakemake's own record knows the half-set is unfinished: without the profile's
        # rerun-incomplete it refuses to go on; with it, it reruns the job from scratch.
        assert "forced" in plan.stdout
        strict = snakemake(work, "-n", "--workflow-profile", "none", TARGET)
        said = strict.stdout + strict.stderr
        assert strict.returncode != 0, said[-2000:]
        assert "Incomplete files:\nresults/train/toy/cpu/losses.parquet" in said, said[-2000:]

    rerun = snakemake(work, "--cores", "1", TARGET)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert debris(work) == []
    finished = sorted(p.name for p in (work / OUT).iterdir())
    assert finished == sorted(f"{table}.parquet" for table in TRAIN_TABLES)
    assert "left by an interrupted write" in (work / "logs/train/toy_cpu.log").read_text()
    again = snakemake(work, "-n", TARGET)
    assert "Nothing to be done" in again.stdout + again.stderr
