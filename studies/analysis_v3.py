"""Scoring and reporting of study v3 (PROTOCOL.md, v3 addendum §V3–V5): tables, figures, ``results.md``.

:func:`analyse` reads every finished run of the v3 grid (unfinished ones are listed in
``grid_status.csv`` and never filled in), chooses each tuned rule on the tuning runs alone,
scores v2's methods and the published label-free candidates P1–P9 on the held-out runs with
v2's scoring (:mod:`studies.scoring`), decides which candidate works (§V3), checks that the
retrained runs reproduce study v2's, and rewrites every file of the results folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaisparse._io import atomic_write_text

from . import published
from .analysis import (
    FIGURE_DPI,
    _figures,
    _md,
    _rates,
    head_lines,
    panel_grid,
    run_record,
    seaborn_theme,
    start_results,
)
from .grid import EPOCHS, SGD_LR, Job
from .methods import LABELS as V2_LABELS
from .scoring import DECISION_COLUMNS, NO_STOP, decision, holm, method_rows, summarise

V2_RESULTS = Path(__file__).resolve().parent / "results" / "v2"
LABELS = {**V2_LABELS, **published.LABELS}
#: method ids of each set of held-out runs (the candidates P1–P9 first).
SET_METHODS: dict[str, tuple[str, ...]] = {
    "adam": (
        "P1",
        "P2",
        "P3",
        "P4",
        "P5",
        "P6",
        "D0",
        "D1",
        "D2",
        "D3",
        "D4",
        "B1",
        "B2",
        "B3",
        "L1",
        "L2",
        "L1p2",
        NO_STOP,
    ),
    "twins": ("P7", "D1", "B1", "B2", "B3", "L1", "L2", NO_STOP),
    "sgd": ("P8", "P9", "D0", "D1", "B1", "B2", "B3", "L1", "L2", NO_STOP),
}
SET_TITLES = {"adam": "Adam grid (part A)", "twins": "small_cnn runs with a twin", "sgd": "plain-SGD cell (part S)"}
REPRO_COLUMNS = ("e_star", "min_loss", "last_loss")


def _in_set(job: Job, has_twin: bool, which: str) -> bool:
    if which == "adam":
        return job.part in ("A", "T")
    if which == "twins":
        return job.part in ("A", "T") and has_twin
    return job.part == "S"


def _load(root: Path, grid: list[Job], status: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per-run facts of every finished run, and (job, history, facts, loss, signals, has twin) per scored run."""
    done = set(status[status.status == "complete"].run)
    jobs = {job.name: job for job in grid}
    facts, scored = [], {}
    for row in status[status.status == "complete"].itertuples():
        job = jobs[row.run]
        h, f = run_record(root, row)
        facts.append(f)
        if job.part in ("A", "T", "S"):
            twin = f"{job.name}-twin"
            has_twin = twin in done
            sig = published.series(root, job.name, twin if has_twin else None)
            loss = h.metric("test", "loss").sort_index()
            scored[job.name] = (job, h, f, loss, sig, has_twin)
    return pd.DataFrame(facts), scored


def _tune(scored: dict[str, Any]) -> tuple[dict[str, published.Rule], pd.DataFrame]:
    """§V3: each candidate's rule (published, or chosen on its tuning runs) and the grid scores."""
    rules: dict[str, published.Rule] = {}
    tables = []
    for cand, (signal, how, which) in published.CANDIDATES.items():
        if how == "published":
            rules[cand] = published.PUBLISHED[signal]
            continue
        tuning = [
            (f, loss, sig)
            for job, _h, f, loss, sig, twin in scored.values()
            if job.split == "tuning" and _in_set(job, twin, which)
        ]
        rules[cand], table = published.tune(signal, tuning)
        if not table.empty:
            tables.append(table.assign(candidate=cand, signal=signal))
    grid_scores = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    return rules, grid_scores


def _reproduction(runs: pd.DataFrame) -> pd.DataFrame:
    """Parts A and T against study v2's runs.csv: the same e*, minimum and last-epoch test loss?"""
    path = V2_RESULTS / "runs.csv"
    mine = runs[runs.part.isin(("A", "T"))]
    if mine.empty or not path.is_file():
        return pd.DataFrame()
    v2 = pd.read_csv(path)
    both = mine.merge(v2[["run", *REPRO_COLUMNS]], on="run", suffixes=("", "_v2"))
    if both.empty:
        return pd.DataFrame()
    out = both[["run", "part", "arch"]].copy()
    for col in REPRO_COLUMNS:
        out[f"same_{col}"] = np.isclose(both[col].astype(float), both[f"{col}_v2"].astype(float), rtol=1e-6, atol=0)
    out["same"] = out[[f"same_{c}" for c in REPRO_COLUMNS]].all(axis=1)
    return out


