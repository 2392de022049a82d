"""The report's sentences state the findings: a new axis or data set appears without edits."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from mlpbench.findings import findings_table
from mlpbench.narrative import Story
from test_findings import LESSON_REF, lesson_cpu, summary_row


def story(summary_rows: list[dict]) -> Story:
    tables = {"matmul": pd.DataFrame(lesson_cpu()), "lesson_reference": LESSON_REF,
              "train_summary": pd.DataFrame(summary_rows),
              "epoch_time": pd.DataFrame(columns=["dataset", "device", "width", "depth",
                                                  "method", "status", "threads"]),
              "data_points": pd.DataFrame(columns=["dataset", "split", "label"]),
              "machine": pd.DataFrame({"machine_id": ["laptop"],
                                       "record_json": [json.dumps({"host": "h"})]})}
    return Story({**tables, "findings": findings_table(tables)})


LR_SWEEP = [summary_row(lr=0.001), summary_row(lr=10, variant="lr", acc=(0.6, 0.55, 0.65)),
            summary_row(lr=100, variant="lr", n_ok=0), summary_row(lr=10000, variant="lr", n_ok=0)]


def test_a_learning_rate_sweep_and_its_diverged_settings_are_told():
    s = story(LR_SWEEP)
    assert s.axes_varied("toy") == ["lr"]
    text = s.axis_answer("toy", "lr")
    assert text.startswith("From learning rate 0.001 to 10,")
    assert "Every seed diverged at learning rate 100, 10000." in text
    table = s.axis_table("toy", "lr")
    assert list(table["lr"]) == ["0.001 (lesson)", "10", "100", "10000"]
    lost = table[table["lr"].isin(["100", "10000"])]
    assert set(lost["final training loss (cross-entropy), mean ± std"]) == {"every seed diverged"}
    assert set(lost["diverged"]) == {"100%"}


def test_a_new_dataset_gets_its_own_section():
    s = story([summary_row(), summary_row(dataset="moons"),
               summary_row(dataset="moons", width=8, variant="width", acc=(0.9, 0.85, 0.95))])
    assert s.datasets == ["toy", "moons"]
    parts = s.dataset_passages("moons")
    assert parts[0].startswith("### Moons")
    assert any(isinstance(p, str) and p.startswith("**More units.** From 4 to 8 units") and
               "a real improvement" in p for p in parts)
    assert "moons: the lesson's network" in s.glance()


@pytest.mark.parametrize("rows, expected", [
    ([summary_row(n_ok=0)], "every seed of the lesson's network diverged"),
    ([summary_row(device="cuda", n_seeds=0, status="unavailable")], "no training results"),
])
def test_a_dataset_without_a_result_says_why(rows, expected):
    assert f"toy: {expected}" in story(rows).glance()


def test_the_run_is_named():
    assert story(LR_SWEEP).machine_line().startswith("**Run:** `laptop`.")


def test_the_headline_names_a_lesson_case_of_another_size_as_the_run_s_own(tmp_path):
    from synthetic_results import write_results

    from mlpbench.tables import load_tables

    root = write_results(tmp_path, cuda=False, figures=False)
    tables = load_tables(root / "tables")
    assert Story(tables).glance().startswith("- The lesson's product x(1×6400)")
    mm = tables["matmul"]
    lesson = mm["case"] == "lesson"
    tables["matmul"] = mm.assign(k=mm["k"].where(~lesson, 640), n=mm["n"].where(~lesson, 500))
    tables["findings"] = findings_table({k: v for k, v in tables.items() if k != "findings"})
    assert Story(tables).glance().startswith(
        "- This run's lesson case (not the lesson's size) x(1×640) @ y(640×500)")


def test_warm_against_cold_lesson_timings_are_told():
    from test_findings import mm_row

    def with_matmul(rows):
        base = story([summary_row()])
        tables = {**base.t, "matmul": pd.DataFrame(rows)}
        return Story({**tables, "findings": findings_table(tables)})

    rows = lesson_cpu() + [mm_row("torch", "cpu", "float32", kind="matmul_cold", t=1.5e-4)]
    text = with_matmul(rows).cache_part()
    assert "torch CPU float32 100 µs warm, 150 µs cold" in text
    assert "For 1 of 1 of these the warm timing was faster beyond the spread of both" in text
    # without cold rows the report says nothing about it
    assert with_matmul(lesson_cpu()).cache_part() == ""


def test_copy_rates_that_disagree_are_named_beside_the_roof():
    from test_findings import mm_row

    copies = [mm_row(b, "cpu", "float32", case="bandwidth", kind="copy", m=1, k=1, n=1, t=1.0,
                     gb_s=gb) for b, gb in (("numpy", 12.0), ("torch", 24.0))]
    base = story([summary_row()])
    tables = {**base.t, "matmul": pd.DataFrame(lesson_cpu() + copies)}
    text = Story({**tables, "findings": findings_table(tables)}).size_answer()
    assert "The copies on CPU disagree: torch CPU float32 moved 24 GB/s, NumPy CPU float32 " \
           "only 12 GB/s (2.00×). The memory roof is the highest" in text
    assert "`np.copyto` copies on one thread" in text  # NumPy is the slow one here


def test_the_method_describes_cold_timings_apart_from_the_timer():
    from test_findings import mm_row

    warm = "Timer.blocked_autorange(min_run_time=0.05); stmt `np.matmul(x, y, out=z)`; 2 threads"
    cold = ("5 single calls, each timed alone; before each call, untimed: the caches emptied by "
            "writing a 600 MiB buffer (2 x the 300 MiB L3, sysfs) with numpy; stmt "
            "`np.matmul(x, y, out=z)`; 2 threads")
    rows = [{**r, "method": warm} for r in lesson_cpu()]
    rows.append(mm_row("numpy", "cpu", "float32", kind="matmul_cold", t=1.5e-4, method=cold))
    base = story([summary_row()])
    tables = {**base.t, "matmul": pd.DataFrame(rows)}
    text = Story({**tables, "findings": findings_table(tables)}).method_items()
    timer = next(line for line in text.split("\n") if "**Timer.**" in line)
    assert "before each call" not in timer and "single calls" not in timer
    assert ("**Cold timings.** The lesson's product was also timed cold (kind `matmul_cold`): "
            "5 single calls, each timed alone, and before each call, untimed, the caches emptied "
            "by writing a 600 MiB buffer (2 x the 300 MiB L3, sysfs), each backend with its "
            "own library.") in text


def test_without_a_memory_roof_no_share_is_judged_and_the_ridge_says_why():
    from test_findings import mm_row

    rows = [{**r, "bandwidth_gb_s": float("nan"), "bandwidth_share": float("nan")}
            for r in lesson_cpu()]
    rows.append(mm_row("torch", "cpu", "float32", case="square", m=64, k=64, n=64, t=1e-5,
                       bandwidth_gb_s=float("nan"), bandwidth_share=float("nan"),
                       compute_roof_gflop_s=52.4, compute_share=1.0,
                       ridge_flop_per_byte=float("nan")))
    base = story([summary_row()])
    tables = {**base.t, "matmul": pd.DataFrame(rows)}
    s = Story({**tables, "findings": findings_table(tables)})
    assert s.one("lesson_bandwidth_share") is None
    assert "n/a of the copy bandwidth" not in s.size_answer()
    assert s.ridge_paragraph().startswith("This run measured a compute roof but no memory roof")


def test_a_warm_gap_under_the_bar_is_not_called_within_the_spread():
    from test_findings import mm_row

    rows = lesson_cpu() + [mm_row("torch", "cpu", "float32", kind="matmul_cold", t=1.05e-4)]
    base = story([summary_row()])
    tables = {**base.t, "matmul": pd.DataFrame(rows)}
    text = Story({**tables, "findings": findings_table(tables)}).cache_part()
    assert "None passes the bar (warm faster beyond both spreads and by more than 10%)" in text
    assert "within each other's spread" not in text


def test_machines_left_out_of_the_epoch_comparison_are_named():
    from mlpbench.narrative import MachinePassages

    machines = pd.DataFrame({"machine_id": ["vm", "ref", "quick", "lesson"],
                             "origin": ["this run", "reference", "bundle", "lesson"],
                             "is_baseline": [True, False, False, False]})
    ev = {"method": "ensemble", "n_members": 16, "times_per_epoch_s": {"vm": 1e-4, "ref": 2e-4}}
    findings = pd.DataFrame([{"finding": "machine_epoch_fastest", "section": "machines",
                              "dataset": "toy", "device": "cpu", "evidence": json.dumps(ev)}])
    note = MachinePassages({"machines": machines, "findings": findings}).epoch_note()
    assert note.startswith("Left out of this table, because they timed no ensemble of the same "
                           "size (or none on that device): toy on CPU: `quick`.")
