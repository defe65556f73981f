"""Statistics of fixed-bin histograms: quantiles, means, box-plot statistics, violin outlines.

A :class:`~xaisparse.history.History` keeps per-channel sparsity *distributions* as fixed-bin
histograms, never raw per-sample values. These pure NumPy functions read them, taking the
samples as spread uniformly inside each bin, so quantiles are exact to within one bin width.

>>> import numpy as np
>>> edges = np.linspace(0.0, 1.0, 11)
>>> counts = np.array([0, 0, 2, 4, 2, 0, 0, 0, 0, 0])
>>> stats = histogram_box_stats(counts, edges)
>>> round(stats["med"], 3), round(stats["q1"], 3), round(stats["q3"], 3)
(0.35, 0.3, 0.4)
>>> y, density = histogram_violin(counts, edges)
>>> round(float(np.sum(density[1:-1] * 0.1)), 6)  # a probability density over the bins
1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["bin_centers", "histogram_box_stats", "histogram_mean", "histogram_quantile", "histogram_violin"]


def _as_hist(counts: Any, edges: Any) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(counts, dtype=np.float64)
    e = np.asarray(edges, dtype=np.float64)
    if c.ndim != 1:
        raise ValueError(f"counts must be one histogram (1-D), got shape {c.shape}")
    if e.ndim != 1 or e.size != c.size + 1:
        raise ValueError(f"edges must have len(counts) + 1 = {c.size + 1} entries, got shape {e.shape}")
    if np.any(np.diff(e) <= 0):
        raise ValueError("edges must be strictly increasing")
    c = np.where(np.isfinite(c) & (c > 0), c, 0.0)
    return c, e


def bin_centers(edges: Any) -> np.ndarray:
    """Midpoints of the bins.

    >>> bin_centers([0.0, 0.5, 1.0]).tolist()
    [0.25, 0.75]
    """
    e = np.asarray(edges, dtype=np.float64)
    return (e[:-1] + e[1:]) / 2


def histogram_quantile(counts: Any, edges: Any, q: float | Sequence[float]) -> float | np.ndarray:
    """Quantile(s) of the samples behind a histogram, taking them as uniform within each bin.

    ``q = 0`` is the left edge of the first non-empty bin, ``q = 1`` the right edge of the
    last one; an empty histogram gives NaN.

    >>> histogram_quantile([0, 4, 0, 4], [0, 1, 2, 3, 4], [0.0, 0.25, 0.5, 1.0]).tolist()
    [1.0, 1.5, 2.0, 4.0]
    """
    c, e = _as_hist(counts, edges)
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if np.any((qs < 0) | (qs > 1)):
        raise ValueError(f"quantiles must lie in [0, 1], got {q!r}")
    total = c.sum()
    out = np.full(qs.shape, np.nan)
    if total > 0:
        cum = np.cumsum(c)
        nonzero = np.flatnonzero(c)
        for i, qi in enumerate(qs):
            target = qi * total
            if target <= 0:
                out[i] = e[nonzero[0]]
                continue
            k = int(np.searchsorted(cum, target, side="left"))
            k = min(k, c.size - 1)
            before = cum[k] - c[k]
            frac = (target - before) / c[k] if c[k] > 0 else 1.0
            out[i] = e[k] + min(max(frac, 0.0), 1.0) * (e[k + 1] - e[k])
    return float(out[0]) if np.ndim(q) == 0 else out


def histogram_mean(counts: Any, edges: Any) -> float:
    """Mean of the samples behind a histogram (bin midpoints); NaN when empty.

    >>> histogram_mean([1, 0, 1], [0.0, 1.0, 2.0, 3.0])
    1.5
    """
    c, e = _as_hist(counts, edges)
    total = c.sum()
    return float(np.dot(c, bin_centers(e)) / total) if total > 0 else math.nan


def histogram_box_stats(counts: Any, edges: Any, whis: float = 1.5, label: str | None = None) -> dict[str, Any]:
    """Box-plot statistics of a histogram, in the form ``Axes.bxp`` draws.

    Keys: ``med``, ``q1``, ``q3``, ``mean``, ``whislo``/``whishi`` (the data range clipped to
    ``whis`` × IQR beyond the quartiles), ``fliers`` (midpoints of non-empty bins beyond the
    whiskers), ``n`` (sample count) and ``label``. An empty histogram gives NaN statistics.
    """
    c, e = _as_hist(counts, edges)
    q1, med, q3 = np.atleast_1d(histogram_quantile(c, e, [0.25, 0.5, 0.75]))
    lo, hi = np.atleast_1d(histogram_quantile(c, e, [0.0, 1.0]))
    iqr = q3 - q1
    whislo = max(lo, q1 - whis * iqr) if np.isfinite(lo) else math.nan
    whishi = min(hi, q3 + whis * iqr) if np.isfinite(hi) else math.nan
    centres = bin_centers(e)
    outside = (c > 0) & ((centres < whislo) | (centres > whishi))
    return {
        "med": float(med),
        "q1": float(q1),
        "q3": float(q3),
        "mean": histogram_mean(c, e),
        "whislo": float(whislo),
        "whishi": float(whishi),
        "fliers": centres[outside],
        "n": int(round(c.sum())),
        "label": label,
    }


def histogram_violin(counts: Any, edges: Any) -> tuple[np.ndarray, np.ndarray]:
    """Violin outline of a histogram: ``(y, density)``.

    ``density`` is the probability density of each non-empty stretch of bins (``counts /
    (total · width)``, integrating to 1), placed at the bin midpoints, closed with a zero at
    the left edge of the first and the right edge of the last non-empty bin. An empty
    histogram gives two empty arrays.
    """
    c, e = _as_hist(counts, edges)
    total = c.sum()
    if total <= 0:
        return np.empty(0), np.empty(0)
    nz = np.flatnonzero(c)
    first, last = int(nz[0]), int(nz[-1])
    widths = np.diff(e)
    dens = c / (total * widths)
    y = np.concatenate([[e[first]], bin_centers(e)[first : last + 1], [e[last + 1]]])
    d = np.concatenate([[0.0], dens[first : last + 1], [0.0]])
    return y, d
