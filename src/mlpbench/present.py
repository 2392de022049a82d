"""How results are shown, shared by the figures and the report: number formats, labels,
colours and orderings. Nothing here decides what a result means (see ``mlpbench.findings``).

Colours follow the Okabe-Ito palette, which stays distinguishable with colour-vision
deficiencies; dtype is also told apart by line style and marker, not by colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mlpbench import backends, data

# Okabe-Ito, reordered so the first colours read well as lines on white.
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#E69F00", "#56B4E9", "#CC79A7", "#000000",
           "#F0E442"]
SERIES_COLOURS = {("numpy", "cpu"): PALETTE[0], ("torch", "cpu"): PALETTE[1],
                  ("torch", "cuda"): PALETTE[2]}
DEVICE_COLOURS = {"cpu": PALETTE[1], "cuda": PALETTE[2]}
DTYPE_STYLE = {"float32": ("-", "o"), "float64": ("--", "s")}
DIVERGED_COLOUR = "#B00020"

# The homework's axes: what a value of each is called, and a section title.
AXIS_UNITS = {"epochs": ("epoch", "epochs"), "width": ("unit", "units"),
              "depth": ("hidden layer", "hidden layers"), "lr": ("", "")}
AXIS_TITLES = {"epochs": "More epochs", "width": "More units", "depth": "More layers",
               "lr": "Learning rate"}
AXIS_ORDER = ("epochs", "width", "depth", "lr")
AXIS_NAMES = {"lr": "learning rate"}  # an axis's name in a sentence, where not its key

# The lesson's data sets by their config name; any other is shown under its own name.


def finite(x: Any) -> bool:
    try:
        return x is not None and math.isfinite(float(x))
    except (TypeError, ValueError):
        return False


def fmt_time(seconds: float) -> str:
    """'512 µs', '9.04 ms', '1.2 s'; 'n/a' for a missing or non-finite time."""
    if not finite(seconds):
        return "n/a"
    # Three significant digits; a value that rounds up to 1000 of a unit moves to the next one.
    for scale, unit in ((1e6, "µs"), (1e3, "ms")):
        if float(f"{seconds * scale:.3g}") < 1000:
            return f"{seconds * scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def spread_time(median: float, low: float, high: float) -> str:
    """A median time with the range of its timed windows: '512 µs (498–530 µs)'; the median
    alone ('512 µs, one window') when the range is unknown (a single window)."""
    if not finite(median):
        return "n/a"
    if not (finite(low) and finite(high)):
        return f"{fmt_time(median)}, one window"
    lo, hi = fmt_time(low), fmt_time(high)
    unit_lo, unit_hi = lo.rsplit(" ", 1)[-1], hi.rsplit(" ", 1)[-1]
    span = f"{lo.rsplit(' ', 1)[0]}–{hi}" if unit_lo == unit_hi else f"{lo}–{hi}"
    return f"{fmt_time(median)} ({span})"


# What an epoch-time comparison's verdict (mlpbench.findings.compare_ranges) means, in words.
SPREAD_WORDS = {
    "slower": "slower beyond the spread of the timed windows",
    "faster": "faster beyond the spread of the timed windows",
    "within_spread": "within the spread of the timed windows",
    "no_spread": "not comparable, as a single window has no spread",
}


def pct(x: float, digits: int = 1) -> str:
    """A fraction as a percentage: pct(0.4567) == '45.7%'."""
    return "n/a" if not finite(x) else f"{float(x) * 100:.{digits}f}%"


def num(x: float, digits: int = 3) -> str:
    return "n/a" if not finite(x) else f"{float(x):.{digits}g}"


def times(x: float) -> str:
    """A ratio as 'N×'."""
    if not finite(x):
        return "n/a"
    return f"{x:.2f}×" if round(x, 2) < 10 else f"{x:.0f}×"


def plural(n: float, word: str, words: str | None = None) -> str:
    """'1 thread', '2 threads', '1 hidden layer', '6 hidden layers'."""
    n = float(n)
    text = f"{int(n):,}" if n.is_integer() else f"{n:g}"
    return f"{text} {word if n == 1 else (words or word + 's')}"


def device_name(device: str) -> str:
    return "CUDA" if device == "cuda" else str(device).upper()


def library_name(backend: str) -> str:
    """A backend's label from its registry entry (mlpbench.backends): 'NumPy', 'torch'."""
    return backends.label(backend)


