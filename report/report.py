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

# %%
#| echo: false
import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd
from IPython.display import Image, Markdown, display

from mlpbench.tables import epoch_time_by_shape, load_tables, rank_configurations


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
T = load_tables(RESULTS / "tables")
MM, LESSON = T["matmul"], T["lesson_reference"]
SUMMARY, TIMES, GRADS = T["train_summary"], T["epoch_time"], T["grad_norms"]
POINTS, CURVES = T["data_points"], T["loss_curves"]
MACHINES = [json.loads(record) for record in T["machine"]["record_json"]]


def md(text: str) -> None:
    display(Markdown(text))


def figure(name: str) -> None:
    display(Image(filename=str(RESULTS / "figures" / f"{name}.png")))


def show_table(df: pd.DataFrame) -> None:
    if df.empty:
        md("*(no rows)*")
    else:
        md(df.to_markdown(index=False))


def fmt_time(seconds: float) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "n/a"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds:.3g} s"


def pct(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x * 100:.{digits}f}%"


def spread(row) -> str:
    """A timing's interquartile range as a share of its median."""
    share = row["time_s_iqr"] / row["time_s_median"]
    return "under 1%" if 0 <= share < 0.005 else pct(share, 0)


def num(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def times(x: float) -> str:
    """A ratio as 'N×'."""
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:.2f}×" if x < 10 else f"{x:.0f}×"


def plural(n: float, word: str, words: str | None = None) -> str:
    """'1 thread', '2 threads', '1 hidden layer', '6 hidden layers'."""
    text = f"{int(n):,}" if float(n).is_integer() else f"{n:g}"
    return f"{text} {word if n == 1 else (words or word + 's')}"


def device_name(device: str) -> str:
    return "CUDA" if device == "cuda" else device.upper()


def series(backend: str, device: str, dtype: str) -> str:
    return f"{'NumPy' if backend == 'numpy' else 'torch'} {device_name(device)} {dtype}"


def first(df: pd.DataFrame):
    return df.iloc[0] if len(df) else None


def why(reason: str) -> str:
    """A stage's reason without its leading 'CUDA unavailable: ' (the sentence says that)."""
    prefix = "cuda unavailable:"
    return reason[len(prefix):].strip() if reason.lower().startswith(prefix) else reason


def cuda_reason(df: pd.DataFrame) -> str | None:
    """The reason CUDA gave nothing, or None if CUDA produced results."""
    rows = df[df["device"] == "cuda"]
    if rows.empty:
        return "CUDA was not part of this run's configuration"
    if (rows["status"] == "ok").any():
        return None
    reasons = rows["reason"].dropna().astype(str)
    return reasons.iloc[0] if len(reasons) else "no CUDA results"


def train_device(dataset: str) -> str | None:
    ok = SUMMARY[(SUMMARY["dataset"] == dataset) & (SUMMARY["status"] == "ok")]
    devices = set(ok["device"])
    return "cpu" if "cpu" in devices else (sorted(devices)[0] if devices else None)


def rows_of(dataset: str) -> pd.DataFrame:
    device = train_device(dataset)
    return SUMMARY[(SUMMARY["dataset"] == dataset) & (SUMMARY["device"] == device)]


def baseline_of(dataset: str):
    return first(rows_of(dataset).query("variant == 'baseline'"))


def ci_text(row, metric: str, as_pct: bool) -> str:
    """Mean with its 95% interval; accuracy intervals are shown clipped to 0-100%."""
    f = pct if as_pct else num
    mean, lo, hi = row[f"{metric}_mean"], row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    if not np.isfinite(lo):
        return f"{f(mean)}"
    if as_pct:
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return f"{f(mean)} (95% CI {f(lo)} to {f(hi)})"


def seed_range(row) -> str:
    lo, hi = row["test_acc_min"], row["test_acc_max"]
    if np.isclose(lo, hi):
        return f"every seed scored {pct(lo, 0)} on the test points"
    return (f"single seeds ranged from {pct(lo, 0)} to {pct(hi, 0)} on the test points "
            f"(a spread of {(hi - lo) * 100:.0f} percentage points)")


def verdict(base, row, metric: str, higher_is_better: bool) -> str:
    """Is the change from ``base`` to ``row`` bigger than seed luck? (95% CIs overlap or not)."""
    b_lo, b_hi = base[f"{metric}_ci95_low"], base[f"{metric}_ci95_high"]
    r_lo, r_hi = row[f"{metric}_ci95_low"], row[f"{metric}_ci95_high"]
    if not all(np.isfinite([b_lo, b_hi, r_lo, r_hi])):
        return "too few seeds to separate it from seed luck"
    if r_lo > b_hi or r_hi < b_lo:
        better = (row[f"{metric}_mean"] > base[f"{metric}_mean"]) == higher_is_better
        return ("a real improvement, as the 95% intervals do not overlap" if better
                else "a real change for the worse, as the 95% intervals do not overlap")
    return "within seed luck, as the 95% intervals overlap"


def summary_table(rows: pd.DataFrame, labels: str | list[str]) -> pd.DataFrame:
    """One row per configuration; the lesson's own network is marked "(lesson)"."""
    labels = [labels] if isinstance(labels, str) else labels
    lesson = (rows["variant"] == "baseline").to_numpy()
    cells = {label: [f"{v:g}" + (" (lesson)" if mark and i == 0 else "")
                     for v, mark in zip(rows[label], lesson)]
             for i, label in enumerate(labels)}
    out = pd.DataFrame({
        **cells,
        "seeds": rows["n_seeds"].to_numpy(),
        "diverged": rows["share_diverged"].map(lambda v: pct(v, 0)).to_numpy(),
        "final training loss (cross-entropy), mean ± std": [
            f"{num(m)} ± {num(s, 2)}" for m, s in zip(rows["loss_mean"], rows["loss_std"])],
        "train acc, mean": rows["train_acc_mean"].map(pct).to_numpy(),
        "test acc, mean (95% CI)": [ci_text(r, "test_acc", True) for _, r in rows.iterrows()],
        "test acc, worst–best seed": [f"{pct(lo, 0)}–{pct(hi, 0)}" for lo, hi in
                                      zip(rows["test_acc_min"], rows["test_acc_max"])],
    })
    return out


