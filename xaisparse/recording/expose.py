"""``expose_functional_activations``: turn ``F.relu``-style calls into hookable modules."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from xaisparse.recording.modes import evaluating

__all__ = ["expose_functional_activations"]

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
    new activation module (``nn.ReLU()``, ``nn.GELU(...)``, ...) registered under the fx node
    name (``"relu"``, ``"relu_1"``, ...). Build the ``ActivationRecorder`` on the returned
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
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    try:
        traced = fx.symbolic_trace(model)
    except Exception as err:
        raise TypeError(
            f"{type(model).__name__} cannot be traced by torch.fx ({type(err).__name__}: {err}); "
            f"record the convolution outputs instead with "
            f"ActivationRecorder(model, layers=nn.Conv2d) (sparsity then uses |a|)"
        ) from err

    replaced = 0
    for node in list(traced.graph.nodes):
        if node.op not in ("call_function", "call_method"):
            continue
        module = _module_for(node)
        if module is None:
            continue
        name, k = node.name, 1
        while hasattr(traced, name):
            name, k = f"{node.name}_act{k}", k + 1
        module.train(model.training)
        traced.add_submodule(name, module)
        node.op, node.target = "call_module", name
        node.args, node.kwargs = (node.args[0],), {}
        replaced += 1
    if replaced == 0:
        warnings.warn(
            f"expose_functional_activations found no functional activation call in "
            f"{type(model).__name__}; the returned GraphModule is a plain trace",
            stacklevel=2,
        )
    traced.graph.lint()
    # Rebuild so that submodules are registered in graph (execution) order: the default
    # selection reads registration order. Leaf modules and parameters stay shared.
    exposed = fx.GraphModule(traced, traced.graph, class_name=type(model).__name__)
    shared = {id(m) for m in model.modules()}
    for m in exposed.modules():  # new containers follow the model; shared leaves are untouched
        if id(m) not in shared:
            m.training = model.training
    if example_input is not None:
        _check_same_output(model, exposed, example_input)
    return exposed


def _check_same_output(model: nn.Module, exposed: nn.Module, example_input: Any) -> None:
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with evaluating(model, exposed), torch.no_grad():
        expected = model(*args)
        got = exposed(*args)
    try:
        torch.testing.assert_close(got, expected)
    except AssertionError as err:
        raise ValueError(
            f"the exposed GraphModule does not reproduce {type(model).__name__}'s output on example_input: {err}"
        ) from None
