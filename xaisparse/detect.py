"""Overfitting early warning from activation sparsity, and its evaluation.

The paper this project extends reports that the sparsity of the feature-extraction (conv)
layers rises shortly *before* the test loss starts rising. :class:`OverfitDetector` turns that
into an alarm that reads **only sparsity statistics** (computed from the inputs alone, never
from held-out labels): no loss, no accuracy, not even the ``metrics`` table of the History.

The rule, per monitored layer and epoch ``e`` (everything causal, so the detector can run
online, after each epoch, and gives exactly the same answer offline on a finished run):

1. the first ``warmup`` epochs are ignored (early-training transients);
2. ``smoothed(e)`` = mean of the layer's last ``smooth`` finite values (NaN skipped);
3. ``running_min(e)`` = the smallest ``smoothed`` so far, reached at epoch ``min_epoch``;
4. ``rise(e) = smoothed(e) - running_min(e)`` (never negative);
5. ``limit(e) = max(base, noise * sigma(e))`` where ``base`` is ``threshold`` (or
   ``threshold * |running_min|`` when ``relative``) and ``sigma(e)`` is an estimate of
   the noise of ``smoothed`` from the epoch-to-epoch differences seen so far (their
   standard deviation about their mean, which a steady trend does not inflate);
6. the layer is *rising* at ``e`` once ``rise > limit`` held for ``patience`` consecutive
   finite epochs; its *onset* is the last epoch at which it was still *quiet*, i.e. within
   half the limit of its running minimum (``rise <= limit / 2``). On a noisy flat phase this
   tracks the start of the rise far better than ``min_epoch``, which is wherever noise put
   the lowest value (both are reported);
7. the alarm is raised at the first epoch where at least ``min_layers`` of the monitored
   layers are rising. A layer whose value is NaN at an epoch counts as not rising then.

:func:`evaluate` scores the alarm against the test-loss minimum (labels are used there, for
evaluation only) side by side with patience-based early stopping on the held-out loss.

>>> from xaisparse.testing import synthetic_history
>>> result = OverfitDetector().detect(synthetic_history(epochs=16, overfit_at=7, seed=1))
>>> result.alarmed, result.alarm_epoch is not None and 5 <= result.alarm_epoch <= 11
(True, True)
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ._errors import UnknownLayerError, closest

__all__ = [
    "EVIDENCE_COLUMNS",
    "DetectionResult",
    "DetectorState",
    "Evaluation",
    "OverfitDetector",
    "detect",
    "early_stopping_epoch",
    "evaluate",
    "summarize",
]

#: Columns of :attr:`DetectionResult.evidence` (one row per epoch and monitored layer).
EVIDENCE_COLUMNS = [
    "epoch",
    "layer",
    "value",
    "smoothed",
    "running_min",
    "min_epoch",
    "onset",
    "rise",
    "limit",
    "streak",
    "rising",
]

# Smallest number of epoch-to-epoch differences the noise estimate is trusted with; before
# that the layer may not be declared rising (a spread of one or two numbers is meaningless).
_MIN_DIFFS = 3


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


# ---------------------------------------------------------------------------- results
@dataclass(frozen=True)
class DetectorState:
    """Where the detector stands after one epoch (what :meth:`OverfitDetector.step` returns)."""

    epoch: int
    alarmed: bool
    alarm_epoch: int | None
    rising: tuple[str, ...]
    required: int
    n_layers: int
    new_alarm: bool = False

    @property
    def n_rising(self) -> int:
        return len(self.rising)


@dataclass
class DetectionResult:
    """The detector's verdict on a run.

    ``alarm_epoch``: first epoch with enough layers rising (``None``: no alarm).
    ``layers``: the layers rising at the alarm epoch. ``onsets[layer]``: the estimated start
    of that layer's rise (its last *quiet* epoch, see the module notes); ``minima[layer]``:
    the epoch of the running minimum its rise is measured from.
    ``evidence``: one row per epoch and monitored layer (see :data:`EVIDENCE_COLUMNS`).
    ``params``: the detector's settings. ``epochs``: the epochs the detector saw.
    """

    alarm_epoch: int | None
    layers: list[str]
    onsets: dict[str, int]
    evidence: pd.DataFrame
    params: dict[str, Any]
    minima: dict[str, int] = field(default_factory=dict)
    monitored: list[str] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)

    @property
    def alarmed(self) -> bool:
        return self.alarm_epoch is not None

    def to_dict(self, include_evidence: bool = False) -> dict[str, Any]:
        """JSON-safe dict (what ``history.detector`` holds; widgets read ``alarm_epoch``, ``layers``)."""
        out: dict[str, Any] = {
            "alarm_epoch": None if self.alarm_epoch is None else int(self.alarm_epoch),
            "alarmed": self.alarmed,
            "layers": [str(x) for x in self.layers],
            "onsets": {str(k): int(v) for k, v in self.onsets.items()},
            "minima": {str(k): int(v) for k, v in self.minima.items()},
            "monitored": [str(x) for x in self.monitored],
            "epochs_seen": len(self.epochs),
            "last_epoch": int(self.epochs[-1]) if self.epochs else None,
            "params": _json_params(self.params),
            "summary": self.summary(),
        }
        if include_evidence:
            ev = self.evidence
            out["evidence"] = {
                col: [_json_scalar(v) for v in ev[col].tolist()] for col in EVIDENCE_COLUMNS if col in ev
            }
        return out

    def summary(self) -> str:
        """One human sentence."""
        what = f"{self.params.get('statistic', 'sparsity')} on split {self.params.get('split', '?')!r}"
        n = len(self.monitored)
        req = self.params.get("required")
        if self.alarm_epoch is None:
            if not self.epochs:
                return f"No overfitting warning: no sparsity data ({what}) seen yet."
            span = f"epochs {self.epochs[0]}–{self.epochs[-1]}" if len(self.epochs) > 1 else f"epoch {self.epochs[0]}"
            return f"No overfitting warning over {span}: {what} did not rise in the required {req} of {n} layers."
        parts = [f"{name} (since epoch {self.onsets[name]})" if name in self.onsets else name for name in self.layers]
        return (
            f"Overfitting warning at epoch {self.alarm_epoch}: {what} rising in "
            f"{len(self.layers)} of {n} layers: {', '.join(parts)}."
        )

    def __repr__(self) -> str:
        return f"DetectionResult(alarm_epoch={self.alarm_epoch}, layers={self.layers}, onsets={self.onsets})"


def _json_scalar(v: Any) -> Any:
    if v is None or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _json_params(params: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in params.items():
        if isinstance(v, (list, tuple)):
            out[k] = [_json_scalar(x) if not isinstance(x, str) else x for x in v]
        elif v is None or isinstance(v, (str, bool)):
            out[k] = v
        else:
            out[k] = _json_scalar(v)
    return out


# ---------------------------------------------------------------------------- per-layer state
class _Layer:
    """Causal running state of one layer's series."""

    __slots__ = ("diffs", "last", "min_epoch", "quiet_epoch", "running_min", "streak", "window")

    def __init__(self, smooth: int) -> None:
        self.window: deque[float] = deque(maxlen=smooth)
        self.diffs: list[float] = []
        self.last: float | None = None
        self.running_min = math.inf
        self.min_epoch: int | None = None
        self.quiet_epoch: int | None = None
        self.streak = 0


