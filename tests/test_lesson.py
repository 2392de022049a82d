"""The lesson's exercises and worked examples: operation counts, autograd, learned network."""

import inspect
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mlpbench import contract, data, lesson, training
from mlpbench.models import LessonNet
from mlpbench.training import run_training_job

DEPTHS = range(1, 7)


@pytest.fixture(scope="module")
def ops():
    return lesson.ops_table(DEPTHS)


# --------------------------------------------------------------------------- operation count


def test_the_slides_example_has_six_operations_and_six_multiplications(ops):
    one = ops[ops["depth"] == 1].iloc[0]
    assert one["operations_graph"] == 6 == lesson.operations_formula(1)
    assert one["backward_steps_graph"] == 6 == lesson.multiplications_formula(1)
    # W_0 x, a, W_1 z, softmax, log, -yᵀ: the slide's u_6 .. u_1, in that order.
    assert one["graph_chain"] == ("MvBackward0 → ReluBackward0 → MvBackward0 → SoftmaxBackward0 "
                                  "→ LogBackward0 → DotBackward0")


@pytest.mark.parametrize("depth", DEPTHS)
def test_operation_count_follows_2L_plus_4_on_the_graph(ops, depth):
    row = ops[ops["depth"] == depth].iloc[0]
    assert row["operations_graph"] == 2 * depth + 4 == row["operations_formula"]
    assert row["backward_steps_graph"] == 2 * depth + 4 == row["multiplications_formula"]
    names = row["graph_chain"].split(" → ")
    assert names.count("ReluBackward0") == depth and names.count("MvBackward0") == depth + 1
    assert row["training_nodes_graph"] == 2 * depth + 6 == row["training_nodes_formula"]
    assert row["training_backward_steps_graph"] == row["training_nodes_graph"]
    t_names = row["training_graph_chain"].split(" → ")
    assert t_names.count("AddmmBackward0") == depth + 1 and "TBackward0" not in t_names


def test_chain_to_walks_the_real_graph():
    w = torch.ones(3, requires_grad=True)
    other = torch.ones(3, requires_grad=True)
    loss = (torch.exp(w) * other).sum()
    names = [type(n).__name__ for n in lesson.chain_to(loss, w)]
    assert names == ["SumBackward0", "MulBackward0", "ExpBackward0"]
    with pytest.raises(lesson.LessonCheckError, match="found 2"):
        lesson.chain_to((w * w).sum(), w)  # two paths: no single chain
    with pytest.raises(lesson.LessonCheckError, match="found 0"):
        lesson.chain_to(other.sum(), w)


@pytest.mark.parametrize("bad", [0, -1, True, 1.5, "2"])
def test_formula_rejects_a_depth_that_is_not_a_positive_integer(bad):
    with pytest.raises(ValueError, match="depth: got"):
        lesson.operations_formula(bad)


def test_op_count_finding_notices_a_count_that_differs(ops):
    autograd = lesson.autograd_table()
    found = lesson.lesson_findings(ops, autograd).set_index("finding")
    assert found.loc["op_count_formula", "verdict"] == "matches"
    assert found.loc["training_graph_formula", "verdict"] == "matches"
    broken = ops.copy()
    broken.loc[broken["depth"] == 3, "operations_graph"] += 1
    found = lesson.lesson_findings(broken, autograd).set_index("finding")
    assert found.loc["op_count_formula", "verdict"] == "differs"
    assert found.loc["op_count_formula", "value"] == len(ops) - 1


# --------------------------------------------------------------------------- autograd


def test_autograd_example_gives_the_slides_gradient():
    table = lesson.autograd_table()
    assert table["x"].tolist() == [2.0, -1.0]
    assert table["grad"].tolist() == [4.0, -2.0]
    assert table["matches"].all()
    lesson.require_autograd(table)


def test_autograd_mismatch_fails():
    table = lesson.autograd_table(expected=(4.0, -3.0))
    assert table["matches"].tolist() == [True, False]
    with pytest.raises(lesson.LessonCheckError, match=r"x\[1\] = -1: grad -2, slide -3"):
        lesson.require_autograd(table)


# --------------------------------------------------------------------------- learned network

EXPERIMENT = {"mode": "sweep", "baseline": {"epochs": 300, "width": 4, "depth": 1, "lr": 0.01},
              "epochs": [300], "width": [4], "depth": [1], "lr": [0.01], "seeds": 5}


@pytest.fixture(scope="module")
def job():
    torch.set_num_threads(1)
    return run_training_job("toy", EXPERIMENT, "cpu", 1, {"resolution": 4, "margin": 1.0})


@pytest.fixture(scope="module")
def learned(job):
    return lesson.learned_network(job["metrics"], EXPERIMENT)


