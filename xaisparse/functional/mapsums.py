"""The one pass over an activation tensor: per-map sums ``S = Σ|a|`` and ``T = Σ|a| ln|a|``.

Everything the monitor and the penalty measure on the spatial axis follows from these two
sums per map (DESIGN §1: ``H = ln S - T/S``), and so do the channel and sample axes (the map
means are ``S / L``). Reading an activation is the expensive part (one ``log`` per element);
the rest works on ``(N, C)``-sized tensors. So the read is done once, in a few fused passes
(``_map_sums``), and shared: the monitor folds the sums of many batches at once
(:mod:`xaisparse.functional.streaming`), the penalty differentiates through them with a
hand-derived backward (``_MapSums``), and when both watch the same forward the monitor
takes the penalty's sums instead of reading the activation again.

With ``b = |a|``: ``∂S/∂a_i = sgn(a_i)`` and ``∂T/∂a_i = sgn(a_i) (ln b_i + 1)``, so the
gradient of anything computed from ``(S, T)`` is ``sgn(a) · (g_S + g_T + g_T ln b)`` per map:
one log pass, finite everywhere (``sgn(0) = 0``: the gradient at an exact zero is 0, as in
:func:`~xaisparse.functional.perplexity`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__: list[str] = []


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision activations (half overflows on map sums), else the dtype itself."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _spatial_length(x: Tensor) -> int:
    return math.prod(x.shape[2:])


def _map_sums(x: Tensor, *, nonnegative: bool = False) -> tuple[Tensor, Tensor | None]:
    """``(S, T)`` per map of activations ``x`` of shape ``(N, C, ...)``, each ``(N, C, 1, ...)``.

    ``S = Σ|x|`` and ``T = Σ|x| ln|x|`` (``0 ln 0 = 0``) over each map, in the working dtype
    (float32 for half precision, else ``x``'s). ``T`` is None when the maps have no spatial
    extent (``(N, C)`` inputs and 1×1 maps: only the map means ``S / L`` are used); then ``S``
    has ``x``'s shape. A map holding NaN/Inf has a non-finite ``S``. ``x`` is read, never
    written, and no autograd graph is recorded by the callers (a ``no_grad`` block, or an
    autograd Function's forward).

    ``nonnegative=True`` promises ``x >= 0`` (NaN allowed): the outputs of ``nn.ReLU`` and
    ``nn.ReLU6``. Then ``|x|`` is not formed: three ops (sum, ``xlogy(x, x)``, sum), one
    activation-sized buffer; otherwise four ops and two buffers. ``torch.xlogy`` gives
    ``x ln x`` in one pass with ``0 ln 0 = 0`` (the compiled path, which inductor fuses into one
    loop, takes ``ln`` on ``max(|x|, tiny)`` instead: equal wherever ``x`` is 0 or normal).
    """
    work = _work_dtype(x.dtype)
    own = x.dtype != work
    if own:
        x = x.to(work)  # a copy of our own
    if x.dim() <= 2 or _spatial_length(x) <= 1:
        total = x.abs() if x.dim() <= 2 else x.abs().sum(tuple(range(2, x.dim())), keepdim=True)
        return total, None
    dims = tuple(range(2, x.dim()))
    if torch.compiler.is_compiling():  # traced: out-of-place ops, which inductor fuses into one loop
        b = x if nonnegative else x.abs()
        tiny = torch.finfo(work).tiny
        return b.sum(dims, keepdim=True), (b.clamp_min(tiny).log() * b).sum(dims, keepdim=True)
    if nonnegative:
        return x.sum(dims, keepdim=True), torch.xlogy(x, x).sum(dims, keepdim=True)
    b = x.abs_() if own else x.abs()
    return b.sum(dims, keepdim=True), torch.xlogy(b, b).sum(dims, keepdim=True)


def _map_sums_reference(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(S, T)`` per map written with differentiable ops (the double-where ``x ln x``).

    The autograd reference of :class:`_MapSums` (and its double backward); slow.
    """
    x = x.to(_work_dtype(x.dtype))
    dims = tuple(range(2, x.dim()))
    b = x.abs()
    positive = b > 0
    safe = torch.where(positive, b, torch.ones_like(b))
    blogb = torch.where(positive, safe * torch.log(safe), torch.zeros_like(b))
    return b.sum(dims, keepdim=True), blogb.sum(dims, keepdim=True)


class _MapSums(torch.autograd.Function):
    """:func:`_map_sums` with a closed-form backward: ``sgn(a) · (g_S + g_T + g_T ln max(|a|, tiny))``.

    ``apply(x, nonnegative, given)``: ``given`` is ``(S, T)`` already computed from ``x`` by
    :func:`_map_sums` (the monitor's, in the same forward): then ``x`` is not read again in the
    forward. Only ``x`` is saved for the backward (it is alive anyway: the layer's own backward
    needs it), so the in-place guard of the penalty works as for any op that saves its input.
    Half-precision ``x``: sums and gradients computed in float32, the gradient returned in
    ``x``'s dtype. Under ``create_graph=True`` the backward differentiates
    :func:`_map_sums_reference` instead, so higher derivatives work.
    """

    @staticmethod
    def forward(ctx, x: Tensor, nonnegative: bool, given: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
        if given is not None:  # fresh tensor objects: the outputs get this node as grad_fn, not the giver's
            total, t = given[0].detach(), given[1].detach()
        else:
            total, maybe_t = _map_sums(x, nonnegative=nonnegative)
            if maybe_t is None:
                raise ValueError(
                    f"_MapSums needs maps with a spatial extent, got activations of shape {tuple(x.shape)}"
                )
            t = maybe_t
        ctx.save_for_backward(x)
        ctx.nonnegative = nonnegative
        return total, t

    @staticmethod
    def backward(ctx, g_total: Tensor, g_t: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: differentiate the formula itself
            total, t = _map_sums_reference(x)
            grad = torch.autograd.grad((total, t), x, (g_total, g_t), create_graph=True)[0]
            return grad, None, None
        work = _work_dtype(x.dtype)
        xw = x if x.dtype == work else x.to(work)
        tiny = torch.finfo(work).tiny
        log_b = (xw.clamp_min(tiny) if ctx.nonnegative else xw.abs().clamp_min_(tiny)).log_()
        grad = torch.addcmul(g_total + g_t, log_b, g_t, out=log_b).mul_(xw.sgn())  # in place in log_b
        return (grad if x.dtype == work else grad.to(x.dtype)), None, None


def _sparsity_from_sums(
    total: Tensor, t: Tensor, lengths_m1: Tensor, alive: Tensor, one: Tensor | None = None
) -> Tensor:
    """Sparsity ``1 - (exp(H) - 1)/(L - 1)`` in ``[0, 1]`` from the sums, ``H = ln S - T/S``.

    ``alive``: where ``S`` is finite and positive; elsewhere ``H = 0`` (a dead vector: sparsity
    exactly 1; callers mask the non-finite ones), computed on safe values so that no NaN or Inf
    enters the forward (nor, through ``0 · NaN``, a backward). ``lengths_m1``: ``L - 1``
    (broadcast against the sums; ``L >= 2``). ``expm1`` keeps sparse vectors (``H`` near 0)
    accurate. Differentiable; the callers' small-tensor step (``(N, C)``-sized). ``one``: a 0-d
    tensor 1 of the sums' dtype, when the caller keeps one (an op less).
    """
    safe = torch.where(alive, total, 1.0)
    h = torch.addcdiv(safe.log(), torch.where(alive, t, 0.0), safe, value=-1.0)  # ln S - T/S
    if one is None:
        one = torch.ones((), dtype=h.dtype, device=h.device)
    return torch.addcdiv(one, torch.expm1(h), lengths_m1, value=-1.0).clamp(0.0, 1.0)  # 1 - (PP - 1)/(L - 1)
