"""The regression gate's verdicts, driven by small synthetic pytest-benchmark JSON files.

Nothing is measured here: ``gate.main`` takes a runner in place of pytest (it writes the
JSON a run would have written) and this machine's class, so each test states the machine,
the baseline and the run it judges.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# gate.py is a script beside the benchmark suite, not a module of the package.
_spec = importlib.util.spec_from_file_location("benchmark_gate", REPO / "tests/benchmarks/gate.py")
gate = sys.modules.setdefault("benchmark_gate", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(gate)

CPU = {"cpu_model": "AMD EPYC", "logical_cores": 2, "torch_version": "2.13.0+cpu", "gpu": "none"}
GPU = {"cpu_model": "Intel Xeon", "logical_cores": 16, "torch_version": "2.13.0+cu130",
       "gpu": "NVIDIA H200"}
NO_CUDA = "CUDA unavailable: torch.cuda.is_available() is False"
MATMUL = "tests/benchmarks/test_bench_matmul.py::test_matmul"
CPU_BENCHMARKS = {  # fullname -> (median s, device)
    f"{MATMUL}[numpy-cpu-gemm_1024]": (0.0215, "cpu"),
    f"{MATMUL}[torch-cpu-gemm_1024]": (0.0221, "cpu"),
    "tests/benchmarks/test_bench_training.py::test_lesson_loop_epochs": (0.048, None),
}
CUDA_BENCHMARKS = {
    f"{MATMUL}[torch-cuda-gemm_1024]": (0.0004, "cuda"),
    f"{MATMUL}[torch-cuda-gemv_lesson]": (0.0001, "cuda"),
}
RATIOS = ["toy 2-4-3", "blobs 2-32-4"]


def bench_json(machine: dict[str, Any], benchmarks: dict[str, tuple[float, str | None]],
               ratios: list[str] = RATIOS, not_run: dict[str, str] | None = None,
               scale: float = 1.0) -> dict[str, Any]:
    """A pytest-benchmark JSON as the suite writes it, with the fields the gate reads."""
    info = {**machine, "mlpbench_threads": 1,
            "gpu_reason": "" if machine["gpu"] != "none" else NO_CUDA}
    return {
        "machine_info": info,
        "benchmarks": [{"fullname": name, "stats": {"median": median * scale},
                        "extra_info": {"device": device} if device else {}}
                       for name, (median, device) in benchmarks.items()],
        "mlpbench_ratios": [{"case": case, "ratio": 20.0} for case in ratios],
        "mlpbench_not_run": not_run or {},
    }


class FakeRunner:
    """Stands in for pytest: writes ``result`` as the run's JSON and returns ``rc``."""

    def __init__(self, result: dict[str, Any] | None, rc: int = 0):
        self.result, self.rc, self.calls = result, rc, []

    def __call__(self, json_out: Path, extra: list[str]) -> int:
        self.calls.append(extra)
        if self.result is not None:
            json_out.write_text(json.dumps(self.result))
        return self.rc


@pytest.fixture(autouse=True)
def _plain_environment(monkeypatch):
    for var in (gate.BASELINE_ENV, gate.THRESHOLD_ENV, "MLPBENCH_BENCH_THREADS"):
        monkeypatch.delenv(var, raising=False)


def write(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data))
    return path


def run_gate(args: list[str], runner: FakeRunner, here: dict[str, Any]) -> int:
    return gate.main(args, runner=runner, here=here)


def test_full_run_within_threshold_passes_and_compares_medians(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS, scale=1.3))
    assert run_gate(["--baseline", str(baseline)], runner, CPU) == 0
    assert f"--benchmark-compare={baseline}" in runner.calls[0]
    assert "--benchmark-compare-fail=median:40%" in runner.calls[0]
    assert "gate: passed against" in capsys.readouterr().out


def test_median_above_threshold_fails(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS, scale=1.5))
    assert run_gate(["--baseline", str(baseline)], runner, CPU) == gate.FAILED
    out = capsys.readouterr().out
    assert "+50.0 %  REGRESSED" in out
    assert "gate: FAILED (3 regressed above +40 %)" in out