def _lessons_own_run(seed: int) -> nn.Module:
    """The slides' code, for one seed: MyNeuralNet, CrossEntropyLoss, SGD, the loop."""
    ds = data.toy()
    torch.manual_seed(seed)
    mynet = LessonNet()
    loss_func = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(mynet.parameters(), lr=EXPERIMENT["baseline"]["lr"])
    y_train = data.one_hot(ds.y_train, 3)
    for _ in range(EXPERIMENT["baseline"]["epochs"]):
        opt.zero_grad()
        loss_func(mynet(ds.x_train), y_train).backward()
        opt.step()
    return mynet


def test_representative_seed_is_the_one_closest_to_the_median(job, learned):
    _, pick = learned
    m = job["metrics"]
    dist = (m["test_acc"] - m["test_acc"].median()).abs()
    closest = m[np.isclose(dist, dist.min())].sort_values(["loss", "seed"])
    assert int(pick["seed"]) == int(closest["seed"].iloc[0])


def test_parameters_are_the_seeds_network_after_the_lessons_loop(learned):
    net, pick = learned
    table = lesson.parameters_table(net, pick)
    reference = _lessons_own_run(int(pick["seed"]))
    names = [n for n, _ in reference.named_parameters()]
    assert table.drop_duplicates("tensor")["tensor"].tolist() == names  # parameters() order
    assert len(table) == 4 * 2 + 4 + 3 * 4 + 3
    for name, par in reference.named_parameters():
        rows = table[table["tensor"] == name].sort_values(["row", "col"])
        np.testing.assert_array_equal(rows["value"].to_numpy(),
                                      par.detach().double().numpy().reshape(-1))
    assert (table["seed"] == pick["seed"]).all() and (table["epochs"] == 300).all()
    contract.to_arrow(table, contract.LESSON["parameters"])


def test_test_points_show_the_prediction_beside_the_lessons(job, learned):
    net, pick = learned
    points = lesson.predicted_test_points(net, pick, job["predictions"], EXPERIMENT)
    reference = _lessons_own_run(int(pick["seed"]))
    with torch.no_grad():
        expected = reference(data.toy().x_test).argmax(1).numpy()
    assert points["pred"].tolist() == expected.tolist()
    assert points["label"].tolist() == [0, 1, 2]
    assert points["lesson_pred"].tolist() == [0, 2, 2]
    assert points["correct"].tolist() == (expected == [0, 1, 2]).tolist()
    preds = job["predictions"]
    for point, share in zip(points["point"], points["share_seeds_correct"]):
        p = preds[preds["point"] == point]
        assert share == pytest.approx((p["pred"] == p["label"]).mean())
    assert (points["n_seeds"] == 5).all()
    contract.to_arrow(points, contract.LESSON["test_points"])

    found = lesson.lesson_findings(lesson.ops_table([1]), lesson.autograd_table(), points)
    row = found.set_index("finding").loc["test_points"]
    assert row["verdict"] == ("all_correct" if points["correct"].all() else "not_all_correct")
    assert '"lesson_verdict": "not_all_correct"' in row["evidence"]  # [0 2 2] against [0 1 2]


def test_a_retrained_network_that_disagrees_with_the_training_job_is_refused(job, learned):
    net, pick = learned
    tampered = job["predictions"].copy()
    mine = (tampered["seed"] == pick["seed"]) & (tampered["point"] == 0)
    tampered.loc[mine, "pred"] = (tampered.loc[mine, "pred"] + 1) % 3
    with pytest.raises(lesson.LessonCheckError, match="training job recorded"):
        lesson.predicted_test_points(net, pick, tampered, EXPERIMENT)


def test_no_seed_trained_is_an_error_that_names_the_baseline(job):
    diverged = job["metrics"].assign(status="diverged")
    with pytest.raises(lesson.LessonCheckError, match="no seed of the baseline"):
        lesson.learned_network(diverged, EXPERIMENT)


# --------------------------------------------------------------------------- code and contract


def test_code_is_read_from_the_source_that_runs():
    code = lesson.code_table()
    mine = code[code["side"] == "mlpbench"]
    loop = mine[mine["title"].str.startswith("mlpbench.training.lesson_loop")]
    assert loop["source"].iloc[0] == inspect.getsource(training.lesson_loop).rstrip()
    for source in mine["source"]:
        assert any(source in Path(f).read_text()
                   for f in Path(lesson.__file__).parent.glob("*.py"))
    assert set(code.loc[code["side"] == "lesson", "section"]) <= set(mine["section"])


