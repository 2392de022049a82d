# %% [markdown]
# ---
# title: "PyTorch I (MLPs), measured: timings and homework results"
# format:
#   html:
#     embed-resources: true
#     toc: true
#     toc-depth: 2
#     html-math-method: plain
#     code-fold: false
# execute:
#   echo: false
#   warning: false
# jupyter: python3
# ---

# %% [markdown]
# This report repeats the experiments of the lesson "PyTorch I: MLPs" on one machine and
# answers the lesson's questions with what this run measured. Every number in the text is
# read from the run's result tables while the report is rendered; nothing is typed in by hand.
# Every judgement ("faster", "within seed luck", "at chance") is a row of the run's findings
# (`tables/findings.csv`), which names the rule it applied and the numbers it rests on.

# %%
#| echo: false
import os
from pathlib import Path

import pandas as pd
from IPython.display import Image, Markdown, display

from mlpbench.narrative import Story
from mlpbench.present import AXIS_ORDER, AXIS_TITLES
from mlpbench.tables import load_tables

# --- Where the results are and who renders them (set by the render step) ------------------
def results_folder() -> Path:
    """MLPBENCH_RESULTS, a relative path taken from where the render was started."""
    given = os.environ.get("MLPBENCH_RESULTS")
    if not given:
        raise RuntimeError("set MLPBENCH_RESULTS to the results folder (the one holding tables/)")
    path = Path(given).expanduser()
    if not path.is_absolute():
        # Quarto runs this file in report/, not where `quarto render` was typed; the shell
        # that started it recorded that folder in PWD.
        path = Path(os.environ.get("PWD") or os.getcwd()) / path
    if not (path / "tables").is_dir():
        raise FileNotFoundError(f"MLPBENCH_RESULTS={given!r}: no tables folder at {path / 'tables'}"
                                " (run the pipeline first, or name the results folder that "
                                "holds tables/)")
    return path


RESULTS = results_folder()
# Set by mlpbench.rendering; absent when someone renders this file directly.
RENDERER = os.environ.get("MLPBENCH_RENDERER", "direct")
RENDERER_DETAIL = os.environ.get("MLPBENCH_RENDERER_DETAIL",
                                 "a renderer run directly, outside the pipeline")
RENDERER_FALLBACK = os.environ.get("MLPBENCH_RENDERER_FALLBACK")
# --------------------------------------------------------------------------------------------

TABLES = RESULTS / "tables"
if not (TABLES / "findings.parquet").exists():
    raise FileNotFoundError(f"{TABLES / 'findings.parquet'} is missing: the aggregate step "
                            "writes the findings beside the other tables; rerun it")
S = Story(load_tables(TABLES))  # every table checked against the results contract


def show(*items) -> None:
    """Markdown text as Markdown, a DataFrame as a Markdown table; empty text is skipped."""
    for item in items:
        if isinstance(item, pd.DataFrame):
            display(Markdown("*(no rows)*" if item.empty else item.to_markdown(index=False)))
        elif item:
            display(Markdown(item))


def figure(name: str) -> None:
    display(Image(filename=str(RESULTS / "figures" / f"{name}.png")))


show(S.machine_line())

# %% [markdown]
# ## At a glance

# %%
#| echo: false
show(S.glance())

# %% [markdown]
# ## Chain rule and autograd
#
# Before any code, the lesson asks how the chain rule reaches the first layer: for a network of
# L hidden layers, how many operations lie between W₀x and the final sum of the loss, and how
# many multiplications the derivative with respect to W₀ then takes. Then it shows PyTorch's
# autograd on a small example. Both are answered here by running them.
#
# ### Counting the operations in the chain

# %%
#| echo: false
from mlpbench.narrative import LessonPassages
from mlpbench.tables import load_lesson_tables

LESSON_DIR = RESULTS / "lesson"
L = LessonPassages(S, load_lesson_tables(LESSON_DIR) if LESSON_DIR.exists() else {})
show(L.ops_intro(), *L.ops_answer(), L.code("ops"))

# %% [markdown]
# ### Autograd on the slide's example

# %%
#| echo: false
show(*L.autograd_answer(), L.code("autograd"))

# %% [markdown]
# ## Tensors and matrix products: GPU vs CPU
#
# The lesson compares one product, a 1 × 6400 row vector times a 6400 × 5000 matrix, in
# three ways with `%timeit`. The table puts its three numbers beside this run's timings of
# the same product for each backend, device and dtype.

# %%
#| echo: false
show(S.lesson_table(), S.lesson_shape_note())
figure("lesson_comparison")

# %%
#| echo: false
show(L.matmul_code())

# %% [markdown]
# ### Is the GPU faster here, and why or why not?

# %%
#| echo: false
show(S.gpu_answer())

# %% [markdown]
# ### Why does the lesson's NumPy look 2× slower?

# %%
#| echo: false
show(S.numpy_answer())

# %% [markdown]
# ### Time against size, and what limits it
#
# Square products (m = k = n) do many multiply-adds per byte and can approach the processor's
# arithmetic peak; matrix-vector products (m = 1, like the lesson's) cannot. The second
# figure places every product by its arithmetic intensity against both measured roofs: the
# memory roof from the best copy and the compute roof from the best square product.

