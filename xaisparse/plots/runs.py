"""One run over epochs: the sparsity timeline, the layers × epochs heatmap, and both stacked."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .._validation import select_names
from ..history import History
from ._style import (
    ALARM_COLOR,
    MINIMUM_COLOR,
    PALETTE,
    WIDGET_WIDTH,
    NoData,
    as_history,
    check_statistic,
    layer_colors,
    new_figure,
    statistic_label,
    statistic_name,
)

__all__ = ["LEGEND_LAYERS", "dashboard", "heatmap", "timeline"]


def _layer_history(history: object) -> History:
    """``history`` (a History, or a monitor's report as epoch 0) after checking it has layer sparsity to draw."""
    history = as_history(history)
    if history.is_empty:
        raise NoData("This run has no epochs yet: nothing to show.")
    if not history.sparsity_splits:
        raise NoData("This run records no layer sparsity (only metrics).")
    return history


def nonfinite_epochs(frame: Any, axis: str = "index") -> list[int]:
    """Epochs holding NaN/Inf in an epochs-indexed (``axis="index"``) or epochs-columned table."""
    if frame.empty:
        return []
    values = frame.to_numpy(dtype=np.float64)
    if axis == "index":
        return [int(e) for e in frame.index[~np.isfinite(values).all(axis=1)]]
    return [int(e) for e in frame.columns[~np.isfinite(values).all(axis=0)]]


def _mark_epochs(ax: Axes, history: History) -> dict[str, Any]:
    """Vertical lines at the detector's alarm epoch and the test-loss minimum."""
    best = history.test_loss_minimum()
    marks: dict[str, Any] = {"alarm": history.alarm_epoch, "minimum": best}
    if best is not None:
        ax.axvline(
            best[0],
            color=MINIMUM_COLOR,
            linestyle="--",
            linewidth=1.4,
            zorder=1,
            label=f"test-loss minimum (epoch {best[0]})",
            gid="minimum",
        )
    if marks["alarm"] is not None:
        ax.axvline(
            marks["alarm"],
            color=ALARM_COLOR,
            linestyle=":",
            linewidth=1.8,
            zorder=1,
            label=f"sparsity alarm (epoch {marks['alarm']})",
            gid="alarm",
        )
    return marks


def draw_timeline(
    ax: Axes,
    history: History,
    split: str,
    layers: Sequence[str] | None,
    statistic: str,
    notes: list[str],
    legend: str = "axes",
) -> dict[str, Any]:
    """Sparsity lines per layer, losses on a twin axis and the alarm/minimum markers on ``ax``.

    ``layers``: names or globs (``"features.*"``) of recorded layers, or None for all. With more
    than :data:`~xaisparse.plots.runs.LEGEND_LAYERS` layers the lines are not listed in the legend: a colour bar maps
    the colour to the depth, labelled with the first, middle and last layer.
    """
    _check_names(history, split, statistic)
    names = None if layers is None else select_names(list(layers), history.layer_names)
    frame = history.layer_frame(split, names, statistic)
    if frame.empty or not np.isfinite(frame.to_numpy(dtype=float)).any():
        raise NoData(
            f"No {statistic!r} values of the selected layers for split {split!r}; "
            f"statistics recorded for {split!r}: {history.statistics(split)}."
        )
    bad = nonfinite_epochs(frame)
    if bad:
        notes.append(f"NaN/Inf {statistic} at epoch(s) {bad[:10]}: left as gaps in the lines.")
    marker = "o" if frame.shape[0] <= 30 else None
    listed = frame.shape[1] <= LEGEND_LAYERS
    colors = layer_colors(frame.shape[1])
    for color, name in zip(colors, frame.columns):
        ax.plot(
            frame.index.to_numpy(),
            frame[name].to_numpy(),
            color=color,
            linewidth=2.0 if listed else 1.2,
            marker=marker if listed else None,
            markersize=3.5,
            label=name if listed else f"_{name}",  # "_...": left out of the legend
            gid=f"layer:{name}",
        )
    if not listed:
        _depth_colorbar(ax, list(frame.columns), colors)
        notes.append(
            f"{frame.shape[1]} layers: colour shows depth (see the colour bar); choose layers with layers=[...] "
            "(names or globs such as 'features.*') to name each line."
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(statistic_label(statistic))
    ax.grid(alpha=0.3)
    losses = history.metric_frame("loss")
    twin = None
    if not losses.empty:
        twin = ax.twinx()
        styles = {"train": ("#555555", "--"), "test": ("#111111", "-")}
        for i, s in enumerate(losses.columns):
            color, ls = styles.get(s, (PALETTE[(i + 3) % len(PALETTE)], "-."))
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
        anchor = (1.09 if twin is not None else 1.01, 1.0)
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=anchor, fontsize=9, frameon=False)
    elif legend == "figure":
        ax.figure.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=9, frameon=False)
    return {"frame": frame, "losses": losses, "twin": twin, **marks}


#: :func:`timeline` names each layer in its legend up to this many layers; beyond, a depth colour bar.
LEGEND_LAYERS = 12


