from mlpbench.backends import devices as backend_devices
from mlpbench.codeversion import code_version


# Timing jobs take the single `timing` slot (capped at 1 in the default profile) so that
# no other job shares the cores they measure. Beside its table, each writes the environment it
# measured in (threads, thread variables, affinity, load, clocks), read before and after.
rule matmul:
    output:
        table="results/matmul/{device}.parquet",
        environment="results/matmul/{device}.environment.parquet",
        samples="results/matmul/{device}.samples.parquet",
    log:
        "logs/matmul/{device}.log",
    wildcard_constraints:
        # the devices the registered backends run on (mlpbench.backends)
        device="|".join(backend_devices()),
    conda:
        "../envs/mlpbench.yaml"
    threads: matmul_threads()
    resources:
        timing=1,
        gpu=gpu_count,
    params:
        cfg=config["matmul"],
        code=code_version(workflow.source_path("../../scripts/matmul.py")),
    script:
        "../../scripts/matmul.py"