def axis_rows(dataset: str, axis: str) -> pd.DataFrame:
    """The baseline plus the variants along one homework axis, sorted along it."""
    rows = rows_of(dataset)
    base = baseline_of(dataset)
    if base is None:
        return rows.iloc[0:0]
    sel = rows[rows["variant"].isin(["baseline", axis])]
    if axis != "epochs":
        sel = sel[np.isclose(sel["epochs"], base["epochs"])]
    return sel.sort_values(axis)


def best_along(rows: pd.DataFrame):
    """The best configuration among ``rows`` (the order the decision-region figure uses)."""
    return first(rank_configurations(rows))


def best_variant(dataset: str):
    """The best configuration other than the lesson's network (the figure's "best variant")."""
    ranked = rank_configurations(rows_of(dataset))
    return first(ranked[ranked["variant"] != "baseline"])


def points_of(dataset: str) -> pd.DataFrame:
    return POINTS[POINTS["dataset"] == dataset] if len(POINTS) else POINTS


def chance(dataset: str) -> float:
    """Expected test accuracy of guessing one of the dataset's classes at random."""
    labels = points_of(dataset)["label"] if len(POINTS) else []
    return 1 / len(set(labels)) if len(labels) else math.nan


def network(row) -> str:
    """'4 units, 1 hidden layer, 1000 epochs' for a train_summary row (and 'lr 0.1' where
    the run tried several learning rates on that dataset)."""
    lrs = SUMMARY.loc[SUMMARY["dataset"] == row["dataset"], "lr"].dropna().unique()
    return (f"{plural(row['width'], 'unit')}, {plural(row['depth'], 'hidden layer')}, "
            f"{plural(row['epochs'], 'epoch')}"
            + (f", learning rate {row['lr']:g}" if len(lrs) > 1 else ""))


def loss_progress(dataset: str, row) -> tuple[float, float] | None:
    """Mean training loss over seeds before the first step (loss curves) and after the
    row's last step (train_summary); None when the curve was not recorded."""
    c = CURVES[(CURVES["dataset"] == dataset) & (CURVES["device"] == row["device"])
               & (CURVES["epoch"] == 1) & np.isclose(CURVES["width"], row["width"])
               & np.isclose(CURVES["depth"], row["depth"]) & np.isclose(CURVES["lr"], row["lr"])]
    if c.empty or not np.isfinite(row["loss_mean"]):
        return None
    return float(c["loss_mean"].iloc[0]), float(row["loss_mean"])


def axis_answer(dataset: str, axis: str, unit: str) -> str:
    rows = axis_rows(dataset, axis)
    base = baseline_of(dataset)
    if base is None or len(rows) < 2:
        return f"This run did not vary the {axis} of the {dataset} network."
    ok_rows = rows[rows["status"] == "ok"]
    lost = rows[rows["status"] == "diverged"]
    lost_text = (f" Every seed diverged at {axis} " + ", ".join(f"{v:g}" for v in lost[axis])
                 + "." if len(lost) else "")
    if base["status"] != "ok" or len(ok_rows) < 2:
        return (f"Too few configurations along this axis trained without diverging to "
                f"compare them.{lost_text}")
    # Compare with the setting farthest from the lesson's along this axis (usually the
    # largest; in a grid it can lie below the baseline).
    others = ok_rows[~np.isclose(ok_rows[axis].astype(float), float(base[axis]))]
    if others.empty:
        return f"This run did not vary the {axis} of the {dataset} network."
    top = others.loc[(others[axis].astype(float) - float(base[axis])).abs().idxmax()]
    best = best_along(rows)
    words = [
        f"From {base[axis]:g} to {top[axis]:g} {unit}, the final training loss went from "
        f"{num(base['loss_mean'])} to {num(top['loss_mean'])} "
        f"({verdict(base, top, 'loss', False)}), "
        f"and the test accuracy from {pct(base['test_acc_mean'])} to {pct(top['test_acc_mean'])} "
        f"({verdict(base, top, 'test_acc', True)})."
    ]
    guess = chance(dataset)
    if np.isfinite(guess) and abs(top["test_acc_mean"] - guess) < 0.05:
        words.append(f"That is chance level: guessing one of {round(1 / guess)} classes at "
                     f"random scores {pct(guess)} on average.")
    stalled = loss_progress(dataset, top)
    if stalled is not None and stalled[1] > 0.9 * stalled[0]:
        words.append(f"At {top[axis]:g} {unit} the mean training loss only went from "
                     f"{num(stalled[0])} before the first step to {num(stalled[1])} after "
                     f"{plural(top['epochs'], 'epoch')}: with learning rate {top['lr']:g} these "
                     f"networks barely start to learn in that time.")
    if best is not None and not np.isclose(best[axis], top[axis]):
        where = ("the lesson's own setting" if best["variant"] == "baseline"
                 else f"{axis} {best[axis]:g}")
        words.append(f"The best mean test accuracy along this axis was at {where}: "
                     f"{pct(best['test_acc_mean'])}.")
    words.append(
        f"How much is seed luck? For the lesson's network alone, {seed_range(base)}, and "
        f"{pct(base['share_diverged'], 0)} of its seeds diverged; at {top[axis]:g} {unit}, "
        f"{seed_range(top)}."
    )
    words.append(lost_text.strip())
    diverged = rows[rows["share_diverged"] > 0]
    if len(diverged):
        worst = diverged.sort_values("share_diverged").iloc[-1]
        words.append(f"Divergence: up to {pct(worst['share_diverged'], 0)} of the seeds "
                     f"diverged (at {axis} {worst[axis]:g}); the means above leave them out.")
    return " ".join(w for w in words if w)


