"""The pre-registered detector variants and references (studies/PROTOCOL.md §5) on the tuning runs.

Parameters were chosen by ``tune.py`` and ``extend_grid.py`` (best hit − false-alarm rate over
the union of both grids, ties: smaller median excess loss). Writes ``selected.md`` (rates with
bootstrap intervals) and ``selected_runs.csv`` (the stop epoch of every variant on every
tuning run: phase 2's implementation must reproduce these stops on regenerated runs).

    nice -n 19 .venv/bin/python studies/explore/selected.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from signals import Run, layer_mean, load_runs
from variants import classify, excess_loss, rule_rise, rule_slope_up, rule_train_plateau, signal

from xaisparse.detect import OverfitDetector, early_stopping_epoch

RISE_A = dict(smooth=1, threshold=0.0, noise=6.0, patience=3, min_layers=1.0, warmup=5)
RISE_JS = dict(smooth=3, threshold=0.0, noise=2.0, patience=1, min_layers=1.0, warmup=12)
RISE_GAP = dict(smooth=1, threshold=0.0, noise=1.5, patience=2, min_layers=1.0, warmup=5)
SLOPE_GAP = dict(window=3, k=3.0, patience=1, warmup=5)
FIXED_EPOCH = 36


def shipped_default(run: Run, path: Path) -> int | None:
    """The package's detector exactly as shipped (defaults, every recorded layer, no layer dropped)."""
    from xaisparse.history import History

    return OverfitDetector().detect(History.load(path)).alarm_epoch


def es_restored(run: Run, patience: int) -> int | None:
    """Early stopping on the labelled test loss, reporting the best epoch so far when it fires."""
    stop = early_stopping_epoch(pd.Series(run.test_loss, index=run.epochs), patience=patience)
    if stop is None:
        return None
    i = int(np.searchsorted(run.epochs, stop))
    return int(run.epochs[np.nanargmin(run.test_loss[: i + 1])])


METHODS = {
    "D0 shipped default (rise, test spatial_mean)": None,  # needs the History, handled below
    "D1 rise, test spatial_mean (tuned)": lambda r: rule_rise(signal(r, "test:spatial_mean"), r.epochs, **RISE_A),
    "D2 rise, train/test per-channel JS divergence": lambda r: rule_rise(signal(r, "div:js"), r.epochs, **RISE_JS),
    "D3 rise, train-test gap of channel_mean": lambda r: rule_rise(signal(r, "gap:channel_mean"), r.epochs, **RISE_GAP),
    "D4 slope, train-test gap of channel_mean": lambda r: rule_slope_up(
        layer_mean(signal(r, "gap:channel_mean")), r.epochs, **SLOPE_GAP
    ),
    "B1 training-loss plateau (label-free)": lambda r: rule_train_plateau(r.train_loss, r.epochs, window=10, tau=0.02),
    f"B2 fixed epoch {FIXED_EPOCH} (label-free)": lambda r: FIXED_EPOCH,
    "L1 early stopping, test loss, patience 10 (labelled)": lambda r: early_stopping_epoch(
        pd.Series(r.test_loss, index=r.epochs), patience=10
    ),
    "L2 same, best epoch restored (labelled)": lambda r: es_restored(r, 10),
}


def main() -> int:
    warnings.simplefilter("ignore", RuntimeWarning)
    root = Path("runs/explore/runs")
    runs = load_runs(root, "digits-*")
    if any(r.seed > 4 or r.dataset != "digits" for r in runs):
        raise SystemExit("the exploration reads the digits tuning seeds 0-4 only")
    rows = []
    for method, fn in METHODS.items():
        for r in runs:
            stop = shipped_default(r, root / r.name) if fn is None else fn(r)
            outcome, lead = classify(r, stop, 0.05)
            rows.append(
                {
                    "method": method,
                    "run": r.name,
                    "arch": r.arch,
                    "regime": r.regime,
                    "seed": r.seed,
                    "e_star": int(r.epochs[np.nanargmin(r.test_loss)]),
                    "stop": stop,
                    "lead": lead,
                    "outcome": outcome,
                    "excess_loss": excess_loss(r, stop),
                }
            )
    table = pd.DataFrame(rows)
    table["stop"] = table["stop"].astype("Int64")
    out = Path(__file__).parent / "results"
    table.to_csv(out / "selected_runs.csv", index=False, float_format="%.4f")
    rng = np.random.default_rng(0)
    summary = []
    for method, g in table.groupby("method", sort=False):
        o = g.outcome.to_numpy()
        hit, fa = (o == "hit").astype(float), (o == "false_alarm").astype(float)
        # stratified bootstrap: resample seeds within each arch × regime cell
        cells = [
            np.flatnonzero((g.arch == a).to_numpy() & (g.regime == b).to_numpy())
            for a, b in g[["arch", "regime"]].drop_duplicates().itertuples(index=False)
        ]
        reps = np.stack([np.concatenate([rng.choice(c, len(c)) for c in cells]) for _ in range(10_000)])
        s = hit[reps].mean(1) - fa[reps].mean(1)
        leads = g.lead.dropna()
        summary.append(
            {
                "method": method,
                "hit": hit.mean(),
                "false_alarm": fa.mean(),
                "miss": (o == "miss").mean(),
                "score": hit.mean() - fa.mean(),
                "score_95ci": "[{:.2f}, {:.2f}]".format(*np.percentile(s, [2.5, 97.5])),
                "alarms": int(g.stop.notna().sum()),
                "median_lead": leads.median() if len(leads) else np.nan,
                "lead_iqr": f"[{leads.quantile(0.25):.0f}, {leads.quantile(0.75):.0f}]" if len(leads) else "",
                "median_excess_loss": g.excess_loss.median(),
            }
        )
    summary = pd.DataFrame(summary)
    no_stop = np.median([excess_loss(r, None) for r in runs])
    md = [
        "# Pre-registered variants on the tuning runs (digits, seeds 0–4, 30 runs)",
        "",
        f"Median excess test loss at the last epoch (no stop): {no_stop:.3f}.",
        "",
        summary.to_markdown(index=False, floatfmt=".2f"),
        "",
    ]
    (out / "selected.md").write_text("\n".join(md), encoding="utf-8")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
