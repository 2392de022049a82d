from mlpbench.codeversion import code_version
from mlpbench.contract import LESSON_TABLES

# The toy data's CPU training tables, when this run trains the lesson's data on the CPU.
LESSON_INPUTS = (
    {
        name: f"results/train/toy/cpu/{name}.parquet"
        for name in ("metrics", "predictions", "gradnorms")
    }
    if "toy" in config["train"]["datasets"] and "cpu" in config["train"]["devices"]
    else {}
)
# Operation counts for 1..L hidden layers: up to the deepest network this run trains, at least 6.
DEEPEST = [
    max([*exp.get("depth", []), exp["baseline"]["depth"]])
    for exp in selected_experiments().values()
]
LESSON_DEPTHS = list(range(1, max([6, *DEEPEST]) + 1))
LESSON_FILES = expand("results/lesson/{name}.parquet", name=LESSON_TABLES)


# The lesson's exercises and worked examples: operation counts on autograd graphs, the autograd
# example, and the learned parameters and test predictions of the lesson's network. It measures
# no time, but it computes: it takes the `timing` slot so that it never shares the cores with a
# job that does.
rule lesson:
    input:
        **LESSON_INPUTS,
    output:
        LESSON_FILES,
    log:
        "logs/lesson.log",
    conda:
        "../envs/mlpbench.yaml"
    threads: 1
    resources:
        timing=1,
    params:
        depths=LESSON_DEPTHS,
        experiment=experiment("toy"),
        depth_epochs=config["lesson"]["depth_epochs"],
        code=code_version(workflow.source_path("../../scripts/lesson.py")),
    script:
        "../../scripts/lesson.py"
