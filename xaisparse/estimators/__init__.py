"""Streaming estimators: fixed-size mergeable state, exact against the one-shot functional result."""

from .layer import LayerSparsity

__all__ = ["LayerSparsity"]
