"""``RunComparison``: several runs side by side (losses, a layer's sparsity, its distribution)."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from . import _render as R
from ._base import FigureWidget, NoData, set_slider
from .data import (
    TIMELINE_STATISTICS,
    as_runs,
    channel_values,
    check_layer,
    common_layers,
    histogram_epochs,
    loss_frame,
    pooled_histogram,
    runs_missing_layer,
    statistic_label,
)

__all__ = ["RunComparison"]

_KINDS = ("violin", "box")


class RunComparison(FigureWidget):
    """Two or more runs side by side, one colour per run.

    Left: a metric (loss by default) over epochs, test solid and train dashed. Middle: the
    chosen layer's statistic over epochs for the chosen split, with the chosen epoch marked.
    Right: at that epoch, each run's distribution of the layer's per-sample spatial sparsity
    over all channels (violin or box drawn from the pooled histograms) with the per-channel
    means as dots.

    ``runs``: a dict ``name -> History`` (e.g. from :func:`~xaisparse.history.load_runs`) or a
    list of histories. Controls: ``layer_dropdown`` (layers common to all runs),
    ``metric_dropdown``, ``statistic_dropdown``, ``split_buttons``, ``epoch_slider``,
    ``kind_dropdown``.
    """

    _title = "run comparison"

    def __init__(
        self,
        runs: Any,
        layer: str | None = None,
        epoch: int | None = None,
        split: str = "test",
        statistic: str = "spatial_mean",
        metric: str = "loss",
        kind: str = "violin",
    ) -> None:
        self.runs = as_runs(runs)
        if not self.runs:
            raise ValueError("RunComparison needs at least one run (two or more to compare), got none")
        for name, value in (("split", split), ("statistic", statistic), ("metric", metric)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {list(_KINDS)}, got {kind!r}")
        if statistic not in TIMELINE_STATISTICS:
            raise ValueError(f"statistic must be one of {list(TIMELINE_STATISTICS)}, got {statistic!r}")
        if epoch is not None and (not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool)):
            raise TypeError(f"epoch must be an int or None, got {type(epoch).__name__}")
        sticky: list[str] = []
        histories = list(self.runs.values())
        all_layers = list(dict.fromkeys(n for h in histories for n in h.layer_names))
        common = common_layers(self.runs)
        options = common or all_layers
        if not common and all_layers:
            sticky.append("the runs have no layer in common; offering every layer (some runs will lack it).")
        if layer is not None:
            check_layer(layer, all_layers)
            if layer not in options:
                options = [layer, *options]
        metrics = list(dict.fromkeys(str(m) for h in histories for m in h.metrics.metric))
        metrics = sorted(metrics, key=lambda m: (m != "loss", m != "accuracy", m)) or ["loss"]
        if metric not in metrics:
            sticky.append(f"metric {metric!r} is not recorded in any run; showing {metrics[0]!r}.")
            metric = metrics[0]
        splits = list(dict.fromkeys(str(s) for h in histories for s in h.splits))
        splits = sorted(splits, key=lambda s: ({"train": 0, "test": 1}.get(s, 2), splits.index(s)))
        if split not in splits and splits:
            fallback = "test" if "test" in splits else splits[0]
            sticky.append(f"split {split!r} is not recorded in any run; showing {fallback!r}.")
            split = fallback
        self.layer_dropdown = widgets.Dropdown(
            options=options, value=layer or (options[0] if options else None), description="layer"
        )
        self.metric_dropdown = widgets.Dropdown(
            options=metrics, value=metric, description="metric", layout=widgets.Layout(width="200px")
        )
        self.statistic_dropdown = widgets.Dropdown(
            options=list(TIMELINE_STATISTICS), value=statistic, description="statistic"
        )
        self.split_buttons = widgets.ToggleButtons(
            options=splits or [split], value=split, description="split", style={"button_width": "64px"}
        )
        self.epoch_slider = widgets.IntSlider(value=0, min=0, max=0, description="epoch", continuous_update=False)
        self.kind_dropdown = widgets.Dropdown(
            options=list(_KINDS), value=kind, description="kind", layout=widgets.Layout(width="160px")
        )
        super().__init__(
            [
                self.layer_dropdown,
                self.metric_dropdown,
                self.statistic_dropdown,
                self.split_buttons,
                self.epoch_slider,
                self.kind_dropdown,
            ]
        )
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self._sync_epochs(epoch if epoch is not None else self._default_epoch())
        self._watch(
            self.layer_dropdown,
            self.metric_dropdown,
            self.statistic_dropdown,
            self.split_buttons,
            self.epoch_slider,
            self.kind_dropdown,
        )
        self.refresh()

    def _epochs(self) -> list[int]:
        layer, split = self.layer_dropdown.value, self.split_buttons.value
        found: set[int] = set()
        for h in self.runs.values():
            found.update(histogram_epochs(h, split, layer) if layer is not None else [])
            if layer is not None:
                found.update(int(e) for e in h.layer_series(split, layer, "spatial_mean").index)
        return sorted(found)

    def _default_epoch(self) -> int | None:
        """The last epoch with a histogram in every run that has the layer (else the last of any run)."""
        layer, split = self.layer_dropdown.value, self.split_buttons.value
        if layer is None:
            return None
        sets = [set(histogram_epochs(h, split, layer)) for h in self.runs.values() if layer in h.layer_names]
        sets = [s for s in sets if s]
        if not sets:
            return None
        shared = set.intersection(*sets)
        return max(shared) if shared else max(set.union(*sets))

    def _sync_epochs(self, wanted: int | None = None) -> None:
        epochs = self._epochs()
        with self._hold():
            if not epochs:
                set_slider(self.epoch_slider, 0, 0, 0)
                return
            target = self.epoch_slider.value if wanted is None else int(wanted)
            set_slider(self.epoch_slider, epochs[0], epochs[-1], target)

    def _controls_changed(self, change: dict[str, Any]) -> None:
        if change["owner"] in (self.layer_dropdown, self.split_buttons):
            self._sync_epochs()

    def _describe(self) -> str:
        return (
            f"RunComparison(runs={list(self.runs)}, layer={self.layer_dropdown.value!r}, "
            f"epoch={self.epoch_slider.value}, split={self.split_buttons.value!r})"
        )

    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        runs = {name: h for name, h in self.runs.items() if not h.is_empty}
        empty = [name for name, h in self.runs.items() if h.is_empty]
        if empty:
            notes.append(f"run(s) {empty} have no epochs yet.")
        if not runs:
            raise NoData("None of the runs has any epoch recorded: nothing to compare.")
        if len(self.runs) < 2:
            notes.append("only one run given: pass two or more runs to compare.")
        layer, split = self.layer_dropdown.value, self.split_buttons.value
        statistic, metric = self.statistic_dropdown.value, self.metric_dropdown.value
        epoch, kind = int(self.epoch_slider.value), self.kind_dropdown.value
        if layer is None:
            notes.append("the runs record no layer sparsity: only the metric is compared.")
        else:
            missing = runs_missing_layer(runs, layer)
            if missing:
                notes.append(
                    f"layer {layer!r} is missing from run(s) {missing}: they are left out of the layer panels."
                )
        colors = {name: R.PALETTE[i % len(R.PALETTE)] for i, name in enumerate(self.runs)}
        fig = R.new_figure(14.0, 4.4)
        ax_loss, ax_layer, ax_dist = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.0, 1.0, 0.9]})
        self.data = {"losses": {}, "series": {}, "pooled": {}, "stats": {}, "channel_means": {}}

        for name, h in runs.items():
            frame = loss_frame(h, metric)
            self.data["losses"][name] = frame
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
            ser = h.layer_series(split, layer, statistic)
            if ser.empty:
                no_split.append(name)
                continue
            ser = ser[~ser.index.duplicated(keep="first")].sort_index()
            self.data["series"][name] = ser
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
            if epoch not in histogram_epochs(h, split, layer):
                no_epoch.append(name)
                continue
            counts = pooled_histogram(h, split, layer, epoch)
            e = np.asarray(h.bin_edges, dtype=np.float64)
            if edges is not None and (e.shape != edges.shape or not np.allclose(e, edges)):
                notes.append(f"run {name!r} uses other histogram bins; drawn on its own bins.")
            edges = e if edges is None else edges
            self.data["pooled"][name] = counts
            n_ch = h.histogram(split, layer, epoch).shape[0]
            self.data["channel_means"][name] = channel_values(h, split, layer, epoch, "spatial_mean", n_ch)
            if counts.sum() <= 0:
                notes.append(f"run {name!r}: no finite sparsity values of {layer!r} at epoch {epoch}.")
            names.append(name)
            hists.append((counts, e))
            pos_colors.append(colors[name])
        if no_epoch:
            notes.append(f"run(s) {no_epoch} have no histogram of {layer!r} ({split}) at epoch {epoch}.")
        for i, (name, (counts, e), color) in enumerate(zip(names, hists, pos_colors)):
            if kind == "violin":
                st = R.draw_violins(ax_dist, counts[None], e, [i], [color], gid=f"violin:{name}")[0]
            else:
                st = R.draw_boxes(ax_dist, counts[None], e, [i], [color])[0]
            self.data["stats"][name] = st
            means = self.data["channel_means"][name]
            means = means[np.isfinite(means)]
            if means.size:
                jitter = np.random.default_rng(i).uniform(-0.05, 0.05, means.size)
                ax_dist.scatter(
                    i + 0.47 + jitter, means, s=9, color="#222222", alpha=0.7, zorder=5, gid=f"channel_means:{name}"
                )
        ax_dist.set_xticks(range(len(names)), names, rotation=20 if len(names) > 3 else 0, fontsize=9)
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
        handles = [R.Patch(facecolor=colors[n], label=n) for n in self.runs]
        fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 6), fontsize=9, frameon=False)
        return fig
