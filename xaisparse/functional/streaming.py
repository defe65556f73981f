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

The update is the per-batch hot path of the monitor: it reads the activations in a few fused
passes (``|x|`` into a private buffer, its map sums, then the entropy in place in that buffer),
makes no host synchronisation, and does the rest on ``(N, C)``-sized tensors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor

from .._validation import check_int
from .perplexity import (
    _check_float,
    _entropy_from_sums,
    _entropy_terms,
    _sparsity_of_length,
    sparsity_from_perplexity,
)

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


def _hist_index(s: Tensor, bins: int) -> Tensor:
    """Bin of each sparsity value in ``[0, 1]``: ``[e_i, e_{i+1})`` on :func:`_hist_edges`, 1.0 in the last.

    This is ``np.histogram``'s rule on the same edges, done the way NumPy does it for equal bins:
    ``floor(s · bins)``, then one step down where ``s`` lies below that bin's lower edge and one
    up where it reaches the upper one (a bare floor disagrees with the edges for values within
    an ulp or two of an inner edge, e.g. ``s = 0.3`` with 10 bins); the edges are computed as
    :func:`_hist_edges` computes them, ``i · (1 / bins)``. A few elementwise ops (``bucketize``,
    a binary search, is ~20x slower on the CPU). NaN goes to bin 0 (callers give it zero weight).

    >>> _hist_index(torch.tensor([0.0, 0.3, 0.30000000000000004, 0.99, 1.0], dtype=torch.float64), 10)
    tensor([0, 2, 3, 9, 9])
    """
    step = 1.0 / bins
    s = torch.nan_to_num(s.to(torch.float64), nan=0.0)
    k = torch.floor(s * bins)
    k = k.sub_((s < k * step).to(k.dtype))  # below its lower edge: one bin down
    k = k.add_((s >= (k + 1.0) * step).to(k.dtype))  # at or past its upper edge: one up
    return k.clamp_(0, bins - 1).long()  # 1.0 (and past-the-end rounding) into the last bin


def _spatial_length(x: Tensor) -> int:
    return math.prod(x.shape[2:])


