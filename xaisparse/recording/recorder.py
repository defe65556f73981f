"""``ActivationRecorder``: forward hooks that hand live activations to callbacks."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from xaisparse.recording.selection import LayerSelector, select_layers

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
        self.model = model
        self._modules: list[str] = select_layers(model, layers)
        self._callbacks: list[Callback] = []
        if callback is not None:
            self.add_callback(callback)
        self._handles: list[RemovableHandle] = []
        self._paused = False
        self._depth = 0  # nesting depth of forwards of the root model
        self._counts: dict[str, int] = {}  # calls per module within the current root forward
        self._layer_names: list[str] = []
        self._seen: set[str] = set()

    # -- selection -----------------------------------------------------------------------------
    @property
    def modules(self) -> list[str]:
        """Names of the selected modules (known right after construction)."""
        return list(self._modules)

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
            for name in self._modules:
                module = self.model.get_submodule(name)
                hook = functools.partial(self._on_output, name)
                self._handles.append(module.register_forward_hook(hook))
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
    def _enter_root(self, module: nn.Module, args: object) -> None:
        if self._depth == 0:
            self._counts = {}
        self._depth += 1

    def _exit_root(self, module: nn.Module, args: object, output: object) -> None:
        self._depth = max(self._depth - 1, 0)

    def _on_output(self, name: str, module: nn.Module, args: object, output: object) -> None:
        if self._depth > 0:
            count = self._counts.get(name, 0) + 1
            self._counts[name] = count
            site = name if count == 1 else f"{name}#{count}"
        else:
            site = name
        if site not in self._seen:
            self._seen.add(site)
            self._layer_names.append(site)
        if self._paused or not self._callbacks:
            return
        tensor = _first_tensor(output)
        if tensor is None:
            raise TypeError(
                f"layer {name!r} ({type(module).__name__}) returned {type(output).__name__}; the "
                f"recorder needs a tensor or a tuple/list whose elements include a tensor"
            )
        for fn in tuple(self._callbacks):
            fn(site, tensor)


def _first_tensor(output: object) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    return None
