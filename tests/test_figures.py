"""Every figure renders from small synthetic tables, with and without CUDA, and reads cleanly."""

from __future__ import annotations

import itertools

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import pandas as pd
import pytest
from matplotlib.text import Text

from mlpbench import contract
from mlpbench.figures import FIGURES, make_figure, make_figures, save_png
from mlpbench.tables import build_tables, load_tables, write_tables
from synthetic_results import load_points, write_inputs

SCENARIOS = ("cpu_only", "with_cuda", "nothing_available")


@pytest.fixture(scope="module")
def tables_dirs(tmp_path_factory):
    """tables/ for: CUDA unavailable; CUDA available; only unavailable CUDA inputs at all."""
    out = {}
    for scenario in SCENARIOS:
        root = tmp_path_factory.mktemp(scenario)
        inputs = write_inputs(root, cuda=scenario == "with_cuda")
        mm, train = inputs.matmul_files, inputs.train_dirs
        if scenario == "nothing_available":
            mm = [p for p in mm if p.stem == "cuda"]
            train = [d for d in train if d.name == "cuda"]
        tables = build_tables(mm, train, inputs.machine_files, train_cfg=inputs.train_cfg,
                              points_loader=load_points)
        write_tables(tables, root / "tables")
        out[scenario] = root / "tables"
    return out


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(match=lambda a: hasattr(a, "get_text"))
            if t.get_visible() and t.get_text()]


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_every_figure_renders_a_png(tables_dirs, tmp_path, name, scenario):
    out = make_figure(name, tables_dirs[scenario], tmp_path / f"{name}.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = mpimg.imread(out).shape[:2]
    # Sized for an HTML page: wide enough to read, not a poster.
    assert 700 <= width <= 1500, width
    assert 300 <= height <= 1400, height


@pytest.mark.parametrize("name", ["matmul_time", "matmul_roofline", "lesson_comparison",
                                  "epoch_time"])
def test_cuda_unavailable_is_stated_on_the_figure(tables_dirs, name):
    fig = FIGURES[name](load_tables(tables_dirs["cpu_only"]))
    try:
        assert any("CUDA unavailable" in t for t in _texts(fig))
    finally:
        plt.close(fig)


def test_cuda_figures_show_both_devices_when_available(tables_dirs):
    fig = FIGURES["epoch_time"](load_tables(tables_dirs["with_cuda"]))
    try:
        texts = _texts(fig)
        assert "CPU" in texts and "CUDA" in texts  # legend entries
        assert not any("unavailable" in t for t in texts)
    finally:
        plt.close(fig)


@pytest.mark.parametrize("name", ["loss_curves", "test_accuracy", "decision_regions",
                                  "grad_norms"])
def test_figures_without_data_say_so(tables_dirs, name):
    fig = FIGURES[name](load_tables(tables_dirs["nothing_available"]))
    try:
        assert any(t.startswith("No ") for t in _texts(fig))
    finally:
        plt.close(fig)


@pytest.mark.parametrize("scenario", ["with_cuda", "cpu_only"])
@pytest.mark.parametrize("name", sorted(FIGURES))
def test_no_text_overlaps_other_text(tables_dirs, monkeypatch, name, scenario):
    fig = FIGURES[name](load_tables(tables_dirs[scenario]))
    drawn = []
    original = Text.draw

    def record(self, renderer):  # only texts that are really drawn (not off-view tick labels)
        original(self, renderer)
        if self.get_visible() and self.get_text().strip():
            drawn.append((self.get_text(), self.get_window_extent(renderer)))

    monkeypatch.setattr(Text, "draw", record)
    try:
        fig.canvas.draw()
    finally:
        plt.close(fig)
    boxes = [(text, box.shrunk(0.9, 0.8)) for text, box in drawn]
    clashes = [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]
    assert not clashes, clashes[:5]


def test_unknown_figure_name_is_refused(tables_dirs, tmp_path):
    with pytest.raises(KeyError, match="unknown figure"):
        make_figure("pie_chart", tables_dirs["cpu_only"], tmp_path / "x.png")


def test_make_figures_draws_each_file_as_make_figure_does(tables_dirs, tmp_path):
    tables_dir = tables_dirs["with_cuda"]
    outs = [tmp_path / "all" / f"{name}.png" for name in FIGURES]
    (tmp_path / "all").mkdir()
    assert list(make_figures(tables_dir, outs)) == outs
    for name in ("matmul_time", "decision_regions"):  # one figure drawn alone: the same bytes
        one = make_figure(name, tables_dir, tmp_path / f"{name}.png")
        assert (tmp_path / "all" / f"{name}.png").read_bytes() == one.read_bytes()


def test_make_figures_in_two_processes_draws_the_same_bytes(tables_dirs, tmp_path):
    tables_dir = tables_dirs["cpu_only"]
    for workers in (1, 2):
        (tmp_path / str(workers)).mkdir()
        outs = [tmp_path / str(workers) / f"{name}.png" for name in FIGURES]
        assert list(make_figures(tables_dir, outs, workers=workers)) == outs
    for name in FIGURES:
        assert ((tmp_path / "1" / f"{name}.png").read_bytes()
                == (tmp_path / "2" / f"{name}.png").read_bytes()), name


def test_make_figures_refuses_an_unknown_stem_before_drawing_any(tables_dirs, tmp_path):
    outs = [tmp_path / "matmul_time.png", tmp_path / "pie_chart.png"]
    with pytest.raises(KeyError, match="unknown figure 'pie_chart'"):
        list(make_figures(tables_dirs["cpu_only"], outs))
    assert not list(tmp_path.iterdir())


def test_make_figures_names_a_damaged_table(tables_dirs, tmp_path):
    damaged = tmp_path / "tables"
    damaged.mkdir()
    for f in tables_dirs["cpu_only"].iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / "loss_curves.parquet").write_bytes(b"PAR1 not really")
    outs = [tmp_path / "matmul_time.png", tmp_path / "loss_curves.png"]
    for workers in (1, 2):  # a worker's error reaches the caller
        with pytest.raises(contract.ContractError, match="loss_curves.parquet"):
            list(make_figures(damaged, outs, workers=workers))
        assert not [p for p in outs if p.exists()]


