"""Render the percent-format report source to one self-contained, offline HTML file.

Two renderers read the same source (``report/report.py``):

``quarto``
    Used when ``quarto`` is on PATH. The source is copied into the job's own output folder
    and rendered there (Quarto writes intermediates beside its input, so rendering the file
    in ``report/`` in place would race between jobs); its YAML header asks for
    ``embed-resources: true``. The HTML is then moved to ``out_html``.
``nbconvert``
    The fallback: jupytext reads the source into a notebook, nbclient executes it with the
    ``python3`` kernel in a scratch folder, nbconvert exports HTML with the code hidden,
    the YAML front-matter cell dropped (its title becomes the page title) and the images
    already inline as data URIs. The template is nbconvert's ``lab`` template with every
    block that loads something from the web (require.js, MathJax, Mermaid, widgets)
    emptied, so the file opens offline.

Either way an error in a report cell fails the render with that cell's error, and the
report is told which renderer produced it through ``MLPBENCH_RENDERER`` (short name) and
``MLPBENCH_RENDERER_DETAIL`` (with versions).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from mlpbench.io import write_bytes_atomic

PathLike = str | os.PathLike
RENDERERS = ("quarto", "nbconvert")

# nbconvert's lab template without anything fetched from a CDN, plus a little layout:
# a readable column width and a table of contents built from the page's own headings.
OFFLINE_TEMPLATE = r"""
{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block extra_css %}
<style type="text/css">
  body.jp-Notebook { max-width: 1000px; margin: 0 auto; padding: 1.5em 1em 4em; }
  .jp-RenderedHTMLCommon table { margin: 0.6em 0 1.2em; font-size: 0.92em; }
  .jp-RenderedImage img, .jp-OutputArea-output img { max-width: 100%; height: auto; }
  #toc { border: 1px solid #ddd; border-radius: 6px; padding: 0.6em 1.2em; margin: 1em 0 2em;
         background: #fafafa; }
  #toc ul { margin: 0.3em 0; padding-left: 1.2em; }
  h1.report-title, #toc { font-family: var(--jp-content-font-family, system-ui, sans-serif);
                          margin-left: 0.4em; margin-right: 0.4em; }
  h1.report-title { font-size: 2em; font-weight: 600; margin-top: 0.2em; margin-bottom: 0.4em; }
</style>
{% endblock extra_css %}
{%- block body_header -%}
{{ super() }}
<h1 class="report-title">{{ resources['metadata']['name'] | escape_html_keep_quotes }}</h1>
<nav id="toc"><strong>Contents</strong><ul></ul></nav>
{%- endblock body_header -%}
{% block footer_js %}
<script>
  (function () {
    var list = document.querySelector("#toc ul");
    document.querySelectorAll("main h2").forEach(function (h, i) {
      if (!h.id) { h.id = "section-" + i; }
      var a = document.createElement("a");
      a.href = "#" + h.id;
      a.textContent = h.textContent.replace(/\u00b6$/, "");
      var li = document.createElement("li");
      li.appendChild(a);
      list.appendChild(li);
    });
  })();
</script>
{% endblock footer_js %}
"""

# Attributes and CSS that make a browser fetch something: the offline guard and the tests.
_EXTERNAL = [
    re.compile(r"""\bsrc\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""<link\b[^>]*\bhref\s*=\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""url\(\s*["']?\s*(?:https?:)?//""", re.I),
    re.compile(r"""@import\s+["']\s*(?:https?:)?//""", re.I),
]


class RenderError(RuntimeError):
    """The report could not be rendered (the message says why)."""


def external_resources(html: str) -> list[str]:
    """Snippets of ``html`` that would load something from the network.

    Inline script bodies are skipped: a URL inside JavaScript source is text, not a load
    (a ``<script src=...>`` tag itself is still checked).
    """
    html = re.sub(r"(<script\b[^>]*>).*?(</script>)", r"\1\2", html, flags=re.S | re.I)
    hits = []
    for pattern in _EXTERNAL:
        hits += [html[max(m.start() - 20, 0):m.end() + 60] for m in pattern.finditer(html)]
    return hits


def choose_renderer(renderer: str = "auto") -> str:
    """``auto`` -> ``quarto`` when it is on PATH, otherwise ``nbconvert``."""
    if renderer == "auto":
        return "quarto" if shutil.which("quarto") else "nbconvert"
    if renderer not in RENDERERS:
        raise ValueError(f"renderer must be 'auto' or one of {RENDERERS}, not {renderer!r}")
    if renderer == "quarto" and not shutil.which("quarto"):
        raise RenderError("renderer 'quarto' asked for, but quarto is not on PATH")
    return renderer


