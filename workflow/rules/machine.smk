rule machine:
    output:
        f"results/machine/{MACHINE_ID}.json",
    log:
        "logs/machine.log",
    conda:
        "../envs/mlpbench.yaml"
    params:
        config_hash=CONFIG_HASH,
        machine_id=MACHINE_ID,
        matmul_threads=matmul_threads(),
    script:
        "../../scripts/machine.py"
