from mlpbench.codeversion import code_version


# The aggregate rule reads exactly the files this config asks for: outputs of an earlier,
# different config that still lie in results/ are never globbed in.
rule aggregate:
    input:
        matmul=matmul_files(),
        # written by the same matmul jobs; listed so the rule names every file it reads
        matmul_environment=expand(
            "results/matmul/{device}.environment.parquet",
            device=config["matmul"]["devices"],
        ),
        train=train_files(),
        machine=machine_file(),
        lesson=LESSON_FILES,
        # other machines' bundles (compare:), checked when the workflow was parsed
        bundles=compare_files()["bundles"],
        reference=compare_files()["reference"],
    output:
        summary_tables(),
    log:
        "logs/aggregate.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        train_cfg={"datasets": selected_experiments()},
        compare={"machine_id": MACHINE_ID, "baseline": config["compare"]["baseline"]},
        code=code_version(workflow.source_path("../../scripts/aggregate.py")),
    script:
        "../../scripts/aggregate.py"


# One job draws every figure: importing matplotlib and pandas costs more than drawing one.
# Its processes draw them side by side, one per thread (nothing else runs at this stage).
rule figures:
    input:
        summary_tables(),
    output:
        [
            report(
                f"results/figures/{name}.png",
                caption=f"../report/{name}.rst",
                category=category,
            )
            for name, category in active_figures().items()
        ],
    log:
        "logs/figures.log",
    conda:
        "../envs/mlpbench.yaml"
    threads: min(len(active_figures()), usable_cores())
    params:
        code=code_version(workflow.source_path("../../scripts/figures.py")),
    script:
        "../../scripts/figures.py"
