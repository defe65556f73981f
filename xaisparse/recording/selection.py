"""Choosing which modules of a model to record: names, globs, module types, predicates.

Selection is pure: it reads ``model.named_modules()`` and returns module names; it
registers nothing and changes nothing.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import nn

from xaisparse._errors import UnknownLayerError, closest
from xaisparse.recording.sites import _SEP, call_site_call

__all__ = [
    "ACTIVATION_TYPES",
    "CONV_TYPES",
    "LayerSelector",
    "SiteSelection",
    "default_activation_layers",
    "positionwise_activation_layers",
    "select_layers",
    "select_sites",
]

#: Element-wise activation modules that the default selection looks for.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.RReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.LogSigmoid,
    nn.Tanh,
    nn.Softplus,
    nn.Softsign,
    nn.Threshold,
)

#: Convolutions: an activation that follows one of these is a feature-extraction activation.
CONV_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)

#: Other weighted layers: an activation that follows one of these is not selected by default.
_OTHER_WEIGHTED: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Bilinear,
    nn.RNNBase,
    nn.MultiheadAttention,
    nn.Embedding,
)

_Single = str | type | nn.Module | Callable[[str, nn.Module], bool]
#: What ``layers=`` accepts: one selector or a list/tuple of them (their union).
LayerSelector = _Single | Sequence[_Single] | None

_GLOB_CHARS = "*?["


def _short(names: Sequence[str], n: int = 12) -> str:
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _candidates(model: nn.Module) -> list[tuple[str, nn.Module]]:
    # The root (name "") is never a candidate: it is the model, not a layer of it.
    return [(name, mod) for name, mod in model.named_modules() if name]


def _activation_kinds(model: nn.Module) -> tuple[dict[str, str], int]:
    """Each activation module's last weighted predecessor in registration order, and the conv count.

    Kinds: ``"conv"`` (a convolution), ``"linear"`` (an ``nn.Linear`` seen after the first
    convolution: a position-wise layer inside the feature extractor or a classifier head),
    ``"other"`` (anything else, or no weighted layer yet).
    """
    last: str | None = None
    n_conv = 0
    kinds: dict[str, str] = {}
    for name, mod in _candidates(model):
        if isinstance(mod, CONV_TYPES):
            last, n_conv = "conv", n_conv + 1
        elif isinstance(mod, nn.Linear) and n_conv:
            last = "linear"
        elif isinstance(mod, _OTHER_WEIGHTED):
            last = "other"
        elif isinstance(mod, ACTIVATION_TYPES):
            kinds[name] = last or "other"
    return kinds, n_conv


def positionwise_activation_layers(model: nn.Module) -> list[str]:
    """Activation modules that follow an ``nn.Linear`` after the model's first convolution.

    These are either position-wise MLPs applied to a spatial or token grid with the channels
    last, ``(N, H, W, C)`` or ``(N, L, C)`` (ConvNeXt, Swin and ViT blocks), or classifier-head
    activations on ``(N, F)`` vectors; only the output shape tells them apart, so the recorder's
    default selection keeps a site of this kind only when its output has a grid (3 or more
    dims), and measures it with the channels (the Linear's output features) on the last axis.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(2, 4), nn.GELU())
    >>> positionwise_activation_layers(net)
    ['2']
    """
    kinds, _ = _activation_kinds(model)
    return [name for name, kind in kinds.items() if kind == "linear"]


def default_activation_layers(model: nn.Module) -> list[str]:
    """Names of the activation modules of the feature-extraction (convolutional) part.

    Rule: walk ``model.named_modules()`` in registration order, remembering whether the last
    weighted layer seen was a convolution (``nn.Conv1d/2d/3d`` and transposed) or another
    weighted layer (``nn.Linear``, ...). Every activation module (see ``ACTIVATION_TYPES``)
    whose last weighted predecessor is a convolution is selected. This picks the ReLUs of
    ``features`` in VGG but not those of ``classifier``, and the stem and block ReLUs of a
    ResNet. The rule relies on registration order following the data flow, as it does in
    torchvision and in most hand-written models.

    This is the module rule only. When it finds nothing, ``ActivationRecorder`` (and so
    ``SparsityMonitor`` and ``SparsityPenalty``) with ``layers=None`` go on to position-wise
    activations (:func:`positionwise_activation_layers`) and to functional activation calls
    found by ``torch.fx`` (:func:`~xaisparse.recording.find_functional_activations`); here a
    ``ValueError`` says which of the two the model has.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 4), nn.ReLU())
    >>> default_activation_layers(net)
    ['1']
    """
    kinds, n_conv = _activation_kinds(model)
    found = [name for name, kind in kinds.items() if kind == "conv"]
    if found:
        return found
    if n_conv == 0:
        raise ValueError(
            f"the default layer selection records activation modules that follow convolution "
            f"layers, but {type(model).__name__} has no Conv1d/Conv2d/Conv3d layer; pass "
            f"layers=... explicitly (a name, a glob such as 'features.*', a module type such as "
            f"nn.ReLU, or a predicate)"
        )
    after_linear = [name for name, kind in kinds.items() if kind == "linear"]
    if after_linear:
        types = sorted({type(model.get_submodule(n)).__name__ for n in after_linear})
        raise ValueError(
            f"{type(model).__name__} has {n_conv} convolution layer(s), and its {len(after_linear)} "
            f"activation module(s) ({', '.join(types)}) follow nn.Linear layers, not convolutions: "
            f"position-wise MLPs on channels-last tensors (as in ConvNeXt, Swin or ViT blocks) or a "
            f"classifier head. ActivationRecorder, SparsityMonitor and SparsityPenalty with layers=None "
            f"record those that act on a spatial or token grid, over the last (channel) axis; "
            f"positionwise_activation_layers(model) lists them: {_short(after_linear, 4)}"
        )
    raise ValueError(
        f"{type(model).__name__} has {n_conv} convolution layer(s) but no activation module "
        f"(nn.ReLU, nn.GELU, ...) registered after one; its activations are probably functional "
        f"calls (F.relu, torch.relu, x.relu()), which have no module to hook. ActivationRecorder, "
        f"SparsityMonitor and SparsityPenalty with layers=None find such calls by tracing the model "
        f"with torch.fx (find_functional_activations(model) lists them). Otherwise pass "
        f"layers=nn.Conv2d to record the pre-activation convolution outputs (sparsity then uses "
        f"|a|), or call expose_functional_activations(model) and build the recorder on the "
        f"returned GraphModule."
    )


def _match_one(sel: object, cands: list[tuple[str, nn.Module]], model: nn.Module) -> list[str]:
    names = [n for n, _ in cands]
    if isinstance(sel, str):
        if sel in names:
            return [sel]
        if any(c in sel for c in _GLOB_CHARS):
            hits = [n for n in names if fnmatch.fnmatchcase(n, sel)]
            if hits:
                return hits
            raise UnknownLayerError(
                f"the pattern {sel!r} matches no layer of {type(model).__name__}; layers are: {_short(names)}"
            )
        raise UnknownLayerError(
            f"{type(model).__name__} has no layer named {sel!r}; closest valid names: {_short(closest(sel, names))}"
        )
    if isinstance(sel, nn.Module):
        hits = [n for n, m in cands if m is sel]
        if not hits:
            raise UnknownLayerError(
                f"the module {type(sel).__name__} passed in layers= is not a submodule of {type(model).__name__}"
            )
        return hits
    if isinstance(sel, type):
        if not issubclass(sel, nn.Module):
            raise TypeError(f"a type in layers= must be an nn.Module subclass, got {sel!r}")
        return [n for n, m in cands if isinstance(m, sel)]
    if callable(sel):
        return [n for n, m in cands if sel(n, m)]
    raise TypeError(
        "layers= expects None, a module name or glob (str), an nn.Module subclass, an "
        "nn.Module instance, a predicate f(name, module) -> bool, or a list/tuple of these; "
        f"got {type(sel).__name__}: {sel!r}"
    )


def select_layers(model: nn.Module, layers: LayerSelector = None) -> list[str]:
    """Names of the modules of ``model`` chosen by ``layers``, in registration order.

    ``layers`` is ``None`` (``default_activation_layers``), an exact module name, a glob
    (``"features.*"``, ``fnmatch`` rules, case-sensitive), an ``nn.Module`` subclass, an
    ``nn.Module`` instance (matched by identity), a predicate ``f(name, module) -> bool``, or a
    list/tuple of these (their union). The root module itself is never selected.

    Errors: an exact name or glob that matches nothing raises ``UnknownLayerError`` (a
    ``ValueError``) with the closest valid names; a selection that matches nothing at all
    raises ``ValueError``; a selector of an unsupported kind raises ``TypeError``.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3), nn.ReLU())
    >>> select_layers(net, nn.Conv2d)
    ['0', '2']
    >>> select_layers(net, ["3", lambda name, m: name == "0"])
    ['0', '3']
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layers is None:
        return default_activation_layers(model)
    cands = _candidates(model)
    selectors = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    chosen: set[str] = set()
    for sel in selectors:
        chosen.update(_match_one(sel, cands, model))
    if not chosen:
        raise ValueError(
            f"layers={layers!r} selects no layer of {type(model).__name__}; layers are: "
            f"{_short([f'{n} ({type(m).__name__})' for n, m in cands])}"
        )
    return [n for n, _ in cands if n in chosen]


