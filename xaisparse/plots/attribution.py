"""Attribution figures: Captum maps over the input images, two models' attribution sparsity, a layer's channels.

The numbers come from :mod:`xaisparse.attribution` (Captum); these functions only draw them:

* :func:`attribution_maps`: one row per model or method, one column per image, each map
  blended over its greyscale input (a colour-blind-safe sequential map for magnitudes, a
  diverging one for signed attributions).
* :func:`attribution_distributions`: a :class:`~xaisparse.attribution.ModelComparison` as
  the two models' per-image distributions of one measure, the paired values image by image,
  and the per-image rank correlation of the two maps.
* :func:`channel_importance`: a :class:`~xaisparse.attribution.ChannelTable` as importance
  against activation sparsity (flagged channels highlighted) beside the table's rows as bars,
  sorted by an importance or by sparsity.

This module imports neither torch nor Captum: tensors are read through ``.detach().cpu()``
and the result classes are imported when a function is called with one.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .._validation import check_choice, check_int, check_number
from ._style import (
    CHANNEL_COLOR,
    DEAD_COLOR,
    PAGE_WIDTH,
    PALETTE,
    WIDGET_WIDTH,
    NoData,
    check_columns,
    new_figure,
    panel_figure,
    statistic_label,
)
from .channels import show_image

__all__ = [
    "ATTRIBUTION_KINDS",
    "MAP_CMAPS",
    "MAP_SCALES",
    "SIGNS",
    "attribution_distributions",
    "attribution_maps",
    "channel_importance",
    "display_maps",
]

#: What a drawn map shows (Captum's ``sign=`` vocabulary of ``visualize_image_attr``).
SIGNS: tuple[str, ...] = ("absolute_value", "all", "positive", "negative")
#: Colour maps per sign: perceptually uniform and colour-blind safe (viridis; ColorBrewer's RdBu).
MAP_CMAPS: dict[str, str] = {"absolute_value": "viridis", "positive": "viridis", "negative": "viridis", "all": "RdBu_r"}
#: How the colour scale of :func:`attribution_maps` is set: per map, or shared by all rows of one image.
MAP_SCALES: tuple[str, ...] = ("map", "image")
#: Distribution kinds of :func:`attribution_distributions`.
ATTRIBUTION_KINDS: tuple[str, ...] = ("violin", "box")
#: Images drawn at most by :func:`attribution_maps` (columns).
MAX_COLUMNS = 12
#: Channel rows drawn at most by :func:`channel_importance` by default.
TOP_CHANNELS = 24

IRRELEVANT_COLOR = "#949494"
_SIGN_TEXT = {
    "absolute_value": "|attribution| summed over channels",
    "all": "attribution summed over channels (red +, blue −)",
    "positive": "positive part of the channel sum",
    "negative": "negative part of the channel sum",
}
_IMPORTANCES = ("gradcam", "conductance", "ablation")  # xaisparse.attribution.IMPORTANCES (it imports torch)
_MEASURE_LABELS = {
    "sparsity": "attribution sparsity (0 spread – 1 one pixel)",
    "perplexity": "effective number of attributed pixels",
    "gini": "Gini of the map (0 equal – 1 one pixel)",
    "zero_fraction": "share of pixels without attribution",
}
_IMPORTANCE_TEXT = {
    "gradcam": "Grad-CAM",
    "conductance": "conductance",
    "ablation": "ablation (target drop)",
    "sparsity": "activation sparsity",
    "dead_fraction": "dead fraction",
}


def _array(value: Any, name: str) -> np.ndarray:
    """``value`` (a tensor on any device, an array, nested lists) as a float64 array."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array or tensor of numbers, got {type(value).__name__}") from exc