def test_every_lesson_table_matches_its_contract(ops):
    frames = {"ops": ops, "autograd": lesson.autograd_table(), "code": lesson.code_table(),
              "findings": lesson.lesson_findings(ops, lesson.autograd_table()),
              "parameters": contract.empty_frame(contract.LESSON["parameters"]),
              "test_points": contract.empty_frame(contract.LESSON["test_points"]),
              "depth_epochs": contract.empty_frame(contract.LESSON["depth_epochs"])}
    assert set(frames) == set(contract.LESSON)
    for name, frame in frames.items():
        assert contract.to_arrow(frame, contract.LESSON[name]).num_rows == len(frame)
    assert list(frames["findings"].columns) == contract.SUMMARY["findings"].column_names
    assert isinstance(frames["findings"], pd.DataFrame)


# --------------------------------------------------------------------------- the report's passages


def _story(findings: pd.DataFrame, mm: pd.DataFrame | None = None):
    from mlpbench.narrative import Story

    story = Story.__new__(Story)  # only the findings lookup is needed
    story.findings, story.mm = findings, mm
    return story


@pytest.fixture(scope="module")
def passages(job, learned, ops):
    from mlpbench.narrative import LessonPassages

    net, pick = learned
    points = lesson.predicted_test_points(net, pick, job["predictions"], EXPERIMENT)
    autograd = lesson.autograd_table()
    first = lesson.first_layer_gradients(job["gradnorms"], EXPERIMENT["baseline"])
    tables = {"ops": ops, "autograd": autograd, "parameters": lesson.parameters_table(net, pick),
              "test_points": points, "code": lesson.code_table()}
    return LessonPassages(_story(lesson.lesson_findings(ops, autograd, points, first)), tables)


def test_parameters_print_as_torch_prints_them(learned):
    from mlpbench.narrative import torch_print

    net, _ = learned
    for par in net.parameters():
        assert torch_print(par.detach().numpy()) == str(par)


def test_passages_state_the_findings(passages):
    text = " ".join(p for p in passages.ops_answer() if isinstance(p, str))
    assert "Graph and formula agree at every depth" in text
    assert "MvBackward0 → ReluBackward0 → MvBackward0" in text
    table = passages.ops_table()
    assert table["operations: 2L + 4 / graph"].tolist() == [f"{2 * d + 4} / {2 * d + 4}"
                                                             for d in DEPTHS]
    test = passages.test_points_answer()[0]
    assert "The lesson's run printed `[0 2 2]` for the labels `[0 1 2]`: 2 of 3 right, not all " \
           "points correctly classified." in test
    printed = passages.parameters_answer()[1]
    assert printed.count("Parameter containing:") == 4
    assert "input_to_hidden_layer.weight: weights from the input layer to the hidden layer" \
        in printed


def test_code_folds_hold_the_lessons_code_and_the_source_that_ran(passages):
    fold = passages.code("training")
    assert fold.startswith("<details>") and fold.endswith("</details>")
    assert lesson.LESSON_CODE["training"] in fold
    assert inspect.getsource(training.lesson_loop).rstrip() in fold
    assert inspect.getsource(LessonNet).rstrip() in fold


def test_passages_without_lesson_tables_say_so():
    from mlpbench.narrative import LessonPassages

    empty = LessonPassages(_story(pd.DataFrame(columns=contract.SUMMARY["findings"].column_names)),
                           {})
    for answer in (empty.ops_answer(), empty.autograd_answer(), empty.parameters_answer(),
                   empty.test_points_answer()):
        assert answer == [LessonPassages.MISSING]
    assert empty.code("training") == ""


# --------------------------------------------------------------------------- depth given time


def test_depth_epochs_grid_is_every_depth_at_every_epoch_count():
    exp = {"baseline": {"epochs": 1000, "width": 4, "depth": 1, "lr": 0.001},
           "epochs": [2000, 5000], "depth": [2, 6], "width": [4, 8], "lr": [0.001], "seeds": 16}
    grid = lesson.depth_epochs_experiment(exp)
    assert grid["mode"] == "grid" and grid["width"] == [4] and grid["lr"] == [0.001]
    assert grid["depth"] == [1, 2, 6] and grid["epochs"] == [1000, 2000, 5000]
    assert grid["seeds"] == 16


def _depth_rows(means: dict[tuple[int, int], tuple[float, float, float]]) -> pd.DataFrame:
    rows = [{"depth": d, "width": 4, "lr": 0.01, "epochs": e, "n_seeds": 8, "n_diverged": 0,
             "loss_mean": 0.5, "train_acc_mean": m, "test_acc_mean": m, "test_acc_ci95_low": lo,
             "test_acc_ci95_high": hi, "test_acc_min": lo, "test_acc_max": hi}
            for (d, e), (m, lo, hi) in means.items()]
    return pd.DataFrame(rows)


