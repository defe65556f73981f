"""``ChannelInspector``: one channel's feature maps on chosen images, with their sparsity.

The only widget that runs a model, hence the only one that imports torch (lazily, when it
is constructed: ``import xaisparse.widgets`` stays torch-free).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .. import plots
from ._base import FigureWidget, NoData, set_slider

if TYPE_CHECKING:  # pragma: no cover
    pass

__all__ = ["ChannelInspector", "load_model_checkpoint"]

#: Images kept for inspection (the first ones given); the forward pass runs on all of them once per layer.
MAX_POOL = 64
#: Feature maps drawn at once.
MAX_SHOWN = 8


def _torch() -> Any:
    import torch

    return torch


def load_model_checkpoint(model: Any, checkpoint: Any) -> Any:
    """Deprecated alias of :func:`xaisparse.checkpoint.load_weights`."""
    import warnings

    warnings.warn(
        "xaisparse.widgets.load_model_checkpoint is deprecated; use xaisparse.checkpoint.load_weights",
        DeprecationWarning,
        stacklevel=2,
    )
    from ..checkpoint import load_weights

    return load_weights(model, checkpoint)


def _as_images(images: Any) -> Any:
    torch = _torch()
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    elif isinstance(images, (list, tuple)) and images and all(isinstance(x, torch.Tensor) for x in images):
        images = torch.stack(list(images))
    if not isinstance(images, torch.Tensor):
        raise TypeError(
            f"images must be a tensor or array of shape (N, C, H, W) or (N, H, W), got {type(images).__name__}"
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dim() < 3 or images.shape[0] == 0:
        raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W) with N ≥ 1, got {tuple(images.shape)}")
    return images.float() if not images.is_floating_point() else images


class ChannelInspector(FigureWidget):
    """Feature maps of one layer's channel for chosen images, each titled with its sparsity.

    The layer's output is captured with :class:`~xaisparse.recording.ActivationRecorder`
    under ``torch.no_grad()`` with the model in eval mode (every module's training flag is
    restored afterwards); sparsity is :func:`~xaisparse.functional.perplexity_sparsity`
    along ``"spatial"``. With ``checkpoint`` the weights are loaded into a deep copy of the
    model (see :func:`~xaisparse.checkpoint.load_weights`); the model passed in is never changed.

    Controls: ``layer_dropdown`` (the recorder's default selection: the conv blocks'
    activations), ``channel_slider``, ``images_select`` (indices, up to 8 shown).
    """

    _title = "channel inspector"

    def __init__(
        self,
        model: Any,
        images: Any,
        layer: str | None = None,
        channel: int = 0,
        checkpoint: Any = None,
        *,
        indices: Sequence[int] | None = None,
    ) -> None:
        torch = _torch()
        from ..recording import ActivationRecorder
        from ..recording.selection import select_layers

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(channel, (int, np.integer)) or isinstance(channel, bool):
            raise TypeError(f"channel must be an int, got {type(channel).__name__}")
        imgs = _as_images(images)
        sticky: list[str] = []
        if imgs.shape[0] > MAX_POOL:
            sticky.append(f"{imgs.shape[0]} images given; the first {MAX_POOL} are offered.")
            imgs = imgs[:MAX_POOL]
        from ..checkpoint import load_weights

        self.model = load_weights(model, checkpoint) if checkpoint is not None else model
        self.images = imgs.detach().cpu()
        try:
            options = ActivationRecorder(self.model).modules
        except ValueError:
            options = []
        if layer is not None:
            if not isinstance(layer, str):
                raise TypeError(f"layer must be a module name (str), got {type(layer).__name__}")
            found = select_layers(self.model, [layer])  # UnknownLayerError with the closest names
            layer = found[0] if found else layer
            if layer not in options:
                options = [layer, *options]
        if not options:
            raise ValueError(
                "the model has no activation modules after convolutions to inspect; pass layer='<module name>'"
            )
        n = int(self.images.shape[0])
        chosen = list(range(min(4, n))) if indices is None else [int(i) for i in indices if 0 <= int(i) < n]
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self.layer_dropdown = widgets.Dropdown(options=options, value=layer or options[0], description="layer")
        self.channel_slider = widgets.IntSlider(value=0, min=0, max=0, description="channel", continuous_update=False)
        self.images_select = widgets.SelectMultiple(
            options=[(f"image {i}", i) for i in range(n)], value=tuple(chosen), description="images", rows=min(n, 5)
        )
        super().__init__([self.layer_dropdown, self.channel_slider, self.images_select])
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self._sync_channels(int(channel))
        if int(channel) != self.channel_slider.value:
            self._sticky.append(
                f"channel {channel} is out of range for {self.layer_dropdown.value!r}; showing channel "
                f"{self.channel_slider.value}."
            )
        self.refresh()

    # ------------------------------------------------------------------ model
    def activations(self, layer: str) -> tuple[np.ndarray, np.ndarray]:
        """``(maps, sparsity)`` of all images at ``layer``: ``(N, C, ...)`` and ``(N, C)`` arrays (cached)."""
        if layer in self._cache:
            return self._cache[layer]
        from ..attribution._inputs import model_device
        from ..functional import perplexity_sparsity
        from ..recording import capture_layer

        _, captured = capture_layer(self.model, self.images.to(model_device(self.model)), layer)
        if layer not in captured:
            raise NoData(f"layer {layer!r} was not called in the forward pass of the model.")
        out = captured[layer].float().cpu()
        if out.dim() < 3:
            raise NoData(
                f"layer {layer!r} outputs shape {tuple(out.shape)}: no spatial maps to inspect (need (N, C, H, W))."
            )
        sparsity = perplexity_sparsity(out, "spatial").numpy()
        self._cache[layer] = (out.numpy(), sparsity)
        return self._cache[layer]

    def _sync_channels(self, wanted: int | None = None) -> None:
        try:
            maps, _ = self.activations(self.layer_dropdown.value)
        except Exception:
            return  # the drawing shows the reason
        with self._hold():
            value = self.channel_slider.value if wanted is None else wanted
            set_slider(self.channel_slider, 0, maps.shape[1] - 1, value)

    def _controls_changed(self, change: dict[str, Any]) -> None:
        if change["owner"] is self.layer_dropdown:
            self._sync_channels()

    def _describe(self) -> str:
        return (
            f"ChannelInspector(layer={self.layer_dropdown.value!r}, channel={self.channel_slider.value}, "
            f"images={list(self.images_select.value)})"
        )

    # ------------------------------------------------------------------ drawing
    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        layer, channel = self.layer_dropdown.value, int(self.channel_slider.value)
        maps, sparsity = self.activations(layer)
        chosen = list(self.images_select.value)
        if len(chosen) > MAX_SHOWN:
            notes.append(f"{len(chosen)} images selected; the first {MAX_SHOWN} are shown.")
            chosen = chosen[:MAX_SHOWN]
        return plots.channel_maps(self.images.numpy(), maps, sparsity, channel, chosen, layer, data=self.data)
