"""The report renders offline from the real source; the quarto path is checked up to the call."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from mlpbench import rendering
from mlpbench.contract import MACHINE_FIGURES
from mlpbench.figures import FIGURES

# A one-machine report embeds every figure but the machine comparison's.
ONE_MACHINE_FIGURES = [name for name in FIGURES if name not in MACHINE_FIGURES]
from mlpbench.rendering import (
    RenderError,
    choose_renderer,
    external_resources,
    parse_version,
    quarto_command,
    quarto_version,
    quarto_workdir,
    render,
)
from synthetic_results import SEEDS, write_results

REPORT = Path(__file__).resolve().parents[1] / "report" / "report.py"
TITLE = "PyTorch I (MLPs), measured: timings and homework results"
SECTIONS = [
    "At a glance",
    "Tensors and matrix products: GPU vs CPU",
    "Is the GPU faster here, and why or why not?",
    "Why does the lesson's NumPy look 2× slower?",
    "Time against size, and what limits it",
    "The first network",
    "Homework: more epochs, more units, more layers",
    "More epochs",
    "More units",
    "More layers",
    "Gradients through depth: the chain-rule exercise",
    "Blobs",
    "What the networks learned",
    "Training time per epoch: CPU vs CUDA",
    "Method",
    "Environment",
    "About this report",
]
URL = re.compile(r"^\s*(https?:)?//", re.I)


OLD_QUARTO = "1.3.450"  # the last Quarto before percent-format scripts


@pytest.fixture(scope="module", params=["cpu_only", "with_cuda"])
def rendered(request, tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp(request.param), cuda=request.param == "with_cuda")
    out = root / "report" / "report.html"
    # A Quarto too old for percent-format scripts on PATH: auto falls back and says why.
    bin_dir = _fake_quarto(root / "old-quarto", version=OLD_QUARTO)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
        used = render(REPORT, out, root, renderer="auto", timeout_s=300)
    html = out.read_text(encoding="utf-8")
    return {"scenario": request.param, "root": root, "used": used, "html": html,
            "soup": BeautifulSoup(html, "html.parser")}


def _table_after(soup, heading: str):
    h = next(t for t in soup.find_all(["h2", "h3"]) if t.get_text().strip("¶ \n") == heading)
    return h.find_next("table")


def _rows(table) -> int:
    return len(table.find("tbody").find_all("tr"))


def test_fallback_names_itself_and_the_page_title(rendered):
    assert rendered["used"].name == "nbconvert"
    soup = rendered["soup"]
    assert soup.title.get_text() == TITLE
    about = _section_text(soup, "About this report")
    assert "jupytext" in about and "nbconvert" in about


def test_report_says_why_quarto_was_not_used(rendered):
    reason = rendered["used"].fallback_reason
    assert f"is Quarto {OLD_QUARTO}, older than 1.4" in reason
    about = re.sub(r"\s+", " ", _section_text(rendered["soup"], "About this report"))
    assert f"Quarto was not used: {reason}." in about


def test_report_names_the_machine_id(rendered):
    from synthetic_results import HOST

    rows = {tr.find_all("td")[0].get_text(strip=True): tr.find_all("td")[1].get_text(strip=True)
            for tr in _table_after(rendered["soup"], "Environment").find("tbody").find_all("tr")}
    assert rows["run (machine_id)"] == HOST
    assert f"Run: {HOST} . Machine: {HOST}" in rendered["soup"].get_text(" ", strip=True)


def test_every_section_is_present_in_order(rendered):
    headings = [t.get_text().strip("¶ \n") for t in rendered["soup"].find_all(["h2", "h3"])]
    assert [h for h in headings if h in SECTIONS] == SECTIONS


def test_every_figure_is_embedded_as_a_data_uri(rendered):
    srcs = [img["src"] for img in rendered["soup"].find_all("img")]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    embedded = {s.split(",", 1)[1] for s in srcs}
    for name in ONE_MACHINE_FIGURES:
        png = (rendered["root"] / "figures" / f"{name}.png").read_bytes()
        assert base64.b64encode(png).decode() in embedded, name


def test_nothing_is_loaded_from_the_network(rendered):
    soup = rendered["soup"]
    for tag in soup.find_all(src=True) + soup.find_all(href=True):
        for attr in ("src", "href"):
            assert not URL.match(tag.get(attr, "")), str(tag)[:200]
    assert external_resources(rendered["html"]) == []


def test_code_and_front_matter_are_hidden(rendered):
    html = rendered["html"]
    assert "import pandas" not in html
    assert "#| echo" not in html
    assert "embed-resources" not in html


def test_tables_have_the_expected_rows(rendered):
    soup = rendered["soup"]
    # Lesson case: the lesson's 3 numbers + NumPy/torch CPU x 2 dtypes + torch CUDA x 2 dtypes.
    assert _rows(_table_after(soup, "Tensors and matrix products: GPU vs CPU")) == 3 + 4 + 2
    assert _rows(_table_after(soup, "More epochs")) == 2  # 20 and 40 epochs
    assert _rows(_table_after(soup, "More units")) == 2
    assert _rows(_table_after(soup, "More layers")) == 2
    assert _rows(_table_after(soup, "Blobs")) == 4  # every blobs configuration
    # Epoch times: one row per dataset x shape (2 x 3), devices and methods as columns.
    assert _rows(_table_after(soup, "Training time per epoch: CPU vs CUDA")) == 6
    seeds = soup.find(string=re.compile(r"toy: \d+ seeds per configuration"))
    assert f"toy: {len(SEEDS)} seeds per configuration" in seeds


def _section_text(soup, heading: str) -> str:
    """Text from a heading to the next heading of any level."""
    h = next(t for t in soup.find_all(["h2", "h3"]) if t.get_text().strip("¶ \n") == heading)
    parts = []
    for el in h.find_all_next():
        if el.name in ("h2", "h3"):
            break
        if el.name in ("p", "li", "td", "th"):
            parts.append(el.get_text(" ", strip=True))
    return "\n".join(parts)


def test_epoch_time_table_is_compact(rendered):
    table = _table_after(rendered["soup"], "Training time per epoch: CPU vs CUDA")
    heads = [th.get_text(strip=True) for th in table.find("thead").find_all("th")]
    assert heads[:7] == ["dataset", "width", "depth", "members",
                         "CPU ensemble, per epoch, median (range)",
                         "CPU ensemble, per member-epoch",
                         "CPU lesson loop, per epoch, median (range)"]
    section = _section_text(rendered["soup"], "Training time per epoch: CPU vs CUDA")
    if rendered["scenario"] == "cpu_only":
        assert heads[7:] == ["CUDA"]
        cells = [tr.find_all("td")[-1].get_text(strip=True)
                 for tr in table.find("tbody").find_all("tr")]
        assert set(cells) == {"unavailable"}
        # The reason is stated once, in the prose, not in every row.
        assert section.count("torch.cuda.is_available() is False") == 1
    else:
        assert heads[7:] == ["CUDA ensemble, per epoch, median (range)",
                             "CUDA ensemble, per member-epoch",
                             "CUDA lesson loop, per epoch, median (range)"]
        assert "unavailable" not in section
    first_row = [td.get_text(strip=True) for td in table.find("tbody").find("tr").find_all("td")]
    assert first_row[:4] == ["toy", "4", "1", str(len(SEEDS))]
    # synthetic: 2e-4 * 1.2 per epoch, windows within ±5 %
    assert first_row[4:7] == ["240 µs (228–252 µs)", "80 µs", "192 µs (182–202 µs)"]


def test_environment_separates_blas_from_timing_threads(rendered):
    rows = {tr.find_all("td")[0].get_text(strip=True): tr.find_all("td")[1].get_text(strip=True)
            for tr in _table_after(rendered["soup"], "Environment").find("tbody").find_all("tr")}
    # Library, version and kernels; not the recording process's own thread count (1).
    assert rows["NumPy BLAS"] == "OpenBLAS 0.3.27 (kernels for Haswell, threading layer pthreads)"
    # The synthetic matmul rows were timed with 2 threads, training with 1.
    assert rows["threads used for timings"].startswith("matrix products: 2 threads")
    assert "training: 1 thread;" in rows["threads used for timings"]


def test_decision_regions_are_described_at_their_epochs(rendered):
    text = _section_text(rendered["soup"], "What the networks learned")
    # Synthetic: the lesson's network at its 20 epochs, the best variant (same shape) at 40.
    assert "the lesson's network after the lesson's epoch count (toy: 20 epochs; blobs: 20 " \
           "epochs)" in text
    assert "toy: 4 units, 1 hidden layer, 40 epochs" in text


def test_cuda_is_stated_plainly(rendered):
    text = rendered["soup"].get_text()
    if rendered["scenario"] == "cpu_only":
        assert "CUDA was unavailable in this run" in text
        assert "CUDA was unavailable for training" in text
    else:
        assert "CUDA was unavailable" not in text
        assert "With the clock synchronised" in text


def test_prose_numbers_come_from_the_tables(rendered):
    import pandas as pd

    mm = pd.read_parquet(rendered["root"] / "tables" / "matmul.parquet")
    np64 = mm[(mm["case"] == "lesson") & (mm["backend"] == "numpy")
              & (mm["dtype"] == "float64")]["time_s_median"].iloc[0]
    text = rendered["soup"].get_text()
    assert f"NumPy float64, {np64 * 1e3:.3g} ms here" in text


def test_report_renders_when_nothing_was_available(tmp_path):
    root = write_results(tmp_path, cuda=False, only_cuda=True)
    out = root / "report" / "report.html"
    assert render(REPORT, out, root, renderer="nbconvert", timeout_s=300).name == "nbconvert"
    soup = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser")
    headings = [t.get_text().strip("¶ \n") for t in soup.find_all(["h2", "h3"])]
    assert [h for h in headings if h in SECTIONS] == SECTIONS
    assert len(soup.find_all("img")) == len(ONE_MACHINE_FIGURES)
    text = soup.get_text()
    assert "toy: no training results in this run" in text
    assert "CUDA was unavailable in this run" in text


def test_inconsistent_timings_are_flagged_not_explained_away(tmp_path):
    import pandas as pd

    from mlpbench.findings import findings_table
    from mlpbench.tables import load_tables

    root = write_results(tmp_path, cuda=False, figures=True)
    path = root / "tables" / "matmul.parquet"
    mm = pd.read_parquet(path)
    numpy64 = (mm["backend"] == "numpy") & (mm["dtype"] == "float64") & (mm["kind"] == "matmul")
    # The smallest matrix-vector product suddenly takes 10 ms, and the lesson's product,
    # timed again in the matrix-vector series, takes half its lesson-case time.
    small = numpy64 & (mm["case"] == "gemv") & (mm["k"] == 800)
    mm.loc[small, "time_s_median"] = 10e-3
    lesson = mm[numpy64 & (mm["case"] == "lesson")].iloc[0]
    twin = lesson.copy()
    twin["case"], twin["time_s_median"] = "gemv", lesson["time_s_median"] / 2
    pd.concat([mm, twin.to_frame().T.astype(mm.dtypes)], ignore_index=True).to_parquet(path)
    # The conclusions are data computed at aggregation: recompute them from the edited table.
    findings_table(load_tables(root / "tables")).to_parquet(root / "tables" / "findings.parquet")
    out = root / "report" / "report.html"
    render(REPORT, out, root, renderer="nbconvert", timeout_s=300)
    text = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser").get_text(" ")
    text = re.sub(r"\s+", " ", text)
    assert "Not every curve rises with size: NumPy CPU float64 took 10 ms for x(1×800)" in text
    half = f"{lesson['time_s_median'] / 2 * 1e3:.3g} ms in the matrix-vector series"
    assert "Caution: the same product was timed twice" in text and half in text


def test_a_failing_cell_fails_the_render(tmp_path):
    src = tmp_path / "broken.py"
    src.write_text('# %% [markdown]\n# ---\n# title: "broken"\n# ---\n\n'
                   '# %%\nraise ValueError("boom from a report cell")\n')
    out = tmp_path / "out" / "broken.html"
    with pytest.raises(RenderError, match="boom from a report cell") as failed:
        render(src, out, tmp_path, renderer="nbconvert", timeout_s=120)
    assert "\x1b" not in str(failed.value)  # plain text, no terminal colours
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no scratch folder left


def test_missing_results_are_named(tmp_path):
    out = tmp_path / "out" / "report.html"
    with pytest.raises(RenderError, match=r"no tables folder at .*nowhere/tables"):
        render(REPORT, out, tmp_path / "nowhere", renderer="nbconvert", timeout_s=120)


def test_auto_picks_the_fallback_without_quarto(monkeypatch, caplog):
    monkeypatch.setattr(rendering.shutil, "which", lambda name: None)
    chosen = choose_renderer("auto")
    assert (chosen.name, chosen.fallback_reason) == ("nbconvert", "quarto is not on PATH")
    assert "Quarto not used: quarto is not on PATH" in caplog.text
    with pytest.raises(RenderError, match="not on PATH"):
        choose_renderer("quarto")
    with pytest.raises(ValueError, match="'pandoc'"):
        choose_renderer("pandoc")
    assert choose_renderer("nbconvert").fallback_reason is None  # asked for: nothing to explain


def test_versions_are_parsed():
    assert parse_version("1.7.34\n") == (1, 7, 34)
    assert parse_version("1.4") == (1, 4, 0)
    assert parse_version("99.9.9") == (99, 9, 9)
    assert parse_version("quarto") is None


@pytest.mark.parametrize("fake, reason", [
    ({"version": "1.3.450"}, r"is Quarto 1\.3\.450, older than 1\.4"),
    ({"version": "", "version_exit": 3}, r"'.*quarto --version' failed \(exit 3\): broken install"),
    ({"version": "not a version"}, r"printed 'not a version', not a version number"),
])
def test_old_or_broken_quarto_falls_back_with_the_reason(tmp_path, monkeypatch, caplog, fake,
                                                          reason):
    bin_dir = _fake_quarto(tmp_path / "bin", **fake)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(tmp_path / "quarto.json"))
    chosen = choose_renderer("auto")
    assert chosen.name == "nbconvert"
    assert re.search(reason, chosen.fallback_reason)
    assert re.search("Quarto not used: .*" + reason, caplog.text)
    assert "\x1b" not in chosen.fallback_reason
    with pytest.raises(RenderError, match="renderer 'quarto' asked for, but .*" + reason):
        choose_renderer("quarto")
    assert not (tmp_path / "quarto.json").exists()  # never asked to render


def test_quarto_command_and_workdir():
    out = Path("/x/results/report/report.html")
    assert quarto_workdir(out) == Path("/x/results/report/.report.quarto")
    notebook = quarto_workdir(out) / "report.ipynb"
    # Quarto renders the notebook the job executed; it runs no code itself.
    assert quarto_command(notebook) == ["quarto", "render", str(notebook), "--to", "html",
                                        "--no-execute"]


def _fake_quarto(bin_dir: Path, exit_code: int = 0, version: str = "1.6.40",
                 version_exit: int = 0) -> Path:
    """A stand-in on PATH that records how it was called and writes what quarto would."""
    bin_dir.mkdir()
    script = bin_dir / "quarto"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
if sys.argv[1:] == ["--version"]:
    if {version_exit}:
        sys.stderr.write("\\x1b[31mbroken install\\x1b[39m\\n")
    print({version!r})
    sys.exit({version_exit})
src = Path(sys.argv[2])
Path(os.environ["FAKE_QUARTO_LOG"]).write_text(json.dumps({{
    "argv": sys.argv[1:], "cwd": os.getcwd(), "notebook": json.loads(src.read_text()),
    "env": {{k: os.environ.get(k) for k in ("MLPBENCH_RESULTS", "MLPBENCH_RENDERER",
                                           "MLPBENCH_RENDERER_DETAIL", "QUARTO_PYTHON",
                                           "NO_COLOR")}},
}}))
print("\\x1b[1mpandoc\\x1b[22m progress")
if {exit_code}:
    sys.stderr.write("\\x1b[31mERROR: cell failed\\x1b[39m\\n")
    sys.exit({exit_code})
src.with_suffix(".html").write_text("<html><body>quarto output</body></html>")
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_quarto_renders_the_executed_notebook_in_the_output_folder(tmp_path, monkeypatch):
    bin_dir = _fake_quarto(tmp_path / "bin")
    log = tmp_path / "quarto.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(log))
    src = tmp_path / "src" / "kernel_check.py"
    src.parent.mkdir()
    src.write_text(KERNEL_CHECK)
    out = tmp_path / "results" / "report" / "report.html"

    with open(tmp_path / "report.log", "w") as log_stream:
        used = render(src, out, tmp_path / "results", renderer="auto", log_stream=log_stream)

    assert (used.name, used.fallback_reason) == ("quarto", None)
    assert re.fullmatch(r"Quarto 1\.6\.40 \(cells run by nbclient [\d.]+\)", used.detail)
    call = json.loads(log.read_text())
    notebook = quarto_workdir(out.resolve()) / "kernel_check.ipynb"
    assert call["argv"] == ["render", str(notebook), "--to", "html", "--no-execute"]
    assert call["cwd"] == str(notebook.parent)
    # Quarto gets the notebook with the front matter first and every cell already run, in
    # this job's interpreter with the report's environment.
    cells = call["notebook"]["cells"]
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("---")
    printed = "".join("".join(o.get("text", "")) for c in cells[1:] for o in c.get("outputs", []))
    assert f"KERNEL {sys.executable} job" in printed
    assert call["env"]["MLPBENCH_RESULTS"] == str((tmp_path / "results").resolve())
    assert call["env"]["MLPBENCH_RENDERER"] == "quarto"
    assert call["env"]["MLPBENCH_RENDERER_DETAIL"] == used.detail
    assert call["env"]["QUARTO_PYTHON"] == sys.executable
    assert call["env"]["NO_COLOR"] == "1"
    assert out.read_text() == "<html><body>quarto output</body></html>"
    assert not notebook.parent.exists()  # the job's scratch folder is cleaned up
    assert sorted(p.name for p in src.parent.iterdir()) == ["kernel_check.py"]  # source untouched
    # Quarto's own output is kept, as plain text.
    kept = (tmp_path / "report.log").read_text()
    assert "pandoc progress" in kept and "\x1b" not in kept


def test_quarto_failure_is_reported_in_plain_text_and_cleaned_up(tmp_path, monkeypatch):
    bin_dir = _fake_quarto(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(tmp_path / "quarto.json"))
    src = tmp_path / "kernel_check.py"
    src.write_text(KERNEL_CHECK)
    out = tmp_path / "results" / "report" / "report.html"
    with pytest.raises(RenderError, match="ERROR: cell failed") as failed:
        render(src, out, tmp_path / "results", renderer="quarto")
    assert "\x1b" not in str(failed.value)
    assert not out.exists()
    assert not quarto_workdir(out).exists()


def test_a_failing_cell_stops_the_quarto_path_before_quarto(tmp_path, monkeypatch):
    bin_dir = _fake_quarto(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(tmp_path / "quarto.json"))
    src = tmp_path / "broken.py"
    src.write_text(KERNEL_CHECK + "\n# %%\nraise RuntimeError('table missing')\n")
    out = tmp_path / "results" / "report" / "report.html"
    with pytest.raises(RenderError, match="a report cell failed:(.|\n)*table missing"):
        render(src, out, tmp_path / "results", renderer="quarto")
    assert not (tmp_path / "quarto.json").exists()  # Quarto was never started
    assert not out.exists() and not quarto_workdir(out).exists()


# --------------------------------------------------------------------------- the kernel

KERNEL_CHECK = """# %% [markdown]
# ---
# title: "kernel check"
# format:
#   html:
#     embed-resources: true
# jupyter: python3
# ---

