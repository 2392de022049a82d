"""Snakemake entry point: draw every figure from the aggregated tables."""

from pathlib import Path

from mlpbench.figures import make_figures
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    tables_dir = Path(snakemake.input[0]).parent  # noqa: F821
    # The figures are drawn side by side in as many processes as the job has threads; each
    # process reads (and checks) the tables once.
    for out in make_figures(tables_dir, snakemake.output, workers=snakemake.threads):  # noqa: F821
        log.info("wrote %s", out)
