"""The differentiable sparsity penalty: ``loss = task_loss + penalty()``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ._errors import UnknownLayerError, closest
from .functional.perplexity import AXES, Axis, perplexity_sparsity
from .recording import ActivationRecorder

__all__ = ["SparsityPenalty"]


def _base_name(call_site: str) -> str:
    """``"layer1.0.relu#2"`` -> ``"layer1.0.relu"`` (a module called twice shares its weight)."""
    return call_site.split("#", 1)[0]


class SparsityPenalty(nn.Module):
    """``λ · Σ_l w_l · mean s_l(a)`` over the selected layers' activations of the current forward.

    Built on :func:`~xaisparse.functional.perplexity_sparsity` (the same code as the measure)
    and fed by an :class:`~xaisparse.recording.ActivationRecorder`: during each forward with
    gradients enabled, every selected layer's mean sparsity is computed on the live tensor and
    kept with its autograd graph until :meth:`forward` (calling the module) consumes it. A new
    forward replaces the previous one's terms, so the penalty always belongs to the latest
    forward; forwards under ``torch.no_grad()`` are ignored. Non-finite maps are left out of the
    mean; layers whose maps are 1×1 fall back to the ``channel`` axis (one warning).

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

    def __init__(
        self,
        model: nn.Module,
        layers: object = None,
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
        known = set(self.recorder.modules)
        weights = dict(layer_weights or {})
        for name, w in weights.items():
            if _base_name(name) not in known:
                raise UnknownLayerError(
                    f"layer_weights names {name!r}, which is not a selected layer; selected layers are "
                    f"{sorted(known)[:12]} (closest: {closest(name, known)})"
                )
            if not isinstance(w, (int, float)) or isinstance(w, bool):
                raise TypeError(f"layer_weights[{name!r}] must be a number, got {type(w).__name__}")
        self.layer_weights = {k: float(v) for k, v in weights.items()}
        self._terms: dict[str, Tensor] = {}
        self._warned: set[str] = set()

    # lifecycle: delegate to the recorder
    def attach(self) -> SparsityPenalty:
        self.recorder.attach()
        return self

    def detach(self) -> None:
        self.recorder.detach()
        self._terms.clear()

    def __enter__(self) -> SparsityPenalty:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    def _weight_of(self, name: str) -> float:
        return self.layer_weights.get(name, self.layer_weights.get(_base_name(name), 1.0))

    def _collect(self, name: str, x: Tensor) -> None:
        if not torch.is_grad_enabled():
            return
        if name in self._terms:  # a new forward began: drop the previous one's terms
            self._terms.clear()
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
        s = perplexity_sparsity(x, axis)
        ok = torch.isfinite(s)
        s = torch.where(ok, s, torch.zeros_like(s))
        self._terms[name] = w * s.sum() / ok.sum().clamp(min=1)

    @property
    def terms(self) -> dict[str, Tensor]:
        """The weighted mean sparsity of each layer of the latest forward (before ``λ``)."""
        return dict(self._terms)

    def forward(self) -> Tensor:  # type: ignore[override]
        """``λ · Σ_l w_l · mean s_l`` of the latest forward; consumes the terms."""
        if not self._terms:
            self._warn_once(
                "empty",
                "SparsityPenalty() found no activations: call it after a forward with gradients enabled "
                "and with the penalty attached (`with penalty:` or penalty.attach()); returning 0",
            )
            p = next(self.recorder.model.parameters(), None)
            return torch.zeros((), device=p.device if p is not None else None)
        total = torch.stack(list(self._terms.values())).sum()
        self._terms = {}
        return self.weight * total

    def extra_repr(self) -> str:
        return f"weight={self.weight}, axis={self.axis!r}, layers={self.recorder.modules}"
