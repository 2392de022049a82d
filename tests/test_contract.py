"""The results contract: every table written with its declared schema and checked on read."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mlpbench import contract, matmul, tables, training
from mlpbench.contract import MATMUL, MATMUL_ENVIRONMENT, SUMMARY, TRAIN, ContractError
from mlpbench.environment import environment_rows, snapshot
from synthetic_results import CUDA_REASON, load_points, write_inputs

TINY_MATMUL = dict(dtypes=["float32", "float64"],
                   shapes=[("lesson", 1, 16, 8), ("square", 8, 8, 8)],
                   threads=1, min_run_time_s=0.001, bandwidth_mib=1)
TINY_TRAIN = {
    "mode": "sweep",
    "baseline": {"epochs": 4, "width": 4, "depth": 1, "lr": 0.05},
    "epochs": [2, 4], "width": [4], "depth": [1, 2], "lr": [0.05], "seeds": 2,
}
GRID = {"resolution": 3, "margin": 1.0}


@pytest.fixture(scope="module")
def stage_outputs(tmp_path_factory):
    """Real stage tables, written as the pipeline writes them: CPU and CUDA-unavailable."""
    root = tmp_path_factory.mktemp("results")
    mp = pytest.MonkeyPatch()
    written: dict[str, dict[str, tuple]] = {"matmul": {}, "train": {}}
    try:
        cpu = matmul.run_matmul_stage("cpu", **TINY_MATMUL)
        mp.setattr(torch.cuda, "is_available", lambda: False)
        cuda = matmul.run_matmul_stage("cuda", **TINY_MATMUL)
        for device, df in (("cpu", cpu), ("cuda", cuda)):
            path = root / "matmul" / f"{device}.parquet"
            contract.write(df, path, MATMUL)
            written["matmul"][device] = (df, path)
            now = snapshot(cuda_device=0 if device == "cuda" else None)
            env = pd.DataFrame(environment_rows(now, now, host="h", stage="matmul",
                                                device=device, threads=1))
            contract.write(env, contract.matmul_environment_file(path), MATMUL_ENVIRONMENT)
        for device in ("cpu", "cuda"):
            job = training.run_training_job("toy", TINY_TRAIN, device, 1, GRID)
            for name, df in job.items():
                path = root / "train" / "toy" / device / f"{name}.parquet"
                contract.write(df, path, TRAIN[name])
                written["train"][(device, name)] = (df, path)
    finally:
        mp.undo()
    return written


# --------------------------------------------------------------------------- declarations


def test_names_come_from_the_contract():
    assert tables.TABLE_NAMES == contract.SUMMARY_TABLES
    assert contract.TRAIN_TABLES == ("losses", "metrics", "predictions", "timings",
                                     "environment", "gradnorms", "decision")
    assert training.COLUMNS == {name: TRAIN[name].column_names for name in contract.TRAIN_TABLES}
    assert matmul.COLUMNS == MATMUL.column_names
    assert SUMMARY["matmul"].column_names[: len(MATMUL.columns)] == MATMUL.column_names
    from mlpbench.figures import FIGURES

    assert list(FIGURES) == list(contract.FIGURES)


def test_every_column_is_described_in_snake_case_and_unique():
    for table in contract.all_tables().values():
        names = table.column_names
        assert len(set(names)) == len(names), table.path
        for column in table.columns:
            assert re.fullmatch(r"[a-z][a-z0-9_]*", column.name), (table.path, column.name)
            assert column.description.strip(), (table.path, column.name)
        assert contract.describe(table).count("\n| `") == len(names) + (table.pattern is not None)


def test_findings_schema_is_as_specified():
    f = SUMMARY["findings"]
    declared = {c.name: (c.type, c.nullable) for c in f.columns}
    s, n = pa.string(), pa.float64()
    assert declared == {
        "finding": (s, False), "section": (s, False), "dataset": (s, True), "device": (s, True),
        "subject": (s, False), "verdict": (s, False), "value": (n, True),
        "reference_value": (n, True), "unit": (s, True), "rule": (s, False),
        "evidence": (s, False),
    }


def test_importing_the_contract_needs_neither_pandas_nor_torch_nor_matplotlib():
    code = ("import sys, mlpbench.contract; "
            "print([m for m in ('pandas', 'torch', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- round trips


def test_stage_tables_round_trip_through_their_schema(stage_outputs):
    for kind in ("matmul", "train"):
        for key, (df, path) in stage_outputs[kind].items():
            table = MATMUL if kind == "matmul" else TRAIN[key[1]]
            stored = pq.read_schema(path)
            n_logits = sum(1 for c in df.columns if c.startswith("logit_"))
            assert stored.remove_metadata().equals(
                table.schema(table.pattern_columns(n_logits)).remove_metadata()), path
            back = contract.read(path, table).to_pandas()
            pd.testing.assert_frame_equal(back, df, check_dtype=False, obj=str(path))


def test_empty_stage_tables_have_the_schema_of_full_ones(stage_outputs):
    for name in ("losses", "predictions", "gradnorms", "decision"):
        full_df, full = stage_outputs["train"][("cpu", name)]
        empty_df, empty = stage_outputs["train"][("cuda", name)]
        assert len(full_df) and not len(empty_df)
        assert pq.read_schema(empty).equals(pq.read_schema(full), check_metadata=False), name


@pytest.mark.parametrize("kind", ["matmul", *contract.TRAIN_TABLES])
def test_cuda_unavailable_and_cpu_tables_concatenate(stage_outputs, kind):
    if kind == "matmul":
        paths = [stage_outputs["matmul"][d][1] for d in ("cuda", "cpu")]
    else:
        paths = [stage_outputs["train"][(d, kind)][1] for d in ("cuda", "cpu")]
    both = pd.read_parquet(paths)
    singles = [pd.read_parquet(p) for p in paths]
    assert len(both) == sum(len(s) for s in singles)
    assert list(both.columns) == list(singles[1].columns)


def test_unavailable_rows_are_read_not_dropped(stage_outputs):
    dirs = sorted({path.parent for _, path in stage_outputs["train"].values()})
    mm = [stage_outputs["matmul"][d][1] for d in ("cpu", "cuda")]
    built = tables.build_tables(mm, dirs, [])
    assert set(built["epoch_time"]["device"]) == {"cpu", "cuda"}
    cuda = built["train_summary"][built["train_summary"]["device"] == "cuda"]
    assert len(cuda) and (cuda["status"] == "unavailable").all()
    assert (built["matmul"]["device"] == "cuda").any()


def _summary_round_trip(built, out):
    tables.write_tables(built, out)
    back = tables.load_tables(out)
    assert set(back) == set(built)
    for name, df in built.items():
        table = SUMMARY[name]
        assert pq.read_schema(out / f"{name}.parquet").equals(table.schema(), check_metadata=False)
        pd.testing.assert_frame_equal(back[name].reset_index(drop=True),
                                      df.reset_index(drop=True), check_dtype=False, obj=name)


def test_summary_tables_round_trip_full_and_empty(tmp_path):
    inputs = write_inputs(tmp_path / "in", cuda=False)
    full = tables.build_tables(inputs.matmul_files, inputs.train_dirs, inputs.machine_files,
                               train_cfg=inputs.train_cfg, points_loader=load_points)
    # One machine: the machine comparison's tables are empty (tests/test_compare.py fills them).
    from mlpbench.compare import COMPARE_TABLES

    assert all(len(df) for name, df in full.items() if name not in COMPARE_TABLES)
    assert all(len(full[name]) == 0 for name in COMPARE_TABLES)
    _summary_round_trip(full, tmp_path / "full")
    empty = tables.build_tables([], [], [])
    # The lesson's own numbers are data, and the findings say what is missing.
    assert all(len(df) == 0 for name, df in empty.items()
               if name not in ("lesson_reference", "findings"))
    _summary_round_trip(empty, tmp_path / "empty")
    for name in empty:
        assert pq.read_schema(tmp_path / "empty" / f"{name}.parquet").equals(
            pq.read_schema(tmp_path / "full" / f"{name}.parquet"), check_metadata=False), name


def _findings() -> pd.DataFrame:
    return pd.DataFrame([
        {"finding": "axis_effect", "section": "training", "dataset": "toy", "device": "cpu",
         "subject": "width 64 vs baseline", "verdict": "better", "value": 0.93,
         "reference_value": 0.71, "unit": "test accuracy", "rule": "95 % intervals apart",
         "evidence": json.dumps({"n_seeds": 16})},
        {"finding": "gpu_speedup", "section": "matmul", "dataset": None, "device": None,
         "subject": "CUDA vs CPU", "verdict": "unavailable", "value": np.nan,
         "reference_value": None, "unit": None, "rule": "needs an ok CUDA row",
         "evidence": "{}"},
    ])


def test_findings_round_trip_with_nulls_and_empty(tmp_path):
    findings = _findings()
    _summary_round_trip({"findings": findings}, tmp_path / "full")
    back = tables.load_tables(tmp_path / "full")["findings"]
    assert back["dataset"].isna().tolist() == [False, True]
    assert np.isnan(back["value"].iloc[1])
    _summary_round_trip({"findings": findings.iloc[:0]}, tmp_path / "empty")


# --------------------------------------------------------------------------- writers refuse


@pytest.mark.parametrize("change, message", [
    (lambda df: df.drop(columns="verdict"), r"column 'verdict' missing \(expected string\)"),
    (lambda df: df.assign(extra=1), r"unexpected column 'extra'"),
    (lambda df: df.assign(value=["a", "b"]), r"column 'value' does not convert to double"),
    (lambda df: df.assign(rule=[None, "x"]), r"column 'rule' does not convert"),
])
def test_writer_refuses_a_frame_that_breaks_the_contract(tmp_path, change, message):
    with pytest.raises(ContractError, match=message):
        contract.write(change(_findings()), tmp_path / "f.parquet", SUMMARY["findings"])
    assert not list(tmp_path.iterdir())  # nothing written, not even a temp file


def test_writer_refuses_a_lossy_integer_and_a_gap_in_the_logits(tmp_path):
    losses = contract.empty_frame(TRAIN["losses"]).reindex([0]).assign(
        dataset="toy", device="cpu", width=4, depth=1, lr=0.1, seed=0, epoch=1.5, loss=0.3)
    with pytest.raises(ContractError, match="column 'epoch' does not convert to int64"):
        contract.write(losses, tmp_path / "losses.parquet", TRAIN["losses"])
    decision = contract.empty_frame(TRAIN["decision"], 3).drop(columns="logit_1")
    with pytest.raises(ContractError, match=r"pattern columns \['logit_0', 'logit_2'\]"):
        contract.write(decision, tmp_path / "decision.parquet", TRAIN["decision"])


# --------------------------------------------------------------------------- readers stop


@pytest.fixture
def synthetic(tmp_path):
    return write_inputs(tmp_path, cuda=False)


def _build(inputs):
    return tables.build_tables(inputs.matmul_files, inputs.train_dirs, inputs.machine_files,
                               train_cfg=inputs.train_cfg, points_loader=load_points)


def _one_line_error(inputs) -> str:
    with pytest.raises(ContractError) as info:
        _build(inputs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_train_file_with_a_missing_column_stops_the_aggregate(synthetic):
    path = synthetic.train_dirs[0] / "losses.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["loss"]), path)
    assert _one_line_error(synthetic) == (
        f"{path}: column 'loss' missing (expected double); "
        f"rerun: snakemake --cores 4 --forcerun {path}")


def test_a_truncated_train_file_stops_the_aggregate(synthetic):
    path = synthetic.train_dirs[0] / "metrics.parquet"
    path.write_bytes(path.read_bytes()[:100])
    message = _one_line_error(synthetic)
    assert message.startswith(f"{path}: not a readable parquet file (")
    assert message.endswith(f"; rerun: snakemake --cores 4 --forcerun {path}")


def test_a_wrong_type_names_expected_and_found(synthetic):
    path = synthetic.train_dirs[1] / "timings.parquet"  # toy, cuda: unavailable rows
    data = pq.read_table(path)
    data = data.set_column(data.schema.get_field_index("dataset"), "dataset",
                           pa.nulls(len(data), pa.null()))
    pq.write_table(data, path)
    assert _one_line_error(synthetic) == (
        f"{path}: column 'dataset': expected string, found null; "
        f"rerun: snakemake --cores 4 --forcerun {path}")


def test_a_missing_or_damaged_matmul_file_is_named(synthetic):
    path = synthetic.matmul_files[1]
    path.unlink()
    assert _one_line_error(synthetic) == (
        f"{path}: file not found; rerun: snakemake --cores 4 --forcerun {path}")
    pq.write_table(pa.table({"host": pa.array([], pa.string())}), path)
    assert _one_line_error(synthetic).startswith(f"{path}: column 'backend' missing")


def test_a_null_where_the_contract_allows_none_is_named(synthetic):
    path = synthetic.train_dirs[0] / "metrics.parquet"
    data = pq.read_table(path)
    status = pa.array([None] + data.column("status").to_pylist()[1:], pa.string())
    pq.write_table(data.set_column(data.schema.get_field_index("status"), "status", status), path)
    assert _one_line_error(synthetic) == (
        f"{path}: column 'status': expected no missing values, found 1; "
        f"rerun: snakemake --cores 4 --forcerun {path}")


def test_a_damaged_summary_table_is_named_on_load(tmp_path, synthetic):
    out = tmp_path / "tables"
    tables.write_tables(_build(synthetic), out)
    (out / "epoch_time.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ContractError, match=re.escape(
            f"{out / 'epoch_time.parquet'}: not a readable parquet file (")
            + r".*; rerun: snakemake --cores 4 --forcerun "
            + re.escape(str(out / "epoch_time.parquet")) + "$"):
        tables.load_tables(out)


def test_text_stored_as_large_string_is_the_same_text(synthetic):
    # pandas >= 3 writes its str columns as large_string.
    path = synthetic.train_dirs[0] / "timings.parquet"
    data = pq.read_table(path)
    i = data.schema.get_field_index("reason")
    pq.write_table(data.set_column(i, "reason", data.column(i).cast(pa.large_string())), path)
    epoch_time = _build(synthetic)["epoch_time"]
    assert set(epoch_time["reason"]) == {"", CUDA_REASON}


def test_a_gap_in_the_logit_columns_is_named(synthetic):
    path = synthetic.train_dirs[0] / "decision.parquet"  # toy: logit_0 .. logit_2
    pq.write_table(pq.read_table(path).drop_columns(["logit_1"]), path)
    assert _one_line_error(synthetic) == (
        f"{path}: pattern columns ['logit_0', 'logit_2'] are not logit_0 .. logit_1; "
        f"rerun: snakemake --cores 4 --forcerun {path}")
