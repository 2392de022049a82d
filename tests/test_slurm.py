"""The pipeline run through SLURM gives the results of a local run.

A real single-node SLURM cluster (tests/slurm/cluster.sh: munged, slurmctld, slurmd from Debian's
packages, a stand-in GPU declared in gres.conf) runs the tiny config through
``--executor slurm`` with the project's profile, while the same config runs locally beside it.
Checked: every stage table equals the local run's on every column that is not a time
measurement; CUDA jobs asked SLURM for a GPU in the GPU partition, were given one on the node
and took the CUDA-unavailable path; timing jobs held their node exclusively; the defaults
`machine_id: null` and `matmul.threads: 0` work although the node has a host name of its own and
a cluster run has no --cores; every daemon stops.
A dry run also checks, without a cluster, that the profile takes partition, account and GPU
model from the environment.

Opt-in, because it installs system packages and starts root daemons: set MLPBENCH_SLURM_TEST=1
(CI does where it runs as root with apt reachable). Takes about a minute and a half.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from mlpbench.config import machine_id
from workflow_helpers import REPO, TINY, copy_pipeline

CLUSTER = REPO / "tests" / "slurm" / "cluster.sh"
DAEMONS = ("munged", "slurmctld", "slurmd")
SLURM_BINARIES = (*DAEMONS, "sbatch", "squeue", "scontrol", "srun")
RUN_TIMEOUT_S = 420
TRAIN_TABLES = ["losses", "metrics", "predictions", "timings", "gradnorms", "decision"]
# Columns that hold time measurements (or numbers derived from them): they differ between any
# two runs. Host names differ between a cluster's nodes and the submitting machine.
MEASURED = {
    "host", "time_s_median", "time_s_iqr", "n_runs", "number_per_run", "gflop_s", "gb_s",
    "bandwidth_gb_s", "bandwidth_share", "time_s", "time_per_epoch_s", "time_per_member_epoch_s",
    "time_per_epoch_s_min", "time_per_epoch_s_max", "time_per_epoch_s_iqr",
    "attempts", "cpu_wait_threads", "noisy", "noise_reason", "compute_roof_gflop_s",
    "compute_share", "ridge_flop_per_byte", "bound", "speedup_vs_numpy_float64",
    "speedup_vs_numpy_same_dtype",
}


def _not_possible() -> str | None:
    """Why this machine cannot run the test, or None."""
    if os.environ.get("MLPBENCH_SLURM_TEST") != "1":
        return ("opt-in: set MLPBENCH_SLURM_TEST=1 to start a throwaway SLURM cluster "
                "(needs root; installs Debian's munge and slurm packages with apt if missing)")
    if not sys.platform.startswith("linux") or os.geteuid() != 0:
        return "needs root on Linux: the SLURM and munge daemons run as root and as user munge"
    missing = [b for b in SLURM_BINARIES if shutil.which(b) is None]
    if missing and shutil.which("apt-get") is None:
        return f"SLURM binaries missing ({', '.join(missing)}) and no apt-get to install them"
    return None


needs_cluster = pytest.mark.skipif(_not_possible() is not None, reason=str(_not_possible()))
needs_plugin = pytest.mark.skipif(
    importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
    reason="the SLURM executor plugin is not installed (pip install -e '.[slurm]')",
)


def _ensure_installed() -> None:
    if all(shutil.which(b) for b in SLURM_BINARIES):
        return
    done = subprocess.run([str(CLUSTER), "install"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"installing SLURM failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}"


def _snakemake(*args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "--configfile", "config/tiny.yaml", *args]


def _pipeline_copy(root: Path) -> Path:
    root.mkdir()
    copy_pipeline(root)
    shutil.copy(TINY, root / "config" / "tiny.yaml")
    return root


def _parse_jobs(text: str) -> list[dict[str, str]]:
    """``scontrol -o show job`` lines as dicts (the first value of a repeated key wins)."""
    jobs = []
    for line in text.splitlines():
        fields: dict[str, str] = {}
        for key, value in re.findall(r"(\S+?)=(\S*)", line):
            fields.setdefault(key, value)
        if "JobId" in fields:
            jobs.append(fields)
    return jobs


def _rule_and_device(comment: str) -> tuple[str, str | None]:
    """The executor names each job ``rule_<rule>[_wildcards_<values joined by _>]``."""
    match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_(\S+))?", comment)
    assert match, comment
    rule, wildcards = match.groups()
    device = wildcards.split("_")[-1] if wildcards else None
    return rule, device


def _dry_run_resources(workdir: Path, env: dict[str, str]) -> list[tuple[str, dict, dict]]:
    """(rule, wildcards, resources) of every job, as a dry run with the SLURM profile plans them."""
    done = subprocess.run(
        _snakemake("--workflow-profile", "workflow/profiles/slurm", "--dry-run", "--forceall"),
        cwd=workdir, capture_output=True, text=True, timeout=300, env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    def pairs(line: str) -> dict[str, str]:
        return dict(item.split("=", 1) for item in line.split(", ")) if line else {}

    jobs = []
    for block in re.split(r"\n(?=rule \w+:)", done.stdout):
        rule = re.match(r"rule (\w+):", block)
        if rule and rule.group(1) != "all":
            wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.M)
            resources = re.search(r"^\s+resources: (.*)$", block, re.M)
            jobs.append((rule.group(1), pairs(wildcards.group(1) if wildcards else ""),
                         pairs(resources.group(1))))
    return jobs


@needs_plugin
def test_profile_takes_partition_account_and_gpu_model_from_the_environment(tmp_path):
    workdir = _pipeline_copy(tmp_path / "pipeline")
    env = {"SBATCH_PARTITION": "cpuq", "SBATCH_ACCOUNT": "proj42",
           "MLPBENCH_SLURM_GPU_PARTITION": "gpuq", "MLPBENCH_SLURM_GPU_MODEL": "a100"}
    jobs = _dry_run_resources(workdir, env)
    assert {rule for rule, _, _ in jobs} >= {"machine", "matmul", "train"}
    for rule, wildcards, res in jobs:
        cuda = wildcards.get("device") == "cuda"
        assert res["slurm_account"] == "proj42", (rule, res)
        assert res["slurm_partition"] == ("gpuq" if cuda else "cpuq"), (rule, wildcards, res)
        assert res.get("gpu_model", "") == ("a100" if cuda else ""), (rule, wildcards, res)
        assert res.get("gpu", "0") == ("1" if cuda else "0"), (rule, wildcards, res)
        assert (res.get("slurm_extra") == "--exclusive") == (rule in {"matmul", "train"}), (rule, res)
        assert int(res["runtime"]) > 0 and int(res["mem_mb"]) > 0

    # Nothing set: no account, the cluster's default partition, no GPU model.
    unset = {k: "" for k in env}
    for rule, wildcards, res in _dry_run_resources(workdir, unset):
        assert res["slurm_partition"] == res["slurm_account"] == res.get("gpu_model", "") == "", res


@contextlib.contextmanager
def _cluster(keep: Path):
    """A directory for a throwaway cluster; afterwards its daemons are stopped by PID, its logs
    and job records are copied to ``keep`` (pytest's temp dir), and the directory is removed."""
    # Not under pytest's temp dir: user munge must reach its socket, and pytest's dirs are 0700.
    cluster_dir = Path(tempfile.mkdtemp(prefix="mlpbench-slurm-"))
    try:
        yield cluster_dir
    finally:
        # `run` stops its daemons in a trap; this covers a run killed before its trap could fire.
        subprocess.run([str(CLUSTER), "stop", str(cluster_dir)], capture_output=True)
        if (cluster_dir / "log").is_dir():
            shutil.copytree(cluster_dir / "log", keep / "log")
        keep.mkdir(parents=True, exist_ok=True)
        pidfiles = sorted(p.name for p in (cluster_dir / "run").glob("*.pid"))
        (keep / "pidfiles_left.txt").write_text("\n".join(pidfiles))
        (keep / "gpu_devices.txt").write_text(str((cluster_dir / "gpu" / "nvidia0").is_char_device()))
        (keep / "path.txt").write_text(str(cluster_dir))
        shutil.rmtree(cluster_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The tiny config run locally and through SLURM, side by side; the cluster's records."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail("MLPBENCH_SLURM_TEST=1 but the SLURM executor plugin is missing: "
                    "pip install -e '.[slurm]'")
    _ensure_installed()
    base = tmp_path_factory.mktemp("slurm")
    local, cluster_run = _pipeline_copy(base / "local"), _pipeline_copy(base / "cluster")
    records = base / "records"
    local_proc = subprocess.Popen(_snakemake("--cores", "2"), cwd=local, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        with _cluster(records) as cluster_dir:
            slurm = subprocess.run(
                [str(CLUSTER), "run", str(cluster_dir), "--",
                 # A hung snakemake ignores a lone SIGTERM: -k follows it with SIGKILL.
                 "timeout", "-k", "15", str(RUN_TIMEOUT_S),
                 *_snakemake("--workflow-profile", "workflow/profiles/slurm",
                             "--slurm-init-seconds-before-status-checks", "1",
                             "--slurm-keep-successful-logs")],
                cwd=cluster_run, capture_output=True, text=True, timeout=RUN_TIMEOUT_S + 60,
                # The test cluster has partitions `main` (its default) and `gpu`, both on its node.
                env={**os.environ, "SBATCH_PARTITION": "main", "MLPBENCH_SLURM_GPU_PARTITION": "gpu"},
            )
        local_out, _ = local_proc.communicate(timeout=RUN_TIMEOUT_S)
    finally:
        local_proc.kill()
    assert local_proc.returncode == 0, local_out[-5000:]
    assert slurm.returncode == 0, f"cluster logs in {records}\n" + (slurm.stdout + slurm.stderr)[-8000:]
    return {"local": local, "cluster": cluster_run, "records": records}


def _comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c in MEASURED]).reset_index(drop=True)


