"""Snakemake entry point: render the Quarto report (Quarto if installed, else the fallback)."""

from pathlib import Path

from mlpbench.joblog import job_log
from mlpbench.rendering import render

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    # The report reads tables/ and figures/ under the results folder that holds its inputs.
    results_dir = Path(snakemake.input.tables[0]).parent.parent  # noqa: F821
    used = render(snakemake.input.source, snakemake.output[0], results_dir)  # noqa: F821
    log.info("rendered %s with %s", snakemake.output[0], used)  # noqa: F821