MACHINE = MACHINES[0] if MACHINES else {}
GPU = MACHINE.get("gpu", {}) or {}
md(f"**Machine:** `{MACHINE.get('machine_id', 'unknown')}` "
   f"(host {MACHINE.get('host', 'unknown')}), {MACHINE.get('cpu_model', 'unknown CPU')} "
   f"({MACHINE.get('physical_cores', '?')} physical / {MACHINE.get('logical_cores', '?')} "
   f"logical cores). **GPU:** "
   + (f"{GPU.get('name')} ({GPU.get('memory_gib')} GiB)." if GPU.get("available")
      else f"none usable — {GPU.get('reason') or 'CUDA unavailable'}.")
   + f" **Results recorded:** {MACHINE.get('created_utc', 'unknown time')}.")

# %% [markdown]
# ## At a glance

# %%
#| echo: false
def lesson_row(backend: str, device: str, dtype: str):
    rows = MM[(MM["case"] == "lesson") & (MM["kind"] == "matmul") & (MM["backend"] == backend)
              & (MM["device"] == device) & (MM["dtype"] == dtype)]
    return first(rows)


def lesson_time(backend: str, device: str, dtype: str) -> float:
    row = lesson_row(backend, device, dtype)
    return float(row["time_s_median"]) if row is not None and row["status"] == "ok" else math.nan


LESSON_OK = MM[(MM["case"] == "lesson") & (MM["kind"] == "matmul") & (MM["status"] == "ok")]
CUDA_MM = cuda_reason(MM)
bullets = []
if len(LESSON_OK):
    fastest = LESSON_OK.sort_values("time_s_median").iloc[0]
    bullets.append(
        f"The lesson's product x({fastest['m']}×{fastest['k']}) @ "
        f"y({fastest['k']}×{fastest['n']}) was fastest with "
        f"{series(fastest['backend'], fastest['device'], fastest['dtype'])}: "
        f"{fmt_time(fastest['time_s_median'])}, "
        f"{times(fastest['speedup_vs_numpy_float64'])} the speed of the lesson's baseline "
        f"(NumPy float64, {fmt_time(lesson_time('numpy', 'cpu', 'float64'))} here).")
bullets.append("CUDA: " + (f"unavailable in this run, because {why(CUDA_MM)}. Every GPU "
                           "question below is left open rather than guessed." if CUDA_MM else
                           "available; GPU timings are CUDA-synchronised."))
for name in ("toy", "blobs"):
    base = baseline_of(name)
    if base is None:
        bullets.append(f"{name}: no training results in this run.")
        continue
    best = best_variant(name)
    bullets.append(
        f"{name}: the lesson's network ({network(base)}) reached "
        f"{ci_text(base, 'test_acc', True)} mean test accuracy over {plural(base['n_ok'], 'seed')}"
        + (f"; the best variant ({network(best)}) reached {pct(best['test_acc_mean'])}."
           if best is not None else "; no other configuration trained without diverging."))
md("\n".join(f"- {b}" for b in bullets))

# %% [markdown]
# ## Tensors and matrix products: GPU vs CPU
#
# The lesson compares one product, a 1 × 6400 row vector times a 6400 × 5000 matrix, in
# three ways with `%timeit`. The table puts its three numbers beside this run's timings of
# the same product for each backend, device and dtype.

# %%
#| echo: false
ours = MM[(MM["case"] == "lesson") & (MM["kind"] == "matmul")].sort_values(
    ["device", "backend", "dtype"])
rows = [{
    "source": "lesson", "what": series(r["backend"], r["device"], r["dtype"]),
    "time": fmt_time(r["time_s"]), "GB/s": num(r["gb_s"]), "GFLOP/s": num(r["gflop_s"]),
    "speed vs NumPy float64 (same source)": times(
        LESSON.query("backend == 'numpy'")["time_s"].iloc[0] / r["time_s"]),
    "timing": f"{r['timer']}, {r['sync']}",
} for _, r in LESSON.iterrows()]
rows += [{
    "source": "this run", "what": series(r["backend"], r["device"], r["dtype"]),
    "time": fmt_time(r["time_s_median"]) if r["status"] == "ok" else r["status"],
    "GB/s": num(r["gb_s"]), "GFLOP/s": num(r["gflop_s"]),
    "speed vs NumPy float64 (same source)": times(r["speedup_vs_numpy_float64"]),
    "timing": (f"median of {plural(r['n_runs'], 'block')} of {plural(r['number_per_run'], 'call')}, "
               f"{plural(r['threads'], 'thread')}"
               + (", synchronised" if r["device"] == "cuda" else "")
               if r["status"] == "ok" else r["reason"]),
} for _, r in ours.iterrows()]
show_table(pd.DataFrame(rows))
ref = LESSON.iloc[0]
if len(ours) and (ours["m"].iloc[0], ours["k"].iloc[0], ours["n"].iloc[0]) != (
        ref["m"], ref["k"], ref["n"]):
    r = ours.iloc[0]
    md(f"Note: this run's configuration timed x({r['m']}×{r['k']}) @ y({r['k']}×{r['n']}) as "
       f"its lesson case, not the lesson's x({ref['m']}×{ref['k']}) @ y({ref['k']}×{ref['n']}), "
       f"so its times are not directly comparable with the lesson's.")
figure("lesson_comparison")

# %% [markdown]
# ### Is the GPU faster here, and why or why not?

