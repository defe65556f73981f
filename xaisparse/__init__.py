"""xaisparse: perplexity-based activation sparsity for PyTorch CNNs.

Measure it per layer and channel, watch it rise before the test loss does, penalise it.
The public names below are imported lazily, so ``import xaisparse`` stays light (it never
imports ipywidgets or matplotlib). Figures: :mod:`xaisparse.plots` (matplotlib); Jupyter
widgets: :mod:`xaisparse.widgets` (the only module that imports ipywidgets).
"""

from __future__ import annotations

import importlib
from typing import Any

from ._deprecation import deprecated
from ._version import __version__

_EXPORTS: dict[str, str] = {
    # maths
    "perplexity": "xaisparse.functional",
    "perplexity_sparsity": "xaisparse.functional",
    "zero_fraction": "xaisparse.functional",
    "hoyer": "xaisparse.functional",
    "gini": "xaisparse.functional",
    # streaming, recording, monitoring, penalty
    "LayerSparsity": "xaisparse.estimators",
    "ActivationRecorder": "xaisparse.recording",
    "expose_functional_activations": "xaisparse.recording",
    "SparsityMonitor": "xaisparse.monitor",
    "SparsityReport": "xaisparse.monitor",
    "SparsityPenalty": "xaisparse.penalty",
    # runs: data, models, training, history, detection
    "History": "xaisparse.history",
    "load_runs": "xaisparse.history",
    "load_dataset": "xaisparse.data",
    "load_digits_dataset": "xaisparse.data",
    "build_model": "xaisparse.models",
    "SmallCNN": "xaisparse.models",
    "fit": "xaisparse.train",
    "OverfitDetector": "xaisparse.detect",
    "DetectorConfig": "xaisparse.detect",
    "RunOutcome": "xaisparse.history",
    "compare_runs": "xaisparse.summary",
    "load_weights": "xaisparse.checkpoint",
    "DetectionResult": "xaisparse.detect",
    "evaluate_detector": "xaisparse.detect",
    # when to stop: labelled early stopping, published label-free signals
    "EarlyStopping": "xaisparse.stopping",
    "LabelFreeSignals": "xaisparse.stopping",
    # Captum attributions beside activation sparsity
    "attribute": "xaisparse.attribution",
    "attribution_sparsity": "xaisparse.attribution",
    "channel_table": "xaisparse.attribution",
    "compare_models": "xaisparse.attribution",
    # errors
    "XaisparseError": "xaisparse._errors",
    "UnknownLayerError": "xaisparse._errors",
    "HistoryFormatError": "xaisparse._errors",
    "DeviceUnavailableError": "xaisparse._errors",
}

#: Old names that still work for one release, with a ``DeprecationWarning``: old -> (module, new).
_DEPRECATED: dict[str, tuple[str, str]] = {
    "evaluate": ("xaisparse.detect", "evaluate_detector"),
}

__all__ = sorted(_EXPORTS) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _DEPRECATED:
        old_home, new = _DEPRECATED[name]
        deprecated(f"xaisparse.{name} is deprecated: use xaisparse.{new}", stacklevel=2)
        return getattr(importlib.import_module(old_home), new)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'xaisparse' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
