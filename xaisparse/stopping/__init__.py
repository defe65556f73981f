"""When to stop training: labelled early stopping, and the published label-free signals.

* :class:`EarlyStopping` (:mod:`~xaisparse.stopping.early`): patience on a validation metric
  with the best weights restored — what study v2 validated (see ``docs/study.md``);
* the label-free signals that study v3 scored beside the sparsity detector, each computed
  without a held-out label: the EB-criterion and gradient disparity
  (:mod:`~xaisparse.stopping.gradients`), the weight-spectrum power-law α
  (:mod:`~xaisparse.stopping.spectra`), the disagreement of two seeds on unlabelled inputs
  (:func:`prediction_disagreement`), all measured per epoch by :class:`LabelFreeSignals`
  (:mod:`~xaisparse.stopping.labelfree`), and the stop rules that turn a series into a stop
  epoch (:mod:`~xaisparse.stopping.rules`).
"""

from .early import EarlyStopping
from .gradients import GradientStatistics, eb_criterion, gradient_disparity, gradient_statistics
from .labelfree import LabelFreeRecord, LabelFreeSignals, disagreement_series, load_signals, prediction_disagreement
from .rules import minimum_stop, threshold_stop
from .spectra import PowerLawFit, layer_eigenvalues, model_alpha, power_law_fit

__all__ = [
    "EarlyStopping",
    "GradientStatistics",
    "LabelFreeRecord",
    "LabelFreeSignals",
    "PowerLawFit",
    "disagreement_series",
    "eb_criterion",
    "gradient_disparity",
    "gradient_statistics",
    "layer_eigenvalues",
    "load_signals",
    "minimum_stop",
    "model_alpha",
    "power_law_fit",
    "prediction_disagreement",
    "threshold_stop",
]
