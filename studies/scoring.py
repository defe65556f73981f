"""Scoring of study v2 (PROTOCOL.md §7–8): per-run outcomes, stratified bootstrap, the decision.

Every method's stop on every run becomes one row with the *probabilities* of the four
outcomes (0/1 for a method with one stop; the exact expected shares for B3, chance), the
lead and the excess test loss. Rates are means of those columns; the bootstrap resamples
runs within each dataset × arch × regime cell (the same resamples for every method, so
paired differences are paired).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from xaisparse.detect import OUTCOMES
from xaisparse.detect.baselines import chance_outcomes
from xaisparse.detect.scoring import classify, overfits

from .bootstrap import percentile_ci, resample_index
from .methods import CANDIDATES, CHANCE_FIRST, LABEL_FREE_REFERENCES, LABELS, stops

MIN_RISE = 0.05  # §7: the run overfits when its test loss rises 5 % above the minimum
MAX_LEAD, LATE = 5, 2
CELL = ["dataset", "arch", "regime"]
#: the columns of the decision table shown in results.md
DECISION_COLUMNS = [
    "method",
    "score",
    "p_holm",
    "c1_score_above_0",
    "minus_B1",
    "minus_B2",
    "minus_B3",
    "c2_beats_references",
    "c3_above_0_each_dataset",
    "works",
    "default_worthy",
]
NO_STOP = "N0"  # train to the last epoch: the excess loss a stop has to beat
ALPHA = 0.05


def run_facts(history: Any) -> dict[str, Any]:
    """Test-loss facts of one run (the yardstick: held-out labels, for scoring only).

    The facts a run summary holds come from :meth:`History.summary
    <xaisparse.history.History.summary>` (finite-only minimum, earliest on ties; last values);
    the study adds whether the loss overfits (§7: 5 % above its minimum), the largest rise, the
    accuracy at the minimum and the mean final sparsity over the layers.
    """
    row = history.summary(split="test").iloc[0]
    loss = history.metric("test", "loss")
    e_star, overfit = overfits(loss, MIN_RISE, relative=True)
    best = float(row["min test loss"])
    last = int(loss.index.max())
    final = row[[c for c in row.index if c.startswith("sparsity ")]].to_numpy(dtype=float)
    seconds = row["train seconds"]
    return {
        "e_star": e_star,
        "last_epoch": last,
        "overfits": overfit,
        "min_loss": best,
        "last_loss": float(row["last test loss"]),
        "max_rise": float(loss[loss.index > e_star].max() / best - 1) if last > e_star else 0.0,
        "best_acc": float(row["best test acc"]),
        "acc_at_best": float(history.metric("test", "accuracy").get(e_star, math.nan)),
        "last_acc": float(row["last test acc"]),
        "final_sparsity": float(np.nanmean(final)) if np.isfinite(final).any() else math.nan,
        "train_seconds": None if pd.isna(seconds) else float(seconds),
        "num_classes": len(history.config.get("data", {}).get("test_class_counts", [])) or math.nan,
    }


def _excess(loss: pd.Series, stop: int | None, best: float) -> float:
    at = int(loss.index.max()) if stop is None else int(stop)
    return float(loss.get(at, math.nan) / best - 1)


def method_rows(
    name: str, history: Any, facts: dict[str, Any], extra: dict[str, int | None] | None = None
) -> list[dict[str, Any]]:
    """One row per method on one run: stop, lead, outcome probabilities, excess loss.

    The methods are v2's (:func:`~studies.methods.stops`), ``extra`` (more stops by method id),
    no stop (``N0``) and chance (``B3``, its exact expected outcome shares).
    """
    loss = history.metric("test", "loss")
    loss = loss[~loss.index.duplicated(keep="last")].sort_index()
    e_star, overfit, best = facts["e_star"], facts["overfits"], facts["min_loss"]

    def outcome_of(stop: int | None) -> str:
        return classify(overfit, stop, e_star, MAX_LEAD, LATE)[0]

    rows = []
    for method, stop in {**stops(history), **(extra or {}), NO_STOP: None}.items():
        outcome, lead = classify(overfit, stop, e_star, MAX_LEAD, LATE)
        rows.append(
            {
                "run": name,
                "method": method,
                "stop": stop,
                "lead": lead,
                "outcome": outcome,
                **{f"p_{o}": float(o == outcome) for o in OUTCOMES},
                "excess_loss": _excess(loss, stop, best),
            }
        )
    chance = chance_outcomes([int(e) for e in loss.index], outcome_of, first=CHANCE_FIRST)
    rows.append(
        {
            "run": name,
            "method": "B3",
            "stop": None,
            "lead": math.nan,
            "outcome": "expected",
            **{f"p_{o}": chance.get(o, 0.0) for o in OUTCOMES},
            "excess_loss": math.nan,
        }
    )
    return rows


# ---------------------------------------------------------------------------- summaries
def _wide(table: pd.DataFrame, column: str, methods: Sequence[str]) -> np.ndarray:
    """runs × methods matrix of one column (rows in the order of ``table.run.unique()``)."""
    w = table.pivot(index="run", columns="method", values=column)
    runs = list(dict.fromkeys(table.run))
    return w.reindex(index=runs, columns=list(methods)).to_numpy(dtype=float)


def summarise(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    methods: Sequence[str],
    resamples: int,
    seed: int = 0,
    labels: dict[str, tuple[str, str]] | None = None,
) -> pd.DataFrame:
    """Rates, score, CIs, leads and excess loss per method over the runs of ``runs`` (one group)."""
    labels = LABELS if labels is None else labels
    runs = runs.set_index("run")
    table = table[table.run.isin(runs.index)]
    order = list(dict.fromkeys(table.run))
    runs = runs.loc[order]
    idx = resample_index(runs[CELL].astype(str).agg("|".join, axis=1), resamples, seed)
    hit, fa = _wide(table, "p_hit", methods), _wide(table, "p_false_alarm", methods)
    miss, cr = _wide(table, "p_miss", methods), _wide(table, "p_correct_rejection", methods)
    excess = _wide(table, "excess_loss", methods)
    score = hit - fa
    rows = []
    for j, m in enumerate(methods):
        sub = table[table.method == m]
        leads = sub.lead.dropna()
        boot_score = score[:, j][idx].mean(1)
        row = {
            "method": m,
            "label": labels.get(m, ("no stop (train to the last epoch)", ""))[0],
            "runs": len(order),
            "overfitting_runs": int(runs.overfits.sum()),
            "stops": int(sub.stop.notna().sum()),
            "hit": hit[:, j].mean(),
            "false_alarm": fa[:, j].mean(),
            "miss": miss[:, j].mean(),
            "correct_rejection": cr[:, j].mean(),
            "score": score[:, j].mean(),
        }
        for name, mat in (("hit", hit), ("false_alarm", fa), ("miss", miss)):
            row[f"{name}_lo"], row[f"{name}_hi"] = percentile_ci(mat[:, j][idx].mean(1))
        row["score_lo"], row["score_hi"] = percentile_ci(boot_score)
        row["p_score_le_0"] = float((boot_score <= 0).mean())
        row["median_lead"] = float(leads.median()) if len(leads) else math.nan
        row["lead_q25"] = float(leads.quantile(0.25)) if len(leads) else math.nan
        row["lead_q75"] = float(leads.quantile(0.75)) if len(leads) else math.nan
        ex = excess[:, j]
        row["median_excess_loss"] = float(np.median(ex)) if np.isfinite(ex).all() and len(ex) else math.nan
        if np.isfinite(ex).all() and len(ex):
            row["excess_lo"], row["excess_hi"] = percentile_ci(np.median(ex[idx], axis=1))
        else:
            row["excess_lo"] = row["excess_hi"] = math.nan
        rows.append(row)
    return pd.DataFrame(rows)


def paired_p(table: pd.DataFrame, runs: pd.DataFrame, a: str, b: str, resamples: int, seed: int = 0) -> dict:
    """score(a) − score(b) on the same runs: point estimate, CI, one-sided p (share of resamples <= 0)."""
    runs = runs.set_index("run")
    table = table[table.run.isin(runs.index)]
    order = list(dict.fromkeys(table.run))
    runs = runs.loc[order]
    idx = resample_index(runs[CELL].astype(str).agg("|".join, axis=1), resamples, seed)
    s = _wide(table, "p_hit", [a, b]) - _wide(table, "p_false_alarm", [a, b])
    d = s[:, 0] - s[:, 1]
    boot = d[idx].mean(1)
    lo, hi = percentile_ci(boot)
    return {"difference": float(d.mean()), "lo": lo, "hi": hi, "p": float((boot <= 0).mean())}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (in the input order).

    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return [round(float(x), 12) for x in adjusted]


def decision(
    table: pd.DataFrame,
    runs: pd.DataFrame,
    pooled: pd.DataFrame,
    by_dataset: dict[str, pd.DataFrame],
    resamples: int,
    candidates: Sequence[str] = CANDIDATES,
    labels: dict[str, tuple[str, str]] | None = None,
    adjusted: dict[str, float] | None = None,
) -> pd.DataFrame:
    """§8: which label-free variant works, and which is default-worthy (one row per candidate).

    ``adjusted``: Holm-adjusted p-values computed over a larger family (v3: P1–P9, whose
    candidates are scored on different groups of runs); default: Holm over ``candidates`` here.
    """
    labels = LABELS if labels is None else labels
    pooled = pooled.set_index("method")
    present = [m for m in candidates if m in pooled.index]
    if adjusted is None:
        adjusted = dict(zip(present, holm([pooled.loc[m, "p_score_le_0"] for m in present])))
    no_stop = pooled.loc[NO_STOP, "median_excess_loss"] if NO_STOP in pooled.index else math.nan
    rows = []
    for m in present:
        row: dict[str, Any] = {
            "method": m,
            "label": labels[m][0],
            "score": pooled.loc[m, "score"],
            "p_score_le_0": pooled.loc[m, "p_score_le_0"],
            "p_holm": adjusted[m],
            "c1_score_above_0": adjusted[m] < ALPHA,
        }
        beats = []
        for ref in LABEL_FREE_REFERENCES:
            pp = paired_p(table, runs, m, ref, resamples)
            row[f"minus_{ref}"] = pp["difference"]
            row[f"p_vs_{ref}"] = pp["p"]
            beats.append(pp["p"] < ALPHA)
        row["c2_beats_references"] = all(beats)
        per = {d: s.set_index("method").loc[m, "score"] for d, s in by_dataset.items()}
        for d, v in per.items():
            row[f"score_{d}"] = v
        row["c3_above_0_each_dataset"] = bool(per) and all(v > 0 for v in per.values())
        row["works"] = bool(row["c1_score_above_0"] and row["c2_beats_references"] and row["c3_above_0_each_dataset"])
        row["hit"] = pooled.loc[m, "hit"]
        row["median_excess_loss"] = pooled.loc[m, "median_excess_loss"]
        row["no_stop_median_excess_loss"] = no_stop
        row["default_worthy"] = bool(row["works"] and row["hit"] >= 0.5 and row["median_excess_loss"] < no_stop)
        rows.append(row)
    return pd.DataFrame(rows)