def test_baseline_entry_not_measured_fails_naming_it(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    gone = "tests/benchmarks/test_bench_training.py::test_lesson_loop_epochs"
    now = {k: v for k, v in CPU_BENCHMARKS.items() if k != gone}
    assert run_gate(["--baseline", str(baseline)], FakeRunner(bench_json(CPU, now)), CPU) == 1
    captured = capsys.readouterr()
    assert "1 baseline entry of" in captured.err
    assert f"{gone}: not in this run" in captured.err
    assert "gate: FAILED (1 baseline entries not measured)" in captured.out


def test_narrowed_run_fails_naming_what_was_deselected(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    kept = f"{MATMUL}[numpy-cpu-gemm_1024]"
    deselected = {name: "deselected (-k, -m or --deselect)"
                  for name in CPU_BENCHMARKS if name != kept}
    deselected["tests/benchmarks/test_ratios.py::test_ensemble_faster_than_loop[toy]"] = \
        "deselected (-k, -m or --deselect)"
    runner = FakeRunner(bench_json(CPU, {kept: CPU_BENCHMARKS[kept]}, ratios=[],
                                   not_run=deselected))
    assert run_gate(["--baseline", str(baseline), "--", "-k", "numpy"], runner, CPU) == 1
    assert runner.calls[0][-2:] == ["-k", "numpy"]
    err = capsys.readouterr().err
    assert "4 baseline entries" in err
    for name in deselected:
        if name in CPU_BENCHMARKS:
            assert f"{name}: deselected (-k, -m or --deselect)" in err
    for case in RATIOS:
        assert f"ratio check {case!r}" in err


def test_named_baseline_of_another_class_is_refused_before_running(tmp_path, capsys):
    """A GPU runner that lost its GPU: its own baseline no longer matches."""
    baseline = write(tmp_path / "gpu.json", bench_json(GPU, CPU_BENCHMARKS | CUDA_BENCHMARKS))
    lost = {**GPU, "gpu": "none"}
    runner = FakeRunner(bench_json(lost, CPU_BENCHMARKS))
    assert run_gate(["--baseline", str(baseline)], runner, lost) == gate.REFUSED
    assert runner.calls == []  # nothing ran
    err = capsys.readouterr().err
    assert "gate: REFUSED: the baseline" in err and "'gpu': 'NVIDIA H200'" in err
    assert "--allow-other-class" in err


def test_baseline_named_by_environment_is_refused_too(tmp_path, monkeypatch):
    baseline = write(tmp_path / "gpu.json", bench_json(GPU, CPU_BENCHMARKS))
    monkeypatch.setenv(gate.BASELINE_ENV, str(baseline))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS))
    assert run_gate([], runner, CPU) == gate.REFUSED
    assert runner.calls == []


def test_allowed_other_class_still_fails_on_cuda_entries_not_measured(tmp_path, capsys):
    baseline = write(tmp_path / "gpu.json", bench_json(GPU, CPU_BENCHMARKS | CUDA_BENCHMARKS))
    lost = {**GPU, "gpu": "none"}
    skipped = {name: f"skipped: {NO_CUDA}" for name in CUDA_BENCHMARKS}
    runner = FakeRunner(bench_json(lost, CPU_BENCHMARKS, not_run=skipped))
    code = run_gate(["--baseline", str(baseline), "--allow-other-class"], runner, lost)
    assert code == gate.FAILED
    assert not any(a.startswith("--benchmark-compare") for a in runner.calls[0])
    captured = capsys.readouterr()
    for name in CUDA_BENCHMARKS:
        assert f"{name}: skipped: {NO_CUDA}; the baseline was recorded with the GPU " \
               f"NVIDIA H200, this machine has none" in captured.err
    assert "with ratio checks only" in captured.out


def test_allowed_other_class_with_every_entry_measured_passes_on_ratios(tmp_path, capsys):
    baseline = write(tmp_path / "other.json", bench_json(GPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS, scale=3.0))  # times not compared
    assert run_gate(["--baseline", str(baseline), "--allow-other-class"], runner, CPU) == 0
    assert "gate: passed with ratio checks only" in capsys.readouterr().out


def test_force_compares_another_class_anyway(tmp_path):
    baseline = write(tmp_path / "other.json", bench_json(GPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS, scale=3.0))
    assert run_gate(["--baseline", str(baseline), "--force"], runner, CPU) == gate.FAILED
    assert any(a.startswith("--benchmark-compare=") for a in runner.calls[0])


def _ci_baseline() -> dict[str, Any]:
    return json.loads((REPO / gate.DEFAULT_BASELINE).read_text())


