"""The study's one bootstrap: resamples of runs within cells, percentile intervals.

>>> import pandas as pd
>>> idx = resample_index(pd.Series(["a", "a", "b"]), resamples=4, seed=0)
>>> idx.shape, set(idx[:, :2].ravel()) <= {0, 1}, set(idx[:, 2]) == {2}
((4, 3), True, True)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["median_ci", "percentile_ci", "resample_index"]


def resample_index(cells: pd.Series, resamples: int, seed: int = 0) -> np.ndarray:
    """``resamples × n`` row positions: each cell's rows resampled with replacement within the cell."""
    rng = np.random.default_rng(seed)
    codes = pd.factorize(cells)[0]
    parts = []
    for c in np.unique(codes):
        pos = np.flatnonzero(codes == c)
        parts.append(pos[rng.integers(0, len(pos), size=(resamples, len(pos)))])
    return np.concatenate(parts, axis=1) if parts else np.zeros((resamples, 0), dtype=int)


def percentile_ci(values: np.ndarray) -> tuple[float, float]:
    """The 95 % percentile interval of bootstrap statistics (non-finite ones ignored)."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def median_ci(diff: np.ndarray, resamples: int, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % CI of the median of ``diff`` (its finite values resampled)."""
    d = diff[np.isfinite(diff)]
    if len(d) == 0:
        return math.nan, math.nan
    idx = resample_index(pd.Series(np.zeros(len(d), dtype=int)), resamples, seed)
    return percentile_ci(np.median(d[idx], axis=1))
