# The aggregate rule reads exactly the files this config asks for: outputs of an earlier,
# different config that still lie in results/ are never globbed in.
rule aggregate:
    input:
        matmul=matmul_files(),
        train=train_files(),
        machine=machine_file(),
    output:
        summary_tables(),
    log:
        "logs/aggregate.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        train_cfg=config["train"],
    script:
        "../../scripts/aggregate.py"


rule figure:
    input:
        summary_tables(),
    output:
        report(
            "results/figures/{name}.png",
            caption="../report/{name}.rst",
            category=lambda wildcards: FIGURES[wildcards.name],
        ),
    log:
        "logs/figures/{name}.log",
    wildcard_constraints:
        name="|".join(FIGURES),
    conda:
        "../envs/mlpbench.yaml"
    script:
        "../../scripts/figure.py"
