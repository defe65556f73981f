"""Learning curves of one run beside earlier runs: loss, accuracy and sparsity per layer, with the
changes made during the run marked (the overfitting playground's main view)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..history import History, check_history
from ._style import (
    ALARM_COLOR,
    MINIMUM_COLOR,
    WIDGET_WIDTH,
    NoData,
    check_columns,
    layer_colors,
    panel_figure,
    split_color,
)

__all__ = ["LOSS_NOTE", "learning_curves"]

#: What the loss curves of :func:`~xaisparse.train.fit` runs contain (the y label of the loss panel).
LOSS_NOTE = "task loss only (cross-entropy, eval mode;\nno penalty, no weight decay)"
_EARLIER = "#9a9a9a"


def _earlier_runs(previous: Any) -> list[History]:
    if previous is None:
        return []
    runs = list(previous.values()) if isinstance(previous, Mapping) else list(previous)
    return [check_history(h, "previous run") for h in runs]


def _mark_changes(ax: Axes, changes: Sequence[tuple[int, str]], label: bool) -> None:
    """A dotted line after each epoch at which knobs changed (the next epoch trains with them)."""
    for epoch, text in changes:
        ax.axvline(epoch + 0.5, color="#7a3e9d", linestyle=":", linewidth=1.5, gid=f"change:{epoch}")
        if label:
            ax.annotate(
                text,
                xy=(epoch + 0.5, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -2),
                textcoords="offset points",
                rotation=90,
                ha="left",
                va="top",
                fontsize=9,
                color="#7a3e9d",
            )


def learning_curves(
    history: History,
    previous: Mapping[str, History] | Sequence[History] | None = None,
    changes: Sequence[tuple[int, str]] = (),
    split: str = "test",
    *,
    total_epochs: int | None = None,
    columns: int = 3,
    notes: list[str] | None = None,
    data: dict[str, Any] | None = None,
) -> Figure:
    """Loss, accuracy and each layer's sparsity over epochs, earlier runs drawn faintly behind.

    Three panels: train (dashed) and ``split`` (solid) loss — the task loss as ``fit`` records
    it, see :data:`~xaisparse.plots.curves.LOSS_NOTE` —, the same for accuracy, and the ``split`` sparsity
    (``spatial_mean``) of each layer. ``previous`` runs are thin grey lines behind (their
    ``split`` loss, accuracy and sparsity). ``changes``: ``(epoch, text)`` pairs drawn as dotted
    purple lines between that epoch and the next (the next epoch trained with the change).
    The test-loss minimum (green) and the detector's alarm (red) are marked. ``total_epochs``
    (for a run in progress) leaves room on the x axis: a quarter more than the epochs so far
    (at least 10), never past the run's last epoch. ``columns``: panels to a row (3: one wide
    row, as in the playground; 2 or 1 wrap them into a page-wide figure for a document).

    >>> from xaisparse.testing import synthetic_history
    >>> fig = learning_curves(synthetic_history(epochs=8), [synthetic_history(seed=1)], [(3, "λ 0→1")])
    >>> [ax.get_title() for ax in fig.axes[:3]]
    ['loss', 'accuracy', 'sparsity per layer (test)']
    """
    h = check_history(history)
    check_columns(columns)
    if h.is_empty:
        raise NoData("waiting for the first epoch…")
    notes = [] if notes is None else notes
    earlier = _earlier_runs(previous)
    # wrapped for a page: as wide as the widgets' figures, so no text shows under 8 pt
    fig, (ax_loss, ax_acc, ax_sp) = panel_figure(3, columns, 12.5, 3.7, [1.0, 1.0, 1.25], page_width=WIDGET_WIDTH)
    drawn: dict[str, Any] = {"loss": {}, "accuracy": {}, "sparsity": {}, "earlier": len(earlier)}
    for k, old in enumerate(earlier):
        label = "earlier runs" if k == 0 else None
        for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            line = old.metric(split, metric)
            ax.plot(
                line.index, line.to_numpy(), color=_EARLIER, lw=1.0, alpha=0.55, label=label, gid=f"earlier:{metric}"
            )
        if old.layer_names:
            frame = old.layer_frame(split)
            for name in frame.columns:
                ax_sp.plot(frame.index, frame[name].to_numpy(), color=_EARLIER, lw=0.9, alpha=0.45)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for s in ("train", split):
            series = h.metric(s, metric)
            if series.empty:
                continue
            style = "--" if s == "train" else "-"
            ax.plot(
                series.index,
                series.to_numpy(),
                color=split_color(s),
                ls=style,
                lw=2.0,
                marker="o" if len(series) <= 30 else None,
                ms=3,
                label=s,
                gid=f"{metric}:{s}",
            )
            drawn[metric][s] = series
        ax.set_title(metric, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_loss.set_ylabel(LOSS_NOTE, fontsize=9)
    ax_acc.set_ylim(-0.02, 1.02)
    if h.layer_names and not h.layers.empty:
        frame = h.layer_frame(split)
        for color, name in zip(layer_colors(frame.shape[1]), frame.columns):
            ax_sp.plot(frame.index, frame[name].to_numpy(), color=color, lw=2.0, label=name, gid=f"layer:{name}")
        drawn["sparsity"] = frame
    else:
        notes.append("this run records no layer sparsity.")
    ax_sp.set_title(f"sparsity per layer ({split})", fontsize=10)
    ax_sp.set_ylabel("spatial sparsity (0 dense – 1 one unit)", fontsize=9)
    ax_sp.set_xlabel("epoch")
    ax_sp.grid(alpha=0.3)
    best, alarm = h.test_loss_minimum(split), h.alarm_epoch
    for ax in (ax_loss, ax_acc, ax_sp):
        if best is not None:
            ax.axvline(best[0], color=MINIMUM_COLOR, ls="--", lw=1.3, gid="minimum")
        if alarm is not None:
            ax.axvline(alarm, color=ALARM_COLOR, ls=":", lw=1.6, gid="alarm")
        _mark_changes(ax, changes, label=ax is ax_loss)
        if total_epochs is not None:  # room to grow into, up to the last epoch of the run
            right = min(int(total_epochs), max(10, int(np.ceil(1.25 * h.epochs[-1]))))
            ax.set_xlim(-0.5, max(right, h.epochs[-1]) + 0.5)
    for ax in (ax_loss, ax_sp):
        ax.legend(fontsize=9, frameon=False, loc="best")
    last = h.epochs[-1]
    head = f"epoch {last}" + (f" / {total_epochs}" if total_epochs is not None else "")
    if best is not None:
        head += f" · lowest {split} loss {best[1]:.3f} at epoch {best[0]} (green)"
    if alarm is not None:
        head += f" · sparsity alarm at epoch {alarm} (red)"
    fig.suptitle(head, fontsize=10)
    drawn.update({"minimum": best, "alarm": alarm, "changes": list(changes)})
    if data is not None:
        data.update(drawn)
    return fig
