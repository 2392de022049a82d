import os
from pathlib import Path

import yaml
from jsonschema import ValidationError
from snakemake.cli import parse_config
from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, update_config

from mlpbench.checks import check_compare, check_config, compare_sources
from mlpbench.config import (
    ConfigError,
    command_line_value,
    config_hash,
    explain,
    machine_id,
    read_config_file,
    recorded_config,
    validate_config,
)
from mlpbench.data import config_schema

# Table and figure names, declared once in mlpbench.contract (stdlib + pyarrow only, so
# building the DAG imports neither pandas nor matplotlib).
from mlpbench.contract import FIGURES, MACHINE_FIGURES, SUMMARY_TABLES, TRAIN_TABLES

min_version("9.0")

DEFAULT_CONFIG = "config/config.yaml"
SCHEMA = Path(workflow.basedir) / "schemas" / "config.schema.yaml"

# Read the default file first: Snakemake's own error for a broken file names neither the file
# nor the line. (A missing one is left to `configfile:`, which needs it only without --configfile.)
if os.path.exists(DEFAULT_CONFIG):
    try:
        read_config_file(DEFAULT_CONFIG)
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


configfile: DEFAULT_CONFIG


# `--config KEY={...}`: Snakemake reads a nested value with YAML's BaseLoader, which leaves every
# number and null in it a string. Read such values again as YAML, so that they mean what the same
# text means in a config file, and merge them as Snakemake did (in order, nested keys merged,
# lists replaced). Plain values keep Snakemake's reading.
try:
    command_line = {}
    for entry in workflow.config_settings.config_args or []:
        update_config(command_line, command_line_value(entry) or parse_config([entry]))
except ConfigError as err:
    raise WorkflowError(str(err)) from None
update_config(config, command_line)

# Validate (and fill defaults) before any job is scheduled; turn the schema error into one
# sentence naming the key, the value and what is allowed. The schema gets the registered data
# sets (their names and `data:` blocks) from mlpbench.data. Then check, in the same style, what
# the schema cannot say (finite numbers, cross-field rules, sizes that fit in memory); this also
# reads integer-valued numbers where integers are meant as integers. Nothing after this point
# checks the config again.
SCHEMA_DOC = config_schema(yaml.safe_load(SCHEMA.read_text()))
try:
    validate_config(config, SCHEMA_DOC)
except ValidationError as err:
    raise WorkflowError(explain(err, SCHEMA_DOC)) from None
try:
    check_config(config, SCHEMA_DOC)
except ConfigError as err:
    raise WorkflowError(str(err)) from None

# What this run records about itself (and bundles): the config without the keys that only
# shape the report (compare:), so that comparing with other machines reruns no measurement.
RECORDED_CONFIG = recorded_config(config)
CONFIG_HASH = config_hash(RECORDED_CONFIG)
MACHINE_ID = machine_id(config["machine_id"])

# Other machines (`compare:`): globs expanded now, so each bundle is an input of the aggregate
# rule (a changed bundle reruns it); every bundle is opened and verified here, in memory,
# before any job runs, so a refused bundle stops the run with nothing under results/ changed.
# Without bundles this imports and reads nothing.
try:
    COMPARE = compare_sources(config)
    COMPARED_BUNDLES = check_compare(config, COMPARE, MACHINE_ID)
except ValueError as err:  # ConfigError, or the bundle's one-line BundleError
    raise WorkflowError(str(err)) from None


def usable_cores():
    """Cores this run may use: Snakemake's --cores, capped by the CPUs we are pinned to."""
    available = len(os.sched_getaffinity(0))
    try:
        cores = workflow.cores
    except WorkflowError:
        # A cluster executor without --cores: the CPUs this process may use.
        return available
    return min(cores, available) if isinstance(cores, int) and cores > 0 else available


def matmul_threads():
    """The matmul rule's threads: the config's, or every usable core for 0. Only the rule's
    `threads:` uses this; each timing job records the threads it really got (its own
    snakemake.threads, so --set-threads wins) in its environment table, and no parameter or
    record depends on --cores, so `snakemake -n` with or without --cores plans the same.
    """
    return min(config["matmul"]["threads"] or usable_cores(), usable_cores())


def machine_file():
    return f"results/machine/{MACHINE_ID}.json"


def matmul_files():
    return expand("results/matmul/{device}.parquet", device=config["matmul"]["devices"])


def train_dirs():
    return expand(
        "results/train/{dataset}/{device}",
        dataset=config["train"]["datasets"],
        device=config["train"]["devices"],
    )


def train_files():
    return [f"{d}/{table}.parquet" for d in train_dirs() for table in TRAIN_TABLES]


def experiment(dataset):
    return config["train"]["experiments"][dataset]


def selected_experiments():
    """The grids of the data sets this run trains on, by name."""
    return {name: experiment(name) for name in config["train"]["datasets"]}


def gpu_count(wildcards):
    """CUDA jobs claim the one GPU so that they never overlap."""
    return int(wildcards.device == "cuda")


def summary_tables():
    return expand(
        "results/tables/{name}.{ext}", name=SUMMARY_TABLES, ext=["parquet", "csv"]
    )


def figure_files():
    return expand("results/figures/{name}.png", name=list(active_figures()))


def compare_files():
    """Other machines' bundles for the aggregate job (the user's, then the shipped ones)."""
    return {"bundles": COMPARE.bundles, "reference": COMPARE.reference}


def active_figures():
    """Figures this run draws: the machine comparison only when other machines are compared."""
    if any(b.machine_id != MACHINE_ID for b in COMPARED_BUNDLES):
        return dict(FIGURES)
    return {name: cat for name, cat in FIGURES.items() if name not in MACHINE_FIGURES}
