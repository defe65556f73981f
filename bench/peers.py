"""Peers of the monitor for ``bench/overhead.py``: other ways to get per-layer sparsity from a model.

Every peer measures the same thing on an evaluation pass: the mean perplexity sparsity of each
selected module's feature maps (docs/measure.md; a dead map counts as 1), pooled over the module's
calls. Each is a context manager (hooks on, hooks off) with ``means()`` for the agreement check
against the monitor on one batch. The monitor itself computes much more per batch (histograms,
std, dead and non-finite counts, the channel and sample axes); the peers compute only the mean.

* :class:`ScipyPerChannel`: research-code habit: forward hooks, ``.detach().cpu().numpy()``,
  one ``scipy.stats.entropy`` call per channel (vectorised over the samples).
* :class:`NumpyVectorised`: the same, one ``scipy.stats.entropy`` call per layer over all maps.
* :class:`TorchMeanHook`: a plain hand-written torch hook computing only the mean, on device.
* :class:`CaptumPostHoc`: Captum's ``LayerActivation`` returns the activations (it runs the
  forward itself), the mean is computed afterwards with the same torch formula.
* :class:`TorchLensPostHoc`: ``torchlens.trace`` logs the forward (every op; only the selected
  modules' outputs saved), the mean is computed afterwards from the saved activations.
* :class:`CompiledMonitor`: the monitor's recorder and estimators with ``LayerSparsity(compile=True)``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial

import numpy as np
import scipy.stats
import torch
from torch import nn

from xaisparse.estimators import LayerSparsity
from xaisparse.recording import ActivationRecorder, call_site_base


class _Pooled:
    """Running sums of map sparsity per module."""

    def __init__(self) -> None:
        self.sums: dict[str, float | torch.Tensor] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)

    def add(self, name: str, total: float | torch.Tensor, count: int) -> None:
        self.sums[name] += total
        self.counts[name] += count

    def means(self) -> dict[str, float]:
        return {k: float(self.sums[k]) / self.counts[k] for k in self.sums}

    def clear(self) -> None:
        self.sums.clear()
        self.counts.clear()


def torch_map_sparsity(out: torch.Tensor) -> torch.Tensor:
    """Per-map perplexity sparsity ``(N, C)`` written the way a user would write it in torch."""
    a = out.detach().abs().flatten(2)
    p = a / a.sum(-1, keepdim=True).clamp_min(1e-30)
    h = -(p * torch.log(p.clamp_min(1e-30))).sum(-1)
    return 1 - (h.exp() - 1) / (a.shape[-1] - 1)


def _numpy_map_sparsity(acts: np.ndarray) -> np.ndarray:
    """Per-map sparsity of ``(M, L)`` maps in one ``scipy.stats.entropy`` call (dead maps: 1)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        h = scipy.stats.entropy(acts, axis=1)  # NaN for a dead map
    s = 1.0 - (np.exp(h) - 1.0) / (acts.shape[1] - 1)
    s[acts.sum(axis=1) == 0] = 1.0
    return s


