"""Low-level drawing of histogram-based distributions: violins, boxes, ridges, channel ticks."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.patches import Patch

from ..histogram_stats import histogram_box_stats, histogram_violin
from ._style import DEAD_COLOR


def channel_ticks(
    ax: Axes,
    positions: Sequence[float] | np.ndarray,
    channels: Sequence[int] | np.ndarray,
    dead: np.ndarray,
    axis: str = "x",
) -> None:
    """Label channel positions ``c<i>``, dead ones in red; thinned when there are many."""
    n = len(channels)
    step = max(1, int(np.ceil(n / 40)))
    pos = list(positions)[::step]
    labels = [f"{int(c)}" for c in list(channels)[::step]]
    if axis == "x":
        ax.set_xticks(pos, labels, rotation=90 if n > 24 else 0, fontsize=8 if n > 24 else 9)
        ticks = ax.get_xticklabels()
    else:
        ax.set_yticks(pos, labels, fontsize=8 if n > 24 else 9)
        ticks = ax.get_yticklabels()
    for tick, c in zip(ticks, list(channels)[::step]):
        if dead[int(c)]:
            tick.set_color(DEAD_COLOR)
            tick.set_fontweight("bold")


def draw_violins(
    ax: Axes,
    hists: np.ndarray,
    edges: np.ndarray,
    positions: Sequence[float] | np.ndarray,
    colors: Sequence[str],
    side: str = "both",
    width: float = 0.8,
    gid: str = "violin",
) -> list[dict[str, Any]]:
    """Violins from histograms (one row of ``hists`` per position); returns their box stats.

    Each violin is scaled to its own maximum density (shape comparison; the widths do not
    encode sample counts). A white dot marks the median, a thick bar the quartiles.
    ``side="left"/"right"`` draws half violins (for train/test overlays).
    """
    half = width / 2
    stats = []
    for row, x, color in zip(hists, positions, colors):
        y, d = histogram_violin(row, edges)
        st = histogram_box_stats(row, edges)
        stats.append(st)
        if y.size == 0:
            continue
        d = d / d.max() * half
        left = x - d if side in ("both", "left") else np.full_like(d, x)
        right = x + d if side in ("both", "right") else np.full_like(d, x)
        poly = ax.fill_betweenx(y, left, right, facecolor=color, edgecolor="#333333", linewidth=0.6, alpha=0.75)
        poly.set_gid(gid)
        off = {"both": 0.0, "left": -0.06, "right": 0.06}[side]
        ax.vlines(x + off, st["q1"], st["q3"], color="#222222", linewidth=3.0, zorder=3)
        ax.scatter([x + off], [st["med"]], s=14, color="white", edgecolor="#222222", linewidth=0.6, zorder=4)
    return stats


def draw_boxes(
    ax: Axes,
    hists: np.ndarray,
    edges: np.ndarray,
    positions: Sequence[float] | np.ndarray,
    colors: Sequence[str],
    width: float = 0.6,
) -> list[dict[str, Any]]:
    """Box plots from histograms via ``Axes.bxp`` (precomputed statistics); returns the stats."""
    stats = [histogram_box_stats(row, edges) for row in hists]
    keep = [i for i, st in enumerate(stats) if np.isfinite(st["med"])]
    if keep:
        parts = ax.bxp(
            [stats[i] for i in keep],
            positions=[positions[i] for i in keep],
            widths=width,
            showmeans=True,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "#222222", "linewidth": 1.5},
            meanprops={"marker": "D", "markerfacecolor": "white", "markeredgecolor": "#222222", "markersize": 4},
            flierprops={"marker": "o", "markersize": 3, "markerfacecolor": "#888888", "markeredgecolor": "none"},
        )
        for box, i in zip(parts["boxes"], keep):
            box.set_facecolor(colors[i])
            box.set_alpha(0.8)
            box.set_edgecolor("#333333")
    return stats


def draw_ridge(
    ax: Axes,
    hists: np.ndarray,
    edges: np.ndarray,
    channels: Sequence[int] | np.ndarray,
    colors: Sequence[str],
    overlap: float = 1.25,
    alpha: float = 0.7,
    filled: bool = True,
    gid: str = "ridge",
) -> None:
    """Stacked per-channel histogram densities (ridge plot); first channel at the top.

    Each ridge is the density at the bin midpoints (as in :func:`histogram_violin`); all
    ridges share one height scale, so heights compare across channels.
    """
    n = len(channels)
    outlines = [histogram_violin(row, edges) for row in hists]
    peaks = [d.max() for _, d in outlines if d.size]
    scale = max(peaks) if peaks else 1.0
    for k, ((x, d), color) in enumerate(zip(outlines, colors)):
        base = n - 1 - k
        ax.axhline(base, color="#cccccc", linewidth=0.6, zorder=1)
        if x.size == 0:
            continue
        top = base + d / scale * overlap
        if filled:
            poly = ax.fill_between(
                x, base, top, facecolor=color, edgecolor="#333333", linewidth=0.6, alpha=alpha, zorder=2 + 2 * k
            )
        else:
            poly = ax.fill_between(x, base, top, facecolor=color, alpha=alpha * 0.35, linewidth=0, zorder=2 + 2 * k)
            ax.plot(x, top, color=color, linewidth=1.6, zorder=3 + 2 * k)
        poly.set_gid(gid)
    ax.set_ylim(-0.4, n - 1 + overlap + 0.2)


def dead_legend(ax: Axes, extra: Sequence[Any] = (), n_dead: int = 0, threshold: float = 0.5) -> None:
    """Legend right of the axes: the split patches given plus the dead-channel entry."""
    handles = list(extra)
    if n_dead:
        label = f"dead channel\n(dead fraction ≥ {threshold:g}): {n_dead}"
        handles.append(Patch(facecolor=DEAD_COLOR, alpha=0.75, label=label))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
