"""Colours, figure construction and PNG rendering shared by every plot (never pyplot).

Figures are made with :class:`matplotlib.figure.Figure` directly, so rendering touches no
global state (no open-figure registry, no backend switch) and nothing needs closing.
"""

from __future__ import annotations

import io
import sys
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure

if TYPE_CHECKING:  # pragma: no cover
    from ..history import History

#: seaborn's "colorblind" palette (the same hex values), for runs and splits.
PALETTE: tuple[str, ...] = (
    "#0173b2",
    "#de8f05",
    "#029e73",
    "#cc78bc",
    "#ca9161",
    "#fbafe4",
    "#949494",
    "#ece133",
    "#56b4e9",
    "#d55e00",
)
SPLIT_COLORS = {"test": "#0173b2", "train": "#de8f05", "val": "#029e73"}
CHANNEL_COLOR = "#0173b2"
DEAD_COLOR = "#d62728"
ALARM_COLOR = "#d62728"
NOISY_COLOR = "#d62728"  # a training image whose label was flipped
MINIMUM_COLOR = "#029e73"
DPI = 96

#: Axis labels (with the scale's meaning) of the layer and channel statistics.
STATISTIC_LABELS: dict[str, str] = {
    "spatial_mean": "spatial sparsity (0 dense – 1 one unit)",
    "spatial_std": "std of spatial sparsity",
    "dead_fraction": "dead-map fraction (0 none – 1 all)",
    "population_mean": "population sparsity (0 dense – 1 one channel)",
    "population_std": "std of population sparsity",
    "sample_mean": "lifetime (sample-axis) sparsity (0 dense – 1 one sample)",
    "sample_sparsity": "lifetime (sample-axis) sparsity (0 dense – 1 one sample)",
    "nonfinite": "non-finite maps (count)",
}
#: Layer statistics offered by the timeline, heatmap and comparison plots.
TIMELINE_STATISTICS: tuple[str, ...] = ("spatial_mean", "dead_fraction", "population_mean", "sample_mean")


class NoData(ValueError):
    """Nothing to draw for this selection; the message says why (widgets show it instead of a figure)."""


def statistic_label(statistic: str) -> str:
    """Axis label for a statistic: ``"spatial sparsity (0 dense – 1 one unit)"`` etc."""
    return STATISTIC_LABELS.get(statistic, statistic.replace("_", " "))


def statistic_name(statistic: str) -> str:
    """The label without its scale: ``"spatial sparsity"``."""
    return statistic_label(statistic).split(" (")[0]


def check_statistic(statistic: object) -> str:
    """``statistic`` if it is one of :data:`TIMELINE_STATISTICS`."""
    if not isinstance(statistic, str):
        raise TypeError(f"statistic must be a str, got {type(statistic).__name__}")
    from ..history import canonical_statistic

    statistic = canonical_statistic(statistic)
    if statistic not in TIMELINE_STATISTICS:
        raise ValueError(f"statistic must be one of {list(TIMELINE_STATISTICS)}, got {statistic!r}")
    return statistic


def layer_colors(n: int) -> list[Any]:
    """One colour per layer, from shallow (dark) to deep (light) along viridis."""
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    return [cmap(x) for x in (np.linspace(0.0, 0.85, n) if n > 1 else [0.35])]


def split_color(split: str, i: int = 0) -> str:
    return SPLIT_COLORS.get(split, PALETTE[(i + 2) % len(PALETTE)])


class PlotFigure(Figure):
    """A pyplot-free :class:`~matplotlib.figure.Figure` that Jupyter displays as a PNG on its own.

    Figures made without pyplot have no inline-backend display hook; ``_repr_png_`` gives
    notebooks (and exported HTML) the same picture that :func:`figure_png` writes.
    """

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def new_figure(width: float = 9.0, height: float = 4.2) -> PlotFigure:
    """A pyplot-free figure with constrained layout (displayed as a PNG in notebooks)."""
    return PlotFigure(figsize=(width, height), dpi=DPI, layout="constrained")


#: Width (inches) of a figure whose panels wrap into rows: at the notebooks' 80 dpi it is shown
#: at its natural size on the documentation page (no shrinking, so its text stays legible).
PAGE_WIDTH = 9.0

