"""Perplexity-based activation sparsity (DESIGN §1), as pure differentiable tensor maths.

For a non-negative vector ``a`` of length ``N`` with ``S = Σ a_i``::

    p_i = a_i / S,   H = -Σ p_i ln p_i  (0 ln 0 = 0),   PP = exp(H) ∈ [1, N]
    s   = 1 - (PP - 1) / (N - 1)        ∈ [0, 1]   (0 dense/uniform, 1 one unit active)

Signed inputs are measured on ``|a|`` (the functions take the absolute value; for ReLU
outputs that changes nothing). Edge cases: a dead vector (``S = 0``) has ``PP = 1`` and
sparsity 1 (callers count it separately with :func:`dead_mask`); ``N = 1`` has no sparsity
(NaN and one warning); any vector holding NaN/Inf gives NaN (count it with
:func:`nonfinite_mask`, never average it in).

Gradients are finite everywhere, also at exact zeros: ``x ln x`` is computed with the
"double where" so the unused ``-inf`` branch never reaches autograd.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "Axis",
    "AXES",
    "as_vectors",
    "dead_mask",
    "entropy",
    "nonfinite_mask",
    "perplexity",
    "perplexity_sparsity",
    "sparsity_from_perplexity",
    "xlogx",
]

Axis = Literal["spatial", "channel", "sample"]
AXES: tuple[str, ...] = ("spatial", "channel", "sample")


def _check_float(x: object, what: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{what} must be a floating-point tensor (float16/32/64, bfloat16), got dtype {x.dtype}; "
            "convert with .float()"
        )
    return x


def xlogx(x: Tensor) -> Tensor:
    """``x · ln x`` with ``0 ln 0 = 0`` and a finite (zero) gradient at ``x = 0``.

    >>> xlogx(torch.tensor([0.0, 1.0, math.e]))
    tensor([0.0000, 0.0000, 2.7183])
    """
    positive = x > 0
    safe = torch.where(positive, x, torch.ones_like(x))
    return torch.where(positive, safe * torch.log(safe), torch.zeros_like(x))


def entropy(a: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) of ``|a|`` normalised along ``dim``; 0 for a dead (all-zero) vector.

    >>> round(entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])).item(), 4)  # ln 2
    0.6931
    """
    a = _check_float(a, "a").abs()
    s = a.sum(dim=dim, keepdim=True)
    alive = s > 0
    p = a / torch.where(alive, s, torch.ones_like(s))
    return -xlogx(p).sum(dim=dim)


def perplexity(a: Tensor, dim: int = -1) -> Tensor:
    """Perplexity ``exp(H)`` of ``|a|`` normalised along ``dim``: the effective number of active units.

    The result has ``dim`` removed; it lies in ``[1, N]``. A dead vector gives 1, a vector with
    NaN/Inf gives NaN.

    >>> perplexity(torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]]))
    tensor([4., 1.])
    """
    a = _check_float(a, "a")
    bad = ~torch.isfinite(a).all(dim=dim)
    # Compute on a sanitised copy so NaN/Inf never reach the gradient of the finite vectors.
    clean = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    pp = torch.exp(entropy(clean, dim=dim))
    return torch.where(bad, torch.full_like(pp, float("nan")), pp)


def sparsity_from_perplexity(pp: Tensor, n: int | Tensor) -> Tensor:
    """Map a perplexity in ``[1, n]`` to sparsity ``1 - (pp - 1)/(n - 1)`` in ``[0, 1]``.

    ``n = 1`` has no sparsity: NaN (callers warn and skip).

    >>> sparsity_from_perplexity(torch.tensor([1.0, 4.0, 2.5]), 4)
    tensor([1.0000, 0.0000, 0.5000])
    """
    n_t = torch.as_tensor(n, dtype=pp.dtype, device=pp.device)
    denom = torch.where(n_t > 1, n_t - 1, torch.ones_like(n_t))
    # Clamp: rounding puts a uniform vector's PP a few ulp above n (s ≈ -3e-7 in float32), which
    # would fall outside fixed [0, 1] histogram bins. The gradient is zero at both ends anyway
    # (uniform is a stationary point; one-hot/dead vectors have zero gradient). NaN stays NaN.
    s = (1.0 - (pp - 1.0) / denom).clamp(0.0, 1.0)
    return torch.where(n_t > 1, s, torch.full_like(s, float("nan")))


