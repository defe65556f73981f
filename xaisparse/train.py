"""A plain PyTorch training loop that measures sparsity on fixed probe sets every epoch.

``fit`` trains, and after each epoch evaluates loss, accuracy and the per-layer/per-channel
sparsity statistics on fixed probe subsets of the train and test data, appending them to a
:class:`~xaisparse.history.History`. It takes the objects it uses — a
:class:`~xaisparse.monitor.SparsityMonitor`, a :class:`~xaisparse.penalty.SparsityPenalty`,
an :class:`~xaisparse.detect.OverfitDetector` — built by you on the model, with simple
defaults. Callbacks follow one protocol (:class:`Callback`): they get the live
:class:`TrainState` after each batch and each epoch, and any of them can stop training after
the current epoch.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import random
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ._deprecation import deprecated
from ._errors import DeviceUnavailableError
from ._fit_inputs import check_fit_inputs
from ._io import atomic_write_bytes
from ._validation import check_int
from .checkpoint import BEST_CHECKPOINT, CHECKPOINT, load_checkpoint
from .data import probe_subset
from .epoch import EpochStep, measure_epoch, measure_split, timed
from .history import History, HistoryWriter, loss_minimum
from .monitor import SparsityMonitor
from .penalty import SparsityPenalty
from .stopping.early import EarlyStopping

if TYPE_CHECKING:  # pragma: no cover
    from .detect import OverfitDetector

__all__ = ["Callback", "TrainState", "fit", "load_checkpoint", "seed_everything"]

LossFn = Callable[..., Tensor]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the legacy global stream is the point
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """What callbacks see: the live objects and the position in training.

    ``epoch``/``epochs``: the current epoch and the last one; ``batch``/``batches``: the
    position in the current epoch; ``loss``/``penalty``: the latest batch's task loss and
    penalty; ``metrics``: the latest epoch's measurements (``metrics[split][name]``); set
    ``stop = True`` to end training after the current epoch. ``info``: a dict that callbacks may
    use to pass data to one another (``fit`` itself never reads or writes it).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    loss: float = float("nan")
    penalty: float = float("nan")
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    stop: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class for training callbacks; override what you need.

    ``fit`` calls ``on_batch_end(state)`` after every optimiser step and ``on_epoch_end(state)``
    after every measured epoch (``state.history`` is the live History). It stops cleanly after
    the current epoch when a callback's ``stop_requested`` is true or ``state.stop`` was set. A
    plain function ``f(state)`` is accepted too and called at each epoch end. The widgets'
    :class:`~xaisparse.widgets.LiveDashboard` follows this protocol.
    """

    stop_requested: bool = False

    def on_batch_end(self, state: TrainState) -> None:  # pragma: no cover - default no-op
        pass

    def on_epoch_end(self, state: TrainState) -> None:  # pragma: no cover - default no-op
        pass


def _epoch_end(cb: Any, state: TrainState) -> None:
    (cb.on_epoch_end if hasattr(cb, "on_epoch_end") else cb)(state)


def _check_device(device: object) -> torch.device:
    """``device`` as a ``torch.device`` this machine has: ``ValueError`` for a malformed one,
    :class:`~xaisparse.DeviceUnavailableError` for CUDA where there is none."""
    try:
        dev = torch.device(device)  # type: ignore[call-overload]
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got {device!r}") from None
    if dev.type == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= available:
            raise DeviceUnavailableError(
                f"device={str(dev)!r} was requested but this machine has {available} CUDA device(s) "
                f"(torch.cuda.is_available() is {torch.cuda.is_available()}); use device='cpu'"
            )
    return dev


def _check_not_empty(data: Dataset | DataLoader, split: str) -> None:
    """A ``ValueError`` naming the split when ``data`` has no samples (iterable datasets pass: no length)."""
    dataset = data.dataset if isinstance(data, DataLoader) else data
    try:
        n = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return
    if n == 0:
        hint = "; pass test=None to train without a test split" if split == "test" else ""
        raise ValueError(f"the {split} split is empty: fit() got a {type(dataset).__name__} with 0 samples{hint}")


def _loader(data: Dataset | DataLoader, batch_size: int, seed: int) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"expected a map-style Dataset or a DataLoader, got {type(data).__name__}")
    return DataLoader(data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))


def _probe(data: Dataset | DataLoader | None, size: int, seed: int) -> DataLoader | None:
    """A fixed, unshuffled loader over :func:`~xaisparse.data.probe_subset` of ``data``."""
    if data is None:
        return None
    dataset = data.dataset if isinstance(data, DataLoader) else data
    return DataLoader(probe_subset(dataset, size, seed), batch_size=256, shuffle=False)


def evaluate_split(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device | str,
    monitor: SparsityMonitor | None = None,
    split: str = "test",
    loss_fn: LossFn = nn.functional.cross_entropy,
) -> dict[str, float]:
    """Deprecated: :func:`xaisparse.epoch.measure_split` (mean loss and accuracy on a probe set)."""
    deprecated("xaisparse.train.evaluate_split is deprecated: use xaisparse.epoch.measure_split (same arguments)")
    return measure_split(model, loader, device, monitor, split, loss_fn)


def _optimizer(
    model: nn.Module, optimizer: Any, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer in (None, "adam"):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer, got {optimizer!r}")


def _deprecated_objects(
    model: nn.Module, monitor: Any, penalty: Any, old: dict[str, Any]
) -> tuple[SparsityMonitor, SparsityPenalty | None]:
    """The monitor and penalty ``fit`` uses, building them from the deprecated keywords when given."""
    unknown = sorted(set(old) - {"penalty_layers", "layer_weights", "monitor_layers", "bins"})
    if unknown:
        raise TypeError(f"fit() got unexpected keyword argument(s) {', '.join(unknown)}")
    for name in old:
        what = (
            "SparsityPenalty(model, layers=..., layer_weights=...)"
            if name != "bins"
            else "SparsityMonitor(model, bins=...)"
        )
        if name == "monitor_layers":
            what = "SparsityMonitor(model, layers=...)"
        warnings.warn(
            f"fit({name}=...) is deprecated: pass monitor=/penalty= objects instead, e.g. {what}",
            DeprecationWarning,
            stacklevel=3,
        )
    if monitor is None:
        monitor = SparsityMonitor(model, old.get("monitor_layers"), bins=old.get("bins", 20))
    elif not isinstance(monitor, SparsityMonitor):
        raise TypeError(f"monitor must be a SparsityMonitor or None, got {type(monitor).__name__}")
    if isinstance(penalty, (int, float)) and not isinstance(penalty, bool):
        warnings.warn(
            "fit(penalty=<number>) is deprecated: pass penalty=SparsityPenalty(model, weight=λ)",
            DeprecationWarning,
            stacklevel=3,
        )
        layers, layer_weights = old.get("penalty_layers"), old.get("layer_weights")
        penalty = (
            SparsityPenalty(model, layers, weight=float(penalty), layer_weights=layer_weights) if penalty else None
        )
    elif penalty is not None and not isinstance(penalty, SparsityPenalty):
        raise TypeError(f"penalty must be a SparsityPenalty (or None), got {type(penalty).__name__}")
    for obj, what in ((monitor, "monitor"), (penalty, "penalty")):
        if obj is not None and obj.recorder.model is not model:
            raise ValueError(f"the {what} was built on another model; build it on the model passed to fit()")
    return monitor, penalty


def fit(
    model: nn.Module,
    train: Dataset | DataLoader,
    test: Dataset | DataLoader | None = None,
    *,
    epochs: int = 30,
    optimizer: str | torch.optim.Optimizer | None = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    batch_size: int = 64,
    monitor: SparsityMonitor | None = None,
    penalty: SparsityPenalty | None = None,
    detector: OverfitDetector | None = None,
    early_stopping: EarlyStopping | None = None,
    callbacks: Iterable[Callback | Callable[[TrainState], Any]] = (),
    probe_size: int = 512,
    train_statistics: str = "probe",
    device: str | torch.device = "cpu",
    seed: int = 0,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
    config: dict[str, Any] | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    **deprecated: Any,
) -> History:
    """Train ``model`` and measure it every epoch; returns the run's :class:`History`.

    Epoch 0 is the untrained model; epochs ``1..epochs`` follow each pass over ``train``.
    Each measured epoch records ``loss``/``accuracy`` on fixed probe subsets (``probe_size``
    samples, :func:`~xaisparse.data.probe_subset`) of the train and test data, and the
    sparsity that ``monitor`` measures on both (default ``SparsityMonitor(model)``: the conv
    blocks' activations). With ``penalty`` (a :class:`SparsityPenalty` built on ``model``)
    the training loss is ``task + penalty()``. ``detector`` is fed after every epoch; its
    result is kept in ``history.detection`` and, with ``stop_on_alarm``, it stops training.
    ``train_statistics``: where the train split's sparsity comes from. ``"probe"`` (default): an
    evaluation pass over the train probe subset, like the test split. ``"training"``: the
    training forwards of the epoch, i.e. **train-mode statistics** (dropout active, batch norm
    on batch statistics, the weights changing during the epoch; every training sample once),
    not comparable with ``"probe"`` numbers; epoch 0 (before any training) still uses the
    probe pass, and loss and accuracy always do. It saves the monitor's work on the train
    probe; with a ``penalty`` on the same layers, the training forwards' sparsity comes with
    the penalty's own read of each activation (one pass for both).
    ``early_stopping`` (an :class:`~xaisparse.stopping.EarlyStopping`) watches a recorded
    held-out metric (by default the ``test`` loss: pass your validation set as ``test``), stops
    after its patience and restores the best epoch's weights; what it did is in
    ``history.outcome.stop_reason`` and ``history.config["early_stopping"]``.
    ``checkpoint_dir`` keeps the latest model/optimizer/RNG state and history after each epoch,
    and the best epoch's weights in ``best.pt`` (the lowest test loss so far, or what
    ``early_stopping`` watches; ``{"epoch", "model", "watched", "value"}``; see
    :func:`~xaisparse.checkpoint.load_weights`)
    (atomically; after the first save the history is appended to, see
    :class:`~xaisparse.history.HistoryWriter`); ``resume`` continues such a run up to ``epochs``. How the run ended is in
    ``history.outcome``.

    Deprecated (one release, with a ``DeprecationWarning``): ``penalty=<number>``,
    ``penalty_layers=``, ``layer_weights=``, ``monitor_layers=``, ``bins=``.

    >>> from torch.utils.data import TensorDataset
    >>> torch.manual_seed(0) and None
    >>> data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,)))
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    >>> h = fit(net, data, data, epochs=2, progress=False, penalty=SparsityPenalty(net, weight=0.1))
    >>> h.epochs, sorted(h.metrics.metric.unique())
    ([0, 1, 2], ['accuracy', 'loss', 'penalty', 'running_loss'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    epochs = check_int("epochs", epochs, minimum=0)
    probe_size = check_int("probe_size", probe_size, minimum=1)
    if train_statistics not in ("probe", "training"):
        raise ValueError(f"train_statistics must be 'probe' or 'training', got {train_statistics!r}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    monitor, pen = _deprecated_objects(model, monitor, penalty, deprecated)
    if detector is not None and not hasattr(detector, "update"):
        raise TypeError(f"detector must be an OverfitDetector (or None), got {type(detector).__name__}")
    device = _check_device(device)
    _check_not_empty(train, "train")
    if test is not None:
        _check_not_empty(test, "test")
    check_fit_inputs(model, {"train": train, "test": test}, loss_fn)  # items, dtypes, labels: clear messages
    seed_everything(seed)
    model.to(device)
    opt = _optimizer(model, optimizer, lr, weight_decay, momentum)
    train_loader = _loader(train, batch_size, seed)
    probes = {"train": _probe(train, probe_size, seed), "test": _probe(test, probe_size, seed)}
    cbs: list[Any] = list(callbacks)
    if early_stopping is not None:
        if not isinstance(early_stopping, EarlyStopping):
            raise TypeError(f"early_stopping must be an EarlyStopping (or None), got {type(early_stopping).__name__}")
        if test is None and early_stopping.split in (None, "test"):
            raise ValueError("early_stopping watches the held-out (test=) data's metric, but fit got test=None")
        cbs.append(early_stopping)

    run_config = {
        "epochs": epochs,
        "optimizer": optimizer if isinstance(optimizer, str) else type(opt).__name__,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "monitor": {"layers": monitor.recorder.modules, "bins": monitor.bins},
        "penalty": None
        if pen is None
        else {
            "weight": pen.weight,
            "layers": pen.recorder.modules,
            "layer_weights": pen.layer_weights,
            "axis": pen.axis,
        },
        "detector": None if detector is None else detector.config.to_dict(),
        "early_stopping": None if early_stopping is None else early_stopping.config,
        "probe_size": probe_size,
        "train_statistics": train_statistics,
        "seed": seed,
        "device": str(device),
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        **dict(config or {}),
    }
    history = History(config=run_config)
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    writer = None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        writer = HistoryWriter(ckpt_dir / "history")  # after the first save, each epoch's save appends
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        if train_loader.generator is not None and "loader_rng" in ckpt:
            train_loader.generator.set_state(ckpt["loader_rng"])
        resume_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        history = History.load(resume_dir / "history")
        history.config["epochs"] = epochs
        start_epoch = int(ckpt["epoch"]) + 1
        if detector is not None:
            detector.update(history)  # catch up on the epochs before the checkpoint

    state = TrainState(model=model, optimizer=opt, history=history, epochs=epochs, batches=len(train_loader))
    bar = _progress(range(start_epoch, epochs + 1), progress, initial=start_epoch, total=epochs + 1)
    t0 = time.perf_counter()
    phases = history.outcome.phase_seconds
    measured = {split: loader for split, loader in probes.items() if loader is not None}
    from_training = train_statistics == "training"
    try:
        if pen is not None:
            pen.attach()
        for epoch in bar:
            state.epoch = epoch
            running: dict[str, dict[str, float]] = {}
            if epoch > 0:
                with timed(phases, "train"):
                    if from_training:  # the train split's sparsity: this epoch's training forwards
                        monitor.reset("train")
                    with monitor.track("train") if from_training else contextlib.nullcontext():
                        running = {"train": _train_one_epoch(train_loader, pen, device, loss_fn, state, cbs)}
            step = measure_epoch(
                model,
                history,
                epoch,
                monitor,
                measured,
                device=device,
                loss_fn=loss_fn,
                metrics=running,
                detector=detector,
                phases=phases,
                tracked=("train",) if from_training and epoch > 0 else (),
            )
            state.metrics = step.metrics
            if cbs:
                with timed(phases, "callbacks"):
                    for cb in cbs:
                        _epoch_end(cb, state)
            if ckpt_dir is not None and writer is not None:
                with timed(phases, "checkpoint"):
                    _save_checkpoint(ckpt_dir, model, opt, train_loader, history, epoch, writer)
                    _save_best(ckpt_dir, model, history, epoch, early_stopping)
            _postfix(bar, step.metrics, history)
            stopper = _stop_reason(state, cbs, step)
            if stopper is not None and epoch < epochs:
                history.outcome.stopped_early_at, history.outcome.stop_reason = epoch, stopper
                break
    finally:
        if pen is not None:
            pen.detach()
        history.outcome.train_seconds = round(time.perf_counter() - t0, 2)
        if early_stopping is not None:
            history.config["early_stopping"] = {**early_stopping.config, **early_stopping.result()}
        for name, seconds in phases.items():
            phases[name] = round(seconds, 3)
    return history


def _stop_reason(state: TrainState, cbs: list[Any], step: EpochStep) -> str | None:
    if state.stop:
        return "state.stop"
    if step.stop_reason is not None:
        return step.stop_reason
    for cb in cbs:
        if getattr(cb, "stop_requested", False):
            return str(getattr(cb, "stop_reason", None) or f"callback {type(cb).__name__}")
    return None


def _train_one_epoch(
    loader: DataLoader, pen: SparsityPenalty | None, device: torch.device, loss_fn: LossFn, state: TrainState, cbs: list
) -> dict[str, float]:
    """One pass over ``loader``; the epoch's means: ``running_loss`` (task loss) and, with a penalty, ``penalty``."""
    model, opt = state.model, state.optimizer
    model.train()
    loss_sum, pen_sum, n = 0.0, 0.0, 0
    for i, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = loss_fn(out, y)
        total = loss + pen() if pen is not None else loss
        # one host sync per step: the task loss and the total (with the penalty) together
        state.loss, total_value = torch.stack([loss.detach(), total.detach()]).tolist()
        if not math.isfinite(total_value):
            raise FloatingPointError(
                f"training loss became {total_value} at epoch {state.epoch}, batch {i}; lower the learning rate "
                "or the penalty weight"
            )
        total.backward()
        opt.step()
        state.batch = i
        loss_sum += state.loss
        if pen is not None:
            state.penalty = total_value - state.loss
            pen_sum += state.penalty
        n += 1
        for cb in cbs:
            if hasattr(cb, "on_batch_end"):
                cb.on_batch_end(state)
    means = {"running_loss": loss_sum / max(n, 1)}
    if pen is not None:
        means["penalty"] = pen_sum / max(n, 1)
    return means


def _save_checkpoint(
    ckpt_dir: Path,
    model: nn.Module,
    opt: Any,
    loader: DataLoader,
    history: History,
    epoch: int,
    writer: HistoryWriter,
) -> None:
    writer.save(history)
    state = {  # serialised below at once: no copy of the weights needed
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if loader.generator is not None:
        state["loader_rng"] = loader.generator.get_state()
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(ckpt_dir / CHECKPOINT, buf.getvalue())


def _save_best(
    ckpt_dir: Path, model: nn.Module, history: History, epoch: int, early_stopping: EarlyStopping | None
) -> None:
    """Write ``BEST_CHECKPOINT`` when ``epoch`` is the best so far of the watched metric (earliest on ties).

    Watched: what ``early_stopping`` watches (its split, metric and mode), else the test loss.
    Nothing is written when that metric is not recorded (``fit(test=None)``).
    """
    metric, mode = ("loss", "min") if early_stopping is None else (early_stopping.metric, early_stopping.mode)
    split = "test" if early_stopping is None else early_stopping._split(history)
    if split not in history.splits or metric not in history.metric_names():
        return
    series = history.metric(split, metric)
    series = series[series.index <= epoch]
    best = loss_minimum(series if mode == "min" else -series)
    if best is None or best[0] != epoch:
        return
    value = float(series.loc[epoch])
    buf = io.BytesIO()
    torch.save({"epoch": epoch, "model": model.state_dict(), "watched": f"{split} {metric}", "value": value}, buf)
    atomic_write_bytes(ckpt_dir / BEST_CHECKPOINT, buf.getvalue())


def _progress(it: Iterable[int], enabled: bool, initial: int, total: int) -> Any:
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc="epochs", unit="epoch", initial=initial, total=total, leave=True)


def _postfix(bar: Any, metrics: dict[str, dict[str, float]], history: History) -> None:
    if not hasattr(bar, "set_postfix"):
        return
    post: dict[str, Any] = {f"{split} loss": f"{m['loss']:.3f}" for split, m in metrics.items()}
    if history.alarm_epoch is not None:
        post["alarm"] = history.alarm_epoch
    bar.set_postfix(post)
