"""Snakemake entry point: write this machine's provenance record."""

from mlpbench.io import remove_stale_temps, write_json_atomic
from mlpbench.joblog import job_log
from mlpbench.machine import collect

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    record = collect(
        config_hash=snakemake.params.config_hash,  # noqa: F821
        config=snakemake.params.config,  # noqa: F821
        explicit_id=snakemake.params.machine_id,  # noqa: F821
    )
    write_json_atomic(record, snakemake.output[0])  # noqa: F821
    log.info("machine record: %s", snakemake.output[0])  # noqa: F821