# ---------------------------------------------------------------------------- the detector
class OverfitDetector:
    """Flags the onset of a sustained sparsity rise in the feature-extraction layers.

    It reads only ``history.layers`` (sparsity computed from inputs), never a loss or an
    accuracy. Use it offline with :meth:`detect`, online with :meth:`update` /
    :meth:`step` after each epoch, or as a training callback (:meth:`on_epoch_end`, which
    sets :attr:`stop_requested` on alarm when ``stop_on_alarm``). Online and offline give
    the same alarm by construction: every quantity is causal.

    Parameters
    ----------
    layers:
        Layers to monitor: ``None`` for every layer the History records (the monitor records
        the conv blocks' activations by default), or names and/or glob patterns
        (``"features.*"``). An unknown name raises :class:`ValueError` listing what exists.
    split:
        Whose inputs' sparsity to watch. ``"test"`` (default) is the held-out data — its
        sparsity needs only the images, not the labels. ``"train"`` works too.
    statistic:
        Layer statistic of the History (default ``"spatial_mean"``, the perplexity sparsity
        of the feature maps averaged over channels and samples).
    smooth:
        Trailing moving-average window in epochs (default 3; ``1`` = no smoothing). Longer
        windows suppress noise and delay the alarm by about ``(smooth - 1) / 2`` epochs.
    threshold:
        Smallest rise above the running minimum that counts, in units of the statistic
        (default ``0.01``: one percentage point of sparsity); with ``relative=True`` a fraction
        of ``|running_min|`` instead (e.g. ``0.05`` = 5 %).
    relative:
        Read ``threshold`` relative to the series' own level (for statistics not in [0, 1]).
    noise:
        The rise must also exceed ``noise`` × the estimated noise (standard deviation) of the
        smoothed series (default ``4.0``; ``0`` turns it off and leaves the plain threshold
        rule). The running minimum of a noisy flat series sits a few standard deviations below
        its mean and keeps sinking as the run gets longer, so a fixed threshold alone alarms on
        noise whenever the measurement is noisy (small probe sets); this term adapts to it.
        ``sigma = sd(x(e) - x(e-1)) / sqrt(2) / sqrt(smooth)`` over the layer's finite values
        since ``warmup`` (differences about their mean, so a steady trend adds nothing; a fast
        early transient does inflate it — raise ``warmup`` then). A layer needs 3 differences
        before it may rise. On :func:`~xaisparse.testing.synthetic_history` (noise ≈ 0.03 per
        epoch, rise 0.04 per epoch) 4.0 gave no false alarm in 40 flat runs each of 20, 40 and 60 epochs;
        3.0 false-alarmed in a third of the 40–60-epoch runs.
    patience:
        Consecutive (finite) epochs the rise must exceed the limit before the layer counts
        as rising (default 2: one noisy epoch is not a trend).
    min_layers:
        How many monitored layers must rise together: a float in (0, 1] is a fraction
        (of the monitored layers, rounded up; default 0.5 = at least half), an int ≥ 1 a count.
    warmup:
        Epochs ignored at the start (default 2): sparsity moves fast while the untrained
        network (epoch 0) finds its features, and that is not overfitting.
    stop_on_alarm:
        Set :attr:`stop_requested` when the alarm fires (the training loop then stops after
        the current epoch). Default ``False``: observe only.
    record:
        :meth:`on_epoch_end` writes :meth:`result`\\ ``.to_dict()`` into ``history.detector``.

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
        smooth: int = 3,
        threshold: float = 0.01,
        relative: bool = False,
        noise: float = 4.0,
        patience: int = 2,
        min_layers: float | int = 0.5,
        warmup: int = 2,
        stop_on_alarm: bool = False,
        record: bool = True,
    ) -> None:
        if isinstance(layers, str):
            layers = [layers]
        if layers is not None:
            layers = list(layers)
            bad = [x for x in layers if not isinstance(x, str)]
            if bad or not layers:
                raise TypeError(f"layers must be None or a non-empty list of names/glob patterns, got {layers!r}")
        for name, val in (("split", split), ("statistic", statistic)):
            if not isinstance(val, str) or not val:
                raise TypeError(f"{name} must be a non-empty str, got {val!r}")
        if not _is_int(smooth) or smooth < 1:
            raise ValueError(f"smooth must be an int >= 1 (epochs), got {smooth!r}")
        if not _is_number(threshold) or not threshold >= 0 or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
        if not _is_number(noise) or not noise >= 0 or not math.isfinite(noise):
            raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")
        if not _is_int(patience) or patience < 1:
            raise ValueError(f"patience must be an int >= 1 (epochs), got {patience!r}")
        if not _is_int(warmup) or warmup < 0:
            raise ValueError(f"warmup must be an int >= 0 (epochs), got {warmup!r}")
        if _is_int(min_layers):
            if min_layers < 1:
                raise ValueError(f"min_layers as a count must be >= 1, got {min_layers!r}")
        elif _is_number(min_layers):
            if not 0 < min_layers <= 1:
                raise ValueError(f"min_layers as a fraction must be in (0, 1], got {min_layers!r}")
        else:
            raise TypeError(f"min_layers must be a fraction (float) or a count (int), got {min_layers!r}")
        self.layers = layers
        self.split = split
        self.statistic = statistic
        self.smooth = int(smooth)
        self.threshold = float(threshold)
        self.relative = bool(relative)
        self.noise = float(noise)
        self.patience = int(patience)
        self.min_layers = min_layers
        self.warmup = int(warmup)
        self.stop_on_alarm = bool(stop_on_alarm)
        self.record = bool(record)
        self.reset()

    # ------------------------------------------------------------------ configuration
    @property
    def params(self) -> dict[str, Any]:
        """The settings (and, once known, the monitored layers and required count)."""
        return {
            "layers": self.layers,
            "split": self.split,
            "statistic": self.statistic,
            "smooth": self.smooth,
            "threshold": self.threshold,
            "relative": self.relative,
            "noise": self.noise,
            "patience": self.patience,
            "min_layers": self.min_layers,
            "warmup": self.warmup,
            "required": self.required,
        }

    def clone(self) -> OverfitDetector:
        """A fresh detector with the same settings (no state)."""
        return OverfitDetector(
            layers=self.layers,
            split=self.split,
            statistic=self.statistic,
            smooth=self.smooth,
            threshold=self.threshold,
            relative=self.relative,
            noise=self.noise,
            patience=self.patience,
            min_layers=self.min_layers,
            warmup=self.warmup,
            stop_on_alarm=self.stop_on_alarm,
            record=self.record,
        )

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if k != "required")
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
        self._state: dict[str, _Layer] = {}
        self._epochs: list[int] = []
        self._rows: list[tuple] = []

    @property
    def alarmed(self) -> bool:
        return self.alarm_epoch is not None

    @property
    def epochs_seen(self) -> list[int]:
        return list(self._epochs)

    # ------------------------------------------------------------------ layer resolution
    def _resolve(self, available: Sequence[str]) -> list[str]:
        available = list(available)
        if self.layers is None:
            chosen = available
        else:
            chosen = []
            for pat in self.layers:
                if any(ch in pat for ch in "*?["):
                    hits = [name for name in available if fnmatch.fnmatchcase(name, pat)]
                    if not hits:
                        raise UnknownLayerError(
                            f"layer pattern {pat!r} matches none of the recorded layers {available}"
                        )
                elif pat in available:
                    hits = [pat]
                else:
                    raise UnknownLayerError(
                        f"unknown layer {pat!r} for split {self.split!r}, statistic {self.statistic!r}; "
                        f"closest: {closest(pat, available)}; available: {available}"
                    )
                chosen += [h for h in hits if h not in chosen]
        if not chosen:
            raise ValueError(f"no layers to monitor (available: {available})")
        self.monitored = chosen
        n = len(chosen)
        if _is_int(self.min_layers):
            if self.min_layers > n:
                raise ValueError(f"min_layers={self.min_layers} exceeds the {n} monitored layers {chosen}")
            self.required = int(self.min_layers)
        else:
            self.required = max(1, math.ceil(float(self.min_layers) * n - 1e-9))
        self._state = {name: _Layer(self.smooth) for name in chosen}
        return chosen

    # ------------------------------------------------------------------ reading a History
    def _table(self, history: Any) -> tuple[pd.DataFrame, list[str]]:
        """Epochs × layers of the watched statistic, from ``history.layers`` only."""
        t = getattr(history, "layers", None)
        if not isinstance(t, pd.DataFrame):
            raise TypeError(f"expected an xaisparse History (with a .layers table), got {type(history).__name__}")
        if t.empty:
            return pd.DataFrame(), []
        splits = list(dict.fromkeys(t["split"].astype(str)))
        if self.split not in splits:
            raise ValueError(f"unknown split {self.split!r}; the history has sparsity for splits {splits}")
        in_split = t[t["split"].astype(str) == self.split]
        stats = list(dict.fromkeys(in_split["statistic"].astype(str)))
        if self.statistic not in stats:
            raise ValueError(f"unknown statistic {self.statistic!r} for split {self.split!r}; available: {stats}")
        rows = in_split[in_split["statistic"].astype(str) == self.statistic]
        rows = rows.assign(epoch=rows["epoch"].astype(int), layer=rows["layer"].astype(str))
        rows = rows.drop_duplicates(["epoch", "layer"], keep="last")
        wide = rows.pivot(index="epoch", columns="layer", values="value").sort_index()
        wide = wide.astype(float)
        order = [name for name in getattr(history, "layer_names", []) if name in wide.columns]
        order += [name for name in wide.columns if name not in order]
        return wide, order

    # ------------------------------------------------------------------ online
    def step(self, epoch: int, values: Mapping[str, float]) -> DetectorState:
        """Feed one epoch: ``values[layer]`` = the statistic (missing or NaN: skipped)."""
        if not _is_int(epoch):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        epoch = int(epoch)
        if self._epochs and epoch <= self._epochs[-1]:
            raise ValueError(f"epochs must increase: got {epoch} after {self._epochs[-1]}")
        if not isinstance(values, Mapping):
            raise TypeError(f"values must be a mapping layer -> float, got {type(values).__name__}")
        if self.monitored is None:
            self._resolve([str(k) for k in values])
        position = len(self._epochs)
        self._epochs.append(epoch)
        rising: list[str] = []
        for name in self.monitored:  # type: ignore[union-attr]
            raw = values.get(name, math.nan)
            try:
                x = float(raw)
            except (TypeError, ValueError):
                raise TypeError(f"value of layer {name!r} at epoch {epoch} must be a number, got {raw!r}") from None
            if self._advance(name, epoch, x, position):
                rising.append(name)
        new_alarm = False
        if self.alarm_epoch is None and len(rising) >= self.required:  # type: ignore[operator]
            self.alarm_epoch = epoch
            self.alarm_layers = list(rising)
            self.alarm_onsets = {name: self._state[name].quiet_epoch for name in rising}  # type: ignore[misc]
            self.alarm_minima = {name: self._state[name].min_epoch for name in rising}  # type: ignore[misc]
            new_alarm = True
            if self.stop_on_alarm:
                self.stop_requested = True
        self.last_state = DetectorState(
            epoch=epoch,
            alarmed=self.alarm_epoch is not None,
            alarm_epoch=self.alarm_epoch,
            rising=tuple(rising),
            required=int(self.required),  # type: ignore[arg-type]
            n_layers=len(self.monitored),  # type: ignore[arg-type]
            new_alarm=new_alarm,
        )
        return self.last_state

    def _advance(self, name: str, epoch: int, x: float, position: int) -> bool:
        st = self._state[name]
        nan = math.nan
        if position < self.warmup or not math.isfinite(x):
            self._rows.append((epoch, name, x, nan, nan, None, None, nan, nan, st.streak, False))
            return False
        if st.last is not None:
            st.diffs.append(x - st.last)
        st.last = x
        st.window.append(x)
        if len(st.window) < self.smooth:
            self._rows.append((epoch, name, x, nan, nan, None, None, nan, nan, 0, False))
            return False
        smoothed = float(sum(st.window) / len(st.window))
        if smoothed < st.running_min:
            st.running_min, st.min_epoch = smoothed, epoch
        rise = smoothed - st.running_min
        limit = self._limit(st)
        if rise <= limit / 2:
            st.quiet_epoch = epoch
        st.streak = st.streak + 1 if rise > limit else 0
        is_rising = st.streak >= self.patience
        self._rows.append(
            (epoch, name, x, smoothed, st.running_min, st.min_epoch, st.quiet_epoch, rise, limit, st.streak, is_rising)
        )
        return is_rising

    def _limit(self, st: _Layer) -> float:
        base = self.threshold * abs(st.running_min) if self.relative else self.threshold
        if self.noise <= 0:
            return base
        if len(st.diffs) < _MIN_DIFFS:
            return math.inf
        # sd of x(e) - x(e-1) is sqrt(2) sd(x) for white noise; a mean of `smooth` values has
        # sd(x) / sqrt(smooth). ddof=1 removes the differences' mean: a linear trend adds nothing.
        sd_diff = float(np.std(np.asarray(st.diffs), ddof=1))
        sigma = sd_diff / math.sqrt(2.0) / math.sqrt(self.smooth)
        return max(base, self.noise * sigma)

    def update(self, history: Any) -> DetectorState | None:
        """Feed every epoch of ``history`` not seen yet; the state after the last one.

        Returns ``None`` when there is nothing new (e.g. no sparsity recorded yet). Epochs
        older than the last one seen are ignored.
        """
        wide, order = self._table(history)
        if wide.empty:
            return None
        if self.monitored is None:
            self._resolve(order)
        last = self._epochs[-1] if self._epochs else None
        new = [int(e) for e in wide.index if last is None or e > last]
        state = None
        for e in new:
            row = wide.loc[e]
            state = self.step(e, {name: row.get(name, math.nan) for name in self.monitored})  # type: ignore[union-attr]
        return state

    def on_epoch_end(self, history: Any) -> None:
        """Training-callback hook: :meth:`update`, then record the result in ``history.detector``."""
        self.update(history)
        if self.record:
            history.detector = self.result().to_dict()

    # ------------------------------------------------------------------ results
    def result(self) -> DetectionResult:
        """The verdict on everything fed so far."""
        evidence = pd.DataFrame(self._rows, columns=EVIDENCE_COLUMNS)
        evidence = evidence.astype(
            {
                "epoch": "int64",
                "layer": "object",
                "value": "float64",
                "smoothed": "float64",
                "running_min": "float64",
                "rise": "float64",
                "limit": "float64",
                "streak": "int64",
                "rising": "bool",
            }
        )
        evidence["min_epoch"] = evidence["min_epoch"].astype("Int64")
        evidence["onset"] = evidence["onset"].astype("Int64")
        return DetectionResult(
            alarm_epoch=self.alarm_epoch,
            layers=list(self.alarm_layers),
            onsets=dict(self.alarm_onsets),
            minima=dict(self.alarm_minima),
            evidence=evidence,
            params=self.params,
            monitored=list(self.monitored or (self.layers or [])),
            epochs=list(self._epochs),
        )

    def detect(self, history: Any) -> DetectionResult:
        """Offline: run a fresh copy of this detector over the whole ``history``."""
        det = self.clone()
        det.update(history)
        return det.result()


def detect(history: Any, **kwargs: Any) -> DetectionResult:
    """Shortcut for ``OverfitDetector(**kwargs).detect(history)``."""
    return OverfitDetector(**kwargs).detect(history)


# ---------------------------------------------------------------------------- evaluation
def early_stopping_epoch(loss: pd.Series, patience: int = 2, min_delta: float = 0.0) -> int | None:
    """Patience-based early stopping: the first epoch with ``patience`` epochs without improvement.

    An epoch improves when its loss is below the best so far by more than ``min_delta``.
    NaN losses count as no improvement. ``None`` when the rule never fires.

    >>> early_stopping_epoch(pd.Series([1.0, 0.8, 0.9, 0.85, 0.95]), patience=2)
    3
    """
    if not _is_int(patience) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    best, waited = math.inf, 0
    for epoch, value in zip(loss.index, loss.to_numpy(dtype=float)):
        if math.isfinite(value) and value < best - min_delta:
            best, waited = value, 0
        else:
            waited += 1
            if waited >= patience:
                return int(epoch)
    return None


@dataclass
class Evaluation:
    """What :func:`evaluate` returns: ``runs`` (one row per run × method) and ``summary``.

    Unpacks as ``runs, summary = evaluate(...)``.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame

    def __iter__(self) -> Iterator[pd.DataFrame]:
        return iter((self.runs, self.summary))

    def __repr__(self) -> str:
        return f"Evaluation(runs={len(self.runs)} rows)\n{self.summary.to_string()}"