def _v2_again(summary: pd.DataFrame) -> pd.DataFrame:
    """v2's methods: their pooled held-out score in study v2 beside the same score on the v3 runs."""
    path = V2_RESULTS / "detector_summary.csv"
    v3 = summary[summary.group == "held_out · adam: pooled"] if not summary.empty else summary
    if v3.empty or not path.is_file():
        return pd.DataFrame()
    v2 = pd.read_csv(path)
    v2 = v2[v2.group == "held_out: pooled"].set_index("method")
    v3 = v3.set_index("method")
    rows = []
    for m in ("D0", "D1", "D2", "D3", "D4", "B1", "B2", "B3", "L1", "L2"):
        if m in v2.index and m in v3.index:
            rows.append(
                {
                    "method": m,
                    "label": LABELS[m][0],
                    "v2 runs": int(v2.loc[m, "runs"]),
                    "v2 score": v2.loc[m, "score"],
                    "v2 95% CI": f"[{v2.loc[m, 'score_lo']:.2f}, {v2.loc[m, 'score_hi']:.2f}]",
                    "v3 runs": int(v3.loc[m, "runs"]),
                    "v3 score": v3.loc[m, "score"],
                    "v3 95% CI": f"[{v3.loc[m, 'score_lo']:.2f}, {v3.loc[m, 'score_hi']:.2f}]",
                }
            )
    return pd.DataFrame(rows)


@seaborn_theme()
def _signal_figure(out: Path, scored: dict[str, Any], split: str = "held_out") -> str | None:
    """Median of each signal (z-scored within its run) against epochs from the test-loss minimum.

    Drawn from the runs of ``split``: ``signals.png`` for the held-out runs, ``signals_tuning.png`` for the
    tuning runs (the runs the tuned rules were chosen on: a picture of the signals, not a held-out result).
    """
    import seaborn as sns

    rows = []
    for job, _h, f, _loss, sig, _twin in scored.values():
        if job.split != split:
            continue
        for name, s in sig.items():
            if s is None or s.dropna().size < 3 or not np.nanstd(s.to_numpy(dtype=float)):
                continue
            z = (s - s.mean()) / s.std()
            cell = "plain SGD" if job.part == "S" else "Adam"
            rows += [
                {"signal": name, "optimiser": cell, "from_min": int(e) - int(f["e_star"]), "z": float(v)}
                for e, v in z.items()
            ]
    if not rows:
        return None
    data = pd.DataFrame(rows)
    data = data[data.from_min.between(-30, 30)]
    fig, axes = panel_grid(len(published.SIGNALS), 3.0)
    for ax, name in zip(axes, published.SIGNALS):
        sub = data[data.signal == name]
        if not sub.empty:
            sns.lineplot(data=sub, x="from_min", y="z", hue="optimiser", estimator="median", errorbar=("pi", 50), ax=ax)
        ax.axvline(0, color="k", lw=0.8)
        ax.set_title(f"{name} ({split.replace('_', '-')} runs)")
        ax.set_xlabel("epoch − e* (test-loss minimum)")
        ax.set_ylabel("z-scored per run" if ax.get_subplotspec().is_first_col() else "")
    name = "signals.png" if split == "held_out" else f"signals_{split}.png"
    fig.suptitle("each signal z-scored per run; median and interquartile range over runs", fontsize=10)
    fig.savefig(out / name, dpi=FIGURE_DPI)
    return name


