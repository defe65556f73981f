"""Functional activation calls (``F.relu``, ``torch.relu``, ``x.relu()``, ``F.gelu``, ...) found with
``torch.fx`` and recorded on the user's own model, which is never replaced.

Why hooks on neighbouring modules and not a traced copy: the model object that is trained,
wrapped in DDP, compiled, checkpointed and measured must stay the user's own; a GraphModule
(see :func:`~xaisparse.recording.expose_functional_activations`) is a second object the user
would have to run instead. So the trace is only used to *find* each activation call and the
module call next to it; the values are then taken during the model's own forward:

* ``"output"`` (the common case, e.g. ``F.relu(self.bn(x))`` in GoogLeNet and Inception v3):
  a forward hook on the module whose output is the activation's input applies the same
  activation, with the same constant arguments, to that output, out of place. The value is
  bit-identical to the model's own activation (same function, same input); the extra cost is
  one activation-sized tensor per recorded call. For the penalty the gradient flows through
  this separate branch into the same module output, so it equals the gradient through the
  model's own activation. When the model's call is in place and the activation's backward
  needs its input (anything but ReLU), the hook applies the activation to a copy, so the
  model's in-place update cannot invalidate it.
* ``"input"`` (e.g. ``F.relu(out + identity)`` followed by a module call): a forward pre-hook
  on the first module that consumes the activation's output reads it there (the model's own
  tensor), unless an in-place operation on it comes in between.

Calls with neither neighbour cannot be recorded this way; they are listed in a warning (use
``expose_functional_activations`` for them).
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from xaisparse.recording.expose import _module_for, trace
from xaisparse.recording.selection import _OTHER_WEIGHTED, ACTIVATION_TYPES, CONV_TYPES
from xaisparse.recording.sites import call_site_call, call_site_name, functional_site_names

__all__ = ["FunctionalActivation", "TracedActivations", "find_functional_activations", "trace_activations"]

_CONV_FUNCTIONS = (F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)
_INPLACE_OPERATORS = (operator.iadd, operator.isub, operator.imul, operator.itruediv)
_SEARCH_LIMIT = 64  # graph nodes visited backwards when looking for the weighted layer before a call


@dataclass(frozen=True)
class FunctionalActivation:
    """One functional activation call of a model, and where its value is taken.

    ``site``: the reported name, ``"<module path>.<function>"`` of the module whose forward
    makes the call (``"inception3a.branch1.relu"``; at the top level just ``"relu"``), with
    ``"#2"``, ``"#3"``, ... for further calls of the same name. ``module`` and ``call``: the
    neighbouring module and which of its calls within one forward of the model (1-based).
    ``where``: ``"output"`` (apply ``fn`` to that call's output) or ``"input"`` (read its
    positional argument ``arg``). ``channels_last``: the call follows an ``nn.Linear``, so its
    channels are the last axis, and it is recorded only on a spatial or token grid.
    """

    site: str
    module: str
    call: int
    where: Literal["output", "input"]
    arg: int = 0
    fn: nn.Module | None = None
    copy_input: bool = False
    channels_last: bool = False

    def value(self, output: Tensor) -> Tensor:
        """The activation's value from the neighbouring module's output (``where="output"``)."""
        if self.fn is None:
            raise RuntimeError(f"{self.site!r} is read at a module's input; it has no function to apply")
        return self.fn(output.clone() if self.copy_input and torch.is_grad_enabled() else output)


def find_functional_activations(model: nn.Module) -> list[FunctionalActivation]:
    """The functional activation calls of ``model`` that can be recorded on it, in call order.

    ``model`` is traced with ``torch.fx`` in its current mode and in the other one (train /
    eval; every module's flag is restored), so calls made only in one mode (Inception's
    auxiliary heads) are found too. Only calls after a convolution, or after an ``nn.Linear``
    that comes after one (``channels_last=True``), are returned: a call's last weighted layer
    is found by walking its inputs back through the graph. Calls that can be recorded neither
    at a module's output nor at a module's input are listed in a ``UserWarning``.

    A ``TypeError`` says so when the model cannot be traced (data-dependent control flow).

    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv, self.bn = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)
    ...     def forward(self, x):
    ...         return F.relu(self.bn(self.conv(x))).mean((2, 3))
    >>> [(a.site, a.module, a.where) for a in find_functional_activations(Net())]
    [('relu', 'bn', 'output')]
    """
    return trace_activations(model, stacklevel=3).functional


@dataclass(frozen=True)
class TracedActivations:
    """What :func:`trace_activations` found: the functional calls, and modules that ignore the input."""

    functional: list[FunctionalActivation]
    #: Modules called in the traces whose calls never depend on the model's inputs (e.g. Swin V2's
    #: relative-position-bias MLP, run on a table of coordinates): not features of the data.
    input_independent: frozenset[str]
    #: Activation modules and functional sites computed only from globally pooled features (the
    #: squeeze-excitation gates of EfficientNet or MobileNetV3: 1x1 maps): not in the default selection.
    pooled: frozenset[str] = frozenset()


def trace_activations(model: nn.Module, *, stacklevel: int = 2) -> TracedActivations:
    """:func:`find_functional_activations`, plus the modules whose calls never depend on the input.

    ``stacklevel`` places the warning about unrecordable calls, as in ``warnings.warn``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    graphs = [_trace(model)]
    with _flipped_mode(model):
        try:
            graphs.append(_trace(model))
        except TypeError:
            pass  # the other mode does not trace: keep the current one's calls
    found: dict[tuple[str, int, str, int], FunctionalActivation] = {}
    unrecordable: list[str] = []
    called: set[str] = set()
    dependent_modules: set[str] = set()
    pooled_calls: dict[str, list[bool]] = {}  # activation module / site -> pooled, per call in the traces
    for graph in graphs:
        dependent = _input_dependent(graph)
        pooled = _globally_pooled(model, graph, dependent)
        for node in graph.nodes:
            if node.op == "call_module":
                called.add(str(node.target))
                if node in dependent:
                    dependent_modules.add(str(node.target))
                if isinstance(model.get_submodule(str(node.target)), ACTIVATION_TYPES):
                    pooled_calls.setdefault(str(node.target), []).append(node in pooled)
        for act, node in _activations(model, graph, dependent, unrecordable):
            key = (act.module, act.call, act.where, act.arg)
            if key in found:
                continue
            used = {a.site for a in found.values()}
            if act.site in used:  # a name taken by another call in the other mode's trace
                base, k = call_site_call(act.site)[0], 2
                while call_site_name(base, k) in used:
                    k += 1
                act = dataclasses.replace(act, site=call_site_name(base, k))
            found[key] = act
            pooled_calls.setdefault(act.site, []).append(node in pooled)
    if unrecordable:
        names = sorted(set(unrecordable))
        warnings.warn(
            f"{type(model).__name__}: {len(names)} functional activation call(s) neither take a module's "
            f"output nor feed a module, so they cannot be recorded on the model itself: {names[:8]}"
            f"{' ...' if len(names) > 8 else ''}; record them on expose_functional_activations(model) instead",
            UserWarning,
            stacklevel=stacklevel,
        )
    return TracedActivations(
        list(found.values()),
        frozenset(called - dependent_modules),
        frozenset(name for name, flags in pooled_calls.items() if all(flags)),
    )


