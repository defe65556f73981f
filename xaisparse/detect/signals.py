"""The per-epoch series a detector watches, computed from a History's queries only.

Every function here is pure and causal: the value at epoch ``e`` reads what was recorded at
epoch ``e`` (and, for :func:`trailing_slope`, the epochs before it), never a later one, and
never ``history.metrics`` (no loss, no label of any split). They return an epochs × layers
table (index: epochs ascending; columns: layers in the History's order; NaN where the value
is undefined, e.g. the spatial sparsity of a 1×1 map).

* :func:`layer_statistic`: a layer statistic of one split's probe (the default detector's
  input, the test-probe ``spatial_mean``): :meth:`~xaisparse.history.History.layer_frame`,
  after checking that the run records that split and statistic;
* :func:`divergence`: per layer, the mean over channels of the Jensen–Shannon divergence
  (base 2, in [0, 1]) between the train-probe and the test-probe histograms of the channel's
  per-sample map sparsity: how differently the network treats seen and unseen inputs;
* :func:`gap`: train-probe minus test-probe value of a layer statistic;
* :func:`layer_mean` and :func:`trailing_slope`: the mean over layers and its least-squares
  slope over the last ``window`` epochs (the rate-of-change rule's input).

:func:`signal_matrix` picks one by name for :class:`~xaisparse.detect.OverfitDetector`.

>>> from xaisparse.testing import synthetic_history
>>> h = synthetic_history(epochs=6, seed=0)
>>> layer_statistic(h).shape
(6, 3)
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from .._deprecation import deprecated
from .._validation import check_int
from ..history import History, check_history
from .config import DetectorConfig

__all__ = [
    "divergence",
    "gap",
    "js_divergence",
    "layer_mean",
    "layer_statistic",
    "least_squares_slope",
    "signal_matrix",
    "sparsity",
    "trailing_slope",
]


def layer_statistic(history: History, split: str = "test", statistic: str = "spatial_mean") -> pd.DataFrame:
    """:meth:`History.layer_frame(split, statistic=statistic) <xaisparse.history.History.layer_frame>`, checked.

    An unknown split lists the recorded ones, an unknown statistic the recorded statistics; an
    empty History gives an empty table.
    """
    history = check_history(history)
    if not history.sparsity_splits:
        return pd.DataFrame()
    if split not in history.sparsity_splits:
        raise ValueError(f"unknown split {split!r}; the history has sparsity for splits {history.sparsity_splits}")
    if statistic not in history.statistics(split):
        raise ValueError(f"unknown statistic {statistic!r} for split {split!r}; available: {history.statistics(split)}")
    return history.layer_frame(split, statistic=statistic)


def sparsity(history: History, split: str = "test", statistic: str = "spatial_mean") -> pd.DataFrame:
    """Deprecated: :func:`layer_statistic` (the History's :meth:`~xaisparse.history.History.layer_frame`)."""
    deprecated(
        "xaisparse.detect.signals.sparsity(history, split, statistic) is deprecated: use "
        "history.layer_frame(split, statistic=statistic)",
        stacklevel=2,
    )
    return layer_statistic(history, split, statistic)


def gap(
    history: History, statistic: str = "population_mean", first: str = "train", second: str = "test"
) -> pd.DataFrame:
    """``first`` minus ``second`` probe value of a layer statistic, epochs × layers (the epochs both have)."""
    a, b = layer_statistic(history, first, statistic), layer_statistic(history, second, statistic)
    if a.empty or b.empty:
        return pd.DataFrame()
    epochs = a.index.intersection(b.index)
    layers = [c for c in a.columns if c in b.columns]
    return a.loc[epochs, layers] - b.loc[epochs, layers]


def js_divergence(p_counts: np.ndarray, q_counts: np.ndarray) -> np.ndarray:
    """Jensen–Shannon divergence (base 2) of histograms along the last axis; NaN where either is empty.

    ``JS = ½ KL(P‖M) + ½ KL(Q‖M)``, ``M = (P + Q) / 2``, after normalising each histogram to
    sum 1, with ``0 · log 0 = 0``; in [0, 1].

    >>> js_divergence(np.array([1, 0]), np.array([0, 1])), js_divergence(np.array([2, 2]), np.array([1, 1]))
    (1.0, 0.0)
    """
    p_counts, q_counts = np.asarray(p_counts, dtype=np.float64), np.asarray(q_counts, dtype=np.float64)
    if p_counts.shape != q_counts.shape:
        raise ValueError(f"histograms must have the same shape, got {p_counts.shape} and {q_counts.shape}")
    tp, tq = p_counts.sum(-1, keepdims=True), q_counts.sum(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        p, q = p_counts / tp, q_counts / tq
        m = 0.5 * (p + q)
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum(-1)
    js = 0.5 * (kl_p + kl_q)
    out = np.where((tp[..., 0] > 0) & (tq[..., 0] > 0), np.clip(js, 0.0, 1.0), np.nan)
    return out if out.ndim else out.item()


def divergence(
    history: History, first: str = "train", second: str = "test", epochs: Iterable[int] | None = None
) -> pd.DataFrame:
    """Per layer and epoch: the mean over channels of the train/test JS divergence of their histograms.

    Reads ``history.histogram(split, layer, epoch)`` (channels × bins counts of each channel's
    per-sample spatial sparsity); channels with an empty histogram on either side are skipped,
    a layer with none left is NaN. ``epochs`` restricts the computation (default: every epoch
    both splits have histograms of).
    """
    history = check_history(history)
    layers = history.layer_names
    common: dict[str, list[int]] = {}
    for layer in layers:
        a, b = history.histogram_epochs(first, layer), history.histogram_epochs(second, layer)
        if a and b:
            common[layer] = sorted(set(a) & set(b))
    all_epochs = sorted({e for es in common.values() for e in es})
    if epochs is not None:
        wanted = {int(e) for e in epochs}
        all_epochs = [e for e in all_epochs if e in wanted]
    out = pd.DataFrame(np.nan, index=pd.Index(all_epochs, name="epoch"), columns=layers)
    for layer, es in common.items():
        for e in (e for e in es if e in out.index):
            js = js_divergence(history.histogram(first, layer, e), history.histogram(second, layer, e))
            finite = np.isfinite(js)
            if finite.any():
                out.loc[e, layer] = float(js[finite].mean())
    return out


def layer_mean(frame: pd.DataFrame) -> pd.Series:
    """Mean over the layers with a finite value at each epoch (NaN when none is)."""
    values = frame.to_numpy(dtype=np.float64)
    finite = np.isfinite(values)
    count = finite.sum(1)
    total = np.where(finite, values, 0.0).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return pd.Series(mean, index=frame.index, name="layer_mean")


def least_squares_slope(values: Iterable[float]) -> float:
    """Slope per position of the least-squares line through the finite values (positions 0, 1, …).

    NaN with fewer than 3 finite values.

    >>> least_squares_slope([1.0, 3.0, 5.0]), least_squares_slope([1.0, float("nan"), 5.0])
    (2.0, nan)
    """
    y = np.asarray(list(values), dtype=np.float64)
    x = np.arange(len(y), dtype=np.float64)
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return float("nan")
    xs, ys = x[ok], y[ok]
    xc = xs - xs.mean()
    return float((xc * (ys - ys.mean())).sum() / (xc * xc).sum())


def trailing_slope(series: pd.Series, window: int = 3) -> pd.Series:
    """At each position ``i >= window - 1``: :func:`least_squares_slope` of positions ``i-window+1 … i``."""
    window = check_int("window", window, minimum=3)
    y = series.to_numpy(dtype=np.float64)
    out = np.full(len(y), np.nan)
    for i in range(window - 1, len(y)):
        out[i] = least_squares_slope(y[i - window + 1 : i + 1])
    return pd.Series(out, index=series.index, name="slope")


def signal_matrix(history: History, config: DetectorConfig, epochs: Iterable[int] | None = None) -> pd.DataFrame:
    """The series ``config.signal`` names (a :class:`~xaisparse.detect.DetectorConfig`), epochs × layers."""
    kind = config.signal
    if kind == "sparsity":
        return layer_statistic(history, config.split, config.statistic)
    if kind == "gap":
        return gap(history, config.statistic)
    if kind == "divergence":
        return divergence(history, epochs=epochs)
    raise ValueError(f"unknown signal {kind!r}")
