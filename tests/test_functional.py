"""Tests for ``xaisparse.functional`` against independent references.

Every expected value here comes from SciPy/NumPy or from a plain Python loop written from the
definition in DESIGN §1 — never from the code under test.
"""

from __future__ import annotations

import importlib
import math
import warnings
import zlib

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from tests import oracle
from xaisparse.functional import (
    AXES,
    dead_mask,
    entropy,
    gini,
    hoyer,
    nonfinite_mask,
    perplexity,
    perplexity_sparsity,
    sparsity_from_perplexity,
    xlogx,
    zero_fraction,
)

# ``xaisparse.functional.perplexity`` the attribute is the function; fetch the module itself.
pmod = importlib.import_module("xaisparse.functional.perplexity")

HSET = settings(max_examples=30, deadline=None)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=2e-5, atol=2e-5)}


# --------------------------------------------------------------------------------------------
# Independent references (NumPy / SciPy, literal loops over DESIGN §1)
# --------------------------------------------------------------------------------------------


def ref_vectors(x: np.ndarray, axis: str) -> dict[tuple, np.ndarray]:
    """The vectors of DESIGN §1's axis table, built with explicit loops. Keys are output indices."""
    x = np.abs(np.asarray(x, dtype=np.float64))
    n_samples, n_channels = x.shape[:2]

    def spatial_mean(n: int, c: int) -> float:
        m = x[n, c]
        return float(np.mean(m)) if x.ndim > 2 else float(m)

    out: dict[tuple, np.ndarray] = {}
    if axis == "spatial":
        for n in range(n_samples):
            for c in range(n_channels):
                out[(n, c)] = x[n, c].ravel()
    elif axis == "channel":
        for n in range(n_samples):
            out[(n,)] = np.array([spatial_mean(n, c) for c in range(n_channels)])
    elif axis == "sample":
        for c in range(n_channels):
            out[(c,)] = np.array([spatial_mean(n, c) for n in range(n_samples)])
    else:  # pragma: no cover
        raise AssertionError(axis)
    return out


def ref_apply(x: np.ndarray, axis: str, fn) -> np.ndarray:
    vecs = ref_vectors(x, axis)
    shape = {"spatial": x.shape[:2], "channel": x.shape[:1], "sample": x.shape[1:2]}[axis]
    out = np.empty(shape, dtype=np.float64)
    for idx, v in vecs.items():
        out[idx] = fn(v)
    return out


def ref_hoyer(v: np.ndarray) -> float:
    """Hoyer (2004): (√N − ‖a‖₁/‖a‖₂)/(√N − 1); dead vector -> 1 (documented convention)."""
    a = np.abs(v.astype(np.float64))
    n = a.size
    if a.sum() == 0:
        return 1.0
    return (math.sqrt(n) - a.sum() / math.sqrt((a * a).sum())) / (math.sqrt(n) - 1)


def ref_gini_hurley_rickard(v: np.ndarray) -> float:
    """Hurley & Rickard (2009), sorted form: 1 − 2 Σ_k (c_k/‖c‖₁)·(N − k + ½)/N, c ascending."""
    c = np.sort(np.abs(v.astype(np.float64)))
    n = c.size
    s = c.sum()
    if s == 0:
        return 1.0
    total = 0.0
    for k in range(1, n + 1):
        total += (c[k - 1] / s) * (n - k + 0.5) / n
    return 1.0 - 2.0 * total


def ref_gini_mean_abs_diff(v: np.ndarray) -> float:
    """G = Σ_i Σ_j |a_i − a_j| / (2 N Σ a)  (the 'biased' Gini, normaliser N², not N(N−1)).

    Derivation that this equals Hurley–Rickard exactly (no (N−1)/N factor): for sorted c,
    Σ_i Σ_j |c_i − c_j| = 2 Σ_k c_k (2k − N − 1), so this form is Σ_k c_k (2k − N − 1)/(N S).
    Hurley–Rickard: 1 − (2/(N S)) Σ_k c_k (N − k + ½) = 1 − (2N + 1)/N + 2 Σ_k k c_k/(N S)
    = Σ_k c_k (2k − N − 1)/(N S). Identical. (The *unbiased* form with 2 N (N−1) μ in the
    denominator, i.e. Σ Σ |a_i − a_j| / (2 (N−1) S), is the one that differs, by N/(N−1).)
    """
    a = np.abs(v.astype(np.float64))
    n = a.size
    s = a.sum()
    if s == 0:
        return 1.0
    return float(np.abs(a[:, None] - a[None, :]).sum() / (2.0 * n * s))


