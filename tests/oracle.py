"""The one independent reference of the tests: the definition (docs/measure.md) written literally in NumPy/SciPy.

Nothing here imports xaisparse. Every test that checks a sparsity number compares the package
against these functions (``scipy.stats.entropy`` for H; 0 ln 0 = 0; a dead vector has PP = 1):
per vector (:func:`sparsity_rows`), per layer (:func:`layer_reference`: every statistic of one
layer's activations, all data at once) and per figure or table drawn from a History's tidy
rows (:func:`wide`).
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


def _stats(values: list[float], bins: int) -> dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(v.mean()) if v.size else math.nan,
        "std": float(v.std(ddof=1)) if v.size > 1 else math.nan,
        "hist": np.histogram(v, bins=np.linspace(0.0, 1.0, bins + 1))[0],
        "values": v,
    }


def layer_reference(x: Any, bins: int = 20) -> dict[str, Any]:
    """Every statistic of one layer's activations ``x`` ((N, C, ...) or (N, C)), in one shot, by loops.

    The estimator's keys (``spatial_*`` per channel, ``channel_*`` the population axis,
    ``sample_*`` the lifetime axis, fixed-bin histograms on ``bins``), plus what the monitor
    derives from them: ``dead_fraction`` per channel, ``layer_spatial_mean`` and
    ``layer_dead_fraction`` over all finite maps; ``_spatial_values[ch]`` and ``_channel_values``
    hold the values the histograms count. Maps with NaN/Inf are counted and excluded; a map of
    one value has no spatial sparsity (nothing counted); a dead map has sparsity 1.
    """
    if hasattr(x, "detach"):
        x = x.detach().double().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    n, c = x.shape[:2]
    a = np.abs(x.reshape(n, c, -1))  # (N, C, L): one map per (sample, channel)
    length = a.shape[-1]
    finite = np.isfinite(a).all(-1)  # (N, C)
    means = np.full((n, c), np.nan)
    for i in range(n):
        for ch in range(c):
            if finite[i, ch]:
                means[i, ch] = a[i, ch].mean()
    out: dict[str, Any] = {}

    # spatial: each (sample, channel) map
    columns: dict[str, list[Any]] = {k: [] for k in ("mean", "std", "hist", "count", "dead", "nonfinite", "values")}
    for ch in range(c):
        if length > 1:
            vals = [float(sparsity_rows(a[i, ch], clip=True)) for i in range(n) if finite[i, ch]]
            dead = sum(1 for i in range(n) if finite[i, ch] and not a[i, ch].any())
            bad = int((~finite[:, ch]).sum())
        else:  # no spatial sparsity for maps of size 1: nothing counted at all
            vals, dead, bad = [], 0, 0
        st = _stats(vals, bins)
        for key in ("mean", "std", "hist", "values"):
            columns[key].append(st[key])
        columns["count"].append(len(vals))
        columns["dead"].append(dead)
        columns["nonfinite"].append(bad)
    out.update(
        spatial_mean=np.array(columns["mean"]),
        spatial_std=np.array(columns["std"]),
        spatial_hist=np.array(columns["hist"]).reshape(c, bins),
        spatial_count=np.array(columns["count"]),
        spatial_dead=np.array(columns["dead"]),
        spatial_nonfinite=np.array(columns["nonfinite"]),
    )
    out["_spatial_values"] = columns["values"]
    count, dead_maps = out["spatial_count"].astype(np.float64), out["spatial_dead"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["dead_fraction"] = np.where(count > 0, dead_maps / np.maximum(count, 1), np.nan)
    all_maps = np.concatenate([np.asarray(v) for v in columns["values"]]) if c else np.array([])
    out["layer_spatial_mean"] = float(all_maps.mean()) if all_maps.size else math.nan
    out["layer_dead_fraction"] = float(dead_maps.sum() / count.sum()) if count.sum() else math.nan

    # channel (population): each sample's vector of per-channel means
    rows_ok = finite.all(1)
    vals = [float(sparsity_rows(means[i], clip=True)) for i in range(n) if rows_ok[i]] if c > 1 else []
    dead = sum(1 for i in range(n) if rows_ok[i] and not a[i].any()) if c > 1 else 0
    st = _stats(vals, bins)
    out.update(
        channel_mean=np.array(st["mean"]),
        channel_std=np.array(st["std"]),
        channel_hist=st["hist"],
        channel_count=np.array(len(vals)),
        channel_dead=np.array(dead),
        channel_nonfinite=np.array(int((~rows_ok).sum())),
    )
    out["_channel_values"] = st["values"]

    # sample (lifetime): each channel's means over the samples whose map of *that* channel is finite
    pp, sp, cnt = np.full(c, np.nan), np.full(c, np.nan), np.zeros(c, dtype=int)
    for ch in range(c):
        m = means[finite[:, ch], ch]
        cnt[ch] = m.size
        if m.size == 0:
            continue
        pp[ch] = 1.0 if m.sum() == 0 else float(perplexity_rows(m))
        if m.size > 1:
            sp[ch] = np.clip(1.0 - (pp[ch] - 1.0) / (m.size - 1.0), 0.0, 1.0)
    out.update(sample_perplexity=pp, sample_sparsity=sp, sample_count=cnt, sample_nonfinite=n - cnt)
    return out


def hist_matches(got: np.ndarray, values: np.ndarray, bins: int, tol: float = 1e-5) -> int:
    """Assert ``got == np.histogram(values, np.linspace(0, 1, bins + 1))`` (NaN values left out).

    A value within ``tol`` of an inner edge may land on either side (the code's value and the
    reference's differ by rounding): such values get exactly that freedom and nothing more.
    Returns how many values were that close (0: the comparison was exact).
    """
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    edges = np.linspace(0.0, 1.0, bins + 1)
    ref = np.histogram(values, bins=edges)[0]
    assert got.sum() == values.size, (got, values)
    inner = edges[1:-1]
    near = (np.abs(values[:, None] - inner[None, :]).min(1) < tol) if inner.size else np.zeros(values.size, bool)
    if not near.any():
        np.testing.assert_array_equal(got, ref)
        return 0
    sure = np.histogram(values[~near], bins=edges)[0]
    lo = np.histogram(np.clip(values[near] - tol, 0, 1), bins=edges)[0]
    hi = np.histogram(np.clip(values[near] + tol, 0, 1), bins=edges)[0]
    assert np.all(got >= sure) and np.all(got <= sure + lo + hi), (got, ref)
    return int(near.sum())
