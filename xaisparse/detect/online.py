"""``OverfitDetector``: the rise rule fed epoch by epoch (online) or over a saved run (offline)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from .._deprecation import deprecated
from .._validation import is_int, select_names
from ..detection import DetectionResult, DetectorState, Row, evidence_frame
from ..history import History, check_history
from . import signals
from .config import DetectorConfig
from .rule import LayerTrack, alarm_facts, step_epoch
from .slope import SlopeTrack, advance_slope

#: The name of the one series the slope rule watches (the mean over the monitored layers).
LAYER_MEAN = "layer_mean"

__all__ = ["OverfitDetector", "detect", "sparsity_matrix"]


def sparsity_matrix(history: History, split: str, statistic: str) -> tuple[pd.DataFrame, list[str]]:
    """Deprecated: ``history.layer_frame(split, statistic=statistic)`` and its columns."""
    deprecated(
        "xaisparse.detect.sparsity_matrix(history, split, statistic) is deprecated: use "
        "history.layer_frame(split, statistic=statistic) (its columns are the layers)",
        stacklevel=2,
    )
    wide = signals.layer_statistic(history, split, statistic)
    return wide, [str(c) for c in wide.columns]


class OverfitDetector:
    """Flags the onset of a sustained sparsity rise in the feature-extraction layers.

    It reads only ``history.layers`` and the sparsity histograms (computed from inputs),
    never a loss, an accuracy or any label. Use it offline with :meth:`detect`, online with :meth:`update` / :meth:`step`
    after each epoch, or as a training callback (``fit(..., detector=...)``: it is fed after
    every measured epoch, ``fit`` stores :meth:`result` in ``history.detection``, and
    :attr:`stop_requested` is set on alarm when ``stop_on_alarm``). Online and offline give the
    same alarm by construction: both run :func:`~xaisparse.detect.rule.step_epoch`.

    Parameters (validated by :class:`~xaisparse.detect.DetectorConfig`):

    layers:
        ``None`` for every recorded layer (the monitor records the conv blocks' activations by
        default), or names and/or glob patterns (``"features.*"``).
    split:
        Whose inputs' sparsity to watch; ``"test"`` (default) needs only the held-out images,
        not their labels.
    statistic:
        Layer statistic of the History (default ``"spatial_mean"``).
    smooth:
        Trailing moving-average window in epochs (default 1: none); delays the alarm by
        about ``(smooth - 1) / 2`` epochs.
    threshold:
        Smallest rise above the running minimum that counts (default 0: only the noise limit
        counts; 0.01 is one percentage point of sparsity); with ``relative=True`` a fraction of
        ``|running_min|``.
    relative:
        Read ``threshold`` relative to the series' own level.
    noise:
        The rise must also exceed ``noise`` × the estimated noise of the smoothed series
        (default 6.0; 0 turns it off).
    patience:
        Consecutive finite epochs the rise must exceed the limit (default 3).
    min_layers:
        How many monitored layers must rise together: a fraction in (0, 1] (rounded up;
        default 1.0: all of them) or a count ≥ 1.
    warmup:
        Epochs ignored at the start (default 5).
    signal:
        The series watched (:mod:`~xaisparse.detect.signals`): ``"sparsity"`` (default: the
        ``statistic`` of ``split``), ``"divergence"`` (per layer, the mean over channels of the
        train/test Jensen–Shannon divergence of the channel's sparsity histograms) or ``"gap"``
        (train-probe minus test-probe ``statistic``). The last two read the unlabelled
        inputs of both probes.
    rule:
        ``"rise"`` (default: the per-layer rule above) or ``"slope"``: the least-squares slope
        of the mean over the monitored layers over the last ``window`` epochs must exceed
        ``max(threshold, noise × its noise)`` for ``patience`` epochs
        (:mod:`~xaisparse.detect.slope`; ``smooth``, ``relative``, ``min_layers`` unused).
    window:
        Epochs of the slope (``rule="slope"``; default 3, at least 3).
    exclude_undefined:
        Drop the layers whose value is not finite at the first epoch seen (a 1×1 map has no
        spatial sparsity; kept, such a layer never rises and can make ``min_layers``
        unreachable). Default True.
    stop_on_alarm:
        Set :attr:`stop_requested` when the alarm fires (``fit`` then stops after the epoch).

    **The defaults** are study v2's variant D1, tuned on the digits tuning seeds: on v2's 120
    held-out runs it scored −0.01 [−0.07, 0.06] (hit − false-alarm rate), above the chance
    reference (−0.12) and beating the three label-free references with paired p < 0.01, but
    not above 0: it stays silent in most runs. The defaults shipped before
    (:data:`~xaisparse.detect.config.LEGACY_DEFAULTS`, study v2's D0) scored −0.28, below
    chance (studies/PROTOCOL.md, v3 addendum §V4). No setting was validated as a label-free
    early warning (``EVIDENCE_NOTE``): an alarm is a sparsity event, not evidence of
    overfitting; stop on a validation loss (:class:`~xaisparse.stopping.EarlyStopping`).

    >>> det = OverfitDetector(smooth=1, threshold=0.05, noise=0, patience=1, warmup=0)
    >>> for epoch, v in enumerate([0.30, 0.28, 0.31, 0.40]):
    ...     state = det.step(epoch, {"conv": v})
    >>> det.alarm_epoch, det.result().onsets
    (3, {'conv': 1})
    """

    def __init__(
        self,
        layers: str | Sequence[str] | None = None,
        split: str = "test",
        statistic: str = "spatial_mean",
        smooth: int = 1,
        threshold: float = 0.0,
        relative: bool = False,
        noise: float = 6.0,
        patience: int = 3,
        min_layers: float | int = 1.0,
        warmup: int = 5,
        signal: str = "sparsity",
        rule: str = "rise",
        window: int = 3,
        exclude_undefined: bool = True,
        stop_on_alarm: bool = False,
        record: bool | None = None,
    ) -> None:
        if record is not None:
            deprecated(
                "OverfitDetector(record=...) is deprecated and ignored: fit() stores the detector's result "
                "in history.detection; the detector no longer writes into the History",
                stacklevel=2,
            )
        self.config = DetectorConfig(
            layers=layers,  # type: ignore[arg-type]
            split=split,
            statistic=statistic,
            smooth=smooth,
            threshold=threshold,
            relative=relative,
            noise=noise,
            patience=patience,
            min_layers=min_layers,
            warmup=warmup,
            signal=signal,
            rule=rule,
            window=window,
            exclude_undefined=exclude_undefined,
        )
        self.stop_on_alarm = bool(stop_on_alarm)
        self.reset()

    @classmethod
    def from_config(cls, config: DetectorConfig, stop_on_alarm: bool = False) -> OverfitDetector:
        """A fresh detector with these settings."""
        if not isinstance(config, DetectorConfig):
            raise TypeError(f"config must be a DetectorConfig, got {type(config).__name__}")
        det = cls.__new__(cls)
        det.config, det.stop_on_alarm = config, bool(stop_on_alarm)
        det.reset()
        return det

    # settings, read-only views of the config
    layers = property(lambda self: None if self.config.layers is None else list(self.config.layers))
    split = property(lambda self: self.config.split)
    statistic = property(lambda self: self.config.statistic)

    @property
    def params(self) -> dict[str, Any]:
        """The settings (and, once known, the required number of rising layers)."""
        return {**self.config.to_dict(), "required": self.required}

    def clone(self) -> OverfitDetector:
        """A fresh detector with the same settings (no state)."""
        return OverfitDetector.from_config(self.config, self.stop_on_alarm)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())
        return f"OverfitDetector({args})"

    # ------------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget everything seen (settings stay)."""
        self.monitored: list[str] | None = None
        self.required: int | None = None
        self.alarm_epoch: int | None = None
        self.alarm_layers: list[str] = []
        self.alarm_onsets: dict[str, int] = {}
        self.alarm_minima: dict[str, int] = {}
        self.stop_requested = False
        self.last_state: DetectorState | None = None
        self._tracks: dict[str, LayerTrack] = {}
        self._slope = SlopeTrack()
        self._epochs: list[int] = []
        self._rows: list[Row] = []

    @property
    def alarmed(self) -> bool:
        return self.alarm_epoch is not None

    @property
    def epochs_seen(self) -> list[int]:
        return list(self._epochs)

    def _resolve(self, first: Mapping[str, Any]) -> list[str]:
        """The monitored layers, from the names (and, with ``exclude_undefined``, values) of the first epoch."""
        available = [str(k) for k in first]
        chosen = select_names(self.config.layers, list(available), "layer")
        if not chosen:
            raise ValueError(f"no layers to monitor (available: {list(available)})")
        if self.config.exclude_undefined:
            defined = [n for n in chosen if _finite(first.get(n))]
            chosen = defined or chosen  # nothing defined yet: keep them all (they count as not rising)
        self.required = 1 if self.config.rule == "slope" else self.config.required(len(chosen))
        self.monitored = chosen
        self._tracks = {name: LayerTrack() for name in chosen}
        self._slope = SlopeTrack()
        return chosen

    # ------------------------------------------------------------------ online
    def step(self, epoch: int, values: Mapping[str, float]) -> DetectorState:
        """Feed one epoch: ``values[layer]`` = the statistic (missing or NaN: skipped)."""
        if not is_int(epoch):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        epoch = int(epoch)
        if self._epochs and epoch <= self._epochs[-1]:
            raise ValueError(f"epochs must increase: got {epoch} after {self._epochs[-1]}")
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping layer -> float, got {type(values).__name__}")
        if self.monitored is None:
            self._resolve(values)
        assert self.monitored is not None and self.required is not None  # set by _resolve
        position = len(self._epochs)
        if self.config.rule == "slope":
            mean = signals.layer_mean(pd.DataFrame([{n: _number(values, n, epoch) for n in self.monitored}]))
            self._slope, row = advance_slope(self._slope, LAYER_MEAN, epoch, float(mean.iloc[0]), position, self.config)
            rows, rising = [row], [LAYER_MEAN] if row[-1] else []
        else:
            self._tracks, rows, rising = step_epoch(self._tracks, epoch, values, position, self.config)
        self._epochs.append(epoch)
        self._rows.extend(rows)
        new_alarm = False
        if self.alarm_epoch is None and len(rising) >= self.required:
            self.alarm_epoch, self.alarm_layers = epoch, list(rising)
            if self.config.rule == "rise":
                self.alarm_onsets, self.alarm_minima = alarm_facts(self._tracks, rising)
            new_alarm = True
            if self.stop_on_alarm:
                self.stop_requested = True
        self.last_state = DetectorState(
            epoch=epoch,
            alarmed=self.alarm_epoch is not None,
            alarm_epoch=self.alarm_epoch,
            rising=tuple(rising),
            required=self.required,
            n_layers=len(self.monitored),
            new_alarm=new_alarm,
        )
        return self.last_state

    def update(self, history: History) -> DetectorState | None:
        """Feed every epoch of ``history`` not seen yet; the state after the last one.

        Returns ``None`` when there is nothing new (e.g. no sparsity recorded yet). Epochs older
        than the last one seen are ignored. The series is :func:`~xaisparse.detect.signals.signal_matrix` of the
        History (the ``signal`` setting): the History's queries only, never its metrics.
        """
        last = self._epochs[-1] if self._epochs else None
        new = None
        if last is not None:
            new = [e for e in check_history(history).sparsity_epochs if e > last]  # never history.epochs: metrics
            if not new:
                return None
        wide = signals.signal_matrix(history, self.config, epochs=new)
        if wide.empty:
            return None
        state = None
        for e in wide.index:
            if last is None or e > last:
                row = wide.loc[e]
                names = self.monitored if self.monitored is not None else [str(c) for c in wide.columns]
                state = self.step(int(e), {name: row.get(name, math.nan) for name in names})
        return state

    def on_epoch_end(self, state: Any) -> None:
        """Training-callback hook: :meth:`update` with ``state.history`` (or a History itself)."""
        self.update(getattr(state, "history", state))

    # ------------------------------------------------------------------ results
    def result(self) -> DetectionResult:
        """The verdict on everything fed so far."""
        return DetectionResult(
            alarm_epoch=self.alarm_epoch,
            layers=list(self.alarm_layers),
            onsets=dict(self.alarm_onsets),
            minima=dict(self.alarm_minima),
            evidence=evidence_frame(self._rows),
            params=self.params,
            monitored=list(self.monitored or (self.layers or [])),
            epochs=list(self._epochs),
        )

    def detect(self, history: History) -> DetectionResult:
        """Offline: run a fresh copy of this detector over the whole ``history``."""
        det = self.clone()
        det.update(history)
        return det.result()


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _number(values: Mapping[str, Any], name: str, epoch: int) -> float:
    raw = values.get(name, math.nan)
    try:
        return float(raw)
    except (TypeError, ValueError):
        raise TypeError(f"value of layer {name!r} at epoch {epoch} must be a number, got {raw!r}") from None


def detect(history: History, **kwargs: Any) -> DetectionResult:
    """Shortcut for ``OverfitDetector(**kwargs).detect(history)``."""
    return OverfitDetector(**kwargs).detect(history)
