"""Comparison methods for the detector: stops that are not sparsity detectors.

They exist to tell whether a detector knows anything a trivial rule does not. Label-free:
:func:`train_loss_plateau_epoch` (reads the train-probe loss: training labels only) and
:func:`fixed_epoch` (reads nothing); :func:`chance_outcomes` gives the exact expected
outcome of an alarm at a uniformly random epoch. Labelled references (they read the held-out
loss): :func:`~xaisparse.detect.early_stopping_epoch` and :func:`restored_best_epoch`.

>>> import pandas as pd
>>> train_loss_plateau_epoch(pd.Series([2.0, 1.0, 0.5, 0.49, 0.485]), window=2, tau=0.05)
4
"""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from .._validation import check_int, check_number
from ..history import epoch_series, loss_minimum

__all__ = ["chance_outcomes", "fixed_epoch", "restored_best_epoch", "train_loss_plateau_epoch"]


def train_loss_plateau_epoch(loss: pd.Series, window: int = 10, tau: float = 0.02) -> int | None:
    """The first epoch whose loss improved by less than ``tau`` (relative) over the last ``window`` epochs.

    At position ``i >= window``: stop when ``(L(i-window) - L(i)) / L(i-window) < tau`` (both
    finite, ``L(i-window) > 0``). ``loss`` is the train-probe loss by epoch (training labels
    only: a label-free baseline with respect to held-out data).
    """
    window = check_int("window", window, minimum=1)
    tau = check_number("tau", tau)
    s = epoch_series(loss, "loss")
    values, epochs = s.to_numpy(), s.index.to_numpy()
    for i in range(window, len(values)):
        before, now = values[i - window], values[i]
        if math.isfinite(before) and math.isfinite(now) and before > 0 and (before - now) / before < tau:
            return int(epochs[i])
    return None


def fixed_epoch(epochs: list[int], epoch: int = 36) -> int | None:
    """Stop at ``epoch`` if the run reached it (else no stop)."""
    epoch = check_int("epoch", epoch, minimum=0)
    return epoch if epoch in {int(e) for e in epochs} else None


def restored_best_epoch(loss: pd.Series, stop: int | None) -> int | None:
    """The epoch of the lowest loss up to ``stop`` (what early stopping with restored weights keeps)."""
    if stop is None:
        return None
    s = epoch_series(loss, "loss")
    best = loss_minimum(s[s.index <= stop])
    return None if best is None else best[0]


def chance_outcomes(epochs: list[int], classify: Callable[[int | None], str], first: int = 5) -> dict[str, float]:
    """Exact expected outcome rates of an alarm at a uniformly random epoch ``>= first``.

    ``classify(stop)`` maps a stop epoch to an outcome name; the result maps each outcome to the
    share of the candidate epochs giving it (no sampling).

    >>> chance_outcomes([0, 5, 6, 7, 8], lambda s: "hit" if s >= 7 else "false_alarm")
    {'false_alarm': 0.5, 'hit': 0.5}
    """
    candidates = [int(e) for e in epochs if int(e) >= first]
    if not candidates:
        return {}
    names = [classify(e) for e in candidates]
    return {name: names.count(name) / len(names) for name in sorted(set(names))}
