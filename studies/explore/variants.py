"""Label-free overfitting detectors on the exploration runs, scored against the test-loss minimum.

Every rule is causal (the alarm at epoch ``e`` reads epochs ``<= e`` only), so each one has
an online, epoch-by-epoch form. None reads a held-out label: the test loss/accuracy are used
only by :func:`score`. Families (signals from :mod:`signals`):

* ``rise``: the package's current rule (:class:`xaisparse.detect.OverfitDetector`, fed through
  its online ``step``), applied to a per-layer series: the test-probe sparsity (the current
  detector), the train-probe sparsity, the signed train-minus-test gap of a layer statistic,
  or a per-channel train/test histogram distance averaged over channels;
* ``slope``: rate of change: trailing least-squares slope of a layer-averaged series over
  ``window`` epochs; ``slope_up`` alarms when it exceeds ``k`` noise units (``k · sigma_slope``,
  sigma from the epoch-to-epoch differences seen so far) for ``patience`` epochs,
  ``flat`` when ``|slope|`` stays below ``tau`` (the representation stopped changing);
* baselines: ``train_plateau`` (relative improvement of the train-probe loss over ``window``
  epochs below ``tau``; uses training labels only), ``train_acc`` (train-probe accuracy
  reaches ``level``), and the labelled ``early_stopping`` (patience on the test loss).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from signals import Run, layer_mean

from xaisparse.detect import OverfitDetector, early_stopping_epoch

MAX_LEAD, LATE = 5, 2  # hit window: from MAX_LEAD epochs before the minimum to LATE after


# ---------------------------------------------------------------------------- signals
def signal(run: Run, name: str) -> np.ndarray:
    """An ``(epochs, layers)`` matrix by name: ``test:<stat>``, ``train:<stat>``, ``gap:<stat>``, ``div:<dist>``.

    Layers whose value is undefined at the first epoch are dropped: the spatial sparsity of a
    1×1 map does not exist (VGG's last stage on 16×16 inputs), which the monitor knows from
    the first measurement, so dropping them is causal. Kept, they would count as "not rising"
    forever and make ``min_layers=1.0`` unreachable.
    """
    kind, _, what = name.partition(":")
    if kind in ("test", "train"):
        m = run.stats[kind, what]
    elif kind == "gap":
        m = run.stats["train", what] - run.stats["test", what]
    elif kind == "div":
        m = run.divergence[what]
    else:
        raise ValueError(name)
    defined = np.isfinite(m[0])
    return m[:, defined] if defined.any() else m


# ---------------------------------------------------------------------------- rules
def rule_rise(matrix: np.ndarray, epochs: np.ndarray, **params) -> int | None:
    """The package's rise rule, fed online epoch by epoch (exactly what a training callback sees)."""
    det = OverfitDetector(record=False, **params)
    names = [f"l{j}" for j in range(matrix.shape[1])]
    for i, e in enumerate(epochs):
        state = det.step(int(e), {n: float(matrix[i, j]) for j, n in enumerate(names)})
        if state.alarmed:
            return state.alarm_epoch
    return None


def _slope(y: np.ndarray) -> float:
    x = np.arange(len(y), dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 3:
        return math.nan
    return float(np.polyfit(x[ok], y[ok], 1)[0])


def rule_slope_up(
    series: np.ndarray, epochs: np.ndarray, window: int, k: float, patience: int, warmup: int
) -> int | None:
    """Trailing slope over ``window`` epochs above ``k`` × its noise for ``patience`` epochs."""
    streak = 0
    for i in range(len(series)):
        if i < warmup + window:
            continue
        diffs = np.diff(series[warmup : i + 1])
        diffs = diffs[np.isfinite(diffs)]
        if len(diffs) < 3:
            continue
        # sd of one epoch's noise from the differences (trend-free); the slope of a w-point fit
        # of white noise with that sd has sd sigma * sqrt(12 / (w^3 - w))
        sigma = float(np.std(diffs, ddof=1)) / math.sqrt(2.0)
        sd_slope = sigma * math.sqrt(12.0 / (window**3 - window))
        b = _slope(series[i - window + 1 : i + 1])
        streak = streak + 1 if (math.isfinite(b) and b > k * sd_slope) else 0
        if streak >= patience:
            return int(epochs[i])
    return None


def rule_flat(
    series: np.ndarray, epochs: np.ndarray, window: int, tau: float, patience: int, warmup: int
) -> int | None:
    """``|slope|`` over ``window`` epochs below ``tau`` (units per epoch) for ``patience`` epochs."""
    streak = 0
    for i in range(len(series)):
        if i < warmup + window - 1:
            continue
        b = _slope(series[i - window + 1 : i + 1])
        streak = streak + 1 if (math.isfinite(b) and abs(b) < tau) else 0
        if streak >= patience:
            return int(epochs[i])
    return None


def rule_train_plateau(loss: np.ndarray, epochs: np.ndarray, window: int, tau: float) -> int | None:
    """Relative improvement of the train loss over ``window`` epochs below ``tau``."""
    for i in range(window, len(loss)):
        before, now = loss[i - window], loss[i]
        if math.isfinite(before) and math.isfinite(now) and before > 0 and (before - now) / before < tau:
            return int(epochs[i])
    return None


def rule_train_acc(acc: np.ndarray, epochs: np.ndarray, level: float) -> int | None:
    hit = np.flatnonzero(np.nan_to_num(acc, nan=-1) >= level)
    return int(epochs[hit[0]]) if len(hit) else None


# ---------------------------------------------------------------------------- variants
def grid(**axes: Iterable) -> list[dict]:
    keys = list(axes)
    return [dict(zip(keys, v)) for v in itertools.product(*axes.values())]


RISE_GRID = grid(
    smooth=[1, 3, 5],
    threshold=[0.0, 0.005, 0.01],
    noise=[2.0, 4.0, 6.0],
    patience=[1, 2, 3],
    min_layers=[0.34, 0.5, 1.0],
    warmup=[2, 5],
)
# scale-free signals (gaps, distances): no absolute threshold, only the noise-adaptive limit
RISE_GRID_NOISE_ONLY = [p for p in RISE_GRID if p["threshold"] == 0.0]
SLOPE_UP_GRID = grid(window=[3, 5, 8], k=[2.0, 3.0, 4.0], patience=[1, 2, 3], warmup=[2, 5])
FLAT_GRID = grid(window=[3, 5, 8], tau=[2.5e-4, 5e-4, 1e-3, 2e-3], patience=[1, 2, 3], warmup=[2, 5])


def variants() -> list[tuple[str, str, dict, Callable[[Run], int | None]]]:
    """(family, signal, params, run -> alarm epoch) for every variant and parameter set."""
    out: list[tuple[str, str, dict, Callable[[Run], int | None]]] = []
    for sig in ("test:spatial_mean", "train:spatial_mean"):
        for p in RISE_GRID:
            out.append(("rise", sig, p, lambda r, s=sig, p=p: rule_rise(signal(r, s), r.epochs, **p)))
    for sig in (
        "gap:spatial_mean",
        "gap:channel_mean",
        "gap:sample_mean",
        "div:tv",
        "div:js",
        "div:w1",
        "div:dmean",
    ):
        for p in RISE_GRID_NOISE_ONLY:
            out.append(("rise", sig, p, lambda r, s=sig, p=p: rule_rise(signal(r, s), r.epochs, **p)))
    for sig in ("test:spatial_mean", "gap:spatial_mean", "gap:channel_mean", "div:tv"):
        for p in SLOPE_UP_GRID:
            out.append(
                ("slope_up", sig, p, lambda r, s=sig, p=p: rule_slope_up(layer_mean(signal(r, s)), r.epochs, **p))
            )
    for sig in ("test:spatial_mean",):
        for p in FLAT_GRID:
            out.append(("flat", sig, p, lambda r, s=sig, p=p: rule_flat(layer_mean(signal(r, s)), r.epochs, **p)))
    for p in grid(window=[3, 5, 10], tau=[0.02, 0.05, 0.1, 0.2, 0.5]):
        out.append(("train_plateau", "train:loss", p, lambda r, p=p: rule_train_plateau(r.train_loss, r.epochs, **p)))
    for p in grid(level=[0.9, 0.95, 0.99, 1.0]):
        out.append(("train_acc", "train:accuracy", p, lambda r, p=p: rule_train_acc(r.train_acc, r.epochs, **p)))
    for p in grid(patience=[1, 2, 3, 5, 10]):
        out.append(
            (
                "early_stopping",
                "test:loss (labelled)",
                p,
                lambda r, p=p: early_stopping_epoch(pd.Series(r.test_loss, index=r.epochs), **p),
            )
        )
    return out


# ---------------------------------------------------------------------------- scoring
def classify(run: Run, stop: int | None, min_rise: float) -> tuple[str, float]:
    """Outcome and lead (``e* - stop``) as in :func:`xaisparse.detect.evaluate`.

    ``min_rise`` is relative here: a run overfits when its test loss after the minimum rises
    above ``(1 + min_rise) ×`` the minimum.
    """
    loss = run.test_loss
    i_star = int(np.nanargmin(loss))
    e_star = int(run.epochs[i_star])
    after = loss[i_star + 1 :]
    overfits = bool(len(after)) and float(np.nanmax(after)) > (1 + min_rise) * float(loss[i_star])
    lead = math.nan if stop is None else float(e_star - stop)
    if not overfits:
        return ("correct_rejection" if stop is None else "false_alarm"), lead
    if stop is None or lead < -LATE:
        return "miss", lead
    if lead > MAX_LEAD:
        return "false_alarm", lead
    return "hit", lead


def excess_loss(run: Run, stop: int | None) -> float:
    """Relative test loss above the minimum at the stop epoch (the last epoch without a stop)."""
    i = len(run.epochs) - 1 if stop is None else int(np.searchsorted(run.epochs, stop))
    return float(run.test_loss[i] / np.nanmin(run.test_loss) - 1)


def score(runs: list[Run], min_rise: float = 0.05) -> pd.DataFrame:
    """One row per (variant, params, run)."""
    rows = []
    for family, sig, params, fn in variants():
        for r in runs:
            stop = fn(r)
            outcome, lead = classify(r, stop, min_rise)
            rows.append(
                {
                    "family": family,
                    "signal": sig,
                    "params": repr(params),
                    "run": r.name,
                    "arch": r.arch,
                    "regime": r.regime,
                    "seed": r.seed,
                    "stop": stop,
                    "lead": lead,
                    "outcome": outcome,
                    "excess_loss": excess_loss(r, stop),
                }
            )
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    g = table.groupby(by, sort=False)
    out = g.agg(
        runs=("outcome", "size"),
        hit=("outcome", lambda s: (s == "hit").mean()),
        false_alarm=("outcome", lambda s: (s == "false_alarm").mean()),
        miss=("outcome", lambda s: (s == "miss").mean()),
        correct_rejection=("outcome", lambda s: (s == "correct_rejection").mean()),
        median_lead=("lead", "median"),
        median_excess_loss=("excess_loss", "median"),
    )
    out["score"] = out["hit"] - out["false_alarm"]
    return out.reset_index()
