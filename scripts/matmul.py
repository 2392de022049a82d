"""Snakemake entry point: time the matmul cases on one device."""

from contextlib import nullcontext

import pandas as pd

from mlpbench import backends
from mlpbench.config import machine_id
from mlpbench.contract import MATMUL, MATMUL_ENVIRONMENT, MATMUL_SAMPLES, write
from mlpbench.environment import environment_rows, snapshot
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.matmul import measure_matmul_stage, shapes_from_config
from mlpbench.timing import thread_limits

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    cfg = snakemake.params.cfg  # noqa: F821
    device = snakemake.wildcards.device  # noqa: F821
    threads = snakemake.threads  # noqa: F821
    gpu = 0 if device == "cuda" else None
    # The readings are taken under the thread limits every measurement sets (the same ones).
    # Where no backend can run on the device (CUDA without a GPU) nothing is timed: the
    # readings are taken as the job is, and torch, whose threads the limits set, stays unloaded.
    timed = any(backends.get(name).unavailable_reason(device) is None
                for name in backends.by_device()[device])
    with thread_limits(threads) if timed else nullcontext():
        before = snapshot(cuda_device=gpu)
        result = measure_matmul_stage(
            device=device,
            dtypes=list(cfg["dtypes"]),
            shapes=shapes_from_config(cfg),
            threads=threads,
            min_run_time_s=cfg["min_run_time_s"],
            bandwidth_mib=cfg["bandwidth_mib"],
            min_samples=cfg["min_samples"],
            max_attempts=cfg["max_attempts"],
            log=log.info,
        )
        after = snapshot(cuda_device=gpu)
    table = result.table
    log.info("%d rows, status counts: %s; %d noisy", len(table),
             table["status"].value_counts().to_dict(), int(table["noisy"].sum()))
    env = environment_rows(before, after, host=machine_id(None), stage="matmul", device=device,
                           threads=threads)
    write(result.samples, snakemake.output.samples, MATMUL_SAMPLES)  # noqa: F821
    write(table, snakemake.output.table, MATMUL)  # noqa: F821
    write(pd.DataFrame(env), snakemake.output.environment, MATMUL_ENVIRONMENT)  # noqa: F821
