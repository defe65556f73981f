"""Models in eval mode for a block, and every submodule's ``training`` flag put back afterwards.

The one place of that rule: measuring, attributing, inspecting and tracing all run a user's
model in a mode of their choosing and must leave it as they found it, also a model whose
submodules were in different modes (a frozen, eval-mode backbone inside a training model).
``model.train(was_training)`` would not: it sets every submodule to the top-level flag.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["evaluating", "restoring_modes"]


@contextmanager
def restoring_modes(*models: nn.Module) -> Iterator[None]:
    """When the block ends (also by an exception), every submodule of ``models`` gets back its ``training`` flag.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> net[0].eval() and None
    >>> with restoring_modes(net):
    ...     net.train() and None
    >>> net.training, net[0].training, net[1].training
    (True, False, True)
    """
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag


@contextmanager
def evaluating(*models: nn.Module, enabled: bool = True) -> Iterator[None]:
    """The block runs with ``models`` in eval mode (``enabled=False``: as they are); every flag is restored after.

    >>> net = nn.Sequential(nn.BatchNorm1d(2), nn.Dropout()).train()
    >>> net[0].eval() and None                  # a submodule deliberately in eval mode
    >>> with evaluating(net):
    ...     [m.training for m in net.modules()]
    [False, False, False]
    >>> [m.training for m in net.modules()]
    [True, False, True]
    """
    with restoring_modes(*models):
        if enabled:
            for model in models:
                model.eval()
        yield
