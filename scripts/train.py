"""Snakemake entry point: train one data set's grid on one device."""

from mlpbench.contract import TRAIN, write
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.training import run_training_job

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    tables = run_training_job(
        dataset_name=snakemake.wildcards.dataset,  # noqa: F821
        dataset_cfg=snakemake.params.cfg,  # noqa: F821
        device=snakemake.wildcards.device,  # noqa: F821
        threads=snakemake.threads,  # noqa: F821
        decision_grid=snakemake.params.decision_grid,  # noqa: F821
    )
    for path in snakemake.output:  # noqa: F821
        stem = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        write(tables[stem], path, TRAIN[stem])
        log.info("%s: %d rows", stem, len(tables[stem]))
