"""Snakemake entry point: join the stage outputs into the report's tables."""

from pathlib import Path

import pandas as pd

from mlpbench.compare import compare_from_files
from mlpbench.findings import machine_findings
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.tables import build_tables, load_lesson_tables, write_tables

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    train_dirs = list(dict.fromkeys(str(Path(f).parent) for f in snakemake.input.train))  # noqa: F821
    tables = build_tables(
        matmul_files=list(snakemake.input.matmul),  # noqa: F821
        train_dirs=train_dirs,
        machine_files=[snakemake.input.machine],  # noqa: F821
        train_cfg=snakemake.params.train_cfg,  # noqa: F821
    )
    # The lesson rule decided its own conclusions; they join the run's findings.
    lesson = load_lesson_tables(Path(snakemake.input.lesson[0]).parent)  # noqa: F821
    tables["findings"] = pd.concat([tables["findings"], lesson["findings"]], ignore_index=True)
    # Other machines (config `compare:`); without bundles nothing is read or computed.
    compared = compare_from_files(
        Path(snakemake.input.machine).parent.parent,  # noqa: F821 (the results folder)
        snakemake.params.compare["machine_id"],  # noqa: F821
        bundles=list(snakemake.input.bundles),  # noqa: F821
        reference=list(snakemake.input.reference),  # noqa: F821
        baseline=snakemake.params.compare["baseline"],  # noqa: F821
    )
    tables.update(compared)
    tables["findings"] = pd.concat([tables["findings"], machine_findings(tables)],
                                   ignore_index=True)
    for _, row in compared["machines"].iterrows():
        log.info("compared machine %s (%s): %s", row["machine_id"], row["origin"], row["source"])
    for path in write_tables(tables, Path(snakemake.output[0]).parent):  # noqa: F821
        log.info("wrote %s", path)
