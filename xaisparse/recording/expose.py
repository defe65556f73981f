"""``expose_functional_activations``: turn ``F.relu``-style calls into hookable modules."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaisparse.recording.sites import call_site_name, functional_site_names

__all__ = ["SITE_MODULE", "expose_call_site", "expose_functional_activations"]

#: The name under which :func:`expose_call_site` registers the module standing for the call site.
SITE_MODULE = "xaisparse_call_site"

# target -> (module class, names of the positional parameters after the input)
_FUNCTIONS: dict[Any, tuple[type[nn.Module], tuple[str, ...]]] = {
    F.relu: (nn.ReLU, ("inplace",)),
    torch.relu: (nn.ReLU, ()),
    F.relu6: (nn.ReLU6, ("inplace",)),
    F.leaky_relu: (nn.LeakyReLU, ("negative_slope", "inplace")),
    F.elu: (nn.ELU, ("alpha", "inplace")),
    F.selu: (nn.SELU, ("inplace",)),
    F.celu: (nn.CELU, ("alpha", "inplace")),
    F.gelu: (nn.GELU, ("approximate",)),
    F.silu: (nn.SiLU, ("inplace",)),
    F.mish: (nn.Mish, ("inplace",)),
    F.hardswish: (nn.Hardswish, ("inplace",)),
    F.hardsigmoid: (nn.Hardsigmoid, ("inplace",)),
    F.softplus: (nn.Softplus, ("beta", "threshold")),
    F.sigmoid: (nn.Sigmoid, ()),
    torch.sigmoid: (nn.Sigmoid, ()),
    F.tanh: (nn.Tanh, ()),
    torch.tanh: (nn.Tanh, ()),
}
_INPLACE_FUNCTIONS: dict[Any, type[nn.Module]] = {
    torch.relu_: nn.ReLU,
    F.relu_: nn.ReLU,
    F.elu_: nn.ELU,
    F.leaky_relu_: nn.LeakyReLU,
}
_METHODS: dict[str, tuple[type[nn.Module], bool]] = {
    "relu": (nn.ReLU, False),
    "relu_": (nn.ReLU, True),
    "sigmoid": (nn.Sigmoid, False),
    "sigmoid_": (nn.Sigmoid, False),  # nn.Sigmoid has no inplace flag; see _module_for
    "tanh": (nn.Tanh, False),
    "tanh_": (nn.Tanh, False),
}


def _module_for(node: fx.Node) -> nn.Module | None:
    """The activation module equivalent to ``node``, or ``None`` if it is not one we handle."""
    if not node.args or not isinstance(node.args[0], fx.Node):
        return None
    extra_args, kwargs = node.args[1:], dict(node.kwargs)
    if node.op == "call_function" and node.target in _FUNCTIONS:
        cls, names = _FUNCTIONS[node.target]
        if len(extra_args) > len(names):
            return None
        kwargs.update(zip(names, extra_args))
    elif node.op == "call_function" and node.target in _INPLACE_FUNCTIONS:
        cls = _INPLACE_FUNCTIONS[node.target]
        if extra_args:
            return None
        kwargs["inplace"] = True
    elif node.op == "call_method" and node.target in _METHODS:
        cls, inplace = _METHODS[node.target]
        if extra_args or kwargs or node.target in ("sigmoid_", "tanh_"):
            return None  # in-place sigmoid/tanh have no module equivalent: leave them as they are
        if inplace:
            kwargs["inplace"] = True
    else:
        return None
    if any(isinstance(v, fx.Node) for v in kwargs.values()):
        return None  # a parameter computed in the forward: no constant module can stand for it
    try:
        return cls(**kwargs)
    except TypeError:
        return None


def expose_functional_activations(model: nn.Module, example_input: Any = None) -> fx.GraphModule:
    """A traced copy of ``model`` whose functional activations are modules you can record.

    Models that apply activations as functions (``F.relu(x)``, ``torch.relu(x)``,
    ``x.relu()``, ``F.gelu(x)``, ...) have no activation module to hook. This explicit
    alternative traces ``model`` with ``torch.fx`` and replaces each such call by a call to a
    new activation module (``nn.ReLU()``, ``nn.GELU(...)``, ...) registered under the call's
    site name, the name the recorder gives the call on ``model`` itself (``"relu"``, ``"relu#2"``,
    ``"layer1.0.relu"``, ``"gelu_fn"`` beside a module ``gelu``; see
    :func:`~xaisparse.recording.sites.functional_site_names`), so runs recorded on ``model`` and on
    the returned copy name their layers alike. Build the ``ActivationRecorder`` on the returned
    ``GraphModule``, and train or evaluate that one: it holds the **same** submodules,
    ``Parameter`` and buffer objects as ``model``, so training it trains ``model``. The
    original ``model`` object is not modified. Submodules are registered in execution order,
    so the default layer selection works on the result.

    Limits: ``model`` must be symbolically traceable (no data-dependent Python control flow);
    otherwise a ``TypeError`` explains the alternative ``layers=nn.Conv2d``. Calls with a
    parameter computed inside the forward, and in-place ``sigmoid_``/``tanh_`` methods, are
    left functional.

    If ``example_input`` is given (a tensor or a tuple of positional inputs), both models are
    run on it once in eval mode under ``torch.no_grad()`` (every module's training flag is
    restored afterwards) and a ``ValueError`` is raised if their outputs differ.

    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch import nn
    >>> class Net(nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.conv = nn.Conv2d(1, 2, 3)
    ...     def forward(self, x):
    ...         return F.relu(self.conv(x)).sum()
    >>> net = Net()
    >>> gm = expose_functional_activations(net, torch.randn(1, 1, 4, 4))
    >>> [name for name, _ in gm.named_children()]
    ['conv', 'relu']
    >>> gm.conv.weight is net.conv.weight
    True
    """
    traced = _symbolic_trace(model)
    if not _expose_functional(model, traced):
        warnings.warn(
            f"expose_functional_activations found no functional activation call in "
            f"{type(model).__name__}; the returned GraphModule is a plain trace",
            stacklevel=2,
        )
    exposed = _rebuild(model, traced)
    if example_input is not None:
        _check_same_output(model, exposed, example_input)
    return exposed


def expose_call_site(model: nn.Module, site: str) -> tuple[fx.GraphModule, nn.Module]:
    """A traced copy of ``model`` on which the call site ``site`` is a module of its own, called once.

    ``site`` is any name the recorder reports: a module's call (``"act"``, ``"act#2"`` for the
    second call of a module used twice in one forward) or a functional activation call
    (``"relu"``, ``"layer1.0.gelu#2"``). The copy shares every parameter with ``model`` and computes
    the same outputs; the returned module (registered under the name ``SITE_MODULE``) outputs exactly
    that call's value. Layer attributions (Captum hooks one module, and needs it to run once per
    forward) run on the copy. ``TypeError`` if ``model`` cannot be traced; ``UnknownLayerError``
    naming the call sites if ``site`` is none of them.
    """
    from xaisparse._errors import UnknownLayerError, closest

    traced = _symbolic_trace(model)
    _expose_functional(model, traced)
    counts: dict[str, int] = {}
    names: dict[fx.Node, str] = {}
    for node in traced.graph.nodes:
        if node.op == "call_module":
            target = str(node.target)
            counts[target] = counts.get(target, 0) + 1
            names[node] = call_site_name(target, counts[target])
    hit = next((node for node, name in names.items() if name == site), None)
    if hit is None:
        known = list(dict.fromkeys([*(n for n, _ in model.named_modules() if n), *names.values()]))
        shown = ", ".join(repr(n) for n in closest(site, known))
        raise UnknownLayerError(f"{type(model).__name__} has no layer named {site!r}; closest valid names: {shown}")
    wrapper = _CallSite(traced.get_submodule(str(hit.target)))
    traced.add_module(SITE_MODULE, wrapper)
    hit.target = SITE_MODULE
    exposed = _rebuild(model, traced)
    return exposed, exposed.get_submodule(SITE_MODULE)


class _CallSite(nn.Module):
    """One call of a module used several times: a module of its own, so that hooks see that call only."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, **kwargs)


