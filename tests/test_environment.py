"""The environment a timing job reads about itself: threads, affinity, load, clocks, GPU state."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
from threadpoolctl import threadpool_limits

from mlpbench import contract
from mlpbench.environment import (
    THREAD_ENV_VARS,
    affinity_text,
    cpu_mhz,
    environment_rows,
    gpu_state,
    parse_nvidia_smi,
    snapshot,
)

SMI = """\
0, NVIDIA H200, 1980, 3201, 41, 118.52, P0
1, NVIDIA H200, [N/A], 3201, 38, [Not Supported], P8
"""


def test_snapshot_reports_the_threads_in_effect(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1, user_api="blas"):
            snap = snapshot()
    finally:
        torch.set_num_threads(previous)
    assert snap["torch_num_threads"] == 1
    assert snap["thread_env"]["OMP_NUM_THREADS"] == "7"
    assert snap["thread_env"]["MKL_NUM_THREADS"] is None
    assert set(snap["thread_env"]) == set(THREAD_ENV_VARS)
    blas = [p for p in snap["threadpools"] if p["user_api"] == "blas"]
    assert blas and all(p["num_threads"] == 1 for p in blas)
    assert snap["blas_num_threads"] == 1
    json.dumps(snap)  # JSON-serialisable


def test_snapshot_reads_affinity_and_load():
    snap = snapshot()
    import os

    cpus = sorted(os.sched_getaffinity(0))
    assert snap["affinity_count"] == len(cpus)
    assert snap["affinity"] == affinity_text(cpus)
    assert snap["load_1m"] == pytest.approx(os.getloadavg()[0], abs=5)
    assert snap["gpu_reason"] == "not a CUDA job" and snap["gpu_sm_clock_mhz"] is None


@pytest.mark.parametrize("cpus, text", [([0], "0"), ([0, 1, 2, 5], "0-2,5"),
                                        ([3, 1, 2, 7, 8], "1-3,7-8"), ([], "")])
def test_affinity_text(cpus, text):
    assert affinity_text(cpus) == text


def test_cpu_clock_from_cpufreq_then_cpuinfo(tmp_path):
    sys_cpu = tmp_path / "cpu"
    for cpu, khz in ((0, 2_400_000), (1, 3_600_000)):
        (sys_cpu / f"cpu{cpu}" / "cpufreq").mkdir(parents=True)
        (sys_cpu / f"cpu{cpu}" / "cpufreq" / "scaling_cur_freq").write_text(f"{khz}\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\ncpu MHz\t\t: 2100.000\n\nprocessor\t: 1\n"
                       "cpu MHz\t\t: 2200.500\n\n")
    assert cpu_mhz([0, 1], sys_cpu, cpuinfo) == ([2400.0, 3600.0], "cpufreq scaling_cur_freq")
    # CPU 2 has no cpufreq: fall back to /proc/cpuinfo for every CPU, not a mix.
    (tmp_path / "cpu" / "cpu2").mkdir()
    values, source = cpu_mhz([1, 2], sys_cpu, cpuinfo)
    assert (values, source) == ([2200.5], "/proc/cpuinfo cpu MHz")
    values, source = cpu_mhz([0], tmp_path / "none", tmp_path / "missing")
    assert values == [] and source.startswith("unavailable: ")


def test_parse_nvidia_smi_canned_output():
    rows = parse_nvidia_smi(SMI)
    assert rows[0] == {"index": 0, "name": "NVIDIA H200", "sm_clock_mhz": 1980.0,
                       "mem_clock_mhz": 3201.0, "temperature_c": 41.0, "power_w": 118.52,
                       "pstate": "P0"}
    assert rows[1]["sm_clock_mhz"] is None and rows[1]["power_w"] is None
    assert rows[1]["pstate"] == "P8"


def test_parse_nvidia_smi_rejects_other_output():
    with pytest.raises(ValueError, match="expected 7 fields"):
        parse_nvidia_smi("No devices were found\n")


def test_gpu_state_prefers_nvml_then_nvidia_smi():
    def nvml(index):
        return {"sm_clock_mhz": 1500.0, "mem_clock_mhz": 2600.0, "temperature_c": 50.0,
                "power_w": 90.0, "pstate": "P2"}

    def broken(index):
        raise RuntimeError("NVML Shared Library Not Found")

    state = gpu_state(0, nvml=nvml, smi=lambda: SMI)
    assert state["gpu_source"] == "nvml" and state["gpu_sm_clock_mhz"] == 1500.0
    state = gpu_state(1, nvml=broken, smi=lambda: SMI)
    assert state["gpu_source"] == "nvidia-smi" and state["gpu_reason"] == ""
    assert state["gpu_mem_clock_mhz"] == 3201.0 and state["gpu_power_w"] is None


def test_gpu_state_unavailable_says_why():
    def broken(index):
        raise RuntimeError("NVML Shared Library Not Found")

    def no_smi():
        raise FileNotFoundError("[Errno 2] No such file or directory: 'nvidia-smi'")

    state = gpu_state(0, nvml=broken, smi=no_smi)
    assert state["gpu_source"] is None and state["gpu_temperature_c"] is None
    assert "nvml: NVML Shared Library Not Found" in state["gpu_reason"]
    assert "nvidia-smi: [Errno 2]" in state["gpu_reason"]
    # An index the output does not list is a reason too.
    state = gpu_state(3, nvml=broken, smi=lambda: SMI)
    assert "no GPU with index 3" in state["gpu_reason"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the path without a GPU")
def test_gpu_state_on_this_machine_without_gpu():
    state = gpu_state(0)
    if state["gpu_source"] is None:
        assert state["gpu_reason"]


def test_environment_rows_round_trip_the_contract(tmp_path):
    before, after = snapshot(), snapshot(cuda_device=0)
    rows = environment_rows(before, after, host="h", stage="train", device="cpu", threads=1,
                            dataset="toy")
    assert [r["moment"] for r in rows] == ["before", "after"]
    table = contract.TRAIN["environment"]
    path = tmp_path / "environment.parquet"
    contract.write(pd.DataFrame(rows, columns=table.column_names), path, table)
    back = contract.read(path, table).to_pandas()
    assert list(back["threads"]) == [1, 1]
    assert json.loads(back["thread_env_json"][0]) == before["thread_env"]
    omp = before["thread_env"]["OMP_NUM_THREADS"]
    assert pd.isna(back["omp_num_threads"][0]) if omp is None else back["omp_num_threads"][0] == omp
    assert back["gpu_reason"][0] == "not a CUDA job"
    if after["gpu_source"] is None:  # no GPU here: the reason is kept, the readings are null
        assert back["gpu_reason"][1] and math.isnan(back["gpu_sm_clock_mhz"][1])
    # The matmul job's table has the same columns, beside its matmul table.
    assert contract.MATMUL_ENVIRONMENT.column_names == table.column_names
    assert contract.matmul_environment_file("results/matmul/cpu.parquet") == \
        "results/matmul/cpu.environment.parquet"
