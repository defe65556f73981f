"""What the overfitting detector concludes: its state after an epoch and its verdict on a run.

It sits below :mod:`xaisparse.history` (a :class:`~xaisparse.history.History` keeps a
:class:`DetectionResult` in ``detection`` and saves and loads it) and below
:mod:`xaisparse.detect` (whose detector produces it), so the History never imports the
detector. ``xaisparse.detect`` and ``xaisparse.detect.result`` re-export these names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ._io import jsonable

__all__ = ["EVIDENCE_COLUMNS", "EVIDENCE_NOTE", "DetectionResult", "DetectorState", "Row", "evidence_frame"]

#: Columns of the evidence table (one row per epoch and monitored layer).
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

#: One evidence row, in :data:`EVIDENCE_COLUMNS` order.
Row = tuple[int, str, float, float, float, "int | None", "int | None", float, float, int, bool]


@dataclass(frozen=True)
class DetectorState:
    """Where the detector stands after one epoch (what :meth:`~xaisparse.detect.online.OverfitDetector.step` returns)."""

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


def evidence_frame(rows: Sequence[Row]) -> pd.DataFrame:
    """The evidence rows as a typed table with :data:`EVIDENCE_COLUMNS`."""
    ev = pd.DataFrame(list(rows), columns=EVIDENCE_COLUMNS)
    ev = ev.astype(
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
    ev["min_epoch"] = ev["min_epoch"].astype("Int64")
    ev["onset"] = ev["onset"].astype("Int64")
    return ev


#: What the studies found, said wherever a detector verdict is shown (CLI, docstrings).
EVIDENCE_NOTE = (
    "no label-free detector variant (rise rule, train/test divergence, train-test gap, slope) was validated as "
    "an early warning on the held-out runs of study v2 (studies/results/v2/results.md); the default (v2's D1) "
    "stays above the chance reference only by staying silent in most runs. Its alarm is a sparsity event, not "
    "evidence of overfitting: stop on a validation loss (EarlyStopping)"
)


def _what(params: Mapping[str, Any]) -> str:
    """What the detector watched, in words (from its settings)."""
    signal, statistic = params.get("signal", "sparsity"), params.get("statistic", "sparsity")
    if signal == "gap":
        return f"the train−test gap of {statistic}"
    if signal == "divergence":
        return "the train/test divergence of the channels' sparsity histograms"
    return f"{statistic} on split {params.get('split', '?')!r}"


@dataclass
class DetectionResult:
    """The detector's verdict on a run.

    ``alarm_epoch``: first epoch with enough layers rising (``None``: no alarm).
    ``layers``: the layers rising at the alarm epoch. ``onsets[layer]``: the estimated start
    of that layer's rise (its last *quiet* epoch); ``minima[layer]``: the epoch of the running
    minimum its rise is measured from. ``evidence``: one row per epoch and monitored layer
    (see :data:`EVIDENCE_COLUMNS`). ``params``: the detector's
    settings. ``epochs``: the epochs the detector saw.
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

    # ------------------------------------------------------------------ serialisation
    def to_dict(self, include_evidence: bool = False) -> dict[str, Any]:
        """A JSON-safe dict (``include_evidence`` adds the evidence table column by column)."""
        out: dict[str, Any] = {
            "alarm_epoch": None if self.alarm_epoch is None else int(self.alarm_epoch),
            "alarmed": self.alarmed,
            "layers": [str(x) for x in self.layers],
            "onsets": {str(k): int(v) for k, v in self.onsets.items()},
            "minima": {str(k): int(v) for k, v in self.minima.items()},
            "monitored": [str(x) for x in self.monitored],
            "epochs": [int(e) for e in self.epochs],
            "params": jsonable(self.params),
            "summary": self.summary(),
        }
        if include_evidence:
            ev = self.evidence.astype(object).where(self.evidence.notna(), None)
            out["evidence"] = {col: jsonable(ev[col].tolist()) for col in EVIDENCE_COLUMNS if col in ev}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], evidence: pd.DataFrame | None = None) -> DetectionResult:
        """Rebuild a result from :meth:`to_dict` output (and the evidence table, when kept apart)."""
        if not isinstance(data, Mapping):
            raise TypeError(f"expected a dict written by DetectionResult.to_dict, got {type(data).__name__}")
        if evidence is None:
            raw = data.get("evidence")
            evidence = pd.DataFrame(raw) if isinstance(raw, Mapping) else pd.DataFrame(columns=EVIDENCE_COLUMNS)
        # one set of dtypes whatever the source (JSON lists, Parquet's string columns)
        evidence = evidence_frame(list(evidence.reindex(columns=EVIDENCE_COLUMNS).itertuples(index=False, name=None)))
        alarm = data.get("alarm_epoch")
        return cls(
            alarm_epoch=None if alarm is None else int(alarm),
            layers=[str(x) for x in data.get("layers") or []],
            onsets={str(k): int(v) for k, v in (data.get("onsets") or {}).items()},
            evidence=evidence,
            params=dict(data.get("params") or {}),
            minima={str(k): int(v) for k, v in (data.get("minima") or {}).items()},
            monitored=[str(x) for x in data.get("monitored") or []],
            epochs=[int(e) for e in data.get("epochs") or []],
        )

    # ------------------------------------------------------------------ text
    def summary(self) -> str:
        """One sentence on what the detector saw (sparsity only: no labels involved)."""
        what = _what(self.params)
        n = len(self.monitored)
        req = self.params.get("required")
        if self.alarm_epoch is None:
            if not self.epochs:
                return f"No overfitting warning: no sparsity data ({what}) seen yet."
            span = f"epochs {self.epochs[0]}–{self.epochs[-1]}" if len(self.epochs) > 1 else f"epoch {self.epochs[0]}"
            if self.params.get("rule") == "slope":
                return f"No overfitting warning over {span}: the slope of {what}, averaged over {n} layers, stayed within its noise."
            return f"No overfitting warning over {span}: {what} did not rise in the required {req} of {n} layers."
        if self.params.get("rule") == "slope":
            return (
                f"Overfitting warning at epoch {self.alarm_epoch}: the slope of {what}, averaged over "
                f"{n} layers, rose above its noise."
            )
        parts = [f"{name} (since epoch {self.onsets[name]})" if name in self.onsets else name for name in self.layers]
        return (
            f"Overfitting warning at epoch {self.alarm_epoch}: {what} rising in "
            f"{len(self.layers)} of {n} layers: {', '.join(parts)}."
        )

    def verdict(self, test_loss_minimum: tuple[int, float] | None = None) -> str:
        """The alarm beside the test-loss minimum, in one line (what the CLI, reports and notebooks print).

        ``test_loss_minimum`` is ``(epoch, loss)`` as :meth:`~xaisparse.history.History.test_loss_minimum` gives it;
        the minimum uses held-out labels, so it is the yardstick, never the detector's input.

        >>> r = DetectionResult(9, ["conv"], {"conv": 6}, pd.DataFrame(), {"split": "test"})
        >>> r.verdict((11, 0.42))
        'sparsity alarm at epoch 9, 2 epochs before the test-loss minimum (epoch 11, loss 0.420); layers: conv'
        >>> DetectionResult(None, [], {}, pd.DataFrame(), {}).verdict((11, 0.42))
        'no sparsity alarm; the test-loss minimum is at epoch 11 (loss 0.420)'
        """
        best = None if test_loss_minimum is None else (int(test_loss_minimum[0]), float(test_loss_minimum[1]))
        if self.alarm_epoch is None:
            if best is None:
                return "no sparsity alarm; no test loss was measured"
            return f"no sparsity alarm; the test-loss minimum is at epoch {best[0]} (loss {best[1]:.3f})"
        head = f"sparsity alarm at epoch {self.alarm_epoch}"
        if best is not None:
            lead = best[0] - self.alarm_epoch
            n = abs(lead)
            when = "at" if lead == 0 else f"{n} epoch{'s' if n != 1 else ''} {'before' if lead > 0 else 'after'}"
            head += f", {when} the test-loss minimum (epoch {best[0]}, loss {best[1]:.3f})"
        return f"{head}; layers: {', '.join(self.layers)}"

    def __repr__(self) -> str:
        return f"DetectionResult(alarm_epoch={self.alarm_epoch}, layers={self.layers}, onsets={self.onsets})"
