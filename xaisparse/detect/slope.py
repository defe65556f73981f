"""The rate-of-change rule as pure functions: the trailing slope of one series above its noise.

At position ``i`` (epochs fed so far, from 0), once ``i >= warmup + window``:

1. ``b(i)`` = least-squares slope of the last ``window`` values (positions ``i-window+1 … i``;
   NaN unless at least 3 of them are finite);
2. ``sigma(i)`` = sd (``ddof=1``) of the finite differences ``x(j) - x(j-1)`` for positions
   ``warmup < j <= i``, divided by ``√2`` (white noise has differences of sd ``√2 · sd(x)``;
   at least 3 differences are needed, before that the position is skipped);
3. ``sd_b = sigma · √(12 / (window³ − window))``, the sd of such a slope of white noise;
4. the series is *rising* once ``b > max(threshold, noise · sd_b)`` held for ``patience``
   consecutive positions (a NaN slope resets the count).

:func:`advance_slope` maps a :class:`SlopeTrack` and one new value to the next track and one
evidence row (columns :data:`~xaisparse.detection.EVIDENCE_COLUMNS`: ``smoothed`` and
``rise`` hold the slope, ``limit`` the bar it must clear).

>>> from xaisparse.detect.config import DetectorConfig
>>> run_slope([0.0, 0.01, 0.0, 0.01, 0.0, 0.2, 0.4, 0.6], DetectorConfig(rule="slope", warmup=0, noise=3.0, patience=1))
6
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from ..detection import Row
from .config import DetectorConfig
from .rule import MIN_DIFFS
from .signals import least_squares_slope

__all__ = ["SlopeTrack", "advance_slope", "run_slope"]


@dataclass(frozen=True)
class SlopeTrack:
    """The causal state of the slope rule (immutable)."""

    window: tuple[float, ...] = ()
    diffs: tuple[float, ...] = ()
    previous: float = math.nan
    streak: int = 0


def advance_slope(
    track: SlopeTrack, name: str, epoch: int, x: float, position: int, config: DetectorConfig
) -> tuple[SlopeTrack, Row]:
    """One position of the slope rule: the next track and the evidence row."""
    nan = math.nan
    window = (*track.window, x)[-config.window :]
    diffs = track.diffs
    if position > config.warmup and math.isfinite(x) and math.isfinite(track.previous):
        diffs = (*diffs, x - track.previous)
    track = replace(track, window=window, diffs=diffs, previous=x)
    if position < config.warmup + config.window or len(diffs) < MIN_DIFFS:
        return track, (epoch, name, x, nan, nan, None, None, nan, nan, track.streak, False)
    sigma = float(np.std(np.asarray(diffs), ddof=1)) / math.sqrt(2.0)
    sd_b = sigma * math.sqrt(12.0 / (config.window**3 - config.window))
    limit = max(config.threshold, config.noise * sd_b)
    b = least_squares_slope(window)
    streak = track.streak + 1 if math.isfinite(b) and b > limit else 0
    track = replace(track, streak=streak)
    rising = streak >= config.patience
    return track, (epoch, name, x, b, nan, None, None, b, limit, streak, rising)


def run_slope(values: Iterable[float], config: DetectorConfig) -> int | None:
    """The first position at which the slope rule is rising (``None`` if never): the offline form."""
    track = SlopeTrack()
    for position, x in enumerate(values):
        track, row = advance_slope(track, "series", position, float(x), position, config)
        if row[-1]:
            return position
    return None