def _input_dependent(graph: fx.Graph) -> set[fx.Node]:
    """The nodes computed from a placeholder (a model input), not only from parameters and constants."""
    dependent: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or any(n in dependent for n in node.all_input_nodes):
            dependent.add(node)
    return dependent


def _globally_pooled(model: nn.Module, graph: fx.Graph, dependent: set[fx.Node]) -> set[fx.Node]:
    """The nodes computed only from globally pooled features (a global pooling, or only such inputs).

    A squeeze-excitation branch (pool, 1x1 conv, activation, 1x1 conv, gate) is pooled; the
    block's output ``x * gate`` is not, since ``x`` is not.
    """
    pooled: set[fx.Node] = set()
    for node in graph.nodes:
        if node not in dependent:
            continue
        inputs = [n for n in node.all_input_nodes if n in dependent]
        if _is_global_pool(model, node) or (inputs and all(n in pooled for n in inputs)):
            pooled.add(node)
    return pooled


_POOL_MODULES = (
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
)
_REDUCTIONS = ("mean", "amax", "amin", "sum")


def _is_global_pool(model: nn.Module, node: fx.Node) -> bool:
    """An adaptive pooling to size 1, or a mean/amax/sum over positions (dims other than 0, 1) with keepdim."""
    if node.op == "call_module":
        mod = model.get_submodule(str(node.target))
        return isinstance(mod, _POOL_MODULES) and _all_ones(mod.output_size)
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if node.op == "call_function" and name.startswith("adaptive_"):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return _all_ones(size)
    if node.op in ("call_method", "call_function") and name in _REDUCTIONS:
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        return bool(node.kwargs.get("keepdim")) and all(isinstance(d, int) and d not in (0, 1) for d in dims)
    return False