def as_vectors(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """Arrange activations so that each vector of the chosen axis lies along the last dim.

    ``x`` is ``(N, C, H, W)`` (any number of trailing spatial dims) or ``(N, C)``; values are
    taken as ``|x|``.

    ============  =============================================  ===================
    axis          vector                                          result shape
    ============  =============================================  ===================
    ``spatial``   one channel's spatial map of one sample         ``(N, C, H·W)``
    ``channel``   per-channel spatial means of one sample         ``(N, C)``
    ``sample``    one channel's spatial means over the samples    ``(C, N)``
    ============  =============================================  ===================

    >>> as_vectors(torch.ones(2, 3, 4, 5), "spatial").shape
    torch.Size([2, 3, 20])
    >>> as_vectors(torch.ones(2, 3, 4, 5), "sample").shape
    torch.Size([3, 2])
    """
    x = _check_float(x)
    if x.dim() < 2:
        raise ValueError(f"expected activations of shape (N, C, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    x = x.abs()
    if axis == "spatial":
        if x.dim() < 3:
            raise ValueError(
                f"axis='spatial' needs spatial dims, i.e. a (N, C, H, W) tensor; got shape {tuple(x.shape)} "
                "(for (N, C) features use axis='channel' or 'sample')"
            )
        return x.flatten(2)
    means = x.flatten(2).mean(-1) if x.dim() > 2 else x
    return means if axis == "channel" else means.transpose(0, 1)


def dead_mask(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """True where the axis' vector is all zero (``S = 0``): sparsity 1, counted as dead.

    >>> dead_mask(torch.tensor([[[[0.0, 0.0]], [[0.0, 1.0]]]]))
    tensor([[ True, False]])
    """
    v = as_vectors(x, axis)
    return (v == 0).all(dim=-1)


def nonfinite_mask(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """True where the axis' vector holds a NaN or Inf (excluded from every statistic).

    >>> nonfinite_mask(torch.tensor([[1.0, float("nan")], [1.0, 2.0]]), "channel")
    tensor([ True, False])
    """
    v = as_vectors(x, axis)
    return ~torch.isfinite(v).all(dim=-1)


_warned_n1: set[tuple] = set()


def perplexity_sparsity(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """Perplexity sparsity of activations ``x`` along ``axis`` (DESIGN §1).

    ``x`` is ``(N, C, H, W)`` or ``(N, C)``. Returns ``(N, C)`` for ``spatial``, ``(N,)`` for
    ``channel`` and ``(C,)`` for ``sample``: 0 dense, 1 a single active unit (or dead).
    Vectors with NaN/Inf give NaN; vectors of length 1 give NaN with a warning.

    >>> x = torch.zeros(1, 2, 2, 2)
    >>> x[0, 0] = 1.0          # channel 0: uniform map -> sparsity 0
    >>> x[0, 1, 0, 0] = 3.0    # channel 1: one active pixel -> sparsity 1
    >>> perplexity_sparsity(x)
    tensor([[0., 1.]])
    >>> perplexity_sparsity(x, axis="channel")  # channel means (1, 0.75): PP close to 2
    tensor([0.0204])
    """
    v = as_vectors(x, axis)
    n = v.shape[-1]
    if n == 1:
        key = (axis, tuple(x.shape[1:]))
        if key not in _warned_n1:
            _warned_n1.add(key)
            warnings.warn(
                f"perplexity_sparsity: axis={axis!r} vectors have length 1 for input shape {tuple(x.shape)}; "
                "sparsity is undefined there and is returned as NaN (skipped by estimators and the penalty)",
                RuntimeWarning,
                stacklevel=2,
            )
    return sparsity_from_perplexity(perplexity(v, dim=-1), n)


def _reset_warnings() -> None:
    """Forget which one-time warnings were shown (for tests)."""
    _warned_n1.clear()


# Keep ``math`` referenced for the doctest of xlogx.
_ = math
