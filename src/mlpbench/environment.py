"""The environment a timing job measured in, read at the time it measured.

The machine record (:mod:`mlpbench.machine`) holds what does not change between jobs: CPU
model, core counts, libraries, GPU model. What does change from job to job, and moves the
numbers a timing job reports, is read here by the job itself, once before and once after its
timed work (``snapshot``), and stored beside its results as rows of the ``environment`` table
declared in :mod:`mlpbench.contract` (``environment_rows``):

* threads: torch's intra- and inter-op threads (0 in a job that never imports torch), every
  thread pool threadpoolctl finds loaded (BLAS and OpenMP, with the threads each is set to) and
  the thread variables the job started with (Snakemake sets them from the rule's ``threads``);
* the CPUs the process may run on (its affinity mask), the load average and the CPU clock
  (Linux: ``/sys/devices/system/cpu/cpu*/cpufreq/scaling_cur_freq``, else ``cpu MHz`` of
  ``/proc/cpuinfo``), where the OS exposes them;
* for CUDA jobs, the GPU's clocks, temperature, power draw and performance state, from NVML
  (``pynvml``) or ``nvidia-smi``, best effort.

Every reading that is not available is ``None`` with the reason in words (``cpu_mhz_source``,
``gpu_reason``); nothing here raises because a reading is missing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = [
    "MOMENTS",
    "NVIDIA_SMI_QUERY",
    "THREAD_ENV_VARS",
    "affinity_text",
    "cpu_mhz",
    "environment_rows",
    "gpu_state",
    "parse_nvidia_smi",
    "snapshot",
]

# The thread variables Snakemake sets from a rule's `threads` (snakemake.shell), and the
# OpenBLAS core-type override that changes which kernels run.
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                   "GOTO_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS",
                   "OPENBLAS_CORETYPE")
MOMENTS = ("before", "after")

# nvidia-smi --query-gpu fields, in the order parse_nvidia_smi expects them.
NVIDIA_SMI_QUERY = ("index", "name", "clocks.sm", "clocks.mem", "temperature.gpu", "power.draw",
                    "pstate")
_SMI_KEYS = ("index", "name", "sm_clock_mhz", "mem_clock_mhz", "temperature_c", "power_w",
             "pstate")
_SYS_CPU = Path("/sys/devices/system/cpu")
_PROC_CPUINFO = Path("/proc/cpuinfo")


def snapshot(*, cuda_device: int | None = None) -> dict[str, Any]:
    """What is in effect in this process now, as one flat JSON-serialisable dict.

    Keys: ``time_utc`` (ISO 8601), ``torch_num_threads``, ``torch_num_interop_threads`` (None
    when torch is not imported in this process: it runs no torch threads then, and reading
    them would import it; a CUDA job without a GPU driver does no torch work),
    ``blas_num_threads`` / ``openmp_num_threads`` (the largest thread count among the loaded
    BLAS / OpenMP pools; None when none is loaded), ``threadpools`` (list of
    ``{user_api, internal_api, num_threads, filename}``), ``thread_env`` (``THREAD_ENV_VARS``
    -> value or None), ``affinity`` (e.g. ``"0-3"``), ``affinity_count``, ``load_1m``,
    ``load_5m``, ``load_15m``, ``cpu_mhz_mean``/``_min``/``_max`` over the CPUs of the
    affinity mask, ``cpu_mhz_source``, and the ``gpu_*`` keys of :func:`gpu_state` (for
    ``cuda_device``; None: the keys are None, with reason "not a CUDA job").
    """
    from threadpoolctl import threadpool_info

    torch = sys.modules.get("torch")

    pools = sorted(
        ({"user_api": p.get("user_api"), "internal_api": p.get("internal_api"),
          "num_threads": p.get("num_threads"), "filename": Path(p.get("filepath") or "").name}
         for p in threadpool_info()),
        key=lambda p: tuple(str(p[k] or "") for k in ("user_api", "internal_api", "filename")),
    )
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    try:
        load = os.getloadavg()
    except (AttributeError, OSError):
        load = (None, None, None)
    mhz, source = cpu_mhz(cpus)
    out: dict[str, Any] = {
        "time_utc": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        "torch_num_threads": torch.get_num_threads() if torch else None,
        "torch_num_interop_threads": torch.get_num_interop_threads() if torch else None,
        "blas_num_threads": _most(pools, "blas"),
        "openmp_num_threads": _most(pools, "openmp"),
        "threadpools": pools,
        "thread_env": {var: os.environ.get(var) for var in THREAD_ENV_VARS},
        "affinity": affinity_text(cpus) if cpus else None,
        "affinity_count": len(cpus) or None,
        "load_1m": load[0], "load_5m": load[1], "load_15m": load[2],
        "cpu_mhz_mean": sum(mhz) / len(mhz) if mhz else None,
        "cpu_mhz_min": min(mhz) if mhz else None,
        "cpu_mhz_max": max(mhz) if mhz else None,
        "cpu_mhz_source": source,
    }
    if cuda_device is None:
        out.update(_no_gpu("not a CUDA job"))
    else:
        out.update(gpu_state(cuda_device))
    return out


def _most(pools: Sequence[Mapping[str, Any]], api: str) -> int | None:
    counts = [p["num_threads"] for p in pools if p["user_api"] == api and p["num_threads"]]
    return max(counts) if counts else None


def affinity_text(cpus: Sequence[int]) -> str:
    """CPU ids as ranges, as ``taskset -c`` writes them: ``[0, 1, 2, 5]`` -> ``"0-2,5"``."""
    parts: list[str] = []
    ids = sorted(set(cpus))
    start = prev = None
    for cpu in [*ids, None]:
        if cpu is not None and prev is not None and cpu == prev + 1:
            prev = cpu
            continue
        if start is not None:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = cpu
    return ",".join(parts)


def cpu_mhz(cpus: Sequence[int], sys_cpu: Path = _SYS_CPU,
            cpuinfo: Path = _PROC_CPUINFO) -> tuple[list[float], str]:
    """Current clock of each CPU in ``cpus`` in MHz, and where it was read.

    From cpufreq's ``scaling_cur_freq`` (kHz) where every CPU has one, else the ``cpu MHz``
    lines of ``cpuinfo`` (of the CPUs in ``cpus``), else ``([], "unavailable: <why>")``.
    """
    values = []
    for cpu in cpus:
        try:
            values.append(int((sys_cpu / f"cpu{cpu}" / "cpufreq" / "scaling_cur_freq")
                              .read_text().strip()) / 1000.0)
        except (OSError, ValueError):
            values = []
            break
    if values:
        return values, "cpufreq scaling_cur_freq"
    try:
        text = cpuinfo.read_text()
    except OSError:
        return [], "unavailable: no cpufreq and no /proc/cpuinfo"
    found = {}
    for block in text.split("\n\n"):
        proc = re.search(r"^processor\s*:\s*(\d+)", block, re.MULTILINE)
        mhz = re.search(r"^cpu MHz\s*:\s*([0-9.]+)", block, re.MULTILINE)
        if proc and mhz:
            found[int(proc.group(1))] = float(mhz.group(1))
    values = [found[c] for c in cpus if c in found]
    if values:
        return values, "/proc/cpuinfo cpu MHz"
    return [], "unavailable: neither cpufreq nor /proc/cpuinfo states the clock"


# --------------------------------------------------------------------------- GPU


def _no_gpu(reason: str) -> dict[str, Any]:
    return {"gpu_source": None, "gpu_sm_clock_mhz": None, "gpu_mem_clock_mhz": None,
            "gpu_temperature_c": None, "gpu_power_w": None, "gpu_pstate": None,
            "gpu_reason": reason}


def gpu_state(index: int = 0, *, nvml: Callable[[int], dict[str, Any]] | None = None,
              smi: Callable[[], str] | None = None) -> dict[str, Any]:
    """Clocks (MHz), temperature (°C), power draw (W) and performance state of GPU ``index``.

    Tries NVML first (``pynvml``), then ``nvidia-smi``; returns the ``gpu_*`` keys with
    ``gpu_source`` ("nvml" or "nvidia-smi") and ``gpu_reason`` "" on success, else every
    reading None and ``gpu_reason`` saying why both failed. ``nvml`` and ``smi`` replace the
    two readers (tests).
    """
    reasons = []
    for source, read in (("nvml", nvml or _read_nvml),
                         ("nvidia-smi", lambda i: _pick(parse_nvidia_smi((smi or _run_smi)()), i))):
        try:
            values = read(index)
        except Exception as exc:  # noqa: BLE001 - best effort: the reason is recorded
            reasons.append(f"{source}: {' '.join(str(exc).split()) or type(exc).__name__}")
            continue
        return {"gpu_source": source, **{f"gpu_{k}": values.get(k) for k in _SMI_KEYS[2:]},
                "gpu_reason": ""}
    return _no_gpu("; ".join(reasons))


def _read_nvml(index: int) -> dict[str, Any]:
    import pynvml  # optional: nvidia-ml-py

    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(index)
        return {
            "sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
            "mem_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM)),
            "temperature_c": float(pynvml.nvmlDeviceGetTemperature(
                h, pynvml.NVML_TEMPERATURE_GPU)),
            "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0,  # mW
            "pstate": f"P{int(pynvml.nvmlDeviceGetPerformanceState(h))}",
        }
    finally:
        pynvml.nvmlShutdown()


def _run_smi() -> str:
    done = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(NVIDIA_SMI_QUERY)}",
         "--format=csv,noheader,nounits"],
        capture_output=True, text=True, timeout=20,
    )
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def _number(text: str) -> float | None:
    """A reading of nvidia-smi: None for '[N/A]', '[Not Supported]', 'N/A' and the like."""
    try:
        return float(text)
    except ValueError:
        return None


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """Rows of ``nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits``.

    One dict per GPU with ``index`` (int), ``name`` and the readings ``sm_clock_mhz``,
    ``mem_clock_mhz``, ``temperature_c``, ``power_w`` (floats, None where the GPU reports
    '[N/A]' or '[Not Supported]') and ``pstate`` (e.g. 'P0'). Raises ValueError naming the line
    when a line does not have the queried fields.
    """
    rows = []
    for line in text.strip().splitlines():
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != len(NVIDIA_SMI_QUERY) or not fields[0].isdigit():
            raise ValueError(f"nvidia-smi line {line!r}: expected {len(NVIDIA_SMI_QUERY)} "
                             f"fields ({', '.join(NVIDIA_SMI_QUERY)})")
        row: dict[str, Any] = {"index": int(fields[0]), "name": fields[1]}
        for key, value in zip(_SMI_KEYS[2:6], fields[2:6]):
            row[key] = _number(value)
        row["pstate"] = fields[6] if re.fullmatch(r"P\d+", fields[6]) else None
        rows.append(row)
    return rows


def _pick(rows: list[dict[str, Any]], index: int) -> dict[str, Any]:
    for row in rows:
        if row["index"] == index:
            return row
    raise LookupError(f"no GPU with index {index} in nvidia-smi's output")


# --------------------------------------------------------------------------- table rows


def environment_rows(before: Mapping[str, Any], after: Mapping[str, Any], *, host: str,
                     stage: str, device: str, threads: int,
                     dataset: str | None = None) -> list[dict[str, Any]]:
    """The two rows (before, after) of the ``environment`` table for one timing job.

    ``threads`` is the job's own thread count (the rule's ``threads``); the snapshots come
    from :func:`snapshot`. Nested readings (thread pools, thread variables) are kept as JSON;
    ``omp_num_threads``, ``mkl_num_threads`` and ``openblas_num_threads`` also as columns.
    """
    rows = []
    for moment, snap in zip(MOMENTS, (before, after)):
        env = snap["thread_env"]
        row = {"host": host, "stage": stage, "dataset": dataset, "device": device,
               "moment": moment, "threads": threads}
        row.update({k: v for k, v in snap.items() if k not in ("threadpools", "thread_env")})
        row.update(
            omp_num_threads=env.get("OMP_NUM_THREADS"),
            mkl_num_threads=env.get("MKL_NUM_THREADS"),
            openblas_num_threads=env.get("OPENBLAS_NUM_THREADS"),
            thread_env_json=json.dumps(env, sort_keys=True),
            threadpools_json=json.dumps(snap["threadpools"], sort_keys=True),
        )
        rows.append(row)
    return rows
