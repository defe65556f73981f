"""Perplexity-based activation sparsity (docs/measure.md), as pure differentiable tensor maths.

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
from typing import Literal, cast

import torch
from torch import Tensor

__all__ = [
    "AXES",
    "Axis",
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

    A vector holding NaN gives NaN.

    >>> round(entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])).item(), 4)  # ln 2
    0.6931
    """
    a = _check_float(a, "a").abs()
    return _entropy_terms(a, dim)[0]


def _entropy_terms(
    b: Tensor, dim: int = -1, *, total: Tensor | None = None, inplace: bool = False, of: Tensor | None = None
) -> tuple[Tensor, Tensor | None]:
    """``(H, ln p)`` of a **non-negative** ``b`` along ``dim``: the one place entropy is computed from a vector.

    ``p = b / S`` with ``S = Σ b`` (a dead vector, ``S = 0``, keeps ``p = 0`` and gets ``H = 0``);
    ``H = -Σ p ln p`` with ``0 ln 0 = 0``. ``ln p`` is taken on ``max(p, floor)``
    (:func:`_log_floor`): exact at ``p = 0`` (``p · ln p`` is 0 either way) and for every normal
    ``p``, and it keeps ``log`` off its slow path at zero. Differentiable, every gradient finite.
    ``total``: the sums ``b.sum(dim, keepdim=True)`` when the caller has them already.

    Without autograd (custom forwards, estimators) the work can reuse ``b``'s memory:
    ``inplace=True`` overwrites ``b`` with ``p ln p`` (one more buffer, for ``ln p``);
    ``of=x`` (``b`` is ``|x|``, viewable as ``x.shape``) also overwrites ``b``, with ``ln p`` and
    then ``|x · ln p| = -|x| ln p``, so that no second activation-sized buffer is allocated (on
    CPU a fresh large buffer costs page faults, often more than the arithmetic); then ``ln p``
    is not returned.
    """
    if total is None:
        total = b.sum(dim, keepdim=True)
    denom = torch.where(total > 0, total, 1.0)
    floor = _log_floor(b.dtype)
    if of is not None:
        b.div_(denom).clamp_(min=floor).log_()  # ln p, in place
        b.view(of.shape).mul_(of).abs_()  # |x · ln p| = -|x| ln p  (ln p <= 0)
        return b.sum(dim) / denom.squeeze(dim), None
    if inplace:
        p = b.div_(denom)
        log_p = p.clamp(min=floor).log_()
        plogp = p.mul_(log_p)
    else:
        p = b / denom
        log_p = p.clamp(min=floor).log()
        plogp = p * log_p
    return -plogp.sum(dim), log_p


def _entropy_from_sums(total: Tensor, t: Tensor) -> Tensor:
    """``H = ln S - T/S`` from the mergeable sums ``S = Σ a`` and ``T = Σ a ln a`` (0 where ``S = 0``).

    The one place of the identity that makes the sample axis streamable (docs/measure.md).

    >>> a = torch.tensor([1.0, 3.0], dtype=torch.float64)
    >>> bool(torch.isclose(_entropy_from_sums(a.sum(), xlogx(a).sum()), entropy(a)))
    True
    """
    alive = total > 0
    safe = torch.where(alive, total, 1.0)
    return torch.where(alive, torch.log(safe) - t / safe, 0.0)


def perplexity(a: Tensor, dim: int = -1) -> Tensor:
    """Perplexity ``exp(H)`` of ``|a|`` normalised along ``dim``: the effective number of active units.

    The result has ``dim`` removed; it lies in ``[1, N]``. A dead vector gives 1, a vector with
    NaN/Inf gives NaN.

    >>> perplexity(torch.tensor([[1.0, 1.0, 1.0, 1.0], [5.0, 0.0, 0.0, 0.0]]))
    tensor([4., 1.])
    """
    a = _check_float(a, "a")
    if a.dim() == 0 or not -a.dim() <= dim < a.dim() or a.shape[dim] == 0:
        return _perplexity_autograd(a, dim)  # 0-d, bad dim, empty vectors: the plain formula (and its errors)
    return _Perplexity.apply(a.movedim(dim, -1))


def _perplexity_autograd(a: Tensor, dim: int) -> Tensor:
    """The definition written with autograd ops; :class:`_Perplexity` computes the same, faster."""
    bad = ~torch.isfinite(a).all(dim=dim)
    # Compute on a sanitised copy so NaN/Inf never reach the gradient of the finite vectors.
    clean = torch.where(torch.isfinite(a), a, torch.zeros_like(a))
    pp = torch.exp(entropy(clean, dim=dim))
    return torch.where(bad, torch.full_like(pp, float("nan")), pp)


