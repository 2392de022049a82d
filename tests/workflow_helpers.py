"""Run the real pipeline on a copy of the repository's workflow in a temporary folder."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.yaml"
# What a user's clone holds that the pipeline reads.
PIPELINE_PARTS = ["workflow", "config", "scripts", "report"]


def copy_pipeline(dest: Path) -> Path:
    for part in PIPELINE_PARTS:
        if (REPO / part).exists():
            shutil.copytree(REPO / part, dest / part, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``snakemake`` as a user runs it from the clone's root (the default profile applies)."""
    cmd = [sys.executable, "-m", "snakemake", *args]
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)


def run_tiny(dest: Path, *targets: str) -> tuple[Path, subprocess.CompletedProcess]:
    """A copy of the pipeline in ``dest`` run on the tiny config (``targets`` first, e.g.
    ``bundle``) with 2 cores; fails the test with the output's tail unless it succeeded."""
    import shutil

    work = copy_pipeline(dest)
    shutil.copy(TINY, work / "tiny.yaml")
    result = snakemake(work, *targets, "--cores", "2", "--configfile", "tiny.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, result
