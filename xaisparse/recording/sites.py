"""Call-site names: ``"layer1.0.relu"`` for a layer's first call in a forward, ``"...#2"`` after.

The one place where call-site names are written and read back. A module called several
times in one forward of the model (torchvision's ResNet ``BasicBlock`` applies its single
``relu`` twice) reports each call under its own name; a layer whose calls share one weight
(``layer_weights=`` of the penalty, grouping in benchmarks) is found by the base name.

Functional activation calls (``F.relu(x)`` in a forward) are named here too, by
:func:`functional_site_names`: ``"<path of the module whose forward makes the call>.<function>"``
(``"layer1.0.relu"``; at the top level just ``"relu"``; ``"gelu_fn"`` where a module is already
called ``"gelu"``), ``"#2"``, ``"#3"``, ... for further calls of the same name. The recorder (which
takes these calls on the model itself) and :func:`~xaisparse.recording.expose_functional_activations`
(which makes them modules of a traced copy, registered under the same names) both use it, so a run
recorded either way has the same layer names.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from torch import fx

__all__ = ["call_site_base", "call_site_call", "call_site_name", "functional_site_names"]

_SEP = "#"


def call_site_name(base: str, call: int) -> str:
    """The name of the ``call``-th call (1-based) of ``base`` within one forward.

    >>> call_site_name("layer1.0.relu", 1), call_site_name("layer1.0.relu", 2)
    ('layer1.0.relu', 'layer1.0.relu#2')
    """
    return base if call == 1 else f"{base}{_SEP}{call}"


def call_site_base(site: str) -> str:
    """The layer a call-site name belongs to: ``"layer1.0.relu#2"`` -> ``"layer1.0.relu"``.

    Plain names (a first call, or a module name) are returned unchanged.

    >>> call_site_base("layer1.0.relu#2"), call_site_base("features.1")
    ('layer1.0.relu', 'features.1')
    """
    return site.split(_SEP, 1)[0]


def call_site_call(site: str) -> tuple[str, int]:
    """``(base, call)`` of a call-site name: ``"act#2"`` -> ``("act", 2)``, ``"act"`` -> ``("act", 1)``.

    A ``#`` suffix that is not an integer of at least 2 is part of the base name.

    >>> call_site_call("layer1.0.relu#2"), call_site_call("features.1")
    (('layer1.0.relu', 2), ('features.1', 1))
    """
    base, sep, suffix = site.rpartition(_SEP)
    if sep and suffix.isdigit() and int(suffix) >= 2 and call_site_name(base, int(suffix)) == site:
        return base, int(suffix)
    return site, 1


def functional_site_names(
    nodes: Iterable[fx.Node], module_names: Collection[str], is_activation: Callable[[fx.Node], bool]
) -> dict[fx.Node, str]:
    """The call-site name of every functional activation call among ``nodes`` (an fx graph's, in order).

    ``is_activation(node)`` says which nodes are activation calls; ``module_names`` are the model's
    module names (a call is never named like a module: ``"gelu_fn"`` beside a module ``gelu``).
    Every activation call is counted, recorded or not, so the numbering does not depend on which
    calls a selection keeps.
    """
    names: dict[fx.Node, str] = {}
    counts: dict[str, int] = {}
    for node in nodes:
        if node.op not in ("call_function", "call_method") or not is_activation(node):
            continue
        base = _base_name(node, module_names)
        counts[base] = counts.get(base, 0) + 1
        names[node] = call_site_name(base, counts[base])
    return names


def _base_name(node: fx.Node, module_names: Collection[str]) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = next(reversed(stack.values()))[0] if stack else ""
    target = node.target
    fname = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    fname = fname.rstrip("_") or fname
    base = f"{path}.{fname}" if path else fname
    return f"{base}_fn" if base in module_names else base  # never shadow a real module's name
