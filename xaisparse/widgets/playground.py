"""``OverfittingPlayground``: knobs that make a small CNN overfit, a Train button and the live dashboard.

For a classroom: the knobs are the training-set size, the fraction of flipped training labels,
the network width, the number of epochs and the sparsity penalty's ``λ`` (``weight``). **Train**
trains a :class:`~xaisparse.models.SmallCNN` on the embedded digits with
:func:`~xaisparse.train.fit`, the playground itself being the callback: after every epoch the
dashboard (:func:`xaisparse.plots.dashboard`, drawn through
:class:`~xaisparse.widgets.LiveDashboard`) is redrawn in place. Every finished run is kept in
:attr:`OverfittingPlayground.runs`. ``train(...)`` does the same from code (for executed notebooks and tests).

>>> pg = OverfittingPlayground(train_size=100, epochs=3)
>>> pg.settings["train_size"], pg.message
(100, 'Set the knobs and press Train.')
>>> pg.train(label_noise=1.5)
Traceback (most recent call last):
...
ValueError: label_noise must be in [0, 0.9], got 1.5
"""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from .._validation import check_bool, check_fraction, check_int, check_number
from ..history import History
from .live import LiveDashboard

__all__ = ["KNOB_RANGES", "OverfittingPlayground"]

#: The digits' training split holds 1,257 images (the test split 540).
_DIGITS_TRAIN = 1257

#: knob -> (lowest, highest, slider step): the sliders' ranges, and what ``train`` accepts.
KNOB_RANGES: dict[str, tuple[float, float, float]] = {
    "train_size": (20, _DIGITS_TRAIN, 10),
    "label_noise": (0.0, 0.9, 0.05),
    "width": (1, 64, 1),
    "epochs": (1, 300, 1),
    "weight": (-2.0, 5.0, 0.05),
}
_LABELS = {
    "train_size": "train images",
    "label_noise": "label noise",
    "width": "width",
    "epochs": "epochs",
    "weight": "λ (weight)",
}
_TIPS = {
    "train_size": "how many digits the network may learn from (fewer: overfits sooner)",
    "label_noise": "fraction of training labels replaced by a wrong class (more: more to memorise)",
    "width": "channels of the first conv block; the blocks have width, 2·width, 4·width",
    "epochs": "passes over the training images",
    "weight": "λ of the sparsity penalty added to the loss (0: none; > 0 favours dense activations)",
}


def _check_knob(name: str, value: Any) -> int | float:
    """``value`` as the knob ``name`` accepts it: a clear TypeError/ValueError otherwise."""
    lo, hi, _ = KNOB_RANGES[name]
    if name == "label_noise":
        return check_fraction(name, value, low=lo, high=hi)
    if name == "weight":
        return check_number(name, value, minimum=lo, maximum=hi)
    return check_int(name, value, minimum=int(lo), maximum=int(hi))


