"""Pure data preparation for the widgets: History in, NumPy/pandas out. No plotting, no widgets.

Everything the widgets draw is computed here, so the numbers can be tested without a browser
and reused in scripts. Distributions come from the fixed-bin histograms a :class:`History`
keeps (``spatial_hist``), never from raw per-sample values: quantiles assume the samples are
spread uniformly inside each bin, so they are exact to within one bin width.

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
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .._errors import UnknownLayerError, closest
from ..history import History

__all__ = [
    "DEAD_THRESHOLD",
    "ORDERINGS",
    "STATISTIC_LABELS",
    "TIMELINE_STATISTICS",
    "alarm_epoch",
    "as_runs",
    "bin_centers",
    "channel_order",
    "channel_values",
    "check_history",
    "check_layer",
    "common_layers",
    "dead_channels",
    "heatmap_frame",
    "histogram_box_stats",
    "histogram_epochs",
    "histogram_mean",
    "histogram_quantile",
    "histogram_violin",
    "layer_histogram",
    "loss_frame",
    "loss_minimum",
    "nonfinite_epochs",
    "pooled_histogram",
    "runs_missing_layer",
    "statistic_label",
    "timeline_frame",
]

#: Axis labels (with the scale's meaning) of the layer and channel statistics.
STATISTIC_LABELS: dict[str, str] = {
    "spatial_mean": "spatial sparsity (0 dense – 1 one unit)",
    "spatial_std": "std of spatial sparsity",
    "dead_fraction": "dead-map fraction (0 none – 1 all)",
    "channel_mean": "population sparsity (0 dense – 1 one channel)",
    "channel_std": "std of population sparsity",
    "sample_mean": "lifetime sparsity (0 dense – 1 one sample)",
    "sample_sparsity": "lifetime sparsity (0 dense – 1 one sample)",
    "nonfinite": "non-finite maps (count)",
}
#: Layer statistics offered by the timeline, heatmap and comparison widgets.
TIMELINE_STATISTICS: tuple[str, ...] = ("spatial_mean", "dead_fraction", "channel_mean", "sample_mean")
#: Channel orderings of :func:`channel_order` (canonical names).
ORDERINGS: tuple[str, ...] = ("mean sparsity", "dead fraction", "index")
#: A channel whose ``dead_fraction`` is at least this is marked as dead.
DEAD_THRESHOLD = 0.5

_ORDER_ALIASES = {
    "mean sparsity": "mean sparsity",
    "mean": "mean sparsity",
    "spatial_mean": "mean sparsity",
    "dead fraction": "dead fraction",
    "dead": "dead fraction",
    "dead_fraction": "dead fraction",
    "index": "index",
    "channel": "index",
}


def statistic_label(statistic: str) -> str:
    """Axis label for a statistic: ``"spatial sparsity (0 dense – 1 one unit)"`` etc."""
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def check_history(history: object, what: str = "history") -> History:
    """``history`` itself if it is a :class:`History`; a ``TypeError`` that says so otherwise."""
    if not isinstance(history, History):
        raise TypeError(
            f"{what} must be an xaisparse.history.History (e.g. from fit(...) or History.load(path)), "
            f"got {type(history).__name__}"
        )
    return history


def check_layer(layer: str, available: Sequence[str]) -> str:
    """``layer`` if it is one of ``available``; an :class:`UnknownLayerError` naming the closest ones."""
    if not isinstance(layer, str):
        raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
    if layer not in available:
        raise UnknownLayerError(
            f"layer {layer!r} is not recorded in this run; closest recorded layers: {closest(layer, available)}"
        )
    return layer


# ---------------------------------------------------------------------------------- histograms
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
    q1, med, q3 = histogram_quantile(c, e, [0.25, 0.5, 0.75])
    lo, hi = histogram_quantile(c, e, [0.0, 1.0])
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


# ---------------------------------------------------------------------------------- per layer
def histogram_epochs(history: History, split: str, layer: str) -> list[int]:
    """Epochs with a spatial histogram of ``(split, layer)`` (empty list if none)."""
    return [int(e) for e in history.hist_epochs.get((split, layer), [])]


def layer_histogram(history: History, split: str, layer: str, epoch: int) -> np.ndarray:
    """``(channels, bins)`` counts of one layer's per-sample spatial sparsity at one epoch.

    A ``ValueError`` says which splits/epochs do exist when this one does not.
    """
    key = (split, layer)
    if key not in history.spatial_hist:
        have = sorted({s for s, l in history.spatial_hist if l == layer})
        raise ValueError(f"no histograms of layer {layer!r} for split {split!r} (splits with histograms: {have})")
    epochs = histogram_epochs(history, split, layer)
    if int(epoch) not in epochs:
        raise ValueError(f"no histogram of {layer!r} ({split}) at epoch {epoch}; recorded epochs: {_span(epochs)}")
    return np.asarray(history.spatial_hist[key][epochs.index(int(epoch))], dtype=np.float64)


def pooled_histogram(history: History, split: str, layer: str, epoch: int) -> np.ndarray:
    """``(bins,)`` counts over all channels of one layer at one epoch (sum of the channel rows)."""
    return layer_histogram(history, split, layer, epoch).sum(axis=0)


def channel_values(
    history: History, split: str, layer: str, epoch: int, statistic: str = "spatial_mean", channels: int | None = None
) -> np.ndarray:
    """One per-channel statistic as an array indexed by channel (NaN where not recorded).

    ``channels`` sets the length (default: the largest recorded channel index + 1).
    """
    t = history.channels
    rows = t[(t.split == split) & (t.layer == layer) & (t.epoch == int(epoch)) & (t.statistic == statistic)]
    idx = rows.channel.to_numpy(dtype=np.int64)
    n = channels if channels is not None else (int(idx.max()) + 1 if idx.size else 0)
    out = np.full(n, np.nan)
    keep = (idx >= 0) & (idx < n)
    out[idx[keep]] = rows.value.to_numpy(dtype=np.float64)[keep]
    return out


def dead_channels(
    history: History,
    split: str | Iterable[str],
    layer: str,
    epoch: int,
    threshold: float = DEAD_THRESHOLD,
    channels: int | None = None,
) -> np.ndarray:
    """Boolean mask of channels whose ``dead_fraction`` is ``>= threshold``.

    With several splits a channel counts as dead when it is dead in any of them. Channels
    without a recorded ``dead_fraction`` are not dead.
    """
    splits = [split] if isinstance(split, str) else list(split)
    if channels is None:
        lengths = [channel_values(history, s, layer, epoch, "dead_fraction").size for s in splits]
        channels = max(lengths, default=0)
    mask = np.zeros(channels, dtype=bool)
    for s in splits:
        frac = channel_values(history, s, layer, epoch, "dead_fraction", channels)
        with np.errstate(invalid="ignore"):
            mask |= np.nan_to_num(frac, nan=-1.0) >= threshold
    return mask


def channel_order(history: History, split: str, layer: str, epoch: int, by: str = "mean sparsity") -> np.ndarray:
    """Channel indices in display order.

    ``by``: ``"mean sparsity"`` (sparsest first, from the ``spatial_mean`` channel statistic,
    else the histogram mean), ``"dead fraction"`` (most dead first) or ``"index"``. Ties keep
    index order; channels without a value go last.
    """
    key = _ORDER_ALIASES.get(by) if isinstance(by, str) else None
    if key is None:
        raise ValueError(f"channel ordering must be one of {list(ORDERINGS)}, got {by!r}")
    counts = layer_histogram(history, split, layer, epoch)
    n = counts.shape[0]
    if key == "index":
        return np.arange(n)
    if key == "mean sparsity":
        values = channel_values(history, split, layer, epoch, "spatial_mean", n)
        if np.all(np.isnan(values)):
            values = np.array([histogram_mean(row, history.bin_edges) for row in counts])
    else:
        values = channel_values(history, split, layer, epoch, "dead_fraction", n)
    # descending, NaN last, stable on index
    keyed = np.where(np.isnan(values), np.inf, -values)
    return np.argsort(keyed, kind="stable")


# ---------------------------------------------------------------------------------- over epochs
def timeline_frame(
    history: History, split: str, layers: Sequence[str] | None = None, statistic: str = "spatial_mean"
) -> pd.DataFrame:
    """Epochs × layers table of one layer statistic (``history.layer_series`` side by side).

    Index ``epoch`` (ascending), one column per layer in the order given (default: network
    order). NaN where a value is missing or not finite.
    """
    names = history.layer_names if layers is None else list(layers)
    for name in names:
        check_layer(name, history.layer_names)
    series = [history.layer_series(split, name, statistic) for name in names]
    series = [s[~s.index.duplicated(keep="first")] for s in series]
    frame = pd.concat(series, axis=1) if series else pd.DataFrame()
    frame = frame.reindex(columns=names).sort_index()
    frame.index = frame.index.astype(np.int64) if len(frame.index) else pd.Index([], dtype=np.int64)
    frame.index.name = "epoch"
    return frame.astype(np.float64)


def loss_frame(history: History, metric: str = "loss") -> pd.DataFrame:
    """Epochs × splits table of one metric (``train``/``test`` loss by default)."""
    splits = [s for s in history.splits if not history.metric(s, metric).empty]
    series = []
    for s in splits:
        ser = history.metric(s, metric)
        series.append(ser[~ser.index.duplicated(keep="first")].rename(s))
    if not series:
        return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="epoch"))
    frame = pd.concat(series, axis=1).sort_index()
    frame.index.name = "epoch"
    return frame.astype(np.float64)


def loss_minimum(history: History, split: str = "test", metric: str = "loss") -> tuple[int, float] | None:
    """``(epoch, value)`` of the smallest finite ``metric`` of ``split`` (earliest on ties), or None.

    >>> h = History()
    >>> for e, v in enumerate([1.0, 0.6, 0.7, 0.6]):
    ...     h.record_epoch(e, {"test": {"loss": v}})
    >>> loss_minimum(h)
    (1, 0.6)
    """
    ser = history.metric(split, metric)
    ser = ser[np.isfinite(ser.to_numpy(dtype=np.float64))]
    if ser.empty:
        return None
    ser = ser.sort_index()
    pos = int(np.argmin(ser.to_numpy()))
    return int(ser.index[pos]), float(ser.iloc[pos])


def alarm_epoch(history: History) -> int | None:
    """The overfitting detector's alarm epoch (``history.detector["alarm_epoch"]``), or None."""
    det = history.detector
    if not isinstance(det, Mapping):
        return None
    value = det.get("alarm_epoch")
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return int(f) if math.isfinite(f) else None


