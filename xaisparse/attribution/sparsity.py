"""Attribution sparsity: the measures of activation sparsity, applied to attribution maps.

An attribution map is one sample's ``|attribution|`` summed over channels (``(N, C, H, W)`` →
``(N, H, W)``); its sparsity is :func:`~xaisparse.functional.perplexity_sparsity` over the map's
pixels (plus perplexity, Gini and zero fraction from :mod:`xaisparse.functional`), so
activation sparsity and attribution sparsity are the same kind of number: 0 when every pixel
carries the same attribution, 1 when one pixel carries all of it (or none does: a dead map).
"""

from __future__ import annotations

from contextlib import closing
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_number
from ..functional import dead_mask, gini, nonfinite_mask, perplexity, perplexity_sparsity, zero_fraction
from ._inputs import batch_target, check_model, iter_batches, model_device, modes, target_column
from .methods import check_kwargs, explainer, run

__all__ = ["MEASURES", "attribution_map", "attribution_sparsity", "attribution_sparsity_table"]

#: The per-map measures of :func:`attribution_sparsity`, in column order.
MEASURES: tuple[str, ...] = ("sparsity", "perplexity", "gini", "zero_fraction")


def attribution_map(attributions: Tensor) -> Tensor:
    """``|attributions|`` summed over the channel dim: ``(N, C, H, W)`` → ``(N, H, W)``.

    A ``(N, F)`` attribution (flat features) is its own map, ``|·|`` taken.

    >>> attribution_map(torch.tensor([[[[1.0, -2.0]], [[-3.0, 0.0]]]]))
    tensor([[[4., 2.]]])
    """
    if not isinstance(attributions, Tensor) or not attributions.is_floating_point():
        got = attributions.dtype if isinstance(attributions, Tensor) else type(attributions).__name__
        raise TypeError(f"attributions must be a floating-point tensor (as Captum returns), got {got}")
    if attributions.dim() < 2:
        raise ValueError(
            f"attributions must have shape (N, C, H, W) (or (N, F)), got shape {tuple(attributions.shape)}"
        )
    a = attributions.detach().abs()
    return a.sum(1) if a.dim() > 2 else a


def measures(attributions: Tensor, threshold: float = 0.0) -> dict[str, Tensor]:
    """The per-sample measures of :func:`attribution_sparsity` as ``(N,)`` tensors on the input's device."""
    threshold = check_number("threshold", threshold, minimum=0.0)
    maps = attribution_map(attributions)
    if maps[0].numel() < 2:
        raise ValueError(
            f"an attribution map needs at least 2 pixels for a sparsity, got maps of shape {tuple(maps.shape[1:])}"
        )
    v = maps.flatten(1).unsqueeze(1)  # (N, 1, pixels): the "spatial" vectors of one 1-channel map per sample
    bad = nonfinite_mask(v)[:, 0]
    nan = torch.full_like(bad, float("nan"), dtype=v.dtype)
    return {
        "sparsity": perplexity_sparsity(v)[:, 0],
        "perplexity": perplexity(v[:, 0], dim=-1),
        "gini": torch.where(bad, nan, gini(v)[:, 0]),
        "zero_fraction": torch.where(bad, nan, zero_fraction(v, threshold=threshold)[:, 0]),
        "dead": dead_mask(v)[:, 0],
        "nonfinite": bad,
    }


