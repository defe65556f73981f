"""TensorBoard: a :class:`~xaisparse.history.History` as scalars and per-channel histograms.

:func:`write_history` writes a whole run; :class:`TensorBoardCallback` writes each epoch as
:func:`~xaisparse.train.fit` records it (the :class:`~xaisparse.train.Callback` protocol), so
``tensorboard --logdir DIR`` follows a run live. Both write, with the epoch as the step:

* ``<split>/<metric>`` for every metric (``test/loss``, ``train/accuracy``, ...);
* ``sparsity/<statistic>/<split>/<layer>`` for the layer ``statistics``;
* ``sparsity/channels/<statistic>/<split>/<layer>``: a histogram (``add_histogram``) of the
  per-channel values of the ``channel_statistics`` (one value per channel, NaN left out);
* ``sparsity/alarm``: 1 from the detector's alarm epoch on, else 0 (when the run has a detector result).

Writers are ``torch.utils.tensorboard.SummaryWriter`` objects (or anything with ``add_scalar``
and ``add_histogram``); a path makes one there (and closes it when done). This module is not
imported by ``import xaisparse``.

>>> import tempfile
>>> from xaisparse.testing import synthetic_history
>>> h = synthetic_history(epochs=3, layers=("conv1", "conv2"))
>>> with tempfile.TemporaryDirectory() as logdir:
...     tags = write_history(h, logdir)
>>> sorted(t for t in tags if t.startswith("sparsity/spatial_mean/test"))
['sparsity/spatial_mean/test/conv1', 'sparsity/spatial_mean/test/conv2']
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .._validation import check_choice, check_str
from ..history import History, canonical_statistic, check_history
from ..monitor import CHANNEL_STATISTICS, LAYER_STATISTICS
from ..train import Callback, TrainState

__all__ = ["TensorBoardCallback", "write_epoch", "write_history"]

Writer = Any  # torch.utils.tensorboard.SummaryWriter or alike


def _check_writer(writer: Writer, what: str = "a torch.utils.tensorboard.SummaryWriter") -> Writer:
    if not (hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram")):
        raise TypeError(f"expected {what}, got {type(writer).__name__}")
    return writer


def _writer(writer_or_logdir: Writer | str | os.PathLike[str]) -> tuple[Writer, bool]:
    """The writer, and whether it was made here (and so is closed here)."""
    if isinstance(writer_or_logdir, (str, os.PathLike)):
        from torch.utils.tensorboard import SummaryWriter

        return SummaryWriter(log_dir=os.fspath(writer_or_logdir)), True
    return _check_writer(writer_or_logdir, "a torch.utils.tensorboard.SummaryWriter or a log directory path"), False


def _checked(name: str, values: Iterable[str], choices: Sequence[str]) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    return tuple(check_choice(name, canonical_statistic(check_str(name, v)), choices) for v in values)


def write_epoch(
    history: History,
    writer: Writer,
    epoch: int,
    *,
    statistics: Iterable[str] = ("spatial_mean", "population_mean", "sample_mean"),
    channel_statistics: Iterable[str] = ("spatial_mean", "sample_sparsity"),
    prefix: str = "sparsity",
) -> list[str]:
    """Write one recorded epoch of ``history`` to ``writer`` (step = epoch); the tags written."""
    history = check_history(history)
    _check_writer(writer)
    stats = _checked("statistics", statistics, LAYER_STATISTICS)
    channel_stats = _checked("channel_statistics", channel_statistics, CHANNEL_STATISTICS)
    if epoch not in history.epochs:
        raise ValueError(f"epoch {epoch!r} is not recorded; recorded epochs: {history.epochs}")
    tags: list[str] = []

    def scalar(tag: str, value: float) -> None:
        writer.add_scalar(tag, float(value), global_step=int(epoch))
        tags.append(tag)

    for split, metrics in history.epoch_metrics(epoch).items():
        for name, value in metrics.items():
            scalar(f"{split}/{name}", value)
    for split in history.sparsity_splits:
        for stat in stats:
            for layer, value in history.layer_values(split, epoch, stat).items():
                if np.isfinite(value):
                    scalar(f"{prefix}/{stat}/{split}/{layer}", value)
    for split in history.sparsity_splits:
        for layer in history.layer_names:
            for stat in channel_stats:
                values = history.channel_values(split, layer, epoch, stat)
                values = values[np.isfinite(values)]
                if values.size:
                    tag = f"{prefix}/channels/{stat}/{split}/{layer}"
                    writer.add_histogram(tag, values, global_step=int(epoch))
                    tags.append(tag)
    if history.detection is not None:
        alarm = history.alarm_epoch
        scalar(f"{prefix}/alarm", float(alarm is not None and epoch >= alarm))
    return tags


def write_history(
    history: History,
    writer_or_logdir: Writer | str | os.PathLike[str],
    **options: Any,
) -> list[str]:
    """Write every epoch of ``history``; the distinct tags written (options: see :func:`write_epoch`)."""
    history = check_history(history)
    writer, own = _writer(writer_or_logdir)
    tags: dict[str, None] = {}
    try:
        for epoch in history.epochs:
            tags.update(dict.fromkeys(write_epoch(history, writer, epoch, **options)))
        writer.flush()
    finally:
        if own:
            writer.close()
    return list(tags)


class TensorBoardCallback(Callback):
    """Live export from :func:`~xaisparse.train.fit`: each measured epoch goes to TensorBoard.

    ``fit(..., callbacks=[TensorBoardCallback("runs/tb")])``; options as :func:`write_epoch`.
    A writer made from a path is flushed after every epoch; call :meth:`close` when done (or
    use the callback as a context manager).
    """

    def __init__(self, writer_or_logdir: Writer | str | os.PathLike[str], **options: Any) -> None:
        unknown = sorted(set(options) - {"statistics", "channel_statistics", "prefix"})
        if unknown:
            raise TypeError(f"TensorBoardCallback got unexpected option(s) {unknown}; see write_epoch")
        for name, choices in (("statistics", LAYER_STATISTICS), ("channel_statistics", CHANNEL_STATISTICS)):
            if name in options:
                options[name] = _checked(name, options[name], choices)
        self.writer, self._own = _writer(writer_or_logdir)
        self.options = options

    def on_epoch_end(self, state: TrainState) -> None:
        write_epoch(state.history, self.writer, state.epoch, **self.options)
        self.writer.flush()

    def close(self) -> None:
        if self._own:
            self.writer.close()

    def __enter__(self) -> TensorBoardCallback:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