class Tracer(fx.Tracer):
    """``torch.fx``'s tracer, with every normalisation layer that keeps running statistics as a leaf.

    Tracing runs the Python of each non-leaf module's ``forward``; a batch-norm subclass defined
    outside ``torch.nn`` (timm's ``BatchNormAct2d``) would then update its ``num_batches_tracked``
    buffer for real in train mode. As a leaf it is one opaque call: the model is left as it was.
    """

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, nn.modules.batchnorm._NormBase) or super().is_leaf_module(m, module_qualified_name)


def trace(model: nn.Module) -> fx.Graph:
    """The fx graph of ``model`` by :class:`Tracer` (the errors are fx's); ``model`` is left as it was."""
    with _no_new_attributes(model):
        return Tracer().trace(model)


@contextmanager
def _no_new_attributes(model: nn.Module) -> Iterator[None]:
    """Remove what the block adds to ``model``'s attributes: fx's tracer stores the tensor constants of
    a forward (MaxViT's relative-position tables) on the root module as ``_tensor_constant0``, ..."""
    before = set(vars(model))
    try:
        yield
    finally:
        for name in set(vars(model)) - before:
            delattr(model, name)


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        with _no_new_attributes(model):  # the GraphModule copies the constants it needs
            return fx.GraphModule(model, Tracer().trace(model), class_name=type(model).__name__)
    except Exception as err:
        raise TypeError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: {err}); "
            f"record the convolution outputs instead with "
            f"ActivationRecorder(model, layers=nn.Conv2d) (sparsity then uses |a|)"
        ) from err