# %%
#| echo: false
figure("matmul_time")
figure("matmul_roofline")
show(S.size_answer(), S.copy_table(), *S.noisy_part())

# %% [markdown]
# ## The first network
#
# Every configuration is trained from many seeds at once, so each figure shows a
# distribution, not one lucky or unlucky run.

# %%
#| echo: false
show(S.dataset_heading(S.first), S.first_network())

# %%
#| echo: false
show(L.code("training"))

# %% [markdown]
# ### Checking parameters
#
# After training, the lesson prints the network's weights and biases with
# `mynet.parameters()`.

# %%
#| echo: false
show(*L.parameters_answer(), L.code("parameters"))

# %% [markdown]
# ### Testing on the three test points
#
# The lesson then feeds its three test points to the trained network and prints the logits and
# the predicted classes.

# %%
#| echo: false
show(*L.test_points_answer(), L.code("testing"))

# %% [markdown]
# ## Homework: more epochs, more units, more layers
#
# The homework changes one thing at a time: the number of epochs, the units in the hidden
# layer, and the number of hidden layers (and the learning rate, where the run varies it).
# Curves show the mean over seeds; the shaded band runs from the best to the worst seed; a
# setting at which every seed diverged has no curve and is named in red. In each table the
# row marked "(lesson)" is the lesson's network; the others differ from it in that one setting.

# %%
#| echo: false
figure("loss_curves")
for axis in S.axes_varied(S.first) if S.trained(S.first) else AXIS_ORDER[:3]:
    show(f"### {AXIS_TITLES[axis]}")
    if S.trained(S.first):
        show(S.axis_table(S.first, axis), S.axis_answer(S.first, axis))
    else:
        show("No network was trained on this data set in this run.")
figure("test_accuracy")

# %% [markdown]
# ### Gradients through depth: the chain-rule exercise
#
# The lesson asks what happens to the gradient of the first layer when many factors in its
# chain rule are smaller than one. The figure shows the norm of each layer's weight gradient,
# at initialisation and after the same number of epochs for every depth.

# %%
#| echo: false
figure("grad_norms")
show(S.grad_answer())

# %% [markdown]
# ### More layers, given more epochs
#
# The homework's depth sweep trains every deeper network for the lesson's epoch count only.
# Does depth help once the deeper networks are given more epochs to train?

# %%
#| echo: false
show(*L.depth_epochs_answer())

# %% [markdown]
# ## More data sets
#
# The homework goes on to other data, learned by the same kind of network; each data set this
# run trained gets its own part below.

# %%
#| echo: false
for name in S.datasets[1:]:
    show(*S.dataset_passages(name))
if len(S.datasets) < 2:
    show("This run trained no other data set.")

# %% [markdown]
# ## What the networks learned
#
# Decision regions: the class each network predicts at every point of the input plane
# (shaded), with the training points as circles and the test points as triangles. Each
# panel shows one representative seed, the one whose test accuracy is closest to the median
# over seeds, so it is typical rather than the best run.

# %%
#| echo: false
show(S.regions_caption())
figure("decision_regions")

# %% [markdown]
# ## Training time per epoch: CPU vs CUDA

# %%
#| echo: false
figure("epoch_time")
show(*S.epoch_time_answer())
if len(S.times):
    show("In the table, ensemble times are for all members of a shape together; the lesson's "
         "loop trains one network, so its time per epoch compares with the ensemble's time per "
         "member-epoch.")
show(S.epoch_time_table())

# %%
#| echo: false
show(L.code("epoch_time"))

# %%
#| echo: false
#| output: asis
# Other machines (config `compare:`): shown only when more than one machine was measured. The
# heading has a cell of its own whose output is document Markdown under Quarto (output: asis),
# so that it joins the table of contents like the headings of the Markdown cells.
from mlpbench.narrative import MachinePassages

M = MachinePassages(S.t)
if M.present:
    show("## Machines")

# %%
#| echo: false
if M.present:
    show(M.intro(), M.machines_table(), "★ the baseline of every speed-up.",
         *M.config_notes(),
         "### The lesson's product on every machine", M.unavailable(),
         M.lesson_table(), M.lesson_caveat(), *M.speedup_sentences())
    figure("machines")
    show("### Square and matrix-vector products", M.sweeps_table(),
         "### Training time per epoch", M.epoch_note(), M.epoch_table(),
         "### Do losses and accuracies agree?", *M.agreement_answer())

# %% [markdown]
# ## Method

# %%
#| echo: false
show(S.method_items())

# %% [markdown]
# ## Environment

# %%
#| echo: false
show(*S.environment_tables())

# %% [markdown]
# ## About this report

# %%
#| echo: false
show(f"Rendered by {RENDERER_DETAIL} (renderer `{RENDERER}`)."
     + (f" Quarto was not used: {RENDERER_FALLBACK}." if RENDERER_FALLBACK else "")
     + " The tables behind every number "
     f"are in `tables/` of the results folder as Parquet and CSV, the conclusions with their "
     f"rules and evidence in `tables/findings.csv`, the figures in `figures/`.")