def _all_ones(size: object) -> bool:
    sizes = size if isinstance(size, (tuple, list)) else (size,)
    return all(s == 1 for s in sizes)


def _trace(model: nn.Module) -> fx.Graph:
    try:
        return trace(model)
    except Exception as err:
        raise TypeError(f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: {err})") from err


@contextmanager
def _flipped_mode(model: nn.Module) -> Iterator[None]:
    flags = {m: m.training for m in model.modules()}
    model.train(not model.training)
    try:
        yield
    finally:
        for m, flag in flags.items():
            m.training = flag


def _activations(
    model: nn.Module, graph: fx.Graph, dependent: set[fx.Node], unrecordable: list[str]
) -> Iterator[tuple[FunctionalActivation, fx.Node]]:
    nodes = list(graph.nodes)
    order = {node: i for i, node in enumerate(nodes)}
    calls: dict[fx.Node, int] = {}  # call_module node -> which call of its module it is
    seen: dict[str, int] = {}
    for node in nodes:
        if node.op == "call_module":
            target = str(node.target)
            seen[target] = seen.get(target, 0) + 1
            calls[node] = seen[target]
    module_names = {name for name, _ in model.named_modules()}
    sites = functional_site_names(nodes, module_names, lambda n: _module_for(n) is not None)
    for node, site in sites.items():
        act = _module_for(node) if node in dependent else None
        if act is None:
            continue
        kind = _predecessor_kind(model, node)
        if kind not in ("conv", "linear"):
            continue
        inplace = bool(getattr(act, "inplace", False))
        if inplace:
            act.inplace = False  # type: ignore[assignment]  # our copy never writes into the model's tensors
        channels_last = kind == "linear"
        producer = node.args[0]
        if isinstance(producer, fx.Node) and producer.op == "call_module":
            yield (
                FunctionalActivation(
                    site,
                    str(producer.target),
                    calls[producer],
                    "output",
                    fn=act,
                    copy_input=inplace and type(act) is not nn.ReLU,  # ReLU's backward uses its output only
                    channels_last=channels_last,
                ),
                node,
            )
            continue
        consumer = _consumer(node, order)
        if consumer is not None:
            user, index = consumer
            yield (
                FunctionalActivation(
                    site, str(user.target), calls[user], "input", arg=index, channels_last=channels_last
                ),
                node,
            )
            continue
        unrecordable.append(site)


def _predecessor_kind(model: nn.Module, node: fx.Node) -> str | None:
    """``"conv"``/``"linear"``/``"other"`` for the nearest weighted layer feeding ``node``, or None."""
    queue, visited = list(node.all_input_nodes), set[fx.Node]()
    while queue and len(visited) < _SEARCH_LIMIT:
        cur = queue.pop(0)
        if cur in visited:
            continue
        visited.add(cur)
        if cur.op == "call_module":
            mod = model.get_submodule(str(cur.target))
            if isinstance(mod, CONV_TYPES):
                return "conv"
            if isinstance(mod, nn.Linear):
                return "linear"
            if isinstance(mod, _OTHER_WEIGHTED):
                return "other"
        elif cur.op == "call_function" and cur.target in _CONV_FUNCTIONS:
            return "conv"
        elif cur.op == "call_function" and cur.target is F.linear:
            return "linear"
        queue.extend(cur.all_input_nodes)
    return None


def _consumer(node: fx.Node, order: dict[fx.Node, int]) -> tuple[fx.Node, int] | None:
    """The first module call taking ``node`` as a positional argument, if no in-place op comes first."""
    for user in sorted(node.users, key=order.__getitem__):
        if user.op == "call_module" and node in user.args:
            return user, user.args.index(node)
        if _is_inplace(user):
            return None
    return None


def _is_inplace(node: fx.Node) -> bool:
    if node.kwargs.get("inplace") is True or node.target in _INPLACE_OPERATORS:
        return True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return name.endswith("_") and not name.startswith("_")