def renderer_detail(renderer: str) -> str:
    """A sentence-ready description with versions, for the report and the log."""
    if renderer == "quarto":
        done = subprocess.run(["quarto", "--version"], capture_output=True, text=True)
        version = done.stdout.strip() or "(version unknown)"
        return f"Quarto {version}"
    import jupytext
    import nbclient
    import nbconvert

    return (f"the fallback renderer: jupytext {jupytext.__version__} → nbclient "
            f"{nbclient.__version__} → nbconvert {nbconvert.__version__}")


def report_env(results_dir: PathLike, renderer: str, detail: str) -> dict[str, str]:
    """The environment the report's kernel runs with."""
    env = dict(os.environ)
    env["MLPBENCH_RESULTS"] = str(Path(results_dir).resolve())
    env["MLPBENCH_RENDERER"] = renderer
    env["MLPBENCH_RENDERER_DETAIL"] = detail
    return env


# --------------------------------------------------------------------------- quarto


def quarto_workdir(out_html: PathLike) -> Path:
    """The job's own folder for Quarto, beside the output (same file system: atomic move)."""
    out_html = Path(out_html)
    return out_html.parent / f".{out_html.stem}.quarto"


def quarto_command(source_copy: PathLike) -> list[str]:
    return ["quarto", "render", str(source_copy), "--to", "html"]


def _render_quarto(source: Path, out_html: Path, env: dict[str, str], timeout_s: float) -> None:
    work = quarto_workdir(out_html)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy = work / source.name
    shutil.copy2(source, copy)
    # Quarto looks for Jupyter in QUARTO_PYTHON: the interpreter that has mlpbench.
    env = {**env, "QUARTO_PYTHON": sys.executable}
    done = subprocess.run(quarto_command(copy), cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout_s)
    produced = copy.with_suffix(".html")
    if done.returncode != 0 or not produced.exists():
        raise RenderError(f"quarto render failed (exit {done.returncode}):\n"
                          f"{(done.stderr or done.stdout)[-4000:]}")
    html = produced.read_text(encoding="utf-8")
    _check_offline(html)
    os.replace(produced, out_html)
    shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- fallback


def split_front_matter(nb) -> tuple[dict, object]:
    """Drop the YAML front-matter cell (the first markdown cell opening with ``---``)."""
    cells = nb.cells
    if cells and cells[0].cell_type == "markdown":
        text = cells[0].source.strip()
        if text.startswith("---"):
            parts = text.split("---")
            header = yaml.safe_load(parts[1]) if len(parts) >= 3 else None
            nb.cells = cells[1:]
            return (header if isinstance(header, dict) else {}), nb
    return {}, nb


def _render_nbconvert(source: Path, out_html: Path, env: dict[str, str], timeout_s: float) -> None:
    import jupytext
    from jinja2 import DictLoader
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = jupytext.read(source)
    header, nb = split_front_matter(nb)
    title = str(header.get("title") or source.stem)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_html.stem}.", dir=out_html.parent) as scratch:
        client = NotebookClient(nb, timeout=int(timeout_s), kernel_name="python3",
                                resources={"metadata": {"path": scratch}})
        client.execute(env=env)  # a failing cell raises CellExecutionError with its traceback
    exporter = HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"mlpbench_offline.html.j2": OFFLINE_TEMPLATE})],
        template_file="mlpbench_offline.html.j2",
        exclude_input=True,
        exclude_input_prompt=True,
        exclude_output_prompt=True,
    )
    html, _ = exporter.from_notebook_node(nb, resources={"metadata": {"name": title}})
    _check_offline(html)
    write_bytes_atomic(html.encode("utf-8"), out_html)


def _check_offline(html: str) -> None:
    hits = external_resources(html)
    if hits:
        raise RenderError("the rendered HTML would load from the network: " + " | ".join(hits[:5]))


# --------------------------------------------------------------------------- entry point


def render(
    source_py: PathLike,
    out_html: PathLike,
    results_dir: PathLike,
    renderer: str = "auto",
    timeout_s: float = 600,
) -> str:
    """Render ``source_py`` with the results in ``results_dir`` to ``out_html``.

    Returns the renderer used (``quarto`` or ``nbconvert``).
    """
    source, out = Path(source_py).resolve(), Path(out_html).resolve()
    used = choose_renderer(renderer)
    env = report_env(results_dir, used, renderer_detail(used))
    if used == "quarto":
        _render_quarto(source, out, env, timeout_s)
    else:
        _render_nbconvert(source, out, env, timeout_s)
    return used
