"""Pure tensor maths: perplexity sparsity per axis and classical baselines. No state, no hooks."""

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

__all__ = [
    "AXES",
    "Axis",
    "as_vectors",
    "dead_mask",
    "entropy",
    "gini",
    "hoyer",
    "nonfinite_mask",
    "perplexity",
    "perplexity_sparsity",
    "sparsity_from_perplexity",
    "xlogx",
    "zero_fraction",
]