def _stage_files(root: Path) -> list[str]:
    """The per-job tables (aggregates are computed from them)."""
    found = [*root.glob("results/matmul/*.parquet"), *root.glob("results/train/*/*/*.parquet")]
    return sorted(str(p.relative_to(root)) for p in found)


@needs_cluster
def test_stage_tables_equal_a_local_run(runs):
    local, cluster = runs["local"], runs["cluster"]
    files = _stage_files(local)
    assert files == _stage_files(cluster)
    expected = {f"results/matmul/{d}.parquet" for d in ("cpu", "cuda")} | {
        f"results/train/{ds}/{d}/{t}.parquet"
        for ds in ("toy", "blobs") for d in ("cpu", "cuda") for t in TRAIN_TABLES
    }
    assert expected <= set(files)
    for rel in files:
        mine, theirs = pd.read_parquet(cluster / rel), pd.read_parquet(local / rel)
        assert list(mine.columns) == list(theirs.columns), rel
        if rel.endswith(("environment.parquet", "samples.parquet")):
            continue  # what each job saw (clock, load) and its raw samples: measured, not equal
        # Losses, metrics, predictions, gradient norms and decision logits: exactly equal.
        pd.testing.assert_frame_equal(_comparable(mine), _comparable(theirs), check_exact=True,
                                      obj=rel)
    metrics = pd.read_parquet(cluster / "results/train/toy/cpu/metrics.parquet")
    assert (metrics["status"] == "ok").any()


