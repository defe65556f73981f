"""Overfitting early warning from activation sparsity, and its evaluation.

The paper this project extends reports that the sparsity of the feature-extraction (conv)
layers rises shortly *before* the test loss starts rising. :class:`OverfitDetector` turns that
into an alarm that reads **only sparsity statistics** (computed from the inputs alone, never
from held-out labels): no loss, no accuracy, not even the ``metrics`` table of the History.

* :mod:`~xaisparse.detect.rule`: the rule as pure functions (per-layer tracks advanced epoch
  by epoch, :func:`run_rule` over an epochs × layers table);
* :mod:`~xaisparse.detect.config`: :class:`DetectorConfig`, the validated, frozen settings;
* :mod:`~xaisparse.detect.online`: :class:`OverfitDetector`, fed online (after each epoch) or
  offline (a saved run), with the same answer by construction;
* :mod:`~xaisparse.detect.result`: :class:`DetectionResult` and its :meth:`~DetectionResult.verdict`;
* :mod:`~xaisparse.detect.evaluate`: :func:`evaluate`, the only code that reads labels: it
  scores the alarm against the test-loss minimum beside patience early stopping.

>>> from xaisparse.testing import synthetic_history
>>> result = OverfitDetector().detect(synthetic_history(epochs=16, overfit_at=7, seed=1))
>>> result.alarmed, result.alarm_epoch is not None and 5 <= result.alarm_epoch <= 11
(True, True)
"""

from .config import DetectorConfig
from .evaluate import OUTCOMES, Evaluation, early_stopping_epoch, evaluate, summarize
from .online import OverfitDetector, detect, sparsity_matrix
from .result import DetectionResult, DetectorState, evidence_frame
from .rule import EVIDENCE_COLUMNS, LayerTrack, run_rule

__all__ = [
    "EVIDENCE_COLUMNS",
    "OUTCOMES",
    "DetectionResult",
    "DetectorConfig",
    "DetectorState",
    "Evaluation",
    "LayerTrack",
    "OverfitDetector",
    "detect",
    "early_stopping_epoch",
    "evaluate",
    "evidence_frame",
    "run_rule",
    "sparsity_matrix",
    "summarize",
]
