"""Snakemake entry point: time the matmul cases on one device."""

from mlpbench.contract import MATMUL, MATMUL_SAMPLES, write
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.matmul import measure_matmul_stage, shapes_from_config

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    cfg = snakemake.params.cfg  # noqa: F821
    result = measure_matmul_stage(
        device=snakemake.wildcards.device,  # noqa: F821
        dtypes=list(cfg["dtypes"]),
        shapes=shapes_from_config(cfg),
        threads=snakemake.threads,  # noqa: F821
        min_run_time_s=cfg["min_run_time_s"],
        bandwidth_mib=cfg["bandwidth_mib"],
        min_samples=cfg["min_samples"],
        max_attempts=cfg["max_attempts"],
        log=log.info,
    )
    table = result.table
    log.info("%d rows, status counts: %s; %d noisy", len(table),
             table["status"].value_counts().to_dict(), int(table["noisy"].sum()))
    write(result.samples, snakemake.output.samples, MATMUL_SAMPLES)  # noqa: F821
    write(table, snakemake.output.table, MATMUL)  # noqa: F821
