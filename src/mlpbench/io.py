"""Atomic writers: an interrupted job must never leave a file that looks finished.

Each writer fills a hidden temp file beside its target, ``.NAME.XXXXXXXX.tmp``, and renames it
into place. A process killed between the two (SIGKILL, the OOM killer, a cluster's time limit)
leaves that temp file behind; :func:`remove_stale_temps`, called when the job that owns the
outputs starts again, removes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only annotations: the report job imports this module without pandas
    import pandas as pd


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# The temp name of a write to NAME is _TEMP_PREFIX + NAME + "." + token + _TEMP_SUFFIX, the token
# being mkstemp's random letters, digits and underscores (never a dot).
_TEMP_PREFIX = "."
_TEMP_SUFFIX = ".tmp"


def _atomic_target(path: str | os.PathLike) -> tuple[Path, int, str]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f"{_TEMP_PREFIX}{path.name}.", suffix=_TEMP_SUFFIX, dir=path.parent
    )
    # mkstemp creates 0600; give the final file the mode an ordinary open() would.
    os.chmod(tmp, 0o666 & ~_umask())
    return path, fd, tmp


def _is_temp_of(candidate: str, name: str) -> bool:
    head = f"{_TEMP_PREFIX}{name}."
    if not (candidate.startswith(head) and candidate.endswith(_TEMP_SUFFIX)):
        return False
    token = candidate[len(head) : -len(_TEMP_SUFFIX)]
    # A dot in the token means a temp of another file: ".a.b.XXXX.tmp" belongs to "a.b", not "a".
    return bool(token) and "." not in token


def remove_stale_temps(outputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Delete the temp files that interrupted atomic writes of ``outputs`` left beside them.

    Call it when the job that owns ``outputs`` starts: Snakemake gives each output file to one
    job, so no live writer holds these temp files then. Only names of the form
    ``.NAME.XXXXXXXX.tmp`` for a NAME in ``outputs`` are touched (never the temps of a
    sibling whose name extends NAME); a missing folder is fine. Returns the removed paths,
    sorted.
    """
    removed: list[Path] = []
    for out in map(Path, outputs):
        try:
            entries = list(os.scandir(out.parent))
        except FileNotFoundError:
            continue
        for entry in entries:
            if _is_temp_of(entry.name, out.name) and not entry.is_dir(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed.append(Path(entry.path))
    return sorted(set(removed))


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


def write_csv_atomic(df: pd.DataFrame, path: str | os.PathLike) -> None:
    write_bytes_atomic(df.to_csv(index=False).encode(), path)


def write_json_atomic(obj: Any, path: str | os.PathLike) -> None:
    write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode(), path)