def _expose_functional(model: nn.Module, traced: fx.GraphModule) -> int:
    """Replace each functional activation call of ``traced`` by a module named like its call site; how many."""
    module_names = {name for name, _ in model.named_modules()}
    sites = functional_site_names(traced.graph.nodes, module_names, lambda n: _module_for(n) is not None)
    shared = {id(m) for m in model.modules()}
    for node, site in sites.items():
        module = _module_for(node)
        if module is None:  # not reached: sites holds the nodes that have an activation module
            continue
        module.train(model.training)
        name = _install(traced, site, module, shared)
        node.op, node.target = "call_module", name
        node.args, node.kwargs = (node.args[0],), {}
    return len(sites)


def _rebuild(model: nn.Module, traced: fx.GraphModule) -> fx.GraphModule:
    """Rebuild so that submodules are registered in graph (execution) order: the default selection
    reads registration order. Leaf modules and parameters stay shared with ``model``."""
    traced.graph.lint()
    exposed = fx.GraphModule(traced, traced.graph, class_name=type(model).__name__)
    shared = {id(m) for m in model.modules()}
    for m in exposed.modules():  # new containers follow the model; shared leaves are untouched
        if id(m) not in shared:
            m.training = model.training
    return exposed


def _install(traced: fx.GraphModule, site: str, module: nn.Module, shared: set[int]) -> str:
    """Register ``module`` at the path ``site`` of ``traced`` (containers made as needed); its name.

    The containers of a traced copy are its own (fx copies only the modules it calls), so adding
    a child never changes the user's model. Should a container on the path be one of the model's
    own modules, the activation goes to the top level instead, with the dots made underscores.
    """
    *path, leaf = site.split(".")
    parent: nn.Module = traced
    for part in path:
        child = parent._modules.get(part)
        if child is None:
            child = nn.Module()
            parent.add_module(part, child)
        if id(child) in shared:
            flat = site.replace(".", "_")
            traced.add_module(flat, module)
            return flat
        parent = child
    parent.add_module(leaf, module)
    return site


def _check_same_output(model: nn.Module, exposed: nn.Module, example_input: Any) -> None:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    flags = {m: m.training for m in (*model.modules(), *exposed.modules())}
    try:
        model.eval()
        exposed.eval()
        with torch.no_grad():
            expected = model(*args)
            got = exposed(*args)
    finally:
        for m, flag in flags.items():
            m.training = flag
    try:
        torch.testing.assert_close(got, expected)
    except AssertionError as err:
        raise ValueError(
            f"the exposed GraphModule does not reproduce {type(model).__name__}'s output on example_input: {err}"
        ) from None
