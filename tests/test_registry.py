"""A third data set is one registry entry plus its config: the pipeline trains it and reports it.

In a temporary copy of the pipeline, with a copy of the mlpbench library first on PYTHONPATH
(the jobs import that copy), the test adds scikit-learn's ``make_moons`` as one entry at the end
of ``mlpbench/data.py``, writes a config that trains it beside the lesson's toy data, runs the
pipeline and finds the new data set in the training results, the summary tables and the report.
Nothing else is edited: the test checks that exactly one source file and one config file differ
from the repository.
"""

from __future__ import annotations

import filecmp
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlpbench.codeversion import package_dir
from workflow_helpers import REPO, TINY, copy_pipeline

# The whole change: appended to the copy of src/mlpbench/data.py.
MOONS_ENTRY = '''

def moons(n_samples: int = 200, noise: float = 0.2, random_state: int = 0,
          test_size: float = 0.3, split_random_state: int = 0) -> Dataset:
    """Two interleaving half circles: scikit-learn's make_moons, then train_test_split."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    x, y = make_moons(n_samples=n_samples, noise=noise, random_state=random_state)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_size, random_state=split_random_state
    )
    return _dataset("moons", x_train, y_train, x_test, y_test, n_classes=2)


register(DatasetEntry(
    name="moons",
    generator=moons,
    n_classes=lambda params: 2,
    split_sizes=fraction_split,
    split=SPLIT_WORDS,
    title="Moons",
    parameters={
        "n_samples": {"type": "integer", "minimum": 4},
        "noise": {"type": "number", "minimum": 0},
        "random_state": _SEED,
        "test_size": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "split_random_state": _SEED,
    },
))
'''

N_SAMPLES, TEST_SIZE = 60, 0.25  # 45 training and 15 test points


def moons_config() -> dict:
    """The tiny test config, on the CPU only, training the toy data and the moons."""
    config = yaml.safe_load(TINY.read_text())
    config["matmul"]["devices"] = ["cpu"]
    config["train"]["devices"] = ["cpu"]
    config["train"]["datasets"] = ["toy", "moons"]
    experiments = config["train"]["experiments"]
    experiments["moons"] = {
        **experiments["toy"],
        "data": {"n_samples": N_SAMPLES, "noise": 0.1, "test_size": TEST_SIZE},
    }
    del experiments["blobs"]
    return config


def changed_files(copy: Path, original: Path) -> list[str]:
    """Files under ``copy`` that are new or differ from those under ``original``."""
    changed = []
    for path in sorted(copy.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            twin = original / path.relative_to(copy)
            if not twin.is_file() or not filecmp.cmp(path, twin, shallow=False):
                changed.append(str(path.relative_to(copy)))
    return changed


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    work = copy_pipeline(root / "clone")
    lib = root / "lib" / "mlpbench"
    shutil.copytree(package_dir(), lib, ignore=shutil.ignore_patterns("__pycache__"))

    with open(lib / "data.py", "a", encoding="utf-8") as handle:
        handle.write(MOONS_ENTRY)
    (work / "moons.yaml").write_text(yaml.safe_dump(moons_config(), sort_keys=False))

    env = {**os.environ, "PYTHONPATH": str(lib.parent)}
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--configfile", "moons.yaml"],
        cwd=work, env=env, capture_output=True, text=True, timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work, lib


def test_the_change_is_one_source_file_and_the_config(run):
    work, lib = run
    assert changed_files(lib, package_dir()) == ["data.py"]
    edited = [f for f in changed_files(work, REPO)
              if not f.startswith(("results/", "logs/", ".snakemake/"))]
    assert edited == ["moons.yaml"]


def test_the_new_data_set_is_trained(run):
    work, _ = run
    assert sorted(p.name for p in (work / "results" / "train").iterdir()) == ["moons", "toy"]
    metrics = pd.read_parquet(work / "results" / "train" / "moons" / "cpu" / "metrics.parquet")
    assert set(metrics["dataset"]) == {"moons"}
    assert (metrics["status"] == "ok").all()
    assert metrics["test_acc"].between(0, 1).all()


def test_the_new_data_set_is_in_the_tables(run):
    work, _ = run
    tables = work / "results" / "tables"
    summary = pd.read_csv(tables / "train_summary.csv")
    assert set(summary["dataset"]) == {"toy", "moons"}
    points = pd.read_parquet(tables / "data_points.parquet")
    moons = points[points["dataset"] == "moons"]
    assert moons["split"].value_counts().to_dict() == {"train": 45, "test": 15}
    assert set(moons["label"]) == {0, 1}
    for name in ("loss_curves", "epoch_time", "grad_norms", "decision_regions"):
        table = pd.read_parquet(tables / f"{name}.parquet")
        assert "moons" in set(table["dataset"]), name


def test_the_new_data_set_is_in_the_report(run):
    work, _ = run
    html = (work / "results" / "report" / "report.html").read_text(encoding="utf-8")
    # its own section, titled from the registry entry's name, with its sizes from the run
    assert re.search(r"<h3[^>]*>\s*(<[^>]+>\s*)*Moons\b", html), "no section for the moons"
    assert re.search(r"moons\W+\s*60 points in 2 classes, 45", html)
