"""The playground's sparsity penalty: always attached, so that λ can change during a run."""

from __future__ import annotations

from typing import Any

from ...penalty import SparsityPenalty

__all__ = ["LivePenalty"]


class LivePenalty(SparsityPenalty):
    """A :class:`~xaisparse.penalty.SparsityPenalty` that costs nothing while ``weight`` is 0.

    With ``weight == 0`` it computes no sparsity and adds an exact zero to the loss (the
    gradients are those of the task loss, bit for bit); set ``weight`` (or ``layer_weights``)
    between epochs and it penalises from the next step on.
    """

    def _collect(self, name: str, x: Any) -> None:
        if self.weight == 0.0:
            return
        super()._collect(name, x)

    def forward(self) -> Any:
        if self.weight == 0.0:
            self._terms.clear()
            return self._zero()
        return super().forward()