def series_label(backend: str, device: str, dtype: str) -> str:
    """'NumPy CPU float64', 'torch CUDA float32': one backend x device x dtype series."""
    return f"{library_name(backend)} {device_name(device)} {dtype}"


def dataset_order(names: Iterable[str]) -> list[str]:
    """The registry's order (mlpbench.data: the lesson's toy data first, then the homework's),
    then unregistered names alphabetically."""
    registered = {name: i for i, name in enumerate(data.names())}
    return sorted({str(n) for n in names}, key=lambda n: (registered.get(n, len(registered)), n))


def dataset_title(name: str) -> str:
    """A data set's title from its registry entry (mlpbench.data); else its name, capitalised."""
    return data.get(name).title if name in data.names() else name.replace("_", " ").capitalize()


def dataset_intro(name: str) -> str:
    """A data set's description from its registry entry (mlpbench.data); '' if unregistered."""
    return data.get(name).description if name in data.names() else ""


def axis_value(axis: str, value: float) -> str:
    """'20 epochs', '8 units', '2 hidden layers', 'learning rate 0.1'."""
    if axis == "lr":
        return f"learning rate {float(value):g}"
    return plural(value, *AXIS_UNITS.get(axis, (axis, axis)))


def axis_span(axis: str, start: float, end: float) -> str:
    """'20 to 50 epochs', '4 to 8 units', 'learning rate 0.01 to 0.1'."""
    if axis == "lr":
        return f"learning rate {float(start):g} to {float(end):g}"
    return f"{float(start):g} to " + axis_value(axis, end).split(" ", 1)[0] + " " + \
        AXIS_UNITS.get(axis, (axis, axis))[1]


def network(row: Any, with_lr: bool = True) -> str:
    """'4 units, 1 hidden layer, 1000 epochs, learning rate 0.1' for a train_summary row."""
    parts = [axis_value(a, row[a]) for a in ("width", "depth", "epochs")]
    return ", ".join(parts + ([axis_value("lr", row["lr"])] if with_lr else []))


def why(reason: str) -> str:
    """A stage's reason without its leading 'CUDA unavailable: ' (the sentence says that)."""
    prefix = "cuda unavailable:"
    return reason[len(prefix):].strip() if reason.lower().startswith(prefix) else reason


def ci_text(mean: float, low: float, high: float, as_pct: bool) -> str:
    """'45.7% (95% CI 30.1% to 61.2%)'; intervals are shown clipped to what the quantity can
    be: accuracies to 0-100%, losses (cross-entropy) to at least 0."""
    f = pct if as_pct else num
    if not (finite(low) and finite(high)):
        return f(mean)
    low = max(low, 0.0)
    if as_pct:
        high = min(high, 1.0)
    return f"{f(mean)} (95% CI {f(low)} to {f(high)})"


# What a comparison's verdict (mlpbench.findings) means, in words.
VERDICT_WORDS = {
    "better": "a real improvement, as the 95% intervals do not overlap",
    "worse": "a real change for the worse, as the 95% intervals do not overlap",
    "within_seed_noise": "within seed luck, as the 95% intervals overlap",
    "too_few_seeds": "too few seeds to separate it from seed luck",
}


LIBRARY_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "accelerate": "Accelerate"}


def blas_text(info: Any, library: str) -> str:
    """A machine record's BLAS entry for ``library`` ('numpy' or 'torch'), in words: the
    library, its version and the kernels it picked (thread counts are not part of the machine
    record: each timing job records its own, see mlpbench.environment)."""
    if isinstance(info, list):
        info = info[0] if info else {}
    info = info or {}
    if library == "numpy":
        if not info:
            return "n/a"
        name = info.get("internal_api")
        details = [f"kernels for {info['architecture']}" if info.get("architecture") else "",
                   f"threading layer {info['threading_layer']}"
                   if info.get("threading_layer") else ""]
        head = f"{LIBRARY_NAMES.get(str(name).lower(), name) if name else 'unknown'} " \
               f"{info.get('version') or ''}".strip()
    else:
        if not info.get("blas_info"):
            return "n/a"
        name = info["blas_info"]
        details = [f"CPU capability {info['cpu_capability']}" if info.get("cpu_capability")
                   else "",
                   f"parallel backend {info['parallel_backend']}"
                   if info.get("parallel_backend") else ""]
        head = LIBRARY_NAMES.get(str(name).lower(), str(name))
    details = [d for d in details if d]
    return head + (f" ({', '.join(details)})" if details else "")
