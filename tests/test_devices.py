"""Whether CUDA can run: the driver probe and torch's answer behind it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mlpbench import devices

REPO = Path(__file__).resolve().parents[1]
PREFIX = "CUDA unavailable: "
NO_DRIVER = (PREFIX + "no GPU driver on this machine (none of /proc/driver/nvidia, "
             "/dev/nvidiactl, /dev/nvidia[0-9]*, /dev/kfd, /dev/dxg, /dev/nvmap, "
             "/dev/nvhost-ctrl-gpu exists)")
DRIVER_FILES = ["proc/driver/nvidia/version", "dev/nvidiactl", "dev/nvidia0", "dev/nvidia12",
                "dev/kfd", "dev/dxg", "dev/nvmap", "dev/nvhost-ctrl-gpu"]


def _root_with(tmp_path: Path, *files: str) -> Path:
    root = tmp_path / "root"
    (root / "dev").mkdir(parents=True)
    (root / "proc" / "driver").mkdir(parents=True)
    for name in files:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).touch()
    return root


# --------------------------------------------------------------------------- the probe


def test_linux_without_driver_files_has_no_cuda(tmp_path):
    root = _root_with(tmp_path, "dev/null", "dev/nvidia-caps-readme", "proc/driver/rtc")
    assert devices.no_driver_reason("linux", root) == NO_DRIVER


def test_a_missing_dev_or_proc_folder_means_no_driver(tmp_path):
    assert devices.no_driver_reason("linux", tmp_path / "nothing-here") == NO_DRIVER


@pytest.mark.parametrize("name", DRIVER_FILES)
def test_any_driver_file_leaves_the_answer_to_torch(tmp_path, name):
    assert devices.no_driver_reason("linux", _root_with(tmp_path, name)) is None


def test_macos_never_has_cuda(tmp_path):
    reason = devices.no_driver_reason("darwin", _root_with(tmp_path, "dev/nvidia0"))
    assert reason.startswith(PREFIX) and "macOS" in reason


def test_other_platforms_ask_torch(tmp_path):
    assert devices.no_driver_reason("win32", tmp_path) is None


def test_an_unreadable_folder_leaves_the_answer_to_torch(tmp_path, monkeypatch):
    def refuse(path):
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(devices.os, "scandir", refuse)
    assert devices.no_driver_reason("linux", _root_with(tmp_path)) is None


def test_without_driver_the_reason_comes_without_torch(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(devices, "DRIVER_ROOT", _root_with(tmp_path))
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("torch was asked"))
    assert devices.cuda_unavailable_reason() == NO_DRIVER


@pytest.mark.parametrize("available", [False, True])
def test_with_a_driver_torch_decides(tmp_path, monkeypatch, available):
    import torch

    monkeypatch.setattr(devices, "DRIVER_ROOT", _root_with(tmp_path, "dev/nvidia0"))
    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
    reason = devices.cuda_unavailable_reason()
    if available:
        assert reason is None
    else:
        assert reason.startswith(PREFIX + "torch.cuda.is_available() is False")


def test_importing_devices_does_not_import_torch():
    code = "import sys, mlpbench.devices; print('torch' in sys.modules)"
    assert _python(code).stdout.strip() == "False"


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done
