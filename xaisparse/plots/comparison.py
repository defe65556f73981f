"""Several runs side by side: a metric over epochs, one layer's sparsity, its distribution at one epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from ..history import History, as_runs, common_layers
from ._draw import draw_boxes, draw_violins
from ._style import (
    PALETTE,
    NoData,
    check_columns,
    check_statistic,
    legend_columns,
    panel_figure,
    statistic_label,
)

__all__ = ["COMPARISON_KINDS", "comparison", "comparison_default_epoch", "comparison_epochs"]

#: Distribution kinds of :func:`~xaisparse.plots.comparison`.
COMPARISON_KINDS: tuple[str, ...] = ("violin", "box")


def _has(h: History, split: str, layer: str | None, statistic: str | None = None) -> bool:
    """Whether run ``h`` records layer sparsity of ``layer`` (and ``statistic``) for ``split``: its queries would not raise."""
    return (
        layer is not None
        and layer in h.layer_names
        and split in h.sparsity_splits
        and (statistic is None or statistic in h.statistics())
    )


def comparison_epochs(runs: Mapping[str, History], layer: str | None, split: str) -> list[int]:
    """Epochs with a histogram or a layer value of ``layer`` in any run."""
    found: set[int] = set()
    if layer is None:
        return []
    for h in runs.values():
        if _has(h, split, layer):
            found.update(h.histogram_epochs(split, layer))
        if _has(h, split, layer, "spatial_mean"):
            found.update(int(e) for e in h.layer_series(split, layer, "spatial_mean").index)
    return sorted(found)


def comparison_default_epoch(runs: Mapping[str, History], layer: str | None, split: str) -> int | None:
    """The last epoch with a histogram in every run that has the layer (else the last of any run)."""
    if layer is None:
        return None
    sets = [set(h.histogram_epochs(split, layer)) for h in runs.values() if _has(h, split, layer)]
    sets = [s for s in sets if s]
    if not sets:
        return None
    shared = set.intersection(*sets)
    return max(shared) if shared else max(set.union(*sets))


def comparison(
    runs: Any,
    layer: str | None = None,
    epoch: int | None = None,
    split: str = "test",
    statistic: str = "spatial_mean",
    metric: str = "loss",
    kind: str = "violin",
    *,
    columns: int = 3,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Two or more runs side by side, one colour per run.

    Left: a metric (loss by default) over epochs, test solid and train dashed. Middle: the
    chosen layer's statistic over epochs for the chosen split, with the chosen epoch marked.
    Right: at that epoch, each run's distribution of the layer's per-sample spatial sparsity
    over all channels (violin or box from the pooled histograms) with the per-channel means as
    dots. ``runs``: a dict ``name -> History`` (e.g. from :func:`~xaisparse.history.load_runs`)
    or a list of histories. ``layer`` defaults to the first layer common to all runs,
    ``epoch`` to the last epoch with a histogram in every run. ``columns``: panels to a row
    (3: one wide row; 2 or 1 wrap them into a page-wide figure whose text stays legible). No
    text is smaller than 10 pt, so the page-wide figure shown on a page 736 px wide (the docs)
    still shows it at 8.5 pt.
    """
    runs_all = as_runs(runs)
    if not runs_all:
        raise ValueError("comparison needs at least one run (two or more to compare), got none")
    statistic = check_statistic(statistic)
    check_columns(columns)
    if kind not in COMPARISON_KINDS:
        raise ValueError(f"kind must be one of {list(COMPARISON_KINDS)}, got {kind!r}")
    notes = [] if notes is None else notes
    runs = {name: h for name, h in runs_all.items() if not h.is_empty}
    empty = [name for name, h in runs_all.items() if h.is_empty]
    if empty:
        notes.append(f"run(s) {empty} have no epochs yet.")
    if not runs:
        raise NoData("None of the runs has any epoch recorded: nothing to compare.")
    if len(runs_all) < 2:
        notes.append("only one run given: pass two or more runs to compare.")
    if layer is None:
        layer = next(iter(common_layers(runs_all) or [n for h in runs.values() for n in h.layer_names]), None)
    if epoch is None:
        epoch = comparison_default_epoch(runs_all, layer, split)
    epoch = -1 if epoch is None else int(epoch)
    if layer is None:
        notes.append("the runs record no layer sparsity: only the metric is compared.")
    else:
        missing = [name for name, h in runs.items() if layer not in h.layer_names]
        if missing:
            notes.append(f"layer {layer!r} is missing from run(s) {missing}: they are left out of the layer panels.")
    colors = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(runs_all)}
    fig, (ax_loss, ax_layer, ax_dist) = panel_figure(3, columns, 14.0, 4.4, ratios=[1.0, 1.0, 0.9])
    data = {} if data is None else data
    data.clear()
    data.update({"losses": {}, "series": {}, "pooled": {}, "stats": {}, "channel_means": {}})

    for name, h in runs.items():
        frame = h.metric_frame(metric)
        data["losses"][name] = frame
        for s in frame.columns:
            ax_loss.plot(
                frame.index.to_numpy(),
                frame[s].to_numpy(),
                color=colors[name],
                linestyle="-" if s == "test" else "--",
                linewidth=1.6,
                marker="." if frame.shape[0] <= 30 else None,
                gid=f"{metric}:{name}:{s}",
            )
        if "test" not in frame.columns and not frame.empty:
            notes.append(f"run {name!r} has no test {metric}.")
    ax_loss.set_title(f"{metric} (test solid, train dashed)", fontsize=10)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel(metric)
    ax_loss.grid(alpha=0.3)

    no_split = []
    for name, h in runs.items():
        if layer is None or layer not in h.layer_names:
            continue
        ser = h.layer_series(split, layer, statistic) if _has(h, split, layer, statistic) else None
        if ser is None or ser.empty:
            no_split.append(name)
            continue
        data["series"][name] = ser
        ax_layer.plot(
            ser.index.to_numpy(),
            ser.to_numpy(),
            color=colors[name],
            linewidth=2.0,
            marker="o" if len(ser) <= 30 else None,
            markersize=3,
            label=name,
            gid=f"layer:{name}",
        )
    if no_split:
        notes.append(f"run(s) {no_split} have no {split!r} data for layer {layer!r}.")
    ax_layer.axvline(epoch, color="#888888", linestyle=":", linewidth=1.2)
    ax_layer.set_title(f"{layer or 'no layer'} ({split})", fontsize=10)
    ax_layer.set_xlabel("epoch")
    ax_layer.set_ylabel(statistic_label(statistic))
    ax_layer.grid(alpha=0.3)

    edges = None
    names, hists, pos_colors = [], [], []
    no_epoch = []
    for name, h in runs.items():
        if layer is None or layer not in h.layer_names:
            continue
        if not _has(h, split, layer) or epoch not in h.histogram_epochs(split, layer):
            no_epoch.append(name)
            continue
        counts = h.pooled_histogram(split, layer, epoch)
        e = np.asarray(h.bin_edges, dtype=np.float64)
        if edges is not None and (e.shape != edges.shape or not np.allclose(e, edges)):
            notes.append(f"run {name!r} uses other histogram bins; drawn on its own bins.")
        edges = e if edges is None else edges
        data["pooled"][name] = counts
        n_ch = h.histogram(split, layer, epoch).shape[0]
        data["channel_means"][name] = (
            h.channel_values(split, layer, epoch, "spatial_mean", n_ch)
            if (h.channels.statistic == "spatial_mean").any()
            else np.full(n_ch, np.nan)
        )
        if counts.sum() <= 0:
            notes.append(f"run {name!r}: no finite sparsity values of {layer!r} at epoch {epoch}.")
        names.append(name)
        hists.append((counts, e))
        pos_colors.append(colors[name])
    if no_epoch:
        notes.append(f"run(s) {no_epoch} have no histogram of {layer!r} ({split}) at epoch {epoch}.")
    for i, (name, (counts, e), color) in enumerate(zip(names, hists, pos_colors)):
        if kind == "violin":
            st = draw_violins(ax_dist, counts[None], e, [i], [color], gid=f"violin:{name}")[0]
        else:
            st = draw_boxes(ax_dist, counts[None], e, [i], [color])[0]
        data["stats"][name] = st
        means = data["channel_means"][name]
        means = means[np.isfinite(means)]
        if means.size:
            jitter = np.random.default_rng(i).uniform(-0.05, 0.05, means.size)
            ax_dist.scatter(
                i + 0.47 + jitter, means, s=9, color="#222222", alpha=0.7, zorder=5, gid=f"channel_means:{name}"
            )
    ax_dist.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, fontsize=10)
    ax_dist.set_xlim(-0.6, max(len(names), 1) - 0.4 + 0.2)
    if edges is not None:
        ax_dist.set_ylim(edges[0] - 0.02, edges[-1] + 0.02)
    ax_dist.set_title(
        f"{layer or 'no layer'} · epoch {epoch} ({split}): all channels' maps\n(dots: per-channel means)",
        fontsize=10,
    )
    ax_dist.set_ylabel(statistic_label("spatial_mean"))
    ax_dist.grid(axis="y", alpha=0.3)
    if not names and layer is not None:
        ax_dist.text(
            0.5,
            0.5,
            f"no histogram at epoch {epoch}",
            ha="center",
            va="center",
            transform=ax_dist.transAxes,
            color="#777777",
        )
    handles = [Patch(facecolor=colors[n], label=n) for n in runs_all]
    ncol = legend_columns(fig, list(runs_all), fontsize=10)
    fig.legend(handles=handles, loc="outside lower center", ncol=ncol, fontsize=10, frameon=False)
    return fig
