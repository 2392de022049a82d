"""This machine's CPU as the machine record names it: model name and core counts.

Read from ``/proc/cpuinfo`` and the sysfs CPU topology, so importing this module imports neither
torch nor NumPy: the machine record (:mod:`mlpbench.machine`) uses it, and so does the check of
``compare:`` while Snakemake parses the workflow (:func:`mlpbench.bundle.host_hardware`).
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

__all__ = ["core_counts", "cpu_model"]


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``'s ``model name``), else what ``platform`` says
    (the processor, or the architecture such as ``x86_64``)."""
    match = re.search(r"^model name\s*:\s*(.+)$", _cpuinfo(), re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine())


def core_counts() -> tuple[int | None, int | None]:
    """(physical, logical): physical from the sysfs topology, else /proc/cpuinfo, else logical;
    logical is ``os.cpu_count()`` (None where it is unknown)."""
    logical = os.cpu_count()
    cores: set[tuple[str, str]] = set()
    for topo in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology"):
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(),
                       (topo / "core_id").read_text().strip()))
        except OSError:
            cores.clear()
            break
    if not cores:
        blocks = [b for b in _cpuinfo().split("\n\n") if "core id" in b]
        for block in blocks:
            phys = re.search(r"^physical id\s*:\s*(\d+)", block, re.MULTILINE)
            core = re.search(r"^core id\s*:\s*(\d+)", block, re.MULTILINE)
            if core:
                cores.add((phys.group(1) if phys else "0", core.group(1)))
    return (len(cores) or logical), logical
