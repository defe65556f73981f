"""``SparsityTimeline`` (layer sparsity and loss over epochs) and ``LayerEpochHeatmap``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from .. import plots
from ..history import check_history
from ._base import FigureWidget, split_buttons, statistic_dropdown

__all__ = ["LayerEpochHeatmap", "SparsityTimeline"]


class SparsityTimeline(FigureWidget):
    """Layer-wise sparsity over epochs, with train/test loss and the overfitting markers.

    Controls bound to :func:`xaisparse.plots.timeline`: ``layers_select``
    (``SelectMultiple``), ``split_buttons``, ``statistic_dropdown`` (spatial_mean,
    dead_fraction, population_mean, sample_mean). The dotted red line is the detector's alarm
    (``history.detection``), the dashed green one the test-loss minimum.
    """

    _title = "sparsity over epochs"

    def __init__(
        self, history: Any, layers: Sequence[str] | None = None, split: str = "test", statistic: str = "spatial_mean"
    ) -> None:
        self.history = check_history(history)
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None and not isinstance(layers, (list, tuple)):
            raise TypeError(f"layers must be a list of layer names or None, got {type(layers).__name__}")
        names = list(self.history.layer_names)
        for name in layers or []:
            self.history.check_layer(name)
        sticky: list[str] = []
        self.statistic_dropdown = statistic_dropdown(statistic, self.history.statistics())
        self.split_buttons = split_buttons(split, self.history.sparsity_splits, sticky)
        self.layers_select = widgets.SelectMultiple(
            options=names,
            value=tuple(layers) if layers is not None else tuple(names),
            description="layers",
            rows=min(max(len(names), 2), 6),
        )
        super().__init__(
            [self.layers_select, widgets.VBox([self.split_buttons, self.statistic_dropdown])],
            watch=[self.layers_select, self.split_buttons, self.statistic_dropdown],
        )
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self.refresh()

    def _describe(self) -> str:
        return (
            f"SparsityTimeline(layers={list(self.layers_select.value)}, split={self.split_buttons.value!r}, "
            f"statistic={self.statistic_dropdown.value!r})"
        )

    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        return plots.timeline(
            self.history,
            self.split_buttons.value,
            list(self.layers_select.value),
            self.statistic_dropdown.value,
            notes=notes,
            data=self.data,
        )


class LayerEpochHeatmap(FigureWidget):
    """Layers × epochs heatmap of one layer statistic (:meth:`~xaisparse.history.History.layer_frame`), with a colorbar.

    Controls bound to :func:`xaisparse.plots.heatmap`: ``split_buttons`` and
    ``statistic_dropdown``. NaN cells are grey; the test-loss minimum (green dashed) and the
    alarm epoch (blue dotted) are marked.
    """

    _title = "layers × epochs"

    def __init__(self, history: Any, split: str = "test", statistic: str = "spatial_mean") -> None:
        self.history = check_history(history)
        sticky: list[str] = []
        self.statistic_dropdown = statistic_dropdown(statistic, self.history.statistics())
        self.split_buttons = split_buttons(split, self.history.sparsity_splits, sticky)
        super().__init__([self.split_buttons, self.statistic_dropdown])
        self._sticky = sticky
        self.data: dict[str, Any] = {}
        self.refresh()

    def _describe(self) -> str:
        return f"LayerEpochHeatmap(split={self.split_buttons.value!r}, statistic={self.statistic_dropdown.value!r})"

    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        return plots.heatmap(
            self.history, self.split_buttons.value, self.statistic_dropdown.value, notes=notes, data=self.data
        )