def _abs_copy(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``|x|`` as a private contiguous ``(N, C, L)`` buffer of ``dtype`` (one pass when no cast is needed)."""
    shape = (x.shape[0], x.shape[1], _spatial_length(x))
    if x.dtype != dtype:
        return x.to(dtype, memory_format=torch.contiguous_format).abs_().view(shape)
    out = torch.empty(x.shape, dtype=dtype, device=x.device)  # contiguous whatever x's layout
    return torch.abs(x, out=out).view(shape)


def _map_summaries(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """The part of the update that reads the activations: per-map sums of ``|x|`` and entropies.

    Returns ``(sums, h)``, both ``(N, C)`` in the working dtype (float32 for half-precision
    inputs: half overflows on map sums and keeps ~3 digits of the sparsity; else ``x``'s dtype);
    ``h`` is None for ``(N, C)`` inputs and 1×1 maps (no spatial axis) and garbage where a map
    is not finite. A few fused passes: ``|x|`` into a private buffer, its map sums, then the
    entropy in place in that buffer (``x`` is read, never written).
    """
    x = _check_float(x, "activations").detach()
    if x.dim() < 2:
        raise ValueError(f"expected activations of shape (N, C, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    n, c, length = x.shape[0], x.shape[1], _spatial_length(x)
    work = _work_dtype(x.dtype)
    compiled = torch.compiler.is_compiling()  # traced by torch.compile: out-of-place ops fuse better
    b = _abs_copy(x, work) if not compiled else x.abs().to(work).reshape(n, c, length)
    total = b.sum(-1, keepdim=True)
    if length <= 1:
        return total.view(n, c), None
    own = None if compiled or x.dtype != work else x
    return total.view(n, c), _entropy_terms(b, -1, total=total, inplace=not compiled, of=own)[0]


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _layer_sparsity_update(x: Tensor, bins: int) -> dict[str, Tensor]:
    """The state increments (see :data:`STATE_NAMES`) of one batch of activations ``(N, C, ...)``.

    Pure: ``x`` is read, never written, and nothing else is touched. ``|x|`` is measured in the
    working dtype of :func:`_map_summaries`; the state is float64 sums and int64 counts. A map
    is finite iff its sum of ``|x|`` is (NaN and Inf propagate into the sum); maps that are not
    are excluded from every statistic and counted. ``(N, C)`` inputs and 1×1 maps (``L <= 1``)
    have no spatial sparsity: its increments are zero. No host synchronisation.
    ``_summaries_update(*_map_summaries(x), L, bins)``.
    """
    sums, h = _map_summaries(x)
    return _summaries_update(sums, h, _spatial_length(x), bins)


#: The float64 (summed, not counted) entries of the state.
FLOAT_STATES: tuple[str, ...] = tuple(name for name, *_, dtype in _STATE if dtype == torch.float64)


def _summaries_update(sums: Tensor, h: Tensor | None, length: int, bins: int, batches: int = 1) -> dict[str, Tensor]:
    """The state increments from the per-map summaries of :func:`_map_summaries`.

    ``batches > 1``: the summaries of that many equal-sized batches (same ``N`` and map size),
    concatenated along ``N`` (rows are independent). Counts and histograms are then summed over
    all of them; the float sums (:data:`FLOAT_STATES`) come per batch, with a leading
    ``batches`` dim, so that a caller can add them in order and get, bit for bit, what one
    update per batch gives.

    The spatial axis (one vector per map) and the channel axis (one per sample) are measured
    side by side in one ``(N, C + 1)`` table (column ``C``: the channel axis), so that their
    masks, moments and histograms take one op each instead of two.
    """
    n, c = sums.shape
    work, f64 = sums.dtype, torch.float64
    ok = torch.isfinite(sums)
    spatial = h is not None

    # per-sample spatial means of each channel: the vectors of the channel and sample axes
    # (float64: the identity H = ln S - T/S cancels digits, and these are the lifetime sums)
    m = torch.where(ok, sums, 0.0).to(f64).div_(max(length, 1))  # (N, C), 0 where not ok
    mlogm = m.clamp(min=_TINY64).log_().mul_(m)  # m ln m, 0 ln 0 = 0
    row_sums = m.sum(1, keepdim=True)  # (N, 1)
    h_row = _entropy_from_sums(row_sums, mlogm.sum(1, keepdim=True)).to(work)
    row_finite = ok.all(1, keepdim=True)  # a sample with any non-finite map is excluded whole
    row_ok = row_finite if c > 1 else torch.zeros_like(row_finite)  # one channel: no population sparsity

    # the (N, C + 1) table: spatial columns (if any), then the channel-axis column
    if h is not None:
        hh = torch.cat([h, h_row], 1)
        okk = torch.cat([ok, row_ok], 1)
        zero = torch.cat([sums, row_sums], 1) == 0
        lengths = torch.full((c + 1,), length, dtype=work, device=sums.device)  # vector length per column
        lengths[c] = max(c, 2)
    else:
        hh, okk, zero = h_row, row_ok, row_sums == 0
        lengths = torch.full((1,), max(c, 2), dtype=work, device=sums.device)
    s = _sparsity_of_length(hh.exp_(), lengths, inplace=True)
    s = torch.where(okk, s, 0.0).to(f64)  # 0 where not measured
    dead = okk & zero
    per = (batches, n // batches)
    moments = torch.stack([s, s * s, okk.to(f64), dead.to(f64)]).view(4, *per, s.shape[1]).sum(2)  # (4, batches, C + 1)
    counts = moments[2:].sum(1).long()  # exact: integers far below 2**53
    hist = torch.zeros(s.shape[1], bins, dtype=torch.long, device=sums.device)
    hist.scatter_add_(1, _hist_index(s, bins).T, okk.T.long())

    count = ok.sum(0)  # finite maps per channel
    nonfinite = n - count
    if batches == 1:
        moments = moments[:, 0]  # (4, C + 1)
    hist_spatial, hist_channel = hist.split([s.shape[1] - 1, 1])
    moments_spatial, moments_channel = moments.split([s.shape[1] - 1, 1], -1)
    counts_spatial, counts_channel = counts.split([s.shape[1] - 1, 1], 1)
    sample_s, sample_t = torch.stack([m, mlogm]).view(2, *per, c).sum(2).unbind()  # (batches, C) each
    out = {
        "channel_hist": hist_channel.view(bins),
        "channel_sum": moments_channel[0, ..., 0],
        "channel_sumsq": moments_channel[1, ..., 0],
        "channel_count": counts_channel[0, 0],
        "channel_dead": counts_channel[1, 0],
        "channel_nonfinite": n - row_finite.sum(),
        "sample_S": sample_s[0] if batches == 1 else sample_s,
        "sample_T": sample_t[0] if batches == 1 else sample_t,
        "sample_n": count,
        "sample_nonfinite": nonfinite,
    }
    if spatial:
        spatial_sum, spatial_sumsq, _, _ = moments_spatial.unbind()
        spatial_count, spatial_dead = counts_spatial.unbind()
        out.update(
            spatial_hist=hist_spatial,
            spatial_sum=spatial_sum,
            spatial_sumsq=spatial_sumsq,
            spatial_count=spatial_count,
            spatial_dead=spatial_dead,
            spatial_nonfinite=nonfinite,
        )
    else:
        zeros = torch.zeros(2, c, dtype=torch.long, device=sums.device)
        zero_sums = torch.zeros(2, *per[:1] * (batches > 1), c, dtype=f64, device=sums.device)
        out.update(
            spatial_hist=torch.zeros(c, bins, dtype=torch.long, device=sums.device),
            spatial_sum=zero_sums[0],
            spatial_sumsq=zero_sums[1],
            spatial_count=zeros[0],
            spatial_dead=zeros[0],
            spatial_nonfinite=zeros[1],
        )
    return {name: out[name] for name in STATE_NAMES}


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
