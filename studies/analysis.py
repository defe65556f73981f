"""Scoring and reporting of study v2 (PROTOCOL.md §7–10): tables, figures, ``results.md``.

:func:`analyse` reads every finished run of the grid (unfinished ones are listed in
``grid_status.csv`` as missing, never filled in), scores the pre-registered methods
(:mod:`scoring`), compares the penalty and the regularisers (:mod:`regularisers`) where pairs
exist, and rewrites every file of the results folder. Tuning runs (part T) are always shown
apart from held-out ones.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaisparse._io import atomic_write_text

from .grid import EPOCHS, Job, is_finished, load_history, run_dir
from .methods import CANDIDATES, LABELS
from .regularisers import REGULARISERS, c3, c4, learning_check, pairs
from .regularisers import learned as is_learned
from .scoring import CELL, DECISION_COLUMNS, NO_STOP, decision, method_rows, run_facts, summarise

#: The exploration's stops of the pre-registered methods on the tuning runs (PROTOCOL.md §6).
EXPLORATION_STOPS = Path(__file__).resolve().parent / "explore" / "results" / "selected_runs.csv"
METHODS = (*CANDIDATES, "D0", "B1", "B2", "B3", "L1", "L2", "L1p2", NO_STOP)


def _status(root: Path, grid: list[Job]) -> pd.DataFrame:
    rows = []
    for job in grid:
        done = is_finished(run_dir(root, job))
        rows.append(
            {
                "run": job.name,
                "part": job.part,
                "split": job.split,
                "dataset": job.dataset,
                "arch": job.arch,
                "regime": job.regime,
                "condition": job.condition,
                "seed": job.seed,
                "epochs": job.epochs,
                "status": "complete" if done else "missing",
            }
        )
    return pd.DataFrame(rows)


def run_record(root: Path, row: Any) -> tuple[Any, dict[str, Any]]:
    """A finished run's History and its facts (test-loss facts, the grid's labels, the measured times).

    ``row``: anything with the grid's columns as attributes (a row of ``grid_status.csv``).
    """
    h = load_history(root, row.run)
    f = run_facts(h)
    study = h.config.get("study", {})
    f.update({k: getattr(row, k) for k in ("run", "part", "split", "dataset", "arch", "regime", "condition", "seed")})
    f.update({k: study.get(k, math.nan) for k in ("wall_seconds", "load1", "started", "finished")})
    return h, f


def _load(root: Path, status: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-run facts (one row per finished run) and per-run method rows (detector parts A and T)."""
    facts, methods = [], []
    for row in status[status.status == "complete"].itertuples():
        h, f = run_record(root, row)
        facts.append(f)
        if row.condition == "baseline":
            for m in method_rows(row.run, h, f):
                methods.append({**m, "split": row.split})
    return pd.DataFrame(facts), pd.DataFrame(methods)


def _md(frame: pd.DataFrame, floatfmt: str = ".2f") -> str:
    return frame.to_markdown(index=False, floatfmt=floatfmt) if not frame.empty else "(no runs)"


def _rates(summary: pd.DataFrame) -> pd.DataFrame:
    cols = ["method", "label", "runs", "overfitting_runs", "stops", "hit", "false_alarm", "miss", "score"]
    out = summary[cols].copy()
    out["score 95% CI"] = [f"[{lo:.2f}, {hi:.2f}]" for lo, hi in zip(summary.score_lo, summary.score_hi)]
    out["median lead"] = summary.median_lead
    out["median excess loss"] = summary.median_excess_loss
    return out


@contextlib.contextmanager
def seaborn_theme() -> Iterator[None]:
    """Seaborn's whitegrid theme and colorblind palette for the figures drawn inside; the caller's rcParams after."""
    import matplotlib
    import seaborn as sns

    with matplotlib.rc_context():
        sns.set_theme(style="whitegrid", palette="colorblind")
        yield


#: Figures are saved at this dpi and at most this many inches wide: 736 px, the docs page's column,
#: so that the notebook and the docs show them at their natural size (text stays readable).
FIGURE_DPI = 110
PAGE_INCHES = 736 / FIGURE_DPI


