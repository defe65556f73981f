"""Synthetic run histories for tests, docs and widget demos (no training needed)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .history import History
from .monitor import SparsityReport

__all__ = ["count_hooks", "synthetic_history"]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)


def count_hooks(model) -> int:
    """Hooks of any kind registered on ``model`` or any of its submodules (0 after a clean exit).

    >>> from torch import nn
    >>> count_hooks(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()))
    0
    """
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def synthetic_history(
    epochs: int = 12,
    layers: tuple[str, ...] = ("block1.relu", "block2.relu", "block3.relu"),
    channels: int = 8,
    bins: int = 20,
    splits: tuple[str, ...] = ("train", "test"),
    overfit_at: int | None = 6,
    seed: int = 0,
    nan_epoch: int | None = None,
) -> History:
    """A History shaped like a real run: train loss falls; test loss has its minimum at
    ``overfit_at`` and then rises; conv-layer sparsity starts rising two epochs earlier.

    Values are drawn from Beta distributions, so histograms, means and dead fractions agree.
    ``nan_epoch`` puts NaN sparsity into that epoch (for robustness tests).

    >>> h = synthetic_history(epochs=5, layers=("a", "b"), channels=3, overfit_at=3)
    >>> h.epochs, h.layer_names, h.spatial_hist[("test", "a")].shape
    ([0, 1, 2, 3, 4], ['a', 'b'], (5, 3, 20))
    """
    rng = np.random.default_rng(seed)
    edges = np.linspace(0.0, 1.0, bins + 1)
    h = History(config={"name": f"synthetic-{seed}", "model": "synthetic", "epochs": epochs, "seed": seed})
    onset = None if overfit_at is None else max(0, overfit_at - 2)
    for e in range(epochs):
        metrics = {}
        for split in splits:
            if split == "train":
                loss = 2.3 * np.exp(-0.35 * e) + 0.02
            else:
                rise = 0.0 if overfit_at is None else 0.12 * max(0, e - overfit_at) ** 1.3
                loss = 1.2 * np.exp(-0.5 * min(e, overfit_at if overfit_at is not None else e)) + 0.5 + rise
            loss += rng.normal(0, 0.01)
            metrics[split] = {"loss": float(loss), "accuracy": float(np.clip(1.0 - loss / 3, 0, 1))}
        ch_rows, layer_rows, sh, chh = [], [], {}, {}
        for split in splits:
            for li, layer in enumerate(layers):
                level = 0.25 + 0.1 * li + (0.0 if onset is None else 0.04 * max(0, e - onset))
                level = float(np.clip(level + rng.normal(0, 0.005), 0.02, 0.95))
                per_channel = np.clip(level + rng.normal(0, 0.08, channels), 0.02, 0.98)
                samples = rng.beta(per_channel[:, None] * 20, (1 - per_channel[:, None]) * 20, (channels, 64))
                if nan_epoch is not None and e == nan_epoch:
                    samples[:] = np.nan
                hist = np.stack([np.histogram(s[np.isfinite(s)], bins=edges)[0] for s in samples])
                dead = rng.binomial(64, 0.02 + 0.01 * li, channels).astype(float)
                stats = {
                    "spatial_mean": samples.mean(1),
                    "spatial_std": samples.std(1, ddof=1),
                    "dead_fraction": dead / 64,
                    "count": np.full(channels, 64.0),
                    "nonfinite": np.zeros(channels),
                    "sample_sparsity": np.clip(per_channel * 0.5, 0, 1),
                    "sample_perplexity": 64 - per_channel * 0.5 * 63,
                }
                for stat, vals in stats.items():
                    ch_rows += [(split, layer, c, stat, float(v)) for c, v in enumerate(vals)]
                layer_stats = {
                    "spatial_mean": float(np.mean(samples)),
                    "dead_fraction": float(dead.sum() / (64 * channels)),
                    "nonfinite": 0.0,
                    "population_mean": float(np.clip(level * 0.6, 0, 1)),
                    "population_std": 0.05,
                    "sample_mean": float(np.mean(stats["sample_sparsity"])),
                    "num_channels": float(channels),
                    "samples": 64.0,
                }
                layer_rows += [(split, layer, k, v) for k, v in layer_stats.items()]
                sh[(split, layer)] = hist
                chh[(split, layer)] = np.histogram(rng.beta(level * 12, (1 - level) * 12, 64), bins=edges)[0]
        report = SparsityReport(
            channels=pd.DataFrame(ch_rows, columns=["split", "layer", "channel", "statistic", "value"]),
            layers=pd.DataFrame(layer_rows, columns=["split", "layer", "statistic", "value"]),
            spatial_hist=sh,
            population_hist=chh,
            bin_edges=edges,
        )
        h.record_epoch(e, metrics, report)
    return h
