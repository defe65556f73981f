"""``RunComparison``: several runs side by side (losses, a layer's sparsity, its distribution)."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .. import plots
from .._validation import SPLITS, select_names
from ..history import as_runs, common_layers
from ..plots._style import check_columns
from ..plots.comparison import comparison_default_epoch, comparison_epochs
from ._base import FigureWidget, split_buttons, statistic_dropdown

__all__ = ["RunComparison"]

KINDS = plots.COMPARISON_KINDS


class RunComparison(FigureWidget):
    """Two or more runs side by side, one colour per run (:func:`xaisparse.plots.comparison`).

    Left: a metric (loss by default) over epochs, test solid and train dashed. Middle: the
    chosen layer's statistic over epochs for the chosen split, with the chosen epoch marked.
    Right: at that epoch, each run's distribution of the layer's per-sample spatial sparsity
    over all channels with the per-channel means as dots.

    ``runs``: a dict ``name -> History`` (e.g. from :func:`~xaisparse.history.load_runs`) or a
    list of histories. Controls: ``layer_dropdown`` (layers common to all runs),
    ``metric_dropdown``, ``statistic_dropdown``, ``split_buttons``, ``epoch_slider``,
    ``kind_dropdown``. ``columns``: panels to a row of the figure (default 2: the loss and the
    layer side by side, the distribution below, in a page-wide figure whose text stays legible
    where the PNG is shown at a page's width; 3: one wide row).
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
        *,
        columns: int = 2,
    ) -> None:
        self.runs = as_runs(runs)
        if not self.runs:
            raise ValueError("RunComparison needs at least one run (two or more to compare), got none")
        for name, value in (("statistic", statistic), ("metric", metric)):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        self.columns = check_columns(columns)
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
            select_names([layer], all_layers)  # UnknownLayerError with the closest names
            if layer not in options:
                options = [layer, *options]
        metrics = list(dict.fromkeys(m for h in histories for m in h.metric_names()))
        metrics = sorted(metrics, key=lambda m: (m != "loss", m != "accuracy", m)) or ["loss"]
        if metric not in metrics:
            sticky.append(f"metric {metric!r} is not recorded in any run; showing {metrics[0]!r}.")
            metric = metrics[0]
        splits = [s for s in SPLITS if any(s in h.splits for h in histories)]
        self.layer_dropdown = widgets.Dropdown(
            options=options, value=layer or (options[0] if options else None), description="layer"
        )
        self.metric_dropdown = widgets.Dropdown(
            options=metrics, value=metric, description="metric", layout=widgets.Layout(width="200px")
        )
        self.statistic_dropdown = statistic_dropdown(statistic, plots.TIMELINE_STATISTICS)
        self.split_buttons = split_buttons(split, splits, sticky)
        self.epoch_slider = widgets.IntSlider(value=0, min=0, max=0, description="epoch", continuous_update=False)
        self.kind_dropdown = widgets.Dropdown(
            options=list(KINDS), value=kind, description="kind", layout=widgets.Layout(width="160px")
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
        self._sync_epochs(
            epoch if epoch is not None else comparison_default_epoch(self.runs, self.layer_dropdown.value, split)
        )
        self.refresh()

    def _epochs(self) -> list[int]:
        return comparison_epochs(self.runs, self.layer_dropdown.value, self.split_buttons.value)

    def _sync_epochs(self, wanted: int | None = None) -> None:
        self._sync_epoch_slider(self.epoch_slider, self._epochs(), wanted)

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
        return plots.comparison(
            self.runs,
            self.layer_dropdown.value,
            int(self.epoch_slider.value),
            self.split_buttons.value,
            self.statistic_dropdown.value,
            self.metric_dropdown.value,
            self.kind_dropdown.value,
            columns=self.columns,
            notes=notes,
            data=self.data,
        )