# %%
#| echo: false
lesson_cuda = LESSON.query("device == 'cuda'").iloc[0]
cpu32 = lesson_time("torch", "cpu", "float32")
lesson32 = LESSON_OK[LESSON_OK["dtype"] == "float32"]
intensity = lesson32["intensity_flop_per_byte"].iloc[0] if len(lesson32) else math.nan
bw = MM[(MM["kind"] == "copy") & (MM["status"] == "ok")].groupby("device")["gb_s"].max()
text = []
if CUDA_MM:
    text.append(
        f"**CUDA was unavailable in this run:** {why(CUDA_MM)}. This run therefore cannot say "
        f"whether the GPU is faster; the CPU results below stand on their own. The lesson's "
        f"{fmt_time(lesson_cuda['time_s'])} would mean the GPU streamed the operands at "
        f"{num(lesson_cuda['gb_s'])} GB/s, but it was timed without synchronisation, so it "
        f"may measure how fast kernels are queued rather than how fast they finish.")
else:
    cuda32 = lesson_time("torch", "cuda", "float32")
    h2d = MM[(MM["case"] == "lesson") & (MM["kind"] == "h2d") & (MM["dtype"] == "float32")
             & (MM["status"] == "ok")]
    h2d_t = float(h2d["time_s_median"].iloc[0]) if len(h2d) else math.nan
    faster = cpu32 / cuda32
    text.append(
        f"With the clock synchronised, the product takes {fmt_time(cuda32)} on the GPU "
        f"({GPU.get('name', 'GPU')}) against {fmt_time(cpu32)} for torch on the CPU, both "
        f"float32: the GPU is "
        + (f"{times(faster)} faster. " if faster >= 1 else
           f"slower, taking {times(1 / faster)} the CPU's time. ")
        + f"The lesson reported {fmt_time(lesson_cuda['time_s'])} without synchronisation.")
    if np.isfinite(h2d_t):
        text.append(
            f"But y first has to reach the GPU: copying it took {fmt_time(h2d_t)}, "
            f"{times(h2d_t / cuda32)} the product itself. For a single product the GPU pays "
            f"off only when the data already live there.")
if np.isfinite(intensity):
    text.append(
        f"Why: with one row in x, each element of y is read once and used for one "
        f"multiply-add, about {num(intensity, 2)} FLOP per byte moved in float32. Such a "
        f"product is limited by memory bandwidth, not by arithmetic, so a device is faster "
        f"roughly in proportion to the bandwidth it can stream."
        + (" This run's copy benchmark measured "
           + ", ".join(f"{num(v)} GB/s on {device_name(d)}" for d, v in bw.items()) + "."
           if len(bw) else ""))
md("\n\n".join(text))

# %% [markdown]
# ### Why does the lesson's NumPy look 2× slower?

# %%
#| echo: false
l_np = LESSON.query("backend == 'numpy'").iloc[0]
l_t = LESSON.query("backend == 'torch' and device == 'cpu'").iloc[0]
np64, np32 = lesson_time("numpy", "cpu", "float64"), lesson_time("numpy", "cpu", "float32")
t64 = lesson_time("torch", "cpu", "float64")
r_total, r_dtype, r_lib32, r_lib64 = np64 / cpu32, np64 / np32, np32 / cpu32, np64 / t64
text = [
    f"In the lesson NumPy took {times(l_np['time_s'] / l_t['time_s'])} as long as torch on the "
    f"CPU. The two calls did not do the same work: `torch.rand` makes float32 tensors while "
    f"`np.random.random` makes float64 arrays, so NumPy had twice as many bytes to read. "
    f"Dividing bytes by time, the lesson's NumPy streamed {num(l_np['gb_s'])} GB/s and its "
    f"torch {num(l_t['gb_s'])} GB/s: about the same memory speed, twice the bytes.",
]
if all(np.isfinite([r_total, r_dtype, r_lib32, r_lib64])):
    dtype_wins = abs(math.log(r_dtype)) >= max(abs(math.log(r_lib32)), abs(math.log(r_lib64)))
    text.append(
        f"In this run, NumPy float64 took {times(r_total)} the time of torch "
        f"float32. Holding the library fixed, float64 cost NumPy {times(r_dtype)} its float32 "
        f"time; holding the dtype fixed, NumPy took {times(r_lib32)} torch's time in float32 "
        f"and {times(r_lib64)} in float64. "
        + ("So the dtype, not the library, explains most of the gap."
           if dtype_wins else
           "Here the difference between the libraries is at least as large as the dtype's."))
    # The same product may also sit in the matrix-vector series: if the two timings
    # disagree, the split above rests on noisy numbers, and the reader should know.
    doubts = []
    for backend, dtype in (("numpy", "float64"), ("numpy", "float32"), ("torch", "float32"),
                           ("torch", "float64")):
        row = lesson_row(backend, "cpu", dtype)
        if row is None or row["status"] != "ok":
            continue
        twin = MM[(MM["case"] == "gemv") & (MM["kind"] == "matmul") & (MM["status"] == "ok")
                  & (MM["backend"] == backend) & (MM["device"] == "cpu") & (MM["dtype"] == dtype)
                  & (MM["m"] == row["m"]) & (MM["k"] == row["k"]) & (MM["n"] == row["n"])]
        if len(twin):
            t_twin = float(twin["time_s_median"].iloc[0])
            if abs(math.log(t_twin / row["time_s_median"])) > math.log(1.25):
                doubts.append(
                    f"{series(backend, 'cpu', dtype)} took {fmt_time(row['time_s_median'])} "
                    f"here (interquartile range {spread(row)} of the median) but "
                    f"{fmt_time(t_twin)} in the matrix-vector series")
    if doubts:
        text.append(
            "Caution: the same product was timed twice in this run, and the two timings "
            "disagree by more than 25%: " + "; ".join(doubts) + ". The ratios above are only "
            "as certain as these timings, so treat the split between dtype and library as "
            "rough.")