def panel_grid(n: int, height: float, *, columns: int = 2, sharey: bool = False) -> tuple[Any, list[Any]]:
    """A page-wide figure of ``n`` panels, ``columns`` to a row, ``height`` inches per row; its axes in order."""
    from matplotlib.figure import Figure

    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    fig = Figure(figsize=(PAGE_INCHES, height * rows), layout="constrained")
    axes = list(fig.subplots(rows, columns, sharey=sharey, squeeze=False).ravel())
    for extra in axes[n:]:
        extra.remove()
    return fig, axes[:n]


@seaborn_theme()
def _figures(
    out: Path,
    summaries: pd.DataFrame,
    table: pd.DataFrame,
    runs: pd.DataFrame,
    pairs: pd.DataFrame,
    lead_methods: tuple[str, ...] = ("D0", *CANDIDATES, "B1", "B2", "L1", "L2"),
    order: tuple[str, ...] = METHODS,
    scores_name: str = "scores.png",
) -> list[str]:
    """Seaborn figures (object-oriented matplotlib, no pyplot): outcome bars, lead ECDFs, paired differences.

    The score bars of ``summaries`` go to ``scores_name``; the lead ECDFs read the held-out rows of ``table``.
    """
    import seaborn as sns
    from matplotlib.lines import Line2D

    written = []
    if not summaries.empty:
        groups = list(dict.fromkeys(summaries.group))
        fig, axes = panel_grid(len(groups), 3.6, sharey=True)
        for ax, g in zip(axes, groups):
            s = summaries[(summaries.group == g) & (summaries.method != NO_STOP)]
            y = np.arange(len(s))
            ax.barh(y, s.score, color=["#0173b2" if m.startswith(("D", "P")) else "#949494" for m in s.method])
            ax.errorbar(s.score, y, xerr=[s.score - s.score_lo, s.score_hi - s.score], fmt="none", color="k", lw=1)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(y, s.method)
            ax.invert_yaxis()
            ax.set_xlim(-1.05, 1.05)
            ax.set_xlabel("hit − false alarm (95 % bootstrap CI)")
            ax.set_title(f"{g}\n({int(s.runs.iloc[0])} runs)", fontsize=10)
        fig.savefig(out / scores_name, dpi=FIGURE_DPI)
        written.append(scores_name)
    held = table[(table.split == "held_out") & table.method.isin(lead_methods)]
    held = held.merge(runs[["run", "dataset"]], on="run")
    if not held.empty:
        datasets = sorted(held.dataset.unique())
        order = [m for m in (*order, *lead_methods) if m in set(held.method)]
        order = list(dict.fromkeys(order))
        fig, axes = panel_grid(len(datasets), 4.0, columns=1)  # one per row: room for the methods' legend
        for ax, d in zip(axes, datasets):
            sub = held[(held.dataset == d) & held.lead.notna()]
            if not sub.empty:
                sns.ecdfplot(data=sub, x="lead", hue="method", hue_order=order, ax=ax)  # same colours in every panel
            ax.axvspan(-2, 5, color="#029e73", alpha=0.12, lw=0)
            none = held[(held.dataset == d) & held.lead.isna()].groupby("method").size()
            ax.set_title(
                f"{d}: lead = e* − stop (green: hit window)\nno stop: "
                + ", ".join(f"{m} {n}" for m, n in none.items()),
                fontsize=9,
            )
            ax.set_xlabel("lead (epochs)")
        fig.savefig(out / "lead_ecdf.png", dpi=FIGURE_DPI)
        written.append("lead_ecdf.png")
    if not pairs.empty:
        archs = sorted(pairs.arch.unique())
        comparisons = list(dict.fromkeys(pairs.comparison))
        datasets = sorted(pairs.dataset.unique())
        colors = dict(zip(datasets, sns.color_palette("colorblind", len(datasets))))
        fig, axes = panel_grid(len(archs), 0.9 * len(comparisons) + 1.6, sharey=True)
        jitter = np.random.default_rng(0)
        for ax, arch in zip(axes, archs):
            for k, comp in enumerate(comparisons):
                for j, d in enumerate(datasets):
                    sub = pairs[(pairs.arch == arch) & (pairs.comparison == comp) & (pairs.dataset == d)]
                    y = k + (j - (len(datasets) - 1) / 2) * 0.3 + jitter.uniform(-0.08, 0.08, len(sub))
                    for learned, marker in ((True, "o"), (False, "x")):
                        m = (sub.learned == learned).to_numpy()
                        ax.scatter(sub.difference[m], y[m], color=colors[d], marker=marker, s=22)
            ax.axvline(0, color="k", lw=0.8)
            ax.set_yticks(range(len(comparisons)), comparisons)
            ax.set_title(arch)
            ax.set_xlabel("difference")
        axes[0].invert_yaxis()  # shared: once for all
        fig.supxlabel("last-epoch test loss: condition − baseline (same seed)", fontsize=10)
        handles = [Line2D([], [], color=colors[d], marker="o", ls="", label=d) for d in datasets]
        handles.append(Line2D([], [], color="k", marker="x", ls="", label="condition run never learned"))
        fig.legend(handles=handles, loc="outside upper center", ncol=3, fontsize=8, frameon=False)
        fig.savefig(out / "paired_last_loss.png", dpi=FIGURE_DPI)
        written.append("paired_last_loss.png")
    return written


