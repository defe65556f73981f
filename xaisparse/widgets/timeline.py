"""``SparsityTimeline`` (layer sparsity and loss over epochs) and ``LayerEpochHeatmap``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from . import _render as R
from ._base import FigureWidget, NoData
from .data import (
    TIMELINE_STATISTICS,
    alarm_epoch,
    check_history,
    check_layer,
    heatmap_frame,
    loss_frame,
    loss_minimum,
    nonfinite_epochs,
    statistic_label,
    timeline_frame,
)

__all__ = ["LayerEpochHeatmap", "SparsityTimeline", "draw_heatmap", "draw_timeline"]


def _check_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}")
    return value


def _split_options(history: Any) -> list[str]:
    found = list(dict.fromkeys(str(s) for s in history.layers.split))
    return sorted(found, key=lambda s: ({"train": 0, "test": 1}.get(s, 2), found.index(s)))


def _layer_history(widget: Any) -> Any:
    """The widget's history, after checking it has layer sparsity to draw (clears ``widget.data``)."""
    h = widget.history
    widget.data = {}
    if h.is_empty:
        raise NoData("This run has no epochs yet: nothing to show.")
    if h.layers.empty:
        raise NoData("This run records no layer sparsity (only metrics).")
    return h


def _statistic_choices(h: Any, statistic: str) -> list[str]:
    """The statistics the dropdown offers, including a valid ``statistic`` the history lacks."""
    stats = _statistic_options(h)
    if statistic not in stats:
        if statistic not in TIMELINE_STATISTICS:
            raise ValueError(f"statistic must be one of {list(TIMELINE_STATISTICS)}, got {statistic!r}")
        stats = [*stats, statistic]
    return stats


def _statistic_options(history: Any) -> list[str]:
    present = set(history.layers.statistic.astype(str)) if not history.layers.empty else set()
    return [s for s in TIMELINE_STATISTICS if s in present] or list(TIMELINE_STATISTICS)


def _resolve_split(split: str, options: list[str], sticky: list[str]) -> str:
    if split in options or not options:
        return split
    fallback = "test" if "test" in options else options[0]
    sticky.append(f"split {split!r} is not recorded in this run (recorded: {options}); showing {fallback!r}.")
    return fallback


def layer_colors(n: int) -> list[Any]:
    """One colour per layer, from shallow (dark) to deep (light) along viridis."""
    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.35])]


def _mark_epochs(ax: Axes, history: Any, with_labels: bool = True) -> dict[str, Any]:
    """Vertical lines at the detector's alarm epoch and the test-loss minimum."""
    best = loss_minimum(history, "test")
    marks: dict[str, Any] = {"alarm": alarm_epoch(history), "minimum": best}
    if best is not None:
        ax.axvline(
            best[0],
            color=R.MINIMUM_COLOR,
            linestyle="--",
            linewidth=1.4,
            zorder=1,
            label=f"test-loss minimum (epoch {best[0]})" if with_labels else None,
            gid="minimum",
        )
    if marks["alarm"] is not None:
        ax.axvline(
            marks["alarm"],
            color=R.ALARM_COLOR,
            linestyle=":",
            linewidth=1.8,
            zorder=1,
            label=f"sparsity alarm (epoch {marks['alarm']})" if with_labels else None,
            gid="alarm",
        )
    return marks


