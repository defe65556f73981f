"""Layer selection and the forward-hook lifecycle that feeds live activations to sinks.

``ActivationRecorder`` hands each selected layer's output to callbacks during the forward
pass and stores nothing; ``select_layers`` / ``default_activation_layers`` are the pure
selection functions; ``expose_functional_activations`` makes ``F.relu``-style activations
recordable by tracing the model with ``torch.fx``.
"""

from xaisparse.recording.expose import expose_functional_activations
from xaisparse.recording.recorder import ActivationRecorder, Callback
from xaisparse.recording.selection import (
    ACTIVATION_TYPES,
    CONV_TYPES,
    LayerSelector,
    default_activation_layers,
    select_layers,
)

__all__ = [
    "ACTIVATION_TYPES",
    "CONV_TYPES",
    "ActivationRecorder",
    "Callback",
    "LayerSelector",
    "default_activation_layers",
    "expose_functional_activations",
    "select_layers",
]
