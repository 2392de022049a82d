"""Send a pipeline job's output and warnings to its log file."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("mlpbench")


@contextlib.contextmanager
def job_log(path: str | os.PathLike | None) -> Iterator[logging.Logger]:
    """Append stdout, stderr and the ``mlpbench`` logger to ``path`` for the job's duration.

    A failing job writes its traceback to the log too before the error propagates, so
    Snakemake reports the failure and the log says why.
    """
    if path is None:
        yield log
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        logging.captureWarnings(True)
        start = time.perf_counter()
        try:
            yield log
        except BaseException:
            log.exception("job failed")
            raise
        else:
            log.info("done in %.2f s", time.perf_counter() - start)
        finally:
            log.removeHandler(handler)
