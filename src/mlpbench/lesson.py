"""The lesson's exercises and worked examples, answered by running them.

Four things the slides of "PyTorch I: MLPs" ask or show, each computed here and returned as a
tidy table whose columns are declared in :data:`mlpbench.contract.LESSON`:

* ``ops`` -- the chain-rule counting exercise. For ``depth`` = L hidden layers the slide's loss
  of one point, ``-yᵀ log(softmax(W_L a(W_{L-1} ··· a(W_0 x))))``, is built from explicit
  operations (no biases, as on the slide) and its autograd graph is walked from the loss back
  to ``W_0`` (``grad_fn.next_functions``). The nodes on that chain are the operations between
  ``W_0 x`` and the loss; hooks on them count the backward steps that actually run for
  ``dL/dW_0``. The counts are set against :func:`operations_formula`. The graph of the loss the
  pipeline trains (``nn.CrossEntropyLoss`` on :class:`~mlpbench.models.MLP`, with biases, over a
  batch) is walked the same way and set against :func:`training_graph_formula`.
* ``autograd`` -- the slide's example ``x = [2, -1]``, ``f = x.pow(2).sum()``, whose gradient
  must be ``[4, -2]``; :func:`require_autograd` raises on a mismatch.
* ``parameters`` / ``test_points`` -- the lesson's network (the toy baseline) for its
  representative seed (test accuracy closest to the median over seeds, the rule of the
  decision-region figure), retrained with :func:`mlpbench.training.lesson_loop` on the CPU:
  its learned weights and biases, and its logits and predicted class for each test point beside
  the lesson's printed ``[0 2 2]``, with the share of seeds that classify each point right.
* ``code`` -- for each report section, the lesson's code and the source mlpbench ran instead,
  read with :func:`inspect.getsource` from the functions that ran (never a copy by hand).
* ``depth_epochs`` -- optional (config ``lesson.depth_epochs``): the toy data's depth axis
  trained at every epoch count (:func:`depth_epochs_experiment`), so that depth is judged with
  time to train; :func:`depth_given_time_findings` names the epoch count from which a deeper
  network beats the lesson's depth, or says that it still trails.

:func:`lesson_findings` turns these into rows of the findings table (section ``lesson``), so
the report states conclusions it does not compute.

Sources: the slides "Chain rule and Backpropagation", "Exercises", "Gradients with Autograd",
"Our First Neural Network: Checking Parameters" and "... Testing!".
"""

from __future__ import annotations

import inspect
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlpbench import data as datamod
from mlpbench import timing, training
from mlpbench.models import MLP, LessonNet

__all__ = [
    "AUTOGRAD_EXPECTED",
    "AUTOGRAD_X",
    "LESSON_CODE",
    "LESSON_TEST_LOGITS",
    "LESSON_TEST_PREDICTIONS",
    "LessonCheckError",
    "autograd_example",
    "autograd_table",
    "chain_to",
    "code_table",
    "depth_epochs_experiment",
    "depth_epochs_table",
    "depth_given_time_findings",
    "first_layer_gradients",
    "learned_network",
    "lesson_findings",
    "multiplications_formula",
    "operations_formula",
    "ops_table",
    "parameters_table",
    "predicted_test_points",
    "require_autograd",
    "slide_loss",
    "training_graph_formula",
]

# --------------------------------------------------------------------------- the lesson's facts

#: Slide "Exercises": the one-hidden-layer loss has 6 operations and its W_0 derivative 6
#: multiplications.
SLIDE_OPERATIONS_ONE_HIDDEN = 6
SLIDE_MULTIPLICATIONS_ONE_HIDDEN = 6
#: Slide "Gradients with Autograd".
AUTOGRAD_X = (2.0, -1.0)
AUTOGRAD_EXPECTED = (4.0, -2.0)
#: Slide "Testing!": the printed logits and arg-max classes of the trained network on
#: x_test = [[-2, -2], [2, -2], [2, 2]] (labels 0, 1, 2), from the lesson's one run on CUDA.
LESSON_TEST_LOGITS = ((0.69065624, 0.26163384, 0.29026318),
                      (-0.01491237, 0.0594516, 0.10389088),
                      (0.13534957, 0.03114225, 0.16994081))
