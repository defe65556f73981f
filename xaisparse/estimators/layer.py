"""Streaming per-layer sparsity estimator: thin over the pure pair in :mod:`xaisparse.functional.streaming`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._validation import check_bool, check_int
from ..functional.mapsums import _map_sums, _spatial_length
from ..functional.perplexity import _check_float
from ..functional.streaming import (
    STATE_NAMES,
    _Consts,
    _consts,
    _hist_edges,
    _hist_index,
    _layer_sparsity_compute,
    _pack,
    _packed_increments,
    _stack_sums,
    _unpack,
    _warn_no_spatial,
    empty_packed,
)
from .state import SumState

__all__ = ["LayerSparsity"]

_ = _hist_index  # re-exported for the tests and older imports

#: Updates fold their (N, C)-sized work in once per this many batches ...
DEFER_BATCHES = 64
#: ... or once this many per-map sums (N * C, summed over the batches) are pending (2 MiB in float32).
DEFER_ENTRIES = 1 << 18
#: The packed state tensors (see :mod:`xaisparse.functional.streaming`); ``state_dict`` holds the named views.
_PACKED = ("packed_sums", "packed_sample", "packed_counts", "packed_hist")
_NAMED = frozenset(STATE_NAMES)


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
    on all of it (to the rounding of float64 sums added in another order). The update reads the
    activations at once (the per-map sums ``S`` and ``T``, a few fused passes) and folds the small
    ``(N, C)``-sized rest of up to ``DEFER_BATCHES`` equal-sized batches in together, in ~40 ops
    whatever their number; any read of the state folds in first. ``compile=True`` runs both steps
    through ``torch.compile`` (opt-in: the first batch of each new shape pays the compilation; the
    eager path is the reference). ``nonnegative=True`` promises inputs ``>= 0`` (the outputs of
    ``nn.ReLU``; :class:`~xaisparse.monitor.SparsityMonitor` sets it for those): one pass over
    the activations less; a negative value then gives wrong statistics.

    The state is kept packed in three tensors (one op to add, merge or reduce across DDP ranks);
    ``state_dict``, ``metric_state`` and the attributes give the 16 named entries of
    :data:`~xaisparse.functional.STATE_NAMES` as views.

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

    def __init__(self, num_channels: int, bins: int = 20, *, compile: bool = False, nonnegative: bool = False) -> None:
        super().__init__()
        self.num_channels = check_int("num_channels", num_channels, minimum=1)
        self.bins = check_int("bins", bins, minimum=1)
        self.compiled = check_bool("compile", compile)
        self.nonnegative = check_bool("nonnegative", nonnegative)
        self._warned_spatial = False
        for name, default in zip(_PACKED, empty_packed(num_channels, bins)):
            self.add_state(name, default)
        self._sums_fn, self._fold_fn = self._make_fns()
        # per-map sums of up to DEFER_BATCHES equal-sized batches, folded in at once (_flush)
        self._pending: list[Tensor] = []  # S of each batch, (N, C, 1, ...)
        self._pending_t: list[Tensor] = []  # T of each batch (none when the maps have no spatial extent)
        self._pending_key: tuple[int, int, torch.device, torch.dtype] | None = None  # N, L, device, dtype
        self._pending_entries = 0  # N * C summed over the pending batches
        self._consts_cache: dict[tuple[int, torch.device], _Consts] = {}

    def _make_fns(self) -> tuple[Callable[..., tuple[Tensor, Tensor | None]], Callable[..., tuple[Tensor, ...]]]:
        if not self.compiled:
            return _map_sums, _packed_increments
        # compiled on the first batch of a shape; a graph each, reused by every estimator
        return _compiled_map_sums(), _compiled_packed_increments()

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()  # flushes deferred updates first
        for name in ("_sums_fn", "_fold_fn"):  # compiled functions do not pickle: rebuilt on load
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        super().__setstate__(state)
        self._sums_fn, self._fold_fn = self._make_fns()

    def __getattr__(self, name: str) -> Tensor | nn.Module:
        if name in _NAMED:  # a named state entry: a view of the packed state (folded in first)
            return self.metric_state()[name]
        return super().__getattr__(name)

    @property
    def bin_edges(self) -> Tensor:
        """The ``bins + 1`` fixed histogram edges on ``[0, 1]``."""
        return _hist_edges(self.bins)

    def update(self, x: Tensor) -> None:
        """Add one batch of activations ``(N, C, ...)``. No host synchronisation happens here."""
        total, t = self.map_sums(x)
        self._defer(total, t, _spatial_length(x))

    def map_sums(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """The per-map sums ``(S, T)`` of activations ``x`` that :meth:`update` reads, without adding them.

        As ``xaisparse.functional.mapsums._map_sums`` (compiled with ``compile=True``; without
        ``|x|`` with ``nonnegative=True``), after checking ``x``; warns once when the maps have no
        spatial extent. For :meth:`update_from_sums`, or to share one read of ``x`` with others.
        """
        x = _check_float(x, "activations")
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(f"expected activations of shape (N, {self.num_channels}, ...), got shape {tuple(x.shape)}")
        if not self._warned_spatial and _spatial_length(x) <= 1:
            self._warned_spatial = True
            _warn_no_spatial(tuple(x.shape), stacklevel=4)  # the caller of update (past SumState's wrapper)
        with torch.no_grad():
            return self._sums_fn(x, nonnegative=self.nonnegative)

    def update_from_sums(self, total: Tensor, t: Tensor | None, shape: torch.Size) -> None:
        """:meth:`update` of activations of ``shape`` whose per-map sums are known already
        (:meth:`map_sums` of them, or the penalty's of the same tensor); counted as an update."""
        if len(shape) < 2 or shape[1] != self.num_channels:
            raise ValueError(f"expected activations of shape (N, {self.num_channels}, ...), got shape {tuple(shape)}")
        self._defer(total, t, math.prod(shape[2:]))
        self._update_count += 1

    def _defer(self, total: Tensor, t: Tensor | None, length: int) -> None:
        n = total.shape[0]
        if n == 0:
            return
        key = (n, length, total.device, total.dtype)
        if self._pending and key != self._pending_key:
            self._flush()
        self._pending.append(total)
        if t is not None:  # every pending batch has the same map size: all have T, or none
            self._pending_t.append(t)
        self._pending_key = key
        self._pending_entries += n * self.num_channels
        self._deferred = True
        if len(self._pending) >= DEFER_BATCHES or self._pending_entries >= DEFER_ENTRIES:
            self._flush()

    def _consts(self, length: int, device: torch.device) -> _Consts:
        key = (length, device)
        consts = self._consts_cache.get(key)
        if consts is None:
            consts = self._consts_cache[key] = _consts(self.num_channels, length, self.bins, device)
        return consts

    def _flush(self) -> None:
        d = self.__dict__
        pending, pending_t, key = d.get("_pending") or [], d.get("_pending_t") or None, d.get("_pending_key")
        self._drop_deferred()
        if not pending or key is None:
            return
        length = key[1]
        st = _stack_sums(pending, pending_t)
        increments = self._fold_fn(st, length, self.bins, self._consts(length, st.device))
        torch._foreach_add_([getattr(self, name) for name in _PACKED], list(increments))

    def _drop_deferred(self) -> None:
        self._pending, self._pending_t, self._pending_entries, self._deferred = [], [], 0, False

    def metric_state(self) -> dict[str, Tensor]:
        """The 16 named states (views of the packed state), after folding in deferred updates."""
        return _unpack(*(getattr(self, name) for name in _PACKED))

    def merge_state(self, other: SumState | dict[str, Tensor]) -> None:
        """Add another estimator's state (same shapes) or a dict of the 16 named states to this one."""
        if isinstance(other, dict) and not set(other) <= set(_PACKED):
            other = dict(zip(_PACKED, _pack(other, self.num_channels, self.bins)))
        super().merge_state(other)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        for name, value in self.metric_state().items():  # folds in first
            destination[prefix + name] = value if keep_vars else value.detach()

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        self._drop_deferred()  # the loaded state replaces everything seen so far
        views = self.metric_state()
        found = {}
        for name, view in views.items():
            key = prefix + name
            if key not in state_dict:
                missing_keys.append(key)
                continue
            value = state_dict[key]
            if value.shape != view.shape:
                error_msgs.append(
                    f"size mismatch for {key}: copying a param with shape {tuple(value.shape)} from checkpoint, "
                    f"the shape in current model is {tuple(view.shape)}."
                )
                continue
            found[name] = value
        if strict:
            for key in state_dict:
                if key.startswith(prefix) and key[len(prefix) :] not in _NAMED:
                    unexpected_keys.append(key)
        if error_msgs or len(found) < len(views):
            return
        with torch.no_grad():
            for name, value in found.items():
                views[name].copy_(value)
        self._update_count = max(self._update_count, 1)  # loaded state counts as data seen

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


_COMPILED: dict[str, Callable[..., object]] = {}


def _compiled_map_sums() -> Callable[..., tuple[Tensor, Tensor | None]]:
    if "sums" not in _COMPILED:
        _COMPILED["sums"] = torch.compile(_map_sums, dynamic=True)
    return _COMPILED["sums"]  # type: ignore[return-value]


def _compiled_packed_increments() -> Callable[..., tuple[Tensor, ...]]:
    if "fold" not in _COMPILED:
        _COMPILED["fold"] = torch.compile(_packed_increments, dynamic=True)
    return _COMPILED["fold"]  # type: ignore[return-value]