def display_maps(attributions: Any, sign: str = "absolute_value") -> np.ndarray:
    """The ``(N, H, W)`` maps :func:`attribution_maps` draws from Captum's ``(N, C, H, W)`` output.

    ``"absolute_value"``: ``|a|`` summed over channels, exactly the map whose sparsity
    :func:`~xaisparse.attribution.attribution_sparsity` measures; ``"all"``: the signed channel
    sum; ``"positive"`` / ``"negative"``: its positive part / the magnitude of its negative part.
    ``(N, H, W)`` input is taken as one-channel maps, ``(N, F)`` as one row of ``F`` pixels.

    >>> a = np.array([[[[1.0, -2.0]], [[-3.0, 0.0]]]])  # one image, 2 channels, 1×2 pixels
    >>> display_maps(a).tolist(), display_maps(a, "all").tolist(), display_maps(a, "negative").tolist()
    ([[[4.0, 2.0]]], [[[-2.0, -2.0]]], [[[2.0, 2.0]]])
    """
    check_choice("sign", sign, SIGNS)
    a = _array(attributions, "attributions")
    if a.ndim == 2:
        a = a[:, None, None, :]
    elif a.ndim == 3:
        a = a[:, None]
    if a.ndim != 4:
        raise ValueError(f"attributions must have shape (N, C, H, W), (N, H, W) or (N, F), got shape {a.shape}")
    if sign == "absolute_value":
        return np.abs(a).sum(axis=1)
    summed = a.sum(axis=1)
    if sign == "all":
        return summed
    return np.maximum(summed if sign == "positive" else -summed, 0.0)


def _scale(values: np.ndarray, outlier_perc: float) -> float:
    """The colour-scale top of ``|values|``: its ``100 - outlier_perc`` percentile (max if that is 0)."""
    mag = np.abs(values[np.isfinite(values)])
    if mag.size == 0:
        return 1.0
    top = float(np.percentile(mag, 100.0 - outlier_perc))
    if top <= 0:
        top = float(mag.max())
    return top if top > 0 else 1.0


