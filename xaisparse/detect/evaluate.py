"""Scoring the alarm against the test-loss minimum — the only code of the detector that reads labels.

For each run, ``e*`` is the epoch of the lowest held-out loss (:meth:`History.test_loss_minimum`);
each method's stop epoch is compared with it. The detector itself never sees these labels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .._validation import check_bool, is_int, is_number
from ..history import History, as_runs, run_names
from .online import OverfitDetector

__all__ = ["OUTCOMES", "Evaluation", "classify", "early_stopping_epoch", "evaluate", "overfits", "summarize"]


def early_stopping_epoch(loss: pd.Series, patience: int = 2, min_delta: float = 0.0) -> int | None:
    """Patience-based early stopping: the first epoch with ``patience`` epochs without improvement.

    An epoch improves when its loss is below the best so far by more than ``min_delta``.
    NaN losses count as no improvement. ``None`` when the rule never fires.

    >>> early_stopping_epoch(pd.Series([1.0, 0.8, 0.9, 0.85, 0.95]), patience=2)
    3
    """
    if not is_int(patience) or patience < 1:
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


def _runs(histories: Any) -> dict[str, History]:
    if isinstance(histories, History):
        return dict(zip(run_names([histories]), [histories]))
    if isinstance(histories, (list, tuple, Mapping)):
        return as_runs(histories)
    raise TypeError(f"expected a History, a list or a dict of Histories, got {type(histories).__name__}")


def classify(overfit: bool, stop: int | None, best_epoch: int, max_lead: int = 5, late: int = 2) -> tuple[str, float]:
    """Outcome and lead (``best_epoch - stop``, NaN without a stop) of one method on one run.

    Overfitting run: **hit** if ``-late <= lead <= max_lead``, **false_alarm** if
    ``lead > max_lead``, **miss** if no stop or ``lead < -late``; other run: any stop is a
    **false_alarm**, none a **correct_rejection**.

    >>> classify(True, 10, 12), classify(True, 20, 12), classify(False, None, 12)
    (('hit', 2.0), ('miss', -8.0), ('correct_rejection', nan))
    """
    lead = math.nan if stop is None else float(best_epoch - stop)
    if not overfit:
        return ("correct_rejection" if stop is None else "false_alarm"), lead
    if stop is None or lead < -late:
        return "miss", lead
    if lead > max_lead:
        return "false_alarm", lead
    return "hit", lead


def overfits(loss: pd.Series, min_rise: float = 0.0, relative: bool = False) -> tuple[int, bool]:
    """``(e*, overfits)``: the epoch of the lowest finite loss (earliest on ties) and whether it rises after.

    The loss overfits when its maximum after ``e*`` exceeds the minimum by more than
    ``min_rise`` (absolute), or by more than ``min_rise`` × the minimum when ``relative``
    (``max > (1 + min_rise) · min``).

    >>> loss = pd.Series([1.0, 0.5, 0.52, 0.6])
    >>> overfits(loss, 0.05, relative=True), overfits(loss, 0.2, relative=True)
    ((1, True), (1, False))
    """
    s = loss[~loss.index.duplicated(keep="last")].sort_index()
    finite = s[np.isfinite(s.to_numpy(dtype=float))]
    if finite.empty:
        raise ValueError("the loss has no finite value")
    pos = int(np.argmin(finite.to_numpy(dtype=float)))
    e_star, best = int(finite.index[pos]), float(finite.iloc[pos])
    after = finite[finite.index > e_star]
    if after.empty:
        return e_star, False
    top = float(after.max())
    return e_star, (top > (1 + min_rise) * best) if relative else (top - best > min_rise)


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
    relative_rise: bool = False,
) -> Evaluation:
    """Score the sparsity alarm against the test-loss minimum, beside patience early stopping.

    For each run: ``e*`` = argmin of the ``loss_split`` loss (labels are used here, for the
    evaluation only); a run *overfits* when its loss after ``e*`` rises above the minimum by
    more than ``min_rise`` (default 0: whenever ``e*`` is before the last epoch; raise it when
    a noisy plateau should count as "never rises"); with ``relative_rise`` by more than
    ``min_rise`` × the minimum (study v2 scores with ``min_rise=0.05, relative_rise=True``:
    a rise of 5 %). Each method
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
        if not is_int(val) or val < 0:
            raise ValueError(f"{name} must be an int >= 0 (epochs), got {val!r}")
    if not is_int(patience) or patience < 1:
        raise ValueError(f"patience must be an int >= 1, got {patience!r}")
    if not is_number(min_rise) or not min_rise >= 0:
        raise ValueError(f"min_rise must be a number >= 0, got {min_rise!r}")
    relative_rise = check_bool("relative_rise", relative_rise)
    if detector is not None and not isinstance(detector, OverfitDetector):
        raise TypeError(f"detector must be an OverfitDetector or None, got {type(detector).__name__}")
    det = detector if detector is not None else OverfitDetector()
    rows = []
    for run, h in _runs(histories).items():
        best = h.test_loss_minimum(loss_split)
        if best is None:
            raise ValueError(
                f"run {run!r} has no finite {loss_split!r} loss to evaluate against (splits with metrics: {h.splits})"
            )
        loss = h.metric(loss_split, "loss")
        loss = loss[~loss.index.duplicated(keep="last")].sort_index()
        e_star, overfit = overfits(loss, min_rise, relative_rise)
        acc = h.metric(loss_split, "accuracy") if "accuracy" in h.metric_names() else pd.Series(dtype=float)
        acc = acc[~acc.index.duplicated(keep="last")]
        last = int(loss.index.max())
        result = det.detect(h)
        stops = {
            "sparsity": result.alarm_epoch,
            "early_stopping": early_stopping_epoch(loss, patience=patience, min_delta=min_delta),
        }
        for method, stop in stops.items():
            outcome, lead = classify(overfit, stop, e_star, max_lead, late)
            at = last if stop is None else int(stop)
            excess = last - e_star
            avoided = 0 if stop is None else last - max(int(stop), e_star)
            rows.append(
                {
                    "run": run,
                    "method": method,
                    "best_epoch": e_star,
                    "last_epoch": last,
                    "overfits": overfit,
                    "stop_epoch": stop,
                    "lead": lead,
                    "outcome": outcome,
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
