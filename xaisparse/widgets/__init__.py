"""Jupyter widgets for xaisparse runs (needs the ``widgets`` extra: ipywidgets, matplotlib).

Every widget is an ``ipywidgets.VBox`` of stock controls above one PNG ``Image``; it renders
a :class:`~xaisparse.history.History` (only :class:`ChannelInspector` runs a model), has a
static form ``to_figure()`` and a PNG in its display bundle for exported notebooks. Data
preparation lives in :mod:`xaisparse.widgets.data` (pure functions).

>>> from xaisparse.history import History
>>> w = SparsityTimeline(History())
>>> w.message
'This run has no epochs yet: nothing to show.'
"""

from __future__ import annotations

from ._base import FigureWidget, NoData
from .comparison import RunComparison
from .distribution import KINDS, PerplexityDistribution
from .inspector import ChannelInspector, load_model_checkpoint
from .live import LiveDashboard
from .timeline import LayerEpochHeatmap, SparsityTimeline

__all__ = [
    "KINDS",
    "ChannelInspector",
    "FigureWidget",
    "LayerEpochHeatmap",
    "LiveDashboard",
    "NoData",
    "PerplexityDistribution",
    "RunComparison",
    "SparsityTimeline",
    "load_model_checkpoint",
]