# %%
import os, sys
print("KERNEL", sys.executable, os.environ.get("SHADOW_KERNEL", "job"), "pid", os.getpid())
"""
QUARTO_PROBLEM = quarto_version()[1]


@pytest.fixture(params=["broken", "other"])
def shadowing_kernelspec(request, tmp_path, monkeypatch):
    """A ``python3`` kernelspec first on Jupyter's path that is not this job's interpreter.

    ``broken`` points to a Python that does not exist (the kernel dies at start); ``other``
    works but marks itself, as a kernel in another environment would run silently.
    """
    from jupyter_client.kernelspec import KernelSpecManager

    data = tmp_path / f"jupyter-{request.param}"
    spec = data / "kernels" / "python3"
    spec.mkdir(parents=True)
    python = sys.executable if request.param == "other" else str(tmp_path / "no-such-python")
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (another environment)", "language": "python",
        "env": {"SHADOW_KERNEL": "shadow"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(data))
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(data))
    # The shadow is what Jupyter would start by default.
    assert Path(KernelSpecManager().get_kernel_spec("python3").resource_dir) == spec
    return request.param


@pytest.mark.parametrize("renderer", [
    "nbconvert",
    pytest.param("quarto", marks=pytest.mark.skipif(
        QUARTO_PROBLEM is not None, reason=f"no usable Quarto: {QUARTO_PROBLEM}")),
])
def test_the_report_runs_in_the_jobs_interpreter(renderer, shadowing_kernelspec, tmp_path):
    src = tmp_path / "kernel_check.py"
    src.write_text(KERNEL_CHECK)
    out = tmp_path / "out" / "kernel_check.html"
    used = render(src, out, tmp_path, renderer=renderer, timeout_s=300)
    assert used.name == renderer
    text = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser").get_text(" ")
    assert f"KERNEL {sys.executable} job" in text


def test_a_fallback_render_prints_no_kernel_warnings(tmp_path, capfd):
    src = tmp_path / "kernel_check.py"
    src.write_text(KERNEL_CHECK)
    capfd.readouterr()
    out_html = tmp_path / "out" / "kernel_check.html"
    render(src, out_html, tmp_path, renderer="nbconvert")
    out, err = capfd.readouterr()
    # ipykernel warns about TCP without encryption; the fallback talks IPC instead.
    assert "IPKernelApp" not in out + err and "WARNING" not in out + err, out + err
    # The kernel was shut down, not left to notice later that its parent has gone.
    pid = int(re.search(r"pid (\d+)", out_html.read_text(encoding="utf-8")).group(1))
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


@pytest.mark.skipif(QUARTO_PROBLEM is not None, reason=f"no usable Quarto: {QUARTO_PROBLEM}")
def test_real_quarto_output_goes_to_the_log_not_the_terminal(tmp_path, capfd):
    src = tmp_path / "kernel_check.py"
    src.write_text(KERNEL_CHECK)
    capfd.readouterr()
    with open(tmp_path / "report.log", "w") as log_stream:
        render(src, tmp_path / "out" / "kernel_check.html", tmp_path, renderer="quarto",
               log_stream=log_stream)
    out, err = capfd.readouterr()
    assert out + err == ""
    kept = (tmp_path / "report.log").read_text()
    assert "Output created: kernel_check.html" in kept and "\x1b" not in kept


def test_external_resources_are_detected():
    assert external_resources('<script src="https://cdn.example/x.js"></script>')
    assert external_resources('<link rel="stylesheet" href="//cdn.example/x.css">')
    assert external_resources("<style>@import url(http://fonts.example/f.css);</style>")
    assert external_resources('<a href="#method">x</a><img src="data:image/png;base64,AA">') == []
    # A URL inside inline JavaScript is text, not a load; a script's own src is a load.
    assert external_resources('<script>var u = "src=https://x.example";</script>') == []
    assert external_resources('<script src="http://x.example/a.js"></script>')


@pytest.mark.skipif(QUARTO_PROBLEM is not None, reason=f"no usable Quarto: {QUARTO_PROBLEM}")
def test_direct_quarto_render_from_the_repository_root(tmp_path):
    """``MLPBENCH_RESULTS=results quarto render report/report.py``, as the README shows."""
    import subprocess

    repo = tmp_path / "clone"
    shutil.copytree(REPORT.parent, repo / "report", ignore=shutil.ignore_patterns(".quarto"))
    write_results(repo / "results", cuda=False)
    env = {**os.environ, "MLPBENCH_RESULTS": "results", "PWD": str(repo),
           "QUARTO_PYTHON": sys.executable}
    for key in ("MLPBENCH_RENDERER", "MLPBENCH_RENDERER_DETAIL", "MLPBENCH_RENDERER_FALLBACK"):
        env.pop(key, None)
    done = subprocess.run(["quarto", "render", "report/report.py"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    html = (repo / "results" / "report" / "report.html").read_text(encoding="utf-8")
    assert TITLE in html and '<meta name="generator" content="quarto-' in html
    assert "Rendered by a renderer run directly, outside the pipeline" in html
    # Nothing rendered is left in the source folder (Quarto's cache is git-ignored).
    assert sorted(p.name for p in (repo / "report").iterdir()) == [".gitignore", ".quarto",
                                                                     "_quarto.yml", "report.py"]
    # ... and the tracked report/.gitignore (which ignores that cache) is left as it is.
    assert (repo / "report" / ".gitignore").read_text() == (REPORT.parent / ".gitignore").read_text()

    # A results folder that does not exist is named.
    env["MLPBENCH_RESULTS"] = "no-such-results"
    done = subprocess.run(["quarto", "render", "report/report.py"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert f"no tables folder at {repo / 'no-such-results' / 'tables'}" in done.stdout + done.stderr
