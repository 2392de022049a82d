"""The report renders offline from the real source; the quarto path is checked up to the call."""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest
from bs4 import BeautifulSoup

from mlpbench import rendering
from mlpbench.figures import FIGURES
from mlpbench.rendering import (
    RenderError,
    choose_renderer,
    external_resources,
    quarto_command,
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


@pytest.fixture(scope="module", params=["cpu_only", "with_cuda"])
def rendered(request, tmp_path_factory):
    root = write_results(tmp_path_factory.mktemp(request.param), cuda=request.param == "with_cuda")
    out = root / "report" / "report.html"
    used = render(REPORT, out, root, renderer="nbconvert", timeout_s=300)
    html = out.read_text(encoding="utf-8")
    return {"scenario": request.param, "root": root, "used": used, "html": html,
            "soup": BeautifulSoup(html, "html.parser")}


def _table_after(soup, heading: str):
    h = next(t for t in soup.find_all(["h2", "h3"]) if t.get_text().strip("¶ \n") == heading)
    return h.find_next("table")


def _rows(table) -> int:
    return len(table.find("tbody").find_all("tr"))


def test_fallback_names_itself_and_the_page_title(rendered):
    assert rendered["used"] == "nbconvert"
    soup = rendered["soup"]
    assert soup.title.get_text() == TITLE
    about = soup.get_text()
    assert "jupytext" in about and "nbconvert" in about


def test_every_section_is_present_in_order(rendered):
    headings = [t.get_text().strip("¶ \n") for t in rendered["soup"].find_all(["h2", "h3"])]
    assert [h for h in headings if h in SECTIONS] == SECTIONS


def test_every_figure_is_embedded_as_a_data_uri(rendered):
    srcs = [img["src"] for img in rendered["soup"].find_all("img")]
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    embedded = {s.split(",", 1)[1] for s in srcs}
    for name in FIGURES:
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
    assert heads[:7] == ["dataset", "width", "depth", "members", "CPU ensemble, per epoch",
                         "CPU ensemble, per member-epoch", "CPU lesson loop, per epoch"]
    section = _section_text(rendered["soup"], "Training time per epoch: CPU vs CUDA")
    if rendered["scenario"] == "cpu_only":
        assert heads[7:] == ["CUDA"]
        cells = [tr.find_all("td")[-1].get_text(strip=True)
                 for tr in table.find("tbody").find_all("tr")]
        assert set(cells) == {"unavailable"}
        # The reason is stated once, in the prose, not in every row.
        assert section.count("torch.cuda.is_available() is False") == 1
    else:
        assert heads[7:] == ["CUDA ensemble, per epoch", "CUDA ensemble, per member-epoch",
                             "CUDA lesson loop, per epoch"]
        assert "unavailable" not in section
    first_row = [td.get_text(strip=True) for td in table.find("tbody").find("tr").find_all("td")]
    assert first_row[:4] == ["toy", "4", "1", str(len(SEEDS))]
    assert first_row[4:7] == ["240 µs", "80 µs", "192 µs"]  # synthetic: 2e-4 * 1.2 per epoch


def test_environment_separates_blas_from_timing_threads(rendered):
    rows = {tr.find_all("td")[0].get_text(strip=True): tr.find_all("td")[1].get_text(strip=True)
            for tr in _table_after(rendered["soup"], "Environment").find("tbody").find_all("tr")}
    # Library, version and kernels; not the recording process's own thread count (1).
    assert rows["NumPy BLAS"] == "OpenBLAS 0.3.27 (kernels for Haswell, threading layer pthreads)"
    # The synthetic matmul rows were timed with 2 threads, training with 1.
    assert rows["threads used for timings"].startswith("matrix products: 2 threads")
    assert rows["threads used for timings"].endswith("training: 1 thread")


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
    assert render(REPORT, out, root, renderer="nbconvert", timeout_s=300) == "nbconvert"
    soup = BeautifulSoup(out.read_text(encoding="utf-8"), "html.parser")
    headings = [t.get_text().strip("¶ \n") for t in soup.find_all(["h2", "h3"])]
    assert [h for h in headings if h in SECTIONS] == SECTIONS
    assert len(soup.find_all("img")) == len(FIGURES)
    text = soup.get_text()
    assert "toy: no training results in this run" in text
    assert "CUDA was unavailable in this run" in text


def test_inconsistent_timings_are_flagged_not_explained_away(tmp_path):
    import pandas as pd

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
    with pytest.raises(Exception, match="boom from a report cell"):
        render(src, out, tmp_path, renderer="nbconvert", timeout_s=120)
    assert not out.exists()


def test_auto_picks_the_fallback_without_quarto(monkeypatch):
    monkeypatch.setattr(rendering.shutil, "which", lambda name: None)
    assert choose_renderer("auto") == "nbconvert"
    with pytest.raises(RenderError, match="not on PATH"):
        choose_renderer("quarto")
    with pytest.raises(ValueError):
        choose_renderer("pandoc")


def test_quarto_command_and_workdir():
    out = Path("/x/results/report/report.html")
    assert quarto_workdir(out) == Path("/x/results/report/.report.quarto")
    copy = quarto_workdir(out) / "report.py"
    assert quarto_command(copy) == ["quarto", "render", str(copy), "--to", "html"]


def _fake_quarto(bin_dir: Path, exit_code: int = 0) -> Path:
    """A stand-in on PATH that records how it was called and writes what quarto would."""
    bin_dir.mkdir()
    script = bin_dir / "quarto"
    script.write_text(f"""#!{sys.executable}
import json, os, sys
from pathlib import Path
if sys.argv[1:] == ["--version"]:
    print("1.6.40")
    sys.exit(0)
src = Path(sys.argv[2])
Path(os.environ["FAKE_QUARTO_LOG"]).write_text(json.dumps({{
    "argv": sys.argv[1:], "cwd": os.getcwd(), "source": src.read_text(),
    "env": {{k: os.environ.get(k) for k in ("MLPBENCH_RESULTS", "MLPBENCH_RENDERER",
                                           "MLPBENCH_RENDERER_DETAIL", "QUARTO_PYTHON")}},
}}))
if {exit_code}:
    sys.stderr.write("ERROR: cell failed\\n")
    sys.exit({exit_code})
src.with_suffix(".html").write_text("<html><body>quarto output</body></html>")
""")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def test_quarto_renders_a_copy_in_the_output_folder(tmp_path, monkeypatch):
    bin_dir = _fake_quarto(tmp_path / "bin")
    log = tmp_path / "quarto.json"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(log))
    before = sorted(p.name for p in REPORT.parent.iterdir())
    out = tmp_path / "results" / "report" / "report.html"

    used = render(REPORT, out, tmp_path / "results", renderer="auto")

    assert used == "quarto"
    call = json.loads(log.read_text())
    copy = quarto_workdir(out.resolve()) / "report.py"
    assert call["argv"] == ["render", str(copy), "--to", "html"]
    assert call["cwd"] == str(copy.parent)
    assert call["source"] == REPORT.read_text()
    assert call["env"]["MLPBENCH_RESULTS"] == str((tmp_path / "results").resolve())
    assert call["env"]["MLPBENCH_RENDERER"] == "quarto"
    assert call["env"]["MLPBENCH_RENDERER_DETAIL"] == "Quarto 1.6.40"
    assert call["env"]["QUARTO_PYTHON"] == sys.executable
    assert out.read_text() == "<html><body>quarto output</body></html>"
    assert not copy.parent.exists()  # the job's scratch copy is cleaned up
    assert sorted(p.name for p in REPORT.parent.iterdir()) == before  # report/ untouched


def test_quarto_failure_is_reported(tmp_path, monkeypatch):
    bin_dir = _fake_quarto(tmp_path / "bin", exit_code=1)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_QUARTO_LOG", str(tmp_path / "quarto.json"))
    out = tmp_path / "results" / "report" / "report.html"
    with pytest.raises(RenderError, match="cell failed"):
        render(REPORT, out, tmp_path / "results", renderer="quarto")
    assert not out.exists()


def test_external_resources_are_detected():
    assert external_resources('<script src="https://cdn.example/x.js"></script>')
    assert external_resources('<link rel="stylesheet" href="//cdn.example/x.css">')
    assert external_resources("<style>@import url(http://fonts.example/f.css);</style>")
    assert external_resources('<a href="#method">x</a><img src="data:image/png;base64,AA">') == []
    # A URL inside inline JavaScript is text, not a load; a script's own src is a load.
    assert external_resources('<script>var u = "src=https://x.example";</script>') == []
    assert external_resources('<script src="http://x.example/a.js"></script>')
