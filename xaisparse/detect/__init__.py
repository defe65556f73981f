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
* :mod:`~xaisparse.detect.result`: :class:`DetectionResult` and its :meth:`~DetectionResult.verdict`;
* :mod:`~xaisparse.detect.evaluate`: :func:`evaluate`, the only code that reads labels: it
  scores the alarm against the test-loss minimum beside patience early stopping;
* :mod:`~xaisparse.detect.baselines`: comparison methods that are not detectors (training-loss
  plateau, a fixed epoch, chance, early stopping with the best epoch restored).

On a synthetic run whose sparsity starts rising at epoch 7, the default (study v2's D1: it
waits for every layer to rise clearly, so it is late and rarely wrong) and the rule's defaults
until study v3 (:data:`LEGACY_DEFAULTS`):

>>> from xaisparse.testing import synthetic_history
>>> run = synthetic_history(epochs=16, overfit_at=7, seed=1)
>>> OverfitDetector().detect(run).alarm_epoch, OverfitDetector(**LEGACY_DEFAULTS).detect(run).alarm_epoch
(14, 10)
"""

from .baselines import chance_outcomes, fixed_epoch, restored_best_epoch, train_loss_plateau_epoch
from .config import LEGACY_DEFAULTS, RULES, SIGNALS, DetectorConfig
from .evaluate import OUTCOMES, Evaluation, classify, early_stopping_epoch, evaluate, overfits, summarize
from .online import OverfitDetector, detect, sparsity_matrix
from .result import EVIDENCE_NOTE, DetectionResult, DetectorState, evidence_frame
from .rule import EVIDENCE_COLUMNS, LayerTrack, run_rule
from .signals import divergence, gap, js_divergence, layer_mean, signal_matrix, sparsity, trailing_slope
from .slope import SlopeTrack, run_slope

__all__ = [
    "EVIDENCE_COLUMNS",
    "EVIDENCE_NOTE",
    "LEGACY_DEFAULTS",
    "OUTCOMES",
    "RULES",
    "SIGNALS",
    "DetectionResult",
    "DetectorConfig",
    "DetectorState",
    "Evaluation",
    "LayerTrack",
    "OverfitDetector",
    "SlopeTrack",
    "chance_outcomes",
    "classify",
    "detect",
    "divergence",
    "early_stopping_epoch",
    "evaluate",
    "evidence_frame",
    "fixed_epoch",
    "gap",
    "js_divergence",
    "layer_mean",
    "overfits",
    "restored_best_epoch",
    "run_rule",
    "run_slope",
    "signal_matrix",
    "sparsity",
    "sparsity_matrix",
    "summarize",
    "trailing_slope",
    "train_loss_plateau_epoch",
]
