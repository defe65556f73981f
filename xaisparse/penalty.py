"""The differentiable sparsity penalty: ``loss = task_loss + penalty()``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ._errors import UnknownLayerError, closest
from .functional.perplexity import AXES, Axis, perplexity_sparsity
from .recording import ActivationRecorder, LayerSelector, call_site_base

__all__ = ["SparsityPenalty"]

_HALF = (torch.float16, torch.bfloat16)


class _InplaceGuard:
    """Keeps the penalty's autograd graph valid when the model modifies an activation in place later.

    The sparsity's backward needs the activation it was computed from. If the model then writes
    into that tensor (EfficientNetV2's residual ``result += input`` on a block's SiLU output),
    ``backward()`` fails ("modified by an inplace operation"). A copy taken at hook time cannot
    be invalidated, but costs one activation-sized tensor per layer and step; so copies are
    made only where needed, learnt from the version counter (bumped by every in-place write):

    * the first forward of a call site is always computed on a copy;
    * when its terms are settled (``penalty()`` or the next forward), a site whose tensor was
      written to is copied from then on; one that was not is used as it is from then on;
    * a trusted site that is written to later (data-dependent code) has an invalid term: it is
      left out of that step with a warning, and copied from then on.

    So ``backward()`` never fails and never uses modified values; a model without such writes
    pays one copy per site in its first step only.
    """

    def __init__(self) -> None:
        self.copied: set[str] = set()  # sites known to be written to after the hook: always copied
        self.trusted: set[str] = set()  # sites seen not to be written to: used as they are
        self._watch: dict[str, tuple[Tensor, int, bool]] = {}

    def protect(self, site: str, x: Tensor) -> Tensor:
        copy = site not in self.trusted
        self._watch[site] = (x, x._version, copy)
        return x.clone() if copy else x

    def settle(self) -> set[str]:
        """Learn from the forward just finished; the sites whose term is invalid (not copied, written to)."""
        invalid = set()
        for site, (x, version, copied) in self._watch.items():
            if x._version != version:
                self.copied.add(site)
                self.trusted.discard(site)
                if not copied:
                    invalid.add(site)
            elif site not in self.copied:
                self.trusted.add(site)
        self._watch.clear()
        return invalid


class SparsityPenalty(nn.Module):
    """``λ · Σ_l w_l · mean s_l(a)`` over the selected layers' activations of the current forward.

    Built on :func:`~xaisparse.functional.perplexity_sparsity` (the same code as the measure)
    and fed by an :class:`~xaisparse.recording.ActivationRecorder`: during each forward with
    gradients enabled, every selected layer's mean sparsity is computed on the live tensor and
    kept with its autograd graph until :meth:`forward` (calling the module) consumes it. A new
    forward replaces the previous one's terms, so the penalty always belongs to the latest
    forward; forwards under ``torch.no_grad()`` are ignored. Non-finite maps are left out of the
    mean; layers whose maps are 1×1 fall back to the ``channel`` axis (one warning).

    The layers are those of :class:`~xaisparse.recording.ActivationRecorder` (default: the
    conv-block activations, or position-wise and functional ones for models without such
    modules). Activations later modified in place by the model (a residual ``+=``) never break
    ``backward()``: see ``_InplaceGuard`` (one copy per layer in the first step; every step
    only for the layers that are written to). Half-precision activations (``torch.autocast``)
    are measured in float32, like the monitor does.

    A positive ``weight`` penalises sparsity (favours dense activations, the paper's
    regulariser); a negative one rewards it. ``layer_weights`` maps module names (or call-site
    names such as ``"layer1.0.relu#2"``) to ``w_l``; unnamed layers get 1.

    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    >>> penalty = SparsityPenalty(model, weight=0.1)
    >>> with penalty:
    ...     out = model(torch.randn(8, 1, 8, 8))
    ...     loss = nn.functional.cross_entropy(out, torch.zeros(8, dtype=torch.long)) + penalty()
    >>> loss.backward()
    >>> bool(torch.isfinite(model[0].weight.grad).all())
    True
    """

    recorder: ActivationRecorder  # a plain attribute (set in __init__), not a submodule

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        weight: float = 1e-2,
        layer_weights: Mapping[str, float] | None = None,
        axis: Axis = "spatial",
    ) -> None:
        super().__init__()
        if not isinstance(weight, (int, float)) or isinstance(weight, bool):
            raise TypeError(f"weight must be a number (λ), got {type(weight).__name__}")
        if axis not in AXES:
            raise ValueError(f"axis must be one of {AXES}, got {axis!r}")
        self.weight = float(weight)
        self.axis: Axis = axis
        # A plain attribute, not a submodule: the penalty must not adopt the user's model.
        self.__dict__["recorder"] = ActivationRecorder(model, layers, callback=self._collect)
        known = set(self.recorder.modules) | set(self.recorder.functional_sites)
        weights = dict(layer_weights or {})
        for name, w in weights.items():
            if name not in known and call_site_base(name) not in known:
                raise UnknownLayerError(
                    f"layer_weights names {name!r}, which is not a selected layer; selected layers are "
                    f"{sorted(known)[:12]} (closest: {closest(name, known)})"
                )
            if not isinstance(w, (int, float)) or isinstance(w, bool):
                raise TypeError(f"layer_weights[{name!r}] must be a number, got {type(w).__name__}")
        self.layer_weights = {k: float(v) for k, v in weights.items()}
        self._terms: dict[str, Tensor] = {}
        self._fed = False  # a forward with gradients reached a selected layer since the last penalty()
        self._no_grad_forward = False  # the latest forward through the selected layers ran without gradients
        self._warned: set[str] = set()
        self._guard = _InplaceGuard()

    # lifecycle: delegate to the recorder
    def attach(self) -> SparsityPenalty:
        self.recorder.attach()
        return self

    def detach(self) -> None:
        self.recorder.detach()
        self._guard.settle()
        self._terms.clear()
        self._fed = self._no_grad_forward = False

    def __enter__(self) -> SparsityPenalty:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _weight_of(self, name: str) -> float:
        return self.layer_weights.get(name, self.layer_weights.get(call_site_base(name), 1.0))

    def _collect(self, name: str, x: Tensor) -> None:
        if not torch.is_grad_enabled():
            self._no_grad_forward = True
            return
        self._no_grad_forward = False
        if name in self._terms:  # a new forward began: drop the previous one's terms
            self._guard.settle()
            self._terms.clear()
        self._fed = True
        w = self._weight_of(name)
        if w == 0.0:
            return
        axis: Axis = self.axis
        if axis == "spatial" and (x.dim() < 3 or x[0, 0].numel() == 1):
            axis = "channel"
            self._warn_once(
                name, f"layer {name!r} has no spatial extent {tuple(x.shape)}: penalising its channel-axis sparsity"
            )
        if (axis == "channel" and x.shape[1] == 1) or (axis == "sample" and x.shape[0] == 1):
            self._warn_once(name + "/n1", f"layer {name!r}: vectors of length 1 on axis {axis!r}; skipped")
            return
        # A tensor of our own: float32 for half precision (a copy anyway), else guarded (see _InplaceGuard).
        x = x.float() if x.dtype in _HALF else self._guard.protect(name, x)
        s = perplexity_sparsity(x, axis)
        ok = torch.isfinite(s)
        s = torch.where(ok, s, torch.zeros_like(s))
        self._terms[name] = w * s.sum() / ok.sum().clamp(min=1)

    @property
    def terms(self) -> dict[str, Tensor]:
        """The weighted mean sparsity of each layer of the latest forward (before ``λ``)."""
        return dict(self._terms)

    def forward(self) -> Tensor:
        """``λ · Σ_l w_l · mean s_l`` of the latest forward; consumes the terms.

        Raises ``RuntimeError`` (saying what to do) when there is no forward to penalise: the
        penalty is not attached (call it inside ``with penalty:``), the latest forward ran under
        ``torch.no_grad()``, or the terms of the latest forward were already consumed. A training
        loop can then not run unregularised without noticing. (A forward whose layers all have
        weight 0 gives 0.)
        """
        if not self._terms and not self._fed:
            raise RuntimeError(self._why_empty())
        self._fed = False
        for name in self._guard.settle():
            del self._terms[name]
            self._warn_once(
                name + "/inplace",
                f"layer {name!r}: its activation was modified in place after the penalty read it, so its "
                f"term is left out of this step's penalty; from the next forward on it is computed on a copy",
            )
        terms, self._terms = self._terms, {}
        if not terms:
            return self._zero()
        return self.weight * torch.stack(list(terms.values())).sum()

    def _why_empty(self) -> str:
        what = "SparsityPenalty() has no activations to penalise: "
        if not self.recorder.attached:
            return what + (
                "the penalty is not attached, so no forward was recorded. Run the forward and call penalty() "
                "inside `with penalty:` (or after penalty.attach()): `with penalty: out = model(x); "
                "loss = loss_fn(out, y) + penalty()`"
            )
        if self._no_grad_forward:
            return what + (
                "the latest forward of the model ran under torch.no_grad() (or inference_mode), which the "
                "penalty does not record: it needs the forward's autograd graph. Call penalty() only after "
                "a training forward with gradients enabled (leave it out of evaluation)"
            )
        return what + (
            "no forward with gradients enabled reached its layers since the last penalty() call (each forward's "
            "penalty is consumed once). Call penalty() once per training step, after that step's forward"
        )

    def _zero(self) -> Tensor:
        p = next(self.recorder.model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)

    def extra_repr(self) -> str:
        return f"weight={self.weight}, axis={self.axis!r}, layers={self.recorder.modules}"
