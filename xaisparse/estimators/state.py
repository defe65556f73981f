"""A small base for streaming estimators whose state is fixed-size and sum-reducible.

It follows torchmetrics' ``Metric`` protocol (``add_state`` / ``update`` / ``compute`` /
``reset`` / ``merge_state``, automatic DDP sync in ``compute``) for the one kind of state we
need: tensors that merge by addition. We do not subclass torchmetrics itself because importing
it imports matplotlib and torchvision (tens of seconds on a small machine), and
``import xaisparse`` must stay light.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["SumState"]


class SumState(nn.Module):
    """Streaming estimator base: states are buffers (saved in ``state_dict``, moved by ``.to``)
    that merge across chunks and ranks by summation.

    Subclasses call :meth:`add_state` in ``__init__`` and implement ``update`` and ``compute``.
    ``compute`` warns when called before any ``update`` and, inside an initialised
    ``torch.distributed`` process group, first sums the states over all ranks (the local
    states are restored afterwards, so updates can go on).

    A subclass may defer part of its updates (to do the per-batch small-tensor work of several
    batches at once): it sets ``self._deferred = True`` and implements ``_flush`` (fold the
    deferred work into the states) and ``_drop_deferred``. Every read of a state -- the
    attribute, ``metric_state``, ``state_dict``, ``buffers()``, ``sync``, ``merge_state``, device
    moves, pickling -- flushes first, so nothing outside can see a state without its updates.
    """

    def __init__(self) -> None:
        super().__init__()
        self._defaults: dict[str, Tensor] = {}
        self._update_count = 0
        self._in_compute: bool = False  # inside compute(): a subclass calling super().compute() syncs once
        self._deferred: bool = False  # a subclass has updates not yet folded into the states

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, wrap in (("update", _counted), ("compute", _synced)):
            if name in cls.__dict__:
                setattr(cls, name, wrap(cls.__dict__[name]))

    def add_state(self, name: str, default: Tensor) -> None:
        """Register a sum-reducible tensor state with its reset value."""
        self._defaults[name] = default.detach().clone()
        self.register_buffer(name, default.detach().clone(), persistent=True)

    @property
    def update_count(self) -> int:
        return self._update_count

    # deferred updates: flushed before any read of the states
    def _flush(self) -> None:
        """Fold deferred updates into the states (subclasses that defer override this)."""
        self._deferred = False

    def _drop_deferred(self) -> None:
        """Forget deferred updates (the states are being replaced)."""
        self._deferred = False

    def __getattr__(self, name: str) -> Tensor | nn.Module:
        d = self.__dict__
        if d.get("_deferred") and name in d.get("_defaults", ()):
            self._flush()
        return super().__getattr__(name)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self._flush()
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _apply(self, fn, recurse=True):
        self._flush()
        return super()._apply(fn, recurse)

    def named_buffers(self, *args: Any, **kwargs: Any) -> Any:
        self._flush()
        return super().named_buffers(*args, **kwargs)

    def __getstate__(self) -> dict[str, Any]:
        self._flush()
        return self.__dict__.copy()

    def sync(self) -> dict[str, Tensor] | None:
        """Sum every state over the ranks of the default process group (no-op outside DDP).

        Returns the local states it replaced (``compute`` restores them), or None.
        """
        self._flush()
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return None
        local = {name: getattr(self, name).clone() for name in self._defaults}
        for name in self._defaults:
            reduced = getattr(self, name).clone()
            dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
            setattr(self, name, reduced)
        return local

    def reset(self) -> None:
        """Back to the empty state."""
        self._drop_deferred()
        for name, default in self._defaults.items():
            setattr(self, name, default.to(getattr(self, name).device).clone())
        self._update_count = 0

    def merge_state(self, other: SumState | dict[str, Tensor]) -> None:
        """Add another estimator's state (same class and shapes) or a state dict to this one."""
        self._flush()
        if isinstance(other, SumState):
            if type(other) is not type(self):
                raise TypeError(f"cannot merge a {type(other).__name__} into a {type(self).__name__}")
            other._flush()
            states, count = {name: getattr(other, name) for name in other._defaults}, other._update_count
        elif isinstance(other, dict):
            states, count = other, 1
        else:
            raise TypeError(
                f"merge_state expects a {type(self).__name__} or a dict of tensors, got {type(other).__name__}"
            )
        for name in self._defaults:
            if name not in states:
                raise KeyError(f"state {name!r} missing from the merged state; got {sorted(states)}")
            mine, theirs = getattr(self, name), states[name]
            if mine.shape != theirs.shape:
                raise ValueError(f"cannot merge state {name!r}: shape {tuple(theirs.shape)} into {tuple(mine.shape)}")
            mine += theirs.to(mine.device, mine.dtype)
        self._update_count += count

    def metric_state(self) -> dict[str, Tensor]:
        """The current states by name."""
        return {name: getattr(self, name) for name in self._defaults}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._drop_deferred()  # the loaded state replaces everything seen so far
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._update_count = max(self._update_count, 1)  # loaded state counts as data seen


def _counted(update: Any) -> Any:
    @functools.wraps(update)
    def wrapped(self: SumState, *args: Any, **kwargs: Any) -> None:
        out = update(self, *args, **kwargs)
        self._update_count += 1  # only updates that went through count as data seen
        return out

    return wrapped


def _synced(compute: Any) -> Any:
    @functools.wraps(compute)
    def wrapped(self: SumState, *args: Any, **kwargs: Any) -> Any:
        if self._update_count == 0:
            warnings.warn(
                f"{type(self).__name__}.compute() was called before any update(): no data seen; "
                "statistics are empty (NaN means, zero counts)",
                UserWarning,
                stacklevel=2,
            )
        if getattr(self, "_in_compute", False):  # a subclass calling super().compute(): sync once
            return compute(self, *args, **kwargs)
        local = self.sync()
        self._in_compute = True
        try:
            return compute(self, *args, **kwargs)
        finally:
            self._in_compute = False
            for name, value in (local or {}).items():
                setattr(self, name, value)

    return wrapped