def _timing(runs: pd.DataFrame, status: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Seconds per run by architecture and condition; the study's total time and the projection of what is missing."""
    if runs.empty:
        return pd.DataFrame(), pd.DataFrame(), "no finished run: nothing measured."
    t = runs.groupby(["arch", "condition"]).agg(
        runs=("wall_seconds", "size"),
        mean_s=("wall_seconds", "mean"),
        median_s=("wall_seconds", "median"),
        min_s=("wall_seconds", "min"),
        max_s=("wall_seconds", "max"),
        median_load1=("load1", "median"),
    )
    t = t.reset_index()
    per_arch = runs.groupby("arch").wall_seconds.median()
    missing = status[status.status == "missing"]
    known = missing.arch.map(per_arch)
    unknown = missing[known.isna()]
    total = {
        "finished_runs": len(runs),
        "process_hours": runs.wall_seconds.sum() / 3600,
        "busy_hours": _busy_seconds(runs) / 3600,
        "missing_runs": len(missing),
        "missing_process_hours": float(np.nansum(known)) / 3600,
        "missing_unmeasured_runs": len(unknown),
    }
    line = (
        f"The {total['finished_runs']} finished runs took {total['process_hours']:.1f} h of one process in all, "
        f"and {total['busy_hours']:.1f} h of wall-clock time while at least one of them was training "
        "(the union of their start–finish intervals: parallel workers overlap, pauses between sessions do not count). "
    )
    if len(missing):
        line += (
            f"{len(missing)} runs missing; at the median measured seconds per run of each architecture "
            f"(one process) they need about {total['missing_process_hours']:.1f} h of one process"
            + (
                f" plus {len(unknown)} runs of architectures not measured yet ({sorted(unknown.arch.unique())})"
                if len(unknown)
                else ""
            )
            + "."
        )
    else:
        line += "No run of the grid is missing."
    return t, pd.DataFrame([total]), line


def _busy_seconds(runs: pd.DataFrame) -> float:
    """Length of the union of the runs' [started, finished] intervals (0 when not recorded)."""
    spans = runs[["started", "finished"]].dropna().sort_values("started").to_numpy(dtype=float)
    total, end = 0.0, -math.inf
    for start, stop in spans:
        if start > end:
            total += stop - start
        elif stop > end:
            total += stop - end
        end = max(end, stop)
    return total


def start_results(results: Path, root: Path, grid: list[Job]) -> pd.DataFrame:
    """Empty ``results`` of earlier tables and figures; write and return the grid's status."""
    results.mkdir(parents=True, exist_ok=True)
    for old in [*results.glob("*.csv"), *results.glob("*.png")]:  # nothing stale from an earlier analysis
        old.unlink()
    status = _status(root, grid)
    status.to_csv(results / "grid_status.csv", index=False)
    return status


def head_lines(
    results: Path,
    status: pd.DataFrame,
    runs: pd.DataFrame,
    *,
    title: str,
    protocol: str,
    quick: bool,
    timing_note: str,
) -> list[str]:
    """The top of results.md: title, date, runs complete / missing, the measured times (also as CSV)."""
    lines = [
        f"# {title}",
        "",
        f"Generated {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        + (" in **--quick** mode (8 epochs, 100 images: a test of the code, not a result)." if quick else "."),
        f"{protocol} Runs complete / in the grid, by part, dataset and architecture (`grid_status.csv` lists every run):",
        "",
    ]
    counts = status.groupby(["part", "dataset", "arch", "condition"]).status.value_counts().unstack(fill_value=0)
    for col in ("complete", "missing"):
        if col not in counts:
            counts[col] = 0
    lines += [_md(counts[["complete", "missing"]].reset_index(), ".0f"), ""]
    timing, timing_total, projection = _timing(runs, status)
    if not timing.empty:
        timing.to_csv(results / "timing.csv", index=False)
        timing_total.to_csv(results / "timing_total.csv", index=False)
        lines += ["## Measured time per run", "", timing_note, "", _md(timing, ".1f"), "", projection, ""]
    return lines


def _pairs_long(reg: pd.DataFrame) -> pd.DataFrame:
    """One row per seed pair and comparison (condition − baseline): the paired figure's points."""
    classes = reg.groupby("dataset").num_classes.first()
    pairs_long = []
    for cond in ("penalty", *REGULARISERS):
        p = pairs(reg, cond, "baseline")
        if len(p):
            pairs_long.append(
                pd.DataFrame(
                    {
                        "comparison": f"{cond} − baseline",
                        "dataset": p.dataset,
                        "arch": p.arch,
                        "difference": p.last_loss_diff,
                        "learned": is_learned(p[f"best_acc_{cond}"], p.dataset.map(classes)),
                    }
                )
            )
    return pd.concat(pairs_long, ignore_index=True) if pairs_long else pd.DataFrame()


def redraw_figures(results: Path) -> list[str]:
    """Draw a v2 results folder's figures again from its own tables (``runs.csv``,
    ``detector_summary.csv``, ``detector_runs.csv``): a new layout without the run directories;
    no number changes."""
    runs = pd.read_csv(results / "runs.csv")
    summary = pd.read_csv(results / "detector_summary.csv")
    table = pd.read_csv(results / "detector_runs.csv")
    return _figures(results, summary, table, runs, _pairs_long(runs[runs.split == "held_out"]))


def analyse(root: Path, grid: list[Job], results: Path, *, resamples: int = 10_000, quick: bool = False) -> Path:
    """Score every finished run of ``grid`` under ``root`` and rewrite ``results`` (tables, figures, results.md)."""
    status = start_results(results, root, grid)
    runs, table = _load(root, status)
    lines = head_lines(
        results,
        status,
        runs,
        title="Study v2 results (generated by `python -m studies --study v2`; never edited by hand)",
        protocol="Protocol: `studies/PROTOCOL.md` (pre-registered).",
        quick=quick,
        timing_note="Wall seconds of one training run (one process, one torch thread, `nice -n 19`, on the shared "
        "2-core machine; `median_load1`: the 1-minute load average when the run ended).",
    )
    if runs.empty:
        atomic_write_text(results / "results.md", "\n".join(lines) + "\n")
        return results
    runs.to_csv(results / "runs.csv", index=False)
    methods = [m for m in METHODS if m in set(table.method)]
    table.to_csv(results / "detector_runs.csv", index=False)
    summaries = []
    group_runs = runs[runs.condition == "baseline"]
    groups: dict[str, pd.DataFrame] = {}
    for split in ("held_out", "tuning"):
        part = group_runs[group_runs.split == split]
        if part.empty:
            continue
        groups[f"{split}: pooled"] = part
        for d in sorted(part.dataset.unique()):
            groups[f"{split}: {d}"] = part[part.dataset == d]
    by_cell = []
    for name, part in groups.items():
        s = summarise(table, part, methods, resamples)
        s.insert(0, "group", name)
        summaries.append(s)
    for key, part in group_runs[group_runs.split == "held_out"].groupby(CELL):
        s = summarise(table, part, methods, min(resamples, 2_000))
        for k, v in zip(CELL, key):
            s.insert(0, k, v)
        by_cell.append(s)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    summary.to_csv(results / "detector_summary.csv", index=False)
    cells = pd.concat(by_cell, ignore_index=True) if by_cell else pd.DataFrame()
    cells.to_csv(results / "detector_cells.csv", index=False)
    lines += [
        "## C2 — early warning without held-out labels (§7, §8)",
        "",
        "A run overfits when its test loss rises > 5 % above its minimum after the minimum epoch e*. "
        "Outcome of a stop s (lead = e* − s): hit if −2 ≤ lead ≤ 5, false alarm if lead > 5 (or any stop on a "
        "run that does not overfit), miss if no stop or lead < −2. Score = hit − false-alarm rate; 95 % "
        f"percentile bootstrap CIs ({resamples:,} resamples of runs, stratified by dataset × arch × regime). "
        "Excess loss = L(stop)/L(e*) − 1 (last epoch without a stop).",
        "",
    ]
    for name in groups:
        s = summary[summary.group == name]
        lines += [f"### {name}", "", _md(_rates(s)), ""]
    held = group_runs[group_runs.split == "held_out"]
    decided = pd.DataFrame()
    if not held.empty:
        by_dataset = {d: summary[summary.group == f"held_out: {d}"] for d in sorted(held.dataset.unique())}
        pooled = summary[summary.group == "held_out: pooled"]
        decided = decision(table[table.split == "held_out"], held, pooled, by_dataset, resamples)
        decided.to_csv(results / "decision.csv", index=False)
        complete = bool((status[(status.part == "A")].status == "complete").all())
        works = decided[decided.works].method.tolist()
        worthy = decided[decided.default_worthy].method.tolist()
        lines += [
            "### Decision (§8) on the held-out runs" + ("" if complete else " scored so far"),
            "",
            _md(decided[DECISION_COLUMNS]),
            "",
            (
                "**Variants meeting all three criteria: " + (", ".join(works) if works else "none") + "**; "
                "default-worthy: " + (", ".join(worthy) if worthy else "none") + ". "
            )
            + (
                "Part A is complete."
                if complete
                else "**Part A is not complete** (see the counts above): this is the decision on the runs scored so far, "
                "not the pre-registered one on all 120 held-out runs."
            ),
            "",
        ]
    agree = pd.DataFrame() if quick else _tuning_vs_exploration(table, runs)  # quick runs are not the exploration's
    if not agree.empty:
        agree.to_csv(results / "tuning_vs_exploration.csv", index=False)
        lines += [
            "### Regenerated tuning runs vs the exploration's (protocol change log 1)",
            "",
            "Part T retrains the exploration's 30 tuning runs (digits seeds 0–4) with the study's code. Two known "
            "differences: the test probe is now `probe_subset(test, 512, seed)` (other test images than the "
            "exploration's), which changes every test-probe signal and the test loss; VGG-small now trains 100 epochs "
            "(60 in the exploration), which can move its test-loss minimum and the outcome of a stop. Share of runs "
            "whose stop epoch (no stop = no stop) and whose outcome are the same:",
            "",
            _md(agree),
            "",
        ]
    if not cells.empty:
        c = cells[cells.method.isin(("D0", *CANDIDATES, "B2", "L2"))]
        lines += [
            "### Per cell (held-out; exploratory, §8)",
            "",
            _md(c[[*CELL, "method", "runs", "overfitting_runs", "hit", "false_alarm", "score"]]),
            "",
        ]
    reg = runs[runs.split == "held_out"]
    t3, v3 = c3(reg, resamples)
    if not t3.empty:
        t3.to_csv(results / "penalty_vs_baseline.csv", index=False)
        v3.to_csv(results / "penalty_verdict.csv", index=False)
        lines += [
            "## C3 — the sparsity penalty vs the same training without it (§9)",
            "",
            "Paired by seed (noise20); primary metric last-epoch test loss; Wilcoxon exact two-sided, Holm over cells.",
            "",
            _md(t3[t3.metric.isin(("last_loss", "best_acc", "final_sparsity"))].drop(columns=["reference"]), ".3f"),
            "",
            _md(v3),
            "",
        ]
    learned = learning_check(reg)
    if not learned.empty and learned.did_not_learn.any():
        learned.to_csv(results / "learning_check.csv", index=False)
        failed = learned[learned.mostly_did_not_learn]
        lines += [
            "### Did the networks learn? (post hoc, not pre-registered)",
            "",
            "A run *did not learn* when its best test accuracy over all epochs stays below twice chance "
            "(2 / classes): its test loss then sits near ln(classes) (2.303 for 10 classes), the loss of uniform "
            "predictions, so a lower last-epoch test loss than an overfitting baseline is not better generalisation. "
            "The pre-registered metrics above do not check this; the verdict table shows, beside the pre-registered "
            "verdict, the same rule counting only supporting cells where most penalised runs learned.",
            "",
            _md(learned, ".3f"),
            "",
            (
                "Conditions in which most runs did not learn: "
                + "; ".join(
                    f"{r.dataset} {r.arch} {r.condition} ({r.did_not_learn} of {r.runs})" for r in failed.itertuples()
                )
                + "."
            )
            if len(failed)
            else "In every condition most runs learned.",
            "",
        ]
    t4 = c4(reg, resamples)
    if not t4.empty:
        t4.to_csv(results / "regularisers_paired.csv", index=False)
        lines += [
            "## C4 — the penalty vs dropout, batch norm, weight decay (§9)",
            "",
            "Paired differences penalty − regulariser (negative = the penalty has the lower loss); Holm over the three "
            "regularisers within a cell.",
            "",
            _md(t4[t4.metric == "last_loss"], ".3f"),
            "",
        ]
    long = _pairs_long(reg)
    figs = _figures(results, summary, table, runs, long)
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    lines += [
        "Labels of the methods:",
        "",
        *[f"* **{k}**: {v[0]} ({v[1]})" for k, v in LABELS.items()],
        f"* **{NO_STOP}**: no stop (train to the last epoch; {dict(EPOCHS)} epochs by architecture)",
        "",
    ]
    atomic_write_text(results / "results.md", "\n".join(lines) + "\n")
    return results


def _tuning_vs_exploration(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per method and architecture: how many regenerated tuning runs stop and score as in the exploration."""
    tuning = table[table.split == "tuning"]
    if tuning.empty or not EXPLORATION_STOPS.is_file():
        return pd.DataFrame()
    old = pd.read_csv(EXPLORATION_STOPS)
    old["method"] = old.method.str.split().str[0]
    old["run"] = [Job("digits", s, a, r, "baseline", "T", 0).name for r, a, s in zip(old.regime, old.arch, old.seed)]
    both = tuning.merge(old[["run", "method", "stop", "outcome"]], on=["run", "method"], suffixes=("", "_explore"))
    both = both.merge(runs[["run", "arch"]], on="run")
    if both.empty:
        return pd.DataFrame()
    both["same_stop"] = (both.stop == both.stop_explore) | (both.stop.isna() & both.stop_explore.isna())
    both["same_outcome"] = both.outcome == both.outcome_explore
    order = {m: i for i, m in enumerate(METHODS)}
    out = (
        both.groupby(["method", "arch"])
        .agg(runs=("run", "size"), same_stop=("same_stop", "mean"), same_outcome=("same_outcome", "mean"))
        .reset_index()
    )
    return out.sort_values(["method", "arch"], key=lambda c: c.map(order) if c.name == "method" else c)


def load_results(results: str | Path) -> dict[str, Any]:
    """The tables of a results folder as DataFrames (for the notebook): name -> frame."""
    out: dict[str, Any] = {}
    for p in sorted(Path(results).glob("*.csv")):
        out[p.stem] = pd.read_csv(p)
    return out
