"""Project exceptions and small helpers for clear error messages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["DeviceUnavailableError", "HistoryFormatError", "UnknownLayerError", "XaisparseError", "closest"]


class XaisparseError(Exception):
    """Base class of the project's own exceptions."""


class UnknownLayerError(XaisparseError, ValueError):
    """A layer name or pattern that names no module of the model."""


class HistoryFormatError(XaisparseError, ValueError):
    """A run directory or file that is corrupt, truncated, foreign or of an unknown schema."""


class DeviceUnavailableError(XaisparseError, RuntimeError):
    """A device was asked for that this machine does not have (e.g. ``device="cuda"`` without CUDA)."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The candidates most similar to ``name`` (for 'did you mean' messages)."""
    candidates = list(candidates)
    hits = difflib.get_close_matches(name, candidates, n=n, cutoff=0.4)
    if not hits:  # fall back to substring matches, then to the first few names
        hits = [c for c in candidates if name and (name in c or c in name)][:n] or candidates[:n]
    return hits
