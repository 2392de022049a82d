"""The one place that decides whether CUDA can run, and says why not.

Importing this module does not import torch. :func:`cuda_unavailable_reason` first looks for a
GPU driver (:func:`no_driver_reason`): where none is installed, CUDA cannot run, and the answer
comes without importing torch (about 1.6 s, the whole cost of a CUDA job on a machine without
a GPU). Where a driver is present, or on a platform the probe does not know, torch is asked
(``torch.cuda.is_available()``).
"""

from __future__ import annotations

import os
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DRIVER_FILES", "DRIVER_ROOT", "cuda_unavailable_reason", "no_driver_reason", "sync"]

# Linux files of the GPU drivers a torch build can reach through torch.cuda (shell patterns):
# NVIDIA's kernel driver (/proc/driver/nvidia, its control and device nodes), NVIDIA Jetson's
# integrated GPU (nvmap, nvhost-ctrl-gpu), AMD ROCm (/dev/kfd: ROCm builds of torch answer
# through torch.cuda) and WSL2's GPU paravirtualisation (/dev/dxg).
DRIVER_FILES = ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/nvidia[0-9]*", "/dev/kfd",
                "/dev/dxg", "/dev/nvmap", "/dev/nvhost-ctrl-gpu")
DRIVER_ROOT = Path("/")  # where DRIVER_FILES are looked for (tests point it elsewhere)

_PREFIX = "CUDA unavailable: "


def no_driver_reason(platform: str | None = None, root: str | os.PathLike | None = None
                     ) -> str | None:
    """Why CUDA cannot run here, decided without torch; None when torch must be asked.

    ``platform`` defaults to ``sys.platform``: "darwin" (macOS) never has CUDA; on "linux"
    CUDA is impossible when none of :data:`DRIVER_FILES` exists under ``root`` (default
    :data:`DRIVER_ROOT`). Anywhere else, when any of them exists, or when a folder cannot be
    read, the answer is None: torch decides.
    """
    platform = sys.platform if platform is None else platform
    if platform == "darwin":
        return _PREFIX + "macOS has no CUDA (torch's macOS builds have no CUDA support)"
    if platform != "linux":
        return None
    base = Path(DRIVER_ROOT if root is None else root)
    for pattern in DRIVER_FILES:
        found = _exists(base, pattern)
        if found is not False:  # present, or cannot tell
            return None
    return (_PREFIX + "no GPU driver on this machine (none of "
            + ", ".join(DRIVER_FILES) + " exists)")


def _exists(base: Path, pattern: str) -> bool | None:
    """Whether a file matching the absolute ``pattern`` exists under ``base``; None when a
    folder on the way cannot be read (so the caller cannot tell)."""
    folder, name = os.path.split(pattern.lstrip("/"))
    where = base / folder
    try:
        if not any(ch in name for ch in "*?["):
            os.lstat(where / name)
            return True
        with os.scandir(where) as entries:
            return any(fnmatchcase(entry.name, name) for entry in entries)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return None


def cuda_unavailable_reason() -> str | None:
    """None when CUDA can run here; otherwise the reason, as the tables' ``reason`` column says it.

    The reason starts with "CUDA unavailable: ". Without a GPU driver (:func:`no_driver_reason`)
    torch is not imported; otherwise the answer is ``torch.cuda.is_available()``.
    """
    reason = no_driver_reason()
    if reason is not None:
        return reason
    import torch

    if torch.cuda.is_available():
        return None
    build = "" if torch.version.cuda else " (this torch build has no CUDA support)"
    return f"{_PREFIX}torch.cuda.is_available() is False{build}"


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock read afterwards times finished work."""
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize(device)
