from mlpbench.bundle import member_paths
from mlpbench.codeversion import code_version


# One shareable file per run: `snakemake --cores 1 bundle`. Not part of `rule all`. Its tables
# are those of this config (mlpbench.bundle.member_paths, the same list the bundle's reader
# expects), never a glob of results/, so files of an earlier config stay out.
rule bundle:
    input:
        machine=machine_file(),
        tables=[f"results/{member}" for member in member_paths(config)],
    output:
        f"results/bundles/{MACHINE_ID}.zip",
    log:
        f"logs/bundle/{MACHINE_ID}.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        machine_id=MACHINE_ID,
        code=code_version(workflow.source_path("../../scripts/bundle.py")),
    script:
        "../../scripts/bundle.py"
