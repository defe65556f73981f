"""Classical sparsity measures, for comparison with perplexity sparsity.

All take the same ``axis`` as :func:`~xaisparse.functional.perplexity_sparsity` and measure
``|x|``; all are 1 for a maximally sparse vector and 0 for a uniform one (zero fraction:
the share of entries at or below the threshold).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .perplexity import Axis, as_vectors

__all__ = ["gini", "hoyer", "zero_fraction"]


def zero_fraction(x: Tensor, axis: Axis = "spatial", threshold: float = 0.0) -> Tensor:
    """Fraction of entries with ``|x| <= threshold`` in each vector of ``axis``.

    A step function: its gradient is zero almost everywhere (use it to measure, not to train).

    >>> zero_fraction(torch.tensor([[0.0, 0.5, 2.0, 0.0]]), "channel")
    tensor([0.5000])
    >>> zero_fraction(torch.tensor([[0.0, 0.5, 2.0, 0.0]]), "channel", threshold=1.0)
    tensor([0.7500])
    """
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0, got {threshold}")
    v = as_vectors(x, axis)
    return (v <= threshold).to(v.dtype).mean(dim=-1)


def hoyer(x: Tensor, axis: Axis = "spatial", eps: float = 1e-12) -> Tensor:
    """Hoyer's measure ``(√N − ‖a‖₁/‖a‖₂) / (√N − 1)``; 1 for a dead vector, NaN for ``N = 1``.

    >>> hoyer(torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]]), "channel")
    tensor([1., 0.])
    """
    v = as_vectors(x, axis)
    n = v.shape[-1]
    root_n = torch.tensor(float(n), dtype=v.dtype, device=v.device).sqrt()
    # Hoyer is scale invariant: divide by the max first, so that ``eps`` (a gradient guard for
    # dead vectors) cannot bias tiny-magnitude vectors (a uniform 1e-13 vector gave 1, not 0).
    m = v.amax(-1, keepdim=True) if n > 0 else v.sum(-1, keepdim=True)
    v = v / torch.where(m > 0, m, torch.ones_like(m))
    l1 = v.sum(-1)
    l2 = torch.sqrt((v * v).sum(-1) + eps * eps)
    ratio = torch.where(l1 > 0, l1 / l2, torch.ones_like(l1))
    out = (root_n - ratio) / (root_n - 1) if n > 1 else torch.full_like(l1, float("nan"))
    return out.clamp(0.0, 1.0) if n > 1 else out


def gini(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """Gini index of Hurley & Rickard (2009): ``1 − 2 Σ_k (c_k/‖c‖₁)((N − k + ½)/N)`` over
    the sorted entries ``c_1 ≤ … ≤ c_N``; 0 uniform, ``1 − 1/N`` for one active unit, 1 dead.

    >>> gini(torch.tensor([[0.0, 0.0, 0.0, 4.0], [2.0, 2.0, 2.0, 2.0]]), "channel")
    tensor([0.7500, 0.0000])
    """
    v = as_vectors(x, axis)
    n = v.shape[-1]
    c, _ = torch.sort(v, dim=-1)
    l1 = c.sum(-1, keepdim=True)
    k = torch.arange(1, n + 1, dtype=v.dtype, device=v.device)
    w = (n - k + 0.5) / n
    alive = l1 > 0
    g = 1 - 2 * (c / torch.where(alive, l1, torch.ones_like(l1)) * w).sum(-1, keepdim=True)
    return torch.where(alive, g, torch.ones_like(g)).squeeze(-1)
