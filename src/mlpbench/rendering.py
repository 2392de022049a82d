"""Render the percent-format report source to one self-contained, offline HTML file.

Two renderers read the same source (``report/report.py``):

``quarto``
    Used when ``quarto`` on PATH is Quarto 1.4 or newer (:data:`MIN_QUARTO`). The cells are
    executed here, as for the fallback (jupytext reads the source, nbclient runs it in this
    job's Python); the executed notebook, front matter included, is written into the job's
    own scratch folder beside the output and Quarto renders it there with ``--no-execute``
    (Quarto renders a notebook's stored outputs: "Jupyter notebooks are not executed by
    default", https://quarto.org/docs/computations/python.html). Both renderers thus execute
    the cells identically, in the job's own kernel over IPC; Quarto's own start-up (about 4 s
    on 2 cores, for any document) remains. The header asks for ``embed-resources: true``.
    The HTML is then moved to ``out_html``; the scratch folder is removed whether the render
    worked or not.
``nbconvert``
    The fallback: the same executed notebook, exported by nbconvert as HTML with the code
    hidden, the YAML front-matter cell dropped (its title becomes the page title) and the
    images already inline as data URIs.
    The template is nbconvert's ``lab`` template with every block that loads something from
    the web (require.js, MathJax, Mermaid, widgets) emptied, so the file opens offline.

Both run the report's kernel in this process's interpreter (``sys.executable``), never
whatever ``python3`` kernelspec the Jupyter search path offers first: a private kernelspec
named ``python3`` is written into a temporary Jupyter data folder and handed to the kernel
manager directly, which talks to the kernel over IPC sockets (POSIX) rather than TCP ports.

Either way an error in a report cell fails the render with that cell's error, and the
report is told which renderer produced it through ``MLPBENCH_RENDERER`` (short name),
``MLPBENCH_RENDERER_DETAIL`` (with versions) and, when ``auto`` could not use Quarto,
``MLPBENCH_RENDERER_FALLBACK`` (why not).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import yaml

from mlpbench.io import write_bytes_atomic

log = logging.getLogger(__name__)

PathLike = str | os.PathLike
RENDERERS = ("quarto", "nbconvert")

# Quarto renders percent-format scripts (a .py file with "# %% [markdown]" / "# %%" cells)
# from version 1.4 on: "Rendering Script Files ... This feature is new in Quarto 1.4"
# (https://quarto.org/docs/computations/render-scripts.html). Quarto 1.3 does not know a
# .py input and the render fails, so anything older falls back.
MIN_QUARTO = (1, 4, 0)
QUARTO_VERSION_TIMEOUT_S = 60
# The kernel name report/report.py's header asks for (``jupyter: python3``).
KERNEL_NAME = "python3"
# Control Sequence Introducer escapes (colours, bold): the error and the log stay plain text
# even if a tool ignores NO_COLOR.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")

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


def plain_text(text: str) -> str:
    """``text`` without terminal colour and style escapes."""
    return _ANSI.sub("", text)


def _no_color(env: dict[str, str] | None = None) -> dict[str, str]:
    # https://no-color.org: Quarto (Deno) then prints no escapes into the log and the error.
    return {**(os.environ if env is None else env), "NO_COLOR": "1"}


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"1.7.34"`` -> ``(1, 7, 34)``; None when ``text`` does not start with a version."""
    m = re.match(r"\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g or 0) for g in m.groups()) if m else None


def quarto_version() -> tuple[str | None, str | None]:
    """``(version, None)`` for a usable Quarto on PATH, else ``(None, why it is not usable)``.

    Usable means: ``quarto --version`` exits 0 within :data:`QUARTO_VERSION_TIMEOUT_S` and
    prints a version of at least :data:`MIN_QUARTO`.
    """
    exe = shutil.which("quarto")
    if exe is None:
        return None, "quarto is not on PATH"
    try:
        done = subprocess.run([exe, "--version"], capture_output=True, text=True,
                              env=_no_color(), timeout=QUARTO_VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None, f"'{exe} --version' did not answer within {QUARTO_VERSION_TIMEOUT_S} s"
    except OSError as e:
        return None, f"'{exe} --version' could not run: {e}"
    out = plain_text(done.stdout).strip()
    if done.returncode != 0:
        said = plain_text(done.stderr or done.stdout).strip()[-300:]
        return None, f"'{exe} --version' failed (exit {done.returncode})" + (
            f": {said}" if said else "")
    version = parse_version(out)
    if version is None:
        return None, f"'{exe} --version' printed {out[:80]!r}, not a version number"
    if version < MIN_QUARTO:
        need = ".".join(map(str, MIN_QUARTO[:2]))
        return None, (f"{exe} is Quarto {out}, older than {need}, the first Quarto that renders "
                      f"a percent-format .py script")
    return out, None


def fallback_detail() -> str:
    """The fallback renderer with its versions, sentence-ready."""
    import jupytext
    import nbclient
    import nbconvert

    return (f"the fallback renderer: jupytext {jupytext.__version__} → nbclient "
            f"{nbclient.__version__} → nbconvert {nbconvert.__version__}")


@dataclass(frozen=True)
class Renderer:
    """The renderer a render uses.

    ``name`` is ``quarto`` or ``nbconvert``; ``detail`` names it with its versions, for the
    report and the log; ``fallback_reason`` says why ``auto`` could not use Quarto (None when
    Quarto was used or the fallback was asked for).
    """

    name: str
    detail: str
    fallback_reason: str | None = None


def choose_renderer(renderer: str = "auto") -> Renderer:
    """Resolve ``auto``, ``quarto`` or ``nbconvert`` to the renderer that will run.

    ``auto`` -> Quarto when :func:`quarto_version` finds a usable one, otherwise the fallback,
    with the reason logged as a warning and kept in ``fallback_reason``.

    Raises ValueError for any other name, RenderError when ``quarto`` is asked for and the
    Quarto on PATH is missing, broken or too old (the message says which).
    """
    if renderer not in ("auto", *RENDERERS):
        raise ValueError(f"renderer must be 'auto' or one of {RENDERERS}, not {renderer!r}")
    if renderer == "nbconvert":
        return Renderer("nbconvert", fallback_detail())
    version, problem = quarto_version()
    if problem is None:
        import nbclient

        return Renderer("quarto", f"Quarto {version} (cells run by nbclient "
                                  f"{nbclient.__version__})")
    if renderer == "quarto":
        raise RenderError(f"renderer 'quarto' asked for, but {problem}")
    log.warning("Quarto not used: %s; rendering with the fallback renderer", problem)
    return Renderer("nbconvert", fallback_detail(), fallback_reason=problem)


def report_env(results_dir: PathLike, renderer: Renderer) -> dict[str, str]:
    """The environment the report's kernel runs with."""
    env = dict(os.environ)
    env["MLPBENCH_RESULTS"] = str(Path(results_dir).resolve())
    env["MLPBENCH_RENDERER"] = renderer.name
    env["MLPBENCH_RENDERER_DETAIL"] = renderer.detail
    env.pop("MLPBENCH_RENDERER_FALLBACK", None)
    if renderer.fallback_reason:
        env["MLPBENCH_RENDERER_FALLBACK"] = renderer.fallback_reason
    return env


# --------------------------------------------------------------------------- the kernel


@contextlib.contextmanager
def job_kernel_dir() -> Iterator[Path]:
    """A temporary Jupyter data folder whose ``kernels/python3`` starts ``sys.executable``.

    A user-level ``python3`` kernelspec (``~/.local/share/jupyter/kernels/python3``, one on
    ``JUPYTER_PATH``, …) may point to another Python: the report would then die at start or,
    worse, run in another environment. ipykernel writes the spec for this interpreter.
    """
    from ipykernel.kernelspec import write_kernel_spec

    with tempfile.TemporaryDirectory(prefix="mlpbench-jupyter-") as tmp:
        write_kernel_spec(Path(tmp) / "kernels" / KERNEL_NAME, overrides={
            "display_name": f"Python {sys.version_info[0]}.{sys.version_info[1]} "
                            f"({sys.executable})",
        })
        yield Path(tmp)


def _output_streams(log_stream: TextIO | None) -> dict[str, TextIO]:
    """Popen's stdout/stderr for a child whose output belongs in ``log_stream``."""
    if log_stream is None:
        return {}
    try:
        log_stream.fileno()
    except (AttributeError, OSError, ValueError):
        return {}
    log_stream.flush()
    return {"stdout": log_stream, "stderr": log_stream}


# --------------------------------------------------------------------------- execution


def execute_notebook(source: Path, env: dict[str, str], timeout_s: float, workdir: Path,
                     log_stream: TextIO | None):
    """Read the percent-format ``source`` with jupytext and execute it with nbclient in
    ``workdir``, the kernel started from this job's Python (:func:`job_kernel_dir`) with
    ``env``; return the executed notebook (front-matter cell still first).

    Raises RenderError with the failing cell's error as plain text.
    """
    import jupytext
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = jupytext.read(source)
    with job_kernel_dir() as kernels:
        # Only the job's own kernelspec is visible to this manager. IPC sockets (a file in the
        # private folder) instead of TCP ports: nothing is exposed on the network, and
        # ipykernel has no reason to warn about unencrypted TCP. Windows has no IPC transport.
        ipc = os.name == "posix"
        km = AsyncKernelManager(
            kernel_name=KERNEL_NAME,
            kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels / "kernels")]),
            transport="ipc" if ipc else "tcp",
            **({"ip": str(kernels / "kernel")} if ipc else {}),
        )
        client = NotebookClient(nb, km=km, timeout=int(timeout_s), kernel_name=KERNEL_NAME,
                                resources={"metadata": {"path": str(workdir)}})
        # The kernel's own stdout/stderr go to the job's log. cleanup_kc: shut the kernel down
        # at the end as nbclient does with a manager of its own (it leaves a given one running).
        try:
            client.execute(env=env, cleanup_kc=True, **_output_streams(log_stream))
        except CellExecutionError as e:
            # IPython colours the traceback; the error stays plain text.
            raise RenderError(f"a report cell failed:\n{plain_text(str(e)).strip()}") from e
    return nb


