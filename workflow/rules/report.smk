rule report:
    input:
        source="report/report.py",
        tables=summary_tables(),
        figures=figure_files(),
    output:
        "results/report/report.html",
    log:
        "logs/report.log",
    conda:
        "../envs/mlpbench.yaml"
    script:
        "../../scripts/report.py"
