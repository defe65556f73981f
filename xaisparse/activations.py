"""Feature maps of a few images, with each map's perplexity sparsity: what a network "sees".

:func:`capture_feature_maps` runs a model once on a few images (eval mode, no gradients,
every module's training flag restored afterwards, every hook removed) and keeps the outputs
of the selected layers — by default the recorder's choice, the conv blocks' activations —
as NumPy arrays, with the ``spatial`` :func:`~xaisparse.functional.perplexity_sparsity` of
every map and which maps are dead (all zero). :func:`feature_maps_from` does the same for
activations captured elsewhere. :func:`xaisparse.plots.feature_maps` draws the result.

>>> import torch
>>> from xaisparse.models import SmallCNN
>>> torch.manual_seed(0) and None
>>> model = SmallCNN(in_channels=1, num_classes=10, depth=2, width=4, image_size=8)
>>> fm = capture_feature_maps(model, torch.rand(3, 1, 8, 8))
>>> fm.layers, fm.maps["features.block2.relu"].shape, fm.sparsity["features.block2.relu"].shape
(['features.block1.relu', 'features.block2.relu'], (3, 8, 4, 4), (3, 8))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["FeatureMaps", "capture_feature_maps", "feature_maps_from"]


@dataclass
class FeatureMaps:
    """Layer outputs of a few images and the sparsity of each map.

    ``images``: the inputs ``(N, C, H, W)`` (or None); ``maps[layer]``: ``(N, channels, h, w)``
    float32; ``sparsity[layer]``: ``(N, channels)`` spatial perplexity sparsity (1 for a dead
    map, NaN for a map holding NaN/Inf); ``dead[layer]``: ``(N, channels)``, True where the map
    is all zero (DESIGN §1 counts those apart). ``skipped``: selected layers whose output has
    no spatial extent (fewer than 3 dimensions), with their shape.
    """

    images: np.ndarray | None
    maps: dict[str, np.ndarray]
    sparsity: dict[str, np.ndarray]
    dead: dict[str, np.ndarray]
    skipped: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def layers(self) -> list[str]:
        """The layers with maps, in the order they were computed (network order when captured)."""
        return list(self.maps)

    def check_layer(self, layer: object) -> str:
        """``layer`` if it has maps; a ``ValueError`` naming the layers that do."""
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
        if layer not in self.maps:
            raise ValueError(f"no feature maps of layer {layer!r}; layers with maps: {self.layers}")
        return layer


def _as_array(value: Any, what: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().float().cpu().numpy()
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what} must be a torch.Tensor or a NumPy array, got {type(value).__name__}")
    return np.asarray(value, dtype=np.float32)


def feature_maps_from(maps: Mapping[str, Any], images: Any = None) -> FeatureMaps:
    """:class:`FeatureMaps` of activations captured elsewhere: ``maps[layer]`` is ``(N, channels, h, w)``.

    Tensors or arrays; the sparsity is computed with
    :func:`~xaisparse.functional.perplexity_sparsity` (``spatial``), dead maps are those summing
    to zero. A ``(N, channels, L)`` output counts as maps of one row.

    >>> fm = feature_maps_from({"conv": np.stack([np.ones((1, 2, 2)), np.eye(2)[None]]).astype("float32")})
    >>> fm.sparsity["conv"].round(3).tolist(), fm.dead["conv"].tolist()  # uniform; 2 of 4 pixels active
    ([[0.0], [0.667]], [[False], [False]])
    """
    import torch

    from .functional import perplexity_sparsity

    if not isinstance(maps, Mapping):
        raise TypeError(f"maps must be a dict layer -> (N, channels, h, w) activations, got {type(maps).__name__}")
    out: dict[str, np.ndarray] = {}
    sparsity: dict[str, np.ndarray] = {}
    dead: dict[str, np.ndarray] = {}
    skipped: dict[str, tuple[int, ...]] = {}
    n_images: int | None = None
    for layer, value in maps.items():
        arr = _as_array(value, f"maps[{layer!r}]")
        if arr.ndim < 3:
            skipped[str(layer)] = tuple(arr.shape)
            continue
        if arr.ndim == 3:
            arr = arr[:, :, None, :]
        if arr.ndim != 4:
            raise ValueError(f"maps[{layer!r}] must be (N, channels, h, w), got shape {tuple(arr.shape)}")
        if n_images is not None and arr.shape[0] != n_images:
            raise ValueError(f"maps[{layer!r}] holds {arr.shape[0]} images, the layers before it {n_images}")
        n_images = arr.shape[0]
        out[str(layer)] = arr
        with torch.no_grad():
            sparsity[str(layer)] = perplexity_sparsity(torch.from_numpy(arr), "spatial").numpy().astype(np.float64)
        dead[str(layer)] = ~np.any(arr.reshape(arr.shape[0], arr.shape[1], -1) != 0, axis=-1)
    imgs = None if images is None else _as_array(images, "images")
    if imgs is not None:
        if imgs.ndim == 3:
            imgs = imgs[:, None]
        if imgs.ndim != 4 or (n_images is not None and imgs.shape[0] != n_images):
            raise ValueError(
                f"images must be (N, C, H, W) with N = {n_images} (one per map), got shape {tuple(imgs.shape)}"
            )
    return FeatureMaps(imgs, out, sparsity, dead, skipped)


def capture_feature_maps(model: Any, images: Any, layers: Any = None) -> FeatureMaps:
    """Run ``model`` once on ``images`` and keep the selected layers' outputs and their sparsity.

    ``layers``: as for :class:`~xaisparse.recording.ActivationRecorder` (default: the conv
    blocks' activations). Eval mode under ``torch.no_grad()`` on the model's device; every
    module's training flag is restored and every hook removed afterwards, also after an
    error. A layer called several times per forward keeps its first call.
    """
    import torch

    from .recording import ActivationRecorder

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    x = images if isinstance(images, torch.Tensor) else torch.from_numpy(_as_array(images, "images"))
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or x.shape[0] == 0:
        raise ValueError(f"images must be (N, C, H, W) or (N, H, W) with N >= 1, got shape {tuple(x.shape)}")
    captured: dict[str, Any] = {}

    def grab(name: str, tensor: Any) -> None:
        if name not in captured:
            captured[name] = tensor.detach().float().cpu().clone()

    flags = [(m, m.training) for m in model.modules()]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    recorder = ActivationRecorder(model, layers, callback=grab)
    try:
        model.eval()
        with recorder, torch.no_grad():
            model(x.float().to(device))
    finally:
        for module, flag in flags:
            module.training = flag
    ordered = {name: captured[name] for name in _network_order(recorder.modules, captured)}
    return feature_maps_from(ordered, x)


def _network_order(modules: Sequence[str], captured: Mapping[str, Any]) -> list[str]:
    """Captured names in the recorder's (network) order, call sites after their module."""
    names = [m for m in modules if m in captured]
    return names + [n for n in captured if n not in names]
