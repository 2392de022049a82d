"""The report's figures, drawn with matplotlib from the tables of ``mlpbench.tables``.

One function per figure takes the tables (name -> DataFrame) and returns a Figure;
``FIGURES`` maps each figure's name (also its file stem) to its function and
``make_figure(name, tables_dir, out_path)`` draws one figure to a PNG, atomically;
``make_figures(tables_dir, out_paths, workers)`` draws several, reading the tables once
per process, in ``workers`` processes side by side.
A figure whose data are missing or unavailable (e.g. CUDA on a machine without a GPU)
still renders and says so inside the plot.

Colours, labels, orderings and number formats come from ``mlpbench.present``, which the
report uses too, so a series is called and coloured the same in both.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window (this module is not imported by the report)

import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import ListedColormap, to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from mlpbench.contract import FIGURES as FIGURE_NAMES  # noqa: E402
from mlpbench.findings import train_device  # noqa: E402
from mlpbench.io import write_bytes_atomic  # noqa: E402
from mlpbench.present import (DEVICE_COLOURS, DIVERGED_COLOUR, DTYPE_STYLE,  # noqa: E402
                              PALETTE, SERIES_COLOURS, dataset_order, device_name, fmt_time,
                              num, series_label)
from mlpbench.tables import load_tables, pick_device  # noqa: E402

Tables = Mapping[str, pd.DataFrame]

DPI = 120

plt.rcParams.update({
    "font.size": 10.5,
    "axes.titlesize": 11,
    "axes.labelsize": 10.5,
    "legend.fontsize": 9,
    "figure.titlesize": 12.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
})


# --------------------------------------------------------------------------- building blocks


class _PlainLogFormatter(matplotlib.ticker.LogFormatterSciNotation):
    """Log-axis labels as plain numbers (0.02, 0.5, 300) in the range people read at a
    glance, powers of ten (10⁶) outside it; which ticks get a label is matplotlib's choice."""

    def __call__(self, x, pos=None):
        label = super().__call__(x, pos)
        if label and 1e-3 <= abs(x) < 1e4:
            return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
        return label


def _log(ax, which: str = "y") -> None:
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    axis.set_major_formatter(_PlainLogFormatter())
    axis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _figure(nrows: int, ncols: int, width: float, row_height: float,
            **kw) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, row_height * nrows + 0.6),
                             layout="constrained", squeeze=False, **kw)
    return fig, axes


def _note(ax, text: str) -> None:
    """Say in the panel why it is empty (or what is missing)."""
    ax.text(0.5, 0.5, textwrap.fill(text, 48), transform=ax.transAxes, ha="center",
            va="center", fontsize=10, color="#333333",
            bbox={"boxstyle": "round", "facecolor": "#F2F2F2", "edgecolor": "#BBBBBB"})


