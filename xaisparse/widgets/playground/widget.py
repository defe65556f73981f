"""``OverfittingPlayground``: the knobs, Train / Pause / Step / Stop / Reset, and live views of a run.

Threads: a run trains in its own thread (:class:`~.session.PlaygroundRun`); a painter thread
per run draws the newest snapshot whenever one arrives (so training never waits for
matplotlib, and a slow redraw only skips intermediate epochs); the kernel's main thread
handles clicks and control changes. Widget traits are only ever set under one lock
(``_ui_lock``); ipykernel sends the resulting comm messages through its IOPub thread, which
is safe from any thread. matplotlib is used by one thread at a time (``RENDER_LOCK``).
"""

from __future__ import annotations

import html
import json
import math
import threading
import time
import warnings
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
import pandas as pd
from matplotlib.figure import Figure

from ... import plots
from ...history import History
from ...plots._style import check_columns
from ...plots.curves import LOSS_NOTE
from ...summary import compare_runs
from .._base import FigureWidget
from .controls import GROUPS, build_knobs, knob_value, set_knob
from .session import PlaygroundRun, Snapshot
from .settings import LIVE_KNOBS, PlaygroundSettings, settings_from

__all__ = ["RENDER_LOCK", "OverfittingPlayground"]

#: Serialises matplotlib between the painter threads and the kernel's thread.
RENDER_LOCK = threading.Lock()
#: Earlier runs drawn faintly behind the current one.
EARLIER_RUNS = 3
#: Views of the playground besides the learning curves (``self.image``).
VIEWS: tuple[str, ...] = ("curves", "maps", "distribution", "channel")
_KNOB_NAMES = (
    "dataset",
    "train_size",
    "label_noise",
    "width",
    "batch_norm",
    "epochs",
    "batch_size",
    "lr",
    "dropout",
    "weight_decay",
    "weight",
    "blocks",
    "seed",
)
_TABLE_COLUMNS = [
    "status",
    "last epoch",
    "min test loss",
    "min-loss epoch",
    "rise after min",
    "best test acc",
    "last test acc",
    "alarm epoch",
    "train seconds",
]


class _Painter(threading.Thread):
    """Draws the newest snapshot of a run each time one arrives, until the run has ended.

    After each drawing it waits as long as the drawing took (at most 2 s) before the next, so
    that drawing never takes more than about half of the time (matplotlib holds the GIL); the
    end of the run is drawn at once.
    """

    def __init__(self, paint: Callable[[], None], live: bool = True, done: Callable[[], None] | None = None) -> None:
        super().__init__(name="xaisparse-playground-painter", daemon=True)
        self._paint = paint
        self.live = live
        self._on_done = done
        self._cv = threading.Condition()
        self._dirty = False
        self._done = False

    def request(self) -> None:
        if not self.live:
            return
        with self._cv:
            self._dirty = True
            self._cv.notify()

    def finish(self) -> None:
        with self._cv:
            self._dirty = self._done = True
            self._cv.notify()

    def run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._dirty or self._done)
                dirty, self._dirty, done = self._dirty, False, self._done
            if dirty:
                started = time.perf_counter()
                self._paint()
                if not done:  # leave training at least as much time as drawing took (at most 2 s)
                    with self._cv:
                        self._cv.wait_for(lambda: self._done, min(time.perf_counter() - started, 2.0))
            with self._cv:
                if done and not self._dirty:
                    break
        if self._on_done is not None:
            self._on_done()


