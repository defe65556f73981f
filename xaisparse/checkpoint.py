"""Model checkpoints written by :func:`~xaisparse.train.fit`: reading them, and loading their weights.

``fit(checkpoint_dir=DIR)`` keeps ``DIR/checkpoint.pt``: a dict with the model's ``state_dict``
under ``"model"`` plus optimiser and RNG state, saved atomically after each epoch, and
``DIR/best.pt``: the weights of the best epoch so far (lowest test loss, or what ``EarlyStopping``
watches), rewritten only when an epoch improves on it. Everything
here reads tensors and plain data only (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from torch import nn

__all__ = ["BEST_CHECKPOINT", "CHECKPOINT", "load_checkpoint", "load_weights"]

#: File name of the checkpoint inside a run directory.
CHECKPOINT = "checkpoint.pt"
#: File name of the best epoch's weights inside a run directory (``{"epoch", "model", "watched", "value"}``).
BEST_CHECKPOINT = "best.pt"

M = TypeVar("M", bound=nn.Module)


def _path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p / CHECKPOINT if p.is_dir() else p


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint file (or the ``checkpoint.pt`` of a run directory) onto the CPU.

    Raises ``FileNotFoundError`` when there is none and ``ValueError`` when the file is not a
    readable checkpoint.
    """
    import torch

    p = _path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no checkpoint at {p} (expected {CHECKPOINT} written by fit(checkpoint_dir=...))")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read checkpoint {p}: {type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{p} holds a {type(state).__name__}, expected a checkpoint dict or a state_dict")
    return state


def load_weights(model: M, checkpoint: Any) -> M:
    """A deep copy of ``model`` with the weights of ``checkpoint`` loaded; ``model`` is untouched.

    ``checkpoint``: a path to a ``torch.save``'d ``state_dict`` or to a dict holding one under
    ``"model"`` (as ``fit`` writes; a run directory means its ``checkpoint.pt``), or such a dict.
    A checkpoint that does not fit the architecture raises ``ValueError`` naming the mismatch.

    >>> import torch
    >>> net = nn.Linear(2, 1)
    >>> twin = load_weights(net, {"model": {"weight": torch.ones(1, 2), "bias": torch.zeros(1)}})
    >>> twin.weight.tolist(), twin is net
    ([[1.0, 1.0]], False)
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(checkpoint, (str, os.PathLike)):
        source = str(_path(checkpoint))
        state: Any = load_checkpoint(checkpoint)
    elif isinstance(checkpoint, Mapping):
        source, state = "the checkpoint dict", checkpoint
    else:
        raise TypeError(f"checkpoint must be a path or a state_dict, got {type(checkpoint).__name__}")
    if isinstance(state.get("model"), Mapping):
        state = state["model"]
    clone = copy.deepcopy(model)
    try:
        clone.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ValueError(f"{source} does not fit this {type(model).__name__}: {exc}") from None
    return clone