def _frame(values: dict[str, Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy().astype(bool if v.dtype == torch.bool else np.float64) for k, v in values.items()}


class Rows:
    """Per-image columns collected batch by batch (small arrays, no per-batch DataFrame), framed once at the end."""

    def __init__(self) -> None:
        self._parts: dict[str, list[Any]] = {}

    def add(self, **columns: Any) -> None:
        for key, value in columns.items():
            self._parts.setdefault(key, []).append(value)

    def frame(self, nullable: tuple[str, ...] = ("target", "predicted")) -> pd.DataFrame:
        out: dict[str, Any] = {}
        for key, parts in self._parts.items():
            if key in nullable:
                out[key] = pd.array([v for part in parts for v in part], dtype="Int64")
            elif isinstance(parts[0], str):
                out[key] = np.repeat(parts, [len(p) for p in self._parts["sample"]])
            else:
                out[key] = np.concatenate(parts)
        return pd.DataFrame(out)


def attribution_sparsity(attributions: Tensor, *, threshold: float = 0.0) -> pd.DataFrame:
    """Per-sample sparsity of attribution maps, as a tidy table (one row per sample).

    ``attributions``: Captum's output ``(N, C, H, W)`` (or ``(N, F)``); each sample's map is
    ``|·|`` summed over channels (:func:`attribution_map`). Columns: ``sample``, ``sparsity``
    (perplexity sparsity over the map's pixels), ``perplexity`` (the effective number of
    attributed pixels), ``gini``, ``zero_fraction`` (pixels with ``|map| <= threshold``),
    ``dead`` (an all-zero map: sparsity 1, counted here) and ``nonfinite`` (a map holding
    NaN/Inf: its measures are NaN, never averaged in).

    >>> a = torch.zeros(2, 3, 2, 2)
    >>> a[0] = 1.0             # every pixel the same: dense
    >>> a[1, 0, 0, 0] = -5.0   # one pixel: sparse
    >>> attribution_sparsity(a)[["sample", "sparsity", "perplexity", "zero_fraction"]]
       sample  sparsity  perplexity  zero_fraction
    0       0       0.0         4.0           0.00
    1       1       1.0         1.0           0.75
    """
    table = pd.DataFrame(_frame(measures(attributions, threshold)))
    table.insert(0, "sample", np.arange(len(table)))
    return table


def attribution_sparsity_table(
    model: nn.Module,
    data: Any,
    target: Any = "label",
    *,
    algorithm: Any = "integrated_gradients",
    noise_tunnel: bool = False,
    threshold: float = 0.0,
    eval_mode: bool | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> pd.DataFrame:
    """:func:`attribution_sparsity` of every image of ``data``, streamed batch by batch.

    ``data``: a DataLoader (or any iterable of ``(inputs, labels)`` batches or of input
    tensors), or one tensor batch. ``target``: ``"label"`` (default: the batch's labels),
    ``"predicted"`` (the model's arg-max class), an int class, ``None`` (one output per
    sample), or per-sample indices when ``data`` is one tensor. ``algorithm``,
    ``noise_tunnel``, ``eval_mode`` and ``**kwargs`` (``n_steps=``, ``internal_batch_size=``,
    ``baselines=``, ...) are those of :func:`~xaisparse.attribution.attribute`.

    Runs on the model's device with a tqdm progress bar (``progress=False`` hides it); each
    batch's attributions are reduced to per-image numbers before the next batch, so memory
    does not grow with the data beyond the table's rows. Columns: ``sample`` (running index
    over the data), ``target``, ``predicted`` (nullable ints), then those of
    :func:`attribution_sparsity`.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    >>> data = [(torch.rand(4, 1, 6, 6), torch.tensor([0, 1, 2, 0])) for _ in range(2)]
    >>> table = attribution_sparsity_table(model, data, algorithm="saliency", progress=False)
    >>> table.shape, list(table.columns[:4])
    ((8, 9), ['sample', 'target', 'predicted', 'sparsity'])
    """
    check_model(model)
    obj = explainer(model, algorithm, noise_tunnel=noise_tunnel)
    device = model_device(model)
    kwargs = check_kwargs(obj, kwargs, device, delta=False)
    check_number("threshold", threshold, minimum=0.0)
    rows = Rows()
    offset = 0
    with modes([model], eval_mode), closing(iter_batches(data, progress=progress, desc="attributions")) as batches:
        for x, labels in batches:
            x = x.to(device)
            with torch.no_grad():
                logits = model(x)
            tgt = batch_target(target, labels, logits, single_batch=isinstance(data, Tensor))
            n = x.shape[0]
            rows.add(
                sample=np.arange(offset, offset + n),
                target=target_column(tgt, n),
                predicted=predicted(logits),
                **_frame(measures(run(obj, x, tgt, kwargs), threshold)),
            )
            offset += n
    return rows.frame()


def predicted(logits: Tensor) -> list[int | None]:
    """The arg-max class per sample of ``(N, K)`` scores (``None`` for one score per sample)."""
    if logits.dim() == 2 and logits.shape[1] > 1:
        return logits.argmax(1).tolist()
    return [None] * logits.shape[0]
