"""Jupyter widgets for xaisparse runs (needs the ``widgets`` extra: ``pip install 'xaisparse[widgets]'``).

Every widget is an ``ipywidgets.VBox`` of stock controls above one PNG ``Image``: the
controls are bound to the keywords of one :mod:`xaisparse.plots` function, which draws the
figure from a :class:`~xaisparse.history.History` (only :class:`ChannelInspector` runs a
model). Each has a static form ``to_figure()`` and a PNG in its display bundle for exported
notebooks. This is the only module of xaisparse that imports ipywidgets.

>>> from xaisparse.history import History
>>> w = SparsityTimeline(History())
>>> w.message
'This run has no epochs yet: nothing to show.'
"""

from __future__ import annotations

try:
    import ipywidgets as _ipywidgets  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised by a subprocess test
    raise ImportError(
        "xaisparse.widgets needs ipywidgets, which is not installed: install the widgets extra with "
        "pip install 'xaisparse[widgets]' (or pip install ipywidgets). Figures without widgets: xaisparse.plots."
    ) from exc

from ._base import FigureWidget, NoData
from .attribution import AttributionComparison
from .comparison import RunComparison
from .distribution import KINDS, PerplexityDistribution
from .inspector import ChannelInspector, load_model_checkpoint
from .live import LiveDashboard
from .playground import KNOB_RANGES, OverfittingPlayground, PlaygroundSettings
from .timeline import LayerEpochHeatmap, SparsityTimeline

__all__ = [
    "KINDS",
    "KNOB_RANGES",
    "AttributionComparison",
    "ChannelInspector",
    "FigureWidget",
    "LayerEpochHeatmap",
    "LiveDashboard",
    "NoData",
    "OverfittingPlayground",
    "PerplexityDistribution",
    "PlaygroundSettings",
    "RunComparison",
    "SparsityTimeline",
    "load_model_checkpoint",
]
