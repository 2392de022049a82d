"""Snakemake entry point: draw one figure from the aggregated tables."""

from pathlib import Path

from mlpbench.figures import make_figure
from mlpbench.joblog import job_log

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    tables_dir = Path(snakemake.input[0]).parent  # noqa: F821
    path = make_figure(snakemake.wildcards.name, tables_dir, snakemake.output[0])  # noqa: F821
    log.info("wrote %s", path)