def heatmap_frame(history: History, split: str, statistic: str = "spatial_mean") -> pd.DataFrame:
    """Layers × epochs table (``history.layer_matrix``) with float values and sorted epochs.

    Unlike ``layer_matrix`` (whose pivot drops all-NaN epochs), every epoch that has rows for
    this split and statistic keeps its column, so NaN epochs stay visible as gaps.
    """
    m = history.layer_matrix(split, statistic)
    t = history.layers
    rows = t[(t.split == split) & (t.statistic == statistic)]
    if rows.empty:
        return pd.DataFrame()
    epochs = sorted({int(e) for e in rows.epoch})
    layers = [name for name in history.layer_names if name in set(rows.layer.astype(str))]
    if m.empty:
        m = pd.DataFrame(index=pd.Index(layers, name="layer"), columns=epochs, dtype=np.float64)
    m = m.reindex(index=layers, columns=epochs)
    m.columns.name = "epoch"
    return m.astype(np.float64)


def nonfinite_epochs(frame: pd.DataFrame, axis: str = "index") -> list[int]:
    """Epochs holding NaN/Inf in an epochs-indexed (``axis="index"``) or epochs-columned table."""
    if frame.empty:
        return []
    values = frame.to_numpy(dtype=np.float64)
    if axis == "index":
        bad = ~np.isfinite(values).all(axis=1)
        return [int(e) for e in frame.index[bad]]
    bad = ~np.isfinite(values).all(axis=0)
    return [int(e) for e in frame.columns[bad]]


