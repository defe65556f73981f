"""The detector's state and verdict: re-exported from :mod:`xaisparse.detection`.

The types live below :mod:`xaisparse.history` (which saves a :class:`~xaisparse.detection.DetectionResult`
with a run), so the History never imports the detector; this module keeps the old import path.
"""

from __future__ import annotations

from ..detection import EVIDENCE_COLUMNS, EVIDENCE_NOTE, DetectionResult, DetectorState, Row, evidence_frame

__all__ = ["EVIDENCE_COLUMNS", "EVIDENCE_NOTE", "DetectionResult", "DetectorState", "Row", "evidence_frame"]
