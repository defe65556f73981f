"""Per-run signals for the detector exploration (issue 11, phase 1), from saved Histories.

Everything here is read from what :func:`xaisparse.train.fit` records each epoch: the
``metrics`` table (losses, accuracies: the test ones are used **only for scoring**), the
``layers`` table (per-layer sparsity statistics per split) and ``spatial_hist[(split, layer)]``
(``epochs × channels × bins`` counts of each channel's per-sample map sparsity).

The train/test divergence of a layer at an epoch compares, channel by channel, the
distribution of map sparsity on the train probe with the one on the test probe, and averages
over channels:

* ``tv``: total variation ``½ Σ_k |p_k - q_k|`` of the two normalised histograms;
* ``js``: Jensen–Shannon divergence (base 2, in [0, 1]);
* ``w1``: Wasserstein-1 on [0, 1] (``Σ_k |P_k - Q_k| · Δ``, cumulative histograms, bin width Δ);
* ``dmean``: ``|mean_train - mean_test|`` of the channel's mean sparsity (histogram-free).

Two samples from one distribution do not give distance 0: ``tv``/``js`` have a positive
floor that depends on the probe sizes, which is why the rules below compare a signal with
its own early epochs rather than with 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from xaisparse.history import History

DISTANCES = ("tv", "js", "w1", "dmean")
#: layer statistics read for both splits (see xaisparse.monitor.LAYER_STATISTICS)
STATISTICS = ("spatial_mean", "dead_fraction", "population_mean", "population_std", "sample_mean")


@dataclass
class Run:
    name: str
    dataset: str
    arch: str
    regime: str
    seed: int
    epochs: np.ndarray
    test_loss: np.ndarray  # scoring only
    test_acc: np.ndarray  # scoring only
    train_loss: np.ndarray  # train probe, eval mode (uses train labels)
    train_acc: np.ndarray
    layers: list[str]
    stats: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (split, statistic) -> (E, L)
    divergence: dict[str, np.ndarray] = field(default_factory=dict)  # distance -> (E, L)
    seconds: float = float("nan")


def _series(h: History, split: str, metric: str, epochs: np.ndarray) -> np.ndarray:
    s = h.metric(split, metric)
    s = s[~s.index.duplicated(keep="last")]
    return s.reindex(epochs).to_numpy(dtype=float)


def _normalise(hist: np.ndarray) -> np.ndarray:
    total = hist.sum(-1, keepdims=True).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, hist / np.maximum(total, 1), np.nan)


def channel_distances(p_counts: np.ndarray, q_counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel distances between histograms ``(..., channels, bins)``; NaN for empty channels."""
    p, q = _normalise(p_counts), _normalise(q_counts)
    bins = p.shape[-1]
    tv = 0.5 * np.abs(p - q).sum(-1)
    m = 0.5 * (p + q)
    with np.errstate(invalid="ignore", divide="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    js = 0.5 * (kl_p + kl_q)
    w1 = np.abs(np.cumsum(p, -1) - np.cumsum(q, -1)).sum(-1) / bins
    empty = np.isnan(p).any(-1) | np.isnan(q).any(-1)
    out = {"tv": tv, "js": js, "w1": w1}
    return {k: np.where(empty, np.nan, v) for k, v in out.items()}


def load_run(path: str | Path) -> Run:
    h = History.load(path)
    epochs = np.asarray(sorted(set(h.metrics["epoch"].astype(int))))
    layers = list(h.layer_names)
    run = Run(
        name=Path(path).name,
        dataset=str(h.config.get("dataset", "digits")),
        arch=str(h.config.get("arch")),
        regime=str(h.config.get("regime")),
        seed=int(h.config.get("seed")),
        epochs=epochs,
        test_loss=_series(h, "test", "loss", epochs),
        test_acc=_series(h, "test", "accuracy", epochs),
        train_loss=_series(h, "train", "loss", epochs),
        train_acc=_series(h, "train", "accuracy", epochs),
        layers=layers,
        seconds=float(h.config.get("train_seconds", np.nan)),
    )
    for split in ("train", "test"):
        for stat in STATISTICS:
            m = h.layer_matrix(split, stat).T  # epochs x layers
            run.stats[split, stat] = m.reindex(index=epochs, columns=layers).to_numpy(dtype=float)
    ch = h.channels[(h.channels.statistic == "spatial_mean")]
    div = {k: np.full((len(epochs), len(layers)), np.nan) for k in DISTANCES}
    for j, layer in enumerate(layers):
        ktr, kte = ("train", layer), ("test", layer)
        if ktr not in h.spatial_hist or kte not in h.spatial_hist:
            continue
        if h.hist_epochs[ktr] != h.hist_epochs[kte]:
            raise ValueError(f"{path}: train and test histograms of {layer} cover different epochs")
        rows = np.searchsorted(epochs, np.asarray(h.hist_epochs[ktr]))
        d = channel_distances(h.spatial_hist[ktr], h.spatial_hist[kte])
        for k, v in d.items():
            with np.errstate(all="ignore"):
                div[k][rows, j] = np.nanmean(v, axis=1) if np.isfinite(v).any() else np.nan
        sub = ch[ch.layer == layer]
        wide = sub.pivot_table(index=["epoch", "channel"], columns="split", values="value")
        if {"train", "test"} <= set(wide.columns):
            gap = (wide["train"] - wide["test"]).abs().groupby(level="epoch").mean()
            div["dmean"][:, j] = gap.reindex(epochs).to_numpy(dtype=float)
    run.divergence = div
    return run


def load_runs(root: str | Path, pattern: str = "*") -> list[Run]:
    dirs = sorted(p for p in Path(root).glob(pattern) if (p / "history.json").exists())
    return [load_run(p) for p in dirs]


def layer_mean(matrix: np.ndarray) -> np.ndarray:
    """Mean over the layers with a finite value (NaN when none)."""
    with np.errstate(all="ignore"):
        finite = np.isfinite(matrix)
        total = np.where(finite, matrix, 0.0).sum(1)
        count = finite.sum(1)
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def describe(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in runs:
        e_star = int(r.epochs[np.nanargmin(r.test_loss)])
        rows.append(
            {
                "run": r.name,
                "e_star": e_star,
                "min_loss": np.nanmin(r.test_loss),
                "last_loss": r.test_loss[-1],
                "rel_rise": r.test_loss[-1] / np.nanmin(r.test_loss) - 1,
                "best_acc": np.nanmax(r.test_acc),
                "train_acc_last": r.train_acc[-1],
                "seconds": r.seconds,
            }
        )
    return pd.DataFrame(rows)