class _Perplexity(torch.autograd.Function):
    """``exp(H)`` of ``|a|`` along the last dim, with a closed-form backward.

    The same values and gradients as :func:`_perplexity_autograd`, in a few memory passes
    instead of ~30 (it runs on every selected layer of every training step of the penalty):
    no three-tensor ``where`` over the big tensor, one saved activation-sized tensor (``ln p``).

    With ``b = |a|``, ``S = Σ b``, ``p = b / S`` and ``H = -Σ p ln p``:
    ``∂PP/∂a_i = PP · sgn(a_i) · (-ln p_i - H) / S`` on live finite vectors; 0 on dead vectors
    (all zero) and on vectors holding NaN/Inf (their PP is NaN). ``sgn(0) = 0`` gives the
    finite zero gradient at exact zeros; ``ln p`` is taken on ``max(p, floor)``
    (:func:`_log_floor`), which changes nothing at ``p = 0`` and only subnormal ``p`` otherwise.
    Under ``create_graph=True`` the backward differentiates :func:`_perplexity_autograd`
    instead, so higher derivatives work as before.
    """

    @staticmethod
    def forward(ctx, a: Tensor) -> Tensor:
        b = a.abs()
        ok = torch.isfinite(b.amax(-1))  # amax propagates NaN/Inf: the vector is finite iff ok
        b.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)  # vectors with NaN/Inf: finite garbage, masked
        total = b.sum(-1, keepdim=True)
        h, log_p = _entropy_terms(b, -1, total=total, inplace=True)
        total = total.squeeze(-1)
        alive = ok & (total > 0)
        pp = torch.where(ok, torch.exp(h), float("nan"))
        ctx.save_for_backward(a, cast(Tensor, log_p), h, pp, total, alive)
        return pp

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        a, log_p, h, pp, total, alive = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True (double backward): differentiate the formula
            return torch.autograd.grad(_perplexity_autograd(a, -1), a, grad, create_graph=True)[0]
        coef = torch.where(alive, grad * pp / torch.where(alive, total, torch.ones_like(total)), 0.0)
        h = torch.where(alive, h, 0.0)
        return log_p.add(h.unsqueeze(-1)).mul_(-coef.unsqueeze(-1)).mul_(torch.sgn(a))


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


def _log_floor(dtype: torch.dtype) -> float:
    """Floor under ``p`` before ``ln p`` in the fast paths (``p ln p`` is exactly 0 at ``p = 0`` anyway).

    float16: its smallest subnormal, so every representable ``p`` keeps its exact log. Other
    dtypes: the smallest normal number, so that flush-to-zero modes (``torch.set_flush_denormal``)
    cannot turn the floor into ``ln 0``; only ``p < 1.2e-38`` is affected, by less than 1e-36.
    """
    return 2.0**-24 if dtype == torch.float16 else torch.finfo(dtype).tiny


def _sparsity_of_length(pp: Tensor, n: int | Tensor, *, inplace: bool = False) -> Tensor:
    """:func:`sparsity_from_perplexity` for lengths ``n >= 2`` (an int, or one per trailing column) in a
    few ops instead of ~12 (hot path); ``inplace=True`` overwrites ``pp``. Bit-identical to
    ``(1 - (pp - 1) / (n - 1)).clamp(0, 1)``.
    """
    q = pp.sub_(1.0) if inplace else pp - 1.0
    return q.div_(n - 1).neg_().add_(1.0).clamp_(0.0, 1.0)


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
    return _as_vectors(x, axis, absolute=True)


def _as_vectors(x: Tensor, axis: Axis, *, absolute: bool) -> Tensor:
    """:func:`as_vectors`; ``absolute=False`` leaves ``spatial`` vectors signed (the caller takes ``|·|``)."""
    x = _check_float(x)
    if x.dim() < 2:
        raise ValueError(f"expected activations of shape (N, C, ...) with at least 2 dims, got shape {tuple(x.shape)}")
    if axis not in AXES:
        raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
    if absolute or axis != "spatial":
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


def perplexity_sparsity(x: Tensor, axis: Axis = "spatial") -> Tensor:
    """Perplexity sparsity of activations ``x`` along ``axis`` (docs/measure.md).

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
    v = _as_vectors(x, axis, absolute=False)  # perplexity() takes |v| itself
    n = v.shape[-1]
    if n == 1:
        # Once per input shape and call site: the warnings module's own registry (default filter)
        # remembers what it has shown; there is no state of ours to reset.
        warnings.warn(
            f"perplexity_sparsity: axis={axis!r} vectors have length 1 for input shape {tuple(x.shape)}; "
            "sparsity is undefined there and is returned as NaN (skipped by estimators and the penalty)",
            RuntimeWarning,
            stacklevel=2,
        )
    return sparsity_from_perplexity(perplexity(v, dim=-1), n)


# Keep ``math`` referenced for the doctest of xlogx.
_ = math
