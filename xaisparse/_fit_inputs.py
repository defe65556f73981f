"""What :func:`~xaisparse.train.fit` checks before training: the data's items, dtypes and labels.

A mistake in the data would otherwise surface deep in the first step as PyTorch's own message
(``'str' object has no attribute 'to'`` for dict items; a dtype error for float labels or a
float64 model fed float32 data). Each check reads the first item of each dataset (never
iterates a DataLoader, so no worker starts) and raises ``TypeError``/``ValueError`` saying what
was expected, what was found and how to fix it, as :mod:`xaisparse.attribution` does for its
inputs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

__all__ = ["check_fit_inputs"]


def check_fit_inputs(model: nn.Module, data: Mapping[str, Any], loss_fn: Callable[..., Tensor]) -> None:
    """Check the first item of each dataset in ``data`` (``{"train": ..., "test": ...}``) against ``model``.

    >>> from torch.utils.data import TensorDataset
    >>> net = nn.Linear(4, 2)
    >>> check_fit_inputs(net, {"train": TensorDataset(torch.randn(3, 4), torch.zeros(3))}, nn.functional.cross_entropy)
    Traceback (most recent call last):
    ...
    TypeError: cross_entropy (fit's loss_fn) needs integer class indices as labels, but train[0]'s label is a float tensor ...
    """
    for name, dataset in data.items():
        item = _first_item(dataset)
        if item is _NONE:
            continue
        where = f"{name}[0]"
        x, y = _pair(item, where)
        _check_inputs(model, x, where)
        if loss_fn is nn.functional.cross_entropy:
            _check_label(y, where)


_NONE = object()


def _first_item(data: Any) -> Any:
    """The first item of a map-style dataset (or of a DataLoader's), else ``_NONE`` (nothing to check)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return _NONE
    try:
        if len(dataset) == 0:
            raise ValueError(f"the dataset {type(dataset).__name__} is empty: fit needs at least one sample")
        return dataset[0]
    except (IndexError, KeyError, NotImplementedError):
        return _NONE


def _pair(item: Any, where: str) -> tuple[Any, Any]:
    if isinstance(item, Mapping):
        raise TypeError(
            f"fit expects each item of the data to be an (inputs, label) pair, as torchvision datasets and "
            f"TensorDataset give; {where} is a {type(item).__name__} with keys {list(item)[:8]}. Wrap the dataset "
            f"so that __getitem__ returns (inputs, label), e.g. `return item['image'], item['label']`"
        )
    if not isinstance(item, (tuple, list)) or len(item) < 2:
        got = (
            f"a {type(item).__name__} of length {len(item)}" if isinstance(item, (tuple, list)) else type(item).__name__
        )
        raise TypeError(
            f"fit expects each item of the data to be an (inputs, label) pair, as torchvision datasets and "
            f"TensorDataset give; {where} is {got}"
        )
    return item[0], item[1]


def _check_inputs(model: nn.Module, x: Any, where: str) -> None:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)  # what the DataLoader's collation makes of it
    if not isinstance(x, Tensor):
        raise TypeError(
            f"the inputs of {where} are a {type(x).__name__}, not a tensor; convert them in the dataset "
            f"(e.g. torchvision's transforms.ToTensor() for images)"
        )
    params = [p for p in model.parameters() if p.is_floating_point()]
    if not params:
        return
    dtype = params[0].dtype
    if x.is_floating_point() and x.dtype != dtype:
        raise TypeError(
            f"the model's parameters are {dtype} but the inputs of {where} are {x.dtype}: make them match, "
            f"e.g. model.to({x.dtype}) or convert the inputs to {dtype} in the dataset"
        )
    takes_indices = any(isinstance(m, (nn.Embedding, nn.EmbeddingBag)) for m in model.modules())
    if not x.is_floating_point() and not x.is_complex() and not takes_indices:
        raise TypeError(
            f"the inputs of {where} are {x.dtype}, and the model (no nn.Embedding) computes in {dtype}: convert "
            f"them in the dataset, e.g. x.float() / 255 for uint8 images"
        )


def _check_label(y: Any, where: str) -> None:
    if isinstance(y, bool):
        raise TypeError(
            f"cross_entropy (fit's loss_fn) needs integer class indices as labels; {where}'s label is a bool"
        )
    if isinstance(y, (int, np.integer)):
        return
    if isinstance(y, np.ndarray):
        y = torch.from_numpy(y)
    if isinstance(y, (float, np.floating)):
        y = torch.tensor(float(y))
    if not isinstance(y, Tensor):
        raise TypeError(
            f"cross_entropy (fit's loss_fn) needs integer class indices as labels; {where}'s label is a "
            f"{type(y).__name__}. Return an int (or an integer tensor) as the label, or pass loss_fn="
        )
    if y.is_floating_point() and y.dim() == 0:  # a class-probability vector (dim 1) is a valid float target
        raise TypeError(
            f"cross_entropy (fit's loss_fn) needs integer class indices as labels, but {where}'s label is a float "
            f"tensor ({y.item():g}); convert the labels to integers (e.g. TensorDataset(x, y.long())), or pass a "
            f"loss_fn for other targets (e.g. loss_fn=nn.functional.mse_loss for regression)"
        )
