"""One measured epoch, the step :func:`~xaisparse.train.fit` and the Lightning callback share.

After each training epoch (and once before training, epoch 0) both do the same four things,
here and nowhere else: **measure** the fixed probe sets with the monitor (eval mode, every
submodule's training flag restored after, no gradients), **record** the epoch in the History,
feed the **detector** and keep its result in ``history.detection``, and say whether the
detector asks to **stop**. What differs stays with the caller: ``fit`` adds the probe loss
and accuracy (it knows the loss function) and its running training means; the Lightning
callback adds what the module logged.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import check_split
from .history import History
from .monitor import SparsityMonitor
from .recording import evaluating

__all__ = ["EpochStep", "batch_inputs", "measure_epoch", "measure_split", "timed"]

LossFn = Callable[..., Tensor]


def batch_inputs(batch: Any) -> Tensor:
    """The inputs of a probe batch: the batch itself (a tensor) or its first element.

    >>> batch_inputs((torch.zeros(2, 3), torch.ones(2))).shape
    torch.Size([2, 3])
    """
    if isinstance(batch, Tensor):
        return batch
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        return batch[0]
    raise TypeError(f"probe batches must be a tensor or (inputs, ...) tuples, got {type(batch).__name__}")


@contextlib.contextmanager
def timed(phases: dict[str, float] | None, name: str) -> Iterator[None]:
    """Add the wall time of the block to ``phases[name]`` (nothing when ``phases`` is None).

    Each phase ends in a host read of its results, so on CUDA too the time is the phase's own.
    """
    t = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t


@torch.no_grad()
def measure_split(
    model: nn.Module,
    loader: Iterable[Any],
    device: torch.device | str,
    monitor: SparsityMonitor | None = None,
    split: str = "test",
    loss_fn: LossFn | None = nn.functional.cross_entropy,
) -> dict[str, float]:
    """One pass over a probe set in eval mode, feeding ``monitor`` (if given) as ``split``.

    With ``loss_fn`` the batches are ``(inputs, targets, ...)`` and the mean loss and accuracy
    are returned; with ``loss_fn=None`` a batch is the inputs or ``(inputs, ...)`` and nothing
    is computed but the monitor's statistics (``{}``). Every submodule's training flag is
    restored afterwards, also after an exception.
    """
    check_split(split)
    total, correct, loss_sum = 0, 0, 0.0
    track = monitor.track(split) if monitor is not None else contextlib.nullcontext()
    with evaluating(model), track:
        for batch in loader:
            out = model(batch_inputs(batch).to(device))
            if loss_fn is None:
                continue
            if not isinstance(batch, (tuple, list)) or len(batch) < 2:
                raise TypeError(f"the {split} probe batches must be (inputs, targets) to compute the loss")
            y = batch[1].to(device)
            loss_sum += float(loss_fn(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            total += len(y)
    if loss_fn is None:
        return {}
    if total == 0:
        raise ValueError(f"the {split} probe set is empty")
    return {"loss": loss_sum / total, "accuracy": correct / total}


@dataclass(frozen=True)
class EpochStep:
    """What :func:`measure_epoch` did: the metrics it recorded and the detector's stop request.

    ``stop_reason`` is ``"detector alarm at epoch N"`` when the detector asks to stop, else None.
    """

    metrics: dict[str, dict[str, float]]
    stop_reason: str | None = None


def measure_epoch(
    model: nn.Module,
    history: History,
    epoch: int,
    monitor: SparsityMonitor,
    probes: Mapping[str, Iterable[Any]],
    *,
    device: torch.device | str,
    loss_fn: LossFn | None = None,
    metrics: Mapping[str, Mapping[str, float]] | None = None,
    detector: Any = None,
    phases: dict[str, float] | None = None,
) -> EpochStep:
    """Measure the probes, record the epoch, feed the detector: the one epoch step.

    Each ``probes[split]`` is measured with :func:`measure_split` (with ``loss_fn``: its loss
    and accuracy become metrics of that split); ``metrics`` adds the caller's own
    (``metrics[split][name]``); :meth:`~xaisparse.history.History.record_epoch` records them with
    ``monitor.compute()``. The ``detector`` (an :class:`~xaisparse.detect.OverfitDetector`) is
    updated and ``history.detection`` set to its result. ``phases`` (if given) gets the wall
    time of ``"measure"`` and ``"detect"``.
    """
    with timed(phases, "measure"):
        monitor.reset()
        recorded = {
            split: measure_split(model, loader, device, monitor, split, loss_fn) for split, loader in probes.items()
        }
        for split, values in (metrics or {}).items():
            recorded.setdefault(split, {}).update(values)
        recorded = {split: values for split, values in recorded.items() if values}
        history.record_epoch(epoch, recorded, monitor.compute())
    stop = None
    if detector is not None:
        with timed(phases, "detect"):
            detector.update(history)
            history.detection = detector.result()
        if getattr(detector, "stop_requested", False):
            stop = f"detector alarm at epoch {detector.alarm_epoch}"
    return EpochStep(metrics=recorded, stop_reason=stop)