def draw_timeline(
    ax: Axes, history: Any, split: str, layers: Sequence[str], statistic: str, notes: list[str], legend: str = "axes"
) -> dict[str, Any]:
    """Sparsity lines per layer, losses on a twin axis and the alarm/minimum markers on ``ax``."""
    frame = timeline_frame(history, split, layers, statistic)
    if frame.empty or not np.isfinite(frame.to_numpy(dtype=float)).any():
        raise NoData(f"No {statistic!r} values of the selected layers for split {split!r}.")
    bad = nonfinite_epochs(frame)
    if bad:
        notes.append(f"NaN/Inf {statistic} at epoch(s) {bad[:10]}: left as gaps in the lines.")
    colors = layer_colors(frame.shape[1])
    marker = "o" if frame.shape[0] <= 30 else None
    for color, name in zip(colors, frame.columns):
        ax.plot(
            frame.index.to_numpy(),
            frame[name].to_numpy(),
            color=color,
            linewidth=2.0,
            marker=marker,
            markersize=3.5,
            label=name,
            gid=f"layer:{name}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(statistic_label(statistic))
    ax.grid(alpha=0.3)
    losses = loss_frame(history, "loss")
    twin = None
    if not losses.empty:
        twin = ax.twinx()
        styles = {"train": ("#555555", "--"), "test": ("#111111", "-")}
        for i, s in enumerate(losses.columns):
            color, ls = styles.get(s, (R.PALETTE[(i + 3) % len(R.PALETTE)], "-."))
            twin.plot(
                losses.index.to_numpy(),
                losses[s].to_numpy(),
                color=color,
                linestyle=ls,
                linewidth=1.3,
                marker="." if losses.shape[0] <= 30 else None,
                label=f"{s} loss",
                gid=f"loss:{s}",
            )
        twin.set_ylabel("loss")
    else:
        notes.append("no loss recorded in this run: only sparsity is shown.")
    marks = _mark_epochs(ax, history)
    if frame.shape[0] == 1:
        e = frame.index[0]
        ax.set_xlim(e - 1, e + 1)
    handles, labels = ax.get_legend_handles_labels()
    if twin is not None:
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if legend == "axes":
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.09 if twin is not None else 1.01, 1.0),
            fontsize=8,
            frameon=False,
        )
    elif legend == "figure":
        ax.figure.legend(handles, labels, loc="outside right upper", fontsize=8, frameon=False)
    return {"frame": frame, "losses": losses, "twin": twin, **marks}


