"""Streaming estimators: fixed-size mergeable state, exact against the one-shot functional result."""

from .layer import LayerSparsity
from .state import SumState

__all__ = ["LayerSparsity", "SumState"]
