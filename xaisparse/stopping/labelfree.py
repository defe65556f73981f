"""``LabelFreeSignals``: the published label-free stopping signals, measured after every epoch.

A training callback (``fit(..., callbacks=[LabelFreeSignals(train_data, test_data)])``, or
called by hand with :meth:`~LabelFreeSignals.measure`) that records, per epoch and without any
held-out label:

* ``eb_criterion`` and ``gradient_disparity`` (:mod:`~xaisparse.stopping.gradients`) on a fresh
  probe of ``probe_size`` **training** samples each epoch (seeded by ``seed`` and the epoch,
  from the callback's own random generator: training's random streams are not touched): the
  disparity over its mini-batches of ``batch_size`` (160 = 5 × 32, the paper's 5 batches), the
  EB-criterion from the per-sample gradients of its first ``eb_samples`` (64: per-sample
  gradients are the costly part); ``gradient_norm`` = ‖mean gradient‖₂ of those samples;
* ``alpha_mean`` (:mod:`~xaisparse.stopping.spectra`): the mean weight-spectrum power-law α
  over the layers with a finite α (``alpha_layers`` of them); per-layer values in
  :attr:`LabelFreeSignals.alpha`;
* the predicted classes on fixed **unlabelled** test inputs (``predict``: the first
  ``predict_size`` of :func:`~xaisparse.data.probe_subset`; the labels are never read), for the
  disagreement of two runs that differ only in their seed (Jiang et al. 2022,
  :func:`prediction_disagreement`, :func:`disagreement_series`).

Every pass runs in eval mode and restores every module's training flag.
:meth:`LabelFreeSignals.save` writes the three tables into a folder (atomically);
:func:`load_signals` reads them back.
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .._io import atomic_write_bytes, atomic_write_text
from .._validation import check_bool, check_int
from .gradients import LossFn, gradient_statistics
from .spectra import model_alpha

__all__ = [
    "SIGNAL_COLUMNS",
    "LabelFreeRecord",
    "LabelFreeSignals",
    "disagreement_series",
    "load_signals",
    "prediction_disagreement",
]

#: The per-epoch columns of :meth:`LabelFreeSignals.frame`.
SIGNAL_COLUMNS = ("eb_criterion", "gradient_disparity", "gradient_norm", "alpha_mean", "alpha_layers", "seconds")
_FILES = {
    "signals": "labelfree_signals.csv",
    "alpha": "labelfree_alpha.csv",
    "predictions": "labelfree_predictions.npz",
}


def prediction_disagreement(a: Any, b: Any) -> float:
    """Share of inputs on which two prediction vectors (class indices) differ.

    >>> prediction_disagreement([0, 1, 2, 3], [0, 1, 0, 0])
    0.5
    """
    x, y = np.asarray(a), np.asarray(b)
    if x.shape != y.shape or x.ndim != 1 or len(x) == 0:
        raise ValueError(f"expected two non-empty 1-d prediction vectors of one length, got {x.shape} and {y.shape}")
    return float((x != y).mean())


def disagreement_series(a: Mapping[int, Any], b: Mapping[int, Any]) -> pd.Series:
    """Per epoch seen by both: the disagreement of two runs' predictions (``epoch -> classes`` mappings)."""
    common = sorted(set(a) & set(b))
    return pd.Series(
        [prediction_disagreement(a[e], b[e]) for e in common], index=pd.Index(common, name="epoch"), dtype=float
    )


def _stack(dataset: Dataset, indices: list[int]) -> tuple[Tensor, Tensor | None]:
    items = [dataset[i] for i in indices]
    first = items[0]
    if isinstance(first, Tensor):
        return torch.stack(items), None
    inputs = torch.stack([it[0] for it in items])
    targets = torch.as_tensor([int(it[1]) for it in items]) if len(first) > 1 else None
    return inputs, targets


def _dataset(name: str, data: Any) -> Any:
    if isinstance(data, DataLoader):
        data = data.dataset
    if not hasattr(data, "__getitem__") or not hasattr(data, "__len__"):
        raise TypeError(f"{name} must be a map-style Dataset or a DataLoader, got {type(data).__name__}")
    if len(data) == 0:
        raise ValueError(f"{name} is empty")
    return data


