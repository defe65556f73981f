"""Layer selection and the forward-hook lifecycle that feeds live activations to sinks.

``ActivationRecorder`` hands each selected layer's output to callbacks during the forward
pass and stores nothing; ``select_layers`` / ``default_activation_layers`` /
``positionwise_activation_layers`` are the pure selection functions;
``find_functional_activations`` locates ``F.relu``-style calls with ``torch.fx`` so that the
recorder can take them on the model itself; ``expose_functional_activations`` makes them
modules of a traced copy instead, under the same names. ``call_site_name`` / ``call_site_base`` /
``call_site_call`` write and read the call-site names (``"layer1.0.relu#2"``),
``functional_site_names`` names functional calls; ``select_sites`` resolves every such name given
as ``layers=``; ``expose_call_site`` makes one call site a module of its own on a traced copy.
"""

from xaisparse.recording.expose import expose_call_site, expose_functional_activations
from xaisparse.recording.functional import FunctionalActivation, find_functional_activations
from xaisparse.recording.recorder import ActivationRecorder, Callback
from xaisparse.recording.selection import (
    ACTIVATION_TYPES,
    CONV_TYPES,
    LayerSelector,
    SiteSelection,
    default_activation_layers,
    positionwise_activation_layers,
    select_layers,
    select_sites,
)
from xaisparse.recording.sites import call_site_base, call_site_call, call_site_name, functional_site_names

__all__ = [
    "ACTIVATION_TYPES",
    "CONV_TYPES",
    "ActivationRecorder",
    "Callback",
    "FunctionalActivation",
    "LayerSelector",
    "SiteSelection",
    "call_site_base",
    "call_site_call",
    "call_site_name",
    "default_activation_layers",
    "expose_call_site",
    "expose_functional_activations",
    "find_functional_activations",
    "functional_site_names",
    "positionwise_activation_layers",
    "select_layers",
    "select_sites",
]
