"""The plan of shapes one data set's training grid needs.

Training is organised by shape (width, depth): all seeds x learning rates of a shape form one
ensemble, trained once to the largest epoch count the shape needs and evaluated at every epoch
count it needs (with a constant learning rate the 1000-epoch model *is* epoch 1000 of a longer run).

* ``grid`` mode: the full product of the ``width``, ``depth``, ``epochs`` and ``lr`` axes.
* ``sweep`` mode (the homework): every point that differs from ``baseline`` in at most one axis.
  The baseline shape therefore needs every ``epochs`` value and every ``lr``; a shape that differs
  in width or depth needs only ``baseline.epochs`` and ``baseline.lr``.

The experiment config reaching these functions has been checked before any job ran (the schema
``workflow/schemas/config.schema.yaml`` and :func:`mlpbench.checks.check_config`): integers are
``int``, learning rates finite ``float``/``int`` > 0, axes non-empty lists. Nothing is checked again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

AXES = ("epochs", "width", "depth", "lr")


class ShapePlan(NamedTuple):
    """One ensemble to train: a shape, how far, where to evaluate, and its learning rates."""

    width: int
    depth: int
    max_epochs: int
    checkpoints: tuple[int, ...]
    lrs: tuple[float, ...]


def resolve_seeds(seeds: int | list[int]) -> list[int]:
    """``seeds: n`` means seeds 0..n-1; a list is taken as given."""
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def plan_shapes(experiment: Mapping[str, Any]) -> list[ShapePlan]:
    """One data set's experiment config -> the ensembles to train, sorted by (width, depth)."""
    axes = {key: sorted(set(experiment[key])) for key in AXES}
    needs: dict[tuple[int, int], tuple[set[int], set[float]]] = {}

    def need(width: int, depth: int, epochs: set[int], lrs: set[float]) -> None:
        have = needs.setdefault((width, depth), (set(), set()))
        have[0].update(epochs)
        have[1].update(lrs)

    if experiment["mode"] == "grid":
        for width in axes["width"]:
            for depth in axes["depth"]:
                need(width, depth, set(axes["epochs"]), set(axes["lr"]))
    else:  # sweep
        b = experiment["baseline"]
        need(b["width"], b["depth"], set(axes["epochs"]) | {b["epochs"]}, set(axes["lr"]) | {b["lr"]})
        for width in axes["width"]:
            need(width, b["depth"], {b["epochs"]}, {b["lr"]})
        for depth in axes["depth"]:
            need(b["width"], depth, {b["epochs"]}, {b["lr"]})
    return [
        ShapePlan(width, depth, max(epochs), tuple(sorted(epochs)), tuple(sorted(lrs)))
        for (width, depth), (epochs, lrs) in sorted(needs.items())
    ]