def assert_close(actual: torch.Tensor, expected: np.ndarray, dtype=torch.float64) -> None:
    np.testing.assert_allclose(actual.detach().double().numpy(), expected, equal_nan=True, **TOL[dtype])


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Each test sees one-time warnings afresh: entering ``catch_warnings`` changes the filters,
    which makes the warnings module forget what it has shown (its registry is versioned)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        yield


def _rand_relu(rng: np.random.Generator, shape, zero_frac: float = 0.4) -> np.ndarray:
    x = rng.exponential(size=shape)
    x[rng.random(shape) < zero_frac] = 0.0
    return x


# --------------------------------------------------------------------------------------------
# perplexity() vs exp(scipy.stats.entropy)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "shape,dim",
    [((7,), -1), ((5, 9), -1), ((5, 9), 0), ((3, 4, 6), 1), ((3, 4, 6), -1), ((2, 3, 4, 5), 0), ((2, 3, 4, 5), 2)],
)
def test_perplexity_matches_scipy(shape, dim, dtype):
    rng = np.random.default_rng(zlib.crc32(repr((shape, dim)).encode()))  # the same on every platform
    a = _rand_relu(rng, shape, zero_frac=0.3)
    a.reshape(-1)[0] = 1.0  # make sure the first vector is alive
    # make one vector (along dim) dead when there is more than one vector
    moved = np.moveaxis(a, dim, -1)
    if moved.ndim > 1:
        moved.reshape(-1, moved.shape[-1])[-1] = 0.0
    a_t = torch.tensor(a, dtype=dtype)
    got = perplexity(a_t, dim=dim)
    rows = np.moveaxis(a_t.double().numpy(), dim, -1)
    expected = np.empty(rows.shape[:-1])
    for idx in np.ndindex(*rows.shape[:-1]):
        r = rows[idx]
        expected[idx] = 1.0 if r.sum() == 0 else math.exp(scipy.stats.entropy(r))
    assert got.shape == expected.shape
    assert got.dtype == dtype
    assert_close(got, expected, dtype)


@HSET
@given(
    hnp.arrays(
        np.float64,
        hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
        elements=st.one_of(st.just(0.0), st.floats(1e-6, 1e4)),
    )
)
def test_perplexity_matches_scipy_hypothesis(a):
    got = perplexity(torch.tensor(a), dim=-1)
    expected = np.array([1.0 if r.sum() == 0 else math.exp(scipy.stats.entropy(r)) for r in a])
    assert_close(got, expected)
    n = a.shape[-1]
    assert torch.all(got >= 1.0 - 1e-12) and torch.all(got <= n * (1 + 1e-12))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 64, 1000])