# --------------------------------------------------------------------------- quarto


def quarto_workdir(out_html: PathLike) -> Path:
    """The job's own folder for Quarto, beside the output (same file system: atomic move)."""
    out_html = Path(out_html)
    return out_html.parent / f".{out_html.stem}.quarto"


def quarto_command(notebook: PathLike) -> list[str]:
    """Render the executed notebook's stored outputs; Quarto runs no code."""
    return ["quarto", "render", str(notebook), "--to", "html", "--no-execute"]


def _render_quarto(source: Path, out_html: Path, env: dict[str, str], timeout_s: float,
                   log_stream: TextIO | None) -> None:
    import nbformat

    work = quarto_workdir(out_html)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        nb = execute_notebook(source, env, timeout_s, work, log_stream)
        notebook = work / f"{source.stem}.ipynb"
        nbformat.write(nb, notebook)
        # QUARTO_PYTHON: the Python Quarto asks about Jupyter, should it ask; it runs no cell.
        run_env = _no_color({**env, "QUARTO_PYTHON": sys.executable})
        try:
            done = subprocess.run(quarto_command(notebook), cwd=work, env=run_env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout_s)
            output, code = plain_text(done.stdout or ""), done.returncode
        except subprocess.TimeoutExpired as e:
            output = plain_text(e.stdout.decode() if isinstance(e.stdout, bytes)
                                else e.stdout or "")
            code = f"timed out after {timeout_s:g} s"
        if log_stream is not None:
            log_stream.write(f"--- quarto render output ---\n{output.rstrip()}\n"
                             f"--- end of quarto render output ---\n")
            log_stream.flush()
        produced = notebook.with_suffix(".html")
        if code != 0 or not produced.exists():
            why = f"exit {code}" if isinstance(code, int) else code
            raise RenderError(f"quarto render failed ({why}):\n{output[-4000:].strip()}")
        html = produced.read_text(encoding="utf-8")
        _check_offline(html)
        os.replace(produced, out_html)
    finally:
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