@needs_cluster
def test_cuda_jobs_took_the_unavailable_path(runs):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a real GPU is present: CUDA jobs measure instead of reporting 'unavailable'")
    cluster = runs["cluster"]
    tables = [pd.read_parquet(cluster / "results/matmul/cuda.parquet")] + [
        pd.read_parquet(cluster / f"results/train/{ds}/cuda/{t}.parquet")
        for ds in ("toy", "blobs") for t in ("metrics", "timings")
    ]
    for table in tables:
        assert len(table) > 0
        assert set(table["status"]) == {"unavailable"}
        assert table["reason"].str.contains("CUDA").all()


@needs_cluster
def test_jobs_were_scheduled_as_the_profile_asks(runs):
    records = runs["records"]
    jobs = _parse_jobs((records / "log" / "jobs.txt").read_text())
    # On the node, at allocation: job id | node | SLURM_JOB_GPUS | CUDA_VISIBLE_DEVICES.
    prolog = {}
    for line in (records / "log" / "prolog.log").read_text().splitlines():
        job_id, node, gpus, _visible = line.split("|")
        prolog[job_id] = (node, gpus)
    # Stand-in GPUs are device nodes where mknod is allowed; only those carry a GPU index.
    gpu_indices = (records / "gpu_devices.txt").read_text() == "True"

    seen = {}
    for job in jobs:
        rule, device = _rule_and_device(job["Comment"])
        seen.setdefault(rule, []).append(device)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["NodeList"] == "localhost" and job["JobId"] in prolog, job
        asked_gpu = "gpu" in job.get("TresPerJob", "")
        # The plugin turns the rules' gpu=1 into --gpus=1 for CUDA jobs, and only for them.
        assert asked_gpu == (device == "cuda"), job
        if device == "cuda" and gpu_indices:
            # The node handed the job a GPU: it ran where the gres is, not on a node without it.
            assert prolog[job["JobId"]][1] != "", (job["JobId"], prolog[job["JobId"]])
        # The partitions named in the environment: CUDA jobs to the GPU partition.
        assert job["Partition"] == ("gpu" if device == "cuda" else "main"), job
        # Jobs that time something hold their node alone (--exclusive); the others share.
        exclusive = job["OverSubscribe"] == "NO"
        assert exclusive == (rule in {"matmul", "train"}), job
    # One matmul job per device, one train job per data set x device: all of them on SLURM.
    assert sorted(seen["matmul"]) == ["cpu", "cuda"]
    assert sorted(seen["train"]) == ["cpu", "cpu", "cuda", "cuda"]
    assert "machine" in seen