LESSON_TEST_PREDICTIONS = (0, 2, 2)

#: The lesson's code behind each report section, as the slides print it.
LESSON_CODE: dict[str, str] = {
    "matmul": (
        "x_t, y_t = torch.rand(1, 6400), torch.rand(6400, 5000)\n"
        "x_n, y_n = np.random.random((1, 6400)), np.random.random((6400, 5000))\n\n"
        "x, y = x_t.to('cuda'), y_t.to('cuda')\n%timeit z = x@y\n\n"
        "x, y = x_t.cpu(), y_t.cpu()\n%timeit z = x@y\n\n"
        "%timeit z = np.matmul(x_n, y_n)"
    ),
    "training": (
        "mynet = MyNeuralNet().to(device)\n"
        "loss_func = nn.CrossEntropyLoss()\n"
        "opt = SGD(mynet.parameters(), lr = 0.001)\n\n"
        "n_epochs = 1000\nloss_history = []\nfor _ in range(n_epochs):\n"
        "    opt.zero_grad()\n"
        "    loss_value = loss_func(mynet(X_train), Y_train)\n"
        "    loss_value.backward()\n"
        "    opt.step()\n"
        "    loss_history.append(loss_value.detach().cpu().numpy())"
    ),
    "autograd": (
        "x = torch.tensor([2., -1.], requires_grad=True)\n"
        "f = x.pow(2).sum()\nf.backward()\nans = x.grad\nprint(ans)"
    ),
    "parameters": "for par in mynet.parameters():\n    print(par)",
    "testing": (
        "x_test = [[-2,-2], [2,-2], [2,2]]\ny_test = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]\n"
        "X_test, Y_test = torch.tensor(x_test).float().to(device), "
        "torch.tensor(y_test).float().to(device)\n\n"
        "Y_pred = mynet(X_test)\nprint(Y_pred.cpu().detach().numpy())\n"
        "print(torch.argmax(Y_pred, dim=1).cpu().numpy())"
    ),
}

#: A node of the autograd graph that only re-lays out a stored weight (nn.Linear keeps W as
#: out x in and computes x Wᵀ): not an operation of the formula.
LAYOUT_NODES = frozenset({"TBackward0"})


class LessonCheckError(RuntimeError):
    """A worked example of the lesson that this run does not reproduce, or a retrained network
    that does not match what the training job recorded for it."""


# --------------------------------------------------------------------------- counting


def _check_depth(depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (int, np.integer)) or depth < 1:
        raise ValueError(f"depth: got {depth!r}; allowed: integers >= 1")
    return int(depth)


def operations_formula(depth: int) -> int:
    """Operations between ``W_0 x`` and the loss of one point, for ``depth`` = L hidden layers.

    ``W_0 x`` is one; each hidden layer adds its activation ``a`` and the next product
    ``W_l z`` (two each, L of them); softmax, log and the product with ``-yᵀ`` close the
    expression: 1 + 2L + 3 = 2L + 4 (6 for the lesson's network, as the slide says).
    """
    return 2 * _check_depth(depth) + 4


def multiplications_formula(depth: int) -> int:
    """Multiplications in the chain rule of ``dL/dW_0``: one per operation, 2L + 4.

    The slide writes the chain with one factor per operation plus ``du_0/du_1`` (the loss as
    the outermost function), so n operations give n + 1 factors and n products between them.
    In backpropagation each operation's step multiplies the incoming gradient by that
    operation's local derivative once.
    """
    return operations_formula(depth)


def training_graph_formula(depth: int) -> int:
    """Nodes on the chain from ``W_0`` to the batch loss of ``nn.CrossEntropyLoss`` that the
    pipeline trains, layout steps left out: 2L + 6.

    ``addmm`` computes ``W x + b`` as one node and ``log_softmax`` fuses softmax and log
    (one node fewer than the formula); with one-hot targets the loss is built as a multiply by
    y, a sum over classes and points, a negation and a division by the number of points (three
    nodes more than the slide's single ``-yᵀ``; the mean over points is the final sum the
    exercise leaves out, done here in the same sum and the division).
    """
    return 2 * _check_depth(depth) + 6


