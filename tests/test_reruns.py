"""Reruns follow the code: an edit reruns the rules that run the edited code, a touch nothing.

The pipeline runs once on the tiny config, in a temporary copy of the workflow, with a copy of
the mlpbench library first on PYTHONPATH (the jobs import that copy, and the workflow digests
it), so the tests can edit library modules without touching the real tree. Every check after
that is a dry run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from mlpbench.codeversion import package_dir
from workflow_helpers import REPO, TINY, copy_pipeline

DOWNSTREAM_OF_TRAIN = {"lesson": 1, "aggregate": 1, "figures": 1, "report": 1, "all": 1}


def snakemake(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--configfile", "tiny.yaml", *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("reruns")
    work = copy_pipeline(root / "clone")
    shutil.copy(TINY, work / "tiny.yaml")
    lib = root / "lib" / "mlpbench"
    shutil.copytree(package_dir(), lib, ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(lib.parent)}
    where = subprocess.run([sys.executable, "-c", "import mlpbench; print(mlpbench.__file__)"],
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where) == lib / "__init__.py"
    result = snakemake(work, env, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, lib, env


def planned(pipeline) -> Counter:
    """Jobs a dry run plans, by rule (empty when there is nothing to be done)."""
    work, _, env = pipeline
    result = snakemake(work, env, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    if "Nothing to be done" in result.stdout + result.stderr:
        return Counter()
    stats = re.search(r"Job stats:\njob\s+count\n[- ]+\n(.*?)\ntotal", result.stdout, re.S)
    assert stats, result.stdout[-3000:]
    rows = (line.split() for line in stats.group(1).splitlines())
    return Counter({rule: int(count) for rule, count in rows})


def test_touching_unchanged_code_plans_nothing(pipeline):
    work, lib, _ = pipeline
    later = time.time() + 60
    touched = [*lib.glob("*.py"), *(work / "scripts").glob("*.py"), work / "report" / "report.py"]
    for path in touched:
        os.utime(path, (later, later))
    assert planned(pipeline) == Counter()


@pytest.mark.parametrize(
    ("edited", "expected"),
    [
        ("lib/figures.py", {"figures": 1, "report": 1, "all": 1}),
        # tables is imported by the aggregation, the figures and the report's own source.
        # the lesson rule uses the representative-seed rule in tables
        ("lib/tables.py", {"lesson": 1, "aggregate": 1, "figures": 1, "report": 1, "all": 1}),
        # training imports models only through ensemble: the import graph is followed.
        ("lib/models.py", {"train": 4, **DOWNSTREAM_OF_TRAIN}),
        ("scripts/train.py", {"train": 4, **DOWNSTREAM_OF_TRAIN}),
        ("report/report.py", {"report": 1, "all": 1}),
    ],
)
def test_editing_code_plans_its_rules_and_their_dependants_only(pipeline, edited, expected):
    work, lib, _ = pipeline
    where, name = edited.split("/")
    path = lib / name if where == "lib" else work / where / name
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"\n# an edit\n")
        assert planned(pipeline) == Counter(expected)
    finally:
        path.write_bytes(original)
    # Content decides, not modification times: the file is back as it was, newer than every output.
    assert planned(pipeline) == Counter()


def test_each_rules_code_version_digests_its_own_script():
    for smk in (REPO / "workflow" / "rules").glob("*.smk"):
        for block in re.split(r"\n(?=rule )", smk.read_text()):
            script = re.search(r'\n    script:\n        "([^"]+)"', block)
            if script is None:
                continue
            digested = re.search(r'code=code_version\(\s*workflow\.source_path\("([^"]+)"\)', block)
            assert digested and digested.group(1) == script.group(1), f"{smk.name}: {block[:60]}"
