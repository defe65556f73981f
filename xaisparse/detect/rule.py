"""The sparsity-rise rule as pure functions: per-layer tracks advanced epoch by epoch.

Nothing here holds state between calls: :func:`advance` maps a layer's :class:`LayerTrack`
and one new value to the next track and one evidence row; :func:`step_epoch` does that for
every monitored layer of one epoch; :func:`run_rule` folds :func:`step_epoch` over an
epochs × layers table. The online :class:`~xaisparse.detect.OverfitDetector` calls
:func:`step_epoch` once per epoch, so online and offline agree by construction.

The rule, per layer and epoch ``e`` (everything causal):

1. the first ``warmup`` epochs are ignored (early-training transients);
2. ``smoothed(e)`` = mean of the layer's last ``smooth`` finite values (NaN skipped);
3. ``running_min(e)`` = the smallest ``smoothed`` so far, reached at epoch ``min_epoch``;
4. ``rise(e) = smoothed(e) - running_min(e)`` (never negative);
5. ``limit(e) = max(base, noise * sigma(e))``, ``base`` = ``threshold`` (or
   ``threshold * |running_min|`` when ``relative``), ``sigma(e)`` the noise of ``smoothed``
   estimated from the epoch-to-epoch differences seen so far (their standard deviation about
   their mean, which a steady trend does not inflate);
6. the layer is *rising* once ``rise > limit`` held for ``patience`` consecutive finite
   epochs; its *onset* is the last epoch at which it was still *quiet*
   (``rise <= limit / 2``);
7. the alarm is raised at the first epoch where at least ``required`` layers are rising.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..detection import EVIDENCE_COLUMNS, Row  # noqa: F401  (EVIDENCE_COLUMNS: the old import path)
from .config import DetectorConfig

__all__ = ["LayerTrack", "RuleRun", "advance", "noise_limit", "run_rule", "step_epoch"]

# Smallest number of epoch-to-epoch differences the noise estimate is trusted with; before
# that the layer may not be declared rising (a spread of one or two numbers is meaningless).
MIN_DIFFS = 3


@dataclass(frozen=True)
class LayerTrack:
    """The causal running state of one layer's series (immutable; :func:`advance` returns a new one)."""

    window: tuple[float, ...] = ()
    diffs: tuple[float, ...] = ()
    last: float | None = None
    running_min: float = math.inf
    min_epoch: int | None = None
    quiet_epoch: int | None = None
    streak: int = 0


def noise_limit(track: LayerTrack, config: DetectorConfig) -> float:
    """``max(base, noise * sigma)`` for the track so far (``inf`` before ``MIN_DIFFS`` differences).

    ``sigma = sd(x(e) - x(e-1)) / sqrt(2) / sqrt(smooth)``: the differences of white noise
    have sd ``sqrt(2) sd(x)`` and a mean of ``smooth`` values has ``sd(x) / sqrt(smooth)``;
    ``ddof=1`` removes the differences' mean, so a linear trend adds nothing.
    """
    base = config.threshold * abs(track.running_min) if config.relative else config.threshold
    if config.noise <= 0:
        return base
    if len(track.diffs) < MIN_DIFFS:
        return math.inf
    sd_diff = float(np.std(np.asarray(track.diffs), ddof=1))
    return max(base, config.noise * sd_diff / math.sqrt(2.0) / math.sqrt(config.smooth))


def advance(
    track: LayerTrack, layer: str, epoch: int, x: float, position: int, config: DetectorConfig
) -> tuple[LayerTrack, Row]:
    """One epoch of one layer: the next track and the evidence row (``position``: epochs seen before)."""
    nan = math.nan
    if position < config.warmup or not math.isfinite(x):
        return track, (epoch, layer, x, nan, nan, None, None, nan, nan, track.streak, False)
    diffs = track.diffs if track.last is None else (*track.diffs, x - track.last)
    window = (*track.window, x)[-config.smooth :]
    track = replace(track, diffs=diffs, last=x, window=window)
    if len(window) < config.smooth:
        return track, (epoch, layer, x, nan, nan, None, None, nan, nan, 0, False)
    smoothed = float(sum(window) / len(window))
    if smoothed < track.running_min:
        track = replace(track, running_min=smoothed, min_epoch=epoch)
    rise = smoothed - track.running_min
    limit = noise_limit(track, config)
    if rise <= limit / 2:
        track = replace(track, quiet_epoch=epoch)
    track = replace(track, streak=track.streak + 1 if rise > limit else 0)
    rising = track.streak >= config.patience
    row: Row = (
        epoch,
        layer,
        x,
        smoothed,
        track.running_min,
        track.min_epoch,
        track.quiet_epoch,
        rise,
        limit,
        track.streak,
        rising,
    )
    return track, row


def step_epoch(
    tracks: Mapping[str, LayerTrack], epoch: int, values: Mapping[str, float], position: int, config: DetectorConfig
) -> tuple[dict[str, LayerTrack], list[Row], list[str]]:
    """Advance every monitored layer (the keys of ``tracks``) by one epoch.

    Returns the new tracks, the evidence rows and the names of the layers rising now. A
    layer missing from ``values`` (or NaN there) counts as not rising at this epoch.
    """
    new: dict[str, LayerTrack] = {}
    rows: list[Row] = []
    rising: list[str] = []
    for name, track in tracks.items():
        raw = values.get(name, math.nan)
        try:
            x = float(raw)
        except (TypeError, ValueError):
            raise TypeError(f"value of layer {name!r} at epoch {epoch} must be a number, got {raw!r}") from None
        new[name], row = advance(track, name, epoch, x, position, config)
        rows.append(row)
        if row[-1]:
            rising.append(name)
    return new, rows, rising


@dataclass
class RuleRun:
    """What :func:`run_rule` found: the alarm and everything behind it."""

    alarm_epoch: int | None
    layers: list[str]
    onsets: dict[str, int]
    minima: dict[str, int]
    rows: list[Row] = field(default_factory=list)
    tracks: dict[str, LayerTrack] = field(default_factory=dict)


def alarm_facts(tracks: Mapping[str, LayerTrack], rising: Sequence[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Onsets (last quiet epoch) and running-minimum epochs of the rising layers."""
    onsets = {n: q for n in rising if (q := tracks[n].quiet_epoch) is not None}
    minima = {n: m for n in rising if (m := tracks[n].min_epoch) is not None}
    return onsets, minima


def run_rule(matrix: pd.DataFrame, config: DetectorConfig, required: int) -> RuleRun:
    """The rule over an epochs × layers table (index ascending epochs; columns the monitored layers).

    >>> m = pd.DataFrame({"conv": [0.30, 0.28, 0.31, 0.40]})
    >>> run_rule(m, DetectorConfig(smooth=1, threshold=0.05, noise=0, patience=1, warmup=0), 1).alarm_epoch
    3
    """
    tracks = {str(name): LayerTrack() for name in matrix.columns}
    run = RuleRun(alarm_epoch=None, layers=[], onsets={}, minima={})
    for position, epoch in enumerate(matrix.index):
        values = {str(k): float(v) for k, v in matrix.loc[epoch].items()}
        tracks, rows, rising = step_epoch(tracks, int(epoch), values, position, config)
        run.rows.extend(rows)
        if run.alarm_epoch is None and len(rising) >= required:
            run.alarm_epoch, run.layers = int(epoch), list(rising)
            run.onsets, run.minima = alarm_facts(tracks, rising)
    run.tracks = tracks
    return run