def test_depth_given_time_names_the_epoch_count_from_which_depth_helps():
    table = _depth_rows({
        (1, 100): (0.5, 0.45, 0.55), (1, 200): (0.6, 0.55, 0.65), (1, 400): (0.6, 0.55, 0.65),
        (2, 100): (0.3, 0.25, 0.35), (2, 200): (0.8, 0.75, 0.85), (2, 400): (0.9, 0.85, 0.95),
        (3, 100): (0.3, 0.25, 0.35), (3, 200): (0.3, 0.25, 0.35), (3, 400): (0.4, 0.35, 0.45),
        (4, 100): (0.3, 0.25, 0.35), (4, 200): (0.6, 0.5, 0.7), (4, 400): (0.62, 0.5, 0.7),
    })
    contract.to_arrow(table, contract.LESSON["depth_epochs"])
    found = {f["subject"]: f for f in lesson.depth_given_time_findings(table, 1)}
    assert found["2 vs 1 hidden layers"]["verdict"] == "helps"
    assert found["2 vs 1 hidden layers"]["value"] == 200
    assert found["3 vs 1 hidden layers"]["verdict"] == "hurts"
    assert found["4 vs 1 hidden layers"]["verdict"] == "within_seed_noise"


def test_depth_given_time_from_a_trained_grid():
    exp = {"baseline": {"epochs": 20, "width": 4, "depth": 1, "lr": 0.01},
           "epochs": [20, 60], "depth": [1, 2], "seeds": 3}
    grid = lesson.depth_epochs_experiment(exp)
    trained = run_training_job("toy", grid, "cpu", 1, {"resolution": 2, "margin": 0.0})
    table = lesson.depth_epochs_table(trained["metrics"], grid["baseline"])
    assert table[["depth", "epochs"]].values.tolist() == [[1, 20], [1, 60], [2, 20], [2, 60]]
    m = trained["metrics"]
    for _, row in table.iterrows():
        sel = m[(m["depth"] == row["depth"]) & (m["epochs"] == row["epochs"])]
        assert row["test_acc_mean"] == pytest.approx(sel["test_acc"].mean())
        assert row["n_seeds"] == 3
    contract.to_arrow(table, contract.LESSON["depth_epochs"])
    found = lesson.lesson_findings(lesson.ops_table([1]), lesson.autograd_table(),
                                   depth_epochs=table, base_depth=1)
    assert (found["finding"] == "depth_given_time").sum() == 1


def test_depth_given_time_passage_reads_the_findings():
    from mlpbench.narrative import LessonPassages

    table = _depth_rows({(1, 100): (0.5, 0.45, 0.55), (1, 200): (0.6, 0.55, 0.65),
                         (2, 100): (0.3, 0.25, 0.35), (2, 200): (0.8, 0.75, 0.85)})
    findings = pd.DataFrame(lesson.depth_given_time_findings(table, 1))
    text, shown, verdicts = LessonPassages(_story(findings), {"depth_epochs": table}) \
        .depth_epochs_answer()
    assert shown.columns.tolist() == ["hidden layers", "100 epochs", "200 epochs"]
    assert shown.iloc[1].tolist() == [2, "30% (25%–35%)", "80% (75%–85%)"]
    assert "With 2 hidden layers the network beats the one with 1 hidden layer from 200 epochs on." in verdicts
    off = LessonPassages(_story(findings.iloc[:0]),
                         {"depth_epochs": contract.empty_frame(contract.LESSON["depth_epochs"])})
    assert off.depth_epochs_answer() == [LessonPassages.DEPTH_EPOCHS_OFF]


def test_first_layer_gradient_against_depth_is_judged_from_the_gradnorms(ops):
    rows = [{"width": 4, "lr": 0.001, "depth": d, "seed": s, "stage": stage, "layer": layer,
             "grad_norm": (0.4 / 3 ** (d - 1) if layer == 0 else 0.3) * (1 + s / 10)}
            for d in (1, 2, 4) for s in range(3) for stage in ("init", "final")
            for layer in range(d + 1)]
    grads = pd.DataFrame(rows)
    first = lesson.first_layer_gradients(grads, {"width": 4, "lr": 0.001})
    assert first.index.tolist() == [1, 2, 4]
    assert first.loc[1] == pytest.approx(0.4 * 1.1)
    autograd = lesson.autograd_table()
    found = lesson.lesson_findings(ops, autograd, first_layer=first).set_index("finding")
    assert found.loc["first_layer_gradient_depth", "verdict"] == "shrinks"
    bumpy = first.copy()
    bumpy.loc[2] = bumpy.loc[1] * 2
    found = lesson.lesson_findings(ops, autograd, first_layer=bumpy).set_index("finding")
    assert found.loc["first_layer_gradient_depth", "verdict"] == "smaller"
