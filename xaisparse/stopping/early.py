"""``EarlyStopping``: patience on a validation metric, the best weights restored.

The method study v2 found to work (``studies/results/v2/results.md``: labelled early stopping
with the best epoch restored scored 0.53 [0.40, 0.67] on the 120 held-out runs, where every
label-free variant stayed at or below 0.00). After every epoch it reads one recorded metric
(default: the ``loss`` of the ``val`` split, or of ``test`` when there is no ``val``), keeps a
copy of the weights of the best epoch so far and, after ``patience`` epochs without an
improvement larger than ``min_delta``, asks training to stop and puts the best weights back
into the model. With ``restore_best`` (default) the best weights are also put back when
training reaches its last epoch without stopping, so the model always ends at its best epoch.

The held-out data it reads is a **validation** set: once it chooses the epoch, the numbers on
that set are no longer an unbiased test estimate.

* ``fit(..., early_stopping=EarlyStopping(patience=10))`` (it is one more callback of
  :func:`~xaisparse.train.fit`; ``history.outcome`` records the stop and the restored epoch);
* ``SparsityCallback(..., early_stopping=EarlyStopping(split="val"))`` in Lightning;
* ``xaisparse run --early-stopping [PATIENCE]`` on the command line.

Its stop epoch and restored epoch are those of
:func:`~xaisparse.detect.early_stopping_epoch` and :func:`~xaisparse.detect.restored_best_epoch`
on the recorded metric (the study's L1 and L2).

>>> from torch import nn
>>> net = nn.Linear(2, 1)
>>> es = EarlyStopping(patience=2)
>>> for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.85, 0.95]):
...     with torch.no_grad():
...         _ = net.weight.fill_(epoch)
...     if es.step(epoch, loss, net):
...         break
>>> es.stopped_epoch, es.best_epoch, float(net.weight[0, 0])
(3, 1, 1.0)
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from .._validation import check_bool, check_choice, check_int, check_number, check_split, check_str

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Stop after ``patience`` epochs without improvement of a recorded metric; restore the best weights.

    ``metric``/``split``: what to watch (``split=None``: ``"val"`` when recorded, else
    ``"test"``); ``mode``: ``"min"`` (losses) or ``"max"`` (accuracies); ``min_delta``: the
    smallest change that counts as an improvement; ``restore_best``: put the best epoch's
    weights back at the stop and at the last epoch. A NaN value never improves.

    After training: ``best_epoch``, ``best_value``, ``stopped_epoch`` (``None`` if it never
    fired), ``restored_epoch`` (``None`` if nothing was restored), :meth:`result` (all of them)
    and :attr:`stop_reason` (one sentence).
    """

    def __init__(
        self,
        patience: int = 10,
        *,
        metric: str = "loss",
        split: str | None = None,
        mode: str = "min",
        min_delta: float = 0.0,
        restore_best: bool = True,
    ) -> None:
        self.patience = check_int("patience", patience, minimum=1)
        self.metric = check_str("metric", metric)
        self.split = None if split is None else check_split(split)
        self.mode = check_choice("mode", mode, ("min", "max"))
        self.min_delta = check_number("min_delta", min_delta, minimum=0.0)
        self.restore_best = check_bool("restore_best", restore_best)
        self.reset()

    @property
    def config(self) -> dict[str, Any]:
        """The settings (JSON-safe; what ``fit`` stores in ``history.config``)."""
        return {
            "patience": self.patience,
            "metric": self.metric,
            "split": self.split,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "restore_best": self.restore_best,
        }

    def __repr__(self) -> str:
        return "EarlyStopping(" + ", ".join(f"{k}={v!r}" for k, v in self.config.items()) + ")"

    def reset(self) -> None:
        """Forget everything seen (settings stay)."""
        self.best_value = math.inf if self.mode == "min" else -math.inf
        self.best_epoch: int | None = None
        self.waited = 0
        self.stop_requested = False
        self.stopped_epoch: int | None = None
        self.restored_epoch: int | None = None
        self.watched: str | None = None
        self._best_state: dict[str, torch.Tensor] | None = None

    def _improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.mode == "min":
            return value < self.best_value - self.min_delta
        return value > self.best_value + self.min_delta

    def step(self, epoch: int, value: float, model: nn.Module | None = None, *, last: bool = False) -> bool:
        """Feed one epoch's value; returns :attr:`stop_requested`. ``last``: this is the final epoch."""
        epoch = check_int("epoch", epoch)
        value = float(value)
        if self.stop_requested:
            return True
        if self._improves(value):
            self.best_value, self.best_epoch, self.waited = value, epoch, 0
            if self.restore_best and model is not None:
                self._best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.stop_requested, self.stopped_epoch = True, epoch
        if (self.stop_requested or last) and self.restore_best and model is not None and self._best_state is not None:
            model.load_state_dict(copy.copy(self._best_state))
            self.restored_epoch = self.best_epoch
        return self.stop_requested

    def _split(self, history: Any) -> str:
        if self.split is not None:
            return self.split
        splits = list(getattr(history, "splits", []))
        return "val" if "val" in splits else "test"

    def update(self, history: Any, epoch: int, model: nn.Module | None = None, *, last: bool = False) -> bool:
        """Feed ``epoch`` from a :class:`~xaisparse.history.History` (its ``metric(split, metric)``)."""
        split = self._split(history)
        if split not in history.splits or self.metric not in set(
            history.metrics.loc[history.metrics.split == split, "metric"]
        ):
            raise ValueError(
                f"EarlyStopping watches the {split!r} {self.metric!r}, which was not recorded "
                f"(splits with metrics: {history.splits}; metrics: {history.metric_names()}); "
                "pass held-out data to fit (test=...) or log it in Lightning, or set split=/metric="
            )
        self.watched = f"{split} {self.metric}"
        series = history.metric(split, self.metric)
        value = float(series.get(epoch, math.nan))
        return self.step(epoch, value, model, last=last)

    def on_epoch_end(self, state: Any) -> None:
        """:func:`~xaisparse.train.fit`'s callback hook: :meth:`update` with the live History and model."""
        self.update(state.history, state.epoch, state.model, last=state.epoch >= state.epochs)

    def on_batch_end(self, state: Any) -> None:
        """Nothing per batch."""

    def result(self) -> dict[str, Any]:
        """What happened, JSON-safe: ``watched``, ``best_epoch``, ``best_value``, ``stopped_epoch``, ``restored_epoch``."""
        return {
            "watched": self.watched,
            "best_epoch": self.best_epoch,
            "best_value": self.best_value if math.isfinite(self.best_value) else None,
            "stopped_epoch": self.stopped_epoch,
            "restored_epoch": self.restored_epoch,
        }

    @property
    def stop_reason(self) -> str:
        """What happened, in one sentence."""
        what = self.watched or self.metric
        if self.stopped_epoch is None:
            head = f"early stopping on the {what}: no stop"
        else:
            head = (
                f"early stopping on the {what}: no improvement for {self.patience} epochs at epoch {self.stopped_epoch}"
            )
        if self.restored_epoch is not None:
            head += f"; restored the weights of epoch {self.restored_epoch} ({self.metric} {self.best_value:.4g})"
        return head
