"""Training benchmarks: the lesson's loop for one seed, and 64 seeds as one batched ensemble.

The set-up is ``ensemble_speedup.prepare``'s: the lesson's toy data and 2-4-3 network, full
batch, SGD at lr 0.001. The loop benchmark times ``loop_one(0)`` (seed 0's network built, then
the lesson's loop); the ensemble benchmark times ``mlpbench.ensemble.train_ensemble`` on the 64
members' weights, built once beforehand (building them is mostly ``torch.manual_seed`` calls,
which would otherwise hide a slower training loop). One round is ``EPOCHS`` epochs: long
enough that per-call set-up is a small part of it, short enough for many rounds;
``extra_info`` turns the round time into per-epoch figures.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ensemble_speedup import prepare

from mlpbench import data, ensemble

EPOCHS = 200
SEEDS = 64
LR = 0.001  # prepare's default, the lesson's
ROUNDS, WARMUP_ROUNDS = 40, 3


def test_lesson_loop_epochs(bench: Any) -> None:
    case = prepare("toy", 4, 1, n_seeds=1, epochs=EPOCHS)
    losses = bench.run(lambda: case.loop_one(0), group="training toy 2-4-3",
                       rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    # One loss per epoch, all finite, and the lesson's network learns.
    assert losses.shape == (EPOCHS,)
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0]

    bench.extra_info.update(dataset="toy", network="2-4-3", members=1, epochs=EPOCHS)
    t = bench.median_s
    if t is not None:
        bench.extra_info.update(time_per_epoch_s=t / EPOCHS, member_epochs_per_s=EPOCHS / t,
                                members_per_s=1 / t)


def test_ensemble_epochs(bench: Any) -> None:
    ds = data.load("toy")
    arch = ensemble.Architecture(ds.n_features, 4, 1, ds.n_classes)
    params = ensemble.init_params(arch, list(range(SEEDS)))  # train_ensemble leaves it as it is
    run = bench.run(
        lambda: ensemble.train_ensemble(arch, params, ds.x_train, ds.y_train, [LR] * SEEDS, EPOCHS),
        group="training toy 2-4-3", rounds=ROUNDS, warmup_rounds=WARMUP_ROUNDS)

    # Every member trained every epoch, and member 0 is the lesson's loop for seed 0.
    losses = run.losses.cpu().numpy()
    assert losses.shape == (EPOCHS, SEEDS)
    assert np.isfinite(losses).all() and int(run.diverged_at.count_nonzero()) == 0
    assert (losses[-1] < losses[0]).all()
    loop = prepare("toy", 4, 1, n_seeds=1, epochs=EPOCHS, lr=LR).loop_one(0)
    np.testing.assert_allclose(losses[:, 0], loop, rtol=0, atol=1e-6)

    bench.extra_info.update(dataset="toy", network="2-4-3", members=SEEDS, epochs=EPOCHS)
    t = bench.median_s
    if t is not None:
        bench.extra_info.update(time_per_epoch_s=t / EPOCHS,
                                time_per_member_epoch_s=t / EPOCHS / SEEDS,
                                member_epochs_per_s=SEEDS * EPOCHS / t, members_per_s=SEEDS / t)