@dataclass(frozen=True)
class SiteSelection:
    """What ``layers=`` chose, in call-site terms (see :func:`select_sites`).

    ``modules``: the modules to hook, in registration order; ``calls[name]``: the calls of that
    module to record (``{2}`` for ``"act#2"``), absent where every call is recorded;
    ``functional``: the functional activation sites chosen (``"relu"``, ``"layer1.0.gelu#2"``).
    """

    modules: list[str]
    calls: dict[str, frozenset[int]] = field(default_factory=dict)
    functional: list[str] = field(default_factory=list)


def select_sites(
    model: nn.Module, layers: LayerSelector, functional_sites: Callable[[], Sequence[str]] = list
) -> SiteSelection:
    """:func:`select_layers`, accepting also every name the recorder reports: call sites and functional calls.

    A string ``layers`` entry is, in this order: a module name (every call of it: ``"act"`` records
    the call sites ``"act"`` and ``"act#2"`` of a module used twice); a call-site name
    ``"<module>#<k>"`` (only the ``k``-th call of that module in each forward, e.g. ``"act#2"`` for
    the second use of one ``nn.ReLU``, ``"act#1"`` for its first only); the name of a functional activation call
    (``"relu"``, ``"layer1.0.relu#2"``) as listed by ``functional_sites()``; a glob, matched against
    the module names and the functional call names (``functional_sites()`` is called only when a
    name is not a module's: it traces the model). Other selectors are
    matched as in :func:`select_layers`. An unknown name raises
    :class:`~xaisparse.UnknownLayerError` with the closest names among modules and functional calls.

    >>> from torch import nn
    >>> act = nn.ReLU()
    >>> net = nn.Sequential(nn.Conv1d(1, 2, 3), act, nn.Conv1d(2, 2, 3), act)
    >>> select_sites(net, "1#2")
    SiteSelection(modules=['1'], calls={'1': frozenset({2})}, functional=[])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if layers is None:
        return SiteSelection(default_activation_layers(model))
    cands = _candidates(model)
    names = {n for n, _ in cands}
    traced: list[str] | None = None

    def functional() -> list[str]:
        nonlocal traced
        if traced is None:
            traced = list(functional_sites())
        return traced

    whole: set[str] = set()
    calls: dict[str, set[int]] = {}
    chosen_functional: list[str] = []
    selectors = list(layers) if isinstance(layers, (list, tuple)) else [layers]
    for sel in selectors:
        if not isinstance(sel, str) or sel in names:
            whole.update(_match_one(sel, cands, model))
            continue
        base, call = call_site_call(sel)
        if sel.endswith(f"{_SEP}1") and sel[:-2] in names:  # "act#1": the first call only
            base, call = sel[:-2], 1
        if (call > 1 or sel != base) and base in names:
            calls.setdefault(base, set()).add(call)
            continue
        globbing = any(c in sel for c in _GLOB_CHARS)
        hits = [f for f in functional() if (fnmatch.fnmatchcase(f, sel) if globbing else f == sel)]
        if globbing and any(fnmatch.fnmatchcase(n, sel) for n in names):
            whole.update(_match_one(sel, cands, model))
        elif not hits:
            known = [n for n, _ in cands] + functional()
            if globbing:
                raise UnknownLayerError(
                    f"the pattern {sel!r} matches no layer of {type(model).__name__}; layers are: {_short(known)}"
                )
            raise UnknownLayerError(
                f"{type(model).__name__} has no layer named {sel!r}; closest valid names: {_short(closest(sel, known))}"
            )
        chosen_functional += [f for f in hits if f not in chosen_functional]
    if not whole and not calls and not chosen_functional:
        raise ValueError(
            f"layers={layers!r} selects no layer of {type(model).__name__}; layers are: "
            f"{_short([f'{n} ({type(m).__name__})' for n, m in cands])}"
        )
    modules = [n for n, _ in cands if n in whole or n in calls]
    only = {n: frozenset(c) for n, c in calls.items() if n not in whole}
    order = {f: i for i, f in enumerate(functional())} if chosen_functional else {}
    return SiteSelection(modules, only, sorted(chosen_functional, key=order.__getitem__))
