from mlpbench.codeversion import code_version


# The file name comes from the target, not from this process's host name: on a cluster the job
# re-parses the workflow on a node whose host name differs from the login node's.
# The record holds static facts only: thread counts and thread variables are recorded by each
# timing job itself (mlpbench.environment), so nothing here depends on --cores.
rule machine:
    output:
        "results/machine/{machine_id}.json",
    log:
        "logs/machine/{machine_id}.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        config_hash=CONFIG_HASH,
        config=RECORDED_CONFIG,
        machine_id=lambda wildcards: wildcards.machine_id,
        code=code_version(workflow.source_path("../../scripts/machine.py")),
    script:
        "../../scripts/machine.py"