def analyse(root: Path, grid: list[Job], results: Path, *, resamples: int = 10_000, quick: bool = False) -> Path:
    """Score every finished run of the v3 ``grid`` under ``root`` and rewrite ``results``."""
    status = start_results(results, root, grid)
    runs, scored = _load(root, grid, status)
    lines = head_lines(
        results,
        status,
        runs,
        title="Study v3 results (generated by `python -m studies --study v3`; never edited by hand)",
        protocol="Protocol: `studies/PROTOCOL.md` and its v3 addendum (pre-registered before any v3 run).",
        quick=quick,
        timing_note="Wall seconds of one training run with the label-free signals (one process, one torch thread, "
        "`nice -n 19`, 2 submitit workers on the shared 2-core machine, 1 in the last session; `median_load1`: the 1-minute load average "
        "when the run ended).",
    )
    complete = bool((status.status == "complete").all())
    if not scored:
        atomic_write_text(results / "results.md", "\n".join(lines) + "\n")
        return results
    runs.to_csv(results / "runs.csv", index=False)
    rules, grid_scores = _tune(scored)
    if not grid_scores.empty:
        grid_scores.to_csv(results / "tuning_grid.csv", index=False)
    chosen = []
    for cand, (signal, how, which) in published.CANDIDATES.items():
        row: dict[str, Any] = {"candidate": cand, "signal": signal, "rule": how, "runs": which}
        tuned_on_nothing = how == "tuned" and (grid_scores.empty or cand not in set(grid_scores.candidate))
        row["chosen"] = "not chosen: no tuning run" if tuned_on_nothing else rules[cand].describe()
        if how == "tuned" and not grid_scores.empty:
            g = grid_scores[grid_scores.candidate == cand]
            best = g[g.rule == row["chosen"]].iloc[0] if len(g) else None
            if best is not None:
                row.update(tuning_runs=best.runs, tuning_hit=best.hit, tuning_false_alarm=best.false_alarm)
                row.update(tuning_score=best.score, grid_size=len(g))
        chosen.append(row)
    chosen_table = pd.DataFrame(chosen)
    chosen_table.to_csv(results / "rules.csv", index=False)

    rows = []
    for name, (job, h, f, _loss, sig, twin) in scored.items():
        extra = {
            cand: rules[cand].stop(sig[signal])
            for cand, (signal, _how, which) in published.CANDIDATES.items()
            if _in_set(job, twin, which)
        }
        for r in method_rows(name, h, f, extra):
            rows.append({**r, "split": job.split, "part": job.part})
    table = pd.DataFrame(rows)
    table.to_csv(results / "detector_runs.csv", index=False)

    scored_runs = runs[runs.run.isin(list(scored))]
    sets = {
        "adam": scored_runs[scored_runs.part.isin(("A", "T"))],
        "twins": scored_runs[scored_runs.run.isin([n for n, v in scored.items() if v[5]])],
        "sgd": scored_runs[scored_runs.part == "S"],
    }
    summaries, groups = [], {}
    for which, part_runs in sets.items():
        for split in ("held_out", "tuning"):
            g = part_runs[part_runs.split == split]
            if g.empty:
                continue
            groups[f"{split} · {which}: pooled"] = (which, g)
            for d in sorted(g.dataset.unique()):
                groups[f"{split} · {which}: {d}"] = (which, g[g.dataset == d])
    for name, (which, g) in groups.items():
        methods = [m for m in SET_METHODS[which] if m in set(table[table.run.isin(g.run)].method)]
        s = summarise(table, g, methods, resamples, labels=LABELS)
        s.insert(0, "group", name)
        summaries.append(s)
    summary = pd.concat(summaries, ignore_index=True) if summaries else pd.DataFrame()
    summary.to_csv(results / "detector_summary.csv", index=False)

    lines += [
        "## The label-free candidates P1–P9 (§V3)",
        "",
        "Rules: published (fixed) or tuned (chosen on the tuning runs alone, from the pre-registered grid; "
        "`tuning_grid.csv` has every rule's tuning score):",
        "",
        _md(chosen_table),
        "",
        "Outcomes as in study v2 (§7): a run overfits when its test loss rises > 5 % above its minimum after "
        "the minimum epoch e*; a stop s is a hit if −2 ≤ e* − s ≤ 5, a false alarm if earlier (or on a run that "
        "does not overfit), a miss if later or absent. Score = hit − false-alarm rate; 95 % percentile bootstrap "
        f"CIs ({resamples:,} resamples, stratified by dataset × arch × regime). Excess loss = L(stop)/L(e*) − 1.",
        "",
    ]
    for name, (which, _) in groups.items():
        s = summary[summary.group == name]
        lines += [f"### {name} ({SET_TITLES[which]})", "", _md(_rates(s)), ""]

    decided = _decide(table, summary, groups, resamples)
    all_a = bool((status[status.part == "A"].status == "complete").all())
    if not decided.empty:
        decided.to_csv(results / "decision.csv", index=False)
        works = decided[decided.works].method.tolist()
        worthy = decided[decided.default_worthy].method.tolist()
        lines += [
            "### Decision (§V3) on the held-out runs" + ("" if complete else " scored so far"),
            "",
            _md(decided[["method", "runs", *DECISION_COLUMNS[1:]]]),
            "",
            "**Candidates meeting all three criteria: "
            + (", ".join(works) if works else "none")
            + "**; recommended as the label-free option (works, hit ≥ 0.5, median excess loss below not stopping): "
            + (", ".join(worthy) if worthy else "none")
            + ". "
            + (
                "Every run of the grid is complete."
                if complete
                else "**The grid is not complete** (see the counts above): this is the decision on the runs scored "
                "so far" + ("" if all_a else " (part A is incomplete)") + ", not the pre-registered one on all of them."
            ),
            "",
        ]
    repro = _reproduction(runs)
    if not repro.empty:
        repro.to_csv(results / "reproduction_v2.csv", index=False)
        by = repro.groupby(["part", "arch"]).same.agg(["size", "sum"]).reset_index()
        by.columns = ["part", "arch", "runs", "same_as_v2"]
        lines += [
            "## Reproduction of study v2's runs",
            "",
            "The signals never touch training (own random generator, eval mode, weights and gradients untouched), so "
            "the protocol expected each retrained A and T run to equal study v2's: the same e*, minimum and last-epoch "
            "test loss (`studies/results/v2/runs.csv`, relative tolerance 1e-6). They do not, because this machine's "
            "CPU differs from v2's (change log 1: the same job without the signals gives the v3 run exactly); v2's "
            "methods re-scored here are a second, correlated replication on the same seeds and data. Runs equal to "
            "v2's, by part and architecture:",
            "",
            _md(by, ".0f"),
            "",
        ]
    again = _v2_again(summary)
    if not again.empty:
        again.to_csv(results / "v2_methods_again.csv", index=False)
        lines += [
            "## Study v2's methods on the v3 runs",
            "",
            "Pooled held-out score (hit − false alarm) of v2's methods on v2's runs (`studies/results/v2/`) and on the "
            "v3 runs scored so far (same seeds and data, other trajectories: change log 1):",
            "",
            _md(again),
            "",
        ]
    figs = _figures(
        results,
        summary[summary.group.str.endswith("pooled") & summary.group.str.startswith("held_out")],
        table,
        runs,
        pd.DataFrame(),
        lead_methods=("P1", "P2", "P3", "P4", "P5", "P6", "D1", "B2", "L2"),
        order=tuple(dict.fromkeys([*SET_METHODS["adam"], *SET_METHODS["sgd"], "P7"])),
    )
    pooled = summary.group.str.endswith("pooled")
    figs += _figures(
        results,
        summary[pooled & summary.group.str.startswith("tuning")],
        table.iloc[:0],
        runs,
        pd.DataFrame(),
        scores_name="scores_tuning.png",
    )
    for split in ("held_out", "tuning"):
        sig_fig = _signal_figure(results, scored, split)
        figs += [sig_fig] if sig_fig else []
    lines += ["## Figures", ""] + [f"![{f}]({f})" for f in figs] + [""]
    lines += [
        "Labels of the methods:",
        "",
        *[f"* **{k}**: {v[0]} ({v[1]})" for k, v in LABELS.items() if k in set(table.method)],
        f"* **{NO_STOP}**: no stop (train to the last epoch; {dict(EPOCHS)} epochs by architecture)",
        f"* plain-SGD cell: `small_cnn`, SGD without momentum, lr {SGD_LR:g}, 60 epochs",
        "",
    ]
    atomic_write_text(results / "results.md", "\n".join(lines) + "\n")
    return results


