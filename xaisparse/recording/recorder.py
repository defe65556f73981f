"""``ActivationRecorder``: forward hooks that hand live activations to callbacks."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from xaisparse.recording.functional import FunctionalActivation, TracedActivations, trace_activations
from xaisparse.recording.selection import (
    LayerSelector,
    _activation_kinds,
    default_activation_layers,
    select_sites,
)
from xaisparse.recording.sites import call_site_name

__all__ = ["ActivationRecorder", "Callback"]

#: A sink: ``callback(call_site_name, output_tensor)``; called during the forward pass.
Callback = Callable[[str, torch.Tensor], Any]


class ActivationRecorder:
    """Calls ``callback(name, output)`` for every output of the selected layers.

    Nothing is registered on construction. ``attach()`` registers the hooks (idempotent),
    ``detach()`` removes all of them, and ``with ActivationRecorder(...) as rec:`` does both,
    also when the body raises. ``with rec.paused():`` stops calling callbacks for a while.
    The model is left as it was: no attributes, no replaced modules, and its hook
    dictionaries are empty again after ``detach()``.

    Call sites: a module called several times in one forward of ``model`` (torchvision's
    ResNet ``BasicBlock`` applies its single ``relu`` twice) reports each call under its own
    name: ``"layer1.0.relu"``, then ``"layer1.0.relu#2"``, ``"#3"``, ... Counters restart at
    every forward of ``model``; a selected module called directly, outside a forward of
    ``model``, always reports its plain name.

    Outputs: a tensor output is passed as is; for a tuple/list output (e.g. ``nn.LSTM``) the
    first tensor element is passed; any other output (dict, None, ...) raises ``TypeError``
    naming the layer as soon as a callback would receive it.

    Tensors are passed live: **not detached** (with grad enabled they carry the autograd
    graph, which the differentiable penalty relies on) and **not copied**. Callbacks must
    consume them immediately (compute a statistic, or a penalty term) and must not keep
    references across steps: the recorder stores no activations, and the tensor of an
    ``inplace=True`` module may be modified in place by later operations of the forward.
    Values seen at hook time are those of the layer's output.

    Default selection (``layers=None``): the activation modules after convolutions
    (:func:`~xaisparse.recording.default_activation_layers`). A model that has none gets, instead,
    its position-wise activation modules after an ``nn.Linear`` (ConvNeXt, Swin, ViT MLPs;
    :func:`~xaisparse.recording.positionwise_activation_layers`), kept only where the output has a
    grid of 3 or more dims and (by the fx trace) depends on the model's input, and its functional
    activation calls found with ``torch.fx`` (:func:`~xaisparse.recording.find_functional_activations`;
    GoogLeNet, Inception v3, models written with ``F.relu``), recorded on the model itself; see
    :attr:`functional_sites`.

    Channels-last: the output of an ``nn.Linear``, or of an activation that follows one, has its
    channels (the Linear's output features) on the last axis. When it has 3 or more dims, e.g.
    ``(N, H, W, C)`` in ConvNeXt, it is passed as the view ``movedim(-1, 1)``, i.e. ``(N, C, H, W)``,
    so every sink sees channels on axis 1; ``(N, F)`` outputs are passed as they are.

    Wrappers: an ``nn.DataParallel`` or ``DistributedDataParallel`` model is recorded through its
    ``.module``, a ``torch.compile``d one through the original module (same names as the bare
    model). ``DataParallel`` over several GPUs runs replicas of the model in threads, which cannot
    be recorded: their forward raises a ``RuntimeError`` saying so. Under ``torch.compile`` the
    hooks run eagerly (a graph break at each hooked call), so sinks get the real tensors.

    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    >>> seen = {}
    >>> with ActivationRecorder(net, callback=lambda n, a: seen.update({n: a.shape})) as rec:
    ...     _ = net(torch.randn(5, 1, 4, 4))
    >>> seen
    {'1': torch.Size([5, 2, 2, 2])}
    >>> rec.modules, rec.layer_names, rec.attached
    (['1'], ['1'], False)
    """

    def __init__(
        self,
        model: nn.Module,
        layers: LayerSelector = None,
        *,
        callback: Callback | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        model = _unwrap(model)
        self.model = model
        modules, channels_last, grid_only, functional, calls = _resolve(model, layers)
        self._modules: list[str] = modules
        self._selected = frozenset(modules)
        self._only_calls = calls  # modules recorded at some of their calls only ("act#2")
        self._unchecked_calls = bool(calls)  # whether the first forward has shown those calls exist
        self._channels_last = frozenset(channels_last)
        self._grid_only = frozenset(grid_only)
        self._functional = functional
        self._taps: dict[str, dict[int, list[FunctionalActivation]]] = {}  # at a module call's output
        self._input_taps: dict[str, dict[int, list[FunctionalActivation]]] = {}  # at its input
        for act in functional:
            taps = self._taps if act.where == "output" else self._input_taps
            taps.setdefault(act.module, {}).setdefault(act.call, []).append(act)
        self._callbacks: list[Callback] = []
        if callback is not None:
            self.add_callback(callback)
        self._handles: list[RemovableHandle] = []
        self._paused = False
        self._depth = 0  # nesting depth of forwards of the root model
        self._counts: dict[str, int] = {}  # calls per module within the current root forward
        self._input_counts: dict[str, int] = {}  # the same, for the modules read at their input
        self._layer_names: list[str] = []
        self._seen: set[str] = set()

    # -- selection -----------------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        """Names of the selected modules (known right after construction)."""
        return list(self._modules)

    @property
    def functional_sites(self) -> list[str]:
        """Names of the functional activation calls recorded by the default selection (may be empty)."""
        return [act.site for act in self._functional]

    @property
    def functional_activations(self) -> list[FunctionalActivation]:
        """Where each functional activation call is taken (module, call, output or input)."""
        return list(self._functional)

    @property
    def layer_names(self) -> list[str]:
        """Call-site names seen so far (``"a.relu"``, ``"a.relu#2"``), in order of first call."""
        return list(self._layer_names)

    # -- sinks ---------------------------------------------------------------------------------
    def add_callback(self, fn: Callback) -> Callback:
        """Add a sink ``fn(name, tensor)``; returns ``fn`` (usable as a decorator)."""
        if not callable(fn):
            raise TypeError(f"callback must be callable as fn(name, tensor), got {type(fn).__name__}")
        self._callbacks.append(fn)
        return fn

    def remove_callback(self, fn: Callback) -> None:
        """Remove a sink added before; ``ValueError`` if it is not registered."""
        try:
            self._callbacks.remove(fn)
        except ValueError:
            raise ValueError(f"callback {fn!r} is not registered on this recorder") from None

    # -- lifecycle -----------------------------------------------------------------------------
    @property
    def attached(self) -> bool:
        """Whether hooks are currently registered."""
        return bool(self._handles)

    def attach(self) -> ActivationRecorder:
        """Register the hooks; calling it again first removes the old ones (one set only)."""
        self.detach()
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._enter_root))
            self._handles.append(self.model.register_forward_hook(self._exit_root, always_call=True))
            for name in dict.fromkeys([*self._modules, *self._taps]):
                module = self.model.get_submodule(name)
                hook = functools.partial(self._on_output, name)
                self._handles.append(module.register_forward_hook(hook))
            for name in self._input_taps:
                pre_hook = functools.partial(self._on_input, name)
                self._handles.append(self.model.get_submodule(name).register_forward_pre_hook(pre_hook))
        except BaseException:
            self.detach()
            raise
        return self

    def detach(self) -> None:
        """Remove every hook this recorder registered (safe to call when not attached)."""
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.remove()
        self._depth = 0
        self._counts = {}
        self._input_counts = {}

    def __enter__(self) -> ActivationRecorder:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    @contextmanager
    def paused(self) -> Iterator[ActivationRecorder]:
        """Temporarily stop calling callbacks; hooks stay registered."""
        before, self._paused = self._paused, True
        try:
            yield self
        finally:
            self._paused = before

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return f"ActivationRecorder({type(self.model).__name__}, modules={self._modules}, {state})"

    # -- hooks ---------------------------------------------------------------------------------
    # Each hook runs eagerly under torch.compile: while dynamo traces, ``is_compiling()`` is True
    # and the call goes to the ``torch.compiler.disable``d twin, a graph break. In eager mode the
    # check costs ~0.3 µs, a quarter of going through the disabled wrapper every time. The twins
    # are made on first use (see ``_eager``): ``torch.compiler.disable`` imports torch._dynamo,
    # which costs more than importing torch itself, and only a compiled model needs it.
    def _enter_root(self, module: nn.Module, args: object) -> None:
        if torch.compiler.is_compiling():
            return _eager("_enter_root")(self, module, args)
        if module is not self.model:
            raise RuntimeError(
                f"{type(self.model).__name__} is running as a copy (nn.DataParallel over several GPUs runs "
                f"replicas in threads), which the activation recorder cannot follow; use "
                f"DistributedDataParallel (one process per GPU), or measure and penalise on one device"
            )
        if self._depth == 0:
            self._counts = {}
            self._input_counts = {}
        self._depth += 1

    def _exit_root(self, module: nn.Module, args: object, output: object) -> None:
        if torch.compiler.is_compiling():
            return _eager("_exit_root")(self, module, args, output)
        self._depth = max(self._depth - 1, 0)
        if self._depth == 0 and self._unchecked_calls:
            self._check_calls()

    def _on_output(self, name: str, module: nn.Module, args: object, output: object) -> None:
        if torch.compiler.is_compiling():
            return _eager("_on_output")(self, name, module, args, output)
        if self._depth > 0:
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
        else:
            count = 1
        only = self._only_calls.get(name)
        if name in self._selected and (only is None or count in only):
            tensor = _first_tensor(output)
            if tensor is None:
                self._note(call_site_name(name, count))
                if self._paused or not self._callbacks:
                    return
                raise TypeError(
                    f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}; the "
                    f"recorder needs a tensor or a tuple/list whose elements include a tensor"
                )
            self._deliver(call_site_name(name, count), tensor, name in self._channels_last, name in self._grid_only)
        taps = self._taps.get(name)
        if taps and isinstance(output, Tensor):
            for act in taps.get(count, ()):
                value = output if self._paused or not self._callbacks else act.value(output)
                self._deliver(act.site, value, act.channels_last, act.channels_last)

    def _check_calls(self) -> None:
        """After the first forward: warn about a call site (``"act#3"``) that the forward did not reach."""
        self._unchecked_calls = False
        for name, calls in self._only_calls.items():
            ran = self._counts.get(name, 0)
            missing = sorted(c for c in calls if c > ran)
            if missing:
                warnings.warn(
                    f"layers= names call {missing} of {name!r} ({', '.join(call_site_name(name, c) for c in missing)}), "
                    f"but {name!r} ran {ran} time(s) in this forward of {type(self.model).__name__}: nothing is "
                    f"recorded there",
                    UserWarning,
                    stacklevel=2,
                )

    def _on_input(self, name: str, module: nn.Module, args: tuple[object, ...]) -> None:
        if torch.compiler.is_compiling():
            return _eager("_on_input")(self, name, module, args)
        if self._depth > 0:
            count = self._input_counts.get(name, 0) + 1
            self._input_counts[name] = count
        else:
            count = 1
        for act in self._input_taps[name].get(count, ()):
            value = args[act.arg] if act.arg < len(args) else None
            if isinstance(value, Tensor):
                self._deliver(act.site, value, act.channels_last, act.channels_last)

    def _note(self, site: str) -> None:
        if site not in self._seen:
            self._seen.add(site)
            self._layer_names.append(site)

    def _deliver(self, site: str, tensor: Tensor, channels_last: bool, grid_only: bool) -> None:
        if tensor.dim() < 3:
            if grid_only:
                return  # a position-wise candidate acting on (N, F) vectors: a classifier head
        elif channels_last:
            tensor = tensor.movedim(-1, 1)  # (N, ..., C) -> (N, C, ...): a view
        self._note(site)
        if self._paused or not self._callbacks:
            return
        for fn in tuple(self._callbacks):
            fn(site, tensor)


_EAGER: dict[str, Callable[..., None]] = {}


def _eager(hook: str) -> Callable[..., None]:
    """The ``torch.compiler.disable``d twin of the hook method ``hook``, made on first use.

    Called only while dynamo traces (so torch._dynamo is loaded anyway); dynamo runs the twin
    eagerly, a graph break, also on the first call, when the twin is made inside the trace.
    """
    twin = _EAGER.get(hook)
    if twin is None:
        twin = _EAGER[hook] = torch.compiler.disable(getattr(ActivationRecorder, hook))
    return twin


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``nn.DataParallel`` / ``DistributedDataParallel`` / ``torch.compile`` (same names)."""
    while True:
        inner = None
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        elif type(model).__name__ == "OptimizedModule":  # torch.compile's (by name: torch._dynamo is slow to import)
            inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _resolve(
    model: nn.Module, layers: LayerSelector
) -> tuple[list[str], set[str], set[str], list[FunctionalActivation], dict[str, frozenset[int]]]:
    """Selected modules, those whose output is channels-last, those kept only on a grid, functional
    calls, and the modules recorded at some of their calls only."""
    kinds, n_conv = _activation_kinds(model)
    linear_like = {n for n, kind in kinds.items() if kind == "linear"}
    if layers is not None:
        traced: list[TracedActivations] = []

        def functional_sites() -> list[str]:
            if not traced:
                try:
                    traced.append(trace_activations(model, stacklevel=6))
                except TypeError:
                    traced.append(TracedActivations([], frozenset()))
            return [act.site for act in traced[0].functional]

        sel = select_sites(model, layers, functional_sites)
        channels_last = {n for n in sel.modules if n in linear_like or isinstance(model.get_submodule(n), nn.Linear)}
        chosen = set(sel.functional)
        functional = [act for act in traced[0].functional if act.site in chosen] if chosen else []
        return sel.modules, channels_last, set(), functional, sel.calls
    if n_conv == 0:
        default_activation_layers(model)  # raises its no-convolution error
    conv = [n for n, kind in kinds.items() if kind == "conv"]
    positional = [n for n in kinds if n in linear_like]
    failure: TypeError | None = None
    try:
        found = trace_activations(model, stacklevel=4)  # the warning names the caller's line
    except TypeError as err:
        found, failure = TracedActivations([], frozenset()), err
    # squeeze-excitation gates and other activations of globally pooled features have no spatial extent
    features = [act for act in found.functional if act.site not in found.pooled]
    if conv:
        modules = [n for n in conv if n not in found.pooled] or conv
        functional = [act for act in features if not act.channels_last]  # after a convolution
        if failure is not None:
            warnings.warn(
                f"{type(model).__name__}: recording its {len(modules)} activation module(s) after convolutions; "
                f"functional activation calls (F.relu, ...) among them could not be searched for, so any are left "
                f"out: {failure}. Pass layers= to choose the layers explicitly",
                UserWarning,
                stacklevel=4,
            )
        return modules, set(), set(), functional, {}
    positional = [n for n in positional if n not in found.input_independent]
    if not positional and not features:
        reason = (
            f"tracing it with torch.fx to find functional activation calls failed ({failure})"
            if failure
            else "torch.fx found no functional activation call (F.relu, torch.relu, x.relu(), F.gelu, ...) after one"
        )
        raise ValueError(
            f"{type(model).__name__} has {n_conv} convolution layer(s) but no activation module after one, "
            f"and {reason}. Pass layers= explicitly: layers=nn.Conv2d records the convolution outputs "
            f"(sparsity then uses |a|); or build the recorder on expose_functional_activations(model)."
        ) from failure
    if failure is not None:
        warnings.warn(
            f"{type(model).__name__}: recording its {len(positional)} position-wise activation module(s) only; "
            f"functional activation calls (F.relu, ...) could not be searched for: {failure}",
            UserWarning,
            stacklevel=4,
        )
    return positional, set(positional), set(positional), features, {}


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None
