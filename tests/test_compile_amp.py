"""The monitor and the penalty under torch.compile, autocast (AMP) and nn.DataParallel.

The reference is always the same model run eagerly in float32 without any wrapper. Stated
tolerances (and why):

* ``torch.compile`` (inductor): the recorder's hooks run eagerly (a graph break at each hooked
  call), so the statistics are computed by the same code on what the compiled layers output;
  inductor may fuse and reorder the layers' arithmetic, so: 1e-5 absolute on every statistic,
  1e-5 relative on the penalty and on the norm of its gradient (measured on the CPU: identical
  statistics and penalty; a few gradient elements differ by ~3e-7, the compiled backward of
  BatchNorm and the convolutions summing in another order).
* ``torch.autocast`` bfloat16 (CPU) / float16 and bfloat16 (CUDA): the layers compute in half
  precision (~3 significant digits for bfloat16), the monitor and the penalty then measure in
  float32. Asserted: statistics within 5e-3 absolute, the penalty within 2e-3 relative, a finite
  gradient whose cosine with the float32 one is >= 0.8. Measured with bfloat16 on the CPU
  (this model / SmallCNN on digits-sized inputs / CIFAR ResNet-18 with random weights):
  statistics 1.6e-4 / 5e-4 / 2e-3 (dead fractions move most: a map is dead only if all its
  values round to 0), penalty 2e-6 / 1e-4 / 2e-5 relative, gradient cosine 0.999 / 0.99 / 0.72.
  The gradient is the loosest because ``d(p ln p)/dp = ln p + 1`` grows without bound as
  p -> 0, so activations that half precision moves onto or off zero weigh the most; for
  ResNet-18 the task loss' own gradient under bfloat16 has cosine 0.92 with the float32 one.
* ``nn.DataParallel``: without GPUs (or with one) it calls the module itself: identical results.
  Over several GPUs it runs replicas in threads, which the recorder refuses with a clear error
  (tested in test_recording.py).
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.testing import count_hooks

pytestmark = pytest.mark.usefixtures("one_thread")

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here: the CUDA cases are skipped")


class Net(nn.Module):
    """Activation modules, a functional ReLU at a module's output and one at a module's input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 12, 3, stride=2)
        self.fc = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # taken at bn1's output
        y = F.relu(self.conv2(x) + x)  # taken at conv3's input
        return self.fc(F.relu(self.conv3(y)).mean((2, 3)))


def make_net(device: str = "cpu") -> nn.Module:
    torch.manual_seed(0)
    return Net().to(device)


def data(device: str = "cpu", n: int = 16) -> torch.Tensor:
    return torch.randn(n, 1, 12, 12, generator=torch.Generator().manual_seed(1)).to(device)


def autocast(x: torch.Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(x.device.type, dtype) if dtype is not None else contextlib.nullcontext()


def layer_table(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None = None) -> pd.DataFrame:
    monitor = SparsityMonitor(model)
    model.eval()
    with monitor.track("test"), torch.no_grad(), autocast(x, amp):
        model(x)
    return monitor.compute().layers.pivot(index="layer", columns="statistic", values="value")


def penalty_step(model: nn.Module, x: torch.Tensor, amp: torch.dtype | None = None) -> tuple[float, torch.Tensor]:
    """Penalty value and the gradient of the penalty alone (train mode), as one flat vector."""
    model.train()
    model.zero_grad(set_to_none=True)
    penalty = SparsityPenalty(model, weight=1.0)
    with penalty, autocast(x, amp):
        model(x)
        value = penalty()
    value.backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return value.item(), grad


def test_default_selection_of_the_test_model() -> None:
    monitor = SparsityMonitor(make_net())
    assert monitor.recorder.functional_sites == ["relu", "relu#2", "relu#3"]
    assert list(layer_table(make_net(), data()).index) == ["relu", "relu#2", "relu#3"]


@pytest.mark.slow
def test_torch_compile_gives_the_eager_results() -> None:
    torch._dynamo.reset()
    eager = make_net()
    compiled_model = make_net()
    compiled = torch.compile(compiled_model)  # inductor, the default backend
    x = data()
    want = layer_table(eager, x)
    got = layer_table(compiled, x)
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=1e-5)

    want_value, want_grad = penalty_step(eager, x)
    got_value, got_grad = penalty_step(compiled, x)
    assert got_value == pytest.approx(want_value, rel=1e-5)
    assert (got_grad - want_grad).norm() <= 1e-5 * want_grad.norm()
    assert count_hooks(compiled_model) == 0


def _autocast_case(device: str, dtype: torch.dtype) -> None:
    model, x = make_net(device), data(device)
    want, got = layer_table(model, x), layer_table(model, x, amp=dtype)
    assert list(got.index) == list(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0, atol=5e-3)
    assert (got.to_numpy() != want.to_numpy()).any()  # the layers did run in half precision

    want_value, want_grad = penalty_step(model, x)
    got_value, got_grad = penalty_step(model, x, amp=dtype)
    assert got_value == pytest.approx(want_value, rel=2e-3)
    assert torch.isfinite(got_grad).all()
    assert F.cosine_similarity(got_grad, want_grad, dim=0) >= 0.8


def test_autocast_bfloat16_on_cpu_matches_float32_within_tolerance() -> None:
    _autocast_case("cpu", torch.bfloat16)


@CUDA
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_on_cuda_matches_float32_within_tolerance(dtype: torch.dtype) -> None:
    _autocast_case("cuda", dtype)


def test_dataparallel_wrapper_gives_the_bare_model_results() -> None:
    model, x = make_net(), data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DataParallel without GPUs warns that it does nothing
        dp = nn.DataParallel(model)
    want = layer_table(model, x)
    got = layer_table(dp, x)
    pd.testing.assert_frame_equal(got, want)
    want_value, want_grad = penalty_step(model, x)
    got_value, got_grad = penalty_step(dp, x)
    assert got_value == want_value and torch.equal(got_grad, want_grad)
    assert count_hooks(dp) == 0
