"""The last-level cache of a device, and how to empty it before a timed call.

A warm timing (the same operands, call after call, as ``%timeit`` takes it) reads from the
cache whatever of the operands the cache keeps between calls. The lesson's ``y`` (6400 x 5000)
is 128 MB in float32: several times the last-level cache of most laptops and desktop CPUs, where
every call streams ``y`` from main memory (the lesson does not state its hardware). On a machine
whose last-level cache holds a good part of it (server CPUs with hundreds of MiB of shared L3),
the warm time can measure partly the cache, and on a shared machine it can move with whatever
other programs keep in that shared cache. A cold
timing writes a buffer twice the size of the last-level cache before each call (untimed), so
the call finds none of its operands cached, whatever the machine.

This is how Triton's ``triton.testing.do_bench`` clears the GPU's L2 between calls (it zeroes a
buffer larger than the cache before each timed call); ``torch._inductor``'s benchmarker sizes
that buffer from the device's ``L2_cache_size``, as :func:`last_level_cache` does here.

Sizes: the CPU's from Linux's sysfs (``/sys/devices/system/cpu/cpu0/cache/index*/size``, the
highest ``level``); a CUDA device's from ``torch.cuda.get_device_properties(...).L2_cache_size``.
Where neither is readable, :data:`UNKNOWN_CACHE_BYTES` stands in and the description says so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["FLUSH_FACTOR", "LIBRARIES", "UNKNOWN_CACHE_BYTES", "CacheFlush", "LastLevelCache",
           "last_level_cache"]

FLUSH_FACTOR = 2  # the flush buffer is this many times the last-level cache
# Stand-in where the cache size cannot be read: larger than the L3 of any CPU we know of, and
# than any GPU's L2 (torch._inductor's benchmarker falls back to 256 MiB).
UNKNOWN_CACHE_BYTES = 512 * 2**20
_SYS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}


@dataclass(frozen=True)
class LastLevelCache:
    """``size_bytes`` of the device's last-level cache, ``name`` (e.g. "L3") and ``source``
    (where the size was read, or why it is the stand-in)."""

    size_bytes: int
    name: str
    source: str

    @property
    def known(self) -> bool:
        return not self.source.startswith("unknown")


def _sysfs_size(text: str) -> int | None:
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)\s*", text)
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def _cpu_cache(root: Path = _SYS_CACHE) -> LastLevelCache:
    best: tuple[int, int] | None = None  # (level, bytes)
    for index in sorted(root.glob("index*")):
        try:
            kind = (index / "type").read_text().strip()
            level = int((index / "level").read_text())
            size = _sysfs_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind == "Instruction" or size is None:
            continue
        if best is None or (level, size) > best:
            best = (level, size)
    if best is None:
        return LastLevelCache(UNKNOWN_CACHE_BYTES, "last-level cache",
                              f"unknown (no cache sizes under {root})")
    return LastLevelCache(best[1], f"L{best[0]}", f"sysfs {root}")


def _cuda_cache(index: int = 0) -> LastLevelCache:
    import torch

    props = torch.cuda.get_device_properties(index)
    size = int(getattr(props, "L2_cache_size", 0) or 0)
    if size <= 0:
        return LastLevelCache(UNKNOWN_CACHE_BYTES, "L2",
                              "unknown (torch reports no L2_cache_size for this GPU)")
    return LastLevelCache(size, "L2", "torch.cuda.get_device_properties().L2_cache_size")


def last_level_cache(device: str) -> LastLevelCache:
    """The last-level cache of ``device`` ("cpu" or "cuda"; CUDA device 0)."""
    if device == "cpu":
        return _cpu_cache()
    if device == "cuda":
        return _cuda_cache()
    raise ValueError(f"device: got {device!r}; allowed: 'cpu' or 'cuda'")


def _mib(n: int) -> str:
    return f"{n / 2**20:.4g} MiB"


LIBRARIES = ("torch", "numpy")


class CacheFlush:
    """Call it to evict the device's last-level cache: it adds 1 to every element of a float32
    buffer of :data:`FLUSH_FACTOR` times the cache size on ``device`` (reading and writing each
    line, so the buffer's lines displace everything else), and waits for a CUDA device.

    ``library`` does the writing: ``torch`` (its intra-op thread pool; any device) or ``numpy``
    (the calling thread only; CPU). Flush with the library being timed: a pool that has just
    worked keeps spinning for a while, and another library's threads started right after it
    would wait for a CPU behind it (the disturbance guard sees exactly that).

    The buffer is allocated and filled once, when the object is made; :attr:`text` says what a
    call does, for the ``method`` column. Raises ValueError for an unknown ``library`` or NumPy
    on a GPU, and what the library raises when the buffer does not fit.
    """

    def __init__(self, device: str, cache: LastLevelCache | None = None,
                 library: str = "torch"):
        if library not in LIBRARIES or (library == "numpy" and device != "cpu"):
            raise ValueError(f"library: got {library!r} for device {device!r}; allowed: "
                             "'torch' on any device, 'numpy' on the CPU")
        self.cache = cache or last_level_cache(device)
        self.bytes = FLUSH_FACTOR * self.cache.size_bytes
        self.library = library
        if library == "numpy":
            import numpy as np

            self._device = None
            self._buffer: Any = np.ones(self.bytes // 4, dtype=np.float32)
        else:
            import torch

            self._device = torch.device(device)
            self._buffer = torch.ones(self.bytes // 4, dtype=torch.float32, device=self._device)
        size = (f"{FLUSH_FACTOR} x the {_mib(self.cache.size_bytes)} {self.cache.name}, "
                f"{self.cache.source}" if self.cache.known else
                f"the cache size is {self.cache.source}; a stand-in of "
                f"{_mib(self.cache.size_bytes)} assumed")
        self.text = (f"the caches emptied by writing a {_mib(self.bytes)} buffer ({size}) with "
                     f"{library}")

    def __call__(self) -> None:
        self._buffer += 1.0  # in place, in NumPy and torch alike: every line read and written
        if self._device is not None and self._device.type == "cuda":
            import torch

            torch.cuda.synchronize(self._device)

    def release(self) -> None:
        """Free the buffer (the object cannot flush afterwards)."""
        self._buffer = None
