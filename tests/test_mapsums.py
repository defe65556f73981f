"""The one read of an activation (per-map sums S = Σ|a|, T = Σ|a| ln|a|) and its hand-derived backward.

References: the sums written in NumPy (float64), ``torch.autograd.gradcheck`` in float64 (finite
differences), and autograd through the differentiable formula (``_map_sums_reference``, the
double-where ``x ln x``); the sparsity from the sums against the NumPy/SciPy oracle.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests import oracle
from xaisparse.estimators import LayerSparsity
from xaisparse.functional.mapsums import _map_sums, _map_sums_reference, _MapSums, _sparsity_from_sums

pytestmark = pytest.mark.usefixtures("one_thread")


def activations(seed: int, shape: tuple[int, ...], *, signed: bool = True, nonfinite: bool = True) -> torch.Tensor:
    """float64 activations over many scales with exact zeros, a dead map, and (optionally) NaN/±Inf maps."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3, size=shape[:2] + (1,) * (len(shape) - 2))
    x[rng.random(shape) < 0.4] = 0.0
    if not signed:
        x = np.abs(x)
    x[0, 0] = 0.0  # a dead map
    if nonfinite and shape[0] > 1:
        x[1, 0].flat[0] = np.nan
        x[1, -1].flat[-1] = np.inf
        if signed:
            x[2 % shape[0], -1].flat[0] = -np.inf
    return torch.tensor(x)