def test_perplexity_known_values(n, dtype):
    uniform = torch.full((n,), 0.3, dtype=dtype)
    assert perplexity(uniform).item() == pytest.approx(n, rel=1e-5)
    onehot = torch.zeros(n, dtype=dtype)
    onehot[n // 2] = 5.0
    assert perplexity(onehot).item() == 1.0
    assert perplexity(torch.zeros(n, dtype=dtype)).item() == 1.0  # dead vector
    # k equal actives among zeros -> exactly k effective units
    if n >= 4:
        half = torch.zeros(n, dtype=dtype)
        half[: n // 2] = 2.0
        assert perplexity(half).item() == pytest.approx(n // 2, rel=1e-5)


def test_perplexity_batched_dim_and_invariances():
    rng = np.random.default_rng(0)
    a = torch.tensor(_rand_relu(rng, (4, 6, 5)) + 0.01)
    # dim=1 equals dim=-1 on the transposed tensor
    torch.testing.assert_close(perplexity(a, dim=1), perplexity(a.transpose(1, 2), dim=-1))
    # scale invariance, permutation invariance, sign (|a|) invariance
    torch.testing.assert_close(perplexity(3.7 * a), perplexity(a))
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(perplexity(a[..., perm]), perplexity(a))
    torch.testing.assert_close(perplexity(-a), perplexity(a))


def test_perplexity_nonfinite_rows_are_nan_only_there():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, float("nan"), 1.0], [float("inf"), 1.0, 1.0], [1.0, 1.0, 1.0]])
    got = perplexity(a)
    assert torch.isnan(got[1]) and torch.isnan(got[2])
    assert got[0].item() == pytest.approx(math.exp(scipy.stats.entropy([1.0, 2.0, 3.0])), rel=1e-6)
    assert got[3].item() == pytest.approx(3.0, rel=1e-6)


def test_entropy_and_xlogx_basics():
    assert entropy(torch.tensor([1.0, 1.0, 0.0, 0.0])).item() == pytest.approx(math.log(2))
    assert entropy(torch.zeros(5)).item() == 0.0
    x = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    expected = np.array([0.0, 0.5 * math.log(0.5), 0.0, 2 * math.log(2)])
    assert_close(xlogx(x), expected)


@HSET
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 5), st.integers(1, 12)),
        elements=st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_subnormal=False)),
    )
)
def test_one_entropy_in_every_mode_equals_scipy(a):
    """Entropy from a vector exists once (``_entropy_terms``); its out-of-place, in-place and
    ``of=`` (one-buffer) modes, and the identity from sums, all equal scipy's entropy."""
    x = torch.tensor(a)
    b = x.abs()
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.where(np.abs(a).sum(-1) > 0, scipy.stats.entropy(np.abs(a), axis=-1), 0.0)
    h, log_p = pmod._entropy_terms(b.clone())
    assert_close(h, expected)
    assert log_p is not None and torch.all(log_p <= 0)
    assert_close(pmod._entropy_terms(b.clone(), inplace=True)[0], expected)
    mine = b.clone()
    h_of, none = pmod._entropy_terms(mine, of=x)
    assert none is None
    assert_close(h_of, expected)
    assert torch.equal(x, torch.tensor(a))  # of= reads x, never writes it
    assert_close(pmod._entropy_from_sums(b.sum(-1), xlogx(b).sum(-1)), expected)
    assert_close(entropy(x), expected)


# --------------------------------------------------------------------------------------------
# perplexity_sparsity() vs the literal DESIGN §1 loop
# --------------------------------------------------------------------------------------------

signed_elements = st.one_of(st.just(0.0), st.floats(-1e3, 1e3, allow_subnormal=False, width=32))


@st.composite
def activations_4d(draw):
    shape = draw(st.tuples(*(st.integers(1, 5) for _ in range(4))))
    x = draw(hnp.arrays(np.float64, shape, elements=signed_elements))
    dead = draw(hnp.arrays(np.bool_, shape[:2]))
    x[dead] = 0.0  # whole dead maps
    return x


@st.composite
def activations_2d(draw):
    shape = draw(st.tuples(st.integers(1, 8), st.integers(1, 8)))
    x = draw(hnp.arrays(np.float64, shape, elements=signed_elements))
    return x


