"""``LiveDashboard``: the timeline and heatmap of a run, updated epoch by epoch during training."""

from __future__ import annotations

import html
import math
import time
from typing import Any

import ipywidgets as widgets
import numpy as np
from matplotlib.figure import Figure

from .. import plots
from ..history import check_history
from ..plots._style import ALARM_COLOR
from ._base import FigureWidget, resolve_split

__all__ = ["LiveDashboard"]


def _fmt(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.4g}"


class LiveDashboard(FigureWidget):
    """Sparsity timeline and layers × epochs heatmap that redraw in place after every epoch.

    Pass it to the training loop as a callback (``fit(..., callbacks=[dashboard])``) or call
    ``dashboard.on_epoch_end(history)`` yourself after each epoch with the live History. The
    redraw replaces the PNG bytes of one ``Image`` widget (no ``clear_output``, no flicker).
    The status line shows the epoch (n / N), train and test loss and the detector's alarm.

    The **Stop** button sets ``stop_requested = True``; ``fit`` checks it after each epoch and
    ends training cleanly after the current epoch (a hand-written loop should check
    ``dashboard.stop_requested`` the same way). Created before any epoch exists, it shows
    "waiting for the first epoch".
    """

    _title = "live training dashboard"

    def __init__(
        self,
        history: Any = None,
        split: str = "test",
        statistic: str = "spatial_mean",
        *,
        total_epochs: int | None = None,
    ) -> None:
        if history is not None:
            check_history(history)
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        if not isinstance(statistic, str):
            raise TypeError(f"statistic must be a str, got {type(statistic).__name__}")
        bad_total = not isinstance(total_epochs, (int, np.integer)) or isinstance(total_epochs, bool)
        if total_epochs is not None and bad_total:
            raise TypeError(f"total_epochs must be an int or None, got {type(total_epochs).__name__}")
        self.history = history
        self.split = split
        self.statistic = statistic
        self.total_epochs = None if total_epochs is None else int(total_epochs)
        self.stop_requested = False
        self.updates = 0
        self._last_batch_status = 0.0
        self.status_html = widgets.HTML(value="")
        self.status_html.add_class("xaisparse-status")
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            tooltip="ends training cleanly after the current epoch",
        )
        super().__init__([self.stop_button, self.status_html], watch=[])  # the status line is output, not a control
        self.stop_button.on_click(self._on_stop)
        self._update_status()
        self.refresh()

    # ------------------------------------------------------------------ training-loop callbacks
    def on_epoch_end(self, history: Any = None, *args: Any, **kwargs: Any) -> None:
        """Redraw with the live History (or an object with a ``.history``); never raises."""
        try:
            if history is not None and not hasattr(history, "spatial_hist") and hasattr(history, "history"):
                history = history.history
            if history is not None:
                check_history(history)
                self.history = history
            self.updates += 1
            self.refresh()
            self._update_status()
        except Exception as exc:
            self._show([f"could not update the dashboard: {type(exc).__name__}: {exc}"], "error")

    __call__ = on_epoch_end

    def on_batch_end(self, state: Any = None, *args: Any, **kwargs: Any) -> None:
        """Status line with the running batch loss, at most about once a second; never raises."""
        try:
            epochs = getattr(state, "epochs", None)
            if self.total_epochs is None and isinstance(epochs, int) and epochs > 0:
                self.total_epochs = epochs
            now = time.monotonic()
            if now - self._last_batch_status < 1.0:
                return
            self._last_batch_status = now
            epoch, batch, batches = (getattr(state, k, None) for k in ("epoch", "batch", "batches"))
            loss = getattr(state, "loss", None)
            line = f"training epoch {epoch}: batch {None if batch is None else batch + 1}/{batches}, loss {_fmt(loss)}"
            self._update_status(extra=line)
        except Exception:
            pass

    def _on_stop(self, _button: Any = None) -> None:
        self.stop_requested = True
        self.stop_button.disabled = True
        self.stop_button.description = "Stopping…"
        self._update_status()

    def reset(self) -> None:
        """Forget the stop request (for a new training run)."""
        self.stop_requested = False
        self.stop_button.disabled = False
        self.stop_button.description = "Stop"
        self._update_status()

    # ------------------------------------------------------------------ display
    def _update_status(self, extra: str | None = None) -> None:
        h = self.history
        parts: list[str] = []
        if h is None or h.is_empty:
            parts.append("waiting for the first epoch…")
        else:
            last = h.epochs[-1]
            total = self.total_epochs if self.total_epochs is not None else h.config.get("epochs")
            parts.append(f"<b>epoch {last}</b>" + (f" / {total}" if isinstance(total, (int, float)) else ""))
            for s in ("train", "test"):
                if s not in h.splits or "loss" not in h.metric_names():
                    continue
                ser = h.metric(s, "loss")
                if not ser.empty:
                    parts.append(f"{s} loss {_fmt(float(ser.sort_index().iloc[-1]))}")
            alarm = h.alarm_epoch
            parts.append(
                f"<span style='color:{ALARM_COLOR}'>alarm at epoch {alarm}</span>" if alarm is not None else "no alarm"
            )
        if extra:
            parts.append(html.escape(extra))
        if self.stop_requested:
            parts.append("<b>stop requested</b>: training ends after the current epoch")
        self.status_html.value = "<span style='font-family:monospace'>" + " · ".join(parts) + "</span>"

    @property
    def status(self) -> str:
        """The status line as plain text."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.status_html.value))

    def _describe(self) -> str:
        h = self.history
        last = h.epochs[-1] if h is not None and not h.is_empty else None
        return f"LiveDashboard(epoch={last}, split={self.split!r}, stop_requested={self.stop_requested})"

    def _draw(self, notes: list[str]) -> Figure:
        h = self.history
        split, note = resolve_split(self.split, [] if h is None else h.sparsity_splits)
        if note:
            notes.append(note)
        return plots.dashboard(h, split, self.statistic, notes=notes)