#: Width (inches) of a one-panel-row widget figure (timeline, heatmap, live dashboard, feature and
#: attribution maps): its PNG (:data:`DPI`) is about as wide as the documentation column (736 px),
#: so its smallest text (9 pt) is shown at 8 pt or more there, and at its own size in JupyterLab.
WIDGET_WIDTH = 8.0


def check_columns(columns: object) -> int:
    """``columns`` (panels to a row) as an int >= 1, else a ValueError saying what was got."""
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise ValueError(f"columns must be an int >= 1 (panels to a row), got {columns!r}")
    return columns


def panel_figure(
    n: int,
    columns: int,
    width: float,
    height: float,
    ratios: Sequence[float] | None = None,
    *,
    page_width: float = PAGE_WIDTH,
) -> tuple[PlotFigure, list[Any]]:
    """A figure of ``n`` panels, ``columns`` to a row, and its axes in reading order.

    With all panels in one row the figure is ``width`` × ``height`` inches and ``ratios`` sets
    the panels' relative widths. With fewer columns than panels the rows wrap: the figure is
    ``page_width`` wide (default :data:`PAGE_WIDTH`) and ``height`` per row, and the last panel of a short last row
    spans what is left of it.
    """
    columns = min(check_columns(columns), n)
    if columns == n:
        fig = new_figure(width, height)
        return fig, list(fig.subplots(1, n, gridspec_kw={"width_ratios": list(ratios or [1.0] * n)}))
    rows = -(-n // columns)
    fig = new_figure(page_width, height * rows)
    grid = fig.add_gridspec(rows, columns)
    axes = []
    for i in range(n):
        row, col = divmod(i, columns)
        last = i == n - 1
        axes.append(fig.add_subplot(grid[row, col:] if last else grid[row, col]))
    return fig, axes


def legend_columns(fig: Figure, labels: Sequence[str], fontsize: float = 10.0) -> int:
    """How many columns a figure-wide legend of ``labels`` (patch or line handles) can have in ``fig``.

    Every column is given the width of the widest label (measured in ``fontsize`` with
    matplotlib's text layout) plus the handle, its padding and the column spacing, so the legend
    is never wider than the figure; labels that do not fit in one row wrap into more.
    """
    if not labels:
        return 1
    from matplotlib import rcParams
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    font = FontProperties(size=fontsize)
    widest = max(TextToPath().get_text_width_height_descent(str(t), font, ismath=False)[0] for t in labels)
    # the legend's spacings are in units of its font size; widths here are in points
    handle = (float(rcParams["legend.handlelength"]) + float(rcParams["legend.handletextpad"])) * fontsize
    spacing = float(rcParams["legend.columnspacing"]) * fontsize
    margin = 2 * (float(rcParams["legend.borderpad"]) + float(rcParams["legend.borderaxespad"])) * fontsize + 8.0
    column = handle + widest + spacing
    room = fig.get_figwidth() * 72.0 - margin + spacing  # no spacing after the last column
    return max(1, min(len(labels), int(room // column)))


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """PNG bytes of ``fig`` (Agg, no pyplot)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def message_figure(text: str, title: str = "") -> Figure:
    """A small figure that only shows ``text`` (the static form of a widget without data)."""
    fig = new_figure(7.0, 2.0)
    ax = fig.add_subplot()
    ax.set_axis_off()
    wrapped = "\n".join(textwrap.wrap(text, 80)) or "nothing to show"
    ax.text(0.5, 0.5, wrapped, ha="center", va="center", fontsize=11, color="#555555", transform=ax.transAxes)
    if title:
        ax.set_title(title)
    return fig


def as_history(run: object) -> History:
    """``run`` if it is a :class:`~xaisparse.History`; a one-epoch History (epoch 0) if it is the
    :class:`~xaisparse.SparsityReport` of one evaluation pass; else a ``TypeError``."""
    from ..history import History

    if isinstance(run, History):
        return run
    monitor = sys.modules.get("xaisparse.monitor")  # a SparsityReport exists only once the monitor is imported
    if monitor is not None and isinstance(run, monitor.SparsityReport):
        return History.from_report(run)
    raise TypeError(
        "history must be an xaisparse History (from fit(...) or History.load(path)) or the SparsityReport of "
        f"monitor.compute(), got {type(run).__name__}"
    )
