"""A plain PyTorch training loop that measures sparsity on fixed probe sets every epoch.

``fit`` trains, and after each epoch evaluates loss, accuracy and the per-layer/per-channel
sparsity statistics on fixed probe subsets of the train and test data, appending them to a
:class:`~xaisparse.history.History`. Callbacks see the live history after each batch/epoch
(widgets update through them) and any callback can stop training after the current epoch.
"""

from __future__ import annotations

import copy
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import CHECKPOINT, load_checkpoint
from .history import History
from .monitor import SparsityMonitor
from .penalty import SparsityPenalty

__all__ = ["Callback", "TrainState", "evaluate_split", "fit", "load_checkpoint", "seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the legacy global stream is the point
    torch.manual_seed(seed)


@dataclass
class TrainState:
    """What callbacks see: the live objects and the position in training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    epoch: int = 0
    epochs: int = 0
    batch: int = 0
    batches: int = 0
    loss: float = float("nan")
    penalty: float = float("nan")
    stop: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Callback:
    """Base class for training callbacks; override what you need.

    ``fit`` calls ``on_batch_end(state)`` after every optimiser step and
    ``on_epoch_end(history)`` after every measured epoch; it stops cleanly after the current
    epoch when a callback's ``stop_requested`` is true (or ``state.stop`` was set). A plain
    function ``f(history)`` is accepted too and called at each epoch end.
    """

    stop_requested: bool = False

    def on_batch_end(self, state: TrainState) -> None:  # pragma: no cover - default no-op
        pass

    def on_epoch_end(self, history: History) -> None:  # pragma: no cover - default no-op
        pass


def _loader(data: Dataset | DataLoader | None, batch_size: int, shuffle: bool, seed: int) -> DataLoader | None:
    if data is None or isinstance(data, DataLoader):
        return data
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"expected a map-style Dataset or a DataLoader, got {type(data).__name__}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=gen)


def _probe(data: Dataset | DataLoader | None, size: int, batch_size: int, seed: int) -> DataLoader | None:
    """A fixed, unshuffled probe loader of at most ``size`` samples."""
    if data is None:
        return None
    dataset = data.dataset if isinstance(data, DataLoader) else data
    n = len(dataset)  # type: ignore[arg-type]
    if size < n:
        idx = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        dataset = torch.utils.data.Subset(dataset, idx.tolist())
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    monitor: SparsityMonitor | None = None,
    split: str = "test",
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``loader`` (eval mode), feeding ``monitor`` if given."""
    was_training = model.training
    model.eval()
    total, correct, loss_sum = 0, 0, 0.0
    try:
        ctx = monitor.track(split) if monitor is not None else _null()
        with ctx:
            for x, y in loader:
                x, y = x.to(device), y.to(device)
                out = model(x)
                loss_sum += float(loss_fn(out, y, reduction="sum"))
                correct += int((out.argmax(1) == y).sum())
                total += len(y)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError(f"the {split} probe set is empty")
    return {"loss": loss_sum / total, "accuracy": correct / total}


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


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


def _atomic_torch_save(obj: Any, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    penalty: float | SparsityPenalty | None = None,
    penalty_layers: object = None,
    layer_weights: Mapping[str, float] | None = None,
    monitor_layers: object = None,
    probe_size: int = 512,
    bins: int = 20,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callbacks: Iterable[Callback | Callable[[History], Any]] = (),
    detector: Any = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    config: Mapping[str, Any] | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = nn.functional.cross_entropy,
) -> History:
    """Train ``model`` and measure it every epoch; returns the run's :class:`History`.

    Epoch 0 is the untrained model; epochs ``1..epochs`` follow each pass over ``train``.
    Each measured epoch records ``loss``/``accuracy`` on fixed probe subsets (``probe_size``
    samples) of the train and test data and the sparsity of ``monitor_layers`` (default:
    the conv blocks' activations) on both. ``penalty`` is a :class:`SparsityPenalty` or a
    number ``λ`` (then built on ``penalty_layers`` with ``layer_weights``); the training loss
    is then ``task + penalty()``. ``detector`` (e.g. :class:`~xaisparse.detect.OverfitDetector`)
    is fed each epoch and its result saved in ``history.detector``. ``checkpoint_dir`` keeps
    the latest model/optimizer/RNG state and history after each epoch (atomically);
    ``resume`` continues such a run up to ``epochs``.

    >>> from torch.utils.data import TensorDataset
    >>> torch.manual_seed(0) and None
    >>> data = TensorDataset(torch.randn(64, 1, 8, 8), torch.randint(0, 3, (64,)))
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3))
    >>> h = fit(net, data, data, epochs=2, progress=False)
    >>> h.epochs, sorted(h.metrics.metric.unique())
    ([0, 1, 2], ['accuracy', 'loss', 'running_loss'])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    if not isinstance(probe_size, int) or probe_size < 1:
        raise ValueError(f"probe_size must be a positive int, got {probe_size!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch.cuda.is_available() is False")
    seed_everything(seed)
    model.to(device)
    opt = _optimizer(model, optimizer, lr, weight_decay, momentum)
    train_loader = _loader(train, batch_size, shuffle=True, seed=seed)
    probes = {"train": _probe(train, probe_size, 256, seed), "test": _probe(test, probe_size, 256, seed + 1)}
    monitor = SparsityMonitor(model, monitor_layers, bins=bins)
    pen = penalty
    if isinstance(penalty, (int, float)) and not isinstance(penalty, bool):
        pen = (
            SparsityPenalty(model, penalty_layers, weight=float(penalty), layer_weights=layer_weights)
            if penalty
            else None
        )
    elif penalty is not None and not isinstance(penalty, SparsityPenalty):
        raise TypeError(f"penalty must be a number (λ) or a SparsityPenalty, got {type(penalty).__name__}")
    cbs = list(callbacks) + ([detector] if detector is not None else [])

    run_config = {
        "epochs": epochs,
        "optimizer": optimizer if isinstance(optimizer, str) else type(opt).__name__,
        "lr": lr,
        "weight_decay": weight_decay,
        "batch_size": batch_size,
        "penalty": None if pen is None else pen.weight,
        "penalty_layers": None if pen is None else list(pen.recorder.modules),
        "layer_weights": dict(layer_weights or {}),
        "monitor_layers": monitor.recorder.modules,
        "probe_size": probe_size,
        "bins": bins,
        "seed": seed,
        "device": str(device),
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        **dict(config or {}),
    }
    history = History(config=run_config)
    start_epoch = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if ckpt_dir is not None:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        model.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        if train_loader.generator is not None and "loader_rng" in ckpt:
            train_loader.generator.set_state(ckpt["loader_rng"])
        resume_dir = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        history = History.load(resume_dir / "history")
        history.config.update({k: v for k, v in run_config.items() if k == "epochs"})
        start_epoch = int(ckpt["epoch"]) + 1

    state = TrainState(model=model, optimizer=opt, history=history, epochs=epochs, batches=len(train_loader))
    bar = _progress(range(start_epoch, epochs + 1), progress, initial=start_epoch, total=epochs + 1)
    t0 = time.perf_counter()
    try:
        if pen is not None:
            pen.attach()
        for epoch in bar:
            state.epoch = epoch
            if epoch > 0:
                _train_one_epoch(model, train_loader, opt, pen, device, loss_fn, state, cbs)
            metrics = _measure(model, probes, monitor, device, loss_fn)
            if epoch > 0:
                metrics["train"]["running_loss"] = state.info.pop("loss_mean")
                if pen is not None:
                    metrics["train"]["penalty"] = state.info.pop("penalty_mean")
            history.record_epoch(epoch, metrics, monitor.compute())
            for cb in cbs:
                (cb.on_epoch_end if hasattr(cb, "on_epoch_end") else cb)(history)
            if ckpt_dir is not None:
                _save_checkpoint(ckpt_dir, model, opt, train_loader, history, epoch)
            _postfix(bar, metrics, history)
            if state.stop or any(getattr(cb, "stop_requested", False) for cb in cbs):
                history.config["stopped_early_at"] = epoch
                break
    finally:
        if pen is not None:
            pen.detach()
        history.config["train_seconds"] = round(time.perf_counter() - t0, 2)
    return history


def _train_one_epoch(model, loader, opt, pen, device, loss_fn, state, cbs) -> None:
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
    state.info["loss_mean"] = loss_sum / max(n, 1)
    state.info["penalty_mean"] = pen_sum / max(n, 1)


def _measure(model, probes, monitor, device, loss_fn) -> dict[str, dict[str, float]]:
    monitor.reset()
    return {
        split: evaluate_split(model, loader, device, monitor, split, loss_fn)
        for split, loader in probes.items()
        if loader is not None
    }


def _save_checkpoint(ckpt_dir: Path, model, opt, loader, history: History, epoch: int) -> None:
    history.save(ckpt_dir / "history")
    state = {
        "epoch": epoch,
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
    }
    if loader.generator is not None:
        state["loader_rng"] = loader.generator.get_state()
    _atomic_torch_save(state, ckpt_dir / CHECKPOINT)


def _progress(it: Iterable[int], enabled: bool, initial: int, total: int):
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, desc="epochs", unit="epoch", initial=initial, total=total, leave=True)


def _postfix(bar: Any, metrics: dict[str, dict[str, float]], history: History) -> None:
    if not hasattr(bar, "set_postfix"):
        return
    post = {f"{split} loss": f"{m['loss']:.3f}" for split, m in metrics.items()}
    alarm = (history.detector or {}).get("alarm_epoch")
    if alarm is not None:
        post["alarm"] = alarm
    bar.set_postfix(post)