class _HookPeer:
    """Forward hooks on the selected modules calling ``self._hook(name, output)``."""

    #: which calls of a module the peer sees: "all", or "last" (Captum keeps one output per module)
    calls = "all"
    #: timed after the others, in an interleave of its own (it changes torch for later calls)
    isolated = False

    def __init__(self, model: nn.Module, layer_names: list[str]) -> None:
        self.model, self.layer_names = model, layer_names
        self.pooled = _Pooled()
        self.handles: list = []

    def __enter__(self):  # type: ignore[no-untyped-def]
        for name in self.layer_names:
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_hook(partial(self._on, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _on(self, name: str, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        self._hook(name, output)

    def _hook(self, name: str, output: torch.Tensor) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> None:
        self.model(x)

    def means(self) -> dict[str, float]:
        return self.pooled.means()


class ScipyPerChannel(_HookPeer):
    """NumPy copies in forward hooks, ``scipy.stats.entropy`` once per channel."""

    def _hook(self, name: str, output: torch.Tensor) -> None:
        acts = output.detach().cpu().numpy()
        n, c = acts.shape[:2]
        acts = np.abs(acts.reshape(n, c, -1))
        for ch in range(c):
            self.pooled.add(name, float(_numpy_map_sparsity(acts[:, ch, :]).sum()), n)


class NumpyVectorised(_HookPeer):
    """NumPy copies in forward hooks, one ``scipy.stats.entropy`` call over all maps of the layer."""

    def _hook(self, name: str, output: torch.Tensor) -> None:
        acts = output.detach().cpu().numpy()
        n, c = acts.shape[:2]
        self.pooled.add(name, float(_numpy_map_sparsity(np.abs(acts.reshape(n * c, -1))).sum()), n * c)


class TorchMeanHook(_HookPeer):
    """A hand-written torch hook: only the mean map sparsity, summed on the device."""

    def _hook(self, name: str, output: torch.Tensor) -> None:
        s = torch_map_sparsity(output)
        self.pooled.add(name, s.sum(), s.numel())  # a device tensor: no host sync per batch


class CaptumPostHoc(_HookPeer):
    """Captum ``LayerActivation`` (it runs the forward), then the torch mean per layer.

    Captum keeps one output per module: of a module called twice in a forward (torchvision's
    ResNet applies each block's ReLU twice) it returns the last call only.
    """

    calls = "last"

    def __enter__(self):  # type: ignore[no-untyped-def]
        from captum.attr import LayerActivation

        self.layer_activation = LayerActivation(self.model, [self.model.get_submodule(n) for n in self.layer_names])
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def forward(self, x: torch.Tensor) -> None:
        outs = self.layer_activation.attribute(x)
        for name, out in zip(self.layer_names, outs):
            s = torch_map_sparsity(out)
            self.pooled.add(name, s.sum(), s.numel())


class TorchLensPostHoc(_HookPeer):
    """``torchlens.trace`` with only the selected modules' outputs saved, then the torch mean.

    TorchLens wraps every torch function on its first trace and leaves them wrapped (its
    default, the cheap mode for repeated traces), which slows every later torch call and stops
    ``torch.compile``'s caches from matching. So it is timed last, in an interleave of its own
    with plain and ours, and :meth:`restore` unwraps torch afterwards.
    """

    isolated = True

    def __enter__(self):  # type: ignore[no-untyped-def]
        import torchlens as tl

        selector = tl.module(self.layer_names[0])
        for name in self.layer_names[1:]:
            selector = selector | tl.module(name)
        self.trace = partial(tl.trace, save=selector)
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def restore(self) -> None:
        """Unwrap the torch functions again (one more trace, with ``unwrap_when_done``)."""
        import torchlens as tl
        from torchlens.options import CaptureOptions

        with torch.no_grad():
            tl.trace(self.model, self._last_x[:1], capture=CaptureOptions(unwrap_when_done=True))

    def forward(self, x: torch.Tensor) -> None:
        self._last_x = x
        trace = self.trace(self.model, x)
        wanted = set(self.layer_names)
        for layer in trace.saved_layers:  # also the model's buffers: TorchLens saves those too
            for name in wanted.intersection(layer.output_of_modules):  # one entry per call of the module
                s = torch_map_sparsity(layer.out)
                self.pooled.add(name, s.sum(), s.numel())


class CompiledMonitor:
    """The monitor's recorder and one ``LayerSparsity(compile=True)`` per call site."""

    def __init__(self, model: nn.Module, layer_names: list[str], bins: int = 20) -> None:
        self.model, self.bins = model, bins
        self.recorder = ActivationRecorder(model, layer_names, callback=self._on)
        self.estimators: dict[str, LayerSparsity] = {}

    def _on(self, name: str, x: torch.Tensor) -> None:
        est = self.estimators.get(name)
        if est is None:
            est = self.estimators[name] = LayerSparsity(int(x.shape[1]), self.bins, compile=True).to(x.device)
        est.update(x)

    def __enter__(self) -> CompiledMonitor:
        self.recorder.attach()
        return self

    def __exit__(self, *exc: object) -> None:
        self.recorder.detach()

    def forward(self, x: torch.Tensor) -> None:
        self.model(x)

    def means(self) -> dict[str, float]:
        return pooled_means((site, est.compute()) for site, est in self.estimators.items())


def pooled_means(outputs: Iterable[tuple[str, dict[str, torch.Tensor]]]) -> dict[str, float]:
    """Mean map sparsity per module from estimator outputs per call site (a module's calls pooled)."""
    pooled = _Pooled()
    for site, out in outputs:
        total = float((out["spatial_mean"].nan_to_num() * out["spatial_count"]).sum())
        pooled.add(call_site_base(site), total, int(out["spatial_count"].sum()))
    return pooled.means()


#: name in the table -> (constructor, what it is)
PEERS: dict[str, tuple[Callable[[nn.Module, list[str]], object], str]] = {
    "NumPy/SciPy hooks, per channel": (ScipyPerChannel, "hooks + .cpu().numpy() + scipy.stats.entropy per channel"),
    "NumPy/SciPy hooks, vectorised": (NumpyVectorised, "hooks + .cpu().numpy() + one scipy.stats.entropy per layer"),
    "torch hook, mean only": (TorchMeanHook, "hand-written torch forward hook, mean sparsity only"),
    "Captum LayerActivation + post hoc": (CaptumPostHoc, "captum.attr.LayerActivation, then the torch mean"),
    "TorchLens trace + post hoc": (TorchLensPostHoc, "torchlens.trace(save=selected modules), then the torch mean"),
}


def peer_runner(peer: object) -> Callable[[int, torch.Tensor], None]:
    """``run(k, x)``: k evaluation passes of ``peer`` on ``x`` (hooks on for the whole block)."""

    def run(k: int, x: torch.Tensor) -> None:
        ctx = peer if hasattr(peer, "__enter__") else contextlib.nullcontext()
        with ctx, torch.no_grad():
            for _ in range(k):
                peer.forward(x)  # type: ignore[attr-defined]

    return run