def slide_loss(weights: Sequence[torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The slide's loss of one point, one autograd node per operation of the formula.

    ``weights`` = [W_0 (width, n_in), ..., W_L (n_out, width)], ``x`` (n_in,), ``y`` (n_out,)
    one-hot. Returns ``-yᵀ log(softmax(W_L relu(··· relu(W_0 x))))``, a 0-d tensor. No biases,
    as the slide writes it; ``-y`` is a constant, so ``-yᵀ z`` is one product.
    """
    z = torch.mv(weights[0], x)
    for w in weights[1:]:
        z = torch.mv(w, torch.relu(z))
    return torch.dot(-y, torch.log(torch.softmax(z, dim=0)))


def chain_to(loss: torch.Tensor, leaf: torch.Tensor) -> list[Any]:
    """The autograd nodes from ``loss.grad_fn`` back to ``leaf``'s gradient accumulator,
    loss end first, the accumulator left out.

    Walks ``grad_fn.next_functions``. Raises :class:`LessonCheckError` if ``leaf`` is not in
    the graph or is reached along more than one path (then there is no single chain).
    """
    paths: list[list[Any]] = []

    def walk(node: Any, path: list[Any]) -> None:
        if node is None:
            return
        if getattr(node, "variable", None) is leaf:
            paths.append(path)
            return
        for nxt, _ in node.next_functions:
            walk(nxt, [*path, node])

    walk(loss.grad_fn, [])
    if len(paths) != 1:
        raise LessonCheckError(f"expected one chain from the loss to the leaf, found {len(paths)}")
    return paths[0]


def _backward_steps(loss: torch.Tensor, chain: Sequence[Any]) -> int:
    """Run ``loss.backward()`` and count how many nodes of ``chain`` computed their step."""
    fired: set[int] = set()
    handles = [node.register_prehook(lambda grads, i=i: fired.add(i))
               for i, node in enumerate(chain)]
    try:
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    return len(fired)


def _names(chain: Iterable[Any]) -> list[str]:
    return [type(node).__name__ for node in chain]


def ops_table(depths: Iterable[int], width: int = 4, seed: int = 0) -> pd.DataFrame:
    """One row per depth: the counting exercise measured on autograd graphs.

    For each depth L the slide's loss (:func:`slide_loss`, toy point ``[-2, -1]`` of class 0,
    weights drawn after ``torch.manual_seed(seed)``) and the training loss
    (``nn.CrossEntropyLoss`` on ``MLP(2, width, L, 3)`` over the toy training set) are built
    and their chains to ``W_0`` walked. Columns as declared in ``contract.LESSON["ops"]``.
    """
    rows = []
    toy = datamod.toy()
    for depth in depths:
        depth = _check_depth(depth)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = MLP(toy.n_features, width, depth, toy.n_classes)
        weights = [lin.weight.detach().clone().requires_grad_(True) for lin in net.linears]
        y0 = datamod.one_hot(toy.y_train[:1], toy.n_classes)[0]
        loss = slide_loss(weights, toy.x_train[0], y0)
        chain = chain_to(loss, weights[0])
        steps = _backward_steps(loss, chain)
        if weights[0].grad is None:
            raise LessonCheckError(f"depth {depth}: backward gave W_0 no gradient")

        t_loss = nn.CrossEntropyLoss()(net(toy.x_train), datamod.one_hot(toy.y_train, toy.n_classes))
        w0 = net.linears[0].weight
        t_chain = [n for n in chain_to(t_loss, w0) if type(n).__name__ not in LAYOUT_NODES]
        t_steps = _backward_steps(t_loss, t_chain)
        rows.append({
            "depth": depth, "width": width,
            "operations_formula": operations_formula(depth),
            "operations_graph": len(chain),
            "multiplications_formula": multiplications_formula(depth),
            "backward_steps_graph": steps,
            "graph_chain": " → ".join(reversed(_names(chain))),
            "training_nodes_formula": training_graph_formula(depth),
            "training_nodes_graph": len(t_chain),
            "training_backward_steps_graph": t_steps,
            "training_graph_chain": " → ".join(reversed(_names(t_chain))),
        })
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- autograd


def autograd_example() -> tuple[list[float], list[float]]:
    """The slide's example, run: returns (x, x.grad) after ``f = x.pow(2).sum(); f.backward()``."""
    x = torch.tensor(list(AUTOGRAD_X), requires_grad=True)
    f = x.pow(2).sum()
    f.backward()
    return x.detach().tolist(), x.grad.tolist()


def autograd_table(expected: Sequence[float] = AUTOGRAD_EXPECTED) -> pd.DataFrame:
    """One row per component of x: x_i, the computed gradient, the slide's value, whether
    they are equal (exactly: 2·2 and 2·(-1) are exact in float32)."""
    x, grad = autograd_example()
    if len(expected) != len(x):
        raise ValueError(f"expected: got {len(expected)} values; allowed: {len(x)}, one per x_i")
    return pd.DataFrame({
        "component": np.arange(len(x), dtype=np.int64), "x": np.array(x, dtype=float),
        "grad": np.array(grad, dtype=float), "expected_grad": np.array(expected, dtype=float),
        "matches": [g == e for g, e in zip(grad, expected)],
    })


def require_autograd(table: pd.DataFrame) -> None:
    """Raise :class:`LessonCheckError` naming the components whose gradient differs from
    the slide's."""
    bad = table[~table["matches"].astype(bool)]
    if len(bad):
        parts = [f"x[{r.component}] = {r.x:g}: grad {r.grad:g}, slide {r.expected_grad:g}"
                 for r in bad.itertuples()]
        raise LessonCheckError("autograd example of the lesson not reproduced: " + "; ".join(parts))


# --------------------------------------------------------------------------- learned network


def _representative(metrics: pd.DataFrame) -> pd.Series:
    from mlpbench.tables import representative_seed  # one rule, shared with decision_regions

    return representative_seed(metrics)


def _baseline_rows(frame: pd.DataFrame, dataset: str, device: str,
                   baseline: Mapping[str, Any]) -> pd.DataFrame:
    sel = frame[(frame["dataset"] == dataset) & (frame["device"] == device)]
    for axis in ("width", "depth", "lr", "epochs"):
        sel = sel[np.isclose(sel[axis].astype(float), float(baseline[axis]))]
    return sel


def learned_network(metrics: pd.DataFrame, experiment: Mapping[str, Any], *,
                    dataset: str = "toy", device: str = "cpu") -> tuple[nn.Module, pd.Series]:
    """The baseline network of ``dataset`` for its representative seed, retrained on the CPU.

    ``metrics`` is the training job's metrics table; ``experiment`` the data set's config
    (``baseline``, ``momentum``, ``batch_size``). The seed is the one whose test accuracy at the
    baseline is closest to the median over seeds (ties: lower loss, lower seed). The network is
    :class:`~mlpbench.models.LessonNet` for the lesson's 2-4-3 shape (else an ``MLP``), drawn
    after ``torch.manual_seed(seed)`` and trained by :func:`mlpbench.training.lesson_loop`.
    Returns (network, that seed's metrics row). Raises :class:`LessonCheckError` when no seed
    of the baseline trained without diverging.
    """
    base = experiment["baseline"]
    rows = _baseline_rows(metrics, dataset, device, base)
    rows = rows[rows["status"] == "ok"]
    if rows.empty:
        raise LessonCheckError(f"{dataset}/{device}: no seed of the baseline {dict(base)} "
                               "trained without diverging")
    pick = _representative(rows)
    ds = datamod.load(dataset, experiment)
    width, depth = int(base["width"]), int(base["depth"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(pick["seed"]))
        if (ds.n_features, width, depth, ds.n_classes) == (2, 4, 1, 3):
            net: nn.Module = LessonNet()
        else:
            net = MLP(ds.n_features, width, depth, ds.n_classes)
        generator = torch.Generator().manual_seed(int(pick["seed"]))
        training.lesson_loop(net, ds.x_train, datamod.one_hot(ds.y_train, ds.n_classes),
                             int(base["epochs"]), float(base["lr"]),
                             float(experiment.get("momentum") or 0.0),
                             experiment.get("batch_size"), generator)
    return net, pick


NETWORK_COLUMNS = ("dataset", "device", "width", "depth", "lr", "seed", "epochs", "test_acc")


def parameters_table(net: nn.Module, pick: pd.Series) -> pd.DataFrame:
    """One row per entry of every parameter of ``net``, in ``net.parameters()`` order (the
    order the slide prints them): tensor name, position, row and column (column 0 for a bias),
    value; with the network's dataset, device, seed and settings from ``pick``."""
    rows = []
    for position, (name, par) in enumerate(net.named_parameters()):
        values = par.detach().double().cpu().numpy()
        grid = values if values.ndim == 2 else values[:, None]
        for (r, c), v in np.ndenumerate(grid):
            rows.append({"tensor": name, "position": position, "kind": name.rsplit(".", 1)[-1],
                         "row": r, "col": c, "n_rows": grid.shape[0], "n_cols":
                         values.shape[1] if values.ndim == 2 else 0, "value": float(v)})
    network = {key: pick[key] for key in NETWORK_COLUMNS}
    return pd.DataFrame([{**network, **row} for row in rows])


def predicted_test_points(net: nn.Module, pick: pd.Series, predictions: pd.DataFrame,
                      experiment: Mapping[str, Any], *, dataset: str = "toy") -> pd.DataFrame:
    """One row per test point: its coordinates and label, the logits and predicted class of
    ``net``, the lesson's printed class (for the toy data), and the share of seeds of the
    baseline whose prediction was right (from the training job's ``predictions`` table).

    Raises :class:`LessonCheckError` if ``net`` predicts differently from what the training job
    recorded for the same seed: the retrained network must be the one the report's numbers
    describe.
    """
    ds = datamod.load(dataset, experiment)
    with torch.no_grad():
        logits = net(ds.x_test).double().cpu().numpy()
    pred = logits.argmax(1)
    base = experiment["baseline"]
    preds = _baseline_rows(predictions, dataset, pick["device"], base)
    mine = preds[preds["seed"] == pick["seed"]].sort_values("point")
    if len(mine) != len(pred) or not np.array_equal(mine["pred"].to_numpy(), pred):
        raise LessonCheckError(
            f"{dataset}: seed {pick['seed']} retrained predicts {pred.tolist()} on the test "
            f"points, the training job recorded {mine['pred'].tolist()}")
    right = preds.assign(_ok=preds["pred"] == preds["label"]).groupby("point")["_ok"]
    share, n = right.mean(), right.size()
    labels = ds.y_test.cpu().numpy()
    lesson = LESSON_TEST_PREDICTIONS if dataset == "toy" else (None,) * len(pred)
    out = pd.DataFrame({
        "dataset": dataset, "device": pick["device"], "seed": int(pick["seed"]),
        "epochs": int(pick["epochs"]), "point": np.arange(len(pred), dtype=np.int64),
        "x0": ds.x_test[:, 0].double().numpy(), "x1": ds.x_test[:, 1].double().numpy(),
        "label": labels.astype(np.int64), "pred": pred.astype(np.int64),
        "correct": pred == labels,
        "lesson_pred": pd.array(list(lesson), dtype="Int64"),
        "share_seeds_correct": [float(share.get(i, math.nan)) for i in range(len(pred))],
        "n_seeds": [int(n.get(i, 0)) for i in range(len(pred))],
    })
    for c in range(logits.shape[1]):
        out[f"logit_{c}"] = logits[:, c]
    return out


# --------------------------------------------------------------------------- depth given time

DEPTH_EPOCHS_COLUMNS = ("depth", "width", "lr", "epochs", "n_seeds", "n_diverged", "loss_mean",
                        "train_acc_mean", "test_acc_mean", "test_acc_ci95_low",
                        "test_acc_ci95_high", "test_acc_min", "test_acc_max")


def depth_epochs_experiment(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """The toy config turned into a depth x epochs grid: every depth of its depth axis (and the
    baseline's) at every epoch count of its epochs axis (and the baseline's), at the baseline's
    width and learning rate, with the same seeds, momentum and batch size. Each depth trains
    once to the longest epoch count; the shorter counts are checkpoints of that run."""
    base = experiment["baseline"]
    return {
        "mode": "grid", "baseline": dict(base),
        "epochs": sorted({*experiment.get("epochs", []), base["epochs"]}),
        "width": [base["width"]],
        "depth": sorted({*experiment.get("depth", []), base["depth"]}),
        "lr": [base["lr"]], "seeds": experiment["seeds"],
        "momentum": experiment.get("momentum", 0.0), "batch_size": experiment.get("batch_size"),
    }


def depth_epochs_table(metrics: pd.DataFrame, baseline: Mapping[str, Any]) -> pd.DataFrame:
    """One row per depth x epochs of a depth x epochs grid's metrics (a training job's metrics
    table), with the statistics over seeds of ``mlpbench.tables.train_summary_table``."""
    from mlpbench.tables import train_summary_table

    summary = train_summary_table(metrics, {str(d): baseline for d in metrics["dataset"].unique()})
    return summary[list(DEPTH_EPOCHS_COLUMNS)].sort_values(["depth", "epochs"]).reset_index(
        drop=True)


def _depth_verdicts(table: pd.DataFrame, base_depth: int) -> list[dict[str, Any]]:
    """Per deeper network, its verdict against the baseline depth at each epoch count."""
    from mlpbench.findings import ci_verdict  # the report's one rule for "better than"

    base = table[table["depth"] == base_depth].set_index("epochs")
    out = []
    for depth, rows in table[table["depth"] != base_depth].groupby("depth", sort=True):
        steps = []
        for _, row in rows.sort_values("epochs").iterrows():
            if row["epochs"] not in base.index:
                continue
            ref = base.loc[row["epochs"]]
            steps.append({"epochs": int(row["epochs"]),
                          "verdict": ci_verdict(ref, row, "test_acc", True),
                          "test_acc_mean": row["test_acc_mean"], "test_acc_min": row["test_acc_min"],
                          "test_acc_max": row["test_acc_max"],
                          "baseline_depth_test_acc_mean": ref["test_acc_mean"]})
        out.append({"depth": int(depth), "steps": steps})
    return out


# --------------------------------------------------------------------------- code


def _source(obj: Any) -> str:
    return inspect.getsource(obj).rstrip()


def code_table(measure: Callable = timing.measure) -> pd.DataFrame:
    """For each report section, the lesson's code and the mlpbench source that ran instead.

    Columns: section, side (``lesson`` or ``mlpbench``), title, source. mlpbench's side is read
    with :func:`inspect.getsource` from the functions the pipeline runs; the statements the
    matmul stage timed are recorded with every timing (the ``method`` column of the matmul
    table) and are shown from there.
    """
    from mlpbench import ensemble

    mine: dict[str, list[tuple[str, Any]]] = {
        "matmul": [("mlpbench.timing.measure: every backend, one timer", measure)],
        "training": [("mlpbench.models.LessonNet: the lesson's MyNeuralNet", LessonNet),
                     ("mlpbench.training.lesson_loop: the lesson's loop", training.lesson_loop),
                     ("mlpbench.ensemble.train_ensemble: all seeds at once, each member equal "
                      "to the loop", ensemble.train_ensemble)],
        "ops": [("mlpbench.lesson.slide_loss: the slide's loss, one node per operation",
                 slide_loss),
                ("mlpbench.lesson.chain_to: the chain from the loss back to W_0", chain_to)],
        "autograd": [("mlpbench.lesson.autograd_example", autograd_example)],
        "parameters": [("mlpbench.lesson.learned_network: the representative seed, retrained",
                        learned_network),
                       ("mlpbench.lesson.parameters_table", parameters_table)],
        "testing": [("mlpbench.lesson.predicted_test_points", predicted_test_points)],
        "epoch_time": [("mlpbench.training._time_loop: the lesson's loop, timed for one seed",
                        training._time_loop),
                       ("mlpbench.training._train_shape: the ensemble of a shape, timed",
                        training._train_shape)],
    }
    rows = []
    for section, items in mine.items():
        if section in LESSON_CODE:
            rows.append({"section": section, "side": "lesson", "title": "the lesson's code",
                         "source": LESSON_CODE[section]})
        rows += [{"section": section, "side": "mlpbench", "title": title, "source": _source(obj)}
                 for title, obj in items]
    return pd.DataFrame(rows, columns=["section", "side", "title", "source"])


# --------------------------------------------------------------------------- findings


RULES = {
    "op_count_formula": "count the autograd nodes on the chain from the loss back to W_0 for "
                        "each depth and compare with 2L + 4 operations and 2L + 4 "
                        "multiplications; matches when every depth agrees",
    "training_graph_formula": "count the nodes on the chain from the CrossEntropyLoss the "
                              "pipeline trains back to W_0 (layout steps left out) for each "
                              "depth and compare with 2L + 6; matches when every depth agrees",
    "autograd_example": "x = [2, -1], f = x.pow(2).sum(), f.backward(): x.grad must equal the "
                        "slide's [4, -2] exactly",
    "test_points": "arg-max class of the representative seed's logits on each test point against "
                   "its label; all_correct or not_all_correct (the same rule applied to the "
                   "lesson's printed classes gives lesson_verdict)",
    "depth_given_time": "test accuracy of each deeper network against the baseline depth at the "
                        "same epoch count (better or worse when the 95% intervals of the means "
                        "do not overlap); helps: better at the longest epoch count, value = the "
                        "smallest count from which it is better at every longer one; hurts: "
                        "worse at the longest; else within_seed_noise (or too_few_seeds)",
    "first_layer_gradient_depth": "mean over seeds of the first layer's weight-gradient norm at "
                                  "initialisation, baseline width and lr, at each depth: "
                                  "shrinks when it falls with every added layer, smaller when "
                                  "only the deepest is below the shallowest, else not_smaller",
}


def _finding(finding: str, subject: str, verdict: str, evidence: Mapping[str, Any], *,
             dataset: str | None = None, device: str | None = None, value: float = math.nan,
             reference_value: float = math.nan, unit: str | None = None) -> dict[str, Any]:
    from mlpbench.findings import plain  # JSON-safe values, as every other finding

    return {"finding": finding, "section": "lesson", "dataset": dataset, "device": device,
            "subject": subject, "verdict": verdict, "value": float(value),
            "reference_value": float(reference_value), "unit": unit, "rule": RULES[finding],
            "evidence": json.dumps(plain(dict(evidence)), sort_keys=True, allow_nan=False)}


def first_layer_gradients(gradnorms: pd.DataFrame, baseline: Mapping[str, Any]) -> pd.Series:
    """Mean first-layer weight-gradient norm at initialisation per depth (index), for the
    baseline's width and lr, from a training job's ``gradnorms`` table."""
    g = gradnorms[(gradnorms["stage"] == "init") & (gradnorms["layer"] == 0)
                  & np.isclose(gradnorms["width"].astype(float), float(baseline["width"]))
                  & np.isclose(gradnorms["lr"].astype(float), float(baseline["lr"]))]
    return g.groupby("depth")["grad_norm"].mean().sort_index()


def depth_given_time_findings(table: pd.DataFrame, base_depth: int) -> list[dict[str, Any]]:
    """One ``depth_given_time`` finding per depth other than ``base_depth`` in a
    :func:`depth_epochs_table`."""
    rows = []
    for item in _depth_verdicts(table, base_depth):
        steps = item["steps"]
        if not steps:
            continue
        verdicts = [s["verdict"] for s in steps]
        last = verdicts[-1]
        value = float(steps[-1]["epochs"])
        if last == "better":
            first = len(verdicts)
            while first > 0 and verdicts[first - 1] == "better":
                first -= 1
            verdict, value = "helps", float(steps[first]["epochs"])
        else:
            verdict = {"worse": "hurts"}.get(last, last)
        rows.append(_finding(
            "depth_given_time", f"{item['depth']} vs {base_depth} hidden layers", verdict,
            {"depth": item["depth"], "base_depth": base_depth, "steps": steps},
            dataset="toy", value=value, reference_value=float(steps[-1]["epochs"]),
            unit="epochs"))
    return rows


def lesson_findings(ops: pd.DataFrame, autograd: pd.DataFrame,
                    test_points: pd.DataFrame | None = None,
                    first_layer: pd.Series | None = None,
                    depth_epochs: pd.DataFrame | None = None,
                    base_depth: int = 1) -> pd.DataFrame:
    """The lesson section's conclusions as findings rows (columns of the findings table)."""
    rows = []
    ok = ((ops["operations_graph"] == ops["operations_formula"])
          & (ops["backward_steps_graph"] == ops["multiplications_formula"]))
    depths = ops["depth"].astype(int).tolist()
    evidence = {"depths": depths, "operations_graph": ops["operations_graph"].tolist(),
                "backward_steps_graph": ops["backward_steps_graph"].tolist(),
                "formula": ops["operations_formula"].tolist()}
    one = ops[ops["depth"] == 1]
    if len(one):
        evidence["slide_one_hidden"] = {"operations": SLIDE_OPERATIONS_ONE_HIDDEN,
                                        "multiplications": SLIDE_MULTIPLICATIONS_ONE_HIDDEN}
        ok &= ~(ops["depth"] == 1) | ((ops["operations_graph"] == SLIDE_OPERATIONS_ONE_HIDDEN)
                                      & (ops["backward_steps_graph"]
                                         == SLIDE_MULTIPLICATIONS_ONE_HIDDEN))
    rows.append(_finding("op_count_formula", f"depths {min(depths)}–{max(depths)}",
                         "matches" if ok.all() else "differs", evidence,
                         value=int(ok.sum()), reference_value=len(ops), unit="depths"))
    t_ok = ops["training_nodes_graph"] == ops["training_nodes_formula"]
    rows.append(_finding("training_graph_formula", f"depths {min(depths)}–{max(depths)}",
                         "matches" if t_ok.all() else "differs",
                         {"depths": depths, "nodes_graph": ops["training_nodes_graph"].tolist(),
                          "formula": ops["training_nodes_formula"].tolist()},
                         value=int(t_ok.sum()), reference_value=len(ops), unit="depths"))
    a_ok = bool(autograd["matches"].all())
    rows.append(_finding("autograd_example", "x.grad of f = x.pow(2).sum() at x = [2, -1]",
                         "matches" if a_ok else "mismatch",
                         {"x": autograd["x"].tolist(), "grad": autograd["grad"].tolist(),
                          "expected": autograd["expected_grad"].tolist()},
                         value=int(autograd["matches"].sum()), reference_value=len(autograd),
                         unit="components"))
    if test_points is not None and len(test_points):
        tp = test_points
        n_right = int(tp["correct"].sum())
        lesson = tp["lesson_pred"]
        lesson_right = (int((lesson == tp["label"]).sum()) if lesson.notna().all() else None)
        rows.append(_finding(
            "test_points", f"seed {int(tp['seed'].iloc[0])} on the {len(tp)} test points",
            "all_correct" if n_right == len(tp) else "not_all_correct",
            {"pred": tp["pred"].tolist(), "label": tp["label"].tolist(),
             "lesson_pred": None if lesson_right is None else lesson.astype(int).tolist(),
             "lesson_correct": lesson_right,
             "lesson_verdict": None if lesson_right is None else
             ("all_correct" if lesson_right == len(tp) else "not_all_correct"),
             "share_seeds_correct": tp["share_seeds_correct"].tolist(),
             "n_seeds": int(tp["n_seeds"].max())},
            dataset=str(tp["dataset"].iloc[0]), device=str(tp["device"].iloc[0]),
            value=n_right, reference_value=len(tp), unit="points"))
    if first_layer is not None and len(first_layer) >= 2:
        values = first_layer.to_numpy(dtype=float)
        verdict = ("shrinks" if np.all(np.diff(values) < 0) else
                   "smaller" if values[-1] < values[0] else "not_smaller")
        rows.append(_finding(
            "first_layer_gradient_depth",
            f"first-layer gradient at initialisation, depth {int(first_layer.index[0])} to "
            f"{int(first_layer.index[-1])}", verdict,
            {"depths": [int(d) for d in first_layer.index], "grad_norm_mean": values.tolist()},
            value=values[-1], reference_value=values[0], unit="1"))
    if depth_epochs is not None and len(depth_epochs):
        rows += depth_given_time_findings(depth_epochs, base_depth)
    return pd.DataFrame(rows)
