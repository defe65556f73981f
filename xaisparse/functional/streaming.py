"""One layer's sparsity statistics as a pair of pure functions over a fixed-size, sum-mergeable state.

The torchmetrics habit: ``_layer_sparsity_update`` maps one batch of activations
``(N, C, ...)`` to the state increments of that batch, ``_layer_sparsity_compute`` maps a
state (the sum of any number of increments, over batches and DDP ranks) to the statistics.
:class:`~xaisparse.estimators.LayerSparsity` only adds increments up, and the one-shot
:func:`layer_statistics` is ``compute(update(x))``: streaming and one-shot agree by construction.

The state (docs/measure.md), every entry a sum over samples:

* ``spatial_*`` per channel: fixed-bin histogram of the per-sample map sparsity, its sum and
  sum of squares, the number of finite maps, of dead (all-zero) maps and of maps with NaN/Inf;
* ``channel_*`` the same for the population sparsity of each sample (across its channels'
  spatial means), as scalars and a ``(bins,)`` histogram;
* ``sample_S``, ``sample_T``, ``sample_n`` per channel: ``Σ m``, ``Σ m ln m`` and the count of
  the channel's per-sample spatial means ``m``, from which the lifetime entropy is exact
  (``H = ln S - T/S``); ``sample_nonfinite`` counts the maps left out.

The update has two steps. The first reads the activations: ``mapsums._map_sums``
gives each map's ``S = Σ|a|`` and ``T = Σ|a| ln|a|`` in a few fused passes (the monitor's per-batch
hot path). The second, ``_packed_increments``, turns the sums of any number of equal-sized
batches into the increments on ``(N, C)``-sized tensors (the estimator defers it and does it for
many batches at once). Neither makes a host synchronisation.

Internally the state is packed into four tensors (``_unpack`` gives the named views), so
that adding an increment, a merge or a DDP reduction is one operation for all of them:

* ``float64 (2, C + 1)``: rows ``sum`` and ``sumsq`` of the sparsity (columns ``0..C-1``: the
  spatial axis per channel; column ``C``: the channel axis);
* ``float64 (2, C)``: ``sample_S`` and ``sample_T``;
* ``int64 (5, C + 1)``: rows ``count``, ``dead``, ``nonfinite`` (spatial | channel), ``sample_n``
  and ``sample_nonfinite`` (column ``C`` of the last two is a spare no named state reads);
* ``int64 (C + 1, bins)``: the spatial histograms, then the channel histogram.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import check_int
from .mapsums import _map_sums, _sparsity_from_sums, _spatial_length
from .perplexity import _check_float, _entropy_from_sums, sparsity_from_perplexity

__all__ = ["STATE_NAMES", "empty_state", "layer_statistics"]

#: The state entries, in a fixed order: (name, per-channel?, histogram?, dtype).
_STATE: tuple[tuple[str, bool, bool, torch.dtype], ...] = (
    ("spatial_hist", True, True, torch.long),
    ("spatial_sum", True, False, torch.float64),
    ("spatial_sumsq", True, False, torch.float64),
    ("spatial_count", True, False, torch.long),
    ("spatial_dead", True, False, torch.long),
    ("spatial_nonfinite", True, False, torch.long),
    ("channel_hist", False, True, torch.long),
    ("channel_sum", False, False, torch.float64),
    ("channel_sumsq", False, False, torch.float64),
    ("channel_count", False, False, torch.long),
    ("channel_dead", False, False, torch.long),
    ("channel_nonfinite", False, False, torch.long),
    ("sample_S", True, False, torch.float64),
    ("sample_T", True, False, torch.float64),
    ("sample_n", True, False, torch.long),
    ("sample_nonfinite", True, False, torch.long),
)
_TINY64 = torch.finfo(torch.float64).tiny

#: Names of the state entries (the keys of :func:`empty_state` and of every update).
STATE_NAMES: tuple[str, ...] = tuple(name for name, *_ in _STATE)


def empty_state(num_channels: int, bins: int, device: torch.device | str | None = None) -> dict[str, Tensor]:
    """The zero state of a layer with ``num_channels`` channels and ``bins`` histogram bins.

    >>> {k: tuple(v.shape) for k, v in empty_state(3, 4).items() if k.startswith("spatial")}
    {'spatial_hist': (3, 4), 'spatial_sum': (3,), 'spatial_sumsq': (3,), 'spatial_count': (3,), \
'spatial_dead': (3,), 'spatial_nonfinite': (3,)}
    """
    out = {}
    for name, per_channel, hist, dtype in _STATE:
        shape = (num_channels,) * per_channel + (bins,) * hist
        out[name] = torch.zeros(shape, dtype=dtype, device=device)
    return out


def _hist_edges(bins: int, device: torch.device | str | None = None) -> Tensor:
    """The ``bins + 1`` edges on ``[0, 1]``, bit-identical to ``np.linspace(0, 1, bins + 1)``."""
    edges = torch.arange(bins + 1, dtype=torch.float64, device=device) * (1.0 / bins)
    edges[-1] = 1.0
    return edges


def _hist_index(s: Tensor, bins: int, inner: Tensor | None = None) -> Tensor:
    """Bin of each sparsity value in ``[0, 1]``: ``[e_i, e_{i+1})`` on :func:`_hist_edges`, 1.0 in the last.

    ``np.histogram``'s rule on the same edges: the number of inner edges ``<= s`` (one
    ``bucketize`` against the float64 edges, so a value is compared with each edge exactly).
    ``inner``: the inner edges ``_hist_edges(bins)[1:-1]`` when the caller has them. NaN goes
    to bin 0 (callers give it zero weight).

    >>> _hist_index(torch.tensor([0.0, 0.3, 0.30000000000000004, 0.99, 1.0], dtype=torch.float64), 10)
    tensor([0, 2, 3, 9, 9])
    """
    if inner is None:  # a call from outside the fold (which has the edges and no NaN)
        inner = _hist_edges(bins, s.device)[1:-1]
        s = torch.nan_to_num(s.to(torch.float64), nan=0.0)
    return torch.bucketize(s, inner, right=True)


class _Consts(NamedTuple):
    """Small constant tensors of :func:`_packed_increments` for one (channels, map size, bins, device)."""

    lengths_m1: Tensor  # (C + 1,) float64: vector length - 1 per column (spatial: L, channel axis: C)
    measured: Tensor  # (C + 1,) bool: which columns have a sparsity (spatial if L > 1; channel if C > 1)
    nonfinite_counted: Tensor  # (C + 1,) bool: spatial columns only if L > 1; the channel column always
    offsets: Tensor  # (C + 1,) int64: first cell of each column's histogram in the flat (C + 1) * bins
    inner: Tensor  # (bins - 1,) float64: the inner histogram edges
    one: Tensor  # () float64: 1


def _consts(channels: int, length: int, bins: int, device: torch.device | str | None) -> _Consts:
    spatial = length > 1
    lengths = torch.full((channels + 1,), float(max(length, 2) - 1), dtype=torch.float64, device=device)
    lengths[channels] = max(channels, 2) - 1
    measured = torch.full((channels + 1,), spatial, dtype=torch.bool, device=device)
    measured[channels] = channels > 1
    counted = measured.clone()
    counted[channels] = True
    offsets = torch.arange(channels + 1, device=device) * bins
    one = torch.ones((), dtype=torch.float64, device=device)
    return _Consts(lengths, measured, counted, offsets, _hist_edges(bins, device)[1:-1], one)


def _stack_sums(totals: list[Tensor], ts: list[Tensor] | None) -> Tensor:
    """The ``(2, M, C)`` table ``[S; T]`` of the map sums of several equal-sized batches (``M = K N``).

    ``ts`` None (maps with no spatial extent): the ``T`` rows repeat ``S`` (never read: those
    columns are not measured).
    """
    n, c = totals[0].shape[:2]
    return torch.stack(totals + (ts if ts is not None else totals)).view(2, len(totals) * n, c)


def _packed_increments(st: Tensor, length: int, bins: int, k: _Consts) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The packed state increments (see the module docstring) of the map sums ``st = [S; T]``, ``(2, M, C)``.

    The spatial axis (one vector per map: ``S``, ``T``, length ``L``) and the channel axis (one
    per sample: the sums of its maps' means ``m = S / L`` and ``m ln m``, length ``C``) are
    measured side by side in one ``(M, C + 1)`` table, so that their masks, moments and
    histograms take one op each. A map is finite iff its ``S`` is (NaN and Inf propagate into
    it); a sample with any non-finite map is left out of the channel axis, and of the sample
    axis only that map. float64 from here on: ``H = ln S - T/S`` cancels digits. ~40 ops on
    ``(M, C)``-sized tensors, whatever ``M``; no host synchronisation.
    """
    if st.dtype != torch.float64:
        st = st.to(torch.float64)
    total = st[0]
    ok = torch.isfinite(total)  # (M, C)
    m = torch.where(ok, total, 0.0)
    if length > 1:
        m = m.div_(length)
    mm = torch.stack([m, torch.xlogy(m, m)])  # (2, M, C): m and m ln m (0 ln 0 = 0)
    rows = mm.sum(2, keepdim=True)  # (2, M, 1): the channel axis' S and T of each sample
    finite = torch.cat([ok, ok.all(1, keepdim=True)], 1)  # (M, C + 1)
    okk = finite & k.measured
    tab_s, tab_t = torch.cat([st, rows], 2).unbind(0)  # (M, C + 1) each
    s = _sparsity_from_sums(tab_s, tab_t, k.lengths_m1, tab_s > 0, k.one)  # NaN or Inf where not finite
    s = torch.where(okk, s, 0.0)  # 0 where not measured
    not_finite = ~finite
    counts = torch.stack([okk, (tab_s == 0) & okk, not_finite & k.nonfinite_counted, finite, not_finite]).sum(1)
    hist = torch.zeros(k.offsets.shape[0] * bins, dtype=torch.long, device=st.device)
    index = _hist_index(s, bins, k.inner).add_(k.offsets)  # scatter_add_: no host sync on CUDA (index_put_ sorts)
    hist.scatter_add_(0, index.view(-1), okk.view(-1).long())
    return torch.stack([s, s * s]).sum(1), mm.sum(1), counts, hist.view(-1, bins)


