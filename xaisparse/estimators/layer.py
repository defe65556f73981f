"""Streaming per-layer sparsity estimator with fixed-size, sum-mergeable state."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..functional.perplexity import _check_float, _entropy_nonneg, _sparsity_of_length, sparsity_from_perplexity
from .state import SumState

__all__ = ["LayerSparsity"]


def _hist_edges(bins: int, device: torch.device | str | None = None) -> Tensor:
    """The ``bins + 1`` edges on ``[0, 1]``, bit-identical to ``np.linspace(0, 1, bins + 1)``."""
    edges = torch.arange(bins + 1, dtype=torch.float64, device=device) * (1.0 / bins)
    edges[-1] = 1.0
    return edges


def _hist_index(s: Tensor, bins: int) -> Tensor:
    """Bin of each sparsity value in ``[0, 1]``: ``[e_i, e_{i+1})`` on :func:`_hist_edges`, 1.0 in the last.

    This is ``np.histogram``'s rule on the same edges. A bare ``floor(s * bins)`` disagrees with
    it (and with the published ``bin_edges``) for values within an ulp or two of an inner edge,
    e.g. ``s = 0.3`` with 10 bins.
    """
    s = torch.nan_to_num(s, nan=0.0).to(torch.float64)
    return (torch.bucketize(s, _hist_edges(bins, s.device), right=True) - 1).clamp_(0, bins - 1)


class LayerSparsity(SumState):
    """Streaming sparsity statistics of one layer's activations, one batch at a time.

    State is fixed-size and sum-reducible (so ``merge_state`` and the DDP sync in ``compute``
    are exact):

    * ``spatial`` axis, per channel: fixed-bin histogram of the per-sample map sparsity,
      sum and sum of squares (mean, std), count, dead maps, non-finite maps;
    * ``channel`` axis (population), per sample: histogram, sum, sum of squares, count, dead,
      non-finite;
    * ``sample`` axis (lifetime), per channel: the mergeable sums ``S = Σ m``,
      ``T = Σ m ln m`` and ``n`` over the channel's per-sample spatial means ``m``, from which
      ``compute`` gives the exact lifetime perplexity of everything seen.

    Dead maps count as sparsity 1 in means and histograms and are also counted as ``dead``;
    non-finite vectors are counted and excluded. Inputs are ``(N, C, H, W)`` or ``(N, C)``; for
    ``(N, C)`` or 1×1 maps the spatial axis is skipped with one warning.

    >>> m = LayerSparsity(num_channels=2, bins=4)
    >>> x = torch.zeros(3, 2, 2, 2)
    >>> x[:, 0] = 1.0                       # channel 0 dense
    >>> x[:, 1, 0, 0] = 1.0                 # channel 1: one active pixel
    >>> m.update(x)
    >>> out = m.compute()
    >>> out["spatial_mean"]
    tensor([0., 1.], dtype=torch.float64)
    >>> out["spatial_hist"]
    tensor([[3, 0, 0, 0],
            [0, 0, 0, 3]])
    >>> out["sample_sparsity"].abs().max() < 1e-12  # each channel equally active in all 3 samples
    tensor(True)
    """

    def __init__(self, num_channels: int, bins: int = 20) -> None:
        super().__init__()
        if not isinstance(num_channels, int) or num_channels < 1:
            raise ValueError(f"num_channels must be a positive int, got {num_channels!r}")
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        self.num_channels = num_channels
        self.bins = bins
        self._warned_spatial = False
        c, f64, i64 = num_channels, torch.float64, torch.long
        for name, shape, dtype in [
            ("spatial_hist", (c, bins), i64),
            ("spatial_sum", (c,), f64),
            ("spatial_sumsq", (c,), f64),
            ("spatial_count", (c,), i64),
            ("spatial_dead", (c,), i64),
            ("spatial_nonfinite", (c,), i64),
            ("channel_hist", (bins,), i64),
            ("channel_sum", (), f64),
            ("channel_sumsq", (), f64),
            ("channel_count", (), i64),
            ("channel_dead", (), i64),
            ("channel_nonfinite", (), i64),
            ("sample_S", (c,), f64),
            ("sample_T", (c,), f64),
            ("sample_n", (c,), i64),
            ("sample_nonfinite", (c,), i64),
        ]:
            self.add_state(name, torch.zeros(shape, dtype=dtype))

    @property
    def bin_edges(self) -> Tensor:
        """The ``bins + 1`` fixed histogram edges on ``[0, 1]``."""
        return _hist_edges(self.bins)

    def update(self, x: Tensor) -> None:  # type: ignore[override]
        """Add one batch of activations ``(N, C, ...)``. No host synchronisation happens here."""
        x = _check_float(x, "activations").detach()
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected activations of shape (N, {self.num_channels}, ...), got shape {tuple(x.shape)}")
        if x.dtype in (torch.float16, torch.bfloat16):
            # Half precision overflows (a map summing past 65504 reads as inf, i.e. sparsity 1)
            # and keeps ~3 digits of the sparsity: measure in float32 instead.
            x = x.float()
        a = x.abs().flatten(2) if x.dim() > 2 else x.abs().unsqueeze(-1)  # (N, C, L), our own copy
        # Hot path (runs in a forward hook): one cheap pass each over the big tensor. ``amax``
        # propagates NaN and Inf, so a map is free of them iff its maximum is finite; the maps
        # that are not are masked out of every statistic below, so ``total`` may hold NaN/Inf there.
        if a.shape[-1]:
            map_ok = torch.isfinite(a.amax(-1))  # (N, C)
        else:  # zero-size maps: nothing to reduce
            map_ok = torch.ones(a.shape[:2], dtype=torch.bool, device=a.device)
        total = a.sum(-1)  # (N, C)
        means = torch.where(map_ok, total, 0.0) / max(a.shape[-1], 1)  # (N, C) spatial means of |x|

        if a.shape[-1] > 1:
            self._update_spatial(a, x, total, map_ok)
        elif not self._warned_spatial:
            self._warned_spatial = True
            warnings.warn(
                f"spatial maps of size 1 (activations {tuple(x.shape)}): the spatial sparsity of this "
                "layer is undefined and skipped; channel and sample axes are still measured",
                RuntimeWarning,
                stacklevel=2,
            )

        self._update_channel(means, map_ok)
        self._update_sample(means, map_ok)

    def _update_spatial(self, a: Tensor, x: Tensor, total: Tensor, ok: Tensor) -> None:
        # ``a`` is update()'s private |x|: the entropy overwrites it (no second big buffer).
        h = _entropy_nonneg(a, total, of=x)
        s = _sparsity_of_length(torch.exp(h), a.shape[-1])  # (N, C)
        s64 = torch.where(ok, s, 0.0).to(torch.float64)
        self.spatial_sum += s64.sum(0)
        self.spatial_sumsq += (s64 * s64).sum(0)
        self.spatial_count += ok.sum(0)
        self.spatial_dead += (ok & (total == 0)).sum(0)
        self.spatial_nonfinite += (~ok).sum(0)
        idx = _hist_index(s, self.bins) + torch.arange(self.num_channels, device=s.device) * self.bins
        self.spatial_hist.view(-1).scatter_add_(0, idx.flatten(), ok.flatten().long())

    def _update_channel(self, means: Tensor, ok: Tensor) -> None:
        row_ok = ok.all(-1)  # (N,)
        if means.shape[1] > 1:
            s = _sparsity_of_length(torch.exp(_entropy_nonneg(means)), means.shape[1])
        else:  # one channel: no population sparsity
            s = torch.full(means.shape[:1], float("nan"), dtype=means.dtype, device=means.device)
            row_ok = torch.zeros_like(row_ok)
        s64 = torch.where(row_ok, s, 0.0).to(torch.float64)
        self.channel_sum += s64.sum()
        self.channel_sumsq += (s64 * s64).sum()
        self.channel_count += row_ok.sum()
        self.channel_dead += (row_ok & (means.sum(-1) == 0)).sum()
        self.channel_nonfinite += (~ok.all(-1)).sum()
        self.channel_hist.scatter_add_(0, _hist_index(s, self.bins), row_ok.long())

    def _update_sample(self, means: Tensor, ok: Tensor) -> None:
        m = torch.where(ok, means, torch.zeros_like(means)).to(torch.float64)
        self.sample_S += m.sum(0)
        self.sample_T += m.clamp(min=torch.finfo(m.dtype).tiny).log_().mul_(m).sum(0)  # Σ m ln m (0 ln 0 = 0)
        self.sample_n += ok.sum(0)
        self.sample_nonfinite += (~ok).sum(0)

    def compute(self) -> dict[str, Tensor]:  # type: ignore[override]
        """Statistics of everything seen since the last reset, as a flat dict of tensors.

        Keys: ``spatial_{mean,std,count,dead,nonfinite,hist}`` (per channel),
        ``channel_{mean,std,count,dead,nonfinite,hist}`` (per layer),
        ``sample_{perplexity,sparsity,count,nonfinite}`` (per channel). Means over no data are NaN.
        """
        out: dict[str, Tensor] = {}
        for axis in ("spatial", "channel"):
            n = getattr(self, f"{axis}_count").to(torch.float64)
            total, sumsq = getattr(self, f"{axis}_sum"), getattr(self, f"{axis}_sumsq")
            nan = torch.full_like(n, float("nan"))
            mean = torch.where(n > 0, total / n.clamp(min=1), nan)
            var = torch.where(n > 1, (sumsq - n * mean * mean) / (n - 1).clamp(min=1), nan)
            out[f"{axis}_mean"] = mean
            out[f"{axis}_std"] = var.clamp(min=0).sqrt()
            for k in ("count", "dead", "nonfinite", "hist"):
                out[f"{axis}_{k}"] = getattr(self, f"{axis}_{k}").clone()
        S, T, n = self.sample_S, self.sample_T, self.sample_n
        alive = S > 0
        h = torch.where(alive, torch.log(torch.where(alive, S, torch.ones_like(S))) - T / S.clamp(min=1e-300), 0.0)
        pp = torch.where(n > 0, torch.exp(h), torch.full_like(S, float("nan")))
        out["sample_perplexity"] = pp
        out["sample_sparsity"] = sparsity_from_perplexity(pp, n.to(torch.float64))
        out["sample_count"] = n.clone()
        out["sample_nonfinite"] = self.sample_nonfinite.clone()
        return out

    def one_shot(self, x: Tensor) -> dict[str, Tensor]:
        """Statistics of ``x`` alone (a fresh estimator, one update): handy for comparisons."""
        fresh = LayerSparsity(self.num_channels, self.bins).to(x.device)
        fresh.update(x)
        return fresh.compute()
