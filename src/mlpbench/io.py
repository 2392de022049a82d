"""Atomic writers: an interrupted job must never leave a file that looks finished."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _atomic_target(path: str | os.PathLike) -> tuple[Path, int, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp creates 0600; give the final file the mode an ordinary open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    return path, fd, tmp


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path, fd, tmp = _atomic_target(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_parquet_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Parquet without the index, written atomically; byte-identical for identical frames."""
    path, fd, tmp = _atomic_target(path)
    os.close(fd)
    try:
        df.to_parquet(tmp, index=False, engine="pyarrow", compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    write_bytes_atomic(df.to_csv(index=False).encode(), path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), path)
