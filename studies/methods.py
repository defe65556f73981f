"""The pre-registered methods of study v2 (studies/PROTOCOL.md §5), each a stop epoch per run.

Detectors D0–D4 are :class:`xaisparse.detect.OverfitDetector` settings (label-free: they read
the History's sparsity tables and histograms only); B1–B3 are the label-free references and
L1–L2 the labelled ones (:mod:`xaisparse.detect.baselines`). Parameters are those chosen on
the digits tuning seeds (``studies/explore/results/selected.md``), unchanged.
"""

from __future__ import annotations

from typing import Any

from xaisparse.detect import LEGACY_DEFAULTS, OverfitDetector, early_stopping_epoch
from xaisparse.detect.baselines import fixed_epoch, restored_best_epoch
from xaisparse.detect.baselines import train_loss_plateau_epoch as plateau

#: id -> the detector (D0 exactly as shipped before v3 — the package's default until the v3
#: addendum §V4 made D1 the default —; D1–D4 drop layers undefined at epoch 0, §5).
DETECTORS: dict[str, OverfitDetector] = {
    "D0": OverfitDetector(**LEGACY_DEFAULTS),
    "D1": OverfitDetector(
        smooth=1, threshold=0.0, noise=6.0, patience=3, min_layers=1.0, warmup=5, exclude_undefined=True
    ),
    "D2": OverfitDetector(
        signal="divergence",
        smooth=3,
        threshold=0.0,
        noise=2.0,
        patience=1,
        min_layers=1.0,
        warmup=12,
        exclude_undefined=True,
    ),
    "D3": OverfitDetector(
        signal="gap",
        statistic="population_mean",
        smooth=1,
        threshold=0.0,
        noise=1.5,
        patience=2,
        min_layers=1.0,
        warmup=5,
        exclude_undefined=True,
    ),
    "D4": OverfitDetector(
        signal="gap",
        statistic="population_mean",
        rule="slope",
        window=3,
        threshold=0.0,
        noise=3.0,
        patience=1,
        warmup=5,
        exclude_undefined=True,
    ),
}
PLATEAU = {"window": 10, "tau": 0.02}
FIXED_EPOCH = 36
CHANCE_FIRST = 5
ES_PATIENCE = 10

#: id -> (label, family): the order of every table.
LABELS: dict[str, tuple[str, str]] = {
    "D0": ("D0 shipped default (rise, test spatial_mean)", "detector"),
    "D1": ("D1 rise, test spatial_mean (tuned)", "detector"),
    "D2": ("D2 rise, train/test per-channel JS divergence", "detector"),
    "D3": ("D3 rise, train-test gap of channel_mean", "detector"),
    "D4": ("D4 slope, train-test gap of channel_mean", "detector"),
    "B1": ("B1 training-loss plateau (label-free)", "label-free reference"),
    "B2": (f"B2 fixed epoch {FIXED_EPOCH} (label-free)", "label-free reference"),
    "B3": (f"B3 chance (uniform alarm epoch >= {CHANCE_FIRST})", "label-free reference"),
    "L1": (f"L1 early stopping, test loss, patience {ES_PATIENCE} (labelled)", "labelled reference"),
    "L2": ("L2 same, best epoch restored (labelled)", "labelled reference"),
    "L1p2": ("L1 at patience 2 (old default, labelled)", "labelled reference"),
}
CANDIDATES = ("D1", "D2", "D3", "D4")
LABEL_FREE_REFERENCES = ("B1", "B2", "B3")


def stops(history: Any) -> dict[str, int | None]:
    """The stop epoch of every method but B3 (chance has no single stop) on one run."""
    test_loss = history.metric("test", "loss")
    out: dict[str, int | None] = {k: det.detect(history).alarm_epoch for k, det in DETECTORS.items()}
    out["B1"] = plateau(history.metric("train", "loss"), **PLATEAU)
    out["B2"] = fixed_epoch(history.epochs, FIXED_EPOCH)
    l1 = early_stopping_epoch(test_loss, patience=ES_PATIENCE)
    out["L1"] = l1
    out["L2"] = restored_best_epoch(test_loss, l1)
    out["L1p2"] = early_stopping_epoch(test_loss, patience=2)
    return out
