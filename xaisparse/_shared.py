"""One set of hooks and one pass over each activation for the monitor and the penalty of one model.

A :class:`~xaisparse.monitor.SparsityMonitor` and a :class:`~xaisparse.penalty.SparsityPenalty`
built on the same model with the same layer selection share one
:class:`~xaisparse.recording.ActivationRecorder` (:func:`shared_recorder`): one hook per layer,
whose callback calls each user in turn. Each user attaches and detaches through
:func:`hold` / :func:`release`, so the hooks stay while anyone needs them; a user whose
recorder is attached only for another user ignores what it delivers (:func:`wanted`).

And one pass over each activation: whoever first reads an activation's map sums ``(S, T)``
(:func:`~xaisparse.functional.mapsums._map_sums`, the costly part: a ``log`` per element)
leaves them here (:func:`publish`), and the other takes them (:func:`lookup`) instead of
reading the activation again -- also when the two users have different recorders (the same
tensor reaches both). An entry is tied to the very tensor it was computed from (a weak
reference to it and its version counter), so it can never serve another batch or a tensor
changed in place; it holds only the small sums, never the activation.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from torch import Tensor, nn

from .recording import ActivationRecorder, LayerSelector, call_site_base

__all__ = [
    "active",
    "begin",
    "end",
    "hold",
    "lookup",
    "nonnegative_sites",
    "publish",
    "release",
    "shared_recorder",
    "wanted",
]

#: Activation modules whose outputs are never negative: their sums skip ``|x|``.
_NONNEGATIVE = (nn.ReLU, nn.ReLU6)


class _Dispatch:
    """The one callback of a shared recorder: calls each user's bound method (held weakly)."""

    def __init__(self) -> None:
        self.targets: list[weakref.WeakMethod[Callable[[str, Tensor], Any]]] = []

    def add(self, method: Callable[[str, Tensor], Any]) -> None:
        self.targets = [ref for ref in self.targets if ref() is not None]
        self.targets.append(weakref.WeakMethod(method))

    def __call__(self, site: str, x: Tensor) -> None:
        for ref in self.targets:
            fn = ref()
            if fn is not None:
                fn(site, x)


_RECORDERS: WeakKeyDictionary[nn.Module, list[weakref.ref[ActivationRecorder]]] = WeakKeyDictionary()
_DISPATCH: WeakKeyDictionary[ActivationRecorder, _Dispatch] = WeakKeyDictionary()
_HOLDERS: WeakKeyDictionary[ActivationRecorder, set[int]] = WeakKeyDictionary()
_EXTERNAL: WeakKeyDictionary[ActivationRecorder, bool] = WeakKeyDictionary()  # attached by someone else


def _selection(rec: ActivationRecorder) -> tuple[object, ...]:
    return (
        tuple(rec.modules),
        tuple(rec.functional_activations),
        tuple(sorted((name, tuple(sorted(calls))) for name, calls in rec._only_calls.items())),  # "act#2"
        rec._channels_last,
        rec._grid_only,
    )


def shared_recorder(
    model: nn.Module, layers: LayerSelector, method: Callable[[str, Tensor], Any]
) -> ActivationRecorder:
    """The recorder of ``model`` for ``layers``, shared with every other user of the same selection.

    ``method`` (a bound method: held weakly, so a user that is garbage collected drops out) is
    called with every activation the recorder delivers.
    """
    rec = ActivationRecorder(model, layers)
    key = _selection(rec)
    refs = _RECORDERS.setdefault(rec.model, [])
    refs[:] = [ref for ref in refs if ref() is not None]
    for ref in refs:
        other = ref()
        if other is not None and _selection(other) == key:
            _DISPATCH[other].add(method)
            return other
    dispatch = _DISPATCH[rec] = _Dispatch()
    dispatch.add(method)
    rec.add_callback(dispatch)
    refs.append(weakref.ref(rec))
    return rec


