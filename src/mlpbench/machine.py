"""Provenance: what machine, libraries and config produced a set of results.

The record keeps static facts only: what stays the same from one job to the next on this
machine. Thread counts, thread variables, load and clocks belong to each timing job and are
read by it while it measures (:mod:`mlpbench.environment`); the job that writes this record
runs with its own threads, not the benchmarks'.

Every collector degrades to ``None`` (or a "none" string with a reason) instead of raising, so a
missing GPU, git or package never stops the pipeline.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_info

from mlpbench.config import config_hash as _hash_of
from mlpbench.cpu import core_counts, cpu_model
from mlpbench.devices import cuda_unavailable_reason
from mlpbench.config import machine_id

__all__ = ["KEYS", "collect", "machine_id"]

KEYS = (
    "host", "machine_id", "cpu_model", "physical_cores", "logical_cores", "usable_cores",
    "blas", "gpu", "versions", "git_commit", "git_dirty", "config_hash", "config",
    "created_utc",
)
_PACKAGES = {  # key in the record -> distribution name (torch: its own __version__, see below)
    "numpy": "numpy", "pandas": "pandas", "snakemake": "snakemake",
    "sklearn": "scikit-learn", "matplotlib": "matplotlib", "threadpoolctl": "threadpoolctl",
}


def collect(
    config_hash: str, config: dict | None = None, *,
    explicit_id: str | None = None, repo_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The machine record, JSON-serialisable, with the keys in ``KEYS``.

    ``config``, when given, is stored and must hash to ``config_hash``; ``explicit_id`` is the
    config's ``machine_id`` (None: the sanitised hostname); ``repo_dir`` (default: the working
    directory) is where git is asked for the commit, None outside a repository.
    """
    if config is not None and config_hash != _hash_of(config):
        raise ValueError(
            f"config_hash: got {config_hash!r}; allowed: the hash of the config passed with it "
            f"({_hash_of(config)!r})"
        )
    repo = Path(repo_dir) if repo_dir is not None else Path.cwd()
    physical, logical = core_counts()
    pools = _threadpools()
    record = {
        "host": machine_id(None),
        "machine_id": machine_id(explicit_id),
        "cpu_model": cpu_model(),
        "physical_cores": physical,
        "logical_cores": logical,
        "usable_cores": _usable_cores(logical),
        "blas": {"numpy": _numpy_blas(pools), "torch": _torch_blas(), "threadpools": pools},
        "gpu": _gpu(),
        "versions": _versions(),
        "git_commit": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": _git_dirty(repo),
        "config_hash": config_hash,
        "config": config,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return record




# --- CPU ---------------------------------------------------------------------------------------
# Model and core counts come from mlpbench.cpu (no torch), which the parse-time check of
# compare: reads too, so both see this machine's CPU the same way.

def _usable_cores(logical: int | None) -> int | None:
    """Cores this process may run on (a job scheduler's affinity mask may allow fewer)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical


# --- BLAS --------------------------------------------------------------------------------------


# Sort key of the thread pools in the record (see _threadpools).
_POOL_ORDER = ("user_api", "internal_api", "prefix", "filepath", "version")


def _threadpools() -> list[dict[str, Any]]:
    """Every BLAS and OpenMP library threadpoolctl finds loaded in this process, without its
    thread count (this process's, not a benchmark's: see mlpbench.environment).

    Sorted by API, implementation, prefix and file path: threadpoolctl lists libraries in the
    order the process happened to load them, which changes with import order, so the raw list
    would make two identical runs write different records.
    """
    import numpy  # noqa: F401  (make sure NumPy's BLAS is loaded before asking)

    keep = ("user_api", "internal_api", "prefix", "version", "architecture", "threading_layer")
    out = []
    for lib in threadpool_info():
        entry = {key: lib.get(key) for key in keep}
        entry["filepath"] = lib.get("filepath")
        out.append(entry)
    return sorted(out, key=lambda e: tuple(str(e[k] or "") for k in _POOL_ORDER))


def _numpy_blas(pools: list[dict[str, Any]]) -> dict[str, Any]:
    """The BLAS that NumPy itself loaded (its wheel ships it under numpy*/), else the first."""
    blas = [p for p in pools if p["user_api"] == "blas"]
    own = [p for p in blas if any(part.startswith("numpy") for part in
                                  Path(p["filepath"] or "").parts)]
    chosen = (own or blas or [None])[0]
    if chosen is None:
        return {"internal_api": "none", "version": None,
                "architecture": None, "threading_layer": None, "prefix": None, "filename": None}
    entry = {k: v for k, v in chosen.items() if k not in ("user_api", "filepath")}
    entry["filename"] = Path(chosen["filepath"] or "").name or None
    return entry


_CONFIG_PATTERNS = {
    "blas_info": r"BLAS_INFO=([^,\s]+)",
    "lapack_info": r"LAPACK_INFO=([^,\s]+)",
    "mkl": r"(Intel\(R\) (?:oneAPI )?Math Kernel Library[^\n]*)",
    "mkldnn": r"(Intel\(R\) MKL-DNN[^\n]*|oneDNN[^\n]*)",
    "openmp": r"(OpenMP \d+[^\n]*)",
    "cpu_capability": r"CPU capability usage:\s*(\S+)",
    "cuda_build": r"USE_CUDA=([^,\s]+)",
    "build_type": r"BUILD_TYPE=([^,\s]+)",
}


def _torch_blas() -> dict[str, Any]:
    try:
        shown = torch.__config__.show()
    except Exception:  # noqa: BLE001 - provenance never breaks the run
        shown = ""
    info: dict[str, Any] = {}
    for key, pattern in _CONFIG_PATTERNS.items():
        match = re.search(pattern, shown)
        info[key] = match.group(1).strip() if match else None
    backend = re.search(r"ATen parallel backend:\s*([^\n]+)", torch.__config__.parallel_info())
    info.update(
        parallel_backend=backend.group(1).strip() if backend else None,
        mkl_available=torch.backends.mkl.is_available(),
        mkldnn_available=torch.backends.mkldnn.is_available(),
        openmp_available=torch.backends.openmp.is_available(),
    )
    return info


# --- GPU ---------------------------------------------------------------------------------------


def _gpu() -> dict[str, Any]:
    reason = cuda_unavailable_reason()
    if reason:
        return {"available": False, "count": 0, "name": "none", "memory_gib": None,
                "driver": "none", "cuda_version": torch.version.cuda or "none", "reason": reason}
    props = torch.cuda.get_device_properties(0)
    return {
        "available": True,
        "count": torch.cuda.device_count(),
        "name": props.name,
        "memory_gib": round(props.total_memory / 2**30, 2),
        "driver": _nvidia_driver(),
        "cuda_version": torch.version.cuda,
        "reason": "",
    }


def _nvidia_driver() -> str | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip().splitlines()
        if out:
            return out[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:  # the kernel module states it too, where nvidia-smi is missing
        text = Path("/proc/driver/nvidia/version").read_text()
        match = re.search(r"Kernel Module\s+(\S+)", text)
        return match.group(1) if match else None
    except OSError:
        return None


# --- software ----------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    # torch.__version__ keeps the build tag (+cpu, +cu130) that the wheel metadata may drop
    versions: dict[str, str | None] = {"python": platform.python_version(),
                                       "torch": torch.__version__}
    for key, dist in _PACKAGES.items():
        try:
            versions[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[key] = None
    return versions


def _git(repo: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_dirty(repo: Path) -> bool | None:
    status = _git(repo, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)
