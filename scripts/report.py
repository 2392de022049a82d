"""Snakemake entry point: render the report (Quarto 1.4+ if installed, else the fallback)."""

import sys
from pathlib import Path

from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.rendering import render

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    # The report reads tables/ and figures/ under the results folder that holds its inputs.
    results_dir = Path(snakemake.input.tables[0]).parent.parent  # noqa: F821
    # job_log points sys.stderr at the log file: the renderer's own output (Quarto's messages,
    # the kernel's) is kept there too.
    used = render(snakemake.input.source, snakemake.output[0], results_dir,  # noqa: F821
                  log_stream=sys.stderr)
    # When Quarto could not be used, render() has already logged why (a warning).
    log.info("rendered %s with %s", snakemake.output[0], used.detail)  # noqa: F821
