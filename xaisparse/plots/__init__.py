"""Every figure of xaisparse, as plain matplotlib functions: ``History`` in, ``Figure`` out.

The widgets bind their controls to these functions' keywords; the static reports and the
CLI call the same functions, so a notebook, a report and a script show the same picture.
Figures are :class:`matplotlib.figure.Figure` objects built without pyplot (no global state,
nothing to close); save them with ``fig.savefig(...)`` or :func:`figure_png`.

The functions of one run take a ``History`` or the :class:`~xaisparse.SparsityReport` of one
evaluation pass (drawn as epoch 0). Each function raises :class:`NoData` (a ``ValueError``) with a
readable message (naming the splits, layers or statistics there are) when there is nothing to draw, appends caveats (NaN epochs, missing splits, …) to the optional ``notes``
list, and fills the optional ``data`` dict with the numbers it drew.

>>> from xaisparse.testing import synthetic_history
>>> fig = heatmap(synthetic_history(epochs=5))
>>> fig.axes[0].get_ylabel()
'layer (network order)'
"""

from ._style import (
    STATISTIC_LABELS,
    TIMELINE_STATISTICS,
    NoData,
    figure_png,
    message_figure,
    statistic_label,
)
from .attribution import (
    ATTRIBUTION_KINDS,
    MAP_SCALES,
    SIGNS,
    attribution_distributions,
    attribution_maps,
    channel_importance,
    display_maps,
)
from .channels import DISTRIBUTION_KINDS, MAX_CHANNELS, channel_maps, choose_channels, distribution
from .comparison import COMPARISON_KINDS, comparison
from .curves import learning_curves
from .datasets import SAMPLE_PARTS, samples
from .maps import MAP_ORDERS, channel_over_epochs, feature_maps
from .runs import LEGEND_LAYERS, dashboard, heatmap, timeline

__all__ = [
    "ATTRIBUTION_KINDS",
    "COMPARISON_KINDS",
    "DISTRIBUTION_KINDS",
    "LEGEND_LAYERS",
    "MAP_ORDERS",
    "MAP_SCALES",
    "MAX_CHANNELS",
    "SAMPLE_PARTS",
    "SIGNS",
    "STATISTIC_LABELS",
    "TIMELINE_STATISTICS",
    "NoData",
    "attribution_distributions",
    "attribution_maps",
    "channel_importance",
    "channel_maps",
    "channel_over_epochs",
    "choose_channels",
    "comparison",
    "dashboard",
    "display_maps",
    "distribution",
    "feature_maps",
    "figure_png",
    "heatmap",
    "learning_curves",
    "message_figure",
    "samples",
    "statistic_label",
    "timeline",
]
