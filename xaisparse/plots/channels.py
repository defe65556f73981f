"""One layer's channels: per-channel sparsity distributions, and feature maps of chosen images."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from .._deprecation import deprecated
from .._validation import check_split
from ..history import DEAD_THRESHOLD, History, channel_ordering
from ._draw import channel_ticks, dead_legend, draw_boxes, draw_ridge, draw_violins
from ._style import DEAD_COLOR, WIDGET_WIDTH, NoData, as_history, new_figure, split_color, statistic_label

__all__ = [
    "DISTRIBUTION_KINDS",
    "MAX_CHANNELS",
    "channel_maps",
    "choose_channels",
    "distribution",
    "histogram_layers",
    "histogram_splits",
    "show_image",
]

#: Plot kinds of :func:`distribution`.
DISTRIBUTION_KINDS: tuple[str, ...] = ("violin", "box", "ridge", "heatmap")
#: :func:`distribution` draws every channel of a layer with at most this many; of a wider layer
#: (a ViT MLP has 3,072) it draws the first and last half of this many in the chosen order.
MAX_CHANNELS = 64
_ORDER_TEXT = {
    "mean sparsity": "by mean sparsity, sparsest first",
    "dead fraction": "by dead fraction, most dead first",
    "index": "by index",
}


def histogram_splits(history: History) -> list[str]:
    """Deprecated: :attr:`History.histogram_splits <xaisparse.history.History.histogram_splits>`."""
    deprecated(
        "xaisparse.plots.channels.histogram_splits(history) is deprecated: use history.histogram_splits", stacklevel=2
    )
    return history.histogram_splits


def histogram_layers(history: History) -> list[str]:
    """Deprecated: :attr:`History.histogram_layers <xaisparse.history.History.histogram_layers>`."""
    deprecated(
        "xaisparse.plots.channels.histogram_layers(history) is deprecated: use history.histogram_layers", stacklevel=2
    )
    return history.histogram_layers


#: The two probes overlaid by ``split=OVERLAY`` (train and test).
OVERLAY: tuple[str, ...] = ("train", "test")


def shown_splits(split: str | Sequence[str]) -> list[str]:
    """The data splits a ``split`` choice draws: one split, or several overlaid (e.g. :data:`OVERLAY`).

    ``"both"``, the pseudo-split of earlier versions, still means ``("train", "test")`` for one
    release, with a ``DeprecationWarning``.

    >>> shown_splits("test"), shown_splits(("train", "test"))
    (['test'], ['train', 'test'])
    """
    if split == "both":
        deprecated(
            'split="both" is deprecated: pass split=("train", "test") (a split is always a data split)', stacklevel=3
        )
        return list(OVERLAY)
    if isinstance(split, str):
        return [check_split(split)]
    if not isinstance(split, (list, tuple)) or not split:
        raise TypeError(f"split must be a data split ('train', 'val', 'test') or a tuple of them, got {split!r}")
    return [check_split(s) for s in dict.fromkeys(split)]


def distribution_epochs(history: History, layer: str, split: str | Sequence[str]) -> list[int]:
    """Epochs with a histogram of ``layer`` in any of the splits ``split`` shows."""
    found: set[int] = set()
    for s in shown_splits(split):
        if (s, layer) in history.spatial_hist:  # a split without histograms of it adds none
            found.update(history.histogram_epochs(s, layer))
    return sorted(found)


def choose_channels(ranked: np.ndarray, channels: object, order: str) -> tuple[np.ndarray, str]:
    """The channels to draw, in display order, from all channels ``ranked`` in that order; and a note.

    ``channels``: ``None`` (all, or for more than :data:`~xaisparse.plots.channels.MAX_CHANNELS` the first and last
    ``MAX_CHANNELS // 2``), ``"all"``, an int ``k`` (the first ``k`` in the order, e.g. the ``k``
    sparsest; ``-k``: the last ``k``) or a list of channel indices (drawn in the order). The note
    says what was left out ("" when nothing was).

    >>> import numpy as np
    >>> choose_channels(np.array([3, 0, 2, 1]), -2, "mean sparsity")
    (array([2, 1]), 'showing 2 of 4 channels: the last 2 (order: by mean sparsity, sparsest first)')
    """
    n = len(ranked)
    if channels is None and n > MAX_CHANNELS:
        half = MAX_CHANNELS // 2
        shown = np.concatenate([ranked[:half], ranked[-half:]])
        return shown, (
            f"showing {len(shown)} of {n} channels: the first {half} and the last {half} (order: {_ORDER_TEXT[order]}) "
            "(choose with channels=k for the first k, -k for the last k, or a list of channel indices)"
        )
    if channels is None or (isinstance(channels, str) and channels == "all"):
        return ranked, ""
    if isinstance(channels, (int, np.integer)) and not isinstance(channels, bool):
        k = int(channels)
        if k == 0:
            raise ValueError("channels=0 draws nothing: pass k > 0 for the first k channels, -k for the last k")
        shown = ranked[:k] if k > 0 else ranked[k:]
        which = f"the first {len(shown)}" if k > 0 else f"the last {len(shown)}"
        note = f"showing {len(shown)} of {n} channels: {which} (order: {_ORDER_TEXT[order]})"
        return shown, ("" if len(shown) == n else note)
    if isinstance(channels, Sequence) and not isinstance(channels, str) and channels:
        wanted = []
        for c in channels:
            if not isinstance(c, (int, np.integer)) or isinstance(c, bool) or not 0 <= int(c) < n:
                raise ValueError(f"channels must be indices in [0, {n}) of this layer's {n} channels, got {c!r}")
            wanted.append(int(c))
        chosen = set(wanted)
        shown = np.array([c for c in ranked if int(c) in chosen], dtype=ranked.dtype)
        return shown, ("" if len(shown) == n else f"showing the {len(shown)} chosen of {n} channels")
    raise TypeError(
        f"channels must be None, 'all', an int k (first k; -k: last k) or a non-empty list of channel indices, "
        f"got {type(channels).__name__} {channels!r}"
    )


def distribution(
    history: History,
    layer: str | None = None,
    epoch: int | None = None,
    split: str | Sequence[str] = "test",
    kind: str = "violin",
    order: str = "mean sparsity",
    *,
    channels: int | Sequence[int] | str | None = None,
    dead_threshold: float = DEAD_THRESHOLD,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Per-channel distributions of one layer's per-sample spatial sparsity at one epoch.

    Drawn from the fixed-bin histograms of the History, never from raw samples: ``kind`` is
    ``"violin"`` (bin densities), ``"box"`` (quantiles from the histogram), ``"ridge"`` (stacked
    densities) or ``"heatmap"`` (channels × bins, share of each channel's samples).
    ``split=("train", "test")`` overlays train and test. Channels whose ``dead_fraction`` is at least
    ``dead_threshold`` are drawn in red and counted in the title and legend. ``layer`` defaults
    to the first layer with histograms, ``epoch`` to the last recorded one (an epoch without a
    histogram shows the nearest one, with a note). ``history`` may also be the
    :class:`~xaisparse.SparsityReport` of one evaluation pass (shown as epoch 0).

    ``channels`` chooses what is drawn (see :func:`choose_channels`): by default every channel,
    or for a layer with more than :data:`~xaisparse.plots.channels.MAX_CHANNELS` channels (a ViT MLP has 3,072) the first and
    the last ``MAX_CHANNELS // 2`` in ``order``, the sparsest and the densest, with a note; ``k``
    draws the first ``k``, ``-k`` the last ``k``, a list those channels, ``"all"`` all of them.

    >>> from xaisparse.testing import synthetic_history
    >>> fig = distribution(synthetic_history(epochs=4), "block2.relu", kind="box")
    >>> fig.axes[0].get_title().splitlines()[0]
    'block2.relu · epoch 3 · test'
    """
    history = as_history(history)
    if kind not in DISTRIBUTION_KINDS:
        raise ValueError(f"kind must be one of {list(DISTRIBUTION_KINDS)}, got {kind!r}")
    by = channel_ordering(order)
    notes = [] if notes is None else notes
    h = history
    if h.is_empty:
        raise NoData("This run has no epochs yet: nothing to show.")
    if not h.histogram_layers:
        raise NoData("This run has no per-channel histograms: record it with a SparsityMonitor.")
    if layer is None:
        layer = h.histogram_layers[0]
    h.check_layer(layer)  # UnknownLayerError naming the closest recorded layers
    shown = shown_splits(split)
    epochs = distribution_epochs(h, layer, shown)
    if not epochs:
        have = [s for s in h.histogram_splits if (s, layer) in h.spatial_hist]
        raise NoData(f"Layer {layer!r} has no histograms for split {split!r}; splits with histograms of it: {have}.")
    if epoch is None:
        epoch = epochs[-1]
    elif int(epoch) not in epochs:
        wanted = int(epoch)
        nearest = min(epochs, key=lambda e: abs(e - wanted))
        notes.append(f"epoch {wanted} has no histogram; showing the nearest recorded epoch {nearest}.")
        epoch = nearest
    epoch = int(epoch)
    edges = np.asarray(h.bin_edges, dtype=np.float64)
    counts: dict[str, np.ndarray] = {}
    for s in shown:
        try:
            counts[s] = h.histogram(s, layer, epoch)
        except ValueError as exc:
            notes.append(str(exc))
    if not counts:
        raise NoData(f"No histogram of {layer!r} at epoch {epoch}.")
    n_ch = max(c.shape[0] for c in counts.values())
    empty = [s for s, c in counts.items() if c.sum() <= 0]
    if empty:
        msg = (
            f"No finite sparsity values for {layer!r} at epoch {epoch} ({', '.join(empty)}): the maps were "
            "all NaN/Inf or no samples were measured."
        )
        counts = {s: c for s, c in counts.items() if c.sum() > 0}
        if not counts:
            raise NoData(msg)
        notes.append(msg)
    splits = list(counts)
    channel_rank = h.channel_order("test" if "test" in counts else splits[0], layer, epoch, by)
    dead = h.dead_channels(splits, layer, epoch, dead_threshold, channels=n_ch)
    for s, c in counts.items():
        no_samples = np.flatnonzero(c.sum(axis=1) <= 0)
        if no_samples.size:
            notes.append(f"{s}: channels {no_samples.tolist()[:12]} have no finite samples at epoch {epoch}.")
    n_dead = int(dead.sum())
    n_all = n_ch
    channel_rank, left_out = choose_channels(channel_rank, channels, by)
    if left_out:
        notes.append(left_out + ".")
    n_ch = len(channel_rank)
    gap = MAX_CHANNELS // 2 if channels is None and n_all > MAX_CHANNELS else None  # where channels are left out
    ordered = {s: c[channel_rank] for s, c in counts.items()}
    drawn: dict[str, Any] = {"layer": layer, "epoch": epoch, "splits": splits, "order": channel_rank, "dead": dead}
    drawn["channels"] = n_all
    drawn.update({"counts": ordered, "edges": edges, "kind": kind, "stats": {}})
    if data is not None:
        data.clear()
        data.update(drawn)
        drawn = data

    dead_text = f" · {n_dead} dead channel{'s' if n_dead != 1 else ''}" if n_dead else ""
    shown_text = f" ({n_ch} of {n_all} channels shown)" if n_ch < n_all else ""
    title = (
        f"{layer} · epoch {epoch} · {' vs '.join(splits)}{dead_text}\n"
        f"per-channel distribution of spatial sparsity{shown_text}"
    )
    ylabel = statistic_label("spatial_mean")
    if kind == "heatmap":
        fig = _channel_heatmap(ordered, edges, channel_rank, dead, by, drawn)
        fig.suptitle(title + (f" (red: dead fraction ≥ {dead_threshold:g})" if n_dead else ""), fontsize=11)
        return fig
    if kind == "ridge":
        fig = new_figure(8.0, float(np.clip(0.32 * n_ch + 1.8, 3.5, 12.0)))
    else:
        fig = new_figure(float(np.clip(0.32 * n_ch + 2.5, 7.0, 15.0)), 4.4)
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    dead_ordered = dead[channel_rank]
    pos = np.arange(n_ch, dtype=float)
    if kind != "ridge" and len(splits) > 1:  # behind the overlaid splits: a band marks each dead channel
        for x in pos[dead_ordered]:
            ax.axvspan(x - 0.5, x + 0.5, color=DEAD_COLOR, alpha=0.12, linewidth=0)
    handles: list[Any] = []
    for i, s in enumerate(splits):
        base = split_color(s, i)
        colors = [DEAD_COLOR if (d and len(splits) == 1) else base for d in dead_ordered]
        handles.append(Patch(facecolor=base, alpha=0.75, label=s))
        if kind == "ridge":
            draw_ridge(ax, ordered[s], edges, channel_rank, colors, filled=(s == splits[-1]), gid=f"ridge:{s}")
            continue
        if kind == "violin":
            side = "both" if len(splits) == 1 else ("left" if i == 0 else "right")
            drawn["stats"][s] = draw_violins(ax, ordered[s], edges, pos, colors, side=side, gid=f"violin:{s}")
        else:
            shift = 0.0 if len(splits) == 1 else (-0.2 if i == 0 else 0.2)
            width = 0.6 if len(splits) == 1 else 0.36
            drawn["stats"][s] = draw_boxes(ax, ordered[s], edges, pos + shift, colors, width=width)
    if kind == "ridge":
        channel_ticks(ax, n_ch - 1 - np.arange(n_ch), channel_rank, dead, "y")
        ax.set_xlim(edges[0], edges[-1])
        ax.set_xlabel(ylabel)
        ax.set_ylabel(f"channel ({_ORDER_TEXT[by]})")
        ax.grid(axis="x", alpha=0.3)
    else:
        ax.set_xlim(-0.7, n_ch - 0.3)
        if gap is not None:
            ax.axvline(gap - 0.5, color="#888888", linestyle=":", linewidth=1.5, gid="left-out")
            ax.annotate(
                f"{n_all - n_ch} channels\nleft out",
                xy=(gap - 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(0, -2),
                textcoords="offset points",
                ha="center",
                va="top",
                fontsize=8,
                color="#555555",
            )
        pad = 0.02 * (edges[-1] - edges[0])
        ax.set_ylim(edges[0] - pad, edges[-1] + pad)
        channel_ticks(ax, pos, channel_rank, dead, "x")
        ax.set_xlabel(f"channel ({_ORDER_TEXT[by]})")
        ax.set_ylabel(ylabel)
        ax.grid(axis="y", alpha=0.3)
    dead_legend(ax, handles if len(splits) > 1 else [], n_dead, dead_threshold)
    return fig


def _channel_heatmap(
    ordered: dict[str, np.ndarray], edges: np.ndarray, rank: np.ndarray, dead: np.ndarray, by: str, drawn: dict
) -> Figure:
    """Channels × bins, each row the share of the channel's samples; dead channels outlined in red."""
    n_ch = len(rank)
    splits = list(ordered)
    fig = new_figure(5.2 * len(splits) + 1.6, float(np.clip(0.28 * n_ch + 1.8, 3.2, 12.0)))
    axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
    mesh = None
    shares = {}
    for ax, s in zip(axes, splits):
        c = ordered[s]
        totals = c.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            share = np.where(totals > 0, c / np.maximum(totals, 1), np.nan)
        shares[s] = share
        vmax = float(np.nanmax(share)) if np.isfinite(share).any() else 1.0
        mesh = ax.pcolormesh(edges, np.arange(n_ch + 1) - 0.5, share, cmap="viridis", vmin=0.0, vmax=vmax)
        ax.set_ylim(n_ch - 0.5, -0.5)
        ax.set_xlabel(statistic_label("spatial_mean"))
        ax.set_title(s, fontsize=10)
        for k in np.flatnonzero(dead[rank]):
            box = Rectangle((edges[0], k - 0.5), edges[-1] - edges[0], 1.0, fill=False, edgecolor=DEAD_COLOR)
            box.set(linewidth=1.8, zorder=3)
            ax.add_patch(box)
    channel_ticks(axes[0], np.arange(n_ch), rank, dead, "y")
    axes[0].set_ylabel(f"channel ({_ORDER_TEXT[by]})")
    if mesh is not None:
        fig.colorbar(mesh, ax=list(axes), label="share of the channel's samples")
    drawn["shares"] = shares
    return fig


def show_image(ax: Axes, img: np.ndarray) -> None:
    """An input image ``(C, H, W)`` (grey, or RGB when ``C == 3``, min–max scaled) on ``ax``."""
    if img.ndim == 2:
        img = img[None]
    if img.ndim != 3:
        img = img.reshape(1, -1)[None]
    if img.shape[0] == 3:
        rgb = np.moveaxis(img, 0, -1).astype(np.float64)
        lo, hi = np.nanmin(rgb), np.nanmax(rgb)
        ax.imshow((rgb - lo) / (hi - lo) if hi > lo else np.zeros_like(rgb), interpolation="nearest")
    else:
        ax.imshow(img.mean(axis=0), cmap="gray", interpolation="nearest")


def channel_maps(
    images: np.ndarray,
    maps: np.ndarray,
    sparsity: np.ndarray,
    channel: int,
    chosen: Sequence[int],
    layer: str = "",
    *,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Inputs (top row) and one channel's feature maps (bottom row), each titled with its sparsity.

    ``images``: ``(N, C, H, W)``; ``maps``: the layer's ``(N, channels, ...)`` outputs;
    ``sparsity``: ``(N, channels)`` spatial sparsity; ``chosen``: the image indices to show.
    """
    chosen = list(chosen)
    if not chosen:
        raise NoData("Select at least one image.")
    if not 0 <= channel < maps.shape[1]:
        raise NoData(f"layer {layer!r} has {maps.shape[1]} channels; channel {channel} does not exist.")
    k = len(chosen)
    fig = new_figure(min(max(2.3 * k + 0.6, 5.0), WIDGET_WIDTH), 5.0)
    axes = fig.subplots(2, k, squeeze=False)
    values = []
    for j, i in enumerate(chosen):
        ax_in, ax_map = axes[0, j], axes[1, j]
        show_image(ax_in, np.asarray(images[i]))
        ax_in.set_title(f"image {i}", fontsize=9)
        fmap = maps[i, channel]
        fmap = fmap.reshape(1, -1) if fmap.ndim == 1 else fmap.reshape(fmap.shape[0], -1)
        s = float(sparsity[i, channel])
        dead = not np.any(fmap != 0)
        values.append(s)
        ax_map.imshow(fmap, cmap="magma", interpolation="nearest", vmin=0.0 if dead else None)
        label = "nan" if not np.isfinite(s) else f"{s:.3f}"
        color = DEAD_COLOR if dead else "black"
        ax_map.set_title(f"s = {label}" + (" (dead)" if dead else ""), fontsize=9, color=color)
        for ax in (ax_in, ax_map):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("input", fontsize=9)
    axes[1, 0].set_ylabel(f"channel {channel}", fontsize=9)
    fig.suptitle(
        f"layer {layer} · channel {channel}: feature maps (colour scale per map)\n"
        "s = spatial sparsity (0 dense – 1 one unit)",
        fontsize=10,
    )
    if data is not None:
        data.update({"layer": layer, "channel": channel, "images": chosen, "sparsity": np.array(values)})
    return fig
