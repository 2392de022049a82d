from mlpbench.codeversion import code_version
from mlpbench.data import names as dataset_names


# One job per data set x device: each job trains every shape of its grid as batched ensembles,
# so the ~2 s that importing torch costs is paid once per job, not once per model.
rule train:
    output:
        multiext(
            "results/train/{dataset}/{device}/",
            *[f"{table}.parquet" for table in TRAIN_TABLES],
        ),
    log:
        "logs/train/{dataset}_{device}.log",
    wildcard_constraints:
        # the registered data sets (mlpbench.data)
        dataset="|".join(dataset_names()),
        device="cpu|cuda",
    conda:
        "../envs/mlpbench.yaml"
    threads: config["train"]["threads"]
    resources:
        timing=1,
        gpu=gpu_count,
    params:
        cfg=lambda wildcards: experiment(wildcards.dataset),
        decision_grid=config["train"]["decision_grid"],
        code=code_version(workflow.source_path("../../scripts/train.py")),
    script:
        "../../scripts/train.py"
