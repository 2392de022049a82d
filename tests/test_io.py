"""Atomic writers: nothing half-written ever sits at the final path."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from mlpbench.io import (
    remove_stale_temps,
    write_csv_atomic,
    write_bytes_atomic,
    write_json_atomic,
)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "r.json"
    write_json_atomic({"ok": 1}, target)
    with pytest.raises(TypeError):
        write_bytes_atomic("not bytes", target)  # type: ignore[arg-type]
    assert json.loads(target.read_text()) == {"ok": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "t.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "t.csv").stat().st_mode) == 0o644


def test_remove_stale_temps_takes_only_the_debris_of_the_given_outputs(tmp_path):
    (tmp_path / "t.parquet").write_bytes(b"finished")
    stale = [tmp_path / ".t.parquet.a1b2_c3d.tmp", tmp_path / ".u.csv.zz99yy88.tmp"]
    kept = [
        tmp_path / ".t.parquet.csv.a1b2c3d4.tmp",  # a temp of t.parquet.csv, another output
        tmp_path / ".other.parquet.a1b2c3d4.tmp",
        tmp_path / "t.parquet.a1b2c3d4.tmp",  # not hidden: not one of ours
        tmp_path / ".t.parquet.a1b2c3d4.tmp.bak",
    ]
    for p in stale + kept:
        p.write_bytes(b"half")
    outputs = [tmp_path / "t.parquet", str(tmp_path / "u.csv"), tmp_path / "gone" / "x.json"]
    removed = remove_stale_temps(outputs)
    assert removed == sorted(stale)
    assert sorted(tmp_path.iterdir()) == sorted([tmp_path / "t.parquet", *kept])
    assert (tmp_path / "t.parquet").read_bytes() == b"finished"


def test_remove_stale_temps_finds_what_an_interrupted_writer_leaves(tmp_path, monkeypatch):
    target = tmp_path / "t.parquet"

    def killed(src, dst):
        raise KeyboardInterrupt  # stands in for the signal; a SIGKILL would skip the cleanup too

    monkeypatch.setattr(os, "replace", killed)
    monkeypatch.setattr(Path, "unlink", lambda self, missing_ok=False: None)  # as if killed
    with pytest.raises(KeyboardInterrupt):
        write_csv_atomic(pd.DataFrame({"a": [1]}), target)
    monkeypatch.undo()
    [left] = list(tmp_path.iterdir())
    assert left.name.startswith(".t.parquet.") and left.name.endswith(".tmp")
    assert remove_stale_temps([target]) == [left]
    assert list(tmp_path.iterdir()) == []