text.append(
    "The lesson's CUDA number has a second catch: CUDA kernels run asynchronously and "
    "`%timeit` does not wait for them, so it can time the launch rather than the product. "
    "This run synchronises before reading the clock"
    + (f"; its float32 GPU time is {fmt_time(lesson_time('torch', 'cuda', 'float32'))}."
       if not CUDA_MM else ", but had no GPU to time."))
md("\n\n".join(text))

# %% [markdown]
# ### Time against size, and what limits it
#
# Square products (m = k = n) do many multiply-adds per byte and can approach the processor's
# arithmetic peak; matrix-vector products (m = 1, like the lesson's) cannot. The second
# figure places every product by its arithmetic intensity against the memory roof drawn from
# the measured copy bandwidth.

# %%
#| echo: false
figure("matmul_time")
figure("matmul_roofline")
ok = MM[(MM["kind"] == "matmul") & (MM["status"] == "ok")]
text = []
lesson_mv = ok[ok["case"] == "lesson"]
if len(lesson_mv):
    top = lesson_mv.sort_values("bandwidth_share").iloc[-1]
    share = top["bandwidth_share"]
    text.append(
        f"On the lesson's product ({num(top['bytes'] / 2**20)} MiB of operands), the best backend "
        f"by bandwidth share ({series(top['backend'], top['device'], top['dtype'])}) moved "
        f"{num(top['gb_s'])} GB/s, {pct(share, 0)} of the copy bandwidth measured on the same "
        "device: "
        + ("more than the copy benchmark reached. The timer repeats the same product, so a "
           "processor with caches of this size serves much of the matrix from cache rather "
           "than memory (or the copy benchmark streams less than a matrix product with all "
           "threads does); either way the product is limited by how fast its bytes arrive, "
           "not by arithmetic." if share > 1.05 else
           "memory bandwidth is what limits it." if share >= 0.5 else
           "well below what the memory delivered in the copy benchmark, so this timing was "
           "held back by something besides bandwidth."))
mv = ok[ok["case"] == "gemv"]
if len(mv) and mv["bandwidth_share"].max() > 1:
    small = mv.sort_values("bandwidth_share").iloc[-1]
    text.append(
        f"Smaller matrix-vector products can beat the copy bandwidth (up to "
        f"{pct(small['bandwidth_share'], 0)} at {num(small['bytes'] / 2**20)} MiB) because "
        f"their matrix stays in the CPU caches between repetitions.")
sq = ok[ok["case"] == "square"]
if len(sq):
    top = sq.sort_values("gflop_s").iloc[-1]
    text.append(
        f"The best square product ran at {num(top['gflop_s'])} GFLOP/s "
        f"({series(top['backend'], top['device'], top['dtype'])}, n = {int(top['n'])}, "
        f"{num(top['intensity_flop_per_byte'])} FLOP per byte), far above what the memory roof "
        f"allows a matrix-vector product.")
odd = []
for (backend, device, dtype), g in ok[ok["case"].isin(["gemv", "lesson", "square"])].groupby(
        ["backend", "device", "dtype"]):
    for _, h in g.groupby(g["m"] == 1):  # matrix-vector and square series separately
        h = h.assign(size=h["k"] * h["n"] * h["m"]).sort_values("size")
        h = h.drop_duplicates("size")
        t, size = h["time_s_median"].to_numpy(), h["size"].to_numpy()
        # The worst case of a product that took longer than a larger one of the same series.
        pairs = [(t[i] / t[j], i, j) for i in range(len(t)) for j in range(i + 1, len(t))]
        worst = max(pairs, default=(0, 0, 0))
        if worst[0] > 1.5:
            a, b = h.iloc[worst[1]], h.iloc[worst[2]]
            odd.append(f"{series(backend, device, dtype)} took {fmt_time(a['time_s_median'])} "
                       f"for x({a['m']}×{a['k']}) @ y({a['k']}×{a['n']}) but "
                       f"{fmt_time(b['time_s_median'])} for the larger "
                       f"x({b['m']}×{b['k']}) @ y({b['k']}×{b['n']})")
paragraphs = [" ".join(text)]
if odd:
    paragraphs.append(
        "Not every curve rises with size: " + "; ".join(odd) + ". The amount of work does not "
        "explain such points, and this run does not say what does (the BLAS library's "
        "threading and other activity on the machine are candidates); the interquartile "
        "ranges in `tables/matmul.csv` show how stable each timing was.")
if CUDA_MM:
    paragraphs.append(f"No CUDA points appear: CUDA was unavailable, because {why(CUDA_MM)}.")
md("\n\n".join(p for p in paragraphs if p))
bw_rows = MM[MM["kind"] == "copy"]
show_table(pd.DataFrame({
    "device": bw_rows["device"].map(device_name), "backend": bw_rows["backend"],
    "dtype": bw_rows["dtype"], "copy bandwidth (GB/s)": bw_rows["gb_s"].map(num),
    "status": bw_rows["status"],
}))

# %% [markdown]
# ## The first network
#
# The lesson trains one hidden layer of four ReLU units on its nine labelled points with
# full-batch SGD and cross-entropy, then tests on three more points. Here every
# configuration is trained from many seeds at once, so each figure shows a distribution,
# not one lucky or unlucky run.

# %%
#| echo: false
base = baseline_of("toy")
if base is None:
    md("The toy data set was not trained in this run.")
