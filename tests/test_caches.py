"""The last-level cache size and the cache flush the cold lesson-case timing uses."""

from __future__ import annotations

import pytest
import torch

from mlpbench import caches
from mlpbench.caches import FLUSH_FACTOR, UNKNOWN_CACHE_BYTES, CacheFlush, LastLevelCache


def _index(root, i, level, kind, size):
    d = root / f"index{i}"
    d.mkdir(parents=True)
    (d / "level").write_text(f"{level}\n")
    (d / "type").write_text(f"{kind}\n")
    (d / "size").write_text(f"{size}\n")


def test_the_cpu_cache_is_the_highest_level_data_cache_sysfs_lists(tmp_path):
    _index(tmp_path, 0, 1, "Data", "48K")
    _index(tmp_path, 1, 1, "Instruction", "32K")
    _index(tmp_path, 2, 2, "Unified", "2048K")
    _index(tmp_path, 3, 3, "Unified", "307200K")
    llc = caches._cpu_cache(tmp_path)
    assert (llc.size_bytes, llc.name, llc.known) == (300 * 2**20, "L3", True)
    assert str(tmp_path) in llc.source


def test_a_machine_without_cache_sizes_gets_the_stated_stand_in(tmp_path):
    _index(tmp_path, 0, 1, "Instruction", "32K")  # no data cache listed
    llc = caches._cpu_cache(tmp_path)
    assert llc.size_bytes == UNKNOWN_CACHE_BYTES and not llc.known
    assert llc.source.startswith("unknown (no cache sizes under")
    flush = CacheFlush("cpu", llc)
    assert "cache size is unknown" in flush.text and "stand-in of 512 MiB" in flush.text


def test_this_machine_reports_a_cache_and_the_flush_writes_twice_its_size():
    llc = caches.last_level_cache("cpu")
    assert llc.size_bytes > 0
    small = LastLevelCache(2**20, "L3", "test")  # keep the buffer small here
    flush = CacheFlush("cpu", small)
    assert flush.bytes == FLUSH_FACTOR * 2**20
    before = flush._buffer.clone()
    flush()
    assert torch.equal(flush._buffer, before + 1)  # every element written
    assert flush.text == ("the caches emptied by writing a 2 MiB buffer (2 x the 1 MiB L3, "
                          "test) with torch")
    flush.release()


def test_numpy_flushes_on_the_calling_thread_and_only_on_the_cpu():
    import numpy as np

    small = LastLevelCache(2**20, "L3", "test")
    flush = CacheFlush("cpu", small, library="numpy")
    assert isinstance(flush._buffer, np.ndarray) and flush._buffer.nbytes == 2 * 2**20
    flush()
    flush()
    assert (flush._buffer == 3).all()
    assert flush.text.endswith("with numpy")
    with pytest.raises(ValueError, match="library: got 'numpy' for device 'cuda'; allowed"):
        CacheFlush("cuda", small, library="numpy")
    with pytest.raises(ValueError, match="library: got 'jax'"):
        CacheFlush("cpu", small, library="jax")


def test_an_unknown_device_is_named():
    with pytest.raises(ValueError, match="device: got 'tpu'; allowed: 'cpu' or 'cuda'"):
        caches.last_level_cache("tpu")