def _check_against_loop(x: np.ndarray, axis: str, dtype) -> None:
    xt = torch.tensor(x, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # N = 1 shapes warn; checked elsewhere
        got = perplexity_sparsity(xt, axis)
    expected = ref_apply(xt.double().numpy(), axis, oracle.sparsity_of_vector)
    assert got.shape == expected.shape
    assert got.dtype == dtype
    assert_close(got, expected, dtype)
    finite = got[~torch.isnan(got)]
    assert torch.all((finite >= 0) & (finite <= 1)), "sparsity must lie in [0, 1]"
    # dead_mask equals the loop's S == 0
    expected_dead = ref_apply(xt.double().numpy(), axis, lambda v: float(np.abs(v).sum() == 0)).astype(bool)
    np.testing.assert_array_equal(dead_mask(xt, axis).numpy(), expected_dead)
    n = next(iter(ref_vectors(x, axis).values())).size
    if n > 1:  # length-1 vectors are NaN even when dead (no sparsity at all)
        assert torch.all(got[dead_mask(xt, axis)] == 1.0)


@HSET
@given(activations_4d(), st.sampled_from(AXES), st.sampled_from([torch.float64, torch.float32]))
def test_sparsity_4d_matches_literal_loop(x, axis, dtype):
    _check_against_loop(x, axis, dtype)


@HSET
@given(activations_2d(), st.sampled_from(["channel", "sample"]), st.sampled_from([torch.float64, torch.float32]))
def test_sparsity_2d_matches_literal_loop(x, axis, dtype):
    _check_against_loop(x, axis, dtype)


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("shape", [(6, 4, 5, 7), (3, 5, 11), (2, 3, 2, 3, 4)])
def test_sparsity_other_ranks_match_loop(shape, axis):
    rng = np.random.default_rng(len(shape))
    x = rng.normal(size=shape)
    x[x < 0.3] = 0.0
    _check_against_loop(x, axis, torch.float64)


@pytest.mark.parametrize("axis", AXES)
def test_sparsity_output_shapes(axis):
    x = torch.rand(4, 3, 5, 6)
    expected = {"spatial": (4, 3), "channel": (4,), "sample": (3,)}[axis]
    assert perplexity_sparsity(x, axis).shape == expected
    assert dead_mask(x, axis).shape == expected
    assert nonfinite_mask(x, axis).shape == expected
    assert perplexity_sparsity(x).shape == (4, 3)  # default axis is spatial


@pytest.mark.parametrize("n", [2, 3, 16, 100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparsity_known_values_and_range(n, dtype):
    # uniform -> exactly 0 (never a rounding-negative value); one-hot -> exactly 1
    uniform = torch.full((1, 1, n), 0.37, dtype=dtype)
    s = perplexity_sparsity(uniform)
    assert 0.0 <= s.item() <= 1e-6
    onehot = torch.zeros(1, 1, n, dtype=dtype)
    onehot[0, 0, 1] = 2.0
    assert perplexity_sparsity(onehot).item() == 1.0
    # k active of n, equal values -> PP = k, s = 1 - (k-1)/(n-1)
    k = max(1, n // 2)
    part = torch.zeros(1, 1, n, dtype=dtype)
    part[0, 0, :k] = 1.5
    assert perplexity_sparsity(part).item() == pytest.approx(1 - (k - 1) / (n - 1), abs=1e-6)


def test_sparsity_from_perplexity_values():
    pp = torch.tensor([1.0, 2.5, 4.0], dtype=torch.float64)
    np.testing.assert_allclose(sparsity_from_perplexity(pp, 4).numpy(), [1.0, 0.5, 0.0])
    assert torch.isnan(sparsity_from_perplexity(torch.tensor([1.0]), 1)).all()


# --------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------


def test_dead_maps_are_exactly_one_and_flagged():
    x = torch.rand(3, 4, 5, 5) + 0.1
    x[1, 2] = 0.0
    x[0, 0] = -0.0
    s = perplexity_sparsity(x, "spatial")
    dm = dead_mask(x, "spatial")
    assert s[1, 2].item() == 1.0 and s[0, 0].item() == 1.0
    expected = torch.zeros(3, 4, dtype=torch.bool)
    expected[1, 2] = expected[0, 0] = True
    assert torch.equal(dm, expected)
    assert not torch.isnan(s).any()
    # channel axis: a fully dead sample; sample axis: a channel dead in every sample
    y = torch.rand(3, 4, 2, 2) + 0.1
    y[2] = 0.0
    y[:, 1] = 0.0
    assert perplexity_sparsity(y, "channel")[2].item() == 1.0
    assert torch.equal(dead_mask(y, "channel"), torch.tensor([False, False, True]))
    assert perplexity_sparsity(y, "sample")[1].item() == 1.0
    assert torch.equal(dead_mask(y, "sample"), torch.tensor([False, True, False, False]))


@pytest.mark.parametrize(
    "axis,shape",
    [
        ("spatial", (3, 2, 1, 1)),
        ("spatial", (3, 2, 1)),
        ("channel", (4, 1, 3, 3)),
        ("channel", (4, 1)),
        ("sample", (1, 3, 2, 2)),
        ("sample", (1, 5)),
    ],
)
def test_length_one_vectors_give_nan_with_warning(axis, shape):
    x = torch.rand(*shape) + 0.5
    with pytest.warns(RuntimeWarning, match="length 1"):
        s = perplexity_sparsity(x, axis)  # must not raise ZeroDivisionError
    assert torch.isnan(s).all()
    # dead length-1 vectors are NaN too (no sparsity), not 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert torch.isnan(perplexity_sparsity(torch.zeros(*shape), axis)).all()
    # once per input shape and call site under the default filter; again after a filter reset
    other = (*shape[:-1], shape[-1] + 1) if axis == "spatial" else (shape[0] + 1, *shape[1:])
    for _ in range(2):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            for y in (x, x, torch.rand(*shape), torch.rand(*other) + 0.5, torch.rand(*other) + 0.5):
                perplexity_sparsity(y, axis)
        messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
        assert sum(f"input shape {tuple(shape)}" in m for m in messages) == 1, messages
        assert len(messages) == len(set(messages)), messages


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_affects_only_its_vector(bad):
    rng = np.random.default_rng(3)
    clean = _rand_relu(rng, (3, 4, 3, 3), 0.3) + 0.01
    x = clean.copy()
    x[1, 2, 0, 1] = bad
    xt = torch.tensor(x)
    # spatial: only (1, 2)
    s = perplexity_sparsity(xt, "spatial")
    nf = nonfinite_mask(xt, "spatial")
    expected_nf = np.zeros((3, 4), bool)
    expected_nf[1, 2] = True
    np.testing.assert_array_equal(nf.numpy(), expected_nf)
    assert torch.isnan(s[1, 2])
    ref = ref_apply(clean, "spatial", oracle.sparsity_of_vector)
    np.testing.assert_allclose(s.numpy()[~expected_nf], ref[~expected_nf], rtol=1e-10)
    assert not dead_mask(xt, "spatial")[1, 2]
    # channel: only sample 1; sample: only channel 2
    sc = perplexity_sparsity(xt, "channel")
    assert torch.equal(nonfinite_mask(xt, "channel"), torch.tensor([False, True, False]))
    assert torch.isnan(sc[1]) and not torch.isnan(sc[[0, 2]]).any()
    np.testing.assert_allclose(sc.numpy()[[0, 2]], ref_apply(clean, "channel", oracle.sparsity_of_vector)[[0, 2]])
    ss = perplexity_sparsity(xt, "sample")
    assert torch.equal(nonfinite_mask(xt, "sample"), torch.tensor([False, False, True, False]))
    assert torch.isnan(ss[2]) and not torch.isnan(ss[[0, 1, 3]]).any()
    np.testing.assert_allclose(ss.numpy()[[0, 1, 3]], ref_apply(clean, "sample", oracle.sparsity_of_vector)[[0, 1, 3]])


def test_spatial_on_2d_raises_with_shape():
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        perplexity_sparsity(torch.rand(4, 3), "spatial")
    with pytest.raises(ValueError, match=r"\(4, 3\)"):
        perplexity_sparsity(torch.rand(4, 3))  # default axis
    with pytest.raises(ValueError, match=r"\(5,\)"):
        perplexity_sparsity(torch.rand(5), "channel")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize(
    "fn", [perplexity_sparsity, dead_mask, nonfinite_mask, zero_fraction, hoyer, gini, lambda x, axis: perplexity(x)]
)
def test_integer_tensors_raise_type_error(fn, dtype):
    x = torch.ones(2, 3, 4, 4, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        fn(x, axis="spatial")


def test_non_tensor_raises_type_error():
    with pytest.raises(TypeError, match="Tensor"):
        perplexity_sparsity(np.ones((2, 3, 4, 4)))  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [perplexity_sparsity, dead_mask, nonfinite_mask, zero_fraction, hoyer, gini])
def test_bad_axis_lists_valid_axes(fn):
    with pytest.raises(ValueError) as info:
        fn(torch.rand(2, 3, 4, 4), axis="pixel")
    msg = str(info.value)
    assert "pixel" in msg
    for ax in ("spatial", "channel", "sample"):
        assert ax in msg


# --------------------------------------------------------------------------------------------
# Gradients
# --------------------------------------------------------------------------------------------


def _relu_input_with_dead(shape, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    x = torch.where(x > 0, x + 0.05, torch.zeros_like(x))  # exact zeros; positives far from 0
    x[0, 0] = 0.0  # a whole dead map
    assert (x == 0).any() and (x > 0).any()
    return x


@pytest.mark.parametrize("axis", AXES)
def test_gradcheck_sparsity_with_exact_zeros(axis):
    x = _relu_input_with_dead((3, 3, 3, 4)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: perplexity_sparsity(t, axis), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("axis", ["channel", "sample"])
def test_gradcheck_sparsity_2d(axis):
    x = _relu_input_with_dead((4, 5)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: perplexity_sparsity(t, axis), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_gradcheck_perplexity_with_exact_zeros(dim):
    x = _relu_input_with_dead((4, 5, 3)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: perplexity(t, dim=dim), (x,), eps=1e-6, atol=1e-5)


def test_gradient_matches_closed_form():
    # dPP/da_i = -PP (ln p_i + H) / S for positive a, and ds/da = -dPP/da / (N - 1)
    rng = np.random.default_rng(7)
    a = rng.exponential(size=9) + 0.1
    x = torch.tensor(a, requires_grad=True)
    perplexity_sparsity(x.view(1, 1, 9)).sum().backward()
    s, p = a.sum(), a / a.sum()
    h = scipy.stats.entropy(a)
    dpp = -math.exp(h) * (np.log(p) + h) / s
    np.testing.assert_allclose(x.grad.numpy(), -dpp / 8, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("axis", AXES)
def test_gradients_finite_float32_relu_many_zeros(axis):
    g = torch.Generator().manual_seed(11)
    x = torch.relu(torch.randn(8, 6, 7, 7, generator=g) - 1.5)  # ~93% exact zeros
    x[2, 3] = 0.0  # dead map
    x[5] = 0.0  # dead sample
    x[:, 4] = 0.0  # dead channel
    x.requires_grad_()
    s = perplexity_sparsity(x, axis)
    assert torch.isfinite(s).all()
    s.mean().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.all(x.grad[2, 3] == 0) and torch.all(x.grad[5] == 0)


def test_gradient_through_real_relu_fully_dead():
    z = (-torch.rand(2, 3, 4, 4) - 0.1).requires_grad_()  # ReLU kills everything
    s = perplexity_sparsity(torch.relu(z))
    assert torch.all(s == 1.0)
    s.sum().backward()
    assert torch.isfinite(z.grad).all() and torch.all(z.grad == 0)
    p = perplexity(torch.zeros(5, requires_grad=True))
    p.backward()


def test_gradient_finite_next_to_nan_vector():
    x = torch.rand(2, 3, 4, 4) + 0.1
    x[0, 1, 2, 2] = float("nan")
    x.requires_grad_()
    s = perplexity_sparsity(x)
    s[~torch.isnan(s)].sum().backward()
    keep = torch.ones(2, 3, dtype=torch.bool)
    keep[0, 1] = False
    assert torch.isfinite(x.grad[keep]).all()


@pytest.mark.parametrize("axis", AXES)
def test_gradient_step_direction(axis):
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 5, 5, generator=g, dtype=torch.float64) ** 3 + 0.01  # positive, uneven
    x.requires_grad_()
    s = perplexity_sparsity(x, axis).mean()
    (grad,) = torch.autograd.grad(s, x)
    lr = 1e-2 / grad.abs().max()
    with torch.no_grad():
        s_down = perplexity_sparsity(x - lr * grad, axis).mean()  # descent on s: penalise sparsity
        s_up = perplexity_sparsity(x + lr * grad, axis).mean()  # descent on -s: reward sparsity
    assert s_down < s < s_up


# --------------------------------------------------------------------------------------------
# Classical baselines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", AXES)
@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_zero_fraction_vs_numpy(axis, threshold):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(5, 4, 3, 3))
    x[np.abs(x) < 0.5] = 0.0
    got = zero_fraction(torch.tensor(x), axis, threshold=threshold)
    expected = ref_apply(x, axis, lambda v: np.count_nonzero(np.abs(v) <= threshold) / v.size)
    assert_close(got, expected)


def test_zero_fraction_negative_threshold():
    with pytest.raises(ValueError, match="threshold"):
        zero_fraction(torch.rand(2, 3, 4, 4), threshold=-0.1)


@HSET
@given(activations_4d(), st.sampled_from(AXES))
def test_hoyer_and_gini_vs_references(x, axis):
    xt = torch.tensor(x)
    vecs = ref_vectors(x, axis)
    if next(iter(vecs.values())).size == 1:
        return  # N = 1 covered separately
    assert_close(hoyer(xt, axis), np.clip(ref_apply(x, axis, ref_hoyer), 0, 1), torch.float32)
    g = gini(xt, axis)
    assert_close(g, ref_apply(x, axis, ref_gini_hurley_rickard))
    assert_close(g, ref_apply(x, axis, ref_gini_mean_abs_diff))


@pytest.mark.parametrize("axis", ["channel", "sample"])
def test_hoyer_and_gini_2d_vs_references(axis):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(6, 7))
    x[x < 0] = 0.0
    xt = torch.tensor(x)
    assert_close(hoyer(xt, axis), ref_apply(x, axis, ref_hoyer), torch.float32)
    assert_close(gini(xt, axis), ref_apply(x, axis, ref_gini_mean_abs_diff))


@pytest.mark.parametrize("n", [2, 4, 9, 50])
def test_baseline_known_values(n):
    onehot = torch.zeros(1, n, dtype=torch.float64)
    onehot[0, n - 1] = 3.0
    uniform = torch.full((1, n), 2.0, dtype=torch.float64)
    dead = torch.zeros(1, n, dtype=torch.float64)
    assert hoyer(onehot, "channel").item() == pytest.approx(1.0)
    assert hoyer(uniform, "channel").item() == pytest.approx(0.0, abs=1e-9)
    assert hoyer(dead, "channel").item() == 1.0
    g1 = gini(onehot, "channel").item()
    assert g1 == pytest.approx(1 - 1 / n)
    assert g1 * n / (n - 1) == pytest.approx(1.0)  # the unbiased normalisation reaches 1
    assert gini(uniform, "channel").item() == pytest.approx(0.0, abs=1e-12)
    assert gini(dead, "channel").item() == 1.0
    assert zero_fraction(onehot, "channel").item() == pytest.approx((n - 1) / n)
    assert zero_fraction(uniform, "channel").item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("scale", [1e-13, 1e-20, 1e-6, 1e6])
def test_baselines_scale_invariant_at_tiny_and_huge_magnitudes(scale, dtype):
    rng = np.random.default_rng(8)
    v = rng.exponential(size=(3, 10)) + 0.1
    v[1] = 1.0  # uniform
    v[2, 1:] = 0.0  # one-hot
    x = torch.tensor(v * scale, dtype=dtype)
    expected = np.array([ref_hoyer(r) for r in v])
    assert_close(hoyer(x, "channel"), expected, torch.float32)
    assert_close(gini(x, "channel"), np.array([ref_gini_mean_abs_diff(r) for r in v]), torch.float32)


@pytest.mark.parametrize("fn", [hoyer, gini])
def test_baseline_gradients_with_exact_zeros(fn):
    x = _relu_input_with_dead((2, 3, 3, 3)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: fn(t, "spatial"), (x,), eps=1e-6, atol=1e-5)
    y = torch.relu(torch.randn(4, 5, 6, 6, generator=torch.Generator().manual_seed(2)) - 1.5)
    y[0] = 0.0
    y.requires_grad_()
    fn(y, "spatial").sum().backward()
    assert torch.isfinite(y.grad).all()


def test_hoyer_length_one_is_nan():
    assert torch.isnan(hoyer(torch.rand(3, 1), "channel")).all()


# --------------------------------------------------------------------------------------------
# The (S, T) identity and mergeable sums (what streaming estimators rely on)
# --------------------------------------------------------------------------------------------


def _np_s_t(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.abs(a)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0)), 0.0)
    return a.sum(-1), t.sum(-1)


@HSET
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 4), st.integers(1, 20)),
        elements=st.one_of(st.just(0.0), st.floats(1e-3, 1e3)),
    )
)
def test_identity_h_equals_ln_s_minus_t_over_s(a):
    s, t = _np_s_t(a)
    alive = s > 0
    h_identity = np.where(alive, np.log(np.where(alive, s, 1.0)) - t / np.where(alive, s, 1.0), 0.0)
    np.testing.assert_allclose(entropy(torch.tensor(a)).numpy(), h_identity, rtol=1e-9, atol=1e-9)
    for row, h in zip(a, h_identity):
        if row.sum() > 0:
            assert h == pytest.approx(scipy.stats.entropy(row), rel=1e-9, abs=1e-9)


