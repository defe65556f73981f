"""The penalty and the classical regularisers, paired by seed (PROTOCOL.md §9, claims C3 and C4).

Each part-R run is paired with the run of the same dataset, architecture and seed that
differs only in its condition (the baseline is part A's ``noise20`` run). Differences are
``condition − reference``; a favourable difference is negative for losses and positive for
accuracies.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import median_ci
from .scoring import ALPHA, holm

METRICS = ("last_loss", "best_acc", "last_acc", "min_loss", "final_sparsity")
PRIMARY = "last_loss"
LOWER_IS_BETTER = {"last_loss": True, "min_loss": True, "best_acc": False, "last_acc": False, "final_sparsity": True}
REGULARISERS = ("dropout", "batch_norm", "weight_decay")


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided exact Wilcoxon signed-rank p-value; zero differences dropped (1.0 when all are zero)."""
    from scipy.stats import wilcoxon

    d = diff[np.isfinite(diff)]
    d = d[d != 0]
    if len(d) == 0:
        return 1.0
    return float(wilcoxon(d, zero_method="wilcox", method="exact", alternative="two-sided").pvalue)


def pairs(runs: pd.DataFrame, condition: str, reference: str) -> pd.DataFrame:
    """One row per (dataset, arch, seed) present in both conditions: both values of every metric."""
    key = ["dataset", "arch", "seed"]
    a = runs[(runs.condition == condition) & (runs.regime == "noise20")].set_index(key)
    b = runs[(runs.condition == reference) & (runs.regime == "noise20")].set_index(key)
    both = a.index.intersection(b.index)
    out = pd.DataFrame(index=both)
    for m in METRICS:
        out[f"{m}_{condition}"] = a.loc[both, m]
        out[f"{m}_{reference}"] = b.loc[both, m]
        out[f"{m}_diff"] = a.loc[both, m] - b.loc[both, m]
    return out.reset_index()


def paired_table(runs: pd.DataFrame, condition: str, reference: str, resamples: int) -> pd.DataFrame:
    """Per (dataset, arch) cell and metric: medians, median difference, its CI, Wilcoxon p."""
    p = pairs(runs, condition, reference)
    rows: list[dict[str, Any]] = []
    for (dataset, arch), g in p.groupby(["dataset", "arch"], sort=True):
        for m in METRICS:
            d = g[f"{m}_diff"].to_numpy(dtype=float)
            lo, hi = median_ci(d, resamples)
            better = d < 0 if LOWER_IS_BETTER[m] else d > 0
            rows.append(
                {
                    "dataset": dataset,
                    "arch": arch,
                    "condition": condition,
                    "reference": reference,
                    "metric": m,
                    "pairs": int(np.isfinite(d).sum()),
                    f"median_{condition}": float(g[f"{m}_{condition}"].median()),
                    f"median_{reference}": float(g[f"{m}_{reference}"].median()),
                    "median_diff": float(np.median(d)) if len(d) else math.nan,
                    "diff_lo": lo,
                    "diff_hi": hi,
                    "favourable_pairs": int(better.sum()),
                    "wilcoxon_p": wilcoxon_p(d),
                }
            )
    return pd.DataFrame(rows)


def learning_check(runs: pd.DataFrame) -> pd.DataFrame:
    """Post hoc (not pre-registered): per noise20 cell and condition, how many runs never learned.

    A run *did not learn* when its best test accuracy over all epochs stays below twice the
    chance level (``2 / num_classes``): its test loss then sits near ``ln(num_classes)``, the
    loss of uniform predictions, and a "lower last-epoch test loss" than an overfitting
    baseline says nothing about generalisation.
    """
    r = runs[runs.regime == "noise20"].copy()
    if r.empty:
        return pd.DataFrame()
    r["did_not_learn"] = ~learned(r.best_acc, r.num_classes)
    out = r.groupby(["dataset", "arch", "condition"], sort=True).agg(
        runs=("run", "size"),
        did_not_learn=("did_not_learn", "sum"),
        median_best_acc=("best_acc", "median"),
        median_last_loss=("last_loss", "median"),
    )
    out["mostly_did_not_learn"] = out.did_not_learn * 2 >= out.runs
    return out.reset_index()


def learned(best_acc: Any, num_classes: Any) -> Any:
    """A run learned when its best test accuracy reaches twice chance (``2 / num_classes``)."""
    return best_acc >= 2.0 / num_classes


def _verdict_word(n: int, cells: int) -> str:
    return "supported" if n == cells and n >= 2 else ("partly supported" if n >= 1 else "not supported")


def c3(runs: pd.DataFrame, resamples: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Penalty vs baseline: every metric per cell; the verdict per dataset on the primary metric.

    The verdict is the pre-registered one (§9). Beside it, post hoc: the same rule counting only
    supporting cells in which most penalised runs learned (:func:`learning_check`).
    """
    table = paired_table(runs, "penalty", "baseline", resamples)
    if table.empty:
        return table, pd.DataFrame()
    prim = table[table.metric == PRIMARY].copy()
    prim["p_holm"] = holm(prim.wilcoxon_p.tolist())
    prim["supports"] = (prim.median_diff < 0) & (prim.p_holm < ALPHA)
    check = learning_check(runs)
    check = check[check.condition == "penalty"].set_index(["dataset", "arch"])
    prim["penalty_learned"] = [
        (d, a) not in check.index or not check.loc[(d, a), "mostly_did_not_learn"]
        for d, a in zip(prim.dataset, prim.arch)
    ]
    table = table.merge(prim[["dataset", "arch", "metric", "p_holm"]], on=["dataset", "arch", "metric"], how="left")
    verdict = []
    for dataset, g in prim.groupby("dataset", sort=True):
        n = int(g.supports.sum())
        n_learned = int((g.supports & g.penalty_learned).sum())
        verdict.append(
            {
                "dataset": dataset,
                "cells": len(g),
                "cells_supporting": n,
                "verdict": _verdict_word(n, len(g)),
                "cells_supporting_where_penalty_learned": n_learned,
                "verdict_learned_only_post_hoc": _verdict_word(n_learned, len(g)),
            }
        )
    return table, pd.DataFrame(verdict)


def c4(runs: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """Penalty − each classical regulariser (Holm over the three within a cell, per metric)."""
    parts = [paired_table(runs, "penalty", reg, resamples) for reg in REGULARISERS]
    parts += [paired_table(runs, reg, "baseline", resamples) for reg in REGULARISERS]
    table = (
        pd.concat([p for p in parts if not p.empty], ignore_index=True)
        if any(len(p) for p in parts)
        else pd.DataFrame()
    )
    if table.empty:
        return table
    table["p_holm"] = math.nan
    vs = table.condition == "penalty"
    for _, g in table[vs].groupby(["dataset", "arch", "metric"]):
        table.loc[g.index, "p_holm"] = holm(g.wilcoxon_p.tolist())
    return table
