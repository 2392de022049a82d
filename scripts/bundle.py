"""Snakemake entry point: write this run's bundle (results/bundles/<machine_id>.zip)."""

from pathlib import Path

from mlpbench.bundle import write_bundle
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    results = Path(snakemake.input.machine).parents[1]  # noqa: F821  results/machine/<id>.json
    out = write_bundle(results, snakemake.params.machine_id, snakemake.output[0])  # noqa: F821
    log.info("bundle: %s (%d bytes)", out, out.stat().st_size)
