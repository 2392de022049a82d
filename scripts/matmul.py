"""Snakemake entry point: time the matmul cases on one device."""

from mlpbench.contract import MATMUL, write
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.matmul import run_matmul_stage, shapes_from_config

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    cfg = snakemake.params.cfg  # noqa: F821
    table = run_matmul_stage(
        device=snakemake.wildcards.device,  # noqa: F821
        dtypes=list(cfg["dtypes"]),
        shapes=shapes_from_config(cfg),
        threads=snakemake.threads,  # noqa: F821
        min_run_time_s=cfg["min_run_time_s"],
        bandwidth_mib=cfg["bandwidth_mib"],
        log=log.info,
    )
    log.info("%d rows, status counts: %s", len(table), table["status"].value_counts().to_dict())
    write(table, snakemake.output[0], MATMUL)  # noqa: F821
