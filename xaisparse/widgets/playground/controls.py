"""The playground's knob widgets: one stock ipywidgets control per setting, grouped as on the page."""

from __future__ import annotations

from typing import Any

import ipywidgets as widgets

from .settings import BLOCKS, DATASETS, KNOB_RANGES, PlaygroundSettings

__all__ = ["GROUPS", "LABELS", "TIPS", "build_knobs", "knob_value", "set_knob"]

LABELS = {
    "dataset": "data",
    "train_size": "train images",
    "label_noise": "label noise",
    "width": "width",
    "batch_norm": "batch norm",
    "epochs": "epochs",
    "batch_size": "batch size",
    "lr": "learning rate",
    "seed": "seed",
    "dropout": "dropout",
    "weight_decay": "weight decay",
    "weight": "λ (weight)",
    "blocks": "λ on blocks",
}
TIPS = {
    "dataset": "digits: scikit-learn's 8×8 digits (upsampled to 16×16); MNIST: 5,000 real 28×28 MNIST images",
    "train_size": "how many images the network may learn from (fewer: overfits sooner)",
    "label_noise": "fraction of training labels replaced by a wrong class (more: more to memorise)",
    "width": "channels of the first conv block; the blocks have width, 2·width, 4·width",
    "batch_norm": "batch normalisation after every convolution (fixed for a run)",
    "epochs": "passes over the training images",
    "batch_size": "images per optimiser step",
    "lr": "Adam's learning rate (can change during a run)",
    "seed": "seeds the data split, the label noise, the initialisation and the batch order",
    "dropout": "dropout probability before both classifier layers (can change during a run)",
    "weight_decay": "Adam's L2 weight decay (can change during a run)",
    "weight": "λ of the sparsity penalty added to the loss: 0 none, > 0 favours dense activations (can change)",
    "blocks": "the conv blocks whose sparsity λ penalises (can change during a run)",
}
#: group title -> knobs, in page order; the last group can change during a run.
GROUPS: dict[str, tuple[str, ...]] = {
    "Data": ("dataset", "train_size", "label_noise"),
    "Network and training": ("width", "batch_norm", "epochs", "batch_size", "seed"),
    "Regularisers (also while training)": ("lr", "dropout", "weight_decay", "weight", "blocks"),
}
_STYLE = {"description_width": "92px"}
_LAYOUT = {"width": "300px"}


def _slider(name: str, value: Any) -> widgets.Widget:
    lo, hi, step = KNOB_RANGES[name]
    common: dict[str, Any] = {
        "description": LABELS[name],
        "tooltip": TIPS[name],
        "style": _STYLE,
        "layout": widgets.Layout(**_LAYOUT),
        "continuous_update": False,
    }
    if name == "lr":
        return widgets.FloatLogSlider(value=value, base=10, min=-4, max=-1, step=step, readout_format=".1e", **common)
    if isinstance(value, int):
        return widgets.IntSlider(value=value, min=int(lo), max=int(hi), step=int(step), **common)
    fmt = ".4f" if name == "weight_decay" else ".2f"
    return widgets.FloatSlider(value=value, min=lo, max=hi, step=step, readout_format=fmt, **common)


def build_knobs(settings: PlaygroundSettings) -> dict[str, widgets.Widget]:
    """One widget per knob, set to ``settings``."""
    knobs: dict[str, widgets.Widget] = {}
    knobs["dataset"] = widgets.ToggleButtons(
        options=[("digits", "digits"), ("MNIST", "mnist")],
        value=settings.dataset,
        description=LABELS["dataset"],
        tooltips=[TIPS["dataset"]] * 2,
        style={**_STYLE, "button_width": "90px"},
    )
    for name in ("train_size", "label_noise", "width", "epochs", "lr", "dropout", "weight_decay", "weight"):
        knobs[name] = _slider(name, getattr(settings, name))
    knobs["train_size"].max = DATASETS[settings.dataset][2]
    knobs["batch_norm"] = widgets.Checkbox(
        value=settings.batch_norm, description=LABELS["batch_norm"], tooltip=TIPS["batch_norm"], indent=False
    )
    sizes = sorted({8, 16, 32, 64, 128, int(settings.batch_size)})
    knobs["batch_size"] = widgets.Dropdown(
        options=sizes, value=settings.batch_size, description=LABELS["batch_size"], style=_STYLE, layout=_narrow()
    )
    knobs["seed"] = widgets.BoundedIntText(
        value=settings.seed, min=0, max=2**31 - 1, description=LABELS["seed"], style=_STYLE, layout=_narrow()
    )
    knobs["blocks"] = widgets.ToggleButtons(
        options=[("all", BLOCKS), ("1", (1,)), ("2", (2,)), ("3", (3,)), ("2+3", (2, 3))],
        value=_block_option(settings.blocks),
        description=LABELS["blocks"],
        tooltips=[TIPS["blocks"]] * 5,
        style={**_STYLE, "button_width": "48px"},
    )
    return knobs


def _narrow() -> widgets.Layout:
    return widgets.Layout(width="200px")


def _block_option(blocks: tuple[int, ...]) -> tuple[int, ...]:
    return blocks if blocks in ((1,), (2,), (3,), BLOCKS, (2, 3)) else BLOCKS


def knob_value(knobs: dict[str, widgets.Widget], name: str) -> Any:
    """The value of knob ``name`` as the settings take it."""
    value = knobs[name].value
    if name == "blocks":
        return tuple(value)
    if name in ("train_size", "width", "epochs", "batch_size", "seed"):
        return int(value)
    if name in ("label_noise", "lr", "dropout", "weight_decay", "weight"):
        return float(value)
    return value


def set_knob(knobs: dict[str, widgets.Widget], name: str, value: Any) -> None:
    """Show ``value`` on knob ``name`` (a batch size or block set the controls lack is added)."""
    knob = knobs[name]
    if name == "batch_size" and value not in knob.options:
        knob.options = sorted({*knob.options, int(value)})
    if name == "blocks":
        options = list(knob.options)
        if tuple(value) not in [v for _, v in options]:
            knob.options = [*options, ("+".join(str(b) for b in value), tuple(value))]
        value = tuple(value)
    if name == "dataset":
        knobs["train_size"].max = max(DATASETS[value][2], knobs["train_size"].value)
    knob.value = value
    if name == "dataset":
        knobs["train_size"].max = DATASETS[value][2]