@needs_cluster
def test_default_machine_settings_work_on_a_cluster(tmp_path):
    """The defaults ``machine_id: null`` and ``matmul.threads: 0`` on a cluster: the record is
    named after the machine that runs Snakemake and describes the node its job ran on (which has
    a host name of its own), and "every core" needs no --cores, which cluster runs do not give."""
    workdir = _pipeline_copy(tmp_path / "pipeline")
    (workdir / "config" / "unnamed.yaml").write_text("machine_id: null\nmatmul: {threads: 0}\n")
    target = f"results/machine/{machine_id(None)}.json"
    with _cluster(tmp_path / "records") as cluster_dir:
        done = subprocess.run(
            [str(CLUSTER), "run", str(cluster_dir), "--", "timeout", "-k", "15", "180",
             sys.executable, "-m", "snakemake", "--configfile", "config/tiny.yaml",
             "config/unnamed.yaml", "--workflow-profile", "workflow/profiles/slurm",
             "--slurm-init-seconds-before-status-checks", "1", "--latency-wait", "5", target],
            cwd=workdir, capture_output=True, text=True, timeout=240,
        )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    record = json.loads((workdir / target).read_text())
    if subprocess.run(["unshare", "--uts", "true"], capture_output=True).returncode == 0:
        assert record["host"] == "mlpbench-node"  # the node's own name (tests/slurm/cluster.sh)


@needs_cluster
def test_every_daemon_stopped(runs):
    records = runs["records"]
    # `stop` removes the PID file of each daemon it ended; none is left.
    assert (records / "pidfiles_left.txt").read_text() == ""
    # No process is left that runs with the cluster's files (munged, slurmctld, slurmd name them).
    leftover = subprocess.run(["pgrep", "-af", (records / "path.txt").read_text()],
                              capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
