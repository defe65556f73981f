"""Pure tensor maths: perplexity sparsity per axis, classical baselines, and one layer's streaming
statistics as a pure update/compute pair. No state, no hooks."""

from .baselines import gini, hoyer, zero_fraction
from .perplexity import (
    AXES,
    Axis,
    as_vectors,
    dead_mask,
    entropy,
    nonfinite_mask,
    perplexity,
    perplexity_sparsity,
    sparsity_from_perplexity,
    xlogx,
)
from .streaming import STATE_NAMES, empty_state, layer_statistics

__all__ = [
    "AXES",
    "STATE_NAMES",
    "Axis",
    "as_vectors",
    "dead_mask",
    "empty_state",
    "entropy",
    "gini",
    "hoyer",
    "layer_statistics",
    "nonfinite_mask",
    "perplexity",
    "perplexity_sparsity",
    "sparsity_from_perplexity",
    "xlogx",
    "zero_fraction",
]