else:
    test = points_of("toy")
    n_test = int((test["split"] == "test").sum()) if len(test) else 0
    steps = ", ".join(pct(k / n_test, 0) for k in range(n_test)) + f" or {pct(1, 0)}"
    md(f"With {plural(base['width'], 'unit')}, {plural(base['depth'], 'hidden layer')}, "
       f"learning rate {base['lr']:g} and {plural(base['epochs'], 'epoch')}, over "
       f"{plural(base['n_seeds'], 'seed')} (on {device_name(train_device('toy'))}): final "
       f"training loss (cross-entropy) {ci_text(base, 'loss', False)}, mean training accuracy "
       f"{pct(base['train_acc_mean'])}, mean test accuracy {ci_text(base, 'test_acc', True)}. "
       f"Across seeds, {seed_range(base)}, and {pct(base['share_diverged'], 0)} of the seeds "
       f"diverged. "
       + ("So how well one run does is partly a matter of its seed."
          if not np.isclose(base["test_acc_min"], base["test_acc_max"]) else
          "Here the seed did not change the test result.")
       + (f" Keep in mind how small the test set is: with {n_test} test points, one run's "
          f"test accuracy can only be {steps}, and guessing one of {round(1 / chance('toy'))} "
          f"classes at random scores {pct(chance('toy'))} on average."
          if 0 < n_test <= 5 else ""))

# %% [markdown]
# ## Homework: more epochs, more units, more layers
#
# The homework changes one thing at a time: the number of epochs, the units in the hidden
# layer, and the number of hidden layers. Curves show the mean over seeds; the shaded band
# runs from the best to the worst seed. In each table the row marked "(lesson)" is the
# lesson's network; the others differ from it in that one setting.

# %%
#| echo: false
figure("loss_curves")

# %% [markdown]
# ### More epochs

# %%
#| echo: false
show_table(summary_table(axis_rows("toy", "epochs"), "epochs"))
md(axis_answer("toy", "epochs", "epochs"))

# %% [markdown]
# ### More units

# %%
#| echo: false
show_table(summary_table(axis_rows("toy", "width"), "width"))
md(axis_answer("toy", "width", "units"))

# %% [markdown]
# ### More layers

# %%
#| echo: false
show_table(summary_table(axis_rows("toy", "depth"), "depth"))
md(axis_answer("toy", "depth", "hidden layers"))
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
text = []
for name in ("toy", "blobs"):
    base = baseline_of(name)
    device = train_device(name)
    g = GRADS[(GRADS["dataset"] == name) & (GRADS["device"] == device) & (GRADS["stage"] == "init")]
    if base is None or g.empty:
        continue
    g = g[np.isclose(g["width"], base["width"]) & np.isclose(g["lr"], base["lr"])]
    ratios = []
    for depth, d in g.groupby("depth"):
        d = d.set_index("layer")["grad_norm_mean"]
        ratios.append((depth, d.loc[0] / d.loc[depth]))
    if len(ratios) >= 2:
        (d0, r0), (d1, r1) = ratios[0], ratios[-1]
        text.append(
            f"On {name} at initialisation, the first layer's gradient norm is {times(r0)} the "
            f"output layer's with {plural(d0, 'hidden layer')} and {times(r1)} with "
            f"{plural(d1, 'hidden layer')}.")
if text:
    text.append("Each extra layer multiplies another factor into the first layer's gradient; "
                "where those factors are below one the early layers learn more slowly, one "
                "reason why adding layers does not simply help.")
md(" ".join(text) or "This run did not vary depth, so there is nothing to compare.")

# %% [markdown]
# ## Blobs
#
# The homework's second task: Gaussian blobs from `make_blobs`, split into a training and a
# test set, learned by the same kind of network.

# %%
#| echo: false
blob_points = points_of("blobs")
if len(blob_points):
    n_train = int((blob_points["split"] == "train").sum())
    n_test = int((blob_points["split"] == "test").sum())
    md(f"This run's blobs: {n_train + n_test} points around "
       f"{blob_points['label'].nunique()} centres, {n_train} "
       f"({pct(n_train / (n_train + n_test), 0)}) for training and {n_test} "
       f"({pct(n_test / (n_train + n_test), 0)}) for testing; guessing a class at random "
       f"would score {pct(chance('blobs'))} on average.")
base = baseline_of("blobs")
if base is None:
    md("The blobs data set was not trained in this run.")
else:
    rows = rows_of("blobs")
    best = best_variant("blobs")
    md(f"The lesson's network reaches {ci_text(base, 'test_acc', True)} mean test accuracy on "
       f"the blobs after {plural(base['epochs'], 'epoch')} (mean training accuracy "
       f"{pct(base['train_acc_mean'])}). "
       + (f"The best variant tried — {network(best)} — reaches "
          f"{ci_text(best, 'test_acc', True)}: {verdict(base, best, 'test_acc', True)}."
          if best is not None else "No other configuration trained without diverging."))
    for axis, unit in (("epochs", "epochs"), ("width", "units"), ("depth", "hidden layers")):
        md(f"**{axis.capitalize()}.** " + axis_answer("blobs", axis, unit))
    labels = ["width", "depth", "epochs"] + (["lr"] if rows["lr"].nunique() > 1 else [])
    show_table(summary_table(rows.query("status == 'ok'").sort_values(
        ["depth", "width", "epochs", "lr"]), labels))

# %% [markdown]
# ### What the networks learned
#
# Decision regions: the class each network predicts at every point of the input plane
# (shaded), with the training points as circles and the test points as triangles. Each
# panel shows one representative seed, the one whose test accuracy is closest to the median
# over seeds, so it is typical rather than the best run.

# %%
#| echo: false
REGIONS = T["decision_regions"]
shown = REGIONS.drop_duplicates(["dataset", "role"]) if len(REGIONS) else REGIONS
order = sorted(set(shown.get("dataset", [])), key=lambda n: (n != "toy", n))
lessons, bests = [], []
for name in order:
    d = shown[shown["dataset"] == name].set_index("role")
    if "baseline" in d.index:
        lessons.append(f"{name}: {plural(d.loc['baseline', 'epochs'], 'epoch')}")
    if "best" in d.index:
        bests.append(f"{name}: {network(d.loc['best'])}")
