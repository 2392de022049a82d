"""Snakemake entry point: answer the lesson's exercises and worked examples from a run."""

import torch

from mlpbench import lesson
from mlpbench.contract import LESSON, TRAIN, empty_frame, read, write
from mlpbench.io import remove_stale_temps
from mlpbench.joblog import job_log
from mlpbench.training import run_training_job

with job_log(snakemake.log[0]) as log:  # noqa: F821 (snakemake is injected by the script directive)
    for tmp in remove_stale_temps(snakemake.output):  # noqa: F821
        log.warning("removed %s, left by an interrupted write", tmp)
    torch.set_num_threads(snakemake.threads)  # noqa: F821
    autograd = lesson.autograd_table()
    lesson.require_autograd(autograd)  # a mismatch stops the run before anything is written
    ops = lesson.ops_table(snakemake.params.depths)  # noqa: F821
    experiment = snakemake.params.experiment  # noqa: F821
    params, points = empty_frame(LESSON["parameters"]), empty_frame(LESSON["test_points"])
    first_layer = None
    if snakemake.input:  # noqa: F821  the lesson's data set was trained on the CPU
        metrics = read(snakemake.input.metrics, TRAIN["metrics"]).to_pandas()  # noqa: F821
        predictions = read(snakemake.input.predictions, TRAIN["predictions"]).to_pandas()  # noqa: F821
        gradnorms = read(snakemake.input.gradnorms, TRAIN["gradnorms"]).to_pandas()  # noqa: F821
        net, pick = lesson.learned_network(metrics, experiment)
        log.info("representative seed %d (test accuracy %.3f)", pick["seed"], pick["test_acc"])
        params = lesson.parameters_table(net, pick)
        points = lesson.predicted_test_points(net, pick, predictions, experiment)
        first_layer = lesson.first_layer_gradients(gradnorms, experiment["baseline"])
    else:
        log.info("toy data not trained on the CPU in this run: no learned parameters")
    depth_epochs = empty_frame(LESSON["depth_epochs"])
    if snakemake.params.depth_epochs:  # noqa: F821
        grid = lesson.depth_epochs_experiment(experiment)
        log.info("depth x epochs: depths %s, epochs %s", grid["depth"], grid["epochs"])
        trained = run_training_job("toy", grid, "cpu", snakemake.threads,  # noqa: F821
                                   {"resolution": 2, "margin": 0.0})
        depth_epochs = lesson.depth_epochs_table(trained["metrics"], grid["baseline"])
    tables = {
        "ops": ops, "autograd": autograd, "parameters": params, "test_points": points,
        "code": lesson.code_table(), "depth_epochs": depth_epochs,
        "findings": lesson.lesson_findings(ops, autograd, points, first_layer, depth_epochs,
                                           experiment["baseline"]["depth"]),
    }
    for path in snakemake.output:  # noqa: F821
        stem = path.rsplit("/", 1)[-1].removesuffix(".parquet")
        write(tables[stem], path, LESSON[stem])
        log.info("%s: %d rows", stem, len(tables[stem]))
