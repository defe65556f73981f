"""The common shape of every widget: controls, a message line and one PNG ``Image``.

A widget subclass builds its controls once, calls ``super().__init__(controls)`` (which
observes their ``value``; ``watch=`` narrows that) and implements :meth:`FigureWidget._draw`, which calls one
function of :mod:`xaisparse.plots` with the controls' values (it raises
:class:`~xaisparse.plots.NoData` with a message for the user when there is nothing to draw).
Redraws replace the PNG bytes of the single ``Image`` child: no ``clear_output``, no flicker,
nothing but stock ipywidgets on the front-end. Every error of a redraw ends up in the message
line.
"""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ipywidgets as widgets
from matplotlib.figure import Figure

from ..plots import TIMELINE_STATISTICS, NoData, figure_png, message_figure
from ..plots.channels import OVERLAY, shown_splits

__all__ = ["FigureWidget", "NoData", "resolve_split", "set_slider", "split_buttons", "statistic_dropdown"]

log = logging.getLogger("xaisparse.widgets")

_STYLE = {
    "info": "color:#31708f;background:#eef6fb;border-left:4px solid #31708f",
    "warning": "color:#8a6d3b;background:#fcf8e3;border-left:4px solid #c09853",
    "error": "color:#a94442;background:#f9eded;border-left:4px solid #a94442",
}


class FigureWidget(widgets.VBox):
    """Base class: ``children = [controls, message, image]``, built once."""

    #: Default figure title used by the static form when there is nothing to draw.
    _title = ""

    def __init__(
        self, controls: Sequence[widgets.Widget] = (), *, watch: Sequence[widgets.Widget] | None = None, **kwargs: Any
    ) -> None:
        self._hold_depth = 0
        self._sticky: list[str] = []  # notes about the constructor arguments, until a control changes
        self._notes: list[str] = []
        self._level = "info"
        self._png = b""
        self.message_html = widgets.HTML(value="", layout=widgets.Layout(display="none", margin="2px 0"))
        self.message_html.add_class("xaisparse-message")
        self.image = widgets.Image(
            value=b"", format="png", layout=widgets.Layout(max_width="100%", height="auto", align_self="flex-start")
        )
        self.controls = widgets.HBox(list(controls), layout=widgets.Layout(flex_flow="row wrap", align_items="center"))
        super().__init__(children=[self.controls, self.message_html, self.image], **kwargs)
        self.add_class("xaisparse-widget")
        self._watch(*(controls if watch is None else watch))

    # ------------------------------------------------------------------ wiring
    def _watch(self, *controls: widgets.Widget) -> None:
        for control in controls:
            control.observe(self._on_control, names="value")

    def _on_control(self, change: dict[str, Any]) -> None:
        if self._hold_depth:
            return
        self._sticky = []
        try:
            self._controls_changed(change)
        except Exception as exc:  # a callback never raises into the front-end
            log.debug("control update failed", exc_info=True)
            self._show([f"could not update the controls: {type(exc).__name__}: {exc}"], "error")
            return
        self.refresh()

    def _controls_changed(self, change: dict[str, Any]) -> None:
        """Hook: adjust dependent controls (inside :meth:`_hold`) before the redraw."""

    def _sync_epoch_slider(
        self, slider: widgets.IntSlider, epochs: Sequence[int], wanted: int | None = None, snap: bool = False
    ) -> None:
        """Move ``slider`` to the range of ``epochs`` (disabled when empty), at ``wanted`` or where it was.

        ``snap`` moves a value between recorded epochs to the nearest recorded one (the later on ties).
        """
        with self._hold():
            if not epochs:
                set_slider(slider, 0, 0, 0)
                slider.disabled = True
                return
            slider.disabled = False
            target = slider.value if wanted is None else int(wanted)
            if snap and target not in epochs:
                target = min(epochs, key=lambda e: (abs(e - target), -e))
            set_slider(slider, epochs[0], epochs[-1], target)

    @contextmanager
    def _hold(self) -> Iterator[None]:
        """Change several controls without a redraw per change."""
        self._hold_depth += 1
        try:
            yield
        finally:
            self._hold_depth -= 1

    # ------------------------------------------------------------------ drawing
    def _draw(self, notes: list[str]) -> Figure:  # pragma: no cover - abstract
        raise NotImplementedError

    def _safe_draw(self) -> tuple[Figure | None, list[str], str]:
        notes: list[str] = list(self._sticky)
        try:
            fig = self._draw(notes)
        except NoData as exc:
            return None, [*notes, str(exc)], "info"
        except Exception as exc:
            log.debug("drawing failed", exc_info=True)
            return None, [*notes, f"could not draw this view: {type(exc).__name__}: {exc}"], "error"
        return fig, notes, "warning" if notes else "info"

    def refresh(self) -> None:
        """Redraw the figure for the current control values (never raises)."""
        fig, notes, level = self._safe_draw()
        try:
            if fig is None:
                self._png = b""  # the message figure is rendered only if a PNG is asked for
                self.image.value = b""
                self.image.layout.display = "none"
            else:
                self._png = figure_png(fig)
                self.image.value = self._png
                self.image.layout.display = None
        except Exception as exc:  # rendering itself failed (e.g. a broken font cache)
            log.debug("rendering failed", exc_info=True)
            notes, level = [*notes, f"could not render the figure: {type(exc).__name__}: {exc}"], "error"
        self._show(notes, level)

    def _show(self, notes: Sequence[str], level: str = "info") -> None:
        self._notes = list(notes)
        self._level = level
        if not notes:
            self.message_html.value = ""
            self.message_html.layout.display = "none"
            return
        body = "<br>".join(html.escape(n) for n in notes)
        self.message_html.value = (
            f'<div class="xaisparse-message xaisparse-{level}" style="{_STYLE.get(level, _STYLE["info"])};'
            f'padding:4px 8px;font-size:13px">{body}</div>'
        )
        self.message_html.layout.display = None

    @property
    def message(self) -> str:
        """The message line as plain text ('' when there is none)."""
        return " ".join(self._notes)

    @property
    def message_level(self) -> str:
        """``"info"``, ``"warning"`` (figure drawn with caveats) or ``"error"``."""
        return self._level if self._notes else ""

    # ------------------------------------------------------------------ static forms
    def to_figure(self) -> Figure:
        """The current view as a new matplotlib figure (a message figure when there is no data)."""
        fig, notes, _ = self._safe_draw()
        return fig if fig is not None else message_figure(" ".join(notes), self._title)

    def _repr_png_(self) -> bytes:
        """PNG of the current view (of the message when there is nothing to draw)."""
        if not self._png:
            if self._notes and not bytes(self.image.value):
                self._png = figure_png(message_figure(self.message, self._title))
            else:
                self.refresh()
                if not self._png:
                    self._png = figure_png(message_figure(self.message, self._title))
        return self._png

    def _describe(self) -> str:
        return f"{type(self).__name__}()"

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None, **kwargs: Any) -> dict[str, Any]:
        """The widget view plus a PNG and a text line for viewers without a live kernel."""
        data = dict(super()._repr_mimebundle_(**kwargs) or {})
        png = self._repr_png_()
        if png:
            data["image/png"] = base64.b64encode(png).decode("ascii")
        text = self._describe()
        if self._notes:
            text += f"\n{self.message}"
        data["text/plain"] = text
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data


