"""``SparsityDistribution``: per-channel distributions of one layer's spatial sparsity."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .. import plots
from .._deprecation import deprecated
from ..history import CHANNEL_ORDERINGS, DEAD_THRESHOLD, channel_ordering, check_history
from ..plots.channels import distribution_epochs
from ._base import FigureWidget, split_buttons

__all__ = ["KINDS", "PerplexityDistribution", "SparsityDistribution"]

#: Plot kinds of :class:`SparsityDistribution`.
KINDS: tuple[str, ...] = plots.DISTRIBUTION_KINDS


class SparsityDistribution(FigureWidget):
    """Per-channel distributions of one layer's per-sample spatial sparsity at one epoch.

    Drawn by :func:`xaisparse.plots.distribution` from the History's fixed-bin histograms:
    ``kind="violin"``, ``"box"``, ``"ridge"`` or ``"heatmap"``; ``split=("train", "test")`` (the
    "train + test" button) overlays train and test; channels whose ``dead_fraction`` is at least ``dead_threshold`` are red.

    Controls: ``layer_dropdown``, ``epoch_slider`` (epochs with histograms), ``split_buttons``,
    ``kind_dropdown``, ``order_dropdown``. ``data`` holds what the last drawing showed.
    """

    _title = "per-channel spatial sparsity"

    def __init__(
        self,
        history: Any,
        layer: str | None = None,
        epoch: int | None = None,
        split: str | tuple[str, ...] = "test",
        kind: str = "violin",
        order: str = "mean",
        *,
        dead_threshold: float = DEAD_THRESHOLD,
    ) -> None:
        self.history = h = check_history(history)
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        order = channel_ordering(order)
        if epoch is not None and (not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool)):
            raise TypeError(f"epoch must be an int or None, got {type(epoch).__name__}")
        self.dead_threshold = float(dead_threshold)
        sticky: list[str] = []
        splits = h.histogram_splits
        layers = h.histogram_layers
        if layer is not None:
            if layer not in layers:
                h.check_layer(layer)  # UnknownLayerError with the closest names
                sticky.append(f"layer {layer!r} has no per-channel histograms in this run.")
                layers = [layer, *layers]
        self.split_buttons = split_buttons(split, splits, sticky, overlay=True)
        self.layer_dropdown = widgets.Dropdown(
            options=layers, value=layer if layer is not None else (layers[0] if layers else None), description="layer"
        )
        self.epoch_slider = widgets.IntSlider(value=0, min=0, max=0, description="epoch", continuous_update=False)
        self.kind_dropdown = widgets.Dropdown(
            options=list(KINDS), value=kind, description="kind", layout=widgets.Layout(width="180px")
        )
        self.order_dropdown = widgets.Dropdown(
            options=list(CHANNEL_ORDERINGS), value=order, description="order", layout=widgets.Layout(width="230px")
        )
        super().__init__(
            [self.layer_dropdown, self.epoch_slider, self.split_buttons, self.kind_dropdown, self.order_dropdown]
        )  # watches these controls
        self.data: dict[str, Any] = {}
        self._sticky = sticky
        found = self._epochs()
        self._sync_epochs(epoch if epoch is not None else (found[-1] if found else None))
        if epoch is not None and found and epoch not in found:
            self._sticky.append(f"epoch {epoch} has no histogram; showing epoch {self.epoch_slider.value}.")
        self.refresh()

    def _epochs(self) -> list[int]:
        layer = self.layer_dropdown.value
        return [] if layer is None else distribution_epochs(self.history, layer, self.split_buttons.value)

    def _sync_epochs(self, wanted: int | None = None) -> None:
        self._sync_epoch_slider(self.epoch_slider, self._epochs(), wanted, snap=True)

    def _controls_changed(self, change: dict[str, Any]) -> None:
        if change["owner"] in (self.layer_dropdown, self.split_buttons):
            self._sync_epochs()

    def _describe(self) -> str:
        return (
            f"{type(self).__name__}(layer={self.layer_dropdown.value!r}, epoch={self.epoch_slider.value}, "
            f"split={self.split_buttons.value!r}, kind={self.kind_dropdown.value!r}, "
            f"order={self.order_dropdown.value!r})"
        )

    def _draw(self, notes: list[str]) -> Figure:
        self.data = {}
        return plots.distribution(
            self.history,
            self.layer_dropdown.value,
            int(self.epoch_slider.value),
            self.split_buttons.value,
            self.kind_dropdown.value,
            self.order_dropdown.value,
            dead_threshold=self.dead_threshold,
            notes=notes,
            data=self.data,
        )


class PerplexityDistribution(SparsityDistribution):
    """Deprecated name of :class:`SparsityDistribution` (it draws sparsity, not perplexity)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:

        deprecated(
            "PerplexityDistribution is deprecated: it is called SparsityDistribution (it draws sparsity)", stacklevel=2
        )
        super().__init__(*args, **kwargs)
