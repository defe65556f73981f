"""Study v3's label-free candidates (PROTOCOL.md, v3 addendum §V1–V3): the published signals and their rules.

Each run of parts T, A and S carries the per-epoch signals of
:class:`xaisparse.stopping.LabelFreeSignals` (``labelfree/`` in its run directory); a
``small_cnn`` run of T or A also has a twin whose predictions give the two-seed disagreement.
:func:`series` reads the four series of a run; :data:`PUBLISHED` and :data:`GRIDS` are the
pre-registered rules; :func:`tune` picks a grid's rule on tuning runs; :data:`CANDIDATES` maps
P1–P9 to (signal, published/tuned, the runs it is scored on).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from xaisparse.detect import classify
from xaisparse.stopping import disagreement_series, load_signals, minimum_stop, threshold_stop

from .grid import signals_dir
from .scoring import LATE, MAX_LEAD

#: signal id -> column of LabelFreeSignals' table (DIS is computed from a run and its twin).
COLUMNS = {"EB": "eb_criterion", "GD": "gradient_disparity", "ALPHA": "alpha_mean"}
SIGNALS = ("EB", "GD", "ALPHA", "DIS")


@dataclass(frozen=True)
class Rule:
    """A stop rule with its parameters: ``threshold`` (:func:`threshold_stop`) or ``minimum`` (:func:`minimum_stop`)."""

    kind: str
    params: tuple[tuple[str, Any], ...]

    def stop(self, series: pd.Series | None) -> int | None:
        if series is None or series.empty:
            return None
        kw = dict(self.params)
        return threshold_stop(series, **kw) if self.kind == "threshold" else minimum_stop(series, **kw)

    def describe(self) -> str:
        kw = dict(self.params)
        if self.kind == "threshold":
            side = ">" if kw["above"] else "<"
            return f"{side} {kw['threshold']:g} for {kw['patience']} ep. (smooth {kw['smooth']}, warmup {kw['warmup']})"
        return f"no new minimum for {kw['patience']} ep. (smooth {kw['smooth']}, warmup {kw['warmup']}" + (
            ", minimum's epoch restored)" if kw["restore"] else ")"
        )


def threshold(t: float, above: bool, smooth: int = 1, patience: int = 1, warmup: int = 0) -> Rule:
    return Rule(
        "threshold",
        (("threshold", t), ("above", above), ("smooth", smooth), ("patience", patience), ("warmup", warmup)),
    )


def minimum(patience: int, smooth: int = 1, warmup: int = 0, restore: bool = False) -> Rule:
    return Rule("minimum", (("patience", patience), ("smooth", smooth), ("warmup", warmup), ("restore", restore)))


_MIN_GRID = [
    minimum(p, s, w, r) for p, s, w, r in itertools.product((2, 3, 5, 10, 15), (1, 3, 5), (0, 5), (False, True))
]
#: §V3: the grids the tuned rules are chosen from (in the order ties are broken).
GRIDS: dict[str, list[Rule]] = {
    "EB": [
        threshold(t, True, s, p, w)
        for t, s, p, w in itertools.product((-2, -1, -0.5, -0.2, -0.1, 0, 0.1), (1, 3, 5), (1, 2, 3), (0, 5))
    ],
    "GD": list(_MIN_GRID),
    "ALPHA": [
        threshold(t, False, s, p, w)
        for t, s, p, w in itertools.product((2, 2.5, 3, 3.5, 4, 5), (1, 3), (1, 2, 3), (0, 5))
    ]
    + list(_MIN_GRID),
    "DIS": list(_MIN_GRID),
}
#: §V3: the published rules (fixed, never tuned).
PUBLISHED: dict[str, Rule] = {"EB": threshold(0, True), "GD": minimum(5), "ALPHA": threshold(2, False)}

#: id -> (signal, "published" or "tuned", the runs it is tuned and scored on: "adam", "twins" or "sgd").
CANDIDATES: dict[str, tuple[str, str, str]] = {
    "P1": ("EB", "published", "adam"),
    "P2": ("EB", "tuned", "adam"),
    "P3": ("GD", "published", "adam"),
    "P4": ("GD", "tuned", "adam"),
    "P5": ("ALPHA", "published", "adam"),
    "P6": ("ALPHA", "tuned", "adam"),
    "P7": ("DIS", "tuned", "twins"),
    "P8": ("EB", "published", "sgd"),
    "P9": ("EB", "tuned", "sgd"),
}
_NAMES = {
    "EB": "EB-criterion",
    "GD": "gradient disparity",
    "ALPHA": "weight-spectrum α",
    "DIS": "two-seed disagreement",
}
_SETS = {"adam": "", "twins": ", small_cnn runs with a twin", "sgd": ", plain-SGD cell"}
LABELS: dict[str, tuple[str, str]] = {
    k: (f"{k} {_NAMES[sig]}, {how}{_SETS[runs]}", "published label-free signal")
    for k, (sig, how, runs) in CANDIDATES.items()
}


def series(root: Path, name: str, twin: str | None = None) -> dict[str, pd.Series | None]:
    """The four signal series of a finished run (``DIS`` only when its twin ``twin`` is finished too)."""
    rec = load_signals(signals_dir(Path(root) / "runs" / name))
    out: dict[str, pd.Series | None] = {k: rec.signals[c].astype(float) for k, c in COLUMNS.items()}
    out["DIS"] = None
    if twin is not None:
        other = load_signals(signals_dir(Path(root) / "runs" / twin))
        out["DIS"] = disagreement_series(rec.predictions, other.predictions)
    return out


def outcome(facts: Mapping[str, Any], stop: int | None) -> str:
    """§7's outcome of a stop on a run (from its test-loss facts)."""
    return classify(bool(facts["overfits"]), stop, int(facts["e_star"]), MAX_LEAD, LATE)[0]


def excess(loss: pd.Series, stop: int | None) -> float:
    at = int(loss.index.max()) if stop is None else int(stop)
    return float(loss.get(at, math.nan) / loss.min() - 1)


def tune(
    signal: str, runs: Sequence[tuple[Mapping[str, Any], pd.Series, Mapping[str, pd.Series | None]]]
) -> tuple[Rule, pd.DataFrame]:
    """The grid's rule with the best hit − false-alarm rate on these tuning runs (§V3's tie-breaks).

    ``runs``: (test-loss facts, test loss by epoch, signal series) per tuning run. Returns the rule
    and the whole grid's scores (one row per rule, in grid order).
    """
    if not runs:
        return GRIDS[signal][0], pd.DataFrame()
    rows = []
    for i, rule in enumerate(GRIDS[signal]):
        outcomes, excesses = [], []
        for facts, loss, sig in runs:
            stop = rule.stop(sig[signal])
            outcomes.append(outcome(facts, stop))
            excesses.append(excess(loss, stop))
        o = np.asarray(outcomes)
        hit, fa = float((o == "hit").mean()), float((o == "false_alarm").mean())
        rows.append(
            {
                "order": i,
                "rule": rule.describe(),
                "runs": len(o),
                "hit": hit,
                "false_alarm": fa,
                "score": hit - fa,
                "median_excess_loss": float(np.median(excesses)) if excesses else math.nan,
            }
        )
    table = pd.DataFrame(rows)
    best = table.sort_values(["score", "median_excess_loss", "order"], ascending=[False, True, True]).iloc[0]
    return GRIDS[signal][int(best["order"])], table
