"""The one independent reference of the tests: DESIGN §1 written literally in NumPy/SciPy.

Nothing here imports xaisparse. Every test that checks a sparsity number compares the package
against these functions (``scipy.stats.entropy`` for H; 0 ln 0 = 0; a dead vector has PP = 1).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _entropy(v: np.ndarray, axis: int = -1) -> np.ndarray:
    import scipy.stats  # here, not at the top: spawned DDP workers import the test modules

    return scipy.stats.entropy(v, axis=axis)  # normalises v by its sum itself


def sparsity_of_vector(v: np.ndarray) -> float:
    """Sparsity of one vector of ``|v|``: NaN with NaN/Inf or for length 1, 1 when dead."""
    a = np.abs(np.asarray(v, dtype=np.float64)).ravel()
    if not np.all(np.isfinite(a)) or a.size == 1:
        return math.nan
    if a.sum() == 0:
        return 1.0
    pp = math.exp(float(_entropy(a)))
    return 1.0 - (pp - 1.0) / (a.size - 1.0)


def sparsity_rows(v: np.ndarray, n: np.ndarray | int | None = None, *, clip: bool = False) -> np.ndarray:
    """Sparsity of every vector along the last axis of a finite array (of ``|v|``; dead: 1).

    ``n`` is the vector length (default: the last axis); zero padding does not change the
    entropy, so vectors of different lengths can share one zero-padded array. ``clip`` clips
    to [0, 1] (rounding puts a uniform vector a few ulp outside).
    """
    v = np.abs(np.asarray(v, dtype=np.float64))
    n = v.shape[-1] if n is None else n
    with np.errstate(invalid="ignore", divide="ignore"):
        h = _entropy(v)  # NaN for an all-zero vector
    pp = np.where(v.sum(-1) > 0, np.exp(h), 1.0)
    s = 1.0 - (pp - 1.0) / (np.asarray(n, dtype=np.float64) - 1.0)
    return np.clip(s, 0.0, 1.0) if clip else s


def perplexity_rows(v: np.ndarray) -> np.ndarray:
    """``exp(H)`` of every vector along the last axis (dead vector: 1)."""
    v = np.abs(np.asarray(v, dtype=np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        h = _entropy(v)
    return np.where(v.sum(-1) > 0, np.exp(h), 1.0)


def epochs_by_layers(layers: Any, split: str, statistic: str) -> dict[int, dict[str, float]]:
    """``{epoch: {layer: value}}`` of one statistic of one split, by a plain loop over a History's tidy
    ``layers`` rows (the independent reference of every wide table and figure drawn from them)."""
    out: dict[int, dict[str, float]] = {}
    for epoch, s, layer, stat, value in layers[["epoch", "split", "layer", "statistic", "value"]].itertuples(
        index=False
    ):
        if s == split and stat == statistic:
            out.setdefault(int(epoch), {})[str(layer)] = float(value)
    return out


def wide(layers: Any, split: str, statistic: str, names: list[str]) -> tuple[list[int], np.ndarray]:
    """Epochs (ascending) and the epochs × ``names`` array of :func:`epochs_by_layers` (NaN where missing)."""
    table = epochs_by_layers(layers, split, statistic)
    epochs = sorted(e for e, row in table.items() if any(n in row for n in names))
    return epochs, np.array([[table[e].get(n, math.nan) for n in names] for e in epochs], dtype=np.float64)