if order:
    md("Left: the lesson's network after the lesson's epoch count ("
       + "; ".join(lessons) + "). Right: the best variant, at its own epoch count ("
       + "; ".join(bests) + "). Each panel therefore shows the network that its row in the "
       "tables above describes.")
else:
    md("No decision regions in this run: no network was trained.")
figure("decision_regions")

# %% [markdown]
# ## Training time per epoch: CPU vs CUDA

# %%
#| echo: false
figure("epoch_time")
cuda_train = cuda_reason(TIMES)
ok = TIMES[TIMES["status"] == "ok"]
ens = ok[ok["method"] == "ensemble"]
if cuda_train:
    md(f"**CUDA was unavailable for training:** {why(cuda_train)}. Only CPU times are shown, "
       f"and the table's CUDA column says so for every shape; the full table "
       f"(`tables/epoch_time.csv`) keeps a CUDA row per shape with this reason.")
elif (ens["device"] == "cuda").any():
    cuda_rows = ens[ens["device"] == "cuda"]
    ratio = cuda_rows["speedup_vs_cpu"].median()
    if not np.isfinite(ratio):
        md("CUDA and CPU epoch times were not measured for the same shapes, so this run cannot "
           "compare them.")
    else:
        md(f"Across the {len(cuda_rows)} combinations of dataset and shape, the median CUDA "
           f"epoch took {times(1 / ratio)} the CPU's time for the same ensemble. "
           + ("The GPU is slower here because these networks are tiny: an epoch is a handful "
              "of small kernels, and the fixed cost of launching each one outweighs the "
              "arithmetic." if ratio < 1 else
              "The GPU is faster here: batching all seeds into one ensemble gives each kernel "
              "enough work to outweigh the fixed cost of launching it."))
if len(ens):
    md(f"One epoch trains every seed of a shape together as one batched ensemble "
       f"({plural(int(ens['n_members'].max()), 'member')} at most); per member, an epoch took "
       f"between {fmt_time(ens['time_per_member_epoch_s'].min())} and "
       f"{fmt_time(ens['time_per_member_epoch_s'].max())}.")
loop = ok[ok["method"] == "loop"]
if len(ens) and len(loop):
    keys = ["dataset", "device", "width", "depth"]
    pair = ens.merge(loop, on=keys, suffixes=("_ens", "_loop"))
    gain = (pair["time_per_member_epoch_s_loop"] / pair["time_per_member_epoch_s_ens"]).median()
    speed = (f"{times(gain)} faster" if gain >= 1 else f"{times(1 / gain)} slower")
    md(f"Against the lesson's own loop, which trains one network at a time, the ensemble trains "
       f"each network {speed} per epoch (median over the {len(pair)} combinations of dataset, "
       f"device and shape timed both ways)"
       + (f": that is what makes {plural(int(ens['n_members'].max()), 'seed')} per "
          f"configuration affordable." if gain >= 1 else "."))


def timing_cells(row, device: str) -> list[str]:
    """The three times of one device for one shape, or its status where it has none."""
    if row.get(f"{device}_status") != "ok":
        status = row.get(f"{device}_status")
        return [status if isinstance(status, str) else "not run"] * 3
    return [fmt_time(row[f"{device}_{c}"]) for c in (
        "ensemble_time_per_epoch_s", "ensemble_time_per_member_epoch_s",
        "loop_time_per_epoch_s")]


BY_SHAPE = epoch_time_by_shape(TIMES)
HEADS = ["ensemble, per epoch", "ensemble, per member-epoch", "lesson loop, per epoch"]
columns = {"dataset": BY_SHAPE["dataset"], "width": BY_SHAPE["width"],
           "depth": BY_SHAPE["depth"], "members": BY_SHAPE["n_members"]}
for device in ("cpu", "cuda"):
    if f"{device}_status" not in BY_SHAPE:
        continue
    cells = [timing_cells(r, device) for _, r in BY_SHAPE.iterrows()]
    if device != "cpu" and not (BY_SHAPE[f"{device}_status"] == "ok").any():
        # Nothing timed on this device: one column that says so, the reason is in the prose.
        columns[device_name(device)] = [c[0] for c in cells]
        continue
    for i, head in enumerate(HEADS):
        columns[f"{device_name(device)} {head}"] = [c[i] for c in cells]
if len(BY_SHAPE):
    md("In the table, ensemble times are for all members of a shape together; the lesson's "
       "loop trains one network, so its time per epoch compares with the ensemble's time per "
       "member-epoch.")
show_table(pd.DataFrame(columns))


# %% [markdown]
# ## Method

# %%
#| echo: false
def count_list(values) -> str:
    """'2 threads', '1 or 2 threads', 'no threads recorded'."""
    values = [int(v) for v in values]
    if not values:
        return "no recorded thread count"
    return " or ".join(str(v) for v in values[:-1]) + (" or " if len(values) > 1 else "") \
        + plural(values[-1], "thread")


def threads_text(mm_threads, tr_threads) -> str:
    return (f"Matrix products on the CPU were timed with {count_list(mm_threads)} for both "
            f"torch and NumPy's BLAS; training was timed with {count_list(tr_threads)}")


# The stage writes "timer; stmt `...`; detail; detail" per row: list each part once.
parts = [m.split("; ") for m in MM.loc[MM["status"] == "ok", "method"].dropna().unique()]
timers = list(dict.fromkeys(p[0] for p in parts))
stmts = list(dict.fromkeys(x.removeprefix("stmt ") for p in parts for x in p[1:]
                           if x.startswith("stmt ")))