def test_default_ci_baseline_has_no_gpu_and_no_cuda_entries():
    """CI has no GPU, so its baseline can hold no CUDA entry that CI would have to measure."""
    data = _ci_baseline()
    assert data["machine_info"]["gpu"] == "none"
    devices = {b["fullname"]: b["extra_info"].get("device") for b in data["benchmarks"]}
    assert "cuda" not in devices.values()
    assert not any("cuda" in name for name in devices)


def _as_measured(data: dict[str, Any], **machine: Any) -> dict[str, Any]:
    return {**data, "machine_info": {**data["machine_info"], **machine},
            "mlpbench_not_run": {f"{MATMUL}[torch-cuda-gemm_1024]": f"skipped: {NO_CUDA}"}}


def test_default_baseline_on_its_class_passes_with_cuda_benchmarks_skipped(capsys):
    data = _ci_baseline()
    here = {key: data["machine_info"][key] for key in gate.CLASS_KEYS}
    assert run_gate([], FakeRunner(_as_measured(data)), here) == 0
    assert "gate: passed against tests/benchmarks/baselines/ci-cpu-2core.json" in \
        capsys.readouterr().out


def test_default_baseline_on_another_class_runs_ratio_checks_loudly(capsys):
    data = _ci_baseline()
    runner = FakeRunner(_as_measured(data, **GPU))
    assert run_gate([], runner, GPU) == 0
    assert not any(a.startswith("--benchmark-compare") for a in runner.calls[0])
    captured = capsys.readouterr()
    assert "is for another machine class" in captured.err
    assert "absolute comparison SKIPPED" in captured.err
    assert "gate: passed with ratio checks only" in captured.out


def test_default_baseline_on_another_class_still_fails_a_narrowed_run(capsys):
    data = _ci_baseline()
    narrowed = {**_as_measured(data, **GPU), "benchmarks": data["benchmarks"][:1]}
    assert run_gate(["--", "-k", "gemv"], FakeRunner(narrowed), GPU) == gate.FAILED
    assert f"{len(data['benchmarks']) - 1} baseline entries" in capsys.readouterr().err


def test_benchmark_without_baseline_entry_fails(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS | CUDA_BENCHMARKS))
    assert run_gate(["--baseline", str(baseline)], runner, CPU) == gate.FAILED
    err = capsys.readouterr().err
    assert "no baseline entry for" in err and f"{MATMUL}[torch-cuda-gemv_lesson]" in err


def test_pytest_failure_fails_the_gate(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS), rc=1)
    assert run_gate(["--baseline", str(baseline)], runner, CPU) == gate.FAILED
    assert "FAILED (pytest exit code 1)" in capsys.readouterr().out


def test_run_without_json_fails(tmp_path, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    assert run_gate(["--baseline", str(baseline)], FakeRunner(None, rc=5), CPU) == gate.FAILED
    assert "no benchmark JSON from this run" in capsys.readouterr().out


@pytest.mark.parametrize(("content", "says"), [
    ("{not json", "not valid JSON"),
    (json.dumps({"benchmarks": []}), "field 'machine_info' missing"),
    (json.dumps({"machine_info": {}, "benchmarks": [{"fullname": "t", "stats": {"median": "x"}}]}),
     "a field of the wrong type: could not convert string to float: 'x'"),
])
def test_damaged_baseline_is_named(tmp_path, capsys, content, says):
    baseline = tmp_path / "damaged.json"
    baseline.write_text(content)
    runner = FakeRunner(bench_json(CPU, CPU_BENCHMARKS))
    assert run_gate(["--baseline", str(baseline)], runner, CPU) == gate.REFUSED
    assert runner.calls == []
    err = capsys.readouterr().err
    assert f"baseline {baseline}" in err and says in err


def test_missing_baseline_says_how_to_record_one(tmp_path, capsys):
    missing = tmp_path / "none.json"
    assert run_gate(["--baseline", str(missing)], FakeRunner(None), CPU) == gate.REFUSED
    assert f"--spread 5 --save-baseline {missing}" in capsys.readouterr().err


def test_other_thread_count_is_refused(tmp_path, monkeypatch, capsys):
    baseline = write(tmp_path / "cpu.json", bench_json(CPU, CPU_BENCHMARKS))
    monkeypatch.setenv("MLPBENCH_BENCH_THREADS", "2")
    assert run_gate(["--baseline", str(baseline)], FakeRunner(None), CPU) == gate.REFUSED
    assert "measured with 1 thread(s), this run would use 2" in capsys.readouterr().err
