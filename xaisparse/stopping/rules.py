"""Stop rules for one label-free series per epoch (causal: the decision at an epoch reads epochs ≤ it).

* :func:`threshold_stop`: the first epoch at which the series (trailing mean over ``smooth``
  values) has been above (``above=True``) or below ``threshold`` for ``patience`` consecutive
  epochs — the EB-criterion's rule (``EB > 0``) and the weight-spectrum rule (α below 2);
* :func:`minimum_stop`: patience on the series' minimum, as early stopping does on a
  validation loss: the first epoch at which it has not improved on its lowest value for
  ``patience`` epochs; with ``restore=True`` the epoch of that lowest value is returned (what
  restoring the best weights keeps) — the gradient-disparity rule and the two-seed
  disagreement rule.

Epochs before position ``warmup`` are ignored; NaN values never cross a threshold and never
improve the minimum.

>>> import pandas as pd
>>> s = pd.Series([-9.0, -4.0, -1.0, 0.5, 0.2, 1.0])
>>> threshold_stop(s, 0.0), threshold_stop(s, 0.0, patience=2)
(3, 4)
>>> d = pd.Series([0.9, 0.5, 0.4, 0.45, 0.5, 0.6])
>>> minimum_stop(d, patience=3), minimum_stop(d, patience=3, restore=True)
(5, 2)
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .._validation import check_bool, check_int, check_number

__all__ = ["minimum_stop", "threshold_stop"]


def _smoothed(series: pd.Series, smooth: int) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(series, pd.Series):
        raise TypeError(f"expected a pandas Series indexed by epoch, got {type(series).__name__}")
    s = series.sort_index().astype(np.float64)
    values = s.rolling(smooth, min_periods=smooth).mean().to_numpy() if smooth > 1 else s.to_numpy()
    return values, s.index.to_numpy()


def threshold_stop(
    series: pd.Series,
    threshold: float,
    *,
    above: bool = True,
    smooth: int = 1,
    patience: int = 1,
    warmup: int = 0,
) -> int | None:
    """First epoch whose smoothed value has been past ``threshold`` for ``patience`` epochs (``None``: never)."""
    threshold = check_number("threshold", threshold)
    above = check_bool("above", above)
    smooth = check_int("smooth", smooth, minimum=1)
    patience = check_int("patience", patience, minimum=1)
    warmup = check_int("warmup", warmup, minimum=0)
    values, epochs = _smoothed(series, smooth)
    streak = 0
    for i in range(warmup, len(values)):
        v = values[i]
        past = math.isfinite(v) and (v > threshold if above else v < threshold)
        streak = streak + 1 if past else 0
        if streak >= patience:
            return int(epochs[i])
    return None


def minimum_stop(
    series: pd.Series,
    *,
    patience: int,
    smooth: int = 1,
    warmup: int = 0,
    min_delta: float = 0.0,
    restore: bool = False,
) -> int | None:
    """First epoch with ``patience`` epochs without a new minimum (``restore``: the minimum's epoch instead)."""
    patience = check_int("patience", patience, minimum=1)
    smooth = check_int("smooth", smooth, minimum=1)
    warmup = check_int("warmup", warmup, minimum=0)
    min_delta = check_number("min_delta", min_delta, minimum=0.0)
    restore = check_bool("restore", restore)
    values, epochs = _smoothed(series, smooth)
    best, best_epoch, waited = math.inf, None, 0
    for i in range(warmup, len(values)):
        v = values[i]
        if math.isfinite(v) and v < best - min_delta:
            best, best_epoch, waited = v, int(epochs[i]), 0
            continue
        waited += 1
        if waited >= patience:
            return best_epoch if restore and best_epoch is not None else int(epochs[i])
    return None