OUTCOMES = ("hit", "false_alarm", "miss", "correct_rejection")


def _runs(histories: Any) -> list[tuple[str, Any]]:
    if hasattr(histories, "layers") and hasattr(histories, "metrics"):
        return [(str(getattr(histories, "config", {}).get("name") or "run"), histories)]
    if isinstance(histories, Mapping):
        return [(str(k), v) for k, v in histories.items()]
    if isinstance(histories, Iterable):
        out, seen = [], set()
        for i, h in enumerate(histories):
            name = str((getattr(h, "config", None) or {}).get("name") or f"run{i}")
            base, k = name, 2
            while name in seen:
                name, k = f"{base} ({k})", k + 1
            seen.add(name)
            out.append((name, h))
        return out
    raise TypeError(f"expected a History, a list or a dict of Histories, got {type(histories).__name__}")


def _classify(overfits: bool, stop: int | None, lead: float, max_lead: int, late: int) -> str:
    if not overfits:
        return "correct_rejection" if stop is None else "false_alarm"
    if stop is None or lead < -late:
        return "miss"
    if lead > max_lead:
        return "false_alarm"
    return "hit"


def evaluate(
    histories: Any,
    detector: OverfitDetector | None = None,
    *,
    max_lead: int = 5,
    late: int = 2,
    patience: int = 2,
    loss_split: str = "test",
    min_delta: float = 0.0,
    min_rise: float = 0.0,
) -> Evaluation:
    """Score the sparsity alarm against the test-loss minimum, beside patience early stopping.

    For each run: ``e*`` = argmin of the ``loss_split`` loss (labels are used here, for the
    evaluation only); a run *overfits* when its loss after ``e*`` rises above the minimum by
    more than ``min_rise`` (default 0: whenever ``e*`` is before the last epoch; raise it when
    a noisy plateau should count as "never rises"). Each method
    gives a stop epoch (the detector's alarm; early stopping's first epoch with ``patience``
    epochs without improvement) and ``lead = e* - stop`` (positive: before the loss minimum).

    * overfitting run: **hit** if ``-late <= lead <= max_lead``, **false_alarm** if
      ``lead > max_lead`` (far too early), **miss** if no stop or ``lead < -late``;
    * run whose loss never rises (``e*`` = last epoch, or no rise above ``min_rise``): any
      stop is a **false_alarm**, none a **correct_rejection**.

    ``runs`` also has the over-training each method avoids (``excess_epochs = last - e*``,
    ``avoided_epochs = last - max(stop, e*)``, their ratio), ``premature_epochs``
    (``max(0, e* - stop)``: useful training lost) and the test loss/accuracy at the stop
    epoch (the last epoch when there is no stop) beside those at ``e*``.
    ``summary`` has per method: runs, median lead and IQR (over runs with a stop), the share
    of runs of each outcome (they sum to 1), mean avoided fraction (overfitting runs) and
    median loss gap. Defaults: ``late=2`` with ``patience=2`` makes plain early stopping a
    (late) hit whenever the loss rises for two epochs, so a hit is a real comparison
    rather than an impossible bar. ``min_delta`` is early stopping's improvement margin.
    """
    for name, val in (("max_lead", max_lead), ("late", late)):
        if not _is_int(val) or val < 0:
            raise ValueError(f"{name} must be an int >= 0 (epochs), got {val!r}")
    if not _is_int(patience) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    if not _is_number(min_rise) or not min_rise >= 0:
        raise ValueError(f"min_rise must be a number >= 0, got {min_rise!r}")
    if detector is not None and not isinstance(detector, OverfitDetector):
        raise TypeError(f"detector must be an OverfitDetector or None, got {type(detector).__name__}")
    det = detector if detector is not None else OverfitDetector()
    rows = []
    for run, h in _runs(histories):
        loss = h.metric(loss_split, "loss")
        loss = loss[~loss.index.duplicated(keep="last")].sort_index()
        finite = loss[np.isfinite(loss.to_numpy(dtype=float))]
        if finite.empty:
            splits = sorted(set(h.metrics["split"].astype(str))) if not h.metrics.empty else []
            raise ValueError(
                f"run {run!r} has no finite {loss_split!r} loss to evaluate against (splits with metrics: {splits})"
            )
        acc = h.metric(loss_split, "accuracy")
        acc = acc[~acc.index.duplicated(keep="last")]
        e_star = int(finite.idxmin())
        last = int(loss.index.max())
        after = finite[finite.index > e_star]
        overfits = bool(len(after)) and float(after.max()) - float(finite[e_star]) > min_rise
        result = det.detect(h)
        stops = {
            "sparsity": result.alarm_epoch,
            "early_stopping": early_stopping_epoch(loss, patience=patience, min_delta=min_delta),
        }
        for method, stop in stops.items():
            lead = math.nan if stop is None else float(e_star - stop)
            at = last if stop is None else int(stop)
            excess = last - e_star
            avoided = 0 if stop is None else last - max(int(stop), e_star)
            rows.append(
                {
                    "run": run,
                    "method": method,
                    "best_epoch": e_star,
                    "last_epoch": last,
                    "overfits": overfits,
                    "stop_epoch": stop,
                    "lead": lead,
                    "outcome": _classify(overfits, stop, lead, max_lead, late),
                    "excess_epochs": excess,
                    "avoided_epochs": avoided,
                    "avoided_fraction": (avoided / excess) if excess > 0 else math.nan,
                    "premature_epochs": 0 if stop is None else max(0, e_star - int(stop)),
                    "loss_at_stop": float(loss.get(at, math.nan)),
                    "loss_at_best": float(loss[e_star]),
                    "loss_gap": float(loss.get(at, math.nan)) - float(loss[e_star]),
                    "accuracy_at_stop": float(acc.get(at, math.nan)),
                    "accuracy_at_best": float(acc.get(e_star, math.nan)),
                    "layers": ",".join(result.layers) if method == "sparsity" else "",
                }
            )
    runs = pd.DataFrame(rows)
    if not runs.empty:
        runs["stop_epoch"] = runs["stop_epoch"].astype("Int64")
    return Evaluation(runs=runs, summary=summarize(runs))


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Per-method summary of :func:`evaluate`'s ``runs`` table."""
    cols = ["method", "runs", "overfitting_runs", "stops", "median_lead", "lead_q25", "lead_q75", "lead_iqr"]
    cols += [f"{o}_rate" for o in OUTCOMES] + ["mean_avoided_fraction", "median_loss_gap"]
    if runs.empty:
        return pd.DataFrame(columns=cols)
    out = []
    for method, g in runs.groupby("method", sort=False):
        leads = g["lead"].dropna()
        q25, q50, q75 = leads.quantile([0.25, 0.5, 0.75]).tolist() if len(leads) else [math.nan] * 3
        row = {
            "method": method,
            "runs": len(g),
            "overfitting_runs": int(g["overfits"].sum()),
            "stops": int(g["stop_epoch"].notna().sum()),
            "median_lead": q50,
            "lead_q25": q25,
            "lead_q75": q75,
            "lead_iqr": q75 - q25,
        }
        for o in OUTCOMES:
            row[f"{o}_rate"] = float((g["outcome"] == o).mean())
        row["mean_avoided_fraction"] = (
            float(g.loc[g["overfits"], "avoided_fraction"].mean()) if g["overfits"].any() else math.nan
        )
        row["median_loss_gap"] = float(g["loss_gap"].median())
        out.append(row)
    return pd.DataFrame(out, columns=cols)