def _decide(
    table: pd.DataFrame, summary: pd.DataFrame, groups: dict[str, tuple[str, pd.DataFrame]], resamples: int
) -> pd.DataFrame:
    """§V3: Holm over P1–P9 (each scored on its own held-out set), then v2's three criteria per candidate."""
    p: dict[str, float] = {}
    for which in SET_METHODS:
        pooled = summary[summary.group == f"held_out · {which}: pooled"].set_index("method")
        for cand, (_s, _h, w) in published.CANDIDATES.items():
            if w == which and cand in pooled.index:
                p[cand] = float(pooled.loc[cand, "p_score_le_0"])
    adjusted = dict(zip(p, holm(list(p.values())))) if p else {}
    parts = []
    for which in SET_METHODS:
        key = f"held_out · {which}: pooled"
        if key not in groups:
            continue
        runs = groups[key][1]
        pooled = summary[summary.group == key]
        by_dataset = {d: summary[summary.group == f"held_out · {which}: {d}"] for d in sorted(runs.dataset.unique())}
        cands = [c for c, (_s, _h, w) in published.CANDIDATES.items() if w == which and c in adjusted]
        if not cands:
            continue
        dec = decision(
            table[table.split == "held_out"], runs, pooled, by_dataset, resamples, cands, LABELS, adjusted=adjusted
        )
        dec.insert(1, "runs", len(runs))
        parts.append(dec)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
