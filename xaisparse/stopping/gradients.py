"""Label-free stopping signals from the gradients of training samples.

Both read a probe of **training** samples (inputs and their training labels: never a
held-out label) at the current weights, in eval mode (dropout off, batch norm on its running
statistics; every module's training flag is restored afterwards):

* :func:`eb_criterion`: the evidence-based criterion of Mahsereci, Balles, Lassner & Hennig,
  *Early Stopping without a Validation Set* (2017, arXiv 1703.09580, eq. 7). From the
  per-sample gradients ``g_b`` of ``B`` samples (``torch.func``: ``vmap`` over ``grad``), with
  mean ``ĝ`` and per-parameter sample variance ``Σ̂_k = Σ_b (g_bk − ĝ_k)² / (B − 1)``:
  ``EB = 1 − (B / D) Σ_k ĝ_k² / Σ̂_k`` over the ``D`` parameters with ``Σ̂_k > 0``. While the
  mean gradient stands out of the mini-batch noise it is negative; it approaches 0 (and
  crosses it by chance) when the gradient is no larger than the noise explains: the paper
  stops when ``EB > 0``. Its derivation assumes plain SGD (no momentum, no adaptive step): with
  Adam the criterion is computed the same way but its stopping argument does not hold as stated.
* :func:`gradient_disparity`: Forouzesh & Thiran, *Disparity Between Batches as a Signal for
  Early Stopping* (2021, arXiv 2107.06665): the ℓ2 distance between the gradient vectors of
  two training mini-batches, averaged over every pair of ``s`` mini-batches. It grows when
  the network fits each mini-batch's particulars (memorisation); the paper stops when it has
  not decreased for ``patience`` epochs (:func:`~xaisparse.stopping.rules.minimum_stop`).

:func:`gradient_statistics` computes what both need from one per-sample-gradient pass.

>>> import math, torch
>>> from torch import nn
>>> torch.manual_seed(0) and None
>>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
>>> x, y = torch.randn(64, 1, 2, 2), torch.randint(0, 3, (64,))
>>> stats = gradient_statistics(net, x, y, batch_size=16)
>>> stats.samples, stats.batches, stats.parameters, math.isfinite(stats.eb_criterion)
(64, 4, 15, True)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .._validation import check_int

__all__ = ["GradientStatistics", "eb_criterion", "gradient_disparity", "gradient_statistics"]

LossFn = Callable[..., Tensor]


@dataclass(frozen=True)
class GradientStatistics:
    """What one pass of per-sample gradients gives: the EB-criterion and the gradient disparity.

    ``samples``: ``B`` of the EB-criterion; ``batches``: the mini-batches the disparity compares; ``parameters``:
    ``D``, the parameter entries with a positive gradient variance (entries whose gradient is
    exactly 0 for every sample, e.g. of dead units, carry no signal and are left out);
    ``mean_norm``: ``‖ĝ‖₂``.
    """

    samples: int
    batches: int
    parameters: int
    eb_criterion: float
    gradient_disparity: float
    mean_norm: float


def _per_sample_gradient_chunks(
    model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn, chunk: int
) -> list[Tensor]:
    """Per-sample gradients, flattened over all trainable parameters: one ``(chunk, D)`` tensor per chunk."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no trainable parameter (requires_grad=True)")
    buffers = {n: b.detach() for n, b in model.named_buffers()}

    def loss_one(p: dict[str, Tensor], b: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = functional_call(model, (p, b), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    per_sample = vmap(grad(loss_one), in_dims=(None, None, 0, 0))
    out = []
    for start in range(0, len(inputs), chunk):
        g = per_sample(params, buffers, inputs[start : start + chunk], targets[start : start + chunk])
        out.append(torch.cat([g[n].reshape(g[n].shape[0], -1) for n in params], dim=1).to(torch.float64))
    return out


def _batch_gradient(model: nn.Module, inputs: Tensor, targets: Tensor, loss_fn: LossFn) -> Tensor:
    """The gradient of the mean loss over one mini-batch, flattened (``.grad`` untouched)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss_fn(model(inputs), targets), params, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(params, grads)]).to(
        torch.float64
    )


def gradient_statistics(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    batch_size: int = 32,
    eb_samples: int | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> GradientStatistics:
    """EB-criterion and gradient disparity on these training samples.

    The disparity splits the samples in order into mini-batches of ``batch_size`` (a last,
    shorter one is left out) and averages the ℓ2 distance between their gradients (of the mean
    loss over each mini-batch) over all pairs. The EB-criterion uses the per-sample gradients
    of the first ``eb_samples`` samples (default: all of them; ``torch.func`` ``vmap`` over
    ``grad``, the costly part: about 3× a training epoch's work per 100 samples on a
    ResNet-18). Runs the model in eval mode and restores every module's training flag; the
    model's weights and ``.grad`` are not touched.
    """
    from ..attribution._inputs import modes

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(inputs, Tensor) or not isinstance(targets, Tensor):
        raise TypeError("inputs and targets must be tensors")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs and targets must have the same length, got {len(inputs)} and {len(targets)}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if len(inputs) < 2 * batch_size:
        raise ValueError(
            f"need at least two mini-batches of {batch_size} samples ({2 * batch_size}), got {len(inputs)} samples"
        )
    n = len(inputs) if eb_samples is None else check_int("eb_samples", eb_samples, minimum=2, maximum=len(inputs))
    with modes([model], True, warn=False):
        chunks = _per_sample_gradient_chunks(model, inputs[:n], targets[:n], loss_fn, batch_size)
        full = [
            _batch_gradient(model, inputs[i : i + batch_size], targets[i : i + batch_size], loss_fn)
            for i in range(0, len(inputs) - batch_size + 1, batch_size)
        ]
    total = torch.stack([c.sum(0) for c in chunks]).sum(0)
    squares = torch.stack([(c * c).sum(0) for c in chunks]).sum(0)
    mean = total / n
    variance = (squares - n * mean * mean).clamp_min(0.0) / (n - 1)
    keep = variance > 0
    d = int(keep.sum())
    eb = 1.0 - n * float((mean[keep] ** 2 / variance[keep]).mean()) if d else math.nan
    pairs = list(itertools.combinations(range(len(full)), 2))
    disparity = float(sum(torch.linalg.vector_norm(full[i] - full[j]) for i, j in pairs) / len(pairs))
    return GradientStatistics(
        samples=n,
        batches=len(full),
        parameters=d,
        eb_criterion=eb,
        gradient_disparity=disparity,
        mean_norm=float(torch.linalg.vector_norm(mean)),
    )


def eb_criterion(
    model: nn.Module, inputs: Tensor, targets: Tensor, *, loss_fn: LossFn = nn.functional.cross_entropy
) -> float:
    """The EB-criterion (Mahsereci et al. 2017, eq. 7) on these training samples; > 0 means "stop".

    See the module docstring for the formula and its plain-SGD assumption.
    """
    n = len(inputs)
    return gradient_statistics(model, inputs, targets, batch_size=max(1, n // 2), loss_fn=loss_fn).eb_criterion


def gradient_disparity(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    batch_size: int = 32,
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> float:
    """Mean pairwise ℓ2 distance between the gradients of the mini-batches of ``batch_size`` (Forouzesh & Thiran 2021)."""
    return gradient_statistics(model, inputs, targets, batch_size=batch_size, loss_fn=loss_fn).gradient_disparity