# ---------------------------------------------------------------------------------- several runs
def as_runs(runs: object) -> dict[str, History]:
    """A ``name -> History`` dict from a dict or a list of histories (names from ``config["name"]``).

    ``TypeError`` for anything else or for elements that are not histories.
    """
    if isinstance(runs, History):
        raise TypeError("runs must be several histories (a dict name -> History or a list), got a single History")
    if isinstance(runs, Mapping):
        items = list(runs.items())
        for name, h in items:
            check_history(h, f"runs[{name!r}]")
        return {str(name): h for name, h in items}
    if isinstance(runs, (list, tuple)):
        out: dict[str, History] = {}
        for i, h in enumerate(runs):
            check_history(h, f"runs[{i}]")
            base = str(h.config.get("name") or f"run {i}")
            name, k = base, 2
            while name in out:
                name, k = f"{base} ({k})", k + 1
            out[name] = h
        return out
    raise TypeError(
        "runs must be a dict name -> History (e.g. from xaisparse.history.load_runs) or a list of histories, "
        f"got {type(runs).__name__}"
    )


def common_layers(runs: Mapping[str, History]) -> list[str]:
    """Layers recorded in every run, in the first run's network order."""
    histories = list(runs.values())
    if not histories:
        return []
    rest = [set(h.layer_names) for h in histories[1:]]
    return [name for name in histories[0].layer_names if all(name in s for s in rest)]


def runs_missing_layer(runs: Mapping[str, History], layer: str) -> list[str]:
    """Names of the runs that do not record ``layer``."""
    return [name for name, h in runs.items() if layer not in h.layer_names]


def _span(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return str(list(epochs))