def hold(rec: ActivationRecorder, owner: object) -> None:
    """``owner`` needs the hooks: attach the recorder unless it is attached already."""
    holders = _HOLDERS.setdefault(rec, set())
    if not holders:
        _EXTERNAL[rec] = rec.attached  # attached by the user directly: never detached by us
        if not rec.attached:
            rec.attach()
    holders.add(id(owner))


def release(rec: ActivationRecorder, owner: object) -> None:
    """``owner`` no longer needs the hooks: detach when nobody does (and we attached them)."""
    holders = _HOLDERS.get(rec)
    if holders is None or id(owner) not in holders:
        return
    holders.discard(id(owner))
    if not holders and not _EXTERNAL.pop(rec, False):
        rec.detach()


def holds(rec: ActivationRecorder, owner: object) -> bool:
    """Whether ``owner`` currently holds the recorder's hooks."""
    return id(owner) in _HOLDERS.get(rec, ())


def wanted(rec: ActivationRecorder, owner: object) -> bool:
    """Whether ``owner`` should act on what ``rec`` delivers: it holds the hooks, or they were
    attached directly by the user (not only for another user)."""
    holders = _HOLDERS.get(rec)
    return not holders or id(owner) in holders or _EXTERNAL.get(rec, False)


def nonnegative_sites(rec: ActivationRecorder) -> frozenset[str]:
    """Module names and functional sites of ``rec`` whose values are ``>= 0`` (ReLU, ReLU6 outputs)."""
    names = {name for name in rec.modules if type(rec.model.get_submodule(name)) in _NONNEGATIVE}
    names |= {act.site for act in rec.functional_activations if type(act.fn) in _NONNEGATIVE}
    return frozenset(names)


def is_nonnegative(sites: frozenset[str], site: str) -> bool:
    """Whether the call site ``site`` (``"a.relu#2"``) belongs to one of ``sites``."""
    return site in sites or call_site_base(site) in sites


# -- map sums, computed once per activation --------------------------------------------------------
_ACTIVE: WeakKeyDictionary[nn.Module, dict[str, int]] = WeakKeyDictionary()


def begin(model: nn.Module, kind: str) -> None:
    """A user of ``kind`` (``"monitor"``, ``"penalty"``) starts reading ``model``'s activations."""
    counts = _ACTIVE.setdefault(model, {})
    counts[kind] = counts.get(kind, 0) + 1


def end(model: nn.Module, kind: str) -> None:
    counts = _ACTIVE.get(model, {})
    if counts.get(kind, 0) > 0:
        counts[kind] -= 1


def active(model: nn.Module, kind: str) -> bool:
    """Whether a user of ``kind`` reads ``model``'s activations now (worth publishing sums for)."""
    return _ACTIVE.get(model, {}).get(kind, 0) > 0


_Entry = tuple["weakref.ref[Tensor]", int, tuple[int, ...], tuple[int, ...], int, Tensor, "Tensor | None"]
_SUMS: WeakKeyDictionary[nn.Module, dict[str, _Entry]] = WeakKeyDictionary()


def _identity(x: Tensor) -> tuple[Tensor, int, tuple[int, ...], tuple[int, ...], int]:
    base = x._base if x._base is not None else x  # a view (channels-last sites) is keyed by its base
    return base, x._version, tuple(x.shape), x.stride(), int(x.storage_offset())


def publish(model: nn.Module, site: str, x: Tensor, total: Tensor, t: Tensor | None) -> None:
    """Leave the (detached) map sums of ``x`` at ``site`` for the other user of this forward."""
    base, version, shape, stride, offset = _identity(x)
    _SUMS.setdefault(model, {})[site] = (weakref.ref(base), version, shape, stride, offset, total, t)


def lookup(model: nn.Module, site: str, x: Tensor) -> tuple[Tensor, Tensor | None] | None:
    """The map sums of exactly this ``x`` (same tensor, unchanged since), if another user left them."""
    entry = _SUMS.get(model, {}).get(site)
    if entry is None:
        return None
    ref, version, shape, stride, offset, total, t = entry
    base, *now = _identity(x)
    if ref() is not base or now != [version, shape, stride, offset]:
        return None
    return total, t