class OverfittingPlayground(FigureWidget):
    """Train a small CNN with knobs you set, and watch it learn and overfit, epoch by epoch.

    Args:
        settings: starting settings: a :class:`~.settings.PlaygroundSettings`, its string
            (see :meth:`from_settings`) or None for the defaults.
        knobs: single settings that override ``settings`` (``train_size=100``, ``weight=1.0``,
            …; names and ranges in :data:`~.settings.KNOB_RANGES`), checked at once.
        n_images: test images whose feature maps are shown (the first of classes 0, 1, …).
        columns: the learning curves' panels to a row (3: one wide row, for a wide screen or the
            classroom app; 2: wrapped to a notebook or docs page's width).

    **Train** starts a run in a background thread (the kernel stays free): **Pause** /
    **Resume**, **Step** (exactly one epoch, also from a fresh start), **Stop** (within one
    batch; the epochs measured so far are kept) and **Reset** (stop and clear the view) work
    while it trains. The regularisers (learning rate, dropout, weight decay, λ and its blocks)
    may change during a run: the change applies from the next epoch and is marked on the
    curves. Every run ends up in ``runs`` and in the runs table, with its settings string.

    From code: :meth:`train` (blocking, returns the History), or :meth:`start`, :meth:`pause`,
    :meth:`resume`, :meth:`step`, :meth:`stop`, :meth:`reset`, :meth:`wait`.
    """

    _title = "overfitting playground"

    def __init__(self, settings: Any = None, *, n_images: int = 4, columns: int = 3, **knobs: Any) -> None:
        for old in ("split", "statistic"):
            if old in knobs:
                knobs.pop(old)
                warnings.warn(
                    f"OverfittingPlayground({old}=...) is deprecated and ignored: the playground shows the test "
                    "split's spatial sparsity",
                    DeprecationWarning,
                    stacklevel=2,
                )
        start = settings_from(PlaygroundSettings() if settings is None else settings)
        start = start.replace(**knobs) if knobs else start
        if not isinstance(n_images, int) or isinstance(n_images, bool) or not 1 <= n_images <= 10:
            raise ValueError(f"n_images must be an int in [1, 10], got {n_images!r}")
        self.n_images = n_images
        self.columns = check_columns(columns)
        self.probe_size = start.probe_size
        self._changes = start.changes
        self.runs: list[History] = []
        self.run: PlaygroundRun | None = None
        self.updates = 0
        self._ui_lock = threading.RLock()
        self._local = threading.local()
        self._painter: _Painter | None = None
        self._status_extra = ""
        self._knobs = build_knobs(start)
        for name in _KNOB_NAMES:  # the old attribute names (train_size, …) are the knob widgets
            setattr(self, name, self._knobs[name])
        self._build_buttons()
        super().__init__([], watch=[])
        self._build_views()
        self._assemble()
        for name, knob in self._knobs.items():
            knob.observe(lambda change, name=name: self._on_knob(name, change), names="value")
        self._sync_all()
        self._show(["Set the knobs and press Train."])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: str | PlaygroundSettings, **kwargs: Any) -> OverfittingPlayground:
        """A playground set to a settings string (as shown in the runs table and the settings box)."""
        return cls(settings_from(settings), **kwargs)

    def _button(self, text: str, icon: str, style: str, tip: str, action: Callable[[], Any]) -> widgets.Button:
        button = widgets.Button(description=text, icon=icon, button_style=style, tooltip=tip)
        button.layout.width = "104px"
        button.on_click(lambda _b: self._guard(action))
        return button

    def _build_buttons(self) -> None:
        self.train_button = self._button("Train", "play", "success", "train a new model with these knobs", self.start)
        self.pause_button = self._button("Pause", "pause", "", "pause after this epoch", self._pause_or_resume)
        self.step_button = self._button("Step", "step-forward", "", "train exactly one epoch", self.step)
        self.stop_button = self._button("Stop", "stop", "danger", "stop within one batch; keep the run", self.stop)
        self.reset_button = self._button("Reset", "undo", "warning", "stop and clear the view", self.reset)
        self.status_html = widgets.HTML(value="")
        self.status_html.add_class("xaisparse-status")

    def _build_views(self) -> None:
        self.settings_text = widgets.Text(
            description="settings",
            tooltip="paste a settings string and press Load, or copy this one to share the run",
            layout=widgets.Layout(width="560px"),
            style={"description_width": "60px"},
        )
        self.copy_html = widgets.HTML(value="")
        self.load_button = widgets.Button(description="Load", icon="upload", tooltip="set the knobs from the string")
        self.load_button.layout.width = "90px"
        self.load_button.on_click(lambda _b: self._guard(lambda: self.load(self.settings_text.value)))
        self.loss_html = widgets.HTML(value="")
        self.image_choice = widgets.ToggleButtons(  # the first test image of each class 0, 1, …
            options=[(f"digit {i}", i) for i in range(self.n_images)],
            value=0,
            description="test image",
            tooltips=[f"the first test image of digit {i}" for i in range(self.n_images)],
            style={"button_width": "64px"},
        )
        self.layer_choice = widgets.Dropdown(options=["features.block1.relu"], description="layer")
        self.channel_choice = widgets.IntSlider(value=0, min=0, max=7, description="channel", continuous_update=False)
        self.images = {
            name: widgets.Image(value=b"", format="png", layout=widgets.Layout(max_width="100%", height="auto"))
            for name in VIEWS
            if name != "curves"
        }
        self.images["curves"] = self.image
        for image in self.images.values():  # hidden until there is a picture (no broken-image icons)
            image.layout.display = "none"
        self.notes = {name: widgets.HTML(value="") for name in VIEWS}
        self.table_html = widgets.HTML(value="")
        self.image_choice.observe(lambda _c: self._on_view_control(lambda: self._paint(("maps",))), names="value")
        self.layer_choice.observe(lambda _c: self._on_view_control(self._on_layer), names="value")
        self.channel_choice.observe(lambda _c: self._on_view_control(lambda: self._paint(("channel",))), names="value")

    def _assemble(self) -> None:
        groups = []
        for title, names in GROUPS.items():
            head = widgets.HTML(value=f"<b>{html.escape(title)}</b>")
            groups.append(
                widgets.VBox([head, *(self._knobs[n] for n in names)], layout=widgets.Layout(margin="0 12px 0 0"))
            )
        self.knob_box = widgets.HBox(groups, layout=widgets.Layout(flex_flow="row wrap", align_items="flex-start"))
        buttons = [self.train_button, self.pause_button, self.step_button, self.stop_button, self.reset_button]
        self.controls = widgets.HBox(
            [*buttons, self.status_html], layout=widgets.Layout(flex_flow="row wrap", align_items="center")
        )
        share = widgets.HBox([self.settings_text, self.copy_html, self.load_button])
        picks = widgets.HBox([self.image_choice, self.layer_choice, self.channel_choice])
        picks.layout.flex_flow = "row wrap"
        below = widgets.HBox(
            [
                widgets.VBox(
                    [self.images["distribution"], self.notes["distribution"]], layout=widgets.Layout(width="38%")
                ),
                widgets.VBox([self.images["channel"], self.notes["channel"]], layout=widgets.Layout(width="62%")),
            ],
            layout=widgets.Layout(align_items="flex-start"),
        )
        self.children = [
            widgets.HTML(value=_INTRO),
            self.knob_box,
            self.controls,
            self.message_html,
            share,
            self.loss_html,
            self.image,
            self.notes["curves"],
            widgets.HTML(value="<b>Inside the network</b> — pick a test image, a layer and one of its channels:"),
            picks,
            self.images["maps"],
            self.notes["maps"],
            below,
            widgets.HTML(value="<b>Runs so far</b> (copy a settings string to repeat a run exactly):"),
            self.table_html,
        ]
        self.add_class("xaisparse-playground")
        self.add_class("xaisparse-idle")  # no run, or the last one ended and is drawn

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> PlaygroundSettings:
        """The settings the next **Train** uses: the knobs, the probe size and any loaded changes."""
        values = {name: knob_value(self._knobs, name) for name in _KNOB_NAMES}
        return PlaygroundSettings(**values, probe_size=self.probe_size, changes=self._changes)

    @property
    def settings_string(self) -> str:
        """:attr:`settings` as its short string."""
        return self.settings.to_string()

    def load(self, settings: str | PlaygroundSettings) -> PlaygroundSettings:
        """Set the knobs (and the changes to replay) from a settings string; a clear ``ValueError`` otherwise."""
        new = settings_from(settings)
        if self.run is not None and self.run.active:
            raise RuntimeError("stop or reset the current run before loading other settings")
        with self._ui_lock, self._hold():
            for name in _KNOB_NAMES:
                set_knob(self._knobs, name, getattr(new, name))
            self.probe_size, self._changes = new.probe_size, new.changes
        self._sync_all()
        note = f"Loaded {new.to_string()}"
        if new.changes:
            note += f" (with {len(new.changes)} change(s) during the run)"
        self._show([note + ": press Train."])
        return new

    def _on_knob(self, name: str, change: dict[str, Any]) -> None:
        if self._hold_depth:
            return
        self._guard(lambda: self._knob_changed(name))

    def _knob_changed(self, name: str) -> None:
        if name == "dataset":
            with self._hold():
                set_knob(self._knobs, "dataset", self._knobs["dataset"].value)
        run = self.run
        if run is not None and run.active and name in LIVE_KNOBS:
            value = run.change(name, knob_value(self._knobs, name))
            epoch = run.snapshot.epoch if run.snapshot is not None else 0
            if run.pending:
                self._show([f"{name} → {value} from epoch {epoch + 1} on (applied when this epoch ends)."])
        elif self._changes:
            self._changes = ()
            self._show(["You changed a knob: the changes of the loaded settings are dropped."], "warning")
        self._sync_all()

    # ------------------------------------------------------------------ run controls
    def start(self) -> PlaygroundRun:
        """**Train**: a new run with the current settings, in the background."""
        return self._new_run(None)

    def _new_run(self, pause_after: int | None, live: bool = True) -> PlaygroundRun:
        if self.run is not None and self.run.active:
            raise RuntimeError(f"a run is {self.run.state}: stop or reset it before training a new one")
        settings = self.settings
        run = PlaygroundRun(settings, f"run {len(self.runs) + 1}", self.n_images, listener=self._on_run)
        self.run = run
        self._painter = _Painter(lambda: self._guard(self._paint_all), live, self._painted_last)
        with self._ui_lock:
            self.remove_class("xaisparse-idle")
        self._painter.start()
        self._status_extra = ""
        self._show([])
        run.start(pause_after)
        return run

    def pause(self) -> None:
        """**Pause** after the epoch in progress."""
        if self.run is not None and self.run.state == "running":
            self.run.pause()
            self._status_extra = "pausing after this epoch…"
            self._sync_all()

    def resume(self) -> None:
        """**Resume** a paused run."""
        if self.run is not None and self.run.state == "paused":
            self.run.resume()

    def _pause_or_resume(self) -> None:
        if self.run is not None and self.run.state == "paused":
            self.resume()
        else:
            self.pause()

    def step(self) -> PlaygroundRun:
        """**Step**: train exactly one more epoch, then pause (a new run when none is active)."""
        if self.run is None or not self.run.active:
            return self._new_run(1)
        self.run.step()
        return self.run

    def stop(self) -> None:
        """**Stop** within one batch; the run (its measured epochs) is kept in ``runs``."""
        if self.run is not None and self.run.active:
            self._status_extra = "stopping…"
            self.run.stop()
            self._sync_all()

    def reset(self) -> None:
        """**Reset**: stop the current run (kept in ``runs``) and clear the view."""
        run = self.run
        if run is not None and run.active:
            run.stop()
            run.wait(60)
        if self._painter is not None:
            self._painter.join(60)
        self.run = None
        self._changes = ()
        with self._ui_lock:
            for name in VIEWS:
                self.images[name].value = b""
                self.images[name].layout.display = "none"
                self.notes[name].value = ""
        self._sync_all()
        self._show(["Reset: set the knobs and press Train (earlier runs stay in the table)."])

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until the current run has ended and its last epoch is drawn; True when it has."""
        run, painter = self.run, self._painter
        done = run.wait(timeout) if run is not None else True
        if painter is not None:
            painter.join(timeout)
            done = done and not painter.is_alive()
        return done

    def train(self, *, live: bool = True, **knobs: Any) -> History:
        """Set ``knobs`` (as the constructor takes them), train a run to its end and return its History.

        Blocks until the run has ended (from code: tests, executed notebooks). Unknown knobs
        and values out of range raise before anything is changed. With ``live=False`` the views
        are drawn once at the end instead of during the run. A run that fails raises its error.
        """
        if not isinstance(live, bool):
            raise TypeError(f"live must be a bool, got {type(live).__name__}")
        new = self.settings.replace(**knobs)  # validated before anything changes
        if knobs:
            self.load(new)
        run = self._new_run(None, live)
        self.wait()
        if run.error is not None:
            raise run.error
        if run.history is None:
            raise RuntimeError(f"the run ended without a recorded epoch ({run.stop_reason})")
        return run.history

    @property
    def history(self) -> History | None:
        """The History of the current run (or the last one), None before any run."""
        if self.run is not None and self.run.history is not None:
            return self.run.history
        return self.runs[-1] if self.runs else None

    # ------------------------------------------------------------------ run events (training thread)
    def _on_run(self, run: PlaygroundRun, event: str) -> None:
        if run is not self.run:
            return
        if event == "epoch":
            if self._painter is not None:
                self._painter.request()
            return
        if event == "state" and run.state in ("finished", "stopped", "failed"):
            with self._ui_lock:
                if run.history is not None and run.history.epochs and run.history not in self.runs:
                    self.runs.append(run.history)
                self._status_extra = ""
            if run.state == "failed":
                err = run.error
                self._show([f"training failed: {type(err).__name__}: {err}"], "error")
            elif run.state == "stopped":
                self._show([f"{run.stop_reason}: the run is kept with the epochs measured so far."])
            if self._painter is not None:
                self._painter.finish()
        if event in ("state", "batch"):
            self._sync_all(table=event == "state")

    # ------------------------------------------------------------------ drawing
    def _show(self, notes: Any, level: str = "info") -> None:
        with self._ui_lock:
            super()._show(notes, level)

    def _guard(self, action: Callable[[], Any]) -> None:
        """Run a click or redraw; never raise into the front end (the message line says what failed)."""
        try:
            action()
        except Exception as exc:
            self._show([f"{type(exc).__name__}: {exc}"], "error")

    def _snapshot(self) -> Snapshot | None:
        return self.run.snapshot if self.run is not None else None

    def _figure(self, name: str, snap: Snapshot, notes: list[str], columns: int | None = None) -> Figure:
        if name == "curves":
            earlier = [h for h in self.runs if h is not (self.run.history if self.run else None)][-EARLIER_RUNS:]
            changes = [(e, _change_text(k, old, new)) for e, k, old, new in snap.changes]
            return plots.learning_curves(
                snap.history,
                earlier,
                _merge(changes),
                total_epochs=self.run.settings.epochs if self.run else None,
                columns=self.columns if columns is None else columns,
                notes=notes,
            )
        if snap.maps is None:
            raise plots.NoData("no feature maps yet")
        if name == "maps":
            k = int(self.image_choice.value)
            title = (
                f"epoch {snap.epoch}: feature maps of a test image of digit {k}, "
                "each titled channel: spatial sparsity (0 dense – 1 one unit)"
            )
            return plots.feature_maps(snap.maps, image=k, max_channels=32, title=title, notes=notes)
        layer = self.layer_choice.value
        if name == "distribution":
            return plots.distribution(snap.history, layer, None, "test", kind="box", notes=notes)
        channel = int(self.channel_choice.value)
        per_image = snap.map_sparsity[layer][:, :, channel] if layer in snap.map_sparsity else None
        return plots.channel_over_epochs(
            snap.maps, layer, channel, history=snap.history, epochs=snap.map_epochs, per_image=per_image, notes=notes
        )

    def _paint(self, names: tuple[str, ...] = VIEWS) -> None:
        """Draw ``names`` from the newest snapshot (placeholders before the first epoch).

        All pictures are rendered first and shown together, so the views always show the same epoch.
        """
        snap = self._snapshot()
        if snap is not None:
            self._sync_layers(snap)
        drawn: dict[str, tuple[bytes, list[str]]] = {}
        for name in names:
            notes: list[str] = []
            png = b""
            if snap is not None:
                try:
                    with RENDER_LOCK:
                        png = plots.figure_png(self._figure(name, snap, notes))
                except plots.NoData as exc:
                    notes.append(str(exc))
                except Exception as exc:
                    notes.append(f"could not draw this view: {type(exc).__name__}: {exc}")
            drawn[name] = (png, notes)
        with self._ui_lock:
            for name, (png, notes) in drawn.items():
                self.images[name].value = png
                self.images[name].layout.display = None if png else "none"
                self.notes[name].value = _note_html(notes)
        if snap is not None and "curves" in names:
            self._png = bytes(self.images["curves"].value)

    def _painted_last(self) -> None:
        """The run has ended and its last epoch is drawn (the class tells browser tests so)."""
        with self._ui_lock:
            self.add_class("xaisparse-idle")

    def _paint_all(self) -> None:
        with self._ui_lock:
            self.add_class("xaisparse-busy")  # for tests and styling: the views are being redrawn
        try:
            self._paint(VIEWS)
            self.updates += 1
            self._sync_all()
        finally:
            with self._ui_lock:
                self.remove_class("xaisparse-busy")

    def refresh(self) -> None:
        """Redraw every view from the newest snapshot (never raises)."""
        if not hasattr(self, "images"):  # the base class's constructor draws before the views exist
            return
        self._guard(self._paint_all)

    def _sync_layers(self, snap: Snapshot) -> None:
        if snap.maps is None:
            return
        layers = snap.maps.layers
        with self._ui_lock:
            self._local.quiet = True  # thread-local: a click in another thread is never swallowed
            try:
                if list(self.layer_choice.options) != layers:
                    keep = self.layer_choice.value if self.layer_choice.value in layers else layers[0]
                    self.layer_choice.options = layers
                    self.layer_choice.value = keep
                top = snap.maps.maps[self.layer_choice.value].shape[1] - 1
                if self.channel_choice.max != top:
                    self.channel_choice.max = top
            finally:
                self._local.quiet = False

    def _on_view_control(self, action: Callable[[], Any]) -> None:
        """A view's control changed: redraw it, unless this thread is setting the controls itself."""
        if not getattr(self._local, "quiet", False):
            self._guard(action)

    def _on_layer(self) -> None:
        snap = self._snapshot()
        if snap is not None and snap.maps is not None:
            self._local.quiet = True
            try:
                self.channel_choice.max = snap.maps.maps[self.layer_choice.value].shape[1] - 1
            finally:
                self._local.quiet = False
        self._paint(("distribution", "channel"))

    def _draw(self, notes: list[str]) -> Figure:
        """The learning curves of the current (or last) run: the static form of the playground."""
        snap = self._snapshot()
        if snap is None:
            raise plots.NoData("Set the knobs and press Train.")
        return self._figure("curves", snap, notes)

    def figure(self, view: str = "curves", *, columns: int | None = None) -> Figure:
        """One view of the current run as a matplotlib figure: one of ``curves``, ``maps``,
        ``distribution``, ``channel`` (for static notebooks and reports). ``columns``: the
        ``curves`` panels to a row (default: the playground's ``columns``; 3 is one wide row,
        2 or 1 wrap them to a page's width)."""
        if view not in VIEWS:
            raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
        if columns is not None:
            check_columns(columns)
        snap = self._snapshot()
        if snap is None:
            raise plots.NoData("no run yet: press Train (or call train()) first")
        with RENDER_LOCK:
            return self._figure(view, snap, [], columns=columns)

    # ------------------------------------------------------------------ status, buttons, table
    def _sync_all(self, table: bool = True) -> None:
        """Buttons, knobs, status line, settings box and (``table``) runs table from the current state."""
        run = self.run
        state = run.state if run is not None else "idle"
        active = state in ("running", "paused")
        with self._ui_lock:
            self.train_button.disabled = active
            self.pause_button.disabled = not active or (run is not None and run.stop_requested)
            self.pause_button.description = "Resume" if state == "paused" else "Pause"
            self.pause_button.icon = "play" if state == "paused" else "pause"
            self.step_button.disabled = state == "running"
            self.stop_button.disabled = not active or (run is not None and run.stop_requested)
            for name, knob in self._knobs.items():
                knob.disabled = active and name not in LIVE_KNOBS
            self.status_html.value = self._status_line(run)
            text = self.settings_string if not active or run is None else run.final_settings.to_string()
            if self.settings_text.value != text:
                self.settings_text.value = text
            self.copy_html.value = _copy_button(self.settings_text.value)
            self.loss_html.value = _loss_html(self.probe_size)
            if table:
                self.table_html.value = self._table_html()

    def _status_line(self, run: PlaygroundRun | None) -> str:
        if run is None:
            return _mono("ready")
        parts = [f"<b>{html.escape(run.state)}</b>"]
        epoch, batch, batches = run.position
        total = run.settings.epochs
        if run.state == "running" and batch and batch < batches:
            parts.append(f"epoch {epoch} / {total}, batch {batch}/{batches}")
        elif run.snapshot is not None:
            parts.append(f"epoch {run.snapshot.epoch} / {total}")
        else:
            parts.append("loading data and building the network…")
        h = run.snapshot.history if run.snapshot is not None else None
        if h is not None:
            for split in ("train", "test"):
                loss = h.metric(split, "loss")
                if not loss.empty and math.isfinite(float(loss.iloc[-1])):
                    parts.append(f"{split} loss {float(loss.iloc[-1]):.3f}")
        for knob, value in run.pending.items():
            parts.append(f"{knob} → {value} after this epoch")
        if self._status_extra and run.active:
            parts.append(html.escape(self._status_extra))
        return _mono(" · ".join(parts))

    @property
    def status(self) -> str:
        """The status line as plain text."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.status_html.value))

    def table(self) -> pd.DataFrame:
        """Every run so far (and the one in progress): its summary row, state and settings string."""
        runs = list(self.runs)
        run = self.run
        live = run is not None and run.active and run.snapshot is not None
        if live:
            runs.append(run.snapshot.history)  # type: ignore[union-attr]
        if not runs:
            return pd.DataFrame(columns=[*_TABLE_COLUMNS, "settings"])
        named = {str(h.config.get("name") or f"run {i + 1}"): h for i, h in enumerate(runs)}
        table = compare_runs(named).loc[list(named)]  # in the order they ran
        status = [_run_status(h) for h in named.values()]
        if live:
            status[-1] = run.state  # type: ignore[union-attr]
        table.insert(0, "status", status)
        table["settings"] = [str(h.config.get("playground", "")) for h in named.values()]
        return table

    def _table_html(self) -> str:
        table = self.table()
        if table.empty:
            return "<i>no runs yet</i>"
        shown = table[[c for c in _TABLE_COLUMNS if c in table.columns]].copy()
        for col in shown.columns:
            if shown[col].dtype.kind == "f":
                shown[col] = shown[col].map(lambda v: "–" if not math.isfinite(v) else f"{v:.3g}")
        shown["settings"] = [f"<code>{html.escape(s)}</code>" for s in table["settings"]]
        shown.insert(0, "run", table.index)
        body = shown.to_html(escape=False, na_rep="–", border=0, classes="xaisparse-runs", index=False)
        style = ".xaisparse-runs td, .xaisparse-runs th {white-space: nowrap; padding: 2px 8px; text-align: right}"
        return f"<style>{style}</style><div style='font-size:12px;overflow-x:auto'>{body}</div>"

    def _describe(self) -> str:
        state = self.run.state if self.run is not None else "idle"
        return f"OverfittingPlayground({self.settings_string!r}, state={state!r}, runs={len(self.runs)})"


_INTRO = (
    "<b>Overfitting playground</b>: train a small CNN on digits and watch the test loss turn. "
    "Set the knobs, press <b>Train</b>; <b>Pause</b>, <b>Step</b> one epoch, <b>Stop</b> at any time."
)


def _mono(text: str) -> str:
    return f"<span style='font-family:monospace'>{text}</span>"


def _note_html(notes: list[str]) -> str:
    if not notes:
        return ""
    body = "<br>".join(html.escape(n) for n in notes)
    return f"<div style='color:#555;font-size:12px'>{body}</div>"


def _loss_html(probe_size: int) -> str:
    what = LOSS_NOTE.replace("\n", " ")
    return (
        "<div style='font-size:12px;color:#444'><b>What the losses are:</b> "
        f"{html.escape(what)}, measured after each epoch on fixed sets of {probe_size} training and "
        f"{probe_size} test images. Training minimises that loss + λ·sparsity (with weight decay inside Adam); "
        "the penalty is not part of the plotted losses.</div>"
    )


def _copy_button(text: str) -> str:
    js = html.escape(f"navigator.clipboard.writeText({json.dumps(text)})", quote=True)
    return (
        f'<button class="xaisparse-copy jupyter-button" title="copy the settings string" onclick="{js}" '
        'style="height:28px;margin:2px 4px">Copy</button>'
    )


def _change_text(knob: str, old: Any, new: Any) -> str:
    name = {"weight": "λ", "weight_decay": "wd", "lr": "lr", "dropout": "dropout", "blocks": "λ blocks"}[knob]

    def fmt(v: Any) -> str:
        return "+".join(str(b) for b in v) if isinstance(v, tuple) else f"{v:g}"

    return f"{name} {fmt(old)}→{fmt(new)}"


def _merge(changes: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """One label per epoch: ``"λ 0→1, dropout 0→0.3"``."""
    by_epoch: dict[int, list[str]] = {}
    for epoch, text in changes:
        by_epoch.setdefault(epoch, []).append(text)
    return [(e, ", ".join(t)) for e, t in sorted(by_epoch.items())]


def _run_status(h: History) -> str:
    reason = h.outcome.stop_reason or ""
    if reason.startswith("failed"):
        return f"failed after epoch {h.outcome.stopped_early_at}"
    if "Stop pressed" in reason:
        return f"stopped after epoch {h.outcome.stopped_early_at}"
    return "finished"