def attribution_maps(
    images: Any,
    attributions: Mapping[str, Any],
    *,
    sign: str = "absolute_value",
    sparsity: Mapping[str, Any] | None = None,
    captions: Sequence[str] | None = None,
    annotations: Mapping[str, Sequence[str]] | None = None,
    scale: str = "map",
    outlier_perc: float = 2.0,
    alpha: float = 0.8,
    show_inputs: bool = True,
    title: str = "",
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Attribution maps over their input images: one row per model or method, one column per image.

    Args:
        images: the inputs ``(N, C, H, W)`` (or ``(N, H, W)``), drawn in grey (RGB when ``C == 3``).
        attributions: ``{row label: Captum's output for those N images}``, e.g.
            ``{"baseline": a0, "penalised": a1}`` or ``{"saliency": s, "occlusion": o}``.
        sign: what each map shows (see :func:`display_maps` and :data:`~xaisparse.plots.SIGNS`); magnitudes use
            viridis, signed maps ColorBrewer's diverging RdBu (both colour-blind safe).
        sparsity: ``{row label: (N,) values}`` written under each map (``s = …``), e.g. the
            ``sparsity`` column of :func:`~xaisparse.attribution.attribution_sparsity`.
        captions: one title per image column (default ``image 0``, ``image 1``, …).
        annotations: ``{row label: N strings}`` written in front of each map's ``s = …``.
        scale: ``"map"`` (default; every map on its own colour scale, as Captum draws them) or
            ``"image"`` (one scale for all rows of an image, to compare magnitudes across rows).
        outlier_perc: the top of a colour scale is the ``100 - outlier_perc`` percentile of the
            ``|values|`` it covers (Captum's ``outlier_perc``), so a few hot pixels do not wash
            the rest out; larger values saturate.
        alpha: opacity of the strongest pixels; weaker ones fade towards the image underneath.
        show_inputs: add a first row with the plain inputs.

    ``data`` receives ``rows``, ``maps`` (``{row: (N, H, W)}`` exactly as drawn), ``scales``
    (``{row: (N,)}``), ``sign``, ``cmap`` and ``sparsity``.

    >>> rng = np.random.default_rng(0)
    >>> x, a = rng.random((3, 1, 8, 8)), rng.normal(size=(3, 1, 8, 8))
    >>> fig = attribution_maps(x, {"model a": a, "model b": 2 * a}, sparsity={"model a": [0.1, 0.2, 0.3]})
    >>> len(fig.axes), fig.axes[3].get_title()
    (10, 's = 0.100')
    """
    check_choice("sign", sign, SIGNS)
    check_choice("scale", scale, MAP_SCALES)
    outlier_perc = check_number("outlier_perc", outlier_perc, minimum=0.0, maximum=50.0)
    alpha = check_number("alpha", alpha, minimum=0.0, maximum=1.0)
    notes = [] if notes is None else notes
    if not isinstance(attributions, Mapping):
        raise TypeError(f"attributions must be a dict {{row label: attributions}}, got {type(attributions).__name__}")
    if not attributions:
        raise NoData("Select at least one model or method.")
    imgs = _array(images, "images")
    if imgs.ndim == 3:
        imgs = imgs[:, None]
    if imgs.ndim != 4:
        raise ValueError(f"images must have shape (N, C, H, W) or (N, H, W), got shape {imgs.shape}")
    n = imgs.shape[0]
    if n == 0:
        raise NoData("Select at least one image.")
    maps = {str(k): display_maps(v, sign) for k, v in attributions.items()}
    for row, m in maps.items():
        if m.shape[0] != n:
            raise ValueError(f"attributions[{row!r}] holds {m.shape[0]} maps for {n} images")
    if n > MAX_COLUMNS:
        notes.append(f"{n} images given; the first {MAX_COLUMNS} are shown.")
        n = MAX_COLUMNS
        imgs = imgs[:n]
        maps = {row: m[:n] for row, m in maps.items()}
    captions = [f"image {j}" for j in range(n)] if captions is None else [str(c) for c in captions][:n]
    if len(captions) < n:
        raise ValueError(f"captions holds {len(captions)} titles for {n} images")
    values = {}
    for row, s in (sparsity or {}).items():
        values[str(row)] = _array(s, f"sparsity[{row!r}]").reshape(-1)[:n]
    rows = list(maps)
    scales: dict[str, np.ndarray] = {}
    if scale == "map":
        scales = {row: np.array([_scale(m[j], outlier_perc) for j in range(n)]) for row, m in maps.items()}
    else:
        shared = np.array([_scale(np.concatenate([maps[r][j].ravel() for r in rows]), outlier_perc) for j in range(n)])
        scales = {row: shared for row in rows}
    dead = [(row, j) for row in rows for j in range(n) if not np.any(np.nan_to_num(maps[row][j]) != 0)]
    if dead:
        notes.append(
            f"{len(dead)} map(s) carry no attribution at all (all zero), e.g. {dead[0][0]!r} image {dead[0][1]}."
        )
    nonfinite = [(row, j) for row in rows for j in range(n) if not np.isfinite(maps[row][j]).all()]
    if nonfinite:
        notes.append(f"{len(nonfinite)} map(s) hold NaN/Inf values (drawn transparent).")

    import matplotlib

    cmap = matplotlib.colormaps[MAP_CMAPS[sign]]
    n_rows = len(rows) + int(show_inputs)
    fig = new_figure(min(max(1.75 * n + 2.2, 5.2), WIDGET_WIDTH), 1.8 * n_rows + 0.9)
    axes = fig.subplots(n_rows, n, squeeze=False)
    height, width = imgs.shape[2], imgs.shape[3]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)
    lo = -1.0 if sign == "all" else 0.0
    for j in range(n):
        if show_inputs:
            show_image(axes[0, j], imgs[j])
            axes[0, j].set_title(captions[j], fontsize=9)
        for r, row in enumerate(rows):
            ax = axes[r + int(show_inputs), j]
            show_image(ax, imgs[j])
            m = maps[row][j]
            top = float(scales[row][j])
            strength = np.clip(np.nan_to_num(np.abs(m) / top, nan=0.0, posinf=1.0), 0.0, 1.0)
            image = ax.imshow(
                m,
                cmap=cmap,
                vmin=lo * top,
                vmax=top,
                alpha=alpha * (0.1 + 0.9 * strength),
                interpolation="nearest",
                extent=extent,
            )
            image.set_gid(f"map:{row}:{j}")
            parts = []
            if annotations and row in annotations:
                parts.append(str(annotations[row][j]))
            if row in values:
                s = float(values[row][j])
                parts.append("s = nan" if not np.isfinite(s) else f"s = {s:.3f}")
            if parts:
                ax.set_title(" · ".join(parts), fontsize=9, color=DEAD_COLOR if (row, j) in dead else "black")
        for r in range(n_rows):
            axes[r, j].set_xticks([])
            axes[r, j].set_yticks([])
    if show_inputs:
        axes[0, 0].set_ylabel("input", fontsize=9)
    for r, row in enumerate(rows):
        axes[r + int(show_inputs), 0].set_ylabel("\n".join(textwrap.wrap(row, 18)), fontsize=9)
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(lo, 1.0), cmap=cmap)
    where = "each map's" if scale == "map" else "each image's"
    fig.colorbar(
        mappable,
        ax=axes[int(show_inputs) :, -1].tolist(),
        shrink=0.9,
        label=f"attribution ÷ {where} scale\n({100 - outlier_perc:g}th percentile of |·|)",
    )
    head = title or "attribution maps over the input"
    fig.suptitle(f"{head}\n{_SIGN_TEXT[sign]}" + ("; s = attribution sparsity" if values else ""), fontsize=10)
    drawn = {"rows": rows, "maps": maps, "scales": scales, "sign": sign, "cmap": cmap.name, "sparsity": values}
    _fill(data, drawn)
    return fig


def _result(value: Any, kind: str, name: str, made_by: str) -> Any:
    """``value`` if it is an instance of ``xaisparse.attribution.<kind>`` (imported here: it needs torch)."""
    from .. import attribution

    if not isinstance(value, getattr(attribution, kind)):
        raise TypeError(f"{name} must be a {kind} (from xaisparse.attribution.{made_by}), got {type(value).__name__}")
    return value


def _fill(data: dict[str, Any] | None, drawn: dict[str, Any]) -> None:
    """Put what a figure drew into the caller's ``data`` dict (replacing what it held)."""
    if data is not None:
        data.clear()
        data.update(drawn)


def _distribution(ax: Axes, groups: list[np.ndarray], colors: Sequence[str], kind: str) -> None:
    """Violins (matplotlib's KDE; a box where a group is constant) or boxes, with the values as dots."""
    for i, (v, color) in enumerate(zip(groups, colors)):
        if v.size == 0:
            continue
        if kind == "violin" and v.size > 1 and np.ptp(v) > 0:
            parts = ax.violinplot([v], positions=[i], widths=0.7, showextrema=False, showmedians=False)
            bodies: list[Any] = list(parts["bodies"])  # type: ignore[call-overload]
            for body in bodies:
                body.set(facecolor=color, edgecolor="#333333", alpha=0.6, linewidth=0.6)
                body.set_gid(f"violin:{i}")
            q1, med, q3 = np.percentile(v, [25, 50, 75])
            ax.vlines(i, q1, q3, color="#222222", linewidth=3.0, zorder=3)
            ax.scatter([i], [med], s=16, color="white", edgecolor="#222222", linewidth=0.6, zorder=4)
        else:
            box = ax.boxplot([v], positions=[i], widths=0.5, patch_artist=True, manage_ticks=False, showfliers=False)
            for patch in box["boxes"]:
                patch.set(facecolor=color, alpha=0.6, edgecolor="#333333")
            for line in box["medians"]:
                line.set(color="#222222", linewidth=1.5)
        jitter = np.random.default_rng(i).uniform(-0.16, 0.16, v.size)
        ax.scatter(i + 0.42 + jitter * 0.4, v, s=5, color=color, alpha=0.5, linewidth=0, zorder=2, gid=f"values:{i}")


def attribution_distributions(
    comparison: Any,
    statistic: str = "sparsity",
    kind: str = "violin",
    *,
    columns: int = 3,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Two models' attribution maps compared over the same images (a :func:`~xaisparse.attribution.compare_models` result).

    Left: each model's per-image distribution of ``statistic`` (a measure of
    :data:`~xaisparse.attribution.MEASURES`; violins or boxes, every image a dot). Middle: the
    paired values, one dot per image (model b against model a; on the diagonal they agree),
    titled with the paired summary (median difference b − a, Wilcoxon signed-rank p-value).
    Right: the per-image Spearman correlation of the two maps over the pixels (1: both models
    rank the pixels alike). ``columns``: panels to a row (3: one wide row; 2 or 1 wrap them
    into a page-wide figure whose text stays legible).

    ``data`` receives ``names``, ``statistic``, ``values`` (``{name: (images,)}`` by sample),
    ``samples``, ``summary`` (the summary row as a dict) and ``map_spearman``.
    """
    from ..attribution import MEASURES

    result = _result(comparison, "ModelComparison", "comparison", "compare_models")
    check_choice("statistic", statistic, MEASURES)
    check_choice("kind", kind, ATTRIBUTION_KINDS)
    check_columns(columns)
    notes = [] if notes is None else notes
    a_name, b_name = result.names
    per = result.per_image
    tables = {name: per[per.model == name].sort_values("sample") for name in result.names}
    if any(t.empty for t in tables.values()):
        raise NoData("The comparison holds no images.")
    values = {name: t[statistic].to_numpy(np.float64) for name, t in tables.items()}
    finite = {name: v[np.isfinite(v)] for name, v in values.items()}
    if not any(v.size for v in finite.values()):
        raise NoData(f"No finite {statistic} values: every map was NaN/Inf.")
    for name, v in values.items():
        if v.size > finite[name].size:
            notes.append(f"{name}: {v.size - finite[name].size} image(s) without a finite {statistic} are left out.")
    summary = result.summary.set_index("statistic").loc[statistic].to_dict()
    rho = result.similarity["map_spearman"].to_numpy(np.float64)
    colors = [PALETTE[0], PALETTE[1]]
    label = _MEASURE_LABELS.get(statistic, statistic_label(statistic))

    fig, (ax_dist, ax_pair, ax_rho) = panel_figure(3, columns, 13.5, 4.4, ratios=[0.9, 1.0, 1.0])
    _distribution(ax_dist, [finite[a_name], finite[b_name]], colors, kind)
    ax_dist.set_xticks([0, 1], [a_name, b_name], fontsize=9)
    ax_dist.set_xlim(-0.6, 1.9)
    ax_dist.set_ylabel(label)
    medians = "\n".join(f"{name}: {np.median(v):.3f}" for name, v in finite.items() if v.size)
    ax_dist.set_title(f"{statistic} per image, medians\n{medians}", fontsize=9)
    ax_dist.grid(axis="y", alpha=0.3)

    va, vb = values[a_name], values[b_name]
    ok = np.isfinite(va) & np.isfinite(vb)
    ax_pair.scatter(va[ok], vb[ok], s=10, color="#333333", alpha=0.55, linewidth=0, gid="paired")
    if ok.any():
        lo, hi = float(min(va[ok].min(), vb[ok].min())), float(max(va[ok].max(), vb[ok].max()))
        pad = 0.04 * (hi - lo) if hi > lo else 0.05
        ax_pair.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#888888", linestyle="--", linewidth=1.0)
        ax_pair.set_xlim(lo - pad, hi + pad)
        ax_pair.set_ylim(lo - pad, hi + pad)
    above = int((vb[ok] > va[ok]).sum())
    p = summary.get("pvalue", float("nan"))
    p_text = "n/a" if not np.isfinite(p) else f"{p:.2g}"
    ax_pair.set_title(
        f"paired, one dot per image (n = {int(summary.get('n', ok.sum()))}; {above} above the diagonal)\n"
        f"median {b_name} − {a_name} = {summary.get('median_difference', float('nan')):+.3f}\n"
        f"Wilcoxon signed-rank p = {p_text}",
        fontsize=9,
    )
    ax_pair.set_xlabel(f"{a_name}: {statistic}")
    ax_pair.set_ylabel(f"{b_name}: {statistic}")
    ax_pair.grid(alpha=0.3)

    r_ok = rho[np.isfinite(rho)]
    if r_ok.size:
        ax_rho.hist(r_ok, bins=np.linspace(-1.0, 1.0, 41), color=PALETTE[2], alpha=0.8, edgecolor="white")
        ax_rho.axvline(float(np.median(r_ok)), color="#222222", linestyle="--", linewidth=1.2)
        ax_rho.set_title(
            f"Spearman ρ of the two maps per image\nmedian {np.median(r_ok):.2f} (1 = same pixel ranking)",
            fontsize=9,
        )
    else:
        ax_rho.text(0.5, 0.5, "no finite rank correlations", ha="center", va="center", transform=ax_rho.transAxes)
        ax_rho.set_title("Spearman ρ of the two maps per image", fontsize=10)
        notes.append("every image has a constant map in one of the models: no rank correlation.")
    if rho.size > r_ok.size and r_ok.size:
        notes.append(f"{rho.size - r_ok.size} image(s) with a constant map have no rank correlation.")
    ax_rho.set_xlim(-1.0, 1.0)
    ax_rho.set_xlabel("ρ over the pixels")
    ax_rho.set_ylabel("images")
    ax_rho.grid(axis="y", alpha=0.3)
    fig.suptitle(
        f"{result.algorithm.replace('_', ' ')} attributions of {a_name} and {b_name} on the same {va.size} images",
        fontsize=11,
    )
    drawn = {
        "names": result.names,
        "statistic": statistic,
        "values": values,
        "samples": tables[a_name]["sample"].to_numpy(),
        "summary": summary,
        "map_spearman": rho,
    }
    _fill(data, drawn)
    return fig


def _sort_text(sort: str) -> str:
    """``|Grad-CAM|`` for an importance (sorted by magnitude), ``activation sparsity`` etc. otherwise."""
    return f"|{_IMPORTANCE_TEXT[sort].split(' (')[0]}|" if sort in _IMPORTANCES else _IMPORTANCE_TEXT[sort]


def _flag_colors(rows: Any) -> list[str]:
    return [
        DEAD_COLOR if d else (IRRELEVANT_COLOR if i else CHANNEL_COLOR)
        for d, i in zip(rows["dead_but_important"], rows["alive_but_irrelevant"])
    ]


def _dead(rows: Any, threshold: float) -> np.ndarray:
    """Channels that count as dead (``dead_fraction >= threshold``) but are not flagged important."""
    return (rows["dead_fraction"].to_numpy(np.float64) >= threshold) & ~rows["dead_but_important"].to_numpy(bool)


def channel_importance(
    table: Any,
    importance: str = "ablation",
    sort: str | None = None,
    *,
    activation: str = "sparsity",
    top: int | None = TOP_CHANNELS,
    title: str = "",
    columns: int = 3,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """A layer's channel table (:func:`~xaisparse.attribution.channel_table`): importance beside activation sparsity.

    Left: one dot per channel, ``|importance|`` against the ``activation`` column
    (``"sparsity"`` or ``"dead_fraction"``), titled with their Spearman correlation from
    ``table.correlations``. Right, the table view: the channels sorted by ``sort`` (an
    importance magnitude or an activation column, descending, as :meth:`~xaisparse.attribution.ChannelTable.sorted`;
    default: ``importance``), the first ``top`` of them (``None``: all), as bars of the signed
    importance and of the activation sparsity (dead fraction as diamonds). Dead-but-important
    channels are red, alive-but-irrelevant ones grey, other dead channels (``dead_fraction`` at
    least the table's ``dead_threshold``) hollow red circles with red labels. ``title`` (e.g.
    the model's name) leads the figure title. ``columns``: 3 puts the three panels in one wide
    row; 2 or 1 put the scatter above the two bar panels in a page-wide figure whose text stays
    legible.

    ``data`` receives ``layer``, ``importance``, ``activation``, ``sort``, ``shown`` (the
    sorted rows drawn, a DataFrame), ``x``/``y``/``channels`` (the scatter, all channels),
    ``rho``, ``pvalue``, ``n`` and ``flags`` (``{flag: channel list}``).
    """
    from ..attribution import ACTIVATION_COLUMNS, IMPORTANCES

    result = _result(table, "ChannelTable", "table", "channel_table")
    check_choice("importance", importance, IMPORTANCES)
    check_columns(columns)
    check_choice("activation", activation, ACTIVATION_COLUMNS)
    sort = importance if sort is None else check_choice("sort", sort, IMPORTANCES + ACTIVATION_COLUMNS)
    if top is not None:
        top = check_int("top", top, minimum=1)
    notes = [] if notes is None else notes
    channels = result.channels
    if channels.empty:
        raise NoData(f"The channel table of {result.layer!r} has no channels.")
    x = channels[activation].to_numpy(np.float64)
    y = channels[importance].abs().to_numpy(np.float64)
    ids = channels["channel"].to_numpy()
    if not np.isfinite(y).any():
        raise NoData(f"No finite {importance} importance in the channel table of {result.layer!r}.")
    shown = result.sorted(sort)
    if top is not None and len(shown) > top:
        notes.append(f"{len(shown)} channels; the first {top} by {_sort_text(sort)} are listed on the right.")
        shown = shown.head(top)
    corr = result.correlations
    match = corr[(corr.activation == activation) & (corr.importance == importance)]
    rho, pvalue, n_used = (
        (float(match.rho.iloc[0]), float(match.pvalue.iloc[0]), int(match.n.iloc[0]))
        if len(match)
        else (float("nan"), float("nan"), 0)
    )
    flags = {
        flag: channels.loc[channels[flag].astype(bool), "channel"].astype(int).tolist()
        for flag in ("dead_but_important", "alive_but_irrelevant")
    }

    k = len(shown)
    height = float(np.clip(0.24 * k + 2.0, 4.4, 10.0))
    if columns >= 3:
        fig = new_figure(13.5, height)
        ax_sc, ax_imp, ax_act = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1.25, 1.0, 0.75]})
    else:  # the scatter above, the two bar panels (one row per channel) side by side below it
        fig = new_figure(PAGE_WIDTH, 3.8 + height)
        grid = fig.add_gridspec(2, 2, height_ratios=[3.8, height], width_ratios=[1.0, 0.75])
        ax_sc, ax_imp, ax_act = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    colors = _flag_colors(channels)
    dead_threshold = float(result.thresholds.get("dead_threshold", 0.5))
    dead = _dead(channels, dead_threshold)
    faces = ["white" if d else c for d, c in zip(dead, colors)]
    edges = [DEAD_COLOR if d else "#222222" for d in dead]
    ax_sc.scatter(x, y, s=34, c=faces, edgecolors=edges, linewidth=np.where(dead, 1.4, 0.5), zorder=3, gid="channels")
    if len(ids) <= 64:
        for xi, yi, c in zip(x, y, ids):
            if np.isfinite(xi) and np.isfinite(yi):
                ax_sc.annotate(str(int(c)), (xi, yi), xytext=(3, 3), textcoords="offset points", fontsize=7)
    rho_text = "n/a" if not np.isfinite(rho) else f"{rho:+.2f} (p = {pvalue:.2g}, {n_used} channels)"
    ax_sc.set_title(
        f"|{_IMPORTANCE_TEXT[importance]}| vs {_IMPORTANCE_TEXT[activation]}\nSpearman ρ = {rho_text}", fontsize=10
    )
    ax_sc.set_xlabel(statistic_label("spatial_mean" if activation == "sparsity" else "dead_fraction"))
    ax_sc.set_ylabel(f"|{_IMPORTANCE_TEXT[importance]}| (mean over images)")
    ax_sc.grid(alpha=0.3)

    pos = np.arange(k)
    row_colors = _flag_colors(shown)
    signed = shown[importance].to_numpy(np.float64)
    ax_imp.barh(pos, signed, color=[CHANNEL_COLOR if v >= 0 else PALETTE[1] for v in signed], gid="importance")
    ax_imp.axvline(0.0, color="#555555", linewidth=0.8)
    ax_imp.set_yticks(pos, [str(int(c)) for c in shown["channel"]], fontsize=8 if k > 24 else 9)
    for tick, color, is_dead in zip(ax_imp.get_yticklabels(), row_colors, _dead(shown, dead_threshold)):
        if color != CHANNEL_COLOR or is_dead:
            tick.set_color(DEAD_COLOR if is_dead else color)
            tick.set_fontweight("bold")
    ax_imp.set_ylim(k - 0.5, -0.5)
    ax_imp.set_ylabel(f"channel, sorted by {_sort_text(sort)}")
    ax_imp.xaxis.set_major_locator(MaxNLocator(nbins=4))  # a few short ticks: no overlap, no offset text
    ax_imp.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
    ax_imp.set_xlabel(f"{_IMPORTANCE_TEXT[importance]} (signed; + supports the target)")
    ax_imp.grid(axis="x", alpha=0.3)

    ax_act.barh(pos, shown["sparsity"].to_numpy(np.float64), color="#56b4e9", alpha=0.85, gid="sparsity")
    dead_fraction = shown["dead_fraction"].to_numpy(np.float64)
    some = dead_fraction > 0
    ax_act.scatter(dead_fraction[some], pos[some], marker="D", s=18, color="#222222", zorder=3, gid="dead_fraction")
    ax_act.set_yticks(pos, [""] * k)
    ax_act.set_ylim(k - 0.5, -0.5)
    ax_act.set_xlim(0.0, 1.02)
    ax_act.set_xlabel("sparsity (bars) · dead fraction (◆)")
    ax_act.grid(axis="x", alpha=0.3)

    handles = [
        Line2D([], [], marker="o", linestyle="", color=CHANNEL_COLOR, label="channel"),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color=DEAD_COLOR,
            label=f"dead but important ({len(flags['dead_but_important'])})",
        ),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            color=IRRELEVANT_COLOR,
            label=f"alive but irrelevant ({len(flags['alive_but_irrelevant'])})",
        ),
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markerfacecolor="white",
            markeredgecolor=DEAD_COLOR,
            label=f"dead, not important (dead fraction ≥ {dead_threshold:g}): {int(dead.sum())}",
        ),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=9, frameon=False)
    fig.suptitle(
        (f"{title} · " if title else "")
        + f"channel table of {result.layer} on {result.images} images · sorted by {_sort_text(sort)}",
        fontsize=11,
    )
    drawn = {
        "layer": result.layer,
        "importance": importance,
        "activation": activation,
        "sort": sort,
        "shown": shown,
        "x": x,
        "y": y,
        "channels": ids,
        "rho": rho,
        "pvalue": pvalue,
        "n": n_used,
        "flags": flags,
    }
    _fill(data, drawn)
    return fig
