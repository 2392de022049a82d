"""Atomic writers: nothing half-written ever sits at the final path."""

from __future__ import annotations

import json
import os
import stat

import pandas as pd
import pytest

from mlpbench.io import write_csv_atomic, write_json_atomic, write_parquet_atomic


def test_parquet_roundtrip_and_identical_bytes(tmp_path):
    df = pd.DataFrame({"a": [1, 2], "time_s": [0.5, 0.25]})
    write_parquet_atomic(df, tmp_path / "x" / "t.parquet")
    first = (tmp_path / "x" / "t.parquet").read_bytes()
    write_parquet_atomic(df, tmp_path / "x" / "t.parquet")
    assert (tmp_path / "x" / "t.parquet").read_bytes() == first
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "x" / "t.parquet"), df)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic({"ok": 1}, target)
    with pytest.raises(AttributeError):
        write_parquet_atomic("not a frame", tmp_path / "r.parquet")  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == 0o644
