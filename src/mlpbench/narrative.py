"""The report's sentences and tables, written from the findings (``mlpbench.findings``) and
the summary tables (``mlpbench.tables``).

``Story(tables)`` takes the tables by name, ``findings`` included, and has one method per
passage of the report; each returns Markdown text (or a DataFrame to show as a table). It
states what the findings decided and never judges a number itself: every "faster",
"within seed luck" or "at chance" comes from a finding's verdict.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pandas as pd

from mlpbench.compare import CUDA_ACC_POINTS, CUDA_LOSS_RTOL
from mlpbench.findings import axis_rows
from mlpbench.present import (AXIS_NAMES, AXIS_ORDER, AXIS_TITLES, SPREAD_WORDS, VERDICT_WORDS,
                              axis_span, axis_value, blas_text, ci_text, dataset_intro,
                              dataset_order, dataset_title, device_name, finite, fmt_time, network,
                              num, pct, plural, series_label, spread_time, times, why)
from mlpbench.tables import epoch_time_by_shape


class Story:
    """The run told from its tables; ``tables["findings"]`` is ``findings_table``'s output."""

    def __init__(self, tables: Mapping[str, pd.DataFrame]):
        missing = [n for n in ("findings", "matmul", "lesson_reference", "train_summary",
                               "epoch_time", "data_points", "machine") if n not in tables]
        if missing:
            raise KeyError(f"tables missing for the report: {', '.join(missing)}")
        self.t = tables
        self.findings = tables["findings"]
        self.mm, self.lesson = tables["matmul"], tables["lesson_reference"]
        self.summary, self.times = tables["train_summary"], tables["epoch_time"]
        # The timing jobs' own readings (threads, load, clocks); absent in older result sets.
        self.env = tables.get("environment", pd.DataFrame(columns=["stage", "moment"]))
        self.machines = [{"machine_id": i, **json.loads(r)} for i, r in
                         zip(tables["machine"]["machine_id"], tables["machine"]["record_json"])]
        self.machine = self.machines[0] if self.machines else {}
        self.gpu = self.machine.get("gpu") or {}
        self.datasets = dataset_order(self.summary["dataset"].dropna())
        self.first = self.datasets[0] if self.datasets else None
        self.cuda_mm = self.cuda_reason("matmul")

    # ------------------------------------------------------------------ looking up findings

    def find(self, finding: str, **where: Any) -> list[dict]:
        """The findings of one rule (optionally filtered by column), evidence parsed as "ev"."""
        rows = self.findings[self.findings["finding"] == finding]
        for column, value in where.items():
            rows = rows[(rows[column] == value).fillna(False)]
        return [{**r, "ev": json.loads(r["evidence"])} for r in rows.to_dict("records")]

    def one(self, finding: str, **where: Any) -> dict | None:
        rows = self.find(finding, **where)
        return rows[0] if rows else None

    def cuda_reason(self, stage: str) -> str | None:
        """Why CUDA gave this stage nothing, or None when it produced results."""
        f = self.one("cuda_status", subject=stage)
        return None if f is None or f["verdict"] == "available" else f["ev"]["reason"]

    def trained(self, dataset: str | None) -> bool:
        """Did the lesson's network train on ``dataset`` (some seed without diverging)?"""
        f = self.one("training_result", dataset=dataset) if dataset else None
        return f is not None and f["verdict"] == "ok"

    def untrained(self, dataset: str | None) -> str:
        """Why the lesson's network has no result on ``dataset``, as a sentence."""
        f = self.one("training_result", dataset=dataset) if dataset else None
        if f is not None and f["verdict"] == "diverged":
            return (f"Every seed of the lesson's network diverged on {dataset} "
                    f"({f['ev']['row']['n_seeds']} seeds), so there is no result to show.")
        return f"The {dataset or 'first'} data set was not trained in this run."

    def rows_of(self, dataset: str) -> pd.DataFrame:
        """train_summary rows of ``dataset`` on the device its findings are about."""
        device = self.one("training_result", dataset=dataset)["device"]
        s = self.summary
        return s[(s["dataset"] == dataset) & (s["device"] == device)]

    def base_row(self, dataset: str) -> pd.Series:
        return self.rows_of(dataset).query("variant == 'baseline'").iloc[0]

    def label(self, dataset: str, row: Any) -> str:
        """The network's settings, with its learning rate where the run tried several."""
        lrs = self.summary.loc[self.summary["dataset"] == dataset, "lr"].nunique()
        return network(row, with_lr=lrs > 1)

    def axes_varied(self, dataset: str) -> list[str]:
        rows, base = self.rows_of(dataset), self.base_row(dataset)
        return [a for a in AXIS_ORDER if len(axis_rows(rows, base, a)) > 1]

    # ------------------------------------------------------------------ formatting pieces

    @staticmethod
    def ci(row: Any, metric: str) -> str:
        return ci_text(row[f"{metric}_mean"], row[f"{metric}_ci95_low"],
                       row[f"{metric}_ci95_high"], metric != "loss")

    @staticmethod
    def seed_range(f: dict) -> str:
        lo, hi = f["value"], f["reference_value"]
        if f["verdict"] == "seed_independent":
            return f"every seed scored {pct(lo, 0)} on the test points"
        return (f"single seeds ranged from {pct(lo, 0)} to {pct(hi, 0)} on the test points "
                f"(a spread of {(hi - lo) * 100:.0f} percentage points)")

    def summary_table(self, rows: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
        """One row per configuration; the lesson's own network is marked "(lesson)"; a
        configuration at which every seed diverged shows "diverged" in place of its means."""
        lesson = (rows["variant"] == "baseline").to_numpy()
        lost = (rows["status"] == "diverged").to_numpy()
        cells = {a: [f"{v:g}" + (" (lesson)" if mark and i == 0 else "")
                     for v, mark in zip(rows[a], lesson)] for i, a in enumerate(labels)}

        def unless_lost(values, instead="—"):
            return [instead if x else v for v, x in zip(values, lost)]

        return pd.DataFrame({
            **cells, "seeds": rows["n_seeds"].to_numpy(),
            "diverged": rows["share_diverged"].map(lambda v: pct(v, 0)).to_numpy(),
            "final training loss (cross-entropy), mean ± std": unless_lost(
                [f"{num(m)} ± {num(s, 2)}" for m, s in zip(rows["loss_mean"], rows["loss_std"])],
                "every seed diverged"),
            "train acc, mean": unless_lost(rows["train_acc_mean"].map(pct)),
            "test acc, mean (95% CI)": unless_lost([self.ci(r, "test_acc")
                                                    for _, r in rows.iterrows()]),
            "test acc, worst–best seed": unless_lost(
                [f"{pct(lo, 0)}–{pct(hi, 0)}" for lo, hi in zip(rows["test_acc_min"],
                                                                rows["test_acc_max"])]),
        })

    # ------------------------------------------------------------------ passages

    def machine_line(self) -> str:
        m, gpu = self.machine, self.gpu
        return (f"**Run:** `{m.get('machine_id', 'unknown')}`. **Machine:** "
                f"{m.get('host', 'unknown')}, {m.get('cpu_model', 'unknown CPU')} "
                f"({m.get('physical_cores', '?')} physical / {m.get('logical_cores', '?')} "
                f"logical cores). **GPU:** "
                + (f"{gpu.get('name')} ({gpu.get('memory_gib')} GiB)." if gpu.get("available")
                   else f"none usable — {gpu.get('reason') or 'CUDA unavailable'}.")
                + f" **Results recorded:** {m.get('created_utc', 'unknown time')}.")

    def glance(self) -> str:
        bullets = []
        fast = self.one("lesson_fastest")
        if fast:
            r = fast["ev"]["fastest"]
            shape = self.one("lesson_case_shape")
            which = ("This run's lesson case (not the lesson's size)"
                     if shape and shape["verdict"] == "differs" else "The lesson's product")
            bullets.append(
                f"{which} x({r['m']}×{r['k']}) @ y({r['k']}×{r['n']}) was fastest "
                f"with {series_label(r['backend'], r['device'], r['dtype'])}: "
                f"{fmt_time(fast['value'])}, "
                + (f"{times(fast['ev']['speedup_vs_numpy_float64'])} the speed of the lesson's "
                   f"baseline (NumPy float64, {fmt_time(fast['reference_value'])} here)."
                   if finite(fast["reference_value"]) else
                   "with no usable timing of the lesson's baseline (NumPy float64) here to "
                   "compare it with."))
        else:
            bullets.append("The lesson's product has no timing in this run that a conclusion "
                           "can rest on (see the flagged timings below).")
        bullets += self.trust_bullets()
        bullets.append("CUDA: " + (f"unavailable in this run, because {why(self.cuda_mm)}. Every "
                                   "GPU question below is left open rather than guessed."
                                   if self.cuda_mm else
                                   "available; GPU timings are CUDA-synchronised."))
        for name in self.datasets:
            if not self.trained(name):
                result = self.one("training_result", dataset=name) or {}
                bullets.append(f"{name}: " + ("every seed of the lesson's network diverged."
                                              if result.get("verdict") == "diverged" else
                                              "no training results in this run."))
                continue
            base, best = self.base_row(name), self.one("best_variant", dataset=name)
            bullets.append(
                f"{name}: the lesson's network ({self.label(name, base)}) reached "
                f"{self.ci(base, 'test_acc')} mean test accuracy over "
                f"{plural(base['n_ok'], 'seed')}"
                + (f"; the best variant ({self.label(name, best['ev']['row'])}) reached "
                   f"{pct(best['value'])}." if best["verdict"] != "none_trained" else
                   "; no other configuration trained without diverging."))
        return "\n".join(f"- {b}" for b in bullets)

    def trust_bullets(self) -> list[str]:
        """What the headline leaves out: timings flagged noisy, contradicted lesson timings."""
        out = []
        noisy, left = self.one("noisy_timings"), self.one("lesson_twin_left_out")
        if noisy and noisy["verdict"] == "flagged":
            out.append(
                f"{plural(noisy['value'], 'timing')} of {int(noisy['reference_value'])} "
                f"{'was' if noisy['value'] == 1 else 'were'} disturbed: other work took the "
                f"CPUs the benchmark ran on, in every attempt. "
                f"{'It is' if noisy['value'] == 1 else 'They are'} shown flagged *noisy* and "
                "no headline, verdict or speed-up in this report rests on "
                f"{'it' if noisy['value'] == 1 else 'them'}. Flagged: "
                + self.noisy_list(noisy["ev"]["rows"]) + ".")
        if left:
            out.append(
                "Left out of the headline: the lesson-case timing of "
                + " and ".join(series_label(*x.split()) for x in left["ev"]["series"])
                + ", because the same product timed again in the matrix-vector series "
                  "disagrees with it.")
        return out

    @staticmethod
    def noisy_list(rows: list[dict], most: int = 5) -> str:
        items = [f"{series_label(r['backend'], r['device'], r['dtype'])} "
                 + ("copy (the bandwidth reference)" if r["kind"] == "copy" else
                    f"{r['case']} {r['kind']} x({r['m']}×{r['k']}) @ y({r['k']}×{r['n']})")
                 + f" ({num(r['cpu_wait_threads'], 2)} threads waiting)" for r in rows[:most]]
        more = len(rows) - most
        return "; ".join(items) + (f"; and {more} more (`tables/matmul.csv`, column `noisy`)"
                                   if more > 0 else "")

    def noisy_part(self) -> list[str | pd.DataFrame]:
        """A sentence when no timing was flagged noisy; else a heading and the flagged rows."""
        table = self.noisy_table()
        if table.empty:
            return ["No timing of this run was flagged as disturbed."]
        return ["**Timings flagged as disturbed** (kept in the tables, used for no conclusion):",
                table]

    def noisy_table(self) -> pd.DataFrame:
        """The rows flagged noisy, with the reason (an empty table when none were)."""
        mm = self.mm
        rows = mm[mm["noisy"].astype(bool)] if "noisy" in mm.columns else mm.iloc[:0]
        return pd.DataFrame({
            "what": [series_label(b, d, t) for b, d, t in
                     zip(rows["backend"], rows["device"], rows["dtype"])],
            "product": [f"{c} {k}, x({m}×{kk}) @ y({kk}×{n})" for c, k, m, kk, n in
                        zip(rows["case"], rows["kind"], rows["m"], rows["k"], rows["n"])],
            "median (noisy)": rows["time_s_median"].map(fmt_time),
            "threads waiting for a CPU": rows["cpu_wait_threads"].map(lambda v: num(v, 2)),
            "attempts": rows["attempts"].astype(int).astype(str),
        })

    def lesson_table(self) -> pd.DataFrame:
        mm, lesson = self.mm, self.lesson
        ours = mm[(mm["case"] == "lesson") & (mm["kind"] == "matmul")]
        ours = ours.sort_values(["device", "backend", "dtype"])
        numpy = lesson.query("backend == 'numpy'")["time_s"].iloc[0]
        rows = [{"source": "lesson", "what": series_label(r["backend"], r["device"], r["dtype"]),
                 "time": fmt_time(r["time_s"]), "GB/s": num(r["gb_s"]),
                 "GFLOP/s": num(r["gflop_s"]),
                 "speed vs NumPy float64 (same source)": times(numpy / r["time_s"]),
                 "timing": f"{r['timer']}, {r['sync']}"} for _, r in lesson.iterrows()]
        rows += [{"source": "this run", "what": series_label(r["backend"], r["device"],
                                                             r["dtype"]),
                  "time": (fmt_time(r["time_s_median"])
                           + (" (noisy: not used)" if r.get("noisy", False) else "")
                           if r["status"] == "ok" else r["status"]),
                  "GB/s": num(r["gb_s"]), "GFLOP/s": num(r["gflop_s"]),
                  "speed vs NumPy float64 (same source)": times(r["speedup_vs_numpy_float64"]),
                  "timing": (f"median of {plural(r['n_runs'], 'sample')} of "
                             f"{plural(r['number_per_run'], 'call')}, "
                             f"{plural(r['threads'], 'thread')}"
                             + (", synchronised" if r["device"] == "cuda" else "")
                             if r["status"] == "ok" else r["reason"])}
                 for _, r in ours.iterrows()]
        return pd.DataFrame(rows)

    def lesson_shape_note(self) -> str:
        shape = self.one("lesson_case_shape")
        if not shape or shape["verdict"] != "differs":
            return ""
        a, b = shape["ev"]["run"], shape["ev"]["lesson"]
        return (f"Note: this run's configuration timed x({a['m']}×{a['k']}) @ y({a['k']}×"
                f"{a['n']}) as its lesson case, not the lesson's x({b['m']}×{b['k']}) @ "
                f"y({b['k']}×{b['n']}), so its times are not directly comparable with the "
                f"lesson's.")

    def gpu_answer(self) -> str:
        lesson_cuda = self.lesson.query("device == 'cuda'").iloc[0]
        gpu, copy = self.one("gpu_vs_cpu"), self.one("transfer_cost")
        intensity = self.one("lesson_intensity")
        text = []
        if self.cuda_mm or gpu is None:
            text.append(
                f"**CUDA was unavailable in this run:** {why(self.cuda_mm or 'no CUDA timing')}. "
                f"This run therefore cannot say whether the GPU is faster; the CPU results below "
                f"stand on their own. The lesson's {fmt_time(lesson_cuda['time_s'])} would mean "
                f"the GPU streamed the operands at {num(lesson_cuda['gb_s'])} GB/s, but it was "
                f"timed without synchronisation, so it may measure how fast kernels are queued "
                f"rather than how fast they finish.")
        else:
            ratio = gpu["ev"]["cpu_over_cuda"]
            text.append(
                f"With the clock synchronised, the product takes {fmt_time(gpu['value'])} on the "
                f"GPU ({self.gpu.get('name', 'GPU')}) against {fmt_time(gpu['reference_value'])}"
                f" for torch on the CPU, both float32: the GPU is "
                + (f"{times(ratio)} faster. " if gpu["verdict"] == "gpu_faster" else
                   f"slower, taking {times(1 / ratio)} the CPU's time. ")
                + f"The lesson reported {fmt_time(lesson_cuda['time_s'])} without "
                  f"synchronisation.")
            if copy:
                text.append(
                    f"But y first has to reach the GPU: copying it took "
                    f"{fmt_time(copy['value'])}, {times(copy['ev']['copy_over_product'])} the "
                    f"product itself. For a single product the GPU pays off only when the data "
                    f"already live there.")
            text += self.gpu_pitfalls()
        if intensity:
            bw = self.find("copy_bandwidth")
            text.append(
                f"Why: with one row in x, each element of y is read once and used for one "
                f"multiply-add, about {num(intensity['value'], 2)} FLOP per byte moved in "
                f"float32. "
                + ("Such a product is limited by memory bandwidth, not by arithmetic, so a "
                   "device is faster roughly in proportion to the bandwidth it can stream."
                   if intensity["verdict"] == "memory_bound" else
                   "That is enough arithmetic per byte for the processor's compute, not only "
                   "its memory, to set the pace.")
                + (" This run's copy benchmark measured " + ", ".join(
                    f"{num(f['value'])} GB/s on {device_name(f['device'])}" for f in bw) + "."
                   if bw else ""))
        text += [self.bound_sentence(f) for f in self.find("lesson_bound")
                 if f["subject"].endswith("float32") and f["subject"].startswith("torch")]
        return "\n\n".join(text)

    def bound_sentence(self, f: dict) -> str:
        """One lesson_bound finding in words: the two measured roofs, the ridge, the side."""
        e = f["ev"]
        return (f"From the two roofs measured in this run on {device_name(f['device'])} "
                f"(float32): compute {num(e['compute_roof_gflop_s'])} GFLOP/s, the best square "
                f"product, and memory {num(e['bandwidth_gb_s'])} GB/s, the best copy, the ridge "
                f"point lies at {num(f['reference_value'])} FLOP per byte. The lesson's product,"
                f" at {num(f['value'], 2)} FLOP per byte, is "
                + ("left of it: memory bound." if f["verdict"] == "memory_bound" else
                   "right of it: compute bound.")
                + f" It reached {pct(e['row']['bandwidth_share'], 0)} of the memory roof and "
                  f"{pct(e['row']['compute_share'], 0)} of the compute roof.")

    def gpu_pitfalls(self) -> list[str]:
        """The lesson's GPU pitfalls as measured: no synchronisation, pageable copy, TF32."""
        text = []
        unsync, pinned, tf32 = (self.one("unsynchronised_lesson"), self.one("pinned_copy"),
                                self.one("tf32"))
        if unsync:
            e = unsync["ev"]
            text.append(
                f"Timed the lesson's way, without synchronisation and "
                f"{plural(e['unsynchronised']['number_per_run'], 'call')} per `%timeit` loop, "
                f"the same product reads {fmt_time(unsync['value'])} on this GPU, against "
                f"{fmt_time(unsync['reference_value'])} when the clock waits for the result. "
                f"The lesson's {fmt_time(e['lesson_s'])} is closer to the "
                + ("synchronised time, so on a GPU like this one it most likely measured the "
                   "product itself: the launch queue filled and each launch waited for an "
                   "earlier product to finish." if unsync["verdict"] == "closer_to_synchronised"
                   else "unsynchronised one, so it most likely measured how fast the product "
                   "is queued, not how fast it runs.")
                + " (The lesson ran on another GPU; this compares the two ways of timing, not "
                  "the two GPUs.)")
        if pinned:
            e = pinned["ev"]
            text.append(
                f"Copying y from pinned (page-locked) host memory took "
                f"{fmt_time(pinned['value'])} ({num(e['pinned']['gb_s'])} GB/s) against "
                f"{fmt_time(pinned['reference_value'])} ({num(e['pageable']['gb_s'])} GB/s) "
                f"from ordinary pageable memory, as the lesson's `y.to('cuda')` copies: "
                + (f"pinned memory is {times(e['pageable_over_pinned'])} faster."
                   if pinned["verdict"] == "pinned_faster" else "no real gain here."))
        if tf32:
            e = tf32["ev"]
            text.append(
                f"{tf32['subject'][0].upper()}{tf32['subject'][1:]}: "
                f"{fmt_time(tf32['value'])} with TF32 allowed against "
                f"{fmt_time(tf32['reference_value'])} without "
                + (f"({times(e['off_over_on'])} faster). " if tf32["verdict"] == "tf32_faster"
                   else "(no real gain). ")
                + "torch leaves TF32 off for float32 matrix products by default "
                  "(`torch.backends.cuda.matmul.allow_tf32 = False` since torch 1.12), so "
                  "float32 products keep float32 precision unless a program opts in; every "
                  "other CUDA timing in this report has it off.")
        return text

    def numpy_answer(self) -> str:
        gap, split = self.one("lesson_numpy_gap"), self.one("dtype_vs_library")
        gpu = self.one("gpu_vs_cpu")
        text = [
            f"In the lesson NumPy took {times(gap['value'])} as long as torch on the CPU. The "
            f"two calls did not do the same work: `torch.rand` makes float32 tensors while "
            f"`np.random.random` makes float64 arrays, so NumPy had twice as many bytes to read."
            f" Dividing bytes by time, the lesson's NumPy streamed "
            f"{num(gap['ev']['numpy']['gb_s'])} GB/s and its torch "
            f"{num(gap['ev']['torch']['gb_s'])} GB/s: about the same memory speed, twice the "
            f"bytes."]
        if split and split["verdict"] != "incomplete":
            e = split["ev"]
            text.append(
                f"In this run, NumPy float64 took {times(e['numpy64_over_torch32'])} the time of "
                f"torch float32. Holding the library fixed, float64 cost NumPy "
                f"{times(e['dtype_numpy64_over_numpy32'])} its float32 time; holding the dtype "
                f"fixed, NumPy took {times(e['library_float32'])} torch's time in float32 and "
                f"{times(e['library_float64'])} in float64. "
                + ("So the dtype, not the library, explains most of the gap."
                   if split["verdict"] == "dtype" else "Here the difference between the "
                   "libraries is at least as large as the dtype's."))
            twins = self.find("twin_timing", verdict="disagree")
            doubts = [f"{series_label(*f['subject'].split())} took {fmt_time(f['value'])} here "
                      f"(interquartile range {pct(f['ev']['iqr_share'], 0)} of the median) but "
                      f"{fmt_time(f['reference_value'])} in the matrix-vector series"
                      for f in twins]
            if doubts:
                text.append(
                    "Caution: the same product was timed twice in this run, and the two timings "
                    f"disagree by more than {pct(twins[0]['ev']['tolerance'], 0)}: "
                    + "; ".join(doubts) + ". The ratios above are only as certain as these "
                    "timings, so treat the split between dtype and library as rough.")
        cache = self.cache_part()
        if cache:
            text.append(cache)
        text.append(
            "The lesson's CUDA number has a second catch: CUDA kernels run asynchronously and "
            "`%timeit` does not wait for them, so it can time the launch rather than the "
            "product. This run synchronises before reading the clock"
            + (f"; its float32 GPU time is {fmt_time(gpu['value'])}." if gpu else
               ", but had no GPU to time."))
        return "\n\n".join(text)

    def cache_part(self) -> str:
        """Warm against cold lesson-case timings (``lesson_cache`` findings), or ""."""
        rows = self.find("lesson_cache")
        if not rows:
            return ""
        helped = [f for f in rows if f["verdict"] == "cache_helps"]
        parts = [f"{series_label(*f['subject'].split())} {fmt_time(f['value'])} warm, "
                 f"{fmt_time(f['reference_value'])} cold" for f in rows]
        text = ("Every timing above reuses the same operands call after call, as `%timeit` "
                "does, so whatever part of `y` the caches keep between calls is read from the "
                "cache. (The lesson does not say what it ran on; where `y`, 128 MB in float32, is "
                "several times the last-level cache, as on most laptops, hardly any of it "
                "stays.) This run also timed the lesson's product with the caches emptied before "
                "every call (a buffer twice the size of the last-level cache written, untimed): "
                + "; ".join(parts) + ". ")
        if helped:
            return text + (
                f"For {len(helped)} of {len(rows)} of these the warm timing was faster beyond "
                "the spread of both (median ± half the interquartile range) and by more than "
                f"{pct(rows[0]['ev']['threshold'], 0)}: there the cache served part of `y` "
                "between calls, and such warm times move with whatever else the machine keeps "
                "in its cache. The comparisons with the lesson above use the warm times, as "
                "`%timeit` took them; the cold ones show the product without the cache's "
                "help, with `y` from main memory on every call.")
        return text + (f"None passes the bar (warm faster beyond both spreads and by more than "
                       f"{pct(rows[0]['ev']['threshold'], 0)}): on this machine the timings "
                       f"show no clear help from the cache.")

    def size_answer(self) -> str:
        text = []
        share, cache = self.one("lesson_bandwidth_share"), self.one("gemv_cache")
        square = self.one("best_square")
        if share:
            r = share["ev"]["row"]
            text.append(
                f"On the lesson's product ({num(r['bytes'] / 2**20)} MiB of operands), the best "
                f"backend by bandwidth share ({series_label(r['backend'], r['device'], r['dtype'])}"
                f") moved {num(r['gb_s'])} GB/s, {pct(share['value'], 0)} of the copy bandwidth "
                "measured on the same device: " + {
                    "above_copy_bandwidth": "more than the copy benchmark reached. Two things "
                    "can do that: the timer repeats the same product, so the caches can serve "
                    "part of the matrix; and the copy counts the bytes it reads and writes, "
                    "while the memory also reads each line the copy writes into before "
                    "overwriting it, so a read-only stream such as this product can pass the "
                    "copy's rate. Either way the product is limited by how fast its bytes "
                    "arrive, not by arithmetic.",
                    "bandwidth_bound": "memory bandwidth is what limits it.",
                    "below_bandwidth": "well below what the memory delivered in the copy "
                    "benchmark, so this timing was held back by something besides bandwidth.",
                }[share["verdict"]])
        for f in self.find("copy_agreement", verdict="disagree"):
            e = f["ev"]
            hi, lo = e["highest"], e["lowest"]
            text.append(
                f"The copies on {device_name(f['device'])} disagree: "
                f"{series_label(hi['backend'], f['device'], hi['dtype'])} moved "
                f"{num(hi['gb_s'])} GB/s, {series_label(lo['backend'], f['device'], lo['dtype'])}"
                f" only {num(lo['gb_s'])} GB/s ({times(f['value'])}). The memory roof is the "
                f"highest, what the memory delivered at best: a disturbed copy can only be "
                f"slower, never faster, than the memory allows"
                + (" (and `np.copyto` copies on one thread, while torch's copy uses its thread "
                   "pool)" if lo["backend"] == "numpy" and hi["backend"] != "numpy" else "")
                + ". Each rate is in the table below.")
        if cache:
            text.append(
                f"Smaller matrix-vector products can beat the copy bandwidth (up to "
                f"{pct(cache['value'], 0)} at {num(cache['ev']['row']['bytes'] / 2**20)} MiB): "
                f"their matrix can stay in the CPU caches between repetitions, and a read-only "
                f"stream can pass a copy's rate (the copy counts the bytes it reads and writes, "
                f"while the memory also reads each line the copy writes into).")
        if square:
            r = square["ev"]["row"]
            text.append(
                f"The best square product ran at {num(square['value'])} GFLOP/s "
                f"({series_label(r['backend'], r['device'], r['dtype'])}, n = {int(r['n'])}, "
                f"{num(r['intensity_flop_per_byte'])} FLOP per byte)"
                + (", far above what the memory roof allows a matrix-vector product."
                   if self.find("copy_bandwidth") else "."))
        odd = [f"{series_label(a['backend'], a['device'], a['dtype'])} took "
               f"{fmt_time(a['time_s_median'])} for x({a['m']}×{a['k']}) @ y({a['k']}×{a['n']})"
               f" but {fmt_time(b['time_s_median'])} for the larger x({b['m']}×{b['k']}) @ "
               f"y({b['k']}×{b['n']})"
               for a, b in ((f["ev"]["smaller"], f["ev"]["larger"])
                            for f in self.find("rises_with_size", verdict="does_not_rise"))]
        paragraphs = [" ".join(text), self.ridge_paragraph()]
        if odd:
            paragraphs.append(
                "Not every curve rises with size: " + "; ".join(odd) + ". The amount of work "
                "does not explain such points, and this run does not say what does (the BLAS "
                "library's threading and other activity on the machine are candidates); the "
                "interquartile ranges in `tables/matmul.csv` show how stable each timing was.")
        if self.cuda_mm:
            paragraphs.append(
                f"No CUDA points appear: CUDA was unavailable, because {why(self.cuda_mm)}.")
        return "\n\n".join(p for p in paragraphs if p)

    def ridge_paragraph(self) -> str:
        """Both measured roofs per device and dtype, the ridge point, and who lies where."""
        ridges = self.find("ridge_point")
        if not ridges and self.find("compute_roof"):
            return ("This run measured a compute roof but no memory roof (every copy was "
                    "flagged noisy, or none was timed), so it cannot place the products "
                    "against a ridge point.")
        if not ridges:
            return ("This run measured no compute roof (no square product it could use), so "
                    "it cannot place the products against a ridge point.")
        parts = []
        for f in ridges:
            e = f["ev"]
            big = e["largest_square"]
            parts.append(
                f"{device_name(f['device'])} {f['subject'].split()[-1]}: compute roof "
                f"{num(e['compute_roof_gflop_s'])} GFLOP/s, memory roof "
                f"{num(e['bandwidth_gb_s'])} GB/s, ridge at {num(f['value'])} FLOP per byte; "
                f"{plural(e['memory_bound'], 'product')} memory bound, "
                f"{e['compute_bound']} compute bound (the {int(big['n'])}×{int(big['n'])} "
                f"square product reached {pct(big['compute_share'], 0)} of the compute roof)")
        return ("Both roofs of the figure are measured in this run: the compute roof is the "
                "best rate of any square product in that dtype (the best over several shapes, "
                "as mamf-finder measures the achievable matmul FLOPS), the memory roof the best "
                "copy. A product whose arithmetic intensity lies below the ridge point (compute "
                "roof ÷ memory roof) cannot reach the compute roof, however well it runs: it is "
                "memory bound. " + "; ".join(parts) + ".")

    def copy_table(self) -> pd.DataFrame:
        c = self.mm[self.mm["kind"] == "copy"]
        noisy = c["noisy"].astype(bool) if "noisy" in c.columns else c["status"] != c["status"]
        return pd.DataFrame({"device": c["device"].map(device_name), "backend": c["backend"],
                             "dtype": c["dtype"], "copy bandwidth (GB/s)": c["gb_s"].map(num),
                             "status": c["status"].where(~noisy, "ok, noisy: not used")})

    def dataset_heading(self, name: str) -> str:
        """The data set's title and description, from its registry entry (mlpbench.data)."""
        intro = dataset_intro(name)
        return f"**{dataset_title(name)}.**" + (f" {intro}" if intro else "")

    def first_network(self) -> str:
        name = self.first
        if not self.trained(name):
            return self.untrained(name)
        base = self.base_row(name)
        spread = self.one("seed_spread", subject=f"{name}: baseline")
        size, guess = self.one("test_set_size", dataset=name), self.one("chance_level",
                                                                         dataset=name)
        n_test = int(size["value"]) if size else 0
        steps = ", ".join(pct(k / n_test, 0) for k in range(n_test)) + f" or {pct(1, 0)}"
        return (
            f"With {plural(base['width'], 'unit')}, {plural(base['depth'], 'hidden layer')}, "
            f"learning rate {base['lr']:g} and {plural(base['epochs'], 'epoch')}, over "
            f"{plural(base['n_seeds'], 'seed')} (on {device_name(base['device'])}): final "
            f"training loss (cross-entropy) {self.ci(base, 'loss')}, mean training accuracy "
            f"{pct(base['train_acc_mean'])}, mean test accuracy {self.ci(base, 'test_acc')}. "
            f"Across seeds, {self.seed_range(spread)}, and {pct(base['share_diverged'], 0)} of "
            f"the seeds diverged. "
            + ("So how well one run does is partly a matter of its seed."
               if spread["verdict"] == "seed_dependent" else
               "Here the seed did not change the test result.")
            + (f" Keep in mind how small the test set is: with {n_test} test points, one run's "
               f"test accuracy can only be {steps}, and guessing one of "
               f"{guess['ev']['n_classes']} classes at random scores {pct(guess['value'])} on "
               f"average." if size and size["verdict"] == "small" else ""))

    def axis_table(self, dataset: str, axis: str) -> pd.DataFrame:
        rows = axis_rows(self.rows_of(dataset), self.base_row(dataset), axis)
        return self.summary_table(rows, [axis])

    def axis_answer(self, dataset: str, axis: str) -> str:
        """The homework's question along one axis, answered from its findings."""
        rows = axis_rows(self.rows_of(dataset), self.base_row(dataset), axis)
        lost = rows[rows["status"] == "diverged"]
        name = AXIS_NAMES.get(axis, axis)
        lost_text = (f"Every seed diverged at {name} " + ", ".join(f"{v:g}" for v in lost[axis])
                     + "." if len(lost) else "")

        def of_axis(finding: str) -> list[dict]:
            return [f for f in self.find(finding, dataset=dataset)
                    if f["ev"].get("axis") == axis]

        effects = {f["ev"].get("metric"): f for f in of_axis("axis_effect")}
        if "loss" not in effects:
            return ("Too few configurations along this axis trained without diverging to "
                    f"compare them. {lost_text}").strip()
        loss, acc = effects["loss"], effects["test_acc"]
        b, top = loss["ev"]["baseline"][axis], loss["ev"]["row"][axis]
        # A loss that ended above where it started is said so below; an overlap of intervals
        # as wide as an exploding loss's is no statement about seed luck worth making.
        rose = any(f["verdict"] == "rose" and f["ev"]["row"][axis] == top
                   for f in of_axis("stalled"))
        loss_words = ("it ended above its value before the first step, see below" if rose
                      else VERDICT_WORDS[loss["verdict"]])
        words = [f"From {axis_span(axis, b, top)}, the final training loss went from "
                 f"{num(loss['reference_value'])} to {num(loss['value'])} "
                 f"({loss_words}), and the test accuracy from "
                 f"{pct(acc['reference_value'])} to {pct(acc['value'])} "
                 f"({VERDICT_WORDS[acc['verdict']]})."]
        for f in of_axis("at_chance"):
            if f["verdict"] == "at_chance":
                words.append(f"That is chance level: guessing one of {f['ev']['n_classes']} "
                             f"classes at random scores {pct(f['reference_value'])} on average.")
        for f in of_axis("stalled"):
            if f["verdict"] == "stalled":
                r = f["ev"]["row"]
                words.append(
                    f"At {axis_value(axis, top)} the mean training loss only went from "
                    f"{num(f['reference_value'])} before the first step to {num(f['value'])} "
                    f"after {plural(r['epochs'], 'epoch')}: with learning rate {r['lr']:g} these "
                    f"networks barely start to learn in that time.")
            elif f["verdict"] == "rose":
                r = f["ev"]["row"]
                words.append(
                    f"At {axis_value(axis, top)} the mean training loss rose, from "
                    f"{num(f['reference_value'])} before the first step to {num(f['value'])} "
                    f"after {plural(r['epochs'], 'epoch')}: with learning rate {r['lr']:g} the "
                    f"steps overshoot, and training moves away from a solution.")
        for f in of_axis("axis_best"):
            if f["ev"]["row"][axis] != top:
                where = ("the lesson's own setting" if f["verdict"] == "baseline"
                         else f"{axis} {f['ev']['row'][axis]:g}")
                words.append(f"The best mean test accuracy along this axis was at {where}: "
                             f"{pct(f['value'])}.")
        spread = {f["subject"]: f for f in self.find("seed_spread", dataset=dataset)}
        words.append(
            f"How much is seed luck? For the lesson's network alone, "
            f"{self.seed_range(spread[f'{dataset}: baseline'])}, and "
            f"{pct(self.base_row(dataset)['share_diverged'], 0)} of its seeds diverged; at "
            f"{axis_value(axis, top)}, {self.seed_range(spread[f'{axis} {top:g}'])}.")
        words.append(lost_text)
        part = [f for f in self.find("divergence", dataset=dataset)
                if f["ev"]["row"]["variant"] in ("baseline", axis)]
        if part:
            worst = max(part, key=lambda f: f["value"])
            words.append(f"Divergence: up to {pct(worst['value'], 0)} of the seeds diverged "
                         f"(at {name} {worst['ev']['row'][axis]:g}); the means above leave "
                         f"them out.")
        return " ".join(w for w in words if w)

    def grad_answer(self) -> str:
        text = []
        for name in self.datasets:
            ratios = self.find("grad_ratio", dataset=name)
            if len(ratios) >= 2:
                a, b = ratios[0], ratios[-1]
                text.append(
                    f"On {name} at initialisation, the first layer's gradient norm is "
                    f"{times(a['value'])} the output layer's with "
                    f"{plural(a['ev']['depth'], 'hidden layer')} and {times(b['value'])} with "
                    f"{plural(b['ev']['depth'], 'hidden layer')}.")
        if text:
            text.append("Each extra layer multiplies another factor into the first layer's "
                        "gradient: factors below one shrink it, so the early layers learn more "
                        "slowly (one reason why adding layers does not simply help), and factors "
                        "above one grow it; the ratios above show which this run saw.")
        return " ".join(text) or "This run did not vary depth, so there is nothing to compare."

    def dataset_passages(self, name: str) -> list[str | pd.DataFrame]:
        """A further data set's section: heading, data, baseline vs best, every axis, table."""
        out: list[str | pd.DataFrame] = [
            f"### {dataset_title(name)}\n\n{dataset_intro(name)}"]
        size, guess = self.one("test_set_size", dataset=name), self.one("chance_level",
                                                                         dataset=name)
        if size and guess:
            n_train, n_test = size["ev"]["n_train"], size["ev"]["n_test"]
            n = n_train + n_test
            out.append(f"This run's {name}: {n} points in {guess['ev']['n_classes']} classes, "
                       f"{n_train} ({pct(n_train / n, 0)}) for training and {n_test} "
                       f"({pct(n_test / n, 0)}) for testing; guessing a class at random would "
                       f"score {pct(guess['value'])} on average.")
        if not self.trained(name):
            return [*out, self.untrained(name)]
        base, best = self.base_row(name), self.one("best_variant", dataset=name)
        ci95 = best["ev"].get("row_ci95", {})
        out.append(
            f"The lesson's network reaches {self.ci(base, 'test_acc')} mean test accuracy on "
            f"{name} after {plural(base['epochs'], 'epoch')} (mean training accuracy "
            f"{pct(base['train_acc_mean'])}). "
            + (f"The best variant tried — {self.label(name, best['ev']['row'])} — reaches "
               f"{ci_text(best['value'], ci95.get('ci95_low'), ci95.get('ci95_high'), True)}: "
               f"{VERDICT_WORDS[best['verdict']]}." if best["verdict"] != "none_trained"
               else "No other configuration trained without diverging."))
        out += [f"**{AXIS_TITLES[a]}.** " + self.axis_answer(name, a)
                for a in self.axes_varied(name)]
        rows = self.rows_of(name)
        labels = ["width", "depth", "epochs"] + (["lr"] if rows["lr"].nunique() > 1 else [])
        out.append(self.summary_table(rows.sort_values(["depth", "width", "epochs", "lr"]),
                                      labels))
        return out

    def regions_caption(self) -> str:
        r = self.t.get("decision_regions", pd.DataFrame())
        shown = r.drop_duplicates(["dataset", "role"]) if len(r) else r
        order = dataset_order(shown.get("dataset", []))
        if not order:
            return "No decision regions in this run: no network was trained."
        pick = [(n, row) for n in order for _, row in shown[shown["dataset"] == n].iterrows()]
        lessons = [f"{n}: {plural(row['epochs'], 'epoch')}" for n, row in pick
                   if row["role"] == "baseline"]
        bests = [f"{n}: {self.label(n, row)}" for n, row in pick if row["role"] == "best"]
        return ("Left: the lesson's network after the lesson's epoch count ("
                + "; ".join(lessons) + "). Right: the best variant, at its own epoch count ("
                + "; ".join(bests) + "). Each panel therefore shows the network that its row in "
                "the tables above describes.")

    def epoch_time_answer(self) -> list[str]:
        out = []
        cuda, gpu = self.cuda_reason("epoch_time"), self.one("cuda_vs_cpu_epoch")
        spread, gain = self.one("member_epoch_range"), self.one("ensemble_gain")
        if cuda:
            out.append(f"**CUDA was unavailable for training:** {why(cuda)}. Only CPU times are "
                       f"shown, and the table's CUDA column says so for every shape; the full "
                       f"table (`tables/epoch_time.csv`) keeps a CUDA row per shape with this "
                       f"reason.")
        elif gpu and gpu["verdict"] == "not_comparable":
            out.append("CUDA and CPU epoch times were not measured for the same shapes, so this "
                       "run cannot compare them.")
        elif gpu:
            out.append(
                f"Across the {gpu['ev']['n_shapes']} combinations of dataset and shape, the "
                f"median CUDA epoch took {times(1 / gpu['value'])} the CPU's time for the same "
                f"ensemble. " + self._separation(gpu, "CUDA", "the CPU") + " "
                + ("The GPU is slower here because these networks are tiny: an epoch is a "
                   "handful of small kernels, and the fixed cost of launching each one "
                   "outweighs the arithmetic." if gpu["verdict"] == "gpu_slower" else
                   "The GPU is faster here: batching all seeds into one ensemble gives each "
                   "kernel enough work to outweigh the fixed cost of launching it."
                   if gpu["verdict"] == "gpu_faster" else ""))
        if spread:
            out.append(f"One epoch trains every seed of a shape together as one batched "
                       f"ensemble ({plural(spread['ev']['max_members'], 'member')} at most); per "
                       f"member, an epoch took between {fmt_time(spread['value'])} and "
                       f"{fmt_time(spread['reference_value'])}.")
        if gain:
            faster = gain["value"] >= 1
            out.append(
                f"Against the lesson's own loop, which trains one network at a time, the "
                f"ensemble's median time per member-epoch is "
                f"{times(gain['value'] if faster else 1 / gain['value'])} "
                f"{'faster' if faster else 'slower'} (median over the "
                f"{gain['ev']['n_pairs']} combinations of dataset, device and shape timed both "
                f"ways). " + self._separation(gain, "the ensemble", "the loop")
                + (f" That is what makes {plural(gain['ev']['max_members'], 'seed')} per "
                   f"configuration affordable." if gain["verdict"] == "ensemble_faster" else ""))
        out += self.epoch_step_sentences()
        return out

    @staticmethod
    def _separation(f: dict, this: str, that: str) -> str:
        """How many shapes' timed windows separate ``this`` from ``that`` (a finding's counts)."""
        ev = f["ev"]
        n = ev.get("n_shapes", ev.get("n_pairs", 0))
        if not n:
            return ""
        counts = [(ev.get("n_faster", 0), "faster"), (ev.get("n_slower", 0), "slower"),
                  (ev.get("n_within_spread", 0), "within the spread"),
                  (ev.get("n_no_spread", 0), "not comparable (a single window)")]
        said = [f"{word} in {k}" for k, word in counts if k]
        tail = {"mixed": ", so the direction depends on the shape",
                "within_spread": ", so this run cannot tell them apart"}.get(f["verdict"], "")
        return (f"Judged by the spread of the timed windows (different only when the fastest-to-"
                f"slowest ranges do not overlap), {this} was " + ", ".join(said)
                + f" of the {n} comparisons with {that}{tail}.")

    def epoch_step_sentences(self) -> list[str]:
        """Per dataset (and device), which steps in width or depth changed the ensemble's epoch
        time beyond the spread of the timed windows (findings ``epoch_time_step``)."""
        out = []
        steps = [r for r in self.find("epoch_time_step") if r["ev"]["method"] == "ensemble"]
        for name in dataset_order({r["dataset"] for r in steps}):
            for device in sorted({r["device"] for r in steps if r["dataset"] == name}):
                mine = [r for r in steps if r["dataset"] == name and r["device"] == device]
                apart = [f"{r['ev']['axis']} {r['ev']['from']} → {r['ev']['to']} "
                         f"({r['verdict']}: {fmt_time(r['reference_value'])} → "
                         f"{fmt_time(r['value'])})" for r in mine
                         if r["verdict"] in ("slower", "faster")]
                close = [f"{r['ev']['axis']} {r['ev']['from']} → {r['ev']['to']}" for r in mine
                         if r["verdict"] == "within_spread"]
                lone = [r for r in mine if r["verdict"] == "no_spread"]
                text = (f"{dataset_title(name)}, {device_name(device)}: "
                        + ("these steps in width or depth changed the ensemble's epoch time "
                           "beyond the spread of the timed windows: " + "; ".join(apart)
                           if apart else
                           "no step in width or depth changed the ensemble's epoch time "
                           "beyond the spread of the timed windows")
                        + (f". {SPREAD_WORDS['within_spread'].capitalize()}, so not called "
                           f"different: " + ", ".join(close) if close else "")
                        + (f". {plural(len(lone), 'step')} had a single window and "
                           f"{'is' if len(lone) == 1 else 'are'} not compared" if lone else "")
                        + ".")
                out.append(text)
        return out

    def epoch_time_table(self) -> pd.DataFrame:
        by_shape = epoch_time_by_shape(self.times)
        heads = {"ensemble_time_per_epoch_s": "ensemble, per epoch",
                 "ensemble_time_per_member_epoch_s": "ensemble, per member-epoch",
                 "loop_time_per_epoch_s": "lesson loop, per epoch"}
        columns = {"dataset": by_shape["dataset"], "width": by_shape["width"],
                   "depth": by_shape["depth"], "members": by_shape["n_members"]}
        for device in [c.removesuffix("_status") for c in by_shape if c.endswith("_status")]:
            status = by_shape[f"{device}_status"].fillna("not run")
            if device != "cpu" and not (status == "ok").any():
                columns[device_name(device)] = status  # one column saying so; reason in prose
                continue
            for col, head in heads.items():
                ranged = f"{device}_{col}_min" in by_shape
                columns[f"{device_name(device)} {head}" + (", median (range)" if ranged else "")] = [
                    (spread_time(t, lo, hi) if ranged else fmt_time(t)) if s == "ok" else s
                    for t, lo, hi, s in zip(
                        by_shape[f"{device}_{col}"],
                        by_shape.get(f"{device}_{col}_min", by_shape[f"{device}_{col}"]),
                        by_shape.get(f"{device}_{col}_max", by_shape[f"{device}_{col}"]),
                        status)]
        return pd.DataFrame(columns)

    # ------------------------------------------------------------------ method, environment

    def threads(self, stage: str) -> str:
        """'2 threads', '1 or 2 threads', 'no recorded thread count' for matmul or training."""
        df = self.mm[self.mm["device"] == "cpu"] if stage == "matmul" else self.times
        values = sorted(int(v) for v in set(df.loc[df["status"] == "ok", "threads"]))
        if not values:
            return "no recorded thread count"
        return (" or ".join(str(v) for v in values[:-1]) + (" or " if len(values) > 1 else "")
                + plural(values[-1], "thread"))

    def method_items(self) -> str:
        mm = self.mm
        # The stage writes "timer; stmt `...`; detail; detail" per row: list each part once. The
        # cold rows are timed another way (single calls after a cache flush): an item of their own.
        ok = mm["status"] == "ok"
        cold = ok & (mm["kind"] == "matmul_cold")
        parts = [m.split("; ") for m in mm.loc[ok & ~cold, "method"].dropna().unique()]
        cold_parts = [m.split("; ") for m in mm.loc[cold, "method"].dropna().unique()]
        flushes = list(dict.fromkeys(
            re.sub(r" with \w+$", "", x.removeprefix("before each call, untimed: "))
            for p in cold_parts for x in p if x.startswith("before each call, untimed: ")))
        timers = list(dict.fromkeys(p[0] for p in parts))
        stmts = list(dict.fromkeys(x.removeprefix("stmt ") for p in parts for x in p[1:]
                                   if x.startswith("stmt ")))
        details = list(dict.fromkeys(x for p in parts for x in p[1:]
                                     if not x.startswith("stmt ")))
        blocks = self.one("matmul_samples")
        noisy = self.one("noisy_timings")
        items = [
            "**Timer.** " + (", ".join(f"`{t}`" for t in timers) or "no successful timings")
            + (" for every backend, timing " + ", ".join(
                s if s.startswith("`") else f"`{s}`" for s in stmts) if stmts else "")
            + ("; " + "; ".join(details) if details else "")
            + (". The timer calls a product in blocks of many calls, long enough that reading "
               "the clock (and, on CUDA, synchronising) costs nothing next to them, and repeats "
               "blocks until the minimum run time is reached; a product slower than that is "
               "called singly until it has `matmul.min_samples` samples. Each time is the "
               "median over samples of the time per call ("
               + (plural(blocks["value"], "sample")
                  if blocks["value"] == blocks["reference_value"] else
                  f"between {int(blocks['value'])} and {int(blocks['reference_value'])} samples")
               + " per product, after warm-up); every sample is kept in "
               "`results/matmul/<device>.samples.parquet`."
               if blocks else "."),
            *([f"**Cold timings.** The lesson's product was also timed cold (kind "
               f"`matmul_cold`): {cold_parts[0][0]}, and before each call, untimed, "
               + "; or ".join(flushes) + ", each backend with its own library."]
              if cold_parts and flushes else []),
            self.training_timing_item(),
            "**Disturbed timings.** During every timing the job reads, from the Linux "
            "scheduler, how long its threads were ready to run but waited for a CPU that other "
            "work held; averaged over the timing this counts threads kept waiting. A timing "
            "with more than " + (f"{noisy['ev']['wait_limit_threads']:g} threads"
                                 if noisy else "a tenth of a thread")
            + " waiting on average is measured again, "
            "up to `matmul.max_attempts` times; one disturbed in every attempt is kept, flagged "
            "*noisy*, and left out of every conclusion. "
            + (("This run flagged " + plural(noisy["value"], "timing") + " of "
                + str(int(noisy["reference_value"])) + "." if noisy["verdict"] == "flagged"
                else "This run flagged none.") if noisy else ""),
            "**CUDA synchronisation.** GPU timings wait for the device before the clock is "
            "read, so they time the finished work; the lesson's `%timeit` did not.",
            f"**Threads.** Matrix products on the CPU were timed with {self.threads('matmul')} "
            f"for both torch and NumPy's BLAS; training was timed with "
            f"{self.threads('training')}.",
            "**Dtypes.** Matrix products in " + " and ".join(sorted(mm["dtype"].dropna().unique()))
            + "; training in float32, as in the lesson.",
            "**Seeds.** " + ", ".join(
                f"{n}: {plural(self.one('seeds', dataset=n)['value'], 'seed')} per configuration"
                for n in self.datasets)
            + ". Each seed initialises the network exactly as `torch.manual_seed(seed)` "
            "followed by the lesson's layers would; all seeds of a shape train together as one "
            "batched ensemble, and shorter epoch counts are checkpoints of the longest run.",
            "**Statistics.** Means are over the seeds that did not diverge (a non-finite loss "
            "counts as diverged and is reported as a share). Intervals are Student-t 95% "
            "intervals of the mean over seeds (accuracy intervals shown clipped to 0–100%); "
            "bands in the loss figures run from the best to the worst seed. Each judgement, "
            "with the rule it applied and its evidence, is a row of `tables/findings.csv`.",
            "**No overlapping timings.** The workflow runs every job that measures time alone, "
            "so no benchmark shares the cores with another job.",
            "**Environment.** Each timing job reads its own threads, thread pools, thread "
            "variables, CPU affinity, load average and clocks (and, on CUDA, the GPU's clocks, "
            "temperature and power) just before and just after its timed work; the Environment "
            "section shows them and `tables/environment.csv` keeps every reading.",
        ]
        return "\n".join(f"- {i}" for i in items)

    def training_timing_item(self) -> str:
        ok = self.times[self.times["status"] == "ok"] if "n_windows" in self.times else None
        if ok is None or not len(ok):
            return "**Training timings.** No training epoch was timed in this run."
        windows = sorted({int(n) for n in ok["n_windows"]})
        epochs = sorted({int(n) for n in ok["epochs_per_window"]})
        return ("**Training timings.** Each shape's ensemble, and the lesson's loop for one of "
                "its networks, was timed in " + " or ".join(map(str, windows))
                + " separate windows of "
                + (str(epochs[0]) if len(epochs) == 1 else f"{epochs[0]} to {epochs[-1]}")
                + " epochs each (after an untimed warm-up, from the shape's initial weights). "
                "Times per epoch are the median over windows, shown with the range from the "
                "fastest to the slowest window; two times are called different only when those "
                "ranges do not overlap.")

    def environment_jobs(self) -> pd.DataFrame:
        """One row per timing job: what it read about itself before → after its timed work."""
        env = self.env
        if not len(env) or "threads" not in env:
            return pd.DataFrame({"job": ["no environment recorded"]})

        def pair(b: Any, a: Any, fmt=lambda v: "n/a" if pd.isna(v) else str(v)) -> str:
            return fmt(b) if fmt(b) == fmt(a) else f"{fmt(b)} → {fmt(a)}"

        rows = []
        keys = ["stage", "dataset", "device"]
        for (_, dataset, device), d in env.fillna({"dataset": ""}).groupby(keys, sort=False):
            b = d[d["moment"] == "before"].iloc[0]
            a = d[d["moment"] == "after"].iloc[-1]
            var = {k: v for k, v in json.loads(b["thread_env_json"]).items()
                   if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
            gpu = ("—" if device != "cuda" else
                   f"{b['gpu_reason']}" if b["gpu_reason"] else
                   f"SM {pair(b['gpu_sm_clock_mhz'], a['gpu_sm_clock_mhz'], num)} MHz, "
                   f"{pair(b['gpu_temperature_c'], a['gpu_temperature_c'], num)} °C, "
                   f"{pair(b['gpu_power_w'], a['gpu_power_w'], num)} W, {b['gpu_pstate']} "
                   f"({b['gpu_source']})")
            rows.append({
                "job": f"{b['stage']} {dataset} {device}".replace("  ", " "),
                "threads (job)": int(b["threads"]),
                "torch threads": pair(b["torch_num_threads"], a["torch_num_threads"]),
                "BLAS / OpenMP pool threads": (
                    f"{pair(b['blas_num_threads'], a['blas_num_threads'])} / "
                    f"{pair(b['openmp_num_threads'], a['openmp_num_threads'])}"),
                "thread variables": ", ".join(f"{k}={v if v is not None else 'unset'}"
                                              for k, v in var.items()),
                "CPUs": b["affinity"] if pd.notna(b["affinity"]) else "n/a",
                "load (1 min)": pair(b["load_1m"], a["load_1m"], lambda v: num(v, 2)),
                "CPU clock (MHz, mean)": pair(b["cpu_mhz_mean"], a["cpu_mhz_mean"],
                                              lambda v: num(v, 4)),
                "GPU": gpu,
            })
        return pd.DataFrame(rows).astype(str)

    def environment_tables(self) -> list[pd.DataFrame]:
        timing = (f"matrix products: {self.threads('matmul')} (torch and NumPy's BLAS, set for "
                  f"every timing); training: {self.threads('training')}; what each timing job "
                  f"read about itself is in the next table")
        out = []
        for m in self.machines:
            gpu, blas, versions = m.get("gpu") or {}, m.get("blas") or {}, m.get("versions") or {}
            rows = [
                ("run (machine_id)", m.get("machine_id")),
                ("host", m.get("host")),
                ("CPU", m.get("cpu_model")),
                ("cores (physical / logical)",
                 f"{m.get('physical_cores')} / {m.get('logical_cores')}"),
                ("NumPy BLAS", blas_text(blas.get("numpy"), "numpy")),
                ("torch BLAS", blas_text(blas.get("torch"), "torch")),
                ("threads used for timings", timing),
                ("GPU", f"{gpu.get('name')}, {gpu.get('memory_gib')} GiB, driver "
                        f"{gpu.get('driver')}, CUDA {gpu.get('cuda_version')}"
                 if gpu.get("available") else f"none: {gpu.get('reason') or 'CUDA unavailable'}"),
                ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
                ("git commit", (m.get("git_commit") or "unknown")
                 + (" (with uncommitted changes)" if m.get("git_dirty") else "")),
                ("config hash", m.get("config_hash")),
                ("recorded (UTC)", m.get("created_utc")),
            ]
            out.append(pd.DataFrame(rows, columns=["item", "value"]).astype(str))
        out.append(self.environment_jobs())
        return out


# --------------------------------------------------------------------------- the lesson's exercises


def _fence(source: str, language: str = "python") -> str:
    """A fenced code block long enough to hold ``source`` whatever backticks it contains."""
    import re  # only this helper needs it

    longest = max((len(run) for run in re.findall(r"`+", source)), default=0)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{language}\n{source.rstrip()}\n{ticks}"


def folded(summary: str, parts: list[tuple[str, str]]) -> str:
    """Markdown for a block folded by default (an HTML ``<details>``, as Quarto's code folding
    emits): ``summary`` on the fold, then each (heading, Markdown body) inside. Blank lines
    around the HTML tags keep the inside Markdown for both Pandoc and the notebook renderer."""
    inner = "\n\n".join(f"**{heading}**\n\n{body}" for heading, body in parts)
    return f"<details>\n<summary>{summary}</summary>\n\n{inner}\n\n</details>"


def torch_print(values: Any, requires_grad: bool = True) -> str:
    """A parameter as ``print(par)`` shows it: ``Parameter containing:`` and ``tensor([...])``
    with four decimals (the rounding of the lesson's slide)."""
    import numpy as np

    body = np.array2string(np.asarray(values, dtype=float), precision=4, floatmode="fixed",
                           separator=", ", suppress_small=False)
    body = body.replace("\n", "\n" + " " * len("tensor("))
    return f"Parameter containing:\ntensor({body}" + (", requires_grad=True)" if requires_grad
                                                      else ")")


def np_list(values: list) -> str:
    """A list of classes as NumPy prints an array: ``[0 2 2]``."""
    return "[" + " ".join(str(v) for v in values) + "]"


class LessonPassages:
    """The lesson's exercises and worked examples, told from the ``lesson`` rule's tables
    (``mlpbench.contract.LESSON``: ``ops``, ``autograd``, ``parameters``, ``test_points``,
    ``code``) and the findings of section ``lesson`` in ``story``'s findings.

    ``lesson`` may be empty (a results folder without ``lesson/``): every passage then says
    so instead of showing numbers.
    """

    PARAMETER_ROLES = ("weights from the input layer to the hidden layer",
                       "biases of the hidden layer",
                       "weights from the hidden layer to the output layer",
                       "biases of the output layer")
    MISSING = ("This results folder holds no `lesson/` tables (written by the rule `lesson`), "
               "so this part of the lesson is not answered here.")

    def __init__(self, story: Story, lesson: Mapping[str, pd.DataFrame]):
        self.s, self.t = story, lesson

    def available(self, *names: str) -> bool:
        return all(n in self.t for n in names)

    def no_lesson_network(self, verb: str) -> str:
        """Why there is no lesson network to show: its data, or the CPU, was not in the run."""
        if "toy" not in self.s.datasets:
            why = "The lesson's toy data was not among this run's data sets (`train.datasets`)"
        else:
            why = "The lesson's toy data was not trained on the CPU in this run"
        return f"{why}, so there is no network to {verb}."

    # ------------------------------------------------------------------ chain rule

    def ops_intro(self) -> str:
        return (
            "Counting from the inside of the slide's expression: the product W₀x is one "
            "operation; each of the L hidden layers then adds two, its activation a and the "
            "product with the next weight matrix; softmax, log and the product with −yᵀ "
            "close the expression. That is 1 + 2L + 3 = 2L + 4 operations, 6 for the lesson's "
            "one hidden layer, as the slide counts. The chain rule writes dL/dW₀ as one "
            "factor per operation plus one for the loss itself as the outermost function, "
            "2L + 5 factors with 2L + 4 multiplications between them (6 for one hidden "
            "layer). Backpropagation does the same work from the other end: each operation's "
            "backward step multiplies the gradient arriving from above by that operation's "
            "own derivative once.")

    def ops_table(self) -> pd.DataFrame:
        """Formula against graph per depth, with the first layer's gradient at initialisation."""
        ops = self.t["ops"]
        grads = self.s.one("first_layer_gradient_depth")
        by_depth = (dict(zip(grads["ev"]["depths"], grads["ev"]["grad_norm_mean"]))
                    if grads else {})

        def pair(formula: str, counted: str) -> list[str]:
            return [f"{a} / {b}" for a, b in zip(ops[formula], ops[counted])]

        return pd.DataFrame({
            "hidden layers L": ops["depth"],
            "operations: 2L + 4 / graph": pair("operations_formula", "operations_graph"),
            "multiplications: 2L + 4 / backward steps": pair("multiplications_formula",
                                                             "backward_steps_graph"),
            "CrossEntropyLoss nodes: 2L + 6 / graph": pair("training_nodes_formula",
                                                           "training_nodes_graph"),
            "first-layer gradient norm at init": [
                num(by_depth[d]) if d in by_depth else "—" for d in ops["depth"].astype(int)],
        })

    def ops_answer(self) -> list[str | pd.DataFrame]:
        if not self.available("ops"):
            return [self.MISSING]
        ops, f = self.t["ops"], self.s.one("op_count_formula")
        t = self.s.one("training_graph_formula")
        depths = f"{int(ops['depth'].min())} to {int(ops['depth'].max())}"
        one = ops[ops["depth"] == 1]
        chain = one["graph_chain"].iloc[0] if len(one) else ops["graph_chain"].iloc[0]
        measured = (
            f"This run built the slide's loss of one training point (no biases, as the slide "
            f"writes it) for {depths} hidden layers and walked each autograd graph from the "
            f"loss back to W₀ (`loss.grad_fn.next_functions`); hooks on the nodes of that "
            f"chain counted the backward steps that ran in `loss.backward()`. "
            + ("Graph and formula agree at every depth: "
               if f["verdict"] == "matches" else
               f"Graph and formula **disagree** at {int(f['reference_value'] - f['value'])} of "
               f"{int(f['reference_value'])} depths: ")
            + f"for one hidden layer the chain is `{chain}` (the slide's u₆ to u₁).")
        trained = (
            "The networks themselves train on PyTorch's `nn.CrossEntropyLoss` over the whole "
            "training set, with biases. Its graph has other nodes on the same chain: `addmm` "
            "computes Wx + b as one node, `log_softmax` does softmax and log in one, and "
            "with one-hot targets the loss is a product with y, one sum over classes and "
            "points, a negation and a division by the number of points — the last two "
            "belong to the final mean the exercise leaves out. That makes 2L + 6 nodes "
            "(the transposes of the stored weights left out), "
            + ("as counted at every depth." if t and t["verdict"] == "matches" else
               "which the count does **not** confirm at every depth."))
        return [measured, self.ops_table(), trained, self.depth_tie()]

    def depth_tie(self) -> str:
        g = self.s.one("first_layer_gradient_depth")
        text = ("Every added hidden layer puts two more factors into the chain for dL/dW₀: "
                "the ReLU's derivative (1 where a unit is active, 0 where it is not) and a "
                "weight matrix, whose entries `nn.Linear` draws between ±1/√(inputs of the "
                "layer), below one in size. ")
        if g is None:
            return text + ("This run trained no two depths of the lesson's network to compare "
                           "(the last column shows — where a depth was not trained).")
        d = g["ev"]["depths"]
        words = {"shrinks": "falls with every added layer",
                 "smaller": "is smaller with the deepest network than with the shallowest, "
                            "though not at every step",
                 "not_smaller": "is not smaller with more layers here"}[g["verdict"]]
        return text + (
            f"Measured on the toy data at initialisation (mean over seeds), the first layer's "
            f"gradient norm {words}: {num(g['reference_value'])} with "
            f"{plural(d[0], 'hidden layer')}, {num(g['value'])} with "
            f"{plural(d[-1], 'hidden layer')} (last column; — where a depth was not trained). "
            f"The figure under *Gradients through depth* below shows every layer.")

    # ------------------------------------------------------------------ autograd

    def autograd_answer(self) -> list[str | pd.DataFrame]:
        if not self.available("autograd"):
            return [self.MISSING]
        a, f = self.t["autograd"], self.s.one("autograd_example")
        grad = ", ".join(f"{g:g}" for g in a["grad"])
        expected = ", ".join(f"{g:g}" for g in a["expected_grad"])
        verdict = ("matches the slide" if f and f["verdict"] == "matches"
                   else "does **not** match the slide")
        return [
            f"For f(x) = x₁² + x₂² the gradient is [2x₁, 2x₂], so at x = [2, −1] "
            f"it is [{expected}]. Run in this pipeline, `x.grad` after `f.backward()` is "
            f"[{grad}]: it {verdict} (the run stops with an error when it does not).",
            pd.DataFrame({"i": a["component"], "xᵢ": a["x"].map("{:g}".format),
                          "x.grad[i], this run": a["grad"].map("{:g}".format),
                          "slide": a["expected_grad"].map("{:g}".format)}),
        ]

    # ------------------------------------------------------------------ the learned network

    def network_line(self) -> str:
        p = self.t["parameters"].iloc[0]
        pts = self.s.one("test_points")
        n = pts["ev"]["n_seeds"] if pts else "all"
        return (f"The lesson's network on its toy data ({plural(p['width'], 'unit')}, "
                f"{plural(p['depth'], 'hidden layer')}, learning rate {p['lr']:g}, "
                f"{plural(p['epochs'], 'epoch')}) for seed {int(p['seed'])}, the representative "
                f"seed: its test accuracy, {pct(p['test_acc'], 0)}, is the closest to the median "
                f"over {n} seeds (the rule of the decision-region figure). It was trained again "
                f"on the CPU with the lesson's loop; its predictions equal those the training "
                f"job recorded for that seed (the run stops if they do not).")

    def parameters_answer(self) -> list[str]:
        if not self.available("parameters") or self.t["parameters"].empty:
            return [self.MISSING if not self.available("parameters") else
                    self.no_lesson_network("print")]
        par = self.t["parameters"]
        blocks = []
        for i, (name, rows) in enumerate(par.groupby("position", sort=True)):
            rows = rows.sort_values(["row", "col"])
            n_rows, n_cols = int(rows["n_rows"].iloc[0]), int(rows["n_cols"].iloc[0])
            values = rows["value"].to_numpy().reshape(n_rows, n_cols or 1)
            values = values if n_cols else values[:, 0]
            role = self.PARAMETER_ROLES[i] if len(self.PARAMETER_ROLES) == par["position"].nunique() \
                else rows["tensor"].iloc[0]
            blocks.append(f"# {rows['tensor'].iloc[0]}: {role}\n{torch_print(values)}")
        return [
            self.network_line() + " `for par in mynet.parameters(): print(par)` prints, "
            "rounded to four decimals as on the slide:",
            _fence("\n".join(blocks), "text"),
            "The slide's printed values come from the lesson's own single run, on CUDA and "
            "without a fixed seed, so no seed reproduces them; the shapes and their order "
            "(weights, then biases, layer by layer) are the same.",
        ]

    def test_points_answer(self) -> list[str | pd.DataFrame]:
        if not self.available("test_points") or self.t["test_points"].empty:
            return [self.MISSING if not self.available("test_points") else
                    self.no_lesson_network("test")]
        tp, f = self.t["test_points"], self.s.one("test_points")
        logits = sorted((c for c in tp.columns if c.startswith("logit_")),
                        key=lambda c: int(c.split("_")[1]))
        seed = int(tp["seed"].iloc[0])
        table = pd.DataFrame({
            "test point": [f"({x0:g}, {x1:g})" for x0, x1 in zip(tp["x0"], tp["x1"])],
            "label": tp["label"],
            "lesson's printed class": tp["lesson_pred"].map(
                lambda v: "—" if pd.isna(v) else str(int(v))),
            f"seed {seed}: logits": [", ".join(f"{v:.4f}" for v in r)
                                     for r in tp[logits].to_numpy()],
            f"seed {seed}: class": tp["pred"],
            "seeds right": [f"{round(s * n)} of {n} ({pct(s, 0)})" for s, n in
                            zip(tp["share_seeds_correct"], tp["n_seeds"])],
        })
        ev = f["ev"]
        lesson = ""
        if ev.get("lesson_pred") is not None:
            lesson = (f"The lesson's run printed `{np_list(ev['lesson_pred'])}` for the labels "
                      f"`{np_list(ev['label'])}`: {ev['lesson_correct']} of {len(ev['label'])} right, "
                      + ("all points correctly classified. " if ev["lesson_verdict"] ==
                         "all_correct" else "not all points correctly classified. "))
        mine = (f"Seed {seed} predicts `{np_list(ev['pred'])}`: {int(f['value'])} of "
                f"{int(f['reference_value'])} right — "
                + ("all points correctly classified." if f["verdict"] == "all_correct" else
                   "not all points correctly classified either." if lesson
                   and ev["lesson_verdict"] != "all_correct" else
                   "not all points correctly classified."))
        return [
            lesson + mine + " The last column says how often each point is classified right "
            "across the seeds of the same network: which point a single run gets wrong "
            "depends on its seed.",
            table,
        ]

    # ------------------------------------------------------------------ code for a class

    def code(self, section: str, extra: list[tuple[str, str]] | None = None) -> str:
        """The lesson's code and the source mlpbench ran for ``section``, folded."""
        if not self.available("code"):
            return ""
        rows = self.t["code"][self.t["code"]["section"] == section]
        lesson = [("The lesson's code", _fence(r["source"])) for _, r in rows.iterrows()
                  if r["side"] == "lesson"]
        mine = [(f"What mlpbench ran: `{r['title']}`", _fence(r["source"]))
                for _, r in rows.iterrows() if r["side"] == "mlpbench"]
        parts = [*lesson, *(extra or []), *mine]
        return folded("Code: the lesson's, and what mlpbench ran", parts) if parts else ""

    def matmul_code(self) -> str:
        """The matmul section's fold: the statements this run timed, from its own records."""
        mm = self.s.mm
        rows = mm[(mm["case"] == "lesson") & (mm["kind"] == "matmul")]
        items = [f"- {r['backend']} on {device_name(r['device'])}, {r['dtype']}: {r['method']}"
                 if r["status"] == "ok" else
                 f"- {r['backend']} on {device_name(r['device'])}, {r['dtype']}: not timed "
                 f"({why(r['reason'])})" for _, r in rows.iterrows()]
        timed = [("How this run timed the lesson's product (recorded with each timing)",
                  "\n".join(items) or "No lesson-case timing in this run.")]
        return self.code("matmul", timed)

    # ------------------------------------------------------------------ depth given time

    DEPTH_EPOCHS_OFF = (
        "Not run in this run. In the homework's sweep the deeper networks get the lesson's "
        "epoch count only, so the sweep cannot say whether depth helps once it has time to "
        "train. `snakemake --cores 4 --config 'lesson={depth_epochs: true}'` trains every "
        "depth of the toy data's depth axis at every epoch count of its epochs axis "
        "(checkpoints of one run per depth); with the default grids it adds about 20 s of "
        "training on one CPU core, which is why it is off by default.")
    DEPTH_WORDS = {"helps": "beats", "hurts": "still trails",
                   "within_seed_noise": "is within seed luck of",
                   "too_few_seeds": "cannot be told apart (too few seeds) from"}

    def depth_epochs_answer(self) -> list[str | pd.DataFrame]:
        if not self.available("depth_epochs"):
            return [self.MISSING]
        de = self.t["depth_epochs"]
        if de.empty:
            return [self.DEPTH_EPOCHS_OFF]
        table = de.pivot(index="depth", columns="epochs", values="test_acc_mean")
        spread = {(r["depth"], r["epochs"]): f" ({pct(r['test_acc_min'], 0)}–"
                  f"{pct(r['test_acc_max'], 0)})" for _, r in de.iterrows()}
        shown = pd.DataFrame({"hidden layers": table.index.astype(int)})
        for epochs in table.columns:
            shown[f"{int(epochs)} epochs"] = [
                pct(table.loc[d, epochs], 0) + spread[(d, epochs)] for d in table.index]
        first = de.iloc[0]
        sentences = []
        for f in self.s.find("depth_given_time"):
            ev = f["ev"]
            word = self.DEPTH_WORDS.get(f["verdict"], f["verdict"])
            when = (f"from {plural(f['value'], 'epoch')} on" if f["verdict"] == "helps" else
                    f"at {plural(f['reference_value'], 'epoch')}")
            sentences.append(f"With {plural(ev['depth'], 'hidden layer')} the network {word} "
                             f"the one with {plural(ev['base_depth'], 'hidden layer')} {when}.")
        return [
            f"Mean test accuracy over {plural(int(first['n_seeds']), 'seed')} (worst–best seed) "
            f"of the lesson's network with more hidden layers ({plural(first['width'], 'unit')} "
            f"each, learning rate {first['lr']:g}) at each epoch count, each depth trained once "
            f"to the longest count:",
            shown,
            "Each deeper network is set against the lesson's depth at the same epoch count; a "
            "difference counts when the 95% intervals of the two means do not overlap. "
            + " ".join(sentences),
        ]


class MachinePassages:
    """The report's "Machines" section: this run beside other machines' bundles and the
    lesson's slides, from the tables of :func:`mlpbench.compare.compare_tables` and the
    findings of section ``machines``. ``present`` is False with a single measured machine;
    the report then leaves the section out."""

    SHOWN = 10  # machines named in one sentence; the findings table has every one

    def __init__(self, tables: Mapping[str, pd.DataFrame]):
        empty = pd.DataFrame(columns=["machine_id", "origin"])
        self.machines = tables.get("machines", empty)
        self.mm = tables.get("machines_matmul", pd.DataFrame())
        self.times = tables.get("machines_epoch_time", pd.DataFrame())
        self.agreement = tables.get("machines_agreement", pd.DataFrame())
        f = tables.get("findings", pd.DataFrame(columns=["section"]))
        self.findings = f[f["section"] == "machines"]
        self.measured = self.machines[self.machines["origin"] != "lesson"]
        self.present = len(self.measured) > 1
        base = self.measured[self.measured["is_baseline"].astype(bool)]
        self.baseline = str(base["machine_id"].iloc[0]) if len(base) else None

    def find(self, finding: str) -> list[dict]:
        rows = self.findings[self.findings["finding"] == finding]
        return [{**r, "ev": json.loads(r["evidence"])} for r in rows.to_dict("records")]

    def label(self, machine_id: str) -> str:
        row = self.machines[self.machines["machine_id"] == machine_id]
        origin = row["origin"].iloc[0] if len(row) else ""
        return {"this run": f"{machine_id} (this run)", "lesson": "the lesson's slides",
                "reference": f"{machine_id} (reference)"}.get(origin, machine_id)

    def intro(self) -> str:
        others = self.measured[self.measured["origin"] != "this run"]
        kinds = ", ".join(f"`{m}` ({o})" for m, o in zip(others["machine_id"][:self.SHOWN],
                                                         others["origin"][:self.SHOWN]))
        if len(others) > self.SHOWN:
            kinds += f" and {len(others) - self.SHOWN} more"
        return (f"This run is compared with {plural(len(others), 'other machine')}: {kinds}, "
                f"and with the lesson's slides as a machine of their own. Every number of "
                f"another machine is that machine's own measurement, with its hardware, "
                f"versions and date in the table below; nothing of it was measured here. "
                f"Speed-ups are against `{self.baseline}`"
                + (" (this run)" if self.baseline in set(
                    self.measured.loc[self.measured["origin"] == "this run", "machine_id"])
                   else " (`compare.baseline`)")
                + " and only between rows of the same product, shape and dtype, or the same "
                  "network, data and threads.")

    def machines_table(self) -> pd.DataFrame:
        def hardware(r: Any) -> str:
            if r["origin"] == "lesson":
                return "not stated"
            cores = (f", {int(r['physical_cores'])}/{int(r['logical_cores'])} cores"
                     if finite(r["physical_cores"]) and finite(r["logical_cores"]) else "")
            gpu = r["gpu_name"] if isinstance(r["gpu_name"], str) else "no GPU"
            return f"{r['cpu_model'] or 'unknown CPU'}{cores}; {gpu}"

        def versions(r: Any) -> str:
            if r["origin"] == "lesson":
                return "not stated"
            commit = r["git_commit"][:10] if isinstance(r["git_commit"], str) else "unknown"
            return f"torch {r['torch_version']}, NumPy {r['numpy_version']}, commit {commit}"

        rows = [{"machine": self.label(r["machine_id"]) + (" ★" if r["is_baseline"] else ""),
                 "measured (UTC)": r["created_utc"] if isinstance(r["created_utc"], str)
                 else "the lesson's slides",
                 "hardware": hardware(r), "versions": versions(r),
                 "from": r["source"], "note": r["note"]}
                for _, r in self.machines.iterrows()]
        return pd.DataFrame(rows)

    def unavailable(self) -> str:
        """Which machines had no timing on a device (its rows are left out of the tables)."""
        mm = self.mm
        if mm.empty:
            return ""
        ok = mm[mm["status"] == "ok"].groupby("device")["machine_id"].unique()
        parts = []
        for device in sorted(set(mm["device"])):
            have = set(ok.get(device, []))
            lacking = [m for m in self.measured["machine_id"] if m not in have]
            if lacking:
                parts.append(f"{device_name(device)}: "
                             + ", ".join(f"`{m}`" for m in lacking[:10])
                             + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else ""))
        return ("No timing on " + "; ".join(parts) + " (unavailable there; those rows are "
                "left out below and kept in `tables/machines_matmul.csv`).") if parts else ""

    def lesson_table(self) -> pd.DataFrame:
        mm = self.mm[(self.mm["case"] == "lesson") & (self.mm["status"] == "ok")]
        rows = []
        for _, r in mm.iterrows():
            rows.append({
                "machine": self.label(r["machine_id"]),
                "series": series_label(r["backend"], r["device"], r["dtype"]),
                "shape": f"{r['m']}×{r['k']} @ {r['k']}×{r['n']}",
                "time": fmt_time(r["time_s_median"]) + (" (noisy)" if r["noisy"] else ""),
                "GB/s": num(r["gb_s"]),
                "share of its memory roof": pct(r["bandwidth_share"]),
                "share of its compute roof": pct(r["compute_share"]),
                f"× {self.baseline}": num(r["speedup_vs_baseline"]),
                "× lesson": num(r["speedup_vs_lesson"]),
            })
        return pd.DataFrame(rows)

    def lesson_caveat(self) -> str:
        row = self.machines[self.machines["origin"] == "lesson"]
        return ("The lesson's row: " + row["note"].iloc[0] + ". Its times are compared only "
                "with the same backend, device and dtype of the same shape."
                if len(row) else "")

    def sweeps_table(self) -> pd.DataFrame:
        """GFLOP/s of every square and matrix-vector product, one row per machine x device x
        dtype, with that machine's own roofs."""
        mm = self.mm[self.mm["case"].isin(["square", "gemv"]) & (self.mm["status"] == "ok")
                     & (self.mm["machine_id"] != "lesson")]
        if mm.empty:
            return pd.DataFrame()
        mm = mm.assign(product=[f"{c} {m}×{k}×{n}" for c, m, k, n in
                                zip(mm["case"], mm["m"], mm["k"], mm["n"])],
                       value=[num(v) + (" (noisy)" if z else "")
                              for v, z in zip(mm["gflop_s"], mm["noisy"])])
        keys = ["machine_id", "device", "dtype"]
        table = mm.pivot_table(index=keys, columns="product", values="value",
                               aggfunc="first", sort=False)
        roofs = mm.groupby(keys, sort=False).agg(memory=("bandwidth_gb_s", "first"),
                                                 compute=("compute_roof_gflop_s", "first"))
        out = roofs.join(table).reset_index()
        out["machine_id"] = out["machine_id"].map(self.label)
        out["memory"] = out["memory"].map(num)
        out["compute"] = out["compute"].map(num)
        return out.rename(columns={"machine_id": "machine", "memory": "memory roof GB/s",
                                   "compute": "compute roof GFLOP/s"})

    def speedup_sentences(self) -> list[str]:
        out = []
        fastest = self.find("machine_fastest")
        if fastest:
            def noisy(f: dict) -> str:
                n = len(f["ev"].get("noisy_left_out") or [])
                if not n:
                    return ""
                return ("; the timing of 1 other machine was flagged noisy and left out"
                        if n == 1 else f"; the timings of {n} other machines were flagged "
                                       f"noisy and left out")

            items = [f"{series_label(f['ev']['backend'], f['device'], f['ev']['dtype'])}: "
                     f"`{f['ev']['fastest']}` ({fmt_time(f['value'])}"
                     + (f"; `{self.baseline}` {fmt_time(f['reference_value'])}"
                        if f["verdict"] != "baseline" and finite(f["reference_value"]) else "")
                     + noisy(f) + ")"
                     for f in fastest]
            out.append("Fastest machine for the lesson's product, per series: "
                       + "; ".join(items) + ".")
        words = {"faster": "faster than", "slower": "slower than", "similar": "about as fast as"}
        speed = sorted(self.find("machine_speedup"), key=lambda f: -f["ev"]["speedup"])
        if speed:
            items = [f"`{f['ev']['machine_id']}` is {words[f['verdict']]} `{self.baseline}` "
                     f"({fmt_time(f['value'])} with {series_label(**f['ev']['machine_series'])} "
                     f"against {fmt_time(f['reference_value'])} with "
                     f"{series_label(**f['ev']['baseline_series'])}, "
                     f"{times(f['ev']['speedup'])})" for f in speed[:self.SHOWN]]
            more = len(speed) - self.SHOWN
            out.append("Each machine's fastest float32 lesson product, fastest first: "
                       + "; ".join(items)
                       + (f"; and {plural(more, 'more machine')} (`machine_speedup` in "
                          f"`tables/findings.csv`)." if more > 0 else "."))
        return out

    def epoch_note(self) -> str:
        """What the epoch-time table compares, and why ensemble rows are not compared where
        the machines trained ensembles of different sizes; never an unexplained empty table."""
        found = self.find("machine_epoch_fastest")
        if not found:
            return ("No network was timed on two machines with the same data, threads, "
                    "momentum and batch size, so no time per epoch is compared below; every "
                    "machine's timings are in `tables/machines_epoch_time.csv`.")
        loop = [f for f in found if f["ev"].get("method") == "loop"]
        if not loop:
            all_ids = [str(m) for m in self.measured["machine_id"]]
            out = []
            for f in found:
                left = [m for m in all_ids if m not in f["ev"]["times_per_epoch_s"]]
                if left:
                    out.append(f"{f['dataset']} on {device_name(f['device'])}: "
                               + ", ".join(f"`{m}`" for m in left[:self.SHOWN]))
            if not out:
                return ""
            return ("Left out of this table, because they timed no ensemble of the same size "
                    "(or none on that device): " + "; ".join(out) + ". Every machine's "
                    "timings, the lesson's loop included, are in "
                    "`tables/machines_epoch_time.csv`.")
        sizes = []
        for f in loop:
            members = f["ev"].get("ensemble_members") or {}
            said = ", ".join(f"`{m}` {' and '.join(map(str, n))}"
                             for m, n in list(members.items())[:self.SHOWN])
            sizes.append(f"{f['dataset']} on {device_name(f['device'])}"
                         + (f" ({said} members)" if said else ""))
        return ("Ensemble rows are not compared for " + "; ".join(sizes) + ": the machines "
                "trained ensembles of different sizes, and an ensemble's time per epoch grows "
                "with its members. Those rows below are the lesson's loop instead, which "
                "trains one network at a time, the same work on every machine.")

    def epoch_table(self) -> pd.DataFrame:
        rows = []
        for f in self.find("machine_epoch_fastest"):
            ev = f["ev"]
            method = ev.get("method", "ensemble")
            network = (f"{ev['n_members']} members" if method == "ensemble"
                       else "one network (the lesson's loop)")
            for mid, t in ev["times_per_epoch_s"].items():
                sel = self.times[(self.times["machine_id"] == mid)
                                 & (self.times["dataset"] == f["dataset"])
                                 & (self.times["device"] == f["device"])
                                 & (self.times["width"] == ev["width"])
                                 & (self.times["depth"] == ev["depth"])
                                 & (self.times["n_members"] == ev["n_members"])
                                 & (self.times["method"] == method)]
                rows.append({"data set": f["dataset"], "device": device_name(f["device"]),
                             "network": f"width {ev['width']}, depth {ev['depth']}, {network}",
                             "machine": self.label(mid) + (" (fastest)"
                                                           if mid == ev["fastest"] else ""),
                             "time per epoch": fmt_time(t),
                             f"× {self.baseline}": num(sel["speedup_vs_baseline"].iloc[0])
                             if len(sel) else "n/a"})
        return pd.DataFrame(rows)

    def agreement_answer(self) -> list[str | pd.DataFrame]:
        found = self.find("machine_agreement")
        if not found:
            return ["No other machine trained a data set on a device that this comparison's "
                    "baseline also trained, so no losses or accuracies were compared."]
        counts: dict[str, int] = {}
        for f in found:
            counts[f["verdict"]] = counts.get(f["verdict"], 0) + 1
        words = {"identical": "bit-identical", "within_tolerance": "within the tolerance",
                 "differs": "different beyond the tolerance", "not_compared": "not compared"}
        text = (f"Losses and accuracies of every member and checkpoint, against "
                f"`{self.baseline}`: CPU runs must be bit-identical (same config, same seeds); "
                f"CUDA runs may differ by {CUDA_LOSS_RTOL:g} of the loss and "
                f"{plural(CUDA_ACC_POINTS, 'point')} of accuracy, because "
                f"GPUs of other models and libraries sum in other orders. Of "
                f"{plural(len(found), 'machine × data set × device comparison')}: "
                + ", ".join(f"{n} {words.get(v, v)}" for v, n in counts.items()) + ".")
        differ = self.agreement[self.agreement["verdict"].isin(["differs", "not_compared"])]
        if differ.empty:
            return [text]
        table = pd.DataFrame({
            "machine": differ["machine_id"].map(self.label), "data set": differ["dataset"],
            "device": differ["device"].map(device_name), "metric": differ["metric"],
            "differ": [f"{a} of {b}" for a, b in zip(differ["n_differ"], differ["n_compared"])],
            "largest difference": differ["max_abs_diff"].map(lambda v: num(v, 2)),
            "tolerance": differ["tolerance"], "verdict": differ["verdict"],
            "why not compared": differ["reason"]})
        return [text + " What differs, or was not compared:", table]

    # Config keys whose 0 means "every core": the threads a run used are in its matmul rows.
    EVERY_CORE_KEYS = ("matmul.threads",)

    def _threads_used(self, machine_id: str) -> int | None:
        """The CPU threads of ``machine_id``'s matmul rows, when they all say one number."""
        if self.mm.empty or "threads" not in self.mm:
            return None
        rows = self.mm[(self.mm["machine_id"] == machine_id) & (self.mm["device"] == "cpu")]
        used = set(rows["threads"].dropna().astype(int))
        return used.pop() if len(used) == 1 else None

    def _config_value(self, key: str, value: Any, machine_id: str) -> str:
        """A config value as the notes show it; 0 of an every-core key with what it meant."""
        shown = json.dumps(value)
        if key in self.EVERY_CORE_KEYS and value == 0:
            used = self._threads_used(machine_id)
            shown += (f" (= every core: {plural(used, 'thread')})" if used is not None
                      else " (= every core)")
        return shown

    def _same_threads(self, key: str, a: str, b: str) -> str:
        """", the same N threads on both" where an every-core key's runs used as many."""
        if key not in self.EVERY_CORE_KEYS:
            return ""
        used_a, used_b = self._threads_used(a), self._threads_used(b)
        return (f", both ran {plural(used_a, 'thread')}"
                if used_a is not None and used_a == used_b else "")

    def config_notes(self) -> list[str]:
        out = []
        found = self.find("machine_config")
        if len(found) > self.SHOWN:
            out.append(f"{plural(len(found), 'machine')} ran another config than "
                       f"`{self.baseline}` (`machine_config` in `tables/findings.csv` lists the "
                       f"keys); the first {self.SHOWN}:")
        for f in found[:self.SHOWN]:
            keys = f["ev"]["keys"]
            mid, base = f["ev"]["machine_id"], f["ev"].get("baseline", self.baseline)
            shown = "; ".join(f"`{k}` " + self._config_value(k, v[0], mid) + " vs "
                              + self._config_value(k, v[1], base)
                              + self._same_threads(k, mid, base)
                              for k, v in list(keys.items())[:8])
            more = f" and {len(keys) - 8} more" if len(keys) > 8 else ""
            out.append(f"`{f['ev']['machine_id']}` ran another config than `{self.baseline}`: "
                       f"{shown}{more}. Rows of shapes that only one of them has are shown "
                       f"but have no speed-up, and training results of different data, "
                       f"threads, momentum or batch size are not compared.")
        return out