@HSET
@given(
    hnp.arrays(np.float64, st.integers(2, 40), elements=st.one_of(st.just(0.0), st.floats(1e-3, 1e3))),
    st.lists(st.integers(0, 40), max_size=5),
)
def test_perplexity_of_concatenation_from_chunk_sums(a, cuts):
    chunks = np.split(a, sorted(c % (a.size + 1) for c in cuts))  # may contain empty / dead chunks
    s_tot = t_tot = 0.0
    for ch in chunks:
        s, t = _np_s_t(ch)
        s_tot += float(s)
        t_tot += float(t)
    pp_merged = 1.0 if s_tot == 0 else math.exp(math.log(s_tot) - t_tot / s_tot)
    assert perplexity(torch.tensor(a)).item() == pytest.approx(pp_merged, rel=1e-9)


@pytest.mark.parametrize("splits", [[3, 3], [1, 4, 1], [2, 2, 2], [6], [1, 1, 1, 1, 1, 1]])
def test_sample_axis_streamed_over_batches_equals_one_shot(splits):
    rng = np.random.default_rng(9)
    x = _rand_relu(rng, (6, 5, 3, 3), 0.5)
    x[:, 2] = 0.0  # a channel dead everywhere
    x[1:4, 3] = 0.0  # dead in some batches only
    xt = torch.tensor(x)
    s_acc = np.zeros(5)
    t_acc = np.zeros(5)
    for batch in torch.split(xt, splits):
        means = np.abs(batch.numpy()).reshape(batch.shape[0], 5, -1).mean(-1)  # (n, C)
        s, t = _np_s_t(means.T)  # per channel over this batch's samples
        s_acc += s
        t_acc += t
    n = x.shape[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        pp = np.where(
            s_acc > 0, np.exp(np.log(np.where(s_acc > 0, s_acc, 1)) - t_acc / np.where(s_acc > 0, s_acc, 1)), 1.0
        )
    streamed = 1 - (pp - 1) / (n - 1)
    assert_close(perplexity_sparsity(xt, "sample"), streamed)
