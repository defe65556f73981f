"""``PerplexityDistribution``: per-channel distributions of one layer's spatial sparsity."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from . import _render as R
from ._base import FigureWidget, NoData, set_slider
from .data import (
    DEAD_THRESHOLD,
    ORDERINGS,
    channel_order,
    check_history,
    check_layer,
    dead_channels,
    histogram_epochs,
    layer_histogram,
    statistic_label,
)

__all__ = ["KINDS", "PerplexityDistribution"]

#: Plot kinds of :class:`PerplexityDistribution`.
KINDS: tuple[str, ...] = ("violin", "box", "ridge", "heatmap")
_ORDER_ALIASES = {
    "mean": "mean sparsity",
    "dead": "dead fraction",
    "spatial_mean": "mean sparsity",
    "dead_fraction": "dead fraction",
    "channel": "index",
}
_ORDER_TEXT = {
    "mean sparsity": "by mean sparsity, sparsest first",
    "dead fraction": "by dead fraction, most dead first",
    "index": "by index",
}


def _ordered_splits(history: Any) -> list[str]:
    found = list(dict.fromkeys(s for s, _ in history.spatial_hist))
    return sorted(found, key=lambda s: ({"train": 0, "test": 1}.get(s, 2), found.index(s)))


class PerplexityDistribution(FigureWidget):
    """Per-channel distributions of one layer's per-sample spatial sparsity at one epoch.

    Drawn from the fixed-bin histograms of the History (``history.spatial_hist``), never
    from raw samples: ``kind="violin"`` (bin densities), ``"box"`` (quantiles from the
    histogram), ``"ridge"`` (stacked densities) or ``"heatmap"`` (channels × bins, share of
    each channel's samples). ``split="both"`` overlays train and test. Channels whose
    ``dead_fraction`` is at least ``dead_threshold`` are drawn in red and counted in the
    title and legend.

    Controls: ``layer_dropdown``, ``epoch_slider`` (epochs with histograms), ``split_buttons``,
    ``kind_dropdown``, ``order_dropdown``. ``data`` holds what the last drawing showed.
    """

    _title = "per-channel spatial sparsity"

    def __init__(
        self,
        history: Any,
        layer: str | None = None,
        epoch: int | None = None,
        split: str = "test",
        kind: str = "violin",
        order: str = "mean",
        *,
        dead_threshold: float = DEAD_THRESHOLD,
    ) -> None:
        self.history = check_history(history)
        if not isinstance(split, str):
            raise TypeError(f"split must be a str such as 'test', 'train' or 'both', got {type(split).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        order = _ORDER_ALIASES.get(order, order) if isinstance(order, str) else order
        if order not in ORDERINGS:
            raise ValueError(f"order must be one of {list(ORDERINGS)} (or 'mean', 'dead'), got {order!r}")
        if epoch is not None and (not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool)):
            raise TypeError(f"epoch must be an int or None, got {type(epoch).__name__}")
        self.dead_threshold = float(dead_threshold)
        h = self.history
        sticky: list[str] = []

        splits = _ordered_splits(h)
        layers = [name for name in h.layer_names if any((s, name) in h.spatial_hist for s in splits)]
        layers += [l for _, l in h.spatial_hist if l not in layers]
        if layer is not None:
            check_layer(layer, list(dict.fromkeys([*h.layer_names, *layers])))
            if layer not in layers:
                sticky.append(f"layer {layer!r} has no per-channel histograms in this run.")
                layers = [layer, *layers]
        split_options = splits + (["both"] if {"train", "test"} <= set(splits) else [])
        if split not in split_options:
            if splits:
                fallback = "test" if "test" in splits else splits[0]
                sticky.append(
                    f"split {split!r} is not recorded in this run (recorded: {splits}); showing {fallback!r}."
                )
                split = fallback
            split_options = split_options or [split]

        self.layer_dropdown = widgets.Dropdown(
            options=layers, value=layer if layer is not None else (layers[0] if layers else None), description="layer"
        )
        self.split_buttons = widgets.ToggleButtons(
            options=split_options, value=split, description="split", style={"button_width": "64px"}
        )
        self.epoch_slider = widgets.IntSlider(value=0, min=0, max=0, description="epoch", continuous_update=False)
        self.kind_dropdown = widgets.Dropdown(
            options=list(KINDS), value=kind, description="kind", layout=widgets.Layout(width="180px")
        )
        self.order_dropdown = widgets.Dropdown(
            options=list(ORDERINGS), value=order, description="order", layout=widgets.Layout(width="230px")
        )
        super().__init__(
            [self.layer_dropdown, self.epoch_slider, self.split_buttons, self.kind_dropdown, self.order_dropdown]
        )
        self.data: dict[str, Any] = {}
        self._sticky = sticky
        found = self._epochs()
        self._sync_epochs(epoch if epoch is not None else (found[-1] if found else None))
        if epoch is not None and self._epochs() and epoch not in self._epochs():
            self._sticky.append(f"epoch {epoch} has no histogram; showing epoch {self.epoch_slider.value}.")
        self._watch(self.layer_dropdown, self.epoch_slider, self.split_buttons, self.kind_dropdown, self.order_dropdown)
        self.refresh()

    # ------------------------------------------------------------------ state
    def _shown_splits(self) -> list[str]:
        split = self.split_buttons.value
        return ["train", "test"] if split == "both" else [split]

    def _epochs(self) -> list[int]:
        layer = self.layer_dropdown.value
        if layer is None:
            return []
        found: set[int] = set()
        for s in self._shown_splits():
            found.update(histogram_epochs(self.history, s, layer))
        return sorted(found)

    def _sync_epochs(self, wanted: int | None = None) -> None:
        epochs = self._epochs()
        with self._hold():
            if not epochs:
                set_slider(self.epoch_slider, 0, 0, 0)
                self.epoch_slider.disabled = True
                return
            self.epoch_slider.disabled = False
            target = self.epoch_slider.value if wanted is None else int(wanted)
            if target not in epochs:
                target = min(epochs, key=lambda e: (abs(e - target), -e))
            set_slider(self.epoch_slider, epochs[0], epochs[-1], target)

    def _controls_changed(self, change: dict[str, Any]) -> None:
        if change["owner"] in (self.layer_dropdown, self.split_buttons):
            self._sync_epochs()

    def _describe(self) -> str:
        return (
            f"PerplexityDistribution(layer={self.layer_dropdown.value!r}, epoch={self.epoch_slider.value}, "
            f"split={self.split_buttons.value!r}, kind={self.kind_dropdown.value!r}, "
            f"order={self.order_dropdown.value!r})"
        )

    # ------------------------------------------------------------------ drawing
    def _draw(self, notes: list[str]) -> Figure:
        h = self.history
        self.data = {}
        if h.is_empty:
            raise NoData("This run has no epochs yet: nothing to show.")
        if not h.spatial_hist:
            raise NoData(
                "This run has no per-channel histograms (spatial_hist is empty): record it with a SparsityMonitor."
            )
        layer = self.layer_dropdown.value
        if layer is None:
            raise NoData("No layer with per-channel histograms in this run.")
        epochs = self._epochs()
        if not epochs:
            raise NoData(f"Layer {layer!r} has no histograms for split {self.split_buttons.value!r}.")
        epoch = int(self.epoch_slider.value)
        if epoch not in epochs:
            nearest = min(epochs, key=lambda e: abs(e - epoch))
            notes.append(f"epoch {epoch} has no histogram; showing the nearest recorded epoch {nearest}.")
            epoch = nearest
        edges = np.asarray(h.bin_edges, dtype=np.float64)
        counts: dict[str, np.ndarray] = {}
        for s in self._shown_splits():
            try:
                counts[s] = layer_histogram(h, s, layer, epoch)
            except ValueError as exc:
                notes.append(str(exc))
        if not counts:
            raise NoData(f"No histogram of {layer!r} at epoch {epoch}.")
        n_ch = max(c.shape[0] for c in counts.values())
        if any(c.sum() <= 0 for c in counts.values()):
            empty = [s for s, c in counts.items() if c.sum() <= 0]
            msg = (
                f"No finite sparsity values for {layer!r} at epoch {epoch} ({', '.join(empty)}): the maps were "
                "all NaN/Inf or no samples were measured."
            )
            counts = {s: c for s, c in counts.items() if c.sum() > 0}
            if not counts:
                raise NoData(msg)
            notes.append(msg)
        splits = list(counts)
        order_split = "test" if "test" in counts else splits[0]
        by = self.order_dropdown.value
        order = channel_order(h, order_split, layer, epoch, by)
        dead = dead_channels(h, splits, layer, epoch, self.dead_threshold, channels=n_ch)
        for s, c in counts.items():
            no_samples = np.flatnonzero(c.sum(axis=1) <= 0)
            if no_samples.size:
                notes.append(f"{s}: channels {no_samples.tolist()[:12]} have no finite samples at epoch {epoch}.")
        ordered = {s: c[order] for s, c in counts.items()}
        n_dead = int(dead.sum())
        self.data = {
            "layer": layer,
            "epoch": epoch,
            "splits": splits,
            "order": order,
            "dead": dead,
            "counts": ordered,
            "edges": edges,
            "kind": self.kind_dropdown.value,
            "stats": {},
        }

        kind = self.kind_dropdown.value
        split_text = " vs ".join(splits)
        dead_text = f" · {n_dead} dead channel{'s' if n_dead != 1 else ''}" if n_dead else ""
        title = f"{layer} · epoch {epoch} · {split_text}{dead_text}\nper-channel distribution of spatial sparsity"
        xlabel = f"channel ({_ORDER_TEXT[by]})"
        ylabel = statistic_label("spatial_mean")
        dead_ordered = dead[order]

        if kind == "heatmap":
            return self._heatmap(ordered, edges, order, dead, title, n_dead)
        width = float(np.clip(0.32 * n_ch + 2.5, 7.0, 15.0))
        if kind == "ridge":
            fig = R.new_figure(8.0, float(np.clip(0.32 * n_ch + 1.8, 3.5, 12.0)))
        else:
            fig = R.new_figure(width, 4.4)
        ax = fig.add_subplot()
        ax.set_title(title, fontsize=11)
        handles: list[Any] = []
        if kind in ("violin", "box"):
            pos = np.arange(n_ch, dtype=float)
            if len(splits) > 1:
                for x in pos[dead_ordered]:
                    ax.axvspan(x - 0.5, x + 0.5, color=R.DEAD_COLOR, alpha=0.12, linewidth=0)
            for i, s in enumerate(splits):
                base = R.split_color(s, i)
                colors = [R.DEAD_COLOR if (d and len(splits) == 1) else base for d in dead_ordered]
                if kind == "violin":
                    side = "both" if len(splits) == 1 else ("left" if i == 0 else "right")
                    stats = R.draw_violins(ax, ordered[s], edges, pos, colors, side=side, gid=f"violin:{s}")
                else:
                    shift = 0.0 if len(splits) == 1 else (-0.2 if i == 0 else 0.2)
                    stats = R.draw_boxes(
                        ax, ordered[s], edges, pos + shift, colors, width=0.6 if len(splits) == 1 else 0.36
                    )
                self.data["stats"][s] = stats
                handles.append(R.Patch(facecolor=base, alpha=0.75, label=s))
            ax.set_xlim(-0.7, n_ch - 0.3)
            ax.set_ylim(edges[0] - 0.02 * (edges[-1] - edges[0]), edges[-1] + 0.02 * (edges[-1] - edges[0]))
            R.channel_ticks(ax, pos, order, dead, "x")
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            ax.grid(axis="y", alpha=0.3)
        else:  # ridge
            for i, s in enumerate(splits):
                base = R.split_color(s, i)
                colors = [R.DEAD_COLOR if (d and len(splits) == 1) else base for d in dead_ordered]
                R.draw_ridge(ax, ordered[s], edges, order, colors, filled=(s == splits[-1]), gid=f"ridge:{s}")
                handles.append(R.Patch(facecolor=base, alpha=0.7, label=s))
            R.channel_ticks(ax, n_ch - 1 - np.arange(n_ch), order, dead, "y")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_xlabel(ylabel)
            ax.set_ylabel(f"channel ({_ORDER_TEXT[by]})")
            ax.grid(axis="x", alpha=0.3)
        if len(splits) == 1:
            handles = []
        R.dead_legend(ax, handles, n_dead, self.dead_threshold)
        return fig

    def _heatmap(
        self,
        ordered: dict[str, np.ndarray],
        edges: np.ndarray,
        order: np.ndarray,
        dead: np.ndarray,
        title: str,
        n_dead: int,
    ) -> Figure:
        n_ch = len(order)
        splits = list(ordered)
        fig = R.new_figure(5.2 * len(splits) + 1.6, float(np.clip(0.28 * n_ch + 1.8, 3.2, 12.0)))
        axes = fig.subplots(1, len(splits), sharey=True, squeeze=False)[0]
        mesh = None
        shares = {}
        for ax, s in zip(axes, splits):
            c = ordered[s]
            totals = c.sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                share = np.where(totals > 0, c / np.maximum(totals, 1), np.nan)
            shares[s] = share
            mesh = ax.pcolormesh(
                edges,
                np.arange(n_ch + 1) - 0.5,
                share,
                cmap="viridis",
                vmin=0.0,
                vmax=float(np.nanmax(share)) if np.isfinite(share).any() else 1.0,
                shading="flat",
            )
            ax.set_ylim(n_ch - 0.5, -0.5)
            ax.set_xlabel(statistic_label("spatial_mean"))
            ax.set_title(s, fontsize=10)
            for k in np.flatnonzero(dead[order]):
                ax.add_patch(
                    Rectangle(
                        (edges[0], k - 0.5),
                        edges[-1] - edges[0],
                        1.0,
                        fill=False,
                        edgecolor=R.DEAD_COLOR,
                        linewidth=1.8,
                        zorder=3,
                    )
                )
        R.channel_ticks(axes[0], np.arange(n_ch), order, dead, "y")
        axes[0].set_ylabel(f"channel ({_ORDER_TEXT[self.order_dropdown.value]})")
        if mesh is not None:
            fig.colorbar(mesh, ax=list(axes), label="share of the channel's samples")
        fig.suptitle(title + (f" (red: dead fraction ≥ {self.dead_threshold:g})" if n_dead else ""), fontsize=11)
        self.data["shares"] = shares
        return fig