def empty_packed(num_channels: int, bins: int, device: torch.device | str | None = None) -> tuple[Tensor, ...]:
    """The zero packed state: float64 ``(2, C + 1)`` and ``(2, C)``, int64 ``(5, C + 1)`` and ``(C + 1, bins)``."""
    c = num_channels + 1
    return (
        torch.zeros(2, c, dtype=torch.float64, device=device),
        torch.zeros(2, num_channels, dtype=torch.float64, device=device),
        torch.zeros(5, c, dtype=torch.long, device=device),
        torch.zeros(c, bins, dtype=torch.long, device=device),
    )


def _unpack(sums: Tensor, sample: Tensor, counts: Tensor, hist: Tensor) -> dict[str, Tensor]:
    """The named state entries (in :data:`STATE_NAMES` order) as views of a packed state."""
    c = sample.shape[1]
    return {
        "spatial_hist": hist[:c],
        "spatial_sum": sums[0, :c],
        "spatial_sumsq": sums[1, :c],
        "spatial_count": counts[0, :c],
        "spatial_dead": counts[1, :c],
        "spatial_nonfinite": counts[2, :c],
        "channel_hist": hist[c],
        "channel_sum": sums[0, c],
        "channel_sumsq": sums[1, c],
        "channel_count": counts[0, c],
        "channel_dead": counts[1, c],
        "channel_nonfinite": counts[2, c],
        "sample_S": sample[0],
        "sample_T": sample[1],
        "sample_n": counts[3, :c],
        "sample_nonfinite": counts[4, :c],
    }


