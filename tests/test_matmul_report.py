"""The report's matmul passages and figures: flagged rows shown as such, both roofs drawn."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

import synthetic_results as sr
from mlpbench import contract
from mlpbench.figures import fig_matmul_roofline
from mlpbench.matmul import with_roofs
from mlpbench.narrative import Story
from mlpbench.tables import build_tables


def _tables(root: Path, noisy: bool, cuda: bool = False) -> dict[str, pd.DataFrame]:
    inputs = sr.write_inputs(root, cuda=cuda)
    if noisy:  # NumPy float64's lesson product (the lesson's baseline) was disturbed
        cpu = contract.read(inputs.matmul_files[0], contract.MATMUL).to_pandas()
        sel = (cpu["backend"] == "numpy") & (cpu["case"] == "lesson") & (cpu["dtype"] == "float64")
        cpu.loc[sel, ["noisy", "cpu_wait_threads", "attempts"]] = [True, 0.62, 3]
        cpu.loc[sel, "noise_reason"] = "disturbed"
        contract.write(with_roofs(cpu), inputs.matmul_files[0], contract.MATMUL)
    return build_tables(inputs.matmul_files, inputs.train_dirs, inputs.machine_files,
                        train_cfg=inputs.train_cfg, points_loader=sr.load_points)


def test_a_quiet_run_mentions_no_flag(tmp_path):
    story = Story(_tables(tmp_path, noisy=False))
    assert "noisy" not in story.glance()
    assert "This run flagged none." in story.method_items()
    assert story.noisy_table().empty
    assert story.noisy_part() == ["No timing of this run was flagged as disturbed."]


def test_flagged_rows_are_named_shown_flagged_and_kept_out_of_the_headline(tmp_path):
    tables = _tables(tmp_path, noisy=True)
    story = Story(tables)
    glance = story.glance()
    assert "1 timing of" in glance and "*noisy*" in glance
    assert "NumPy CPU float64 lesson matmul" in glance and "0.62 threads waiting" in glance
    # the headline's speed-up needs NumPy float64, which is flagged: it is not given
    assert "the speed of the lesson's baseline" not in glance
    assert "no usable timing of the lesson's baseline" in glance
    lesson = story.lesson_table()
    assert lesson["time"].str.contains("noisy: not used").sum() == 1
    assert len(story.noisy_table()) == 1
    mm = tables["matmul"]
    assert mm.loc[mm["noisy"], "speedup_vs_numpy_float64"].isna().all()
    lesson_rows = mm[mm["case"] == "lesson"]  # their reference is the flagged row
    assert lesson_rows["speedup_vs_numpy_float64"].isna().all()
    assert mm.loc[mm["case"] == "square", "speedup_vs_numpy_float64"].notna().any()


def test_the_report_places_the_lesson_against_both_measured_roofs(tmp_path):
    story = Story(_tables(tmp_path, noisy=False))
    text = story.size_answer()
    assert "Both roofs of the figure are measured in this run" in text
    assert "ridge at 5.5 FLOP per byte" in text  # synthetic CPU: 66 GFLOP/s / 12 GB/s
    assert "memory bound" in story.gpu_answer()


def test_the_gpu_pitfalls_in_words(tmp_path):
    story = Story(_tables(tmp_path, noisy=False, cuda=True))
    text = story.gpu_answer()
    assert "Timed the lesson's way, without synchronisation and 100 calls" in text
    assert "pinned (page-locked) host memory" in text
    assert "`torch.backends.cuda.matmul.allow_tf32 = False` since torch 1.12" in text


def test_roofline_draws_both_roofs_and_the_flagged_rows(tmp_path):
    fig = fig_matmul_roofline(_tables(tmp_path, noisy=True))
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert any(label.startswith("CPU memory roof") for label in labels)
    assert any(label.startswith("CPU float32 compute roof: 66 GFLOP/s") for label in labels)
    assert any(label.startswith("noisy") for label in labels)
