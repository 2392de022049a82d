"""The one place that decides whether CUDA can run, and says why not."""

from __future__ import annotations

import torch


def cuda_unavailable_reason() -> str | None:
    """None when CUDA can run here; otherwise the reason, as the tables' ``reason`` column says it."""
    if torch.cuda.is_available():
        return None
    build = "" if torch.version.cuda else " (this torch build has no CUDA support)"
    return f"CUDA unavailable: torch.cuda.is_available() is False{build}"


def sync(device: torch.device) -> None:
    """Wait for queued CUDA work, so a clock read afterwards times finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