def _with_lr_sweep(tables: dict) -> dict:
    """The toy baseline again at lr 10 (trained) and lr 100 (every seed diverged)."""
    summary, curves = tables["train_summary"], tables["loss_curves"]
    base = summary[(summary["dataset"] == "toy") & (summary["variant"] == "baseline")].iloc[0]
    ok = base.copy()
    ok["lr"], ok["variant"] = 10.0, "lr"
    lost = ok.copy()
    lost["lr"], lost["status"], lost["n_ok"] = 100.0, "diverged", 0
    lost["n_diverged"], lost["share_diverged"] = lost["n_seeds"], 1.0
    curve = curves[(curves["dataset"] == "toy") & (curves["device"] == base["device"])
                   & (curves["width"] == base["width"]) & (curves["depth"] == base["depth"])
                   & (curves["lr"] == base["lr"])].copy()
    curve["lr"] = 10.0
    curve[["loss_mean", "loss_min", "loss_max"]] *= 1e6  # a learning rate that blows up
    return {**tables, "train_summary": pd.concat([summary, pd.DataFrame([ok, lost])],
                                                 ignore_index=True),
            "loss_curves": pd.concat([curves, curve], ignore_index=True)}


def test_a_learning_rate_sweep_gets_its_panel_and_names_diverged_settings(tables_dirs, tmp_path):
    tables = _with_lr_sweep(load_tables(tables_dirs["cpu_only"]))
    fig = FIGURES["loss_curves"](tables)
    try:
        texts = _texts(fig)
        assert "toy: learning rate [cpu]" in texts
        assert "lr 100: diverged" in texts  # the legend marks it
        assert any(t.startswith("every seed diverged at lr 100") for t in texts)
        assert "lr 10" in texts  # the setting that trained is drawn
        width = fig.get_size_inches()[0] * fig.dpi
        save_png(fig, tmp_path / "lr.png")
        assert mpimg.imread(tmp_path / "lr.png").shape[1] <= 1500, width
    finally:
        plt.close(fig)
    # Without an lr sweep there is no lr column.
    fig = FIGURES["loss_curves"](load_tables(tables_dirs["cpu_only"]))
    try:
        assert not any("learning rate" in t for t in _texts(fig))
    finally:
        plt.close(fig)


def test_a_diverged_cell_of_the_accuracy_grid_says_so(tables_dirs):
    tables = load_tables(tables_dirs["cpu_only"])
    s = tables["train_summary"].copy()
    toy = s[(s["dataset"] == "toy") & (s["variant"] == "width")].index[0]
    s.loc[toy, ["status", "test_acc_mean", "test_acc_std"]] = ["diverged", float("nan"),
                                                               float("nan")]
    fig = FIGURES["test_accuracy"]({**tables, "train_summary": s})
    try:
        assert "every seed\ndiverged" in _texts(fig)
    finally:
        plt.close(fig)


def test_the_roofline_draws_when_every_copy_was_flagged_noisy(tables_dirs, tmp_path):
    """On a busy machine the guard can flag every copy: no memory roof, so no product has a
    share of it; the figure says so instead of failing on an empty log axis."""
    tables = load_tables(tables_dirs["cpu_only"])
    mm = tables["matmul"]
    copy = mm["kind"] == "copy"
    mm.loc[copy, "noisy"] = True
    mm.loc[copy, "noise_reason"] = "disturbed"
    for col in ("bandwidth_gb_s", "bandwidth_share", "ridge_flop_per_byte"):
        mm[col] = float("nan")
    fig = FIGURES["matmul_roofline"]({**tables, "matmul": mm})
    try:
        save_png(fig, tmp_path / "roofline.png")
        assert any("No memory roof: every copy was flagged noisy" in t for t in _texts(fig))
    finally:
        plt.close(fig)