def _depth_colorbar(ax: Axes, names: list[str], colors: list[Any]) -> None:
    """A colour bar for the layer lines: colour = position in network order, ticks at a few layer names."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap

    n = len(names)
    mappable = ScalarMappable(norm=BoundaryNorm(np.arange(n + 1) - 0.5, n), cmap=ListedColormap(colors))
    bar = ax.figure.colorbar(mappable, ax=ax, location="left", fraction=0.04, pad=0.12, aspect=30)
    ticks = sorted({0, (n - 1) // 2, n - 1})
    bar.set_ticks(ticks, labels=[names[i] for i in ticks], fontsize=9)
    bar.minorticks_off()
    bar.set_label(f"layer (network order, {n} layers)", fontsize=9)


def _check_names(history: History, split: str, statistic: str) -> None:
    """A split with layer sparsity and a statistic this run records, else :class:`NoData` listing them."""
    if split not in history.sparsity_splits:
        raise NoData(f"No layer sparsity for split {split!r}; splits with layer sparsity: {history.sparsity_splits}.")
    if statistic not in history.statistics():
        raise NoData(f"This run records no {statistic!r}; recorded statistics: {history.statistics()}.")


def draw_heatmap(ax: Axes, history: History, split: str, statistic: str, notes: list[str]) -> dict[str, Any]:
    """Layers × epochs image of one statistic with a colorbar; NaN cells grey."""
    _check_names(history, split, statistic)
    matrix = history.layer_frame(split, statistic=statistic).T
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
    ax.figure.colorbar(im, ax=ax, label=statistic_label(statistic), fraction=0.05, pad=0.02)
    position = {int(e): i for i, e in enumerate(epochs)}
    alarm, best = history.alarm_epoch, history.test_loss_minimum()
    for epoch, color, style, text, gid in (
        (None if best is None else best[0], MINIMUM_COLOR, "--", "test-loss min", "minimum"),
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
            fontsize=9,
            color=color,
        )
    return {"matrix": matrix, "image": im, "alarm": alarm, "minimum": best}


def timeline(
    history: History,
    split: str = "test",
    layers: Sequence[str] | None = None,
    statistic: str = "spatial_mean",
    *,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Layer-wise sparsity over epochs, with train/test loss and the overfitting markers.

    One line per layer (colour from shallow to deep), train (dashed) and test (solid) loss on a
    twin axis, a dotted red line at the detector's alarm epoch (``history.detection``) and a
    dashed green line at the test-loss minimum. ``notes`` (a list) receives caveats such as
    NaN epochs; ``data`` (a dict) receives the drawn tables. Raises :class:`NoData` when there
    is nothing to draw (naming the splits and statistics there are).

    ``layers``: layer names or globs (``["features.*"]``); all layers by default. Up to
    :data:`~xaisparse.plots.runs.LEGEND_LAYERS` lines are named in the legend; more (EfficientNet-B0 has 65) are
    coloured by depth with a colour bar instead. ``history`` may also be the
    :class:`~xaisparse.SparsityReport` of one evaluation pass (shown as epoch 0).

    >>> from xaisparse.testing import synthetic_history
    >>> fig = timeline(synthetic_history(epochs=6), layers=["block1.relu"])
    >>> [line.get_gid() for line in fig.axes[0].get_lines()][:1]
    ['layer:block1.relu']
    """
    h = _layer_history(history)
    statistic = check_statistic(statistic)
    if layers is not None and not list(layers):
        raise NoData("Select at least one layer.")
    notes = [] if notes is None else notes
    fig = new_figure(WIDGET_WIDTH, 4.3)
    ax = fig.add_subplot()
    drawn = draw_timeline(ax, h, split, layers, statistic, notes)
    ax.set_title(f"{statistic_name(statistic)} per layer ({split}) and loss over epochs", fontsize=11)
    if data is not None:
        data.update(drawn)
    return fig


def heatmap(
    history: History,
    split: str = "test",
    statistic: str = "spatial_mean",
    *,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Layers × epochs heatmap of one layer statistic (:meth:`~xaisparse.history.History.layer_frame`), with a colorbar.

    NaN cells are grey; the test-loss minimum (green dashed) and the alarm epoch (blue dotted)
    are marked.
    """
    h = _layer_history(history)
    statistic = check_statistic(statistic)
    notes = [] if notes is None else notes
    fig = new_figure(WIDGET_WIDTH, float(np.clip(0.45 * len(h.layer_names) + 1.6, 2.6, 10.0)))
    ax = fig.add_subplot()
    drawn = draw_heatmap(ax, h, split, statistic, notes)
    ax.set_title(f"{statistic_name(statistic)} by layer and epoch ({split})", fontsize=11, pad=14)
    if data is not None:
        data.update(drawn)
    return fig


def dashboard(
    history: History,
    split: str = "test",
    statistic: str = "spatial_mean",
    *,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """The timeline above the heatmap, titled with the latest epoch (the live training view)."""
    if history is not None and not isinstance(history, History):
        history = as_history(history)
    if history is None or history.is_empty:
        raise NoData("waiting for the first epoch…")
    if not history.sparsity_splits:
        raise NoData(f"epoch {history.epochs[-1]} recorded metrics only: no layer sparsity to show yet.")
    statistic = check_statistic(statistic)
    notes = [] if notes is None else notes
    rows = float(np.clip(0.4 * len(history.layer_names) + 1.2, 2.2, 7.0))
    fig = new_figure(WIDGET_WIDTH, 4.0 + rows)
    ax_t, ax_h = fig.subplots(2, 1, height_ratios=[4.0, rows])
    drawn = draw_timeline(ax_t, history, split, None, statistic, notes, legend="figure")
    ax_t.set_title(f"epoch {history.epochs[-1]}: {statistic_name(statistic)} per layer ({split}) and loss", fontsize=11)
    ax_h.set_title(" ", pad=6)  # room for the marker labels
    drawn_h = draw_heatmap(ax_h, history, split, statistic, notes)
    if data is not None:
        data.update({**drawn, "matrix": drawn_h["matrix"]})
    return fig
