"""The suite's determinism guarantees (conftest.py): per-test seeds from the node id, torch settings
given back, Hypothesis derandomised."""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
import torch
from hypothesis import settings


def _seed(request: pytest.FixtureRequest) -> int:
    return zlib.crc32(request.node.nodeid.encode("utf-8"))


@pytest.mark.parametrize("twin", ["a", "b"])
def test_each_test_starts_from_generators_seeded_from_its_node_id(request, twin):
    seed = _seed(request)
    assert torch.rand(3).tolist() == torch.rand(3, generator=torch.Generator().manual_seed(seed)).tolist()
    assert np.random.rand() == np.random.RandomState(seed).rand()  # noqa: NPY002 - the legacy global stream
    assert random.random() == random.Random(seed).random()


@pytest.mark.parametrize("step", ["change", "see"])
def test_torch_settings_changed_by_a_test_are_given_back(step):
    """Run in either order (or apart): 'see' finds the defaults whatever 'change' did."""
    if step == "change":
        torch.set_default_dtype(torch.float64)
        torch.set_grad_enabled(False)
    assert torch.get_default_dtype() == (torch.float64 if step == "change" else torch.float32)
    if step == "see":
        assert torch.is_grad_enabled()


def test_hypothesis_draws_the_same_examples_on_every_machine_and_run():
    assert settings.default.derandomize and settings.default.database is None and settings.default.deadline is None
