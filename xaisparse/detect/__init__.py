"""Overfitting early warning from activation sparsity, and its evaluation.

The paper this project extends reports that the sparsity of the feature-extraction (conv)
layers rises shortly *before* the test loss starts rising. :class:`OverfitDetector` turns that
into an alarm that reads **only sparsity statistics** (computed from the inputs alone, never
from held-out labels): no loss, no accuracy, not even the ``metrics`` table of the History.

* :mod:`~xaisparse.detect.signals`: the series a detector can watch, from a History's queries
  only (test-probe sparsity, train/test divergence of the per-channel histograms, the
  train−test gap of a statistic, the layer mean and its trailing slope);
* :mod:`~xaisparse.detect.rule`: the rise rule as pure functions (per-layer tracks advanced
  epoch by epoch, :func:`run_rule` over an epochs × layers table);
* :mod:`~xaisparse.detect.slope`: the rate-of-change rule (trailing slope above its noise);
* :mod:`~xaisparse.detect.config`: :class:`DetectorConfig`, the validated, frozen settings;
* :mod:`~xaisparse.detect.online`: :class:`OverfitDetector`, fed online (after each epoch) or
  offline (a saved run), with the same answer by construction;
* :mod:`~xaisparse.detection` (below the History, which keeps one): :class:`DetectionResult` and its
  :meth:`~DetectionResult.verdict`;
* :mod:`~xaisparse.detect.scoring`: :func:`evaluate_detector`, the only code that reads labels:
  it scores the alarm against the test-loss minimum beside patience early stopping;
* :mod:`~xaisparse.detect.baselines`: comparison methods that are not detectors (training-loss
  plateau, a fixed epoch, chance, early stopping with the best epoch restored).

This package exports what a user of the detector needs (its ``__all__``); the building blocks
(the rule's tracks, the signals, the study's baselines and outcome helpers) are imported from
their modules. Importing them from ``xaisparse.detect`` itself still works for one release,
with a ``DeprecationWarning`` naming the module, and so does the old name ``evaluate``.

On a synthetic run whose sparsity starts rising at epoch 7, the default (study v2's D1: it
waits for every layer to rise clearly, so it is late and rarely wrong) and the rule's defaults
until study v3 (:data:`LEGACY_DEFAULTS`):

>>> from xaisparse.testing import synthetic_history
>>> run = synthetic_history(epochs=16, overfit_at=7, seed=1)
>>> OverfitDetector().detect(run).alarm_epoch, OverfitDetector(**LEGACY_DEFAULTS).detect(run).alarm_epoch
(14, 10)
"""

import importlib
from typing import Any

from .._deprecation import deprecated
from ..detection import EVIDENCE_NOTE, DetectionResult, DetectorState
from . import baselines, rule, scoring, signals, slope  # noqa: F401  (xaisparse.detect.<module> works)
from .config import LEGACY_DEFAULTS, RULES, SIGNALS, DetectorConfig
from .online import OverfitDetector, detect
from .scoring import OUTCOMES, Evaluation, early_stopping_epoch, evaluate_detector

__all__ = [
    "EVIDENCE_NOTE",
    "LEGACY_DEFAULTS",
    "OUTCOMES",
    "RULES",
    "SIGNALS",
    "DetectionResult",
    "DetectorConfig",
    "DetectorState",
    "Evaluation",
    "OverfitDetector",
    "detect",
    "early_stopping_epoch",
    "evaluate_detector",
]

#: Names this package exported before, now imported from the module that defines them.
_MOVED = {
    "EVIDENCE_COLUMNS": "xaisparse.detection",
    "evidence_frame": "xaisparse.detection",
    "LayerTrack": "xaisparse.detect.rule",
    "run_rule": "xaisparse.detect.rule",
    "SlopeTrack": "xaisparse.detect.slope",
    "run_slope": "xaisparse.detect.slope",
    "classify": "xaisparse.detect.scoring",
    "overfits": "xaisparse.detect.scoring",
    "summarize": "xaisparse.detect.scoring",
    "chance_outcomes": "xaisparse.detect.baselines",
    "fixed_epoch": "xaisparse.detect.baselines",
    "restored_best_epoch": "xaisparse.detect.baselines",
    "train_loss_plateau_epoch": "xaisparse.detect.baselines",
    "divergence": "xaisparse.detect.signals",
    "gap": "xaisparse.detect.signals",
    "js_divergence": "xaisparse.detect.signals",
    "layer_mean": "xaisparse.detect.signals",
    "signal_matrix": "xaisparse.detect.signals",
    "sparsity": "xaisparse.detect.signals",
    "trailing_slope": "xaisparse.detect.signals",
    "sparsity_matrix": "xaisparse.detect.online",
}


def __getattr__(name: str) -> Any:
    if name == "evaluate":
        deprecated(
            "xaisparse.detect.evaluate is deprecated: use xaisparse.detect.evaluate_detector (same arguments)",
            stacklevel=2,
        )
        return evaluate_detector
    module = _MOVED.get(name)
    if module is None:
        raise AttributeError(f"module 'xaisparse.detect' has no attribute {name!r}")
    deprecated(f"importing {name} from xaisparse.detect is deprecated: import it from {module}", stacklevel=2)
    return getattr(importlib.import_module(module), name)
