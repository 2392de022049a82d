from mlpbench.codeversion import code_version


rule report:
    input:
        source="report/report.py",
        tables=summary_tables(),
        figures=figure_files(),
        lesson=LESSON_FILES,
    output:
        "results/report/report.html",
    log:
        "logs/report.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        code=code_version(
            workflow.source_path("../../scripts/report.py"), "report/report.py"
        ),
    script:
        "../../scripts/report.py"