class OverfittingPlayground(LiveDashboard):
    """Train a small CNN with the knobs' settings and watch losses and sparsity epoch by epoch.

    Args:
        train_size, label_noise, width, epochs, weight: the knobs' starting values (ranges in
            :data:`KNOB_RANGES`); ``weight`` is the penalty's ``λ``, 0 trains without a penalty.
        seed: seeds the data split, the label noise, the model's initialisation and the batches;
            the same knobs and seed give the same run.
        lr, batch_size, probe_size: passed to :func:`~xaisparse.train.fit`.
        split, statistic: what the dashboard shows (as in :class:`LiveDashboard`).

    The knob widgets are the attributes ``train_size``, ``label_noise``, ``width``, ``epochs``
    and ``weight`` (set their ``.value``, then press Train or call :meth:`train`). The Stop
    button ends a run after the current epoch; a click is only seen between epochs when the
    kernel is free to receive it, so in a classic notebook it takes effect once the run ends.
    """

    _title = "overfitting playground"

    def __init__(
        self,
        train_size: int = 200,
        label_noise: float = 0.2,
        width: int = 8,
        epochs: int = 30,
        weight: float = 0.0,
        *,
        seed: int = 0,
        lr: float = 2e-3,
        batch_size: int = 32,
        probe_size: int = 256,
        split: str = "test",
        statistic: str = "spatial_mean",
    ) -> None:
        start = {
            name: _check_knob(name, value)
            for name, value in zip(KNOB_RANGES, (train_size, label_noise, width, epochs, weight), strict=True)
        }
        self.seed = check_int("seed", seed, minimum=0)
        self.lr = check_number("lr", lr, minimum=0)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.probe_size = check_int("probe_size", probe_size, minimum=1)
        self.runs: list[History] = []
        style = {"description_width": "90px"}
        layout = widgets.Layout(width="300px")
        knobs: dict[str, widgets.Widget] = {}
        for name, value in start.items():
            lo, hi, step = KNOB_RANGES[name]
            cls = widgets.IntSlider if isinstance(value, int) else widgets.FloatSlider
            knobs[name] = cls(
                value=value,
                min=lo,
                max=hi,
                step=step,
                description=_LABELS[name],
                tooltip=_TIPS[name],
                style=style,
                layout=layout,
                continuous_update=False,
            )
        self.train_size, self.label_noise, self.width, self.epochs, self.weight = knobs.values()
        self._knobs = knobs
        self.train_button = widgets.Button(
            description="Train", icon="play", button_style="success", tooltip="train a new model with these knobs"
        )
        super().__init__(None, split, statistic, total_epochs=int(start["epochs"]))
        self.knob_box = widgets.HBox(
            [*knobs.values(), self.train_button], layout=widgets.Layout(flex_flow="row wrap", align_items="center")
        )
        self.children = [self.knob_box, self.controls, self.message_html, self.image]
        self.train_button.on_click(self._on_train)
        self._show(["Set the knobs and press Train."])

    @property
    def settings(self) -> dict[str, int | float]:
        """The knobs' current values, by knob name."""
        return {name: knob.value for name, knob in self._knobs.items()}

    def _on_train(self, _button: Any = None) -> None:
        try:
            self.train()
        except Exception as exc:  # a click never raises into the front-end
            self._show([f"could not train: {type(exc).__name__}: {exc}"], "error")

    def train(self, *, live: bool = True, **knobs: Any) -> History:
        """Train a new model with the knobs (``knobs`` set them first, e.g. ``train(epochs=5)``); returns its History.

        Unknown knob names and values outside :data:`KNOB_RANGES` raise a ``ValueError`` (a
        wrong type a ``TypeError``) before anything is trained or changed. ``live=False`` draws
        the dashboard once at the end instead of after every epoch (faster for scripted runs).
        """
        live = check_bool("live", live)
        unknown = sorted(set(knobs) - set(KNOB_RANGES))
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown}: the knobs are {list(KNOB_RANGES)}")
        checked = {name: _check_knob(name, value) for name, value in knobs.items()}
        for name, value in checked.items():
            self._knobs[name].value = value
        s = {name: _check_knob(name, value) for name, value in self.settings.items()}

        import torch

        from ..data import load_digits_dataset
        from ..models import SmallCNN
        from ..penalty import SparsityPenalty
        from ..train import fit

        data = load_digits_dataset(
            size=16, seed=self.seed, train_subset=int(s["train_size"]), label_noise=s["label_noise"]
        )
        torch.manual_seed(self.seed)
        model = SmallCNN(in_channels=1, num_classes=10, width=int(s["width"]), image_size=16)
        penalty = SparsityPenalty(model, weight=float(s["weight"])) if s["weight"] else None
        self.reset()
        self.history, self.updates = None, 0
        self.total_epochs = int(s["epochs"])
        self.refresh()
        self._update_status()
        self.train_button.disabled = True
        try:
            history = fit(
                model,
                data.train,
                data.test,
                epochs=int(s["epochs"]),
                lr=self.lr,
                batch_size=self.batch_size,
                probe_size=self.probe_size,
                penalty=penalty,
                callbacks=[self] if live else [],
                seed=self.seed,
                progress=False,
                config={"name": self._run_name(s), "playground": dict(s), "seed": self.seed},
            )
        finally:
            self.train_button.disabled = False
        self.runs.append(history)
        if not live:  # when live, fit called on_epoch_end after the last epoch already
            self.on_epoch_end(history)
        return history

    @staticmethod
    def _run_name(s: dict[str, int | float]) -> str:
        return (
            f"{s['train_size']} images, noise {s['label_noise']:g}, width {s['width']}, "
            f"{s['epochs']} epochs, λ={s['weight']:g}"
        )

    def _describe(self) -> str:
        knobs = ", ".join(f"{k}={v!r}" for k, v in self.settings.items())
        return f"OverfittingPlayground({knobs}, runs={len(self.runs)})"
