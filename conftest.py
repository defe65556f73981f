"""Fixtures shared by every test module (pytest runs with ``--import-mode=importlib``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors on shared CPU cores: intra-op threads only add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resnet() -> Any:
    """torchvision's ResNet-18 (10 classes, seeded weights) in eval mode: reused ReLUs, 1x1 maps at CIFAR size."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()
