"""The settings of the sparsity-rise detector, validated once, frozen."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .._validation import check_bool, check_choice, check_int, check_number, check_split, check_str, is_int, is_number
from ..history import canonical_statistic

__all__ = ["LEGACY_DEFAULTS", "RULES", "SIGNALS", "DetectorConfig"]

#: The per-epoch series a detector can watch (:mod:`xaisparse.detect.signals`).
SIGNALS = ("sparsity", "divergence", "gap")
#: How the series becomes an alarm: the per-layer rise rule or the slope of the layer mean.
RULES = ("rise", "slope")
#: The rise rule's defaults until study v3 (study v2's D0): they scored −0.28 [−0.42, −0.15] on
#: v2's 120 held-out runs, below the chance reference (−0.12), so they are no longer the default
#: (studies/PROTOCOL.md, v3 addendum §V4); pass them explicitly to reproduce old runs.
LEGACY_DEFAULTS: dict[str, object] = {
    "smooth": 3,
    "threshold": 0.01,
    "noise": 4.0,
    "patience": 2,
    "min_layers": 0.5,
    "warmup": 2,
    "exclude_undefined": False,
}


@dataclass(frozen=True)
class DetectorConfig:
    """Parameters of the rise rule (see :mod:`xaisparse.detect.rule` and :class:`~xaisparse.detect.online.OverfitDetector`).

    Validated on construction: a bad value raises ``TypeError``/``ValueError`` naming it.

    >>> DetectorConfig(min_layers=0.5).required(3)   # half of 3 layers, rounded up
    2
    >>> DetectorConfig(patience=0)
    Traceback (most recent call last):
    ...
    ValueError: patience must be an int >= 1, got 0

    ``signal`` picks the series (``"sparsity"``: the ``statistic`` of ``split``, the default;
    ``"divergence"``: train/test per-channel Jensen–Shannon divergence; ``"gap"``: train
    minus test ``statistic``), ``rule`` how it alarms (``"rise"``, per layer, the default;
    ``"slope"``: the trailing ``window``-epoch least-squares slope of the layer mean above
    ``noise`` × its noise). ``exclude_undefined`` drops the layers whose value is not finite
    at the first epoch seen (1×1 maps have no spatial sparsity).

    The defaults are study v2's tuned variant D1 (smooth 1, threshold 0, noise 6, patience 3,
    every monitored layer rising, warmup 5, undefined layers excluded): on v2's held-out runs it
    scored −0.01 [−0.07, 0.06], above the chance reference −0.12 (the defaults shipped before,
    :data:`LEGACY_DEFAULTS`, scored −0.28). Neither is validated as an overfitting warning.
    """

    layers: tuple[str, ...] | None = None
    split: str = "test"
    statistic: str = "spatial_mean"
    smooth: int = 1
    threshold: float = 0.0
    relative: bool = False
    noise: float = 6.0
    patience: int = 3
    min_layers: float | int = 1.0
    warmup: int = 5
    signal: str = "sparsity"
    rule: str = "rise"
    window: int = 3
    exclude_undefined: bool = True

    def __post_init__(self) -> None:
        layers: Any = self.layers
        if isinstance(layers, str):
            layers = (layers,)
        if layers is not None:
            layers = tuple(layers)
            if not layers or any(not isinstance(x, str) for x in layers):
                raise TypeError(f"layers must be None or a non-empty list of names/glob patterns, got {self.layers!r}")
        set_ = object.__setattr__
        set_(self, "layers", layers)
        check_split(check_str("split", self.split))
        set_(self, "statistic", canonical_statistic(check_str("statistic", self.statistic)))
        if not is_int(self.smooth):  # a float such as 1.5 is a bad value of an epoch count
            raise ValueError(f"smooth must be an int >= 1 (epochs), got {self.smooth!r}")
        set_(self, "smooth", check_int("smooth", self.smooth, minimum=1))
        set_(self, "threshold", check_number("threshold", self.threshold, minimum=0.0))
        set_(self, "noise", check_number("noise", self.noise, minimum=0.0))
        set_(self, "patience", check_int("patience", self.patience, minimum=1))
        set_(self, "warmup", check_int("warmup", self.warmup, minimum=0))
        set_(self, "relative", bool(self.relative))
        check_choice("signal", self.signal, SIGNALS)
        check_choice("rule", self.rule, RULES)
        set_(self, "window", check_int("window", self.window, minimum=3))
        set_(self, "exclude_undefined", check_bool("exclude_undefined", self.exclude_undefined))
        m = self.min_layers
        if is_int(m):
            check_int("min_layers", m, minimum=1)
        elif is_number(m):
            if not 0 < m <= 1:
                raise ValueError(f"min_layers as a fraction must be in (0, 1], got {m!r}")
        else:
            raise TypeError(f"min_layers must be a fraction (float) or a count (int), got {m!r}")

    def required(self, n_layers: int) -> int:
        """How many of ``n_layers`` monitored layers must rise together for an alarm."""
        if is_int(self.min_layers):
            if self.min_layers > n_layers:
                raise ValueError(f"min_layers={self.min_layers} exceeds the {n_layers} monitored layers")
            return int(self.min_layers)
        return max(1, math.ceil(float(self.min_layers) * n_layers - 1e-9))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain values (``layers`` a list or None)."""
        out = asdict(self)
        out["layers"] = None if self.layers is None else list(self.layers)
        return out