def draw_heatmap(ax: Axes, history: Any, split: str, statistic: str, notes: list[str], fig: Figure) -> dict[str, Any]:
    """Layers × epochs image of one statistic with a colorbar; NaN cells grey."""
    matrix = heatmap_frame(history, split, statistic)
    if matrix.empty:
        raise NoData(f"No {statistic!r} values for split {split!r}.")
    values = matrix.to_numpy(dtype=np.float64)
    bad = nonfinite_epochs(matrix, axis="columns")
    if bad:
        notes.append(f"NaN/Inf {statistic} at epoch(s) {bad[:10]}: shown as grey cells.")
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise NoData(f"All {statistic!r} values for split {split!r} are NaN/Inf.")
    cmap = matplotlib.colormaps["magma"].with_extremes(bad="#bbbbbb")
    epochs = matrix.columns.to_numpy(dtype=np.int64)
    vmin, vmax = float(finite.min()), float(finite.max())
    if vmin == vmax:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    im = ax.imshow(
        np.ma.masked_invalid(values),
        aspect="auto",
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        extent=(-0.5, len(epochs) - 0.5, len(matrix.index) - 0.5, -0.5),
    )
    ax.set_yticks(np.arange(len(matrix.index)), [str(n) for n in matrix.index], fontsize=9)
    step = max(1, int(np.ceil(len(epochs) / 20)))
    ax.set_xticks(np.arange(len(epochs))[::step], [str(e) for e in epochs[::step]])
    ax.set_xlabel("epoch")
    ax.set_ylabel("layer (network order)")
    fig.colorbar(im, ax=ax, label=statistic_label(statistic), fraction=0.05, pad=0.02)
    position = {int(e): i for i, e in enumerate(epochs)}
    alarm = alarm_epoch(history)
    best = loss_minimum(history, "test")
    for epoch, color, style, text, gid in (
        (None if best is None else best[0], R.MINIMUM_COLOR, "--", "test-loss min", "minimum"),
        (alarm, "#56b4e9", ":", "alarm", "alarm"),
    ):
        if epoch is None or epoch not in position:
            continue
        x = position[epoch]
        ax.axvline(x, color=color, linestyle=style, linewidth=2.0, gid=gid)
        ax.annotate(
            f"{text} ({epoch})",
            xy=(x, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=8,
            color=color,
        )
    return {"matrix": matrix, "image": im, "alarm": alarm, "minimum": best}


class SparsityTimeline(FigureWidget):
    """Layer-wise sparsity over epochs, with train/test loss and the overfitting markers.

    One line per selected layer (colour from shallow to deep), train (dashed) and test (solid)
    loss on a twin axis, a dotted red line at the detector's alarm epoch
    (``history.detector["alarm_epoch"]``, when there is one) and a dashed green line at the
    test-loss minimum. Controls: ``layers_select`` (``SelectMultiple``), ``split_buttons``,
    ``statistic_dropdown`` (spatial_mean, dead_fraction, channel_mean, sample_mean).
    """

    _title = "sparsity over epochs"

    def __init__(
        self, history: Any, layers: Sequence[str] | None = None, split: str = "test", statistic: str = "spatial_mean"
    ) -> None:
        self.history = check_history(history)
        _check_str(split, "split")
        _check_str(statistic, "statistic")
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layer names or None, got {type(layers).__name__}")
        h = self.history
        names = list(h.layer_names)
        for name in layers or []:
            check_layer(name, names)
        stats = _statistic_choices(h, statistic)
        sticky: list[str] = []
        splits = _split_options(h)
        split = _resolve_split(split, splits, sticky)
        self.layers_select = widgets.SelectMultiple(
            options=names,
            value=tuple(layers) if layers is not None else tuple(names),
            description="layers",
            rows=min(max(len(names), 2), 6),
        )
        self.split_buttons = widgets.ToggleButtons(
            options=splits or [split], value=split, description="split", style={"button_width": "64px"}
        )
        self.statistic_dropdown = widgets.Dropdown(options=stats, value=statistic, description="statistic")
        super().__init__([self.layers_select, widgets.VBox([self.split_buttons, self.statistic_dropdown])])
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self._watch(self.layers_select, self.split_buttons, self.statistic_dropdown)
        self.refresh()

    def _describe(self) -> str:
        return (
            f"SparsityTimeline(layers={list(self.layers_select.value)}, split={self.split_buttons.value!r}, "
            f"statistic={self.statistic_dropdown.value!r})"
        )

    def _draw(self, notes: list[str]) -> Figure:
        h = _layer_history(self)
        layers = list(self.layers_select.value)
        if not layers:
            raise NoData("Select at least one layer.")
        split, statistic = self.split_buttons.value, self.statistic_dropdown.value
        fig = R.new_figure(9.5, 4.3)
        ax = fig.add_subplot()
        self.data = draw_timeline(ax, h, split, layers, statistic, notes)
        name = statistic_label(statistic).split(" (")[0]
        ax.set_title(f"{name} per layer ({split}) and loss over epochs", fontsize=11)
        return fig


class LayerEpochHeatmap(FigureWidget):
    """Layers × epochs heatmap of one layer statistic (``history.layer_matrix``), with a colorbar.

    Controls: ``split_buttons`` and ``statistic_dropdown``. NaN cells are grey; the test-loss
    minimum (green dashed) and the alarm epoch (blue dotted) are marked.
    """

    _title = "layers × epochs"

    def __init__(self, history: Any, split: str = "test", statistic: str = "spatial_mean") -> None:
        self.history = check_history(history)
        _check_str(split, "split")
        _check_str(statistic, "statistic")
        h = self.history
        stats = _statistic_choices(h, statistic)
        sticky: list[str] = []
        splits = _split_options(h)
        split = _resolve_split(split, splits, sticky)
        self.split_buttons = widgets.ToggleButtons(
            options=splits or [split], value=split, description="split", style={"button_width": "64px"}
        )
        self.statistic_dropdown = widgets.Dropdown(options=stats, value=statistic, description="statistic")
        super().__init__([self.split_buttons, self.statistic_dropdown])
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self._watch(self.split_buttons, self.statistic_dropdown)
        self.refresh()

    def _describe(self) -> str:
        return f"LayerEpochHeatmap(split={self.split_buttons.value!r}, statistic={self.statistic_dropdown.value!r})"

    def _draw(self, notes: list[str]) -> Figure:
        h = _layer_history(self)
        split, statistic = self.split_buttons.value, self.statistic_dropdown.value
        n_layers = len(h.layer_names)
        fig = R.new_figure(9.0, float(np.clip(0.45 * n_layers + 1.6, 2.6, 10.0)))
        ax = fig.add_subplot()
        self.data = draw_heatmap(ax, h, split, statistic, notes, fig)
        ax.set_title(f"{statistic_label(statistic).split(' (')[0]} by layer and epoch ({split})", fontsize=11, pad=14)
        return fig
