"""The differentiable sparsity penalty: ``loss = task_loss + penalty()``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from . import _shared
from ._errors import UnknownLayerError, closest
from ._validation import check_choice, check_number
from .functional.mapsums import _MapSums, _sparsity_from_sums
from .functional.perplexity import AXES, Axis, perplexity_sparsity
from .recording import ActivationRecorder, LayerSelector, call_site_base

__all__ = ["SparsityPenalty"]

_HALF = (torch.float16, torch.bfloat16)


class _Site(NamedTuple):
    """One call site's map sums of the current forward (with their autograd graph), for the fused term."""

    total: Tensor  # (N, C, 1, ...): S = Σ|a| per map
    t: Tensor  # T = Σ|a| ln|a| per map
    length: int  # L: the map size
    weight: float  # w_l


class _Layout(NamedTuple):
    """Constants of the fused evaluation of one set of sites (cached: the same every step)."""

    lengths_m1: Tensor  # L - 1 per column of the concatenated sums
    onehot: Tensor  # (columns, sites): which site each column belongs to
    weights: Tensor  # (sites,) w_l
    one: Tensor  # () 1
    dims: tuple[int, ...]  # the dims summed to get one number per column (none: flattened)


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

    Fed by an :class:`~xaisparse.recording.ActivationRecorder`: during each forward with
    gradients enabled, every selected layer's live tensor is read once, into its per-map sums
    ``S = Σ|a|`` and ``T = Σ|a| ln|a|`` (:mod:`xaisparse.functional.mapsums`, an autograd
    Function with a closed-form backward), kept with their graph until :meth:`forward`
    (calling the module) turns the sums of all layers into the penalty at once (``H = ln S -
    T/S``, the same definition as the measure; the reference is
    :func:`~xaisparse.functional.perplexity_sparsity`). So a training step costs a few
    operations per layer, forward and backward, instead of a few dozen. A new forward replaces
    the previous one's terms, so the penalty always belongs to the latest forward; forwards
    under ``torch.no_grad()`` are ignored. Non-finite maps are left out of the mean; layers
    whose maps are 1×1 fall back to the ``channel`` axis (one warning); the ``channel`` and
    ``sample`` axes are computed per layer with :func:`~xaisparse.functional.perplexity_sparsity`.

    With a :class:`~xaisparse.monitor.SparsityMonitor` on the same model and layers (``fit``
    with a penalty, or a loop of your own) both use one recorder, and an activation the
    monitor is measuring is read once for both.

    The layers are those of :class:`~xaisparse.recording.ActivationRecorder` (default: the
    conv-block activations, or position-wise and functional ones for models without such
    modules). Activations later modified in place by the model (a residual ``+=``) never break
    ``backward()``: see ``_InplaceGuard`` (one copy per layer in the first step; every step
    only for the layers that are written to). Half-precision activations (``torch.autocast``)
    are measured in float32, like the monitor does; the gradient returns in their dtype.

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
        self.weight = check_number("weight (λ)", weight)
        self.axis: Axis = check_choice("axis", axis, AXES)  # type: ignore[assignment]
        # A plain attribute, not a submodule: the penalty must not adopt the user's model.
        # Shared with a monitor of the same model and layers (one set of hooks).
        self.__dict__["recorder"] = _shared.shared_recorder(model, layers, self._collect)
        known = set(self.recorder.modules) | set(self.recorder.functional_sites)
        weights = dict(layer_weights or {})
        for name in weights:
            if name not in known and call_site_base(name) not in known:
                raise UnknownLayerError(
                    f"layer_weights names {name!r}, which is not a selected layer; selected layers are "
                    f"{sorted(known)[:12]} (closest: {closest(name, known)})"
                )
        self.layer_weights = {k: check_number(f"layer_weights[{k!r}]", v) for k, v in weights.items()}
        self._terms: dict[str, Tensor] = {}  # terms computed per layer (channel/sample axes, 1x1 maps)
        self._sites: dict[str, _Site] = {}  # map sums awaiting the fused evaluation (spatial axis)
        self._layouts: dict[tuple[object, ...], _Layout] = {}
        self._fed = False  # a forward with gradients reached a selected layer since the last penalty()
        self._no_grad_forward = False  # the latest forward through the selected layers ran without gradients
        self._warned: set[str] = set()
        self._guard = _InplaceGuard()
        self._nonnegative = _shared.nonnegative_sites(self.recorder)

    # lifecycle: through the (possibly shared) recorder
    def attach(self) -> SparsityPenalty:
        """Register the hooks (idempotent); with a monitor on the same layers, one set serves both."""
        if not _shared.holds(self.recorder, self):
            _shared.begin(self.recorder.model, "penalty")
        _shared.hold(self.recorder, self)
        return self

    def detach(self) -> None:
        """Stop recording; the hooks go when no monitor tracking the same layers still needs them."""
        if _shared.holds(self.recorder, self):
            _shared.end(self.recorder.model, "penalty")
        _shared.release(self.recorder, self)
        self._guard.settle()
        self._clear()
        self._fed = self._no_grad_forward = False

    def _clear(self) -> None:
        self._terms.clear()
        self._sites.clear()

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
        if not _shared.wanted(self.recorder, self):
            return
        if not torch.is_grad_enabled():
            self._no_grad_forward = True
            return
        self._no_grad_forward = False
        if name in self._terms or name in self._sites:  # a new forward began: drop the previous one's terms
            self._guard.settle()
            self._clear()
        self._fed = True
        w = self._weight_of(name)
        if w == 0.0:
            return
        axis: Axis = self.axis
        if axis == "spatial" and (x.dim() < 3 or math.prod(x.shape[2:]) == 1):
            axis = "channel"
            self._warn_once(
                name, f"layer {name!r} has no spatial extent {tuple(x.shape)}: penalising its channel-axis sparsity"
            )
        if (axis == "channel" and x.shape[1] == 1) or (axis == "sample" and x.shape[0] == 1):
            self._warn_once(name + "/n1", f"layer {name!r}: vectors of length 1 on axis {axis!r}; skipped")
            return
        if axis == "spatial":  # the fused path: the map sums now, the sparsity of every layer in forward()
            model = self.recorder.model
            given = _shared.lookup(model, name, x)  # a monitor read this very tensor already
            nonnegative = _shared.is_nonnegative(self._nonnegative, name)
            total, t = _MapSums.apply(self._guard.protect(name, x), nonnegative, given)
            if given is None and _shared.active(model, "monitor"):  # for the monitor, later in this forward
                _shared.publish(model, name, x, total.detach(), t.detach())
            self._sites[name] = _Site(total, t, math.prod(x.shape[2:]), w)
            return
        # A tensor of our own: float32 for half precision (a copy anyway), else guarded (see _InplaceGuard).
        x = x.float() if x.dtype in _HALF else self._guard.protect(name, x)
        s = perplexity_sparsity(x, axis)
        ok = torch.isfinite(s)
        s = torch.where(ok, s, torch.zeros_like(s))
        self._terms[name] = w * s.sum() / ok.sum().clamp(min=1)

    def _layout(self, names: list[str], sites: list[_Site], columns: bool) -> _Layout:
        """The constants of the fused evaluation (cached per set of sites, shapes and weights).

        ``columns``: the sums are side by side along dim 1 (one column per channel, summed over
        the batch); else flattened (one column per map).
        """
        key = (columns, *((n, tuple(s.total.shape), s.total.dtype, s.length, s.weight) for n, s in zip(names, sites)))
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        if len(self._layouts) >= 64:  # shapes keep changing: stay bounded
            self._layouts.clear()
        first = sites[0].total
        dtype, device = torch.promote_types(first.dtype, torch.float32), first.device
        sizes = [s.total.shape[1] if columns else s.total.numel() for s in sites]
        lengths = torch.tensor([s.length - 1.0 for s in sites], dtype=dtype).repeat_interleave(torch.tensor(sizes))
        site_of = torch.arange(len(sites)).repeat_interleave(torch.tensor(sizes))
        layout = _Layout(
            lengths.view(1, -1, *[1] * (first.dim() - 2)).to(device) if columns else lengths.to(device),
            nn.functional.one_hot(site_of, len(sites)).to(device, dtype),
            torch.tensor([s.weight for s in sites], dtype=dtype, device=device),
            torch.ones((), dtype=dtype, device=device),
            (0, *range(2, first.dim())) if columns else (),
        )
        self._layouts[key] = layout
        return layout

    def _fused_terms(self) -> Tensor:
        """The weighted mean sparsity ``w_l · mean s_l`` of every pending site, as one vector.

        One evaluation for all layers: their map sums are concatenated, the sparsity of every
        map is taken from ``(S, T)`` (non-finite maps left out of the means, dead maps count 1)
        and averaged per layer with a one-hot matrix: ~20 small ops however many layers.
        """
        names, sites = list(self._sites), list(self._sites.values())
        first = sites[0].total
        columns = all(s.total.dim() == first.dim() and s.total.shape[0] == first.shape[0] for s in sites)
        if columns:  # the usual case: one batch, the (N, C_l, 1, 1) sums side by side
            total, t = torch.cat([s.total for s in sites], 1), torch.cat([s.t for s in sites], 1)
        else:  # sites of different batch sizes or ranks: one column per map
            total = torch.cat([s.total.reshape(-1) for s in sites])
            t = torch.cat([s.t.reshape(-1) for s in sites])
        k = self._layout(names, sites, columns)
        ok = torch.isfinite(total)
        s = _sparsity_from_sums(total, t, k.lengths_m1, ok & (total > 0), k.one) * ok
        if k.dims:
            per_column = torch.stack([s.sum(k.dims), ok.sum(k.dims, dtype=s.dtype)])  # (2, columns)
        else:
            per_column = torch.stack([s, ok.to(s.dtype)])
        sums, counts = (per_column @ k.onehot).unbind(0)  # per site
        return sums / counts.clamp(min=1.0) * k.weights

    @property
    def terms(self) -> dict[str, Tensor]:
        """The weighted mean sparsity of each layer of the latest forward (before ``λ``)."""
        out = dict(self._terms)
        if self._sites:
            out.update(zip(self._sites, self._fused_terms().unbind()))
        return out

    def forward(self) -> Tensor:
        """``λ · Σ_l w_l · mean s_l`` of the latest forward; consumes the terms.

        Raises ``RuntimeError`` (saying what to do) when there is no forward to penalise: the
        penalty is not attached (call it inside ``with penalty:``), the latest forward ran under
        ``torch.no_grad()``, or the terms of the latest forward were already consumed. A training
        loop can then not run unregularised without noticing. (A forward whose layers all have
        weight 0 gives 0.)
        """
        if not self._terms and not self._sites and not self._fed:
            raise RuntimeError(self._why_empty())
        self._fed = False
        for name in self._guard.settle():
            self._terms.pop(name, None)
            self._sites.pop(name, None)
            self._warn_once(
                name + "/inplace",
                f"layer {name!r}: its activation was modified in place after the penalty read it, so its "
                f"term is left out of this step's penalty; from the next forward on it is computed on a copy",
            )
        parts = list(self._terms.values())
        if self._sites:
            parts.append(self._fused_terms().sum())
        self._clear()
        if not parts:
            return self._zero()
        total = parts[0] if len(parts) == 1 else torch.stack(parts).sum()
        return self.weight * total

    def _why_empty(self) -> str:
        what = "SparsityPenalty() has no activations to penalise: "
        if not self.recorder.attached or not _shared.wanted(self.recorder, self):  # (a monitor's hooks only)
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