def _pack(state: Mapping[str, Tensor], num_channels: int, bins: int) -> tuple[Tensor, ...]:
    """The packed state holding the named entries of ``state`` (spares zero); shapes are checked.

    ``KeyError`` naming the first missing entry, ``ValueError`` on a shape that does not fit.
    """
    packed = empty_packed(num_channels, bins, next(iter(state.values())).device if state else None)
    views = _unpack(*packed)
    for name in STATE_NAMES:
        if name not in state:
            raise KeyError(f"state {name!r} missing from the merged state; got {sorted(state)}")
        value = state[name]
        if value.shape != views[name].shape:
            raise ValueError(f"cannot merge state {name!r}: shape {tuple(value.shape)} into {tuple(views[name].shape)}")
        views[name].copy_(value)
    return packed


def _layer_sparsity_update(x: Tensor, bins: int) -> dict[str, Tensor]:
    """The state increments (see :data:`STATE_NAMES`) of one batch of activations ``(N, C, ...)``.

    Pure: ``x`` is read, never written, and nothing else is touched. ``|x|`` is measured in the
    working dtype (float32 for half precision, else ``x``'s); the state is float64 sums and
    int64 counts. A map is finite iff its sum of ``|x|`` is (NaN and Inf propagate into the
    sum); maps that are not are excluded from every statistic and counted. ``(N, C)`` inputs
    and 1×1 maps (``L <= 1``) have no spatial sparsity: its increments are zero. No host
    synchronisation. ``_packed_increments`` of ``_map_sums(x)``, unpacked.
    """
    x = _check_float(x, "activations")
    if x.dim() < 2:
        raise ValueError(f"expected activations of shape (N, C, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    length = _spatial_length(x)
    with torch.no_grad():
        total, t = _map_sums(x)
        st = _stack_sums([total], None if t is None else [t])
        packed = _packed_increments(st, length, bins, _consts(x.shape[1], length, bins, x.device))
    return _unpack(*packed)


def _layer_sparsity_compute(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Statistics of a state (one increment or the sum of many), as a flat dict of tensors.

    Keys: ``spatial_{mean,std,count,dead,nonfinite,hist}`` (per channel),
    ``channel_{mean,std,count,dead,nonfinite,hist}`` (per layer),
    ``sample_{perplexity,sparsity,count,nonfinite}`` (per channel). Means over no data are NaN;
    std is the sample standard deviation (NaN below two values). The state is not modified.
    """
    out: dict[str, Tensor] = {}
    for axis in ("spatial", "channel"):
        n = state[f"{axis}_count"].to(torch.float64)
        total, sumsq = state[f"{axis}_sum"], state[f"{axis}_sumsq"]
        nan = torch.full_like(n, float("nan"))
        mean = torch.where(n > 0, total / n.clamp(min=1), nan)
        var = torch.where(n > 1, (sumsq - n * mean * mean) / (n - 1).clamp(min=1), nan)
        out[f"{axis}_mean"] = mean
        out[f"{axis}_std"] = var.clamp(min=0).sqrt()
        for k in ("count", "dead", "nonfinite", "hist"):
            out[f"{axis}_{k}"] = state[f"{axis}_{k}"].clone()
    count = state["sample_n"]
    h = _entropy_from_sums(state["sample_S"], state["sample_T"])
    pp = torch.where(count > 0, torch.exp(h), torch.full_like(h, float("nan")))
    out["sample_perplexity"] = pp
    out["sample_sparsity"] = sparsity_from_perplexity(pp, count.to(torch.float64))
    out["sample_count"] = count.clone()
    out["sample_nonfinite"] = state["sample_nonfinite"].clone()
    return out


def _warn_no_spatial(shape: tuple[int, ...], stacklevel: int) -> None:
    warnings.warn(
        f"spatial maps of size 1 (activations {shape}): the spatial sparsity of this layer is undefined "
        "and skipped; channel and sample axes are still measured",
        RuntimeWarning,
        stacklevel=stacklevel + 1,
    )


def layer_statistics(x: Tensor, bins: int = 20) -> dict[str, Tensor]:
    """Every statistic of :class:`~xaisparse.estimators.LayerSparsity` for the activations ``x`` alone.

    ``x`` is ``(N, C, H, W)`` (any number of spatial dims) or ``(N, C)``. The same as a fresh
    estimator after one ``update(x)``; for ``(N, C)`` inputs and 1×1 maps the spatial axis is
    skipped with a warning (once per shape and call site).

    >>> x = torch.zeros(3, 2, 2, 2)
    >>> x[:, 0] = 1.0                       # channel 0 dense
    >>> x[:, 1, 0, 0] = 1.0                 # channel 1: one active pixel
    >>> out = layer_statistics(x, bins=4)
    >>> out["spatial_mean"], out["spatial_hist"]
    (tensor([0., 1.], dtype=torch.float64), tensor([[3, 0, 0, 0],
            [0, 0, 0, 3]]))
    """
    bins = check_int("bins", bins, minimum=1)
    if isinstance(x, Tensor) and x.dim() >= 2 and _spatial_length(x) <= 1:
        _warn_no_spatial(tuple(x.shape), stacklevel=2)
    return _layer_sparsity_compute(_layer_sparsity_update(x, bins))
