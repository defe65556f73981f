"""One layer's outputs of one forward pass, captured by an :class:`~xaisparse.recording.ActivationRecorder`."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from xaisparse.recording.modes import evaluating
from xaisparse.recording.recorder import ActivationRecorder

__all__ = ["capture_layer"]


def capture_layer(
    model: nn.Module, inputs: Any, layer: str, *, eval_mode: bool = True
) -> tuple[Any, dict[str, Tensor]]:
    """Run ``model(inputs)`` once under ``torch.no_grad()``; its output and ``layer``'s outputs by call site.

    The outputs are detached copies (later in-place operations do not change them), keyed by
    call-site name (``"layer"``, then ``"layer#2"``, … for a module called several times per
    forward). With ``eval_mode`` (default) the model runs in eval mode and every submodule's
    training flag is restored afterwards (:func:`~xaisparse.recording.modes.evaluating`);
    ``eval_mode=False`` leaves the modes to the caller. The hook is removed on exit, also
    after an exception. An unknown ``layer`` raises ``UnknownLayerError`` with the closest names.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    >>> out, sites = capture_layer(net, torch.randn(4, 1, 5, 5), "1")
    >>> {name: tuple(t.shape) for name, t in sites.items()}
    {'1': (4, 2, 3, 3)}
    """
    captured: dict[str, Tensor] = {}

    def keep(site: str, tensor: Tensor) -> None:
        if site not in captured:
            captured[site] = tensor.detach().clone()

    with evaluating(model, enabled=eval_mode), ActivationRecorder(model, [layer], callback=keep), torch.no_grad():
        output = model(inputs)
    return output, captured