def numpy_sums(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(x.double().numpy())
    a = a.reshape(a.shape[0], a.shape[1], -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        alogb = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    return a.sum(-1), alogb.sum(-1), np.abs(alogb).sum(-1)


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (3, 2, 7), (2, 3, 2, 3, 4)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_map_sums_equal_numpy_on_signed_activations(shape, dtype):
    x = activations(0, shape).to(dtype)
    before = x.clone()
    total, t = _map_sums(x)
    assert torch.equal(x.nan_to_num(-9.0), before.nan_to_num(-9.0))  # read, never written
    work = torch.float64 if dtype == torch.float64 else torch.float32
    assert total.dtype == t.dtype == work and total.shape == t.shape == (*shape[:2], *[1] * (len(shape) - 2))
    s_ref, t_ref, scale = numpy_sums(x)  # the values the function saw (half inputs: as rounded)
    got_s, got_t = total.reshape(shape[:2]).double().numpy(), t.reshape(shape[:2]).double().numpy()
    finite = np.isfinite(s_ref)
    assert np.array_equal(np.isfinite(got_s), finite)  # a map with NaN/Inf has a non-finite S
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(got_s[finite], s_ref[finite], rtol=rtol)
    assert np.all(np.abs(got_t[finite] - t_ref[finite]) <= rtol * scale[finite] + 1e-300)
    assert got_s[0, 0] == 0.0 and got_t[0, 0] == 0.0  # dead map: S = T = 0 exactly


def test_map_sums_of_maps_without_spatial_extent_give_no_t():
    for x in (activations(1, (5, 3)), activations(1, (5, 3, 1, 1))):
        total, t = _map_sums(x)
        assert t is None
        np.testing.assert_array_equal(total.reshape(5, 3).numpy(), np.abs(x.reshape(5, 3).numpy()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_nonnegative_path_is_bit_identical_on_relu_outputs(dtype):
    x = torch.relu(activations(2, (6, 4, 5, 5), signed=True)).to(dtype)  # NaN stays NaN, +Inf stays
    assert (x == 0).any() and torch.isnan(x).any()
    for layout in (x, x.to(memory_format=torch.channels_last), x.transpose(2, 3)):
        signed, nonneg = _map_sums(layout), _map_sums(layout, nonnegative=True)
        for a, b in zip(signed, nonneg):
            assert torch.equal(a.nan_to_num(-1.0), b.nan_to_num(-1.0))
    a, b = LayerSparsity(4, bins=7), LayerSparsity(4, bins=7, nonnegative=True)
    a.update(x)
    b.update(x)
    assert all(torch.equal(u, v) for u, v in zip(a.metric_state().values(), b.metric_state().values()))


# -- the autograd Function ----------------------------------------------------------------------
def both_sums(x: torch.Tensor, nonnegative: bool = False) -> torch.Tensor:
    total, t = _MapSums.apply(x, nonnegative, None)
    return torch.cat([total.flatten(), t.flatten()])


def test_gradcheck_float64_with_exact_zeros_and_a_dead_map():
    x = activations(3, (3, 2, 3, 4), nonfinite=False)
    assert (x == 0).any() and (x[0, 0] == 0).all()
    # finite differences across an exact zero see |x|: symmetric, derivative 0 (sgn(0) = 0)
    assert torch.autograd.gradcheck(both_sums, (x.clone().requires_grad_(),), eps=1e-7, atol=1e-6)
    positive = torch.rand(3, 2, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4)) + 0.05
    assert torch.autograd.gradcheck(
        lambda t: both_sums(t, nonnegative=True), (positive.requires_grad_(),), eps=1e-7, atol=1e-6
    )
    assert torch.autograd.gradgradcheck(both_sums, (positive.detach().requires_grad_(),), eps=1e-7, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("nonnegative", [False, True])
def test_backward_equals_autograd_of_the_formula_and_is_finite_at_zeros(dtype, nonnegative):
    x = activations(5, (4, 3, 5, 5), signed=not nonnegative, nonfinite=False).to(dtype)
    g = torch.Generator().manual_seed(6)
    g_total, g_t = torch.randn(4, 3, 1, 1, generator=g), torch.randn(4, 3, 1, 1, generator=g)
    a = x.clone().requires_grad_()
    total, t = _MapSums.apply(a, nonnegative, None)
    (got,) = torch.autograd.grad((total, t), a, (g_total.to(total.dtype), g_t.to(total.dtype)))
    b = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(_map_sums_reference(b), b, (g_total.to(total.dtype), g_t.to(total.dtype)))
    assert got.dtype == x.dtype and torch.isfinite(got).all()
    assert torch.all(got[x == 0] == 0)  # the gradient at an exact zero is 0
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.double(), want.double(), rtol=tol, atol=tol)


def test_given_sums_skip_the_read_and_stay_without_graph():
    x = activations(7, (3, 2, 4, 4), nonfinite=False)
    with torch.no_grad():
        given = _map_sums(x)
    a = x.clone().requires_grad_()
    total, t = _MapSums.apply(a, False, given)
    assert given[0].grad_fn is None and not given[0].requires_grad  # the giver's tensors are untouched
    assert torch.equal(total, given[0]) and total.grad_fn is not None
    (got,) = torch.autograd.grad((total.sum() + t.sum()), a)
    b = x.clone().requires_grad_()
    (want,) = torch.autograd.grad(sum(v.sum() for v in _map_sums_reference(b)), b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


# -- sparsity from the sums ---------------------------------------------------------------------
def test_sparsity_from_sums_equals_the_oracle_and_is_exact_at_the_ends():
    x = activations(8, (6, 4, 3, 5), nonfinite=False)
    x[2, 1] = 0.0
    x[2, 1, 1, 1] = 3.0  # one active unit: sparsity 1
    x[3, 2] = -2.0  # uniform: sparsity 0
    total, t = _map_sums(x)
    total, t = total.reshape(6, 4), t.reshape(6, 4)
    s = _sparsity_from_sums(total, t, torch.tensor(14.0, dtype=torch.float64), total > 0)
    want = oracle.sparsity_rows(x.reshape(6, 4, -1).numpy(), clip=True)
    np.testing.assert_allclose(s.numpy(), want, rtol=0, atol=1e-12)
    assert s[0, 0] == 1.0 and s[2, 1] == 1.0 and s[3, 2] == 0.0  # dead, one-hot, uniform exactly


def test_sparsity_from_sums_keeps_nan_out_of_the_gradient():
    total = torch.tensor([0.0, float("nan"), float("inf"), 4.0], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.0, float("nan"), float("nan"), 2.0], dtype=torch.float64, requires_grad=True)
    alive = torch.isfinite(total) & (total > 0)
    s = _sparsity_from_sums(total, t, torch.tensor(3.0, dtype=torch.float64), alive)
    assert s[0] == 1.0 and torch.isfinite(s).all()
    (s * alive).sum().backward()
    assert torch.isfinite(total.grad).all() and torch.isfinite(t.grad).all()
    assert total.grad[:3].eq(0).all() and t.grad[:3].eq(0).all()