def _empty(ax, text: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    _note(ax, text)


def _table(tables: Tables, name: str) -> pd.DataFrame:
    return tables.get(name, pd.DataFrame())


def _unavailable_reasons(df: pd.DataFrame) -> dict[str, str]:
    """device -> reason, for devices with no ok row at all."""
    if df.empty or "status" not in df:
        return {}
    out = {}
    for device, g in df.groupby("device"):
        if not (g["status"] == "ok").any():
            reasons = g["reason"].dropna().astype(str)
            out[str(device)] = reasons.iloc[0] if len(reasons) else "no data"
    return out


def _subtitle(reasons: Mapping[str, str]) -> str:
    if not reasons:
        return ""
    parts = []
    for dev, why in reasons.items():
        name = device_name(dev)
        # Reasons usually name the device already ("CUDA unavailable: ...").
        parts.append(why if why.lower().startswith(name.lower()) else f"{name} unavailable: {why}")
    return "\n" + textwrap.fill("; ".join(parts), 110)


def _style(backend: str, device: str, dtype: str) -> dict:
    line, marker = DTYPE_STYLE.get(dtype, ("-", "o"))
    return {"color": SERIES_COLOURS.get((backend, device), PALETTE[5]), "linestyle": line,
            "marker": marker, "markersize": 5}


def _baselines(summary: pd.DataFrame) -> dict[str, pd.Series]:
    if summary.empty:
        return {}
    base = summary[summary["variant"] == "baseline"].drop_duplicates("dataset")
    return {row["dataset"]: row for _, row in base.iterrows()}


def _datasets(tables: Tables) -> list[str]:
    summary = _table(tables, "train_summary")
    return dataset_order(summary["dataset"]) if len(summary) else []


# --------------------------------------------------------------------------- matmul


def _matmul_ok(tables: Tables) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(products, products that are ok and not flagged noisy)."""
    mm = _table(tables, "matmul")
    if mm.empty:
        return mm, mm
    rows = mm[mm["kind"] == "matmul"]
    return rows, rows[(rows["status"] == "ok") & ~_noisy(rows)]


def _noisy(df: pd.DataFrame) -> pd.Series:
    return (df["noisy"].astype(bool) & (df["status"] == "ok") if "noisy" in df.columns
            else pd.Series(False, index=df.index))


NOISY_STYLE = {"marker": "x", "color": "#888888", "s": 36, "zorder": 4, "linewidths": 1.2}
NOISY_LABEL = "noisy: disturbed in every attempt, not used"


def fig_matmul_time(tables: Tables) -> Figure:
    """Median time per product vs size, log-log, per backend x device x dtype."""
    rows, ok = _matmul_ok(tables)
    fig, axes = _figure(1, 2, 10.5, 4.3)
    panels = [
        (axes[0, 0], ok[ok["case"] == "square"] if len(ok) else ok, "n",
         "matrix size n (m = k = n)", "Square products (m = k = n)"),
        (axes[0, 1], ok[ok["case"].isin(["gemv", "lesson"])] if len(ok) else ok, "kn",
         "matrix elements k·n (x is 1 × k)", "Matrix-vector products (m = 1)"),
    ]
    handles = {}
    for ax, df, xcol, xlabel, title in panels:
        ax.set_title(title)
        flagged = rows[_noisy(rows)] if len(rows) else rows
        flagged = (flagged[flagged["case"] == "square"] if xcol == "n" else
                   flagged[flagged["case"].isin(["gemv", "lesson"])])
        if df.empty and flagged.empty:
            _empty(ax, "No successful timings for this case.")
            continue
        df = df.assign(kn=df["k"] * df["n"])
        for (backend, device, dtype), g in df.groupby(["backend", "device", "dtype"]):
            g = g.sort_values(xcol)
            style = _style(backend, device, dtype)
            line = g[g["case"] != "lesson"]
            h, = ax.plot(line[xcol], line["time_s_median"] * 1e3, **style)
            handles[series_label(backend, device, dtype)] = h
            lesson = g[g["case"] == "lesson"]
            if len(lesson):
                ax.plot(lesson[xcol], lesson["time_s_median"] * 1e3, linestyle="none",
                        marker="*", markersize=13, color=style["color"],
                        markeredgecolor="black", markeredgewidth=0.6)
                handles["lesson case (1 × 6400 @ 6400 × 5000)"] = Line2D(
                    [], [], linestyle="none", marker="*", markersize=12, color="white",
                    markeredgecolor="black")
        if len(flagged):
            flagged = flagged.assign(kn=flagged["k"] * flagged["n"])
            handles[NOISY_LABEL] = ax.scatter(flagged[xcol], flagged["time_s_median"] * 1e3,
                                              **NOISY_STYLE)
        _log(ax, "x")
        _log(ax, "y")
        if xcol == "n":  # a handful of sizes: label them plainly
            sizes = sorted(set(df["n"]) | set(flagged["n"]))
            ax.set_xticks(sizes, [str(int(v)) for v in sizes])
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel(xlabel)
        ax.set_ylabel("median time per product (ms)")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3,
                   frameon=False)
    fig.suptitle("Matrix multiplication: time vs size" + _subtitle(_unavailable_reasons(rows)))
    return fig


def fig_matmul_roofline(tables: Tables) -> Figure:
    """Achieved GFLOP/s vs arithmetic intensity under both measured roofs (memory: the best
    copy; compute: the best square product per dtype, drawn from its ridge point); GB/s share.
    Rows flagged noisy are drawn as grey crosses and set no roof."""
    rows, ok = _matmul_ok(tables)
    fig, axes = _figure(1, 2, 10.5, 4.3)
    ax, ax2 = axes[0]
    ax.set_title("Roofline view: achieved GFLOP/s")
    ax2.set_title("Matrix-vector: share of measured bandwidth")
    handles: dict[str, object] = {}
    flagged = rows[_noisy(rows)] if len(rows) else rows
    if ok.empty and flagged.empty:
        _empty(ax, "No successful timings.")
        _empty(ax2, "No successful timings.")
    else:
        shares_drawn = False
        if ok.empty:
            _note(ax2, "Every timing was disturbed (flagged noisy): no roof is drawn and no "
                       "share of it is shown.")
        for (backend, device, dtype), g in ok.groupby(["backend", "device", "dtype"]):
            style = _style(backend, device, dtype)
            g = g.sort_values("intensity_flop_per_byte")
            h = ax.scatter(g["intensity_flop_per_byte"], g["gflop_s"], color=style["color"],
                           marker=style["marker"], s=30, zorder=3,
                           facecolors=style["color"] if dtype == "float32" else "none")
            handles[series_label(backend, device, dtype)] = h
            mv = g[g["case"].isin(["gemv", "lesson"])].assign(mib=lambda d: d["bytes"] / 2**20)
            mv = mv[np.isfinite(mv["bandwidth_share"])].sort_values("mib")
            if len(mv):
                ax2.plot(mv["mib"], mv["bandwidth_share"], **style)
                shares_drawn = True
        if len(flagged):
            handles[NOISY_LABEL] = ax.scatter(flagged["intensity_flop_per_byte"],
                                              flagged["gflop_s"], **NOISY_STYLE)
        shown = ok if len(ok) else flagged
        imin = shown["intensity_flop_per_byte"].min() / 2
        imax = shown["intensity_flop_per_byte"].max() * 2
        grid = np.geomspace(imin, imax, 50)
        top = (ok.groupby("device")["compute_roof_gflop_s"].max()
               if "compute_roof_gflop_s" in ok.columns else pd.Series(dtype=float))
        for i, (device, bw) in enumerate(ok.groupby("device")["bandwidth_gb_s"].median().items()):
            if not np.isfinite(bw):
                continue
            roof = top.get(device, np.nan)
            line = grid[bw * grid <= roof * 1.5] if np.isfinite(roof) else grid
            h, = ax.plot(line, bw * line, color="black", linestyle=[":", "-."][i % 2],
                         linewidth=1.2)
            handles[f"{device_name(device)} memory roof: "
                    f"{bw:.1f} GB/s × intensity"] = h
        # Compute roofs: the best square product per device and dtype, from the ridge on.
        roofs = (ok.groupby(["device", "dtype"])[["compute_roof_gflop_s", "ridge_flop_per_byte"]]
                 .median() if "compute_roof_gflop_s" in ok.columns else pd.DataFrame())
        for (device, dtype), r in roofs.iterrows():
            roof, ridge = r["compute_roof_gflop_s"], r["ridge_flop_per_byte"]
            if not np.isfinite(roof):
                continue
            start = ridge if np.isfinite(ridge) else imin
            h, = ax.plot([start, max(imax, start * 2)], [roof, roof], color="#444444",
                         linestyle="-" if dtype == "float32" else "--", linewidth=1.4)
            if np.isfinite(ridge):
                ax.plot([ridge], [roof], marker="|", markersize=10, color="#444444")
            handles[f"{device_name(device)} {dtype} compute roof: {num(roof)} GFLOP/s"
                    + (f" (ridge {num(ridge)} FLOP/B)" if np.isfinite(ridge) else "")] = h
        _log(ax, "x")
        _log(ax, "y")
        ax.set_xlabel("arithmetic intensity (FLOP / operand byte)")
        ax.set_ylabel("achieved GFLOP/s")
        if shares_drawn:
            ax2.axhline(1.0, color="black", linewidth=1, linestyle=":")
            _log(ax2, "x")
            ax2.set_xlabel("operand bytes (MiB)")
            ax2.set_ylabel("achieved GB/s ÷ measured copy GB/s")
            ax2.set_ylim(bottom=0)
        elif len(ok):
            _empty(ax2, "No memory roof: every copy was flagged noisy (disturbed), so no "
                        "product has a share of it.")
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncol=3,
                   frameon=False)
    fig.suptitle("Compute or memory bound?" + _subtitle(_unavailable_reasons(rows)))
    return fig


def fig_lesson_comparison(tables: Tables) -> Figure:
    """The lesson's three %timeit numbers, each beside this run's timings of the same product."""
    ref = _table(tables, "lesson_reference")
    rows, _ = _matmul_ok(tables)
    mm = _table(tables, "matmul")
    lesson = rows[rows["case"] == "lesson"] if len(rows) else rows
    transfers = (mm[(mm["case"] == "lesson") & (mm["kind"] == "h2d") & (mm["status"] == "ok")]
                 if len(mm) else mm)
    bars: list[tuple[str, float, str, bool, str]] = []  # label, time, colour, hatched, note
    groups = [("numpy", "cpu"), ("torch", "cpu"), ("torch", "cuda")]
    groups += sorted({(b, d) for b, d in zip(lesson.get("backend", []), lesson.get("device", []))}
                     - set(groups))
    for backend, device in groups:
        colour = SERIES_COLOURS.get((backend, device), PALETTE[5])
        for _, r in ref[(ref["backend"] == backend) & (ref["device"] == device)].iterrows():
            bars.append((f"lesson: {series_label(backend, device, r['dtype'])}"
                         + (" (not synced)" if device == "cuda" else ""), r["time_s"], colour,
                         True, ""))
        ours = lesson[(lesson["backend"] == backend) & (lesson["device"] == device)]
        for _, r in ours.sort_values("dtype").iterrows():
            ok = r["status"] == "ok"
            bars.append((f"this run: {series_label(backend, device, r['dtype'])}",
                         r["time_s_median"] if ok else np.nan, colour, False,
                         "" if ok else str(r["status"])))
        if device == "cuda":
            for _, r in transfers.sort_values("dtype").iterrows():
                bars.append((f"this run: copy y to the GPU, {r['dtype']}", r["time_s_median"],
                             PALETTE[4], False, ""))
    fig, axes = _figure(1, 1, 9.0, 0.4 * max(len(bars), 4) + 1.0)
    ax = axes[0, 0]
    if not bars:
        _empty(ax, "No timings of the lesson case.")
        return fig
    y = np.arange(len(bars))[::-1]
    times = np.array([b[1] for b in bars], dtype=float) * 1e3
    finite = times[np.isfinite(times)]
    for yi, (label, t, colour, hatched, note), tm in zip(y, bars, times):
        if np.isfinite(tm):
            ax.barh(yi, tm, color=to_rgba(colour, 0.35 if hatched else 0.85),
                    edgecolor=colour, hatch="//" if hatched else None, linewidth=1.2)
            ax.text(tm * 1.08, yi, fmt_time(t), va="center", fontsize=9)
        else:
            ax.text(finite.min() / 2.5 if len(finite) else 1, yi, note, va="center",
                    fontsize=9, style="italic", color="#555555")
    ax.set_yticks(y, [b[0] for b in bars])
    ax.set_ylim(-0.6, len(bars) - 0.4)
    _log(ax, "x")
    if len(finite):
        ax.set_xlim(finite.min() / 3, finite.max() * 4)
    ax.set_xlabel("time per product (ms, log scale)")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch="//",
                              label="lesson (%timeit, 100 loops)"),
                        Patch(facecolor="#999999", edgecolor="black",
                              label="this run (median of the timer's runs)")],
               loc="outside lower center", ncol=2, frameon=False)
    fig.suptitle("The lesson case x(1 × 6400) @ y(6400 × 5000): lesson vs this run"
                 + _subtitle(_unavailable_reasons(rows)))
    return fig


# --------------------------------------------------------------------------- training


def _shape_match(df: pd.DataFrame, **values) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for key, value in values.items():
        mask &= np.isclose(df[key].astype(float), float(value))
    return mask


def _band_plot(ax, curve: pd.DataFrame, colour: str, label: str) -> None:
    ax.fill_between(curve["epoch"], curve["loss_min"], curve["loss_max"], color=colour,
                    alpha=0.18, linewidth=0)
    ax.plot(curve["epoch"], curve["loss_mean"], color=colour, linewidth=1.6, label=label)


def _lr_varied(summary: pd.DataFrame) -> bool:
    return bool(len(summary)) and (summary["variant"] == "lr").any()


def fig_loss_curves(tables: Tables) -> Figure:
    """Training loss, mean over seeds with the min-max band, per homework axis and dataset.

    One column per axis: epochs, width, depth, and the learning rate where the run varied it.
    A setting at which every seed diverged has no curve (its loss is not finite): the panel
    names it in red, and the legend marks settings where some seeds diverged.
    """
    curves = _table(tables, "loss_curves")
    summary = _table(tables, "train_summary")
    datasets = _datasets(tables)
    axes_shown = ["epochs", "width", "depth"] + (["lr"] if _lr_varied(summary) else [])
    fig, axes = _figure(max(len(datasets), 1), len(axes_shown), 11.0 + 1.4 * (len(axes_shown) - 3),
                        3.4)
    if not datasets:
        for ax in axes[0]:
            _empty(ax, "No training results.")
        return fig
    bases = _baselines(summary)
    titles = {"epochs": "more epochs", "width": "more units (width)",
              "depth": "more layers (depth)", "lr": "learning rate"}
    for row, dataset in enumerate(datasets):
        for col in (1, 2):  # epochs, width and depth share a scale; the lr panel has its own
            axes[row, col].sharey(axes[row, 0])
        c = curves[curves["dataset"] == dataset] if len(curves) else curves
        device = train_device(summary, dataset)
        base = bases.get(dataset)
        for col, axis in enumerate(axes_shown):
            ax = axes[row, col]
            ax.set_title(f"{dataset}: {titles[axis]}" + (f" [{device}]" if device else ""))
            if device is None or base is None or c.empty:
                _empty(ax, f"No training curves for {dataset}"
                       + (" (every device unavailable)." if device is None else "."))
                continue
            cd = c[c["device"] == device]
            s = summary[(summary["dataset"] == dataset) & (summary["device"] == device)]
            if axis == "epochs":
                curve = cd[_shape_match(cd, width=base["width"], depth=base["depth"],
                                        lr=base["lr"])]
                checks = sorted(s[s["variant"].isin(["baseline", "epochs"])]["epochs"].unique())
                _band_plot(ax, curve, PALETTE[0], f"width {base['width']}, depth {base['depth']}")
                for e in checks:
                    ax.axvline(e, color="#555555", linestyle=":", linewidth=1)
                ax.plot([], [], color="#555555", linestyle=":",
                        label="checkpoints: " + ", ".join(f"{int(e)}" for e in checks))
            else:
                _axis_curves(ax, cd, s, base, axis)
            ax.set_xlabel("epoch")
            if col == 0:
                ax.set_ylabel("training loss (cross-entropy)")
            ax.legend(loc="upper right", fontsize=8.5)
    fig.suptitle("Training loss: mean over seeds, band = min-max over seeds "
                 "(diverged seeds left out)")
    return fig


def _axis_curves(ax, curves: pd.DataFrame, summary: pd.DataFrame, base: pd.Series,
                 axis: str) -> None:
    """The baseline and the settings along ``axis`` (others as in the baseline), at the
    baseline's epochs; settings whose every seed diverged are named in red."""
    fixed = [a for a in ("width", "depth", "lr") if a != axis]
    sel = summary[summary["variant"].isin(["baseline", axis])
                  & np.isclose(summary["epochs"], base["epochs"])].sort_values(axis)
    lost = []
    for i, (_, r) in enumerate(sel.iterrows()):
        value = f"{r[axis]:g}"
        if r["status"] == "diverged":
            lost.append(value)
            continue
        curve = curves[_shape_match(curves, **{axis: r[axis]}, **{a: base[a] for a in fixed})]
        curve = curve[curve["epoch"] <= base["epochs"]]
        part = f" ({int(r['n_diverged'])} of {int(r['n_seeds'])} seeds diverged)" \
            if r["n_diverged"] > 0 else ""
        _band_plot(ax, curve, PALETTE[i % len(PALETTE)], f"{axis} {value}{part}")
    if lost:
        ax.plot([], [], color=DIVERGED_COLOUR, marker="x", linestyle="none",
                label=f"{axis} {', '.join(lost)}: diverged")
        ax.text(0.03, 0.04, textwrap.fill(f"every seed diverged at {axis} {', '.join(lost)}: "
                                          "no finite loss to draw", 34),
                transform=ax.transAxes, fontsize=8.5, color=DIVERGED_COLOUR, va="bottom",
                bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": DIVERGED_COLOUR})
    drawn = sel[sel["status"] != "diverged"]
    if axis == "lr" and len(drawn):
        top = drawn["loss_max"].max() / max(drawn["loss_min"].min(), 1e-12)
        if np.isfinite(top) and top > 100:  # a learning rate that blew the loss up
            _log(ax, "y")
    if len(sel) < 2:
        _note(ax, f"Only one {axis} in this run.")


def fig_test_accuracy(tables: Tables) -> Figure:
    """Mean test accuracy over seeds on a width x depth grid, at the baseline epochs and lr."""
    summary = _table(tables, "train_summary")
    datasets = _datasets(tables)
    fig, axes = _figure(1, max(len(datasets), 1), 5.2 * max(len(datasets), 1), 4.4)
    if not datasets:
        _empty(axes[0, 0], "No training results.")
        return fig
    bases = _baselines(summary)
    cmap = plt.get_cmap("viridis").with_extremes(bad="#E6E6E6")
    image = None
    for ax, dataset in zip(axes[0], datasets):
        s = summary[summary["dataset"] == dataset]
        device, base = train_device(summary, dataset), bases.get(dataset)
        if device is None or base is None:
            ax.set_title(dataset)
            _empty(ax, f"No accuracy for {dataset}: every device unavailable.")
            continue
        s = s[(s["device"] == device) & np.isclose(s["epochs"], base["epochs"])
              & np.isclose(s["lr"], base["lr"])]
        widths, depths = sorted(s["width"].unique()), sorted(s["depth"].unique())
        grid = s.pivot_table(index="depth", columns="width", values="test_acc_mean",
                             aggfunc="first").reindex(index=depths, columns=widths)
        std = s.pivot_table(index="depth", columns="width", values="test_acc_std",
                            aggfunc="first").reindex(index=depths, columns=widths)
        lost = s.assign(lost=s["status"] == "diverged").pivot_table(
            index="depth", columns="width", values="lost", aggfunc="any"
        ).reindex(index=depths, columns=widths).fillna(False)
        image = ax.imshow(np.ma.masked_invalid(grid.to_numpy(dtype=float)), cmap=cmap,
                          vmin=0, vmax=1, origin="lower", aspect="auto")
        for i in range(len(depths)):
            for j in range(len(widths)):
                v, sd = grid.iat[i, j], std.iat[i, j]
                if np.isfinite(v):
                    text = f"{v:.0%}" + (f"\n±{sd:.0%}" if np.isfinite(sd) else "")
                    ax.text(j, i, text, ha="center", va="center", fontsize=8.5,
                            color="black" if v > 0.6 else "white")
                elif lost.iat[i, j]:
                    ax.text(j, i, "every seed\ndiverged", ha="center", va="center",
                            fontsize=7.5, color=DIVERGED_COLOUR)
                else:
                    ax.text(j, i, "not run", ha="center", va="center", fontsize=7.5,
                            color="#666666")
        ax.set_xticks(range(len(widths)), [str(int(w)) for w in widths])
        ax.set_yticks(range(len(depths)), [str(int(d)) for d in depths])
        ax.grid(False)
        ax.set_xlabel("width (units per hidden layer)")
        ax.set_ylabel("depth (hidden layers)")
        ax.set_title(f"{dataset} [{device}], {int(base['epochs'])} epochs, lr {base['lr']:g}")
    if image is not None:
        fig.colorbar(image, ax=axes[0].tolist(), label="mean test accuracy over seeds",
                     shrink=0.9, format=lambda x, _: f"{x:.0%}")
    fig.suptitle("Test accuracy vs width × depth (cell: mean ± std over seeds)")
    return fig


def fig_decision_regions(tables: Tables) -> Figure:
    """Arg-max class over the input plane for the baseline and the best variant, each at its
    own epoch count, with the data points."""
    regions = _table(tables, "decision_regions")
    points = _table(tables, "data_points")
    datasets = _datasets(tables)
    fig, axes = _figure(max(len(datasets), 1), 2, 9.6, 4.1)
    if not datasets:
        for ax in axes[0]:
            _empty(ax, "No training results.")
        return fig
    for row, dataset in enumerate(datasets):
        r = regions[regions["dataset"] == dataset] if len(regions) else regions
        p = points[points["dataset"] == dataset] if len(points) else points
        n_classes = int(max([r["pred"].max() if len(r) else -1,
                             p["label"].max() if len(p) else -1]) + 1)
        colours = [PALETTE[i % len(PALETTE)] for i in range(max(n_classes, 1))]
        for col, role in enumerate(("baseline", "best")):
            ax = axes[row, col]
            g = r[r["role"] == role] if len(r) else r
            if g.empty:
                ax.set_title(f"{dataset}: {role}")
                _empty(ax, f"No decision grid for the {role} network of {dataset}.")
                continue
            first = g.iloc[0]
            xs, ys = np.sort(g["x0"].unique()), np.sort(g["x1"].unique())
            z = g.pivot_table(index="x1", columns="x0", values="pred", aggfunc="first")
            z = z.reindex(index=ys, columns=xs).to_numpy(dtype=float)
            tint = ListedColormap([to_rgba(c, 0.28) for c in colours])
            ax.pcolormesh(xs, ys, np.ma.masked_invalid(z), cmap=tint, vmin=-0.5,
                          vmax=len(colours) - 0.5, shading="nearest")
            if len(p):
                for split, marker in (("train", "o"), ("test", "^")):
                    q = p[p["split"] == split]
                    ax.scatter(q["x0"], q["x1"], c=[colours[int(c)] for c in q["label"]],
                               marker=marker, s=30, edgecolors="black", linewidths=0.6,
                               zorder=3)
            else:
                ax.text(0.02, 0.02, "data points not available", transform=ax.transAxes,
                        fontsize=8, style="italic")
            ax.set_xlim(xs.min(), xs.max())
            ax.set_ylim(ys.min(), ys.max())
            ax.grid(False)
            ax.set_xlabel("x₀")
            ax.set_ylabel("x₁")
            who = "the lesson's network" if role == "baseline" else "best variant"
            ax.set_title(f"{dataset}: {who}\nwidth {first['width']}, depth {first['depth']}, "
                         f"lr {first['lr']:g}, {first['epochs']} epochs\n"
                         f"seed {first['seed']}: test accuracy {first['test_acc']:.0%} "
                         f"(mean over seeds {first['test_acc_mean']:.0%})", fontsize=10)
    handles = [Patch(facecolor=to_rgba(PALETTE[i], 0.6), edgecolor="black", label=f"class {i}")
               for i in range(int(max(regions["pred"].max() if len(regions) else 0,
                                      points["label"].max() if len(points) else 0)) + 1)]
    handles += [Line2D([], [], marker="o", linestyle="none", color="grey", label="train point"),
                Line2D([], [], marker="^", linestyle="none", color="grey", label="test point")]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False)
    fig.suptitle("Decision regions (shaded: predicted class) with the data points")
    return fig


def fig_grad_norms(tables: Tables) -> Figure:
    """Mean gradient norm of each layer's weights, per depth, at init and after training."""
    gn = _table(tables, "grad_norms")
    summary = _table(tables, "train_summary")
    datasets = _datasets(tables)
    fig, axes = _figure(2, max(len(datasets), 1), 5.2 * max(len(datasets), 1), 3.5)
    if not datasets or gn.empty:
        for ax in axes.ravel():
            _empty(ax, "No gradient norms (training unavailable).")
        return fig
    bases = _baselines(summary)
    # One colour per depth in every panel, and one legend for all of them below the panels,
    # where it cannot cover a curve or its band.
    colours = {d: PALETTE[i % len(PALETTE)] for i, d in enumerate(sorted(gn["depth"].unique()))}
    handles: dict[str, object] = {}
    for col, dataset in enumerate(datasets):
        g = gn[gn["dataset"] == dataset]
        device, base = (pick_device(g) if len(g) else None), bases.get(dataset)
        for row, stage in enumerate(("init", "final")):
            ax = axes[row, col]
            epochs = sorted(g.loc[g["stage"] == stage, "epochs"].unique())
            when = ("at initialisation" if stage == "init" else
                    f"after {int(epochs[0])} epochs" if len(epochs) == 1 else "after training")
            ax.set_title(f"{dataset} [{device}]: {when}"
                         + (f", width {int(base['width'])}" if base is not None else ""))
            if device is None or base is None:
                _empty(ax, f"No gradient norms for {dataset}.")
                continue
            s = g[(g["device"] == device) & (g["stage"] == stage)
                  & _shape_match(g, width=base["width"], lr=base["lr"])]
            for depth, d in s.groupby("depth"):
                d = d.sort_values("layer")
                colour = colours[depth]
                ax.fill_between(d["layer"], d["grad_norm_min"], d["grad_norm_max"],
                                color=colour, alpha=0.15, linewidth=0)
                h, = ax.plot(d["layer"], d["grad_norm_mean"], marker="o", color=colour)
                handles.setdefault(int(depth), h)
            _log(ax, "y")
            ax.set_xlabel("layer (0 = first Linear, depth = output Linear)")
            ax.set_ylabel("‖∂loss/∂W‖ (Frobenius)")
            ax.xaxis.get_major_locator().set_params(integer=True)
    if handles:
        depths = sorted(handles)
        fig.legend([handles[d] for d in depths], [f"depth {d}" for d in depths],
                   loc="outside lower center", ncol=len(depths), frameon=False,
                   title="hidden layers", title_fontsize=9)
    fig.suptitle("Gradient norm per layer vs depth: mean over seeds, band = min-max")
    return fig


def fig_epoch_time(tables: Tables) -> Figure:
    """Time per training epoch of one ensemble, CPU vs CUDA, per shape and dataset: the median
    over timed windows, with the windows' min-max range as error bars."""
    et = _table(tables, "epoch_time")
    datasets = dataset_order(et["dataset"]) if len(et) else []
    fig, axes = _figure(1, max(len(datasets), 1), 5.4 * max(len(datasets), 1), 4.2)
    if not datasets:
        _empty(axes[0, 0], "No training timings.")
        return fig
    if "ensemble" in set(et["method"]):
        et = et[et["method"] == "ensemble"]
    devices = ["cpu", "cuda"] + sorted(set(et["device"]) - {"cpu", "cuda"})
    colours = DEVICE_COLOURS
    reasons = _unavailable_reasons(et)
    for ax, dataset in zip(axes[0], datasets):
        d = et[et["dataset"] == dataset]
        shapes = d[["width", "depth"]].drop_duplicates().sort_values(["depth", "width"])
        x = np.arange(len(shapes))
        series, ranges = {}, {}
        for device in devices:
            dd = d[(d["device"] == device) & (d["status"] == "ok")]
            cells = [dd[(dd["width"] == w) & (dd["depth"] == dp)]
                     for w, dp in shapes.itertuples(index=False)]
            t = np.array([c["time_per_epoch_s"].median() for c in cells], dtype=float) * 1e3
            if np.isfinite(t).any():
                series[device] = t
                # the windows' min-max range (NaN from a single window: no bar drawn)
                lo = np.array([c["time_per_epoch_s_min"].min() for c in cells], dtype=float) * 1e3
                hi = np.array([c["time_per_epoch_s_max"].max() for c in cells], dtype=float) * 1e3
                ranges[device] = np.nan_to_num(np.vstack([t - lo, hi - t]), nan=0.0)
        step = 0.8 / max(len(series), 1)
        for i, (device, t) in enumerate(series.items()):
            ax.bar(x + (i - (len(series) - 1) / 2) * step, t, width=step,
                   color=colours.get(device, PALETTE[5]), yerr=ranges[device],
                   error_kw={"elinewidth": 1, "capsize": 2, "ecolor": "#333333"},
                   label=device_name(device))
        ax.set_xticks(x, [f"w{int(w)}\nd{int(dp)}" for w, dp in shapes.itertuples(index=False)],
                      fontsize=8.5)
        ax.set_xlabel("shape (w = width, d = depth)")
        ax.set_ylabel("time per epoch, whole ensemble (ms)")
        members = d["n_members"].dropna()
        missing = [dev for dev in devices if dev in reasons]
        note = "; ".join(f"{device_name(dev)} unavailable" for dev in missing)
        # The figure's subtitle already says which device was unavailable and why.
        ax.set_title(f"{dataset}" + (f": {int(members.max())} members per ensemble"
                                     if len(members) else ""))
        if series:
            values = np.concatenate(list(series.values()))
            values = values[np.isfinite(values)]
            if values.max() / values.min() > 30:  # wide range: log, else bars from zero
                _log(ax, "y")
            ax.legend(fontsize=8.5, loc="upper left", framealpha=0.9)
        elif note:
            _empty(ax, note + ".")
    fig.suptitle("Training time per epoch: CPU vs CUDA" + _subtitle(reasons))
    return fig


# --------------------------------------------------------------------------- machines

MACHINES_SHOWN = 12  # bars per panel; the other machines are in the report's tables


def _machine_bars(ax, values: pd.Series, labels: Mapping[str, str], colour: str,
                  highlight: set[str], lesson: str | None, title: str,
                  empty: str = "no timing on any machine") -> None:
    """Horizontal bars of ``values`` (machine_id -> seconds), fastest first, at most
    MACHINES_SHOWN of them (the rest counted in the panel), ``highlight`` (this run and the
    baseline) always among them and drawn bold; ``lesson`` hatched."""
    values = values[np.isfinite(values.astype(float)) & (values > 0)].sort_values()
    ax.set_title(title)
    if values.empty:
        _empty(ax, empty)
        return
    shown = values.iloc[:MACHINES_SHOWN]
    # This run and the baseline are always shown, after the fastest if they are not among them.
    extra = [m for m in values.index[MACHINES_SHOWN:] if m in highlight]
    shown = pd.concat([values.iloc[:MACHINES_SHOWN - len(extra)], values[extra]])
    y = np.arange(len(shown))[::-1]
    for yi, (mid, t) in zip(y, shown.items()):
        hatched = mid == lesson
        strong = mid in highlight and mid != lesson
        ax.barh(yi, t * 1e3, color=to_rgba(colour, 0.35 if hatched else 0.9 if strong else 0.55),
                edgecolor=colour, hatch="//" if hatched else None,
                linewidth=2.0 if strong else 1.0)
        ax.text(t * 1e3 * 1.08, yi, fmt_time(t), va="center", fontsize=8.5)
    ax.set_yticks(y, [labels.get(m, m) for m in shown.index])
    ax.set_ylim(-0.6, len(shown) - 0.4)
    _log(ax, "x")
    ax.set_xlim(shown.min() * 1e3 / 3, shown.max() * 1e3 * 5)
    ax.grid(axis="y", visible=False)
    if len(values) > len(shown):
        ax.set_title(f"{title}\n{len(shown)} of {len(values)} shown, the rest in the tables",
                     fontsize=10)


def fig_machines(tables: Tables) -> Figure:
    """Small multiples, one panel per series of the lesson product (backend x device x dtype)
    and one per data set x device of the training time per epoch (the shape most machines
    timed): every compared machine's time, fastest first, at most ``MACHINES_SHOWN`` each."""
    machines = _table(tables, "machines")
    mm = _table(tables, "machines_matmul")
    findings = _table(tables, "findings")
    if machines.empty or (machines["origin"] != "lesson").sum() < 2:
        fig, axes = _figure(1, 1, 8.0, 2.0)
        _empty(axes[0, 0], "One machine: nothing to compare (config compare:).")
        return fig
    labels = {m: (f"{m} (this run)" if o == "this run" else "lesson (slides)" if o == "lesson"
                  else f"{m} (reference)" if o == "reference" else m) + (" ★" if b else "")
              for m, o, b in zip(machines["machine_id"], machines["origin"],
                                 machines["is_baseline"])}
    own = set(machines.loc[(machines["origin"] == "this run") | machines["is_baseline"],
                           "machine_id"])
    lesson_id = next(iter(machines.loc[machines["origin"] == "lesson", "machine_id"]), None)
    timed = mm[(mm["case"] == "lesson") & (mm["status"] == "ok")]
    # (title, machine_id -> seconds, colour, what an empty panel says)
    panels: list[tuple[str, pd.Series, str, str]] = []
    for (backend, device, dtype), g in timed.groupby(["backend", "device", "dtype"], sort=True):
        shape = g[g["machine_id"] != lesson_id]
        if shape.empty:
            continue  # only the slides have this series
        m, k, n = shape.iloc[0][["m", "k", "n"]]
        g = g[(g["m"] == m) & (g["k"] == k) & (g["n"] == n)]  # like with like
        clean = g[~g["noisy"].astype(bool)]
        # Machines whose timing was flagged noisy are left out of the bars, and named.
        noisy = [labels.get(x, x) for x in dict.fromkeys(g.loc[g["noisy"].astype(bool),
                                                                "machine_id"])
                 if x not in set(clean["machine_id"])]
        note = ("" if not noisy else "\nflagged noisy, left out: " + ", ".join(noisy[:4])
                + (f" and {len(noisy) - 4} more" if len(noisy) > 4 else ""))
        panels.append((f"{series_label(backend, device, dtype)}, {m}×{k} @ {k}×{n}{note}",
                       clean.groupby("machine_id")["time_s_median"].min(),
                       SERIES_COLOURS.get((backend, device), PALETTE[5]),
                       "every machine's timing was flagged noisy" if noisy
                       else "no timing on any machine"))
    epoch = findings[findings["finding"] == "machine_epoch_fastest"] if len(findings) else findings
    for _, f in epoch.iterrows():
        ev = json.loads(f["evidence"])
        network = (f"{ev['n_members']} members" if ev.get("method", "ensemble") == "ensemble"
                   else "one network (the lesson's loop)")
        panels.append((f"epoch: {f['dataset']}, {device_name(f['device'])}, width "
                       f"{ev['width']} depth {ev['depth']}, {network}",
                       pd.Series(ev["times_per_epoch_s"], dtype=float),
                       DEVICE_COLOURS.get(f["device"], PALETTE[5]), "no timing on any machine"))
    ncols = 2 if len(panels) > 1 else 1
    nrows = max(1, -(-len(panels) // ncols))
    per_row = 0.3 * min(MACHINES_SHOWN, max(len(machines), 3)) + 1.0
    fig, axes = _figure(nrows, ncols, 12.0 if ncols == 2 else 8.0, per_row)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (title, values, colour, empty) in zip(axes.flat, panels):
        wrapped = "\n".join(textwrap.fill(line, 60) for line in title.split("\n"))
        _machine_bars(ax, values, labels, colour, own, lesson_id, wrapped, empty)
    if not panels:
        _empty(axes[0, 0], "No timing that two machines share.")
    fig.supxlabel("time (ms, log scale); bold: this run and the baseline (★), hatched: the "
                  "lesson's slides (%timeit, not synchronised on CUDA)", fontsize=9.5)
    fig.suptitle(f"{(machines['origin'] != 'lesson').sum()} machines: the lesson's product "
                 f"and the training time per epoch, fastest first")
    return fig


# --------------------------------------------------------------------------- entry points

_DRAW: dict[str, Callable[[Tables], Figure]] = {
    "matmul_time": fig_matmul_time,
    "matmul_roofline": fig_matmul_roofline,
    "lesson_comparison": fig_lesson_comparison,
    "loss_curves": fig_loss_curves,
    "test_accuracy": fig_test_accuracy,
    "decision_regions": fig_decision_regions,
    "grad_norms": fig_grad_norms,
    "epoch_time": fig_epoch_time,
    "machines": fig_machines,
}
# The names (and their order) are the contract's; a figure without a drawing fails at import.
FIGURES: dict[str, Callable[[Tables], Figure]] = {name: _DRAW[name] for name in FIGURE_NAMES}


def save_png(fig: Figure, out_path: str | os.PathLike) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    write_bytes_atomic(buf.getvalue(), out_path)


def _check_names(names: Iterable[str]) -> None:
    for name in names:
        if name not in FIGURES:
            raise KeyError(f"unknown figure {name!r}; known: {', '.join(FIGURES)}")


def _draw_png(name: str, tables: Tables, out_path: str | os.PathLike) -> Path:
    fig = FIGURES[name](tables)
    try:
        save_png(fig, out_path)
    finally:
        plt.close(fig)
    return Path(out_path)


def make_figure(name: str, tables_dir: str | os.PathLike, out_path: str | os.PathLike) -> Path:
    """Draw figure ``name`` from the tables in ``tables_dir`` to the PNG ``out_path``."""
    _check_names([name])
    return _draw_png(name, load_tables(tables_dir), out_path)


def make_figures(tables_dir: str | os.PathLike, out_paths: Iterable[str | os.PathLike],
                 workers: int = 1) -> Iterator[Path]:
    """Draw each PNG of ``out_paths``, the figure named by its file stem (``loss_curves.png``
    is ``FIGURES["loss_curves"]``), from the tables in ``tables_dir``.

    With ``workers`` = 1 the tables are read once and the figures drawn one after the other.
    With more (on a platform that can fork), that many forked processes draw them side by
    side, each reading the tables once; the PNGs are the same bytes either way. Yields each
    path, in the order given, once written. Raises KeyError for a stem that names no figure,
    before anything is read or drawn; ``mlpbench.contract.ContractError`` for a damaged table.
    """
    out_paths = [Path(p) for p in out_paths]
    _check_names(p.stem for p in out_paths)
    workers = min(int(workers), len(out_paths))
    if workers <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        tables = load_tables(tables_dir)
        for out in out_paths:
            yield _draw_png(out.stem, tables, out)
        return
    # Fork before this process reads any table: pyarrow's reader threads do not survive a
    # fork, and the workers then share nothing that was running.
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        jobs = [pool.submit(_draw_in_worker, out.stem, str(tables_dir), out) for out in out_paths]
        try:
            for job in jobs:
                yield job.result()
        except BaseException:
            for job in jobs:
                job.cancel()
            raise


_WORKER_TABLES: dict[str, dict[str, pd.DataFrame]] = {}


def _draw_in_worker(name: str, tables_dir: str, out_path: Path) -> Path:
    """One figure in a worker of :func:`make_figures`; the worker reads the tables once."""
    if tables_dir not in _WORKER_TABLES:
        _WORKER_TABLES[tables_dir] = load_tables(tables_dir)
    return _draw_png(name, _WORKER_TABLES[tables_dir], out_path)