details = list(dict.fromkeys(x for p in parts for x in p[1:] if not x.startswith("stmt ")))
mm_threads = sorted(MM.loc[(MM["status"] == "ok") & (MM["device"] == "cpu"), "threads"].unique())
tr_threads = sorted(TIMES.loc[TIMES["status"] == "ok", "threads"].unique())
seeds = SUMMARY.groupby("dataset")["n_seeds"].max().sort_index(
    key=lambda names: [(n != "toy", n) for n in names])
runs = MM.loc[MM["status"] == "ok", "n_runs"]
items = [
    "**Timer.** " + (", ".join(f"`{t}`" for t in timers) or "no successful timings")
    + (" for every backend, timing " + ", ".join(
        s if s.startswith("`") else f"`{s}`" for s in stmts) if stmts else "")
    + ("; " + "; ".join(details) if details else "")
    + (". The timer calls a product in blocks of many calls, long enough that reading the clock "
       "(and, on CUDA, synchronising) costs nothing next to them, and repeats blocks until the "
       "minimum run time is reached; each time is the median over blocks of the time per call ("
       + (plural(int(runs.min()), "block") if runs.min() == runs.max()
          else f"between {int(runs.min())} and {int(runs.max())} blocks")
       + " per product, after warm-up). With few blocks the interquartile range, kept in the "
       "tables, says little: raise `matmul.min_run_time_s` for a tighter spread."
       if len(runs) else "."),
    "**CUDA synchronisation.** GPU timings wait for the device before the clock is read, so "
    "they time the finished work; the lesson's `%timeit` did not.",
    "**Threads.** " + threads_text(mm_threads, tr_threads) + ".",
    "**Dtypes.** Matrix products in " + " and ".join(sorted(MM["dtype"].dropna().unique()))
    + "; training in float32, as in the lesson.",
    "**Seeds.** " + ", ".join(f"{d}: {int(n)} seeds per configuration" for d, n in seeds.items())
    + ". Each seed initialises the network exactly as `torch.manual_seed(seed)` followed by "
    "the lesson's layers would; all seeds of a shape train together as one batched ensemble, "
    "and shorter epoch counts are checkpoints of the longest run.",
    "**Statistics.** Means are over the seeds that did not diverge (a non-finite loss counts "
    "as diverged and is reported as a share). Intervals are Student-t 95% intervals of the "
    "mean over seeds (accuracy intervals shown clipped to 0–100%); bands in the loss figures "
    "run from the best to the worst seed.",
    "**No overlapping timings.** The workflow runs every job that measures time alone, so no "
    "benchmark shares the cores with another job.",
]
md("\n".join(f"- {i}" for i in items))

# %% [markdown]
# ## Environment

# %%
#| echo: false
LIBRARY_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "accelerate": "Accelerate"}


def library(name) -> str:
    return LIBRARY_NAMES.get(str(name).lower(), str(name)) if name else "unknown"


def numpy_blas_text(np_blas: dict) -> str:
    """Library, version and the kernels it picked; not its thread count, which is the
    recording process's default rather than what the timings used (see the next row)."""
    if not np_blas:
        return "n/a"
    details = [f"kernels for {np_blas['architecture']}" if np_blas.get("architecture") else "",
               f"threading layer {np_blas['threading_layer']}"
               if np_blas.get("threading_layer") else ""]
    details = [d for d in details if d]
    return (f"{library(np_blas.get('internal_api'))} {np_blas.get('version') or ''}".strip()
            + (f" ({', '.join(details)})" if details else ""))


def torch_blas_text(t_blas: dict) -> str:
    if not t_blas or not t_blas.get("blas_info"):
        return "n/a"
    details = [f"CPU capability {t_blas['cpu_capability']}" if t_blas.get("cpu_capability")
               else "",
               f"parallel backend {t_blas['parallel_backend']}"
               if t_blas.get("parallel_backend") else ""]
    details = [d for d in details if d]
    return library(t_blas["blas_info"]) + (f" ({', '.join(details)})" if details else "")


TIMING_THREADS = (f"matrix products: {count_list(mm_threads)} (torch and NumPy's BLAS, set for "
                  f"every timing); training: {count_list(tr_threads)}")
for m in MACHINES:
    gpu = m.get("gpu", {}) or {}
    blas = m.get("blas", {}) or {}
    np_blas = blas.get("numpy") or {}
    if isinstance(np_blas, list):
        np_blas = np_blas[0] if np_blas else {}
    t_blas = blas.get("torch") or {}
    versions = m.get("versions", {}) or {}
    rows = [
        ("machine_id", m.get("machine_id")),
        ("host", m.get("host")),
        ("CPU", m.get("cpu_model")),
        ("cores (physical / logical)", f"{m.get('physical_cores')} / {m.get('logical_cores')}"),
        ("NumPy BLAS", numpy_blas_text(np_blas)),
        ("torch BLAS", torch_blas_text(t_blas)),
        ("threads used for timings", TIMING_THREADS),
        ("GPU", f"{gpu.get('name')}, {gpu.get('memory_gib')} GiB, driver {gpu.get('driver')}, "
                f"CUDA {gpu.get('cuda_version')}" if gpu.get("available")
                else f"none: {gpu.get('reason') or 'CUDA unavailable'}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("git commit", (m.get("git_commit") or "unknown")
         + (" (with uncommitted changes)" if m.get("git_dirty") else "")),
        ("config hash", m.get("config_hash")),
        ("recorded (UTC)", m.get("created_utc")),
    ]
    show_table(pd.DataFrame(rows, columns=["item", "value"]).astype(str))

# %% [markdown]
# ## About this report

# %%
#| echo: false
md(f"Rendered by {RENDERER_DETAIL} (renderer `{RENDERER}`)."
   + (f" Quarto was not used: {RENDERER_FALLBACK}." if RENDERER_FALLBACK else "")
   + " The tables behind every number are in `tables/` of the results folder as Parquet and "
   "CSV, the figures in `figures/`.")
