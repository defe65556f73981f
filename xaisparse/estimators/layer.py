"""Streaming per-layer sparsity estimator: thin over the pure pair in :mod:`xaisparse.functional.streaming`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._validation import check_bool, check_int
from ..functional.perplexity import _check_float
from ..functional.streaming import (
    FLOAT_STATES,
    STATE_NAMES,
    _hist_edges,
    _hist_index,
    _layer_sparsity_compute,
    _layer_sparsity_update,
    _map_summaries,
    _spatial_length,
    _summaries_update,
    _warn_no_spatial,
    empty_state,
)
from .state import SumState

__all__ = ["LayerSparsity"]

_ = _hist_index  # re-exported for the tests and older imports

#: Eager updates fold their (N, C)-sized work in once per this many batches ...
DEFER_BATCHES = 16
#: ... or once this many per-map summaries (N * C, summed over the batches) are pending (~0.5 MiB).
DEFER_ENTRIES = 1 << 16


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
    ``(N, C)`` or 1×1 maps the spatial axis is skipped with one warning (per estimator).

    The maths is the pure pair of :mod:`xaisparse.functional.streaming`: ``update`` adds
    ``_layer_sparsity_update(x)`` to the state, ``compute`` is ``_layer_sparsity_compute`` of the
    state, so streaming over any chunking equals :func:`~xaisparse.functional.layer_statistics`
    on all of it. In eager mode the update reads the activations at once (per-map sums and
    entropies) and folds the small ``(N, C)``-sized rest of up to ``DEFER_BATCHES`` equal
    batches in together -- bit for bit the same state, and any read of the state folds in first.
    ``compile=True`` runs the whole update through ``torch.compile`` per batch (opt-in: the first
    batch of each new shape pays the compilation; the eager path is the reference).

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

    def __init__(self, num_channels: int, bins: int = 20, *, compile: bool = False) -> None:
        super().__init__()
        self.num_channels = check_int("num_channels", num_channels, minimum=1)
        self.bins = check_int("bins", bins, minimum=1)
        self.compiled = check_bool("compile", compile)
        self._warned_spatial = False
        for name, default in empty_state(num_channels, bins).items():
            self.add_state(name, default)
        self._update_fn = self._make_update_fn()
        # eager mode: per-map summaries of up to DEFER_BATCHES batches, folded in at once (_flush)
        self._pending: list[tuple[Tensor, Tensor | None]] = []
        self._pending_key: tuple[int, int, torch.device, torch.dtype] | None = None  # N, L, device, dtype
        self._pending_entries = 0  # N * C summed over the pending batches

    def _make_update_fn(self) -> Callable[[Tensor, int], dict[str, Tensor]]:
        if not self.compiled:
            return _layer_sparsity_update
        return torch.compile(_layer_sparsity_update, dynamic=True)  # compiled on the first batch of a shape

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()  # flushes deferred updates first
        state.pop("_update_fn", None)  # a compiled function does not pickle: rebuilt on load
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._update_fn = self._make_update_fn()

    @property
    def bin_edges(self) -> Tensor:
        """The ``bins + 1`` fixed histogram edges on ``[0, 1]``."""
        return _hist_edges(self.bins)

    def update(self, x: Tensor) -> None:
        """Add one batch of activations ``(N, C, ...)``. No host synchronisation happens here."""
        x = _check_float(x, "activations")
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected activations of shape (N, {self.num_channels}, ...), got shape {tuple(x.shape)}")
        if not self._warned_spatial and _spatial_length(x) <= 1:
            self._warned_spatial = True
            _warn_no_spatial(tuple(x.shape), stacklevel=3)  # the caller of update (past SumState's wrapper)
        if self.compiled:  # one traced graph per batch
            self._add(self._update_fn(x, self.bins))
            return
        # Eager: read the activations now (the per-map sums and entropies, a few big passes) and
        # fold the (N, C)-sized rest of several batches in at once: that rest is ~80 small ops
        # whose cost is per op, not per element. Any read of the state flushes first (SumState).
        key = (x.shape[0], _spatial_length(x), x.device, x.dtype)
        if self._pending and key != self._pending_key:
            self._flush()
        self._pending.append(_map_summaries(x))
        self._pending_key = key
        self._pending_entries += x.shape[0] * x.shape[1]
        self._deferred = True
        if len(self._pending) >= DEFER_BATCHES or self._pending_entries >= DEFER_ENTRIES:
            self._flush()

    def _flush(self) -> None:
        pending = self.__dict__.get("_pending") or []
        self._pending, self._pending_entries, self._deferred = [], 0, False
        if not pending or self._pending_key is None:
            return
        sums = torch.cat([p[0] for p in pending]) if len(pending) > 1 else pending[0][0]
        hs = [p[1] for p in pending if p[1] is not None]
        h = (torch.cat(hs) if len(hs) > 1 else hs[0]) if hs else None
        self._add(_summaries_update(sums, h, self._pending_key[1], self.bins, len(pending)), len(pending))

    def _drop_deferred(self) -> None:
        self._pending, self._pending_entries, self._deferred = [], 0, False

    def _add(self, increments: dict[str, Tensor], batches: int = 1) -> None:
        """Add increments; with ``batches > 1`` the float sums come per batch and are added in
        order (a running sum: ``cumsum``), bit for bit what one update per batch would give."""
        names = STATE_NAMES if batches == 1 else [n for n in STATE_NAMES if n not in FLOAT_STATES]
        torch._foreach_add_([getattr(self, n) for n in names], [increments[n] for n in names])
        if batches > 1:
            for name in FLOAT_STATES:
                state = getattr(self, name)
                state.copy_(torch.cat([state.unsqueeze(0), increments[name]]).cumsum(0)[-1])

    def compute(self) -> dict[str, Tensor]:
        """Statistics of everything seen since the last reset, as a flat dict of tensors.

        Keys: ``spatial_{mean,std,count,dead,nonfinite,hist}`` (per channel),
        ``channel_{mean,std,count,dead,nonfinite,hist}`` (per layer),
        ``sample_{perplexity,sparsity,count,nonfinite}`` (per channel). Means over no data are NaN.
        """
        return _layer_sparsity_compute(self.metric_state())

    def one_shot(self, x: Tensor) -> dict[str, Tensor]:
        """Statistics of ``x`` alone (a fresh estimator, one update): handy for comparisons."""
        fresh = LayerSparsity(self.num_channels, self.bins).to(x.device)
        fresh.update(x)
        return fresh.compute()