def set_slider(slider: widgets.IntSlider, lo: int, hi: int, value: int | None = None) -> None:
    """Move an ``IntSlider``'s range to ``[lo, hi]`` (in an order the validators accept) and its value."""
    lo, hi = int(lo), int(max(hi, lo))
    if lo > slider.max:
        slider.max = hi
        slider.min = lo
    else:
        slider.min = lo
        slider.max = hi
    if value is not None:
        slider.value = int(min(max(value, lo), hi))


def resolve_split(split: Any, options: Sequence[Any]) -> tuple[Any, str | None]:
    """``split`` if it is one of ``options`` (or there are none), else ``test`` or the first option, with a note."""
    options = list(options)
    if not options or split in options:
        return split, None
    fallback = "test" if "test" in options else options[0]
    return fallback, f"split {split!r} is not recorded in this run (recorded: {options}); showing {fallback!r}."


def split_buttons(
    split: object, options: Sequence[str], sticky: list[str], *, overlay: bool = False
) -> widgets.ToggleButtons:
    """The split control: ``split`` if recorded, else ``test`` (or the first recorded one) with a note.

    ``options`` are the splits the run records; an unrecorded ``split`` adds an explanation to
    ``sticky`` (shown until a control changes). With ``overlay`` (and both probes recorded) one
    more button, "train + test", has the value ``("train", "test")`` (:data:`~xaisparse.plots.channels.OVERLAY`).
    """
    if split == "both" or isinstance(split, (list, tuple)):
        split = tuple(shown_splits(split))  # "both": deprecated, warns
    elif not isinstance(split, str):
        raise TypeError(f"split must be a data split such as 'test' or a tuple of them, got {type(split).__name__}")
    choices: list[tuple[str, Any]] = [(s, s) for s in options]
    if overlay and set(OVERLAY) <= set(options):
        choices.append((" + ".join(OVERLAY), OVERLAY))
    split, note = resolve_split(split, [value for _, value in choices])
    if note:
        sticky.append(note)
    return widgets.ToggleButtons(
        options=choices or [(str(split), split)], value=split, description="split", style={"button_width": "84px"}
    )


def statistic_dropdown(statistic: object, recorded: Sequence[str]) -> widgets.Dropdown:
    """The statistic control: the timeline statistics the run records (plus a valid ``statistic`` it lacks)."""
    if not isinstance(statistic, str):
        raise TypeError(f"statistic must be a str, got {type(statistic).__name__}")
    if statistic not in TIMELINE_STATISTICS:
        raise ValueError(f"statistic must be one of {list(TIMELINE_STATISTICS)}, got {statistic!r}")
    options = [s for s in TIMELINE_STATISTICS if s in set(recorded)] or list(TIMELINE_STATISTICS)
    if statistic not in options:
        options.append(statistic)
    return widgets.Dropdown(options=options, value=statistic, description="statistic")