@dataclass
class LabelFreeRecord:
    """What :func:`load_signals` reads: ``signals`` (epoch × :data:`SIGNAL_COLUMNS`), ``alpha``
    (``epoch, layer, alpha`` …), ``predictions`` (``epoch -> classes``) and ``settings``."""

    signals: pd.DataFrame
    alpha: pd.DataFrame
    predictions: dict[int, np.ndarray] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)


class LabelFreeSignals:
    """Measure the label-free stopping signals after every epoch (see the module docstring).

    ``train``: the training data (a map-style dataset or a loader over one; its labels are the
    training labels the gradients need). ``test``: inputs whose predictions are kept (labels
    never read); ``None`` keeps none. ``gradients``/``spectra``/``predict``: which signals to
    measure. ``loss_fn``: the training loss (``fn(outputs, targets)``, mean over the batch).

    >>> from torch.utils.data import TensorDataset
    >>> torch.manual_seed(0) and None
    >>> data = TensorDataset(torch.randn(64, 1, 6, 6), torch.randint(0, 3, (64,)))
    >>> net = nn.Sequential(nn.Conv2d(1, 24, 3), nn.ReLU(), nn.Flatten(), nn.Linear(24 * 16, 3))
    >>> signals = LabelFreeSignals(data, data, probe_size=32, batch_size=8, predict_size=16)
    >>> signals.measure(net, epoch=0)
    >>> list(signals.frame().columns), signals.predictions[0].shape
    (['eb_criterion', 'gradient_disparity', 'gradient_norm', 'alpha_mean', 'alpha_layers', 'seconds'], (16,))
    """

    #: Always ``False``: the signals are measured, never acted on (a rule of
    #: :mod:`~xaisparse.stopping.rules` turns one into a stop; read the study's results first).
    stop_requested = False

    def __init__(
        self,
        train: Any,
        test: Any = None,
        *,
        probe_size: int = 160,
        batch_size: int = 32,
        eb_samples: int = 64,
        predict_size: int = 512,
        gradients: bool = True,
        spectra: bool = True,
        predict: bool = True,
        seed: int = 0,
        loss_fn: LossFn = nn.functional.cross_entropy,
    ) -> None:
        self.train = _dataset("train", train)
        self.test = None if test is None else _dataset("test", test)
        self.probe_size = check_int("probe_size", probe_size, minimum=2)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.eb_samples = check_int("eb_samples", eb_samples, minimum=2)
        self.predict_size = check_int("predict_size", predict_size, minimum=1)
        self.gradients = check_bool("gradients", gradients)
        self.spectra = check_bool("spectra", spectra)
        self.predict = check_bool("predict", predict) and self.test is not None
        self.seed = check_int("seed", seed, minimum=0)
        self.loss_fn = loss_fn
        if self.gradients and min(self.probe_size, len(self.train)) < 2 * self.batch_size:
            raise ValueError(
                f"the gradient probe needs at least two mini-batches: probe_size={self.probe_size} (train has "
                f"{len(self.train)} samples) < 2 × batch_size={self.batch_size}"
            )
        self._predict_inputs: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything measured (settings stay)."""
        self.rows: list[dict[str, Any]] = []
        self.alpha_rows: list[dict[str, Any]] = []
        self.predictions: dict[int, np.ndarray] = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The callback's settings (JSON-safe)."""
        return {
            "probe_size": self.probe_size,
            "batch_size": self.batch_size,
            "eb_samples": self.eb_samples,
            "predict_size": self.predict_size if self.predict else None,
            "gradients": self.gradients,
            "spectra": self.spectra,
            "predict": self.predict,
            "seed": self.seed,
        }

    # ------------------------------------------------------------------ measuring
    def _probe(self, epoch: int) -> tuple[Tensor, Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = min(self.probe_size, len(self.train))
        indices = torch.randperm(len(self.train), generator=gen)[:n].tolist()
        inputs, targets = _stack(self.train, indices)
        if targets is None:
            raise ValueError("the training data must yield (input, target) pairs for the gradient signals")
        return inputs, targets

    def _predict(self, model: nn.Module, device: torch.device) -> np.ndarray:
        from ..attribution._inputs import modes
        from ..data import probe_subset

        if self._predict_inputs is None:
            assert self.test is not None
            subset = probe_subset(self.test, self.predict_size, self.seed)
            self._predict_inputs = _stack(subset, list(range(len(subset))))[0]  # type: ignore[arg-type]
        out = []
        with modes([model], True, warn=False), torch.no_grad():
            for start in range(0, len(self._predict_inputs), 256):
                out.append(model(self._predict_inputs[start : start + 256].to(device)).argmax(1).cpu())
        return torch.cat(out).numpy().astype(np.int16)

    def measure(self, model: nn.Module, epoch: int) -> None:
        """Measure every enabled signal on ``model`` now and record it as ``epoch``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        epoch = check_int("epoch", epoch, minimum=0)
        if any(r["epoch"] == epoch for r in self.rows):
            raise ValueError(f"epoch {epoch} is already recorded")
        t0 = time.perf_counter()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        row: dict[str, Any] = {"epoch": epoch, **{c: math.nan for c in SIGNAL_COLUMNS}}
        if self.gradients:
            x, y = self._probe(epoch)
            stats = gradient_statistics(
                model,
                x.to(device),
                y.to(device),
                batch_size=self.batch_size,
                eb_samples=min(self.eb_samples, len(x)),
                loss_fn=self.loss_fn,
            )
            row.update(
                eb_criterion=stats.eb_criterion,
                gradient_disparity=stats.gradient_disparity,
                gradient_norm=stats.mean_norm,
            )
        if self.spectra:
            table = model_alpha(model)
            finite = table.alpha[np.isfinite(table.alpha)]
            row.update(alpha_mean=float(finite.mean()) if len(finite) else math.nan, alpha_layers=len(finite))
            self.alpha_rows.extend(
                {"epoch": epoch, **{str(k): v for k, v in r.items()}} for r in table.to_dict("records")
            )
        if self.predict:
            self.predictions[epoch] = self._predict(model, device)
        row["seconds"] = time.perf_counter() - t0
        self.rows.append(row)

    def on_epoch_end(self, state: Any) -> None:
        """Training-callback hook (:class:`~xaisparse.train.Callback` protocol): :meth:`measure` at ``state.epoch``."""
        self.measure(state.model, state.epoch)

    def on_batch_end(self, state: Any) -> None:
        """Nothing per batch."""

    # ------------------------------------------------------------------ results
    def frame(self) -> pd.DataFrame:
        """Epoch × :data:`SIGNAL_COLUMNS` (NaN where a signal was not measured)."""
        frame = pd.DataFrame(self.rows, columns=["epoch", *SIGNAL_COLUMNS])
        return frame.set_index("epoch").sort_index()

    @property
    def alpha(self) -> pd.DataFrame:
        """One row per epoch and layer: ``epoch, layer, eigenvalues, alpha, xmin, ks, tail``."""
        return pd.DataFrame(self.alpha_rows, columns=["epoch", "layer", "eigenvalues", "alpha", "xmin", "ks", "tail"])

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the signals, the per-layer α and the predictions into ``directory`` (each file atomically)."""
        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(root / _FILES["signals"], self.frame().to_csv())
        atomic_write_text(root / _FILES["alpha"], self.alpha.to_csv(index=False))
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            epochs=np.asarray(sorted(self.predictions), dtype=np.int64),
            classes=np.stack([self.predictions[e] for e in sorted(self.predictions)])
            if self.predictions
            else np.zeros((0, 0), dtype=np.int16),
            settings=np.asarray(json.dumps(self.settings)),
        )
        atomic_write_bytes(root / _FILES["predictions"], buf.getvalue())
        return root


def load_signals(directory: str | os.PathLike[str]) -> LabelFreeRecord:
    """Read what :meth:`LabelFreeSignals.save` wrote."""
    root = Path(directory)
    missing = [name for name in _FILES.values() if not (root / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{root} holds no saved LabelFreeSignals: missing {missing}")
    signals = pd.read_csv(root / _FILES["signals"], index_col="epoch")
    alpha = pd.read_csv(root / _FILES["alpha"])
    with np.load(root / _FILES["predictions"]) as npz:
        epochs, classes = npz["epochs"].tolist(), npz["classes"]
        settings = json.loads(str(npz["settings"]))
    return LabelFreeRecord(
        signals=signals,
        alpha=alpha,
        predictions={int(e): classes[i] for i, e in enumerate(epochs)},
        settings=settings,
    )