def _render_nbconvert(source: Path, out_html: Path, env: dict[str, str], timeout_s: float,
                      log_stream: TextIO | None) -> None:
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    out_html.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out_html.stem}.", dir=out_html.parent) as scratch:
        nb = execute_notebook(source, env, timeout_s, Path(scratch), log_stream)
    header, nb = split_front_matter(nb)
    title = str(header.get("title") or source.stem)
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
    log_stream: TextIO | None = None,
) -> Renderer:
    """Render ``source_py`` with the results in ``results_dir`` to ``out_html``.

    ``renderer`` is ``auto``, ``quarto`` or ``nbconvert`` (see :func:`choose_renderer`).
    ``log_stream`` (a file) receives the renderer's own output: Quarto's messages, or the
    fallback kernel's stdout/stderr; None leaves the kernel's output on this process's
    streams and keeps Quarto's only for an error. Returns the renderer used.

    Raises RenderError (a report cell or Quarto failed, with the error as plain text; or the
    HTML would load from the network), ValueError (unknown ``renderer``). A failed
    render leaves no ``out_html`` and no scratch folder behind.
    """
    source, out = Path(source_py).resolve(), Path(out_html).resolve()
    used = choose_renderer(renderer)
    env = report_env(results_dir, used)
    if used.name == "quarto":
        _render_quarto(source, out, env, timeout_s, log_stream)
    else:
        _render_nbconvert(source, out, env, timeout_s, log_stream)
    return used
