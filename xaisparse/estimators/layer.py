"""Streaming per-layer sparsity estimator with fixed-size, sum-mergeable state."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from ..functional.perplexity import _check_float, perplexity, sparsity_from_perplexity, xlogx
from .state import SumState

__all__ = ["LayerSparsity"]


def _hist_index(s: Tensor, bins: int) -> Tensor:
    """Bin of each sparsity value in ``[0, 1]`` for ``bins`` equal bins (1.0 falls in the last)."""
    return (torch.nan_to_num(s, nan=0.0) * bins).long().clamp_(0, bins - 1)


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
        return torch.linspace(0.0, 1.0, self.bins + 1, dtype=torch.float64)

    def update(self, x: Tensor) -> None:  # type: ignore[override]
        """Add one batch of activations ``(N, C, ...)``. No host synchronisation happens here."""
        x = _check_float(x, "activations").detach()
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"expected activations of shape (N, {self.num_channels}, ...), got shape {tuple(x.shape)}"
            )
        a = x.abs().flatten(2) if x.dim() > 2 else x.abs().unsqueeze(-1)  # (N, C, L)
        finite = torch.isfinite(a)
        a = torch.where(finite, a, torch.zeros_like(a))
        map_ok = finite.all(-1)  # (N, C): map free of NaN/Inf

        if a.shape[-1] > 1:
            self._update_spatial(a, map_ok)
        elif not self._warned_spatial:
            self._warned_spatial = True
            warnings.warn(
                f"spatial maps of size 1 (activations {tuple(x.shape)}): the spatial sparsity of this "
                "layer is undefined and skipped; channel and sample axes are still measured",
                RuntimeWarning,
                stacklevel=2,
            )

        means = a.mean(-1)  # (N, C) per-channel spatial means of |x|
        self._update_channel(means, map_ok)
        self._update_sample(means, map_ok)

    def _update_spatial(self, a: Tensor, ok: Tensor) -> None:
        s = sparsity_from_perplexity(perplexity(a, dim=-1), a.shape[-1])  # (N, C)
        s64 = torch.where(ok, s, torch.zeros_like(s)).to(torch.float64)
        self.spatial_sum += s64.sum(0)
        self.spatial_sumsq += (s64 * s64).sum(0)
        self.spatial_count += ok.sum(0)
        self.spatial_dead += (ok & (a.sum(-1) == 0)).sum(0)
        self.spatial_nonfinite += (~ok).sum(0)
        idx = _hist_index(s, self.bins) + torch.arange(self.num_channels, device=s.device) * self.bins
        self.spatial_hist.view(-1).scatter_add_(0, idx.flatten(), ok.flatten().long())

    def _update_channel(self, means: Tensor, ok: Tensor) -> None:
        row_ok = ok.all(-1)  # (N,)
        if means.shape[1] > 1:
            s = sparsity_from_perplexity(perplexity(means, dim=-1), means.shape[1])
        else:  # one channel: no population sparsity
            s = torch.full(means.shape[:1], float("nan"), dtype=means.dtype, device=means.device)
            row_ok = torch.zeros_like(row_ok)
        s64 = torch.where(row_ok, s, torch.zeros_like(s)).to(torch.float64)
        self.channel_sum += s64.sum()
        self.channel_sumsq += (s64 * s64).sum()
        self.channel_count += row_ok.sum()
        self.channel_dead += (row_ok & (means.sum(-1) == 0)).sum()
        self.channel_nonfinite += (~ok.all(-1)).sum()
        self.channel_hist.scatter_add_(0, _hist_index(s, self.bins), row_ok.long())

    def _update_sample(self, means: Tensor, ok: Tensor) -> None:
        m = torch.where(ok, means, torch.zeros_like(means)).to(torch.float64)
        self.sample_S += m.sum(0)
        self.sample_T += xlogx(m).sum(0)
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
        fresh = LayerSparsity(self.num_channels, self.bins)
        fresh.update(x)
        return fresh.compute()

