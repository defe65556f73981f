"""Feature maps as small pictures, each titled with its perplexity sparsity.

:func:`feature_maps` draws every selected layer's maps of one image as a grid (one row of
small pictures per layer, the input beside them); :func:`channel_over_epochs` follows one
channel: its map on each of a few images and its sparsity over the epochs of a run. The maps
come from :func:`xaisparse.activations.capture_feature_maps` (or a model and images, or a dict
of captured activations); the sparsity in the titles is the one computed there with
:func:`~xaisparse.functional.perplexity_sparsity` (``spatial``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..activations import FeatureMaps
from ..history import History
from ._style import DEAD_COLOR, MINIMUM_COLOR, PALETTE, NoData, new_figure
from .channels import show_image

__all__ = ["MAP_ORDERS", "channel_over_epochs", "feature_maps"]

#: Channel orders of :func:`feature_maps`: by index, or sparsest first on the shown image.
MAP_ORDERS: tuple[str, ...] = ("index", "sparsity")
_GAP = 0.55  # room above each tile for its title, in tiles
_PAD = 0.12  # room between tiles, in tiles


def _as_feature_maps(source: Any, images: Any, layers: Any) -> Any:
    """A :class:`~xaisparse.activations.FeatureMaps` from a FeatureMaps, a dict of maps, or a model + images."""
    from ..activations import capture_feature_maps, feature_maps_from

    if isinstance(source, FeatureMaps):
        return source
    if isinstance(source, Mapping):
        return feature_maps_from(source, images)
    if hasattr(source, "named_modules") and callable(source):
        if images is None:
            raise TypeError("feature_maps(model, images): pass the images to run the model on")
        return capture_feature_maps(source, images, layers)
    raise TypeError(
        "source must be a FeatureMaps (xaisparse.activations.capture_feature_maps), a dict layer -> maps, "
        f"or a torch model with images, got {type(source).__name__}"
    )


def _scaled(fmap: np.ndarray, tile: int) -> np.ndarray:
    """One map min–max scaled to [0, 1] (a constant map is 0) and resized to ``tile × tile`` (nearest)."""
    fmap = np.asarray(fmap, dtype=np.float64)
    finite = fmap[np.isfinite(fmap)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    out = (fmap - lo) / (hi - lo) if hi > lo else np.zeros_like(fmap)
    rows = np.arange(tile) * fmap.shape[0] // tile
    cols = np.arange(tile) * fmap.shape[1] // tile
    return out[np.ix_(rows, cols)]


def _title(channel: int | None, sparsity: float, dead: bool) -> tuple[str, str]:
    """The text over one map and its colour: ``"3: 0.62"``, ``"3: dead"`` (red) or ``"3: nan"``."""
    prefix = "" if channel is None else f"{channel}: "
    if dead:
        return f"{prefix}dead", DEAD_COLOR
    return (f"{prefix}nan" if not math.isfinite(sparsity) else f"{prefix}{sparsity:.2f}"), "black"


def draw_tiles(
    ax: Axes,
    maps: Sequence[np.ndarray],
    titles: Sequence[tuple[str, str]],
    cols: int,
    tile: int,
    fontsize: float = 8,
    cmap: str = "magma",
) -> None:
    """Maps as one mosaic image on ``ax`` (``cols`` per row, each scaled to its own range) with titles."""
    rows = max(1, math.ceil(len(maps) / cols))
    step_x, step_y = tile * (1 + _PAD), tile * (1 + _GAP)
    height, width = int(math.ceil(rows * step_y)), int(math.ceil(cols * step_x))
    mosaic = np.full((height, width), np.nan)
    for k, fmap in enumerate(maps):
        r, c = divmod(k, cols)
        y0, x0 = int(round(r * step_y + tile * _GAP)), int(round(c * step_x))
        mosaic[y0 : y0 + tile, x0 : x0 + tile] = _scaled(fmap, tile)
        text, color = titles[k]
        ax.text(x0 + tile / 2, y0 - 0.5, text, ha="center", va="bottom", fontsize=fontsize, color=color)
    colors = matplotlib.colormaps[cmap].with_extremes(bad="white")
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=colors, vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def feature_maps(
    source: Any,
    images: Any = None,
    layers: Sequence[str] | None = None,
    *,
    image: int = 0,
    max_channels: int = 16,
    columns: int = 16,
    order: str = "index",
    title: str | None = None,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Each layer's feature maps of one image as a grid of small pictures titled ``channel: sparsity``.

    ``source``: a :class:`~xaisparse.activations.FeatureMaps`, a dict ``layer -> (N, channels,
    h, w)`` activations (tensors or arrays; ``images`` optional), or a torch model run on
    ``images`` (then ``layers`` selects as :class:`~xaisparse.recording.ActivationRecorder`
    does). ``layers`` also picks and orders the layers drawn. ``image`` indexes the images;
    each layer shows at most ``max_channels`` maps (by index, or sparsest first with
    ``order="sparsity"``), ``columns`` to a row, with a note saying how many were left out. Each map is scaled to
    its own range (black = its lowest value); a dead (all-zero) map is titled "dead" in red.
    ``data`` receives the shown channels, sparsity values, dead flags and title texts per layer.

    >>> import numpy as np
    >>> maps = {"conv": np.stack([np.eye(4), np.ones((4, 4)), np.zeros((4, 4))])[None].astype("float32")}
    >>> drawn = {}
    >>> fig = feature_maps(maps, data=drawn)
    >>> drawn["titles"]["conv"]  # 4 of 16 pixels active: 1 - (4 - 1)/(16 - 1)
    ['0: 0.80', '1: 0.00', '2: dead']
    """
    if order not in MAP_ORDERS:
        raise ValueError(f"order must be one of {list(MAP_ORDERS)}, got {order!r}")
    for name, value in (("max_channels", max_channels), ("columns", columns)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    fm = _as_feature_maps(source, images, layers)
    if layers is None or not isinstance(source, (Mapping, FeatureMaps)):  # a model: layers chose what was captured
        shown_layers = fm.layers
    else:
        shown_layers = [fm.check_layer(name) for name in layers]
    if not shown_layers:
        raise NoData("No layer with spatial feature maps to show.")
    notes = [] if notes is None else notes
    if fm.skipped:
        notes.append(f"layers without spatial maps are not shown: {fm.skipped}")
    n_images = fm.maps[shown_layers[0]].shape[0]
    if not isinstance(image, int) or isinstance(image, bool) or not 0 <= image < n_images:
        raise ValueError(f"image must be an int in [0, {n_images - 1}] (there are {n_images} images), got {image!r}")
    tile = max(max(fm.maps[name].shape[2:]) for name in shown_layers)
    tile = int(np.clip(tile, 8, 32))
    drawn: dict[str, Any] = {"image": image, "layers": shown_layers, "channels": {}, "sparsity": {}, "dead": {}}
    drawn["titles"] = {}
    per_layer = []
    for name in shown_layers:
        values, dead = fm.sparsity[name][image], fm.dead[name][image]
        channels = np.arange(values.size)
        if order == "sparsity":
            channels = np.argsort(np.where(np.isfinite(values), -values, np.inf), kind="stable")
        if channels.size > max_channels:
            notes.append(f"{name}: showing {max_channels} of {channels.size} channels ({order} order).")
            channels = channels[:max_channels]
        titles = [_title(int(c), float(values[c]), bool(dead[c])) for c in channels]
        drawn["channels"][name] = channels
        drawn["sparsity"][name] = values[channels]
        drawn["dead"][name] = dead[channels]
        drawn["titles"][name] = [t for t, _ in titles]
        per_layer.append((name, channels, titles))
    cols = min(columns, max(len(ch) for _, ch, _ in per_layer))
    rows = [max(1, math.ceil(len(ch) / cols)) for _, ch, _ in per_layer]
    width = 1.9 + cols * 0.62
    fig = new_figure(max(width, 5.0), 0.75 + sum(r * 0.78 for r in rows))
    grid = fig.add_gridspec(len(per_layer), 2, width_ratios=[1.2, cols * 0.62], height_ratios=rows)
    ax_in = fig.add_subplot(grid[:, 0])
    if fm.images is not None:
        show_image(ax_in, np.asarray(fm.images[image]))
        ax_in.set_title(f"image {image}", fontsize=9)
    ax_in.set_axis_off()
    for i, (name, channels, titles) in enumerate(per_layer):
        ax = fig.add_subplot(grid[i, 1])
        draw_tiles(ax, [fm.maps[name][image, c] for c in channels], titles, cols, tile)
        ax.set_ylabel(f"{name}\n({fm.maps[name].shape[1]} ch.)", fontsize=8, rotation=0, ha="right", va="center")
        ax.set_xlim(-0.5, cols * tile * (1 + _PAD))
    fig.suptitle(
        title or "feature maps, each titled channel: spatial sparsity (0 dense – 1 one unit); colours per map",
        fontsize=10,
    )
    if data is not None:
        data.update(drawn)
    return fig


def channel_over_epochs(
    maps: Any,
    layer: str,
    channel: int,
    *,
    history: History | None = None,
    epochs: Sequence[int] | None = None,
    per_image: np.ndarray | None = None,
    split: str = "test",
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """One channel: its map on each image (titled with its sparsity) and its sparsity over epochs.

    ``maps``: :class:`~xaisparse.activations.FeatureMaps` (or a dict of activations) of the
    latest epoch. Right panel: ``per_image`` ``(len(epochs), N)`` — this channel's sparsity on
    each image at each of ``epochs`` — as thin lines, and from ``history`` the channel's mean
    sparsity over the ``split`` probe set (thick) and its dead fraction (dashed, right axis).
    """
    fm = _as_feature_maps(maps, None, None)
    layer = fm.check_layer(layer)
    n_ch = fm.maps[layer].shape[1]
    if not isinstance(channel, int) or isinstance(channel, bool) or not 0 <= channel < n_ch:
        raise ValueError(f"channel must be an int in [0, {n_ch - 1}] ({layer} has {n_ch} channels), got {channel!r}")
    notes = [] if notes is None else notes
    n = fm.maps[layer].shape[0]
    tile = int(np.clip(max(fm.maps[layer].shape[2:]), 8, 32))
    values, dead = fm.sparsity[layer][:, channel], fm.dead[layer][:, channel]
    titles = [_title(None, float(v), bool(d)) for v, d in zip(values, dead)]
    fig = new_figure(max(1.25 * n + 5.6, 8.0), 3.4)
    grid = fig.add_gridspec(2, 2, width_ratios=[1.25 * n, 4.6], height_ratios=[1, 1.25])
    if fm.images is not None:
        ax_in = fig.add_subplot(grid[0, 0])
        inputs = [np.asarray(fm.images[i]).mean(axis=0) for i in range(n)]
        side = int(np.clip(max(inputs[0].shape), 8, 32))
        draw_tiles(ax_in, inputs, [("", "black")] * n, n, side, cmap="gray")
        ax_in.set_ylabel("input", fontsize=8)
    ax_maps = fig.add_subplot(grid[1, 0])
    draw_tiles(ax_maps, [fm.maps[layer][i, channel] for i in range(n)], titles, n, tile)
    ax_maps.set_ylabel(f"channel {channel}", fontsize=8)
    ax = fig.add_subplot(grid[:, 1])
    drawn: dict[str, Any] = {"layer": layer, "channel": channel, "sparsity": values, "dead": dead, "lines": {}}
    if per_image is not None and epochs is not None and len(epochs):
        per_image = np.asarray(per_image, dtype=np.float64)
        for i in range(per_image.shape[1]):
            color = PALETTE[i % len(PALETTE)]
            ax.plot(epochs, per_image[:, i], color=color, lw=1.0, alpha=0.8, label=f"image {i}", gid=f"image:{i}")
        drawn["lines"]["images"] = per_image
    if history is not None and not history.channels.empty:
        series = history.channel_series(split, layer, channel, "spatial_mean")
        if not series.empty:
            ax.plot(series.index, series.to_numpy(), color="black", lw=2.2, label=f"mean over the {split} probe")
            drawn["lines"]["probe"] = series
        frac = history.channel_series(split, layer, channel, "dead_fraction")
        if not frac.empty and np.nanmax(frac.to_numpy()) > 0:
            twin = ax.twinx()
            twin.plot(frac.index, frac.to_numpy(), color=DEAD_COLOR, ls="--", lw=1.2, label="dead fraction")
            twin.set_ylim(0, 1.02)
            twin.set_ylabel("dead fraction", color=DEAD_COLOR, fontsize=8)
            drawn["lines"]["dead"] = frac
        best = history.test_loss_minimum()
        if best is not None:
            ax.axvline(best[0], color=MINIMUM_COLOR, ls="--", lw=1.0, label=f"test-loss minimum ({best[0]})")
    if not drawn["lines"]:
        notes.append("no epochs recorded yet: the sparsity over epochs appears after the first epoch.")
    ax.set_ylim(-0.02, 1.02)
    if epochs is not None and len(epochs):
        ax.set_xlim(-0.5, max(1.5, float(max(epochs)) + 0.5))  # whole epochs, also with only epoch 0
    ax.set_xlabel("epoch")
    ax.set_ylabel("spatial sparsity", fontsize=9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best", frameon=False)
    fig.suptitle(f"{layer} · channel {channel}: its map on each image and its sparsity over epochs", fontsize=10)
    if data is not None:
        data.update(drawn)
    return fig
