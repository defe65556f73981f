"""Tests of the streaming estimator ``xaisparse.estimators.LayerSparsity``.

Every expected value comes from ``tests.oracle.layer_reference``, a plain NumPy/SciPy computation of docs/measure.md
on *all* the data at once (``scipy.stats.entropy`` for H, ``np.histogram`` on
``np.linspace(0, 1, bins + 1)`` for the histograms) — never from the code under test.

Semantics pinned here (read from docs/measure.md and ``layer.py``):

* values are ``|x|``; a dead (all-zero) vector has sparsity 1 and is also counted as dead;
* ``spatial``: one vector per (sample, channel) map; a map holding NaN/Inf is excluded and
  counted as non-finite for that channel only; skipped (NaN means, zero counts, one
  RuntimeWarning) for ``(N, C)`` inputs and 1×1 maps;
* ``channel`` (population): per sample, the vector of per-channel spatial means; the whole
  sample is excluded (and counted) if any of its maps is non-finite; no value for ``C = 1``;
* ``sample`` (lifetime): per channel, the spatial means over all samples whose map *of that
  channel* is finite (a NaN in channel 0 does not drop the sample from channel 1);
* std is the sample standard deviation (``ddof = 1``); NaN with fewer than two values.
"""

from __future__ import annotations

import copy
import datetime
import io
import os
import pickle
import re
import socket
import time
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests import oracle
from xaisparse.estimators import LayerSparsity
from xaisparse.estimators.layer import _hist_index
from xaisparse.functional import STATE_NAMES as FUNCTIONAL_STATE_NAMES
from xaisparse.functional import empty_state, layer_statistics
from xaisparse.functional.streaming import _layer_sparsity_compute, _layer_sparsity_update

STATE_NAMES = {
    f"{axis}_{k}" for axis in ("spatial", "channel") for k in ("hist", "sum", "sumsq", "count", "dead", "nonfinite")
} | {"sample_S", "sample_T", "sample_n", "sample_nonfinite"}

OUT_KEYS = {
    f"{axis}_{k}" for axis in ("spatial", "channel") for k in ("mean", "std", "count", "dead", "nonfinite", "hist")
} | {"sample_perplexity", "sample_sparsity", "sample_count", "sample_nonfinite"}

# Absolute tolerance on sparsity values / relative on perplexity, by input dtype. float64 input is
# measured in float64 (agreement to rounding); float32 (and half, upcast) in float32.
TOL = {torch.float64: 1e-9, torch.float32: 5e-5}
# std comes from sum / sum of squares: cancellation costs ~sqrt(n * eps) absolute at worst.
STD_TOL = {torch.float64: 1e-6, torch.float32: 5e-4}

HSET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------------------------
# Agreement with the independent one-shot reference (tests/oracle.layer_reference)
# --------------------------------------------------------------------------------------------


def assert_matches_reference(out: dict[str, torch.Tensor], ref: dict, bins: int, dtype: torch.dtype) -> None:
    assert set(out) == OUT_KEYS
    tol, std_tol = TOL[dtype], STD_TOL[dtype]
    o = {k: v.detach().cpu().numpy() for k, v in out.items()}
    for k in (
        "spatial_count",
        "spatial_dead",
        "spatial_nonfinite",
        "channel_count",
        "channel_dead",
        "channel_nonfinite",
        "sample_count",
        "sample_nonfinite",
    ):
        np.testing.assert_array_equal(o[k], ref[k], err_msg=k)
    for k in ("spatial_mean", "channel_mean", "sample_sparsity"):
        np.testing.assert_allclose(o[k], ref[k], rtol=0, atol=tol, err_msg=k)
    for k in ("spatial_std", "channel_std"):
        np.testing.assert_allclose(o[k], ref[k], rtol=0, atol=std_tol, err_msg=k)
    np.testing.assert_allclose(o["sample_perplexity"], ref["sample_perplexity"], rtol=tol, atol=tol, err_msg="pp")
    assert o["spatial_hist"].shape == (len(ref["spatial_mean"]), bins)
    assert o["channel_hist"].shape == (bins,)
    for ch, values in enumerate(ref["_spatial_values"]):
        oracle.hist_matches(o["spatial_hist"][ch], values, bins, tol)
    oracle.hist_matches(o["channel_hist"], ref["_channel_values"], bins, tol)


def outputs_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k].nan_to_num(-7.0), b[k].nan_to_num(-7.0)) for k in a)


def states(m: LayerSparsity) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in m.state_dict().items()}


def feed(m: LayerSparsity, x: torch.Tensor, sizes: list[int]) -> None:
    """Update ``m`` with ``x`` cut into consecutive chunks of the given sizes (zeros allowed)."""
    assert sum(sizes) == x.shape[0]
    start = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # spatial skip for (N, C) / 1×1 inputs
        for size in sizes:
            m.update(x[start : start + size])
            start += size


# --------------------------------------------------------------------------------------------
# Random activations: signed values over many scales, exact zeros, dead maps and channels,
# one-hot and k-equal maps (sparsity on rational values, often on bin edges), NaN, ±Inf
# --------------------------------------------------------------------------------------------


def make_activations(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    n, c = shape[:2]
    x = rng.standard_normal(shape) * 10.0 ** rng.uniform(-3, 3)
    x[rng.random(shape) < rng.uniform(0, 0.6)] = 0.0  # scattered exact zeros
    if len(shape) > 2:
        flat = x.reshape(n, c, -1)
        length = flat.shape[-1]
        for i in range(n):
            for ch in range(c):
                kind = rng.integers(0, 8)
                if kind == 0:
                    flat[i, ch] = 0.0  # dead map
                elif kind == 1:
                    flat[i, ch] = 0.0
                    flat[i, ch, rng.integers(length)] = rng.uniform(0.1, 5)  # one active unit
                elif kind == 2:  # k equal active units (rational sparsity 1 - (k-1)/(L-1))
                    flat[i, ch] = 0.0
                    idx = rng.choice(length, size=rng.integers(1, length + 1), replace=False)
                    flat[i, ch, idx] = rng.choice([-2.0, 2.0], size=idx.size)
        x = flat.reshape(shape)
    if rng.random() < 0.3:
        x[:, rng.integers(c)] = 0.0  # a channel dead over every sample
    for value, p in ((np.nan, 0.05), (np.inf, 0.03), (-np.inf, 0.03)):
        if rng.random() < 0.5:
            x[rng.random(shape) < p] = value
    return x


@st.composite
def cases(draw):
    n = draw(st.integers(1, 10))
    c = draw(st.integers(1, 5))
    spatial = draw(
        st.one_of(
            st.just(()),  # (N, C) features
            st.just((1, 1)),
            st.tuples(st.integers(1, 4), st.integers(1, 4)),
        )
    )
    dtype = draw(st.sampled_from([torch.float64, torch.float64, torch.float32]))
    bins = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 10, 20]))
    seed = draw(st.integers(0, 2**32 - 1))
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    sizes = list(np.diff([0, *cuts, n]))
    x = make_activations(np.random.default_rng(seed), (n, c, *spatial))
    return torch.tensor(x, dtype=dtype), bins, [int(s) for s in sizes]


def ref_of(x: torch.Tensor, bins: int) -> dict:
    return oracle.layer_reference(x.double().numpy(), bins)  # exactly the values the estimator saw


# --------------------------------------------------------------------------------------------
# Streaming over any chunking == one-shot reference on all the data
# --------------------------------------------------------------------------------------------


@HSET
@given(cases())
def test_streaming_over_random_chunkings_equals_one_shot_reference(case):
    x, bins, sizes = case
    m = LayerSparsity(x.shape[1], bins=bins)
    feed(m, x, sizes)
    assert_matches_reference(m.compute(), ref_of(x, bins), bins, x.dtype)


@HSET
@given(cases())
def test_streaming_equals_summed_pure_updates_equals_one_shot_function_equals_oracle(case):
    """The torchmetrics contract: LayerSparsity is the running sum of the pure update, its compute
    the pure compute; the one-shot ``layer_statistics`` on all the data matches the NumPy oracle and
    the streamed result (counts and histograms exactly, sums to rounding)."""
    x, bins, sizes = case
    m = LayerSparsity(x.shape[1], bins=bins)
    feed(m, x, sizes)
    summed = empty_state(x.shape[1], bins)
    start = 0
    for size in sizes:
        for k, v in _layer_sparsity_update(x[start : start + size], bins).items():
            summed[k] += v
        start += size
    assert set(summed) == set(FUNCTIONAL_STATE_NAMES) == STATE_NAMES
    for k, v in m.metric_state().items():  # the estimator adds exactly the pure increments
        assert v.dtype == summed[k].dtype and torch.equal(v, summed[k]), k
    assert outputs_equal(m.compute(), _layer_sparsity_compute(summed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # spatial skip for (N, C) / 1×1 inputs
        one = layer_statistics(x, bins)
    ref = ref_of(x, bins)
    assert_matches_reference(one, ref, bins, x.dtype)
    assert_matches_reference(m.compute(), ref, bins, x.dtype)
    streamed = m.compute()
    for k in one:
        if one[k].dtype == torch.long:
            assert torch.equal(one[k], streamed[k]), k
        else:
            torch.testing.assert_close(one[k], streamed[k], rtol=1e-9, atol=1e-6, equal_nan=True, msg=k)


def test_deferred_small_tensor_work_is_invisible_and_bit_identical_to_per_batch_updates():
    """Eager updates fold their (N, C)-sized work in every few batches; every way of reading the
    state folds it in first, and the result is bit for bit the sum of one pure update per batch
    (float sums added in batch order)."""
    from xaisparse.estimators import layer as layer_module

    rng = np.random.default_rng(17)
    batches = [torch.tensor(make_activations(rng, (3, 4, 3, 3))) for _ in range(layer_module.DEFER_BATCHES + 5)]
    expected = empty_state(4, 6)
    reads = {
        "attribute": lambda m: m.spatial_sum,
        "metric_state": lambda m: m.metric_state(),
        "state_dict": lambda m: m.state_dict(),
        "buffers": lambda m: list(m.buffers()),
        "to": lambda m: m.to("cpu"),
        "pickle": lambda m: pickle.loads(pickle.dumps(m)).metric_state(),
        "compute": lambda m: m.compute(),
    }
    for read_name, read in reads.items():
        m = LayerSparsity(4, bins=6)
        expected = empty_state(4, 6)
        for i, x in enumerate(batches):
            m.update(x)
            for k, v in _layer_sparsity_update(x, 6).items():
                expected[k] += v
            if i in (2, 9, len(batches) - 1):  # mid-way through a deferred group, and at the end
                snapshot = read(m)
                assert snapshot is not None
                got = m.metric_state()
                for k in STATE_NAMES:
                    assert torch.equal(got[k], expected[k]), (read_name, i, k)
    # merging folds both sides in; reset and load_state_dict drop what was deferred
    a, b = LayerSparsity(4, bins=6), LayerSparsity(4, bins=6)
    for x in batches[:5]:
        a.update(x)
    for x in batches[5:8]:
        b.update(x)
    a.merge_state(b)
    assert int(a.spatial_count.sum() + a.spatial_nonfinite.sum()) == 8 * 3 * 4
    a.update(batches[0])
    a.reset()
    assert not any(v.any() for v in a.metric_state().values())
    loaded = LayerSparsity(4, bins=6)
    loaded.update(batches[1])
    loaded.load_state_dict(b.state_dict())
    assert outputs_equal(loaded.compute(), b.compute())


def test_pure_update_leaves_its_input_untouched_and_is_a_fixed_size_state():
    rng = np.random.default_rng(11)
    for shape in [(5, 3, 4, 4), (5, 3), (5, 3, 1, 1), (4, 2, 3)]:
        for dtype in (torch.float64, torch.float32, torch.float16):
            x = torch.tensor(make_activations(rng, shape)).to(dtype)
            before = x.clone()
            inc = _layer_sparsity_update(x, 6)
            assert torch.equal(x.nan_to_num(-9.0), before.nan_to_num(-9.0)), (shape, dtype)
            zero = empty_state(shape[1], 6)
            assert {k: (v.shape, v.dtype) for k, v in inc.items()} == {k: (v.shape, v.dtype) for k, v in zero.items()}
    cl = torch.tensor(make_activations(rng, (4, 3, 5, 6)), dtype=torch.float32)
    channels_last = cl.to(memory_format=torch.channels_last)
    a, b = _layer_sparsity_update(cl, 5), _layer_sparsity_update(channels_last, 5)
    assert all(torch.equal(a[k].nan_to_num(-1.0), b[k].nan_to_num(-1.0)) for k in a)  # layout does not matter


def test_layer_statistics_warns_once_per_shape_and_call_site():
    x = torch.rand(4, 3, 1, 1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for y in (x, x, torch.rand(4, 3, 1, 1), torch.rand(6, 3)):
            layer_statistics(y, bins=5)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 2 and "(4, 3, 1, 1)" in messages[0] and "(6, 3)" in messages[1], messages
    with pytest.raises(ValueError, match="bins"):
        layer_statistics(torch.rand(2, 3, 4, 4), bins=0)


# --------------------------------------------------------------------------------------------
# The fused update against the per-batch formulas it replaced (LayerSparsity.update of 6c4f11a)
# --------------------------------------------------------------------------------------------


def legacy_update(x: torch.Tensor, bins: int) -> dict[str, torch.Tensor]:
    """The old per-batch formulas, op for op: amax screening, p-space entropy per axis in the
    working dtype, ``bucketize`` binning. Also returns ``_channel_values`` (for edge freedom)."""
    x = x.detach().float() if x.dtype in (torch.float16, torch.bfloat16) else x.detach()
    a = x.abs().flatten(2) if x.dim() > 2 else x.abs().unsqueeze(-1)
    n, c, length = a.shape
    ok = torch.isfinite(a.amax(-1)) if length else torch.ones(n, c, dtype=torch.bool)
    total = a.sum(-1)
    means = torch.where(ok, total, 0.0) / max(length, 1)
    floor = 2.0**-24 if a.dtype == torch.float16 else torch.finfo(a.dtype).tiny
    edges = torch.tensor(np.linspace(0.0, 1.0, bins + 1))

    def entropy(v: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
        p = v / torch.where(sums > 0, sums, 1.0).unsqueeze(-1)
        return -(p * p.clamp(min=floor).log()).sum(-1)

    def index(s: torch.Tensor) -> torch.Tensor:
        s = torch.nan_to_num(s, nan=0.0).double()
        return (torch.bucketize(s, edges, right=True) - 1).clamp(0, bins - 1)

    out = empty_state(c, bins)
    if length > 1:
        s = (1.0 - (torch.exp(entropy(a, total)) - 1.0) / (length - 1)).clamp(0.0, 1.0)
        s64 = torch.where(ok, s, 0.0).double()
        out.update(spatial_sum=s64.sum(0), spatial_sumsq=(s64 * s64).sum(0), spatial_count=ok.sum(0))
        out.update(spatial_dead=(ok & (total == 0)).sum(0), spatial_nonfinite=(~ok).sum(0))
        idx = index(s) + torch.arange(c) * bins
        out["spatial_hist"].view(-1).scatter_add_(0, idx.flatten(), ok.flatten().long())
    row_ok = ok.all(-1) & (c > 1)
    s = (1.0 - (torch.exp(entropy(means, means.sum(-1))) - 1.0) / max(c - 1, 1)).clamp(0.0, 1.0)
    s64 = torch.where(row_ok, s, 0.0).double()
    out.update(channel_sum=s64.sum(), channel_sumsq=(s64 * s64).sum(), channel_count=row_ok.sum())
    out.update(channel_dead=(row_ok & (means.sum(-1) == 0)).sum(), channel_nonfinite=(~ok.all(-1)).sum())
    out["channel_hist"].scatter_add_(0, index(s), row_ok.long())
    m = torch.where(ok, means, 0.0).double()
    out.update(sample_S=m.sum(0), sample_T=m.clamp(min=torch.finfo(m.dtype).tiny).log().mul(m).sum(0))
    out.update(sample_n=ok.sum(0), sample_nonfinite=(~ok).sum(0))
    out["_channel_values"] = s64[row_ok]
    return out


def _edge_cases() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(21)
    dead = torch.zeros(4, 3, 3, 3)
    some_dead = torch.tensor(make_activations(rng, (6, 4, 3, 3)))
    some_dead[:, 1] = 0.0
    some_dead[2] = 0.0
    bad = torch.rand(5, 3, 4, 4, dtype=torch.float64)
    bad[0, 0, 1, 1], bad[1, 2, 0, 0], bad[3, 1, 2, 3] = float("nan"), float("inf"), -float("inf")
    bad[4] = float("nan")
    k_equal = torch.zeros(6, 2, 4, 4)
    for i in range(6):  # k = 1..6 equal units: sparsity on rational values, several on bin edges
        k_equal[i].view(2, -1)[:, : i + 1] = 3.0
    return {
        "all dead": dead,
        "dead maps and samples": some_dead,
        "NaN/Inf maps": bad,
        "1x1 maps": torch.tensor(make_activations(rng, (7, 5, 1, 1))),
        "(N, C) features": torch.tensor(make_activations(rng, (7, 5))),
        "one channel": torch.tensor(make_activations(rng, (5, 1, 3, 2))),
        "one sample": torch.tensor(make_activations(rng, (1, 4, 3, 3))),
        "k equal units": k_equal,
        "float32": torch.tensor(make_activations(rng, (6, 3, 5, 5)), dtype=torch.float32),
        "float16": torch.tensor(make_activations(rng, (6, 3, 4, 4))).clamp(-6e4, 6e4).half(),
        "bfloat16": torch.tensor(make_activations(rng, (6, 3, 4, 4))).bfloat16(),
        "empty batch": torch.zeros(0, 3, 2, 2),
    }


@pytest.mark.parametrize("name", list(_edge_cases()))
def test_fused_update_equals_the_old_formulas_on_edge_cases(name):
    x = _edge_cases()[name]
    bins = 10
    new, old = _layer_sparsity_update(x, bins), legacy_update(x, bins)
    channel_values = old.pop("_channel_values").numpy()
    double = x.dtype == torch.float64
    for k in STATE_NAMES:
        assert new[k].dtype == old[k].dtype and new[k].shape == old[k].shape, k
        if k == "channel_hist":  # old: float32 p-space; new: float64 sums; values on an edge may move
            oracle.hist_matches(new[k].numpy(), channel_values, bins, 1e-12 if double else 1e-6)
        elif new[k].dtype == torch.long:
            assert torch.equal(new[k], old[k]), (k, new[k], old[k])
        else:
            torch.testing.assert_close(
                new[k], old[k], rtol=1e-12 if double else 2e-6, atol=1e-12 if double else 2e-6, msg=k
            )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if x.shape[0]:  # and both agree with the NumPy oracle
            assert_matches_reference(
                layer_statistics(x, bins), ref_of(x, bins), bins, torch.float64 if double else torch.float32
            )


# --------------------------------------------------------------------------------------------
# torch.compile of the pure update (opt-in): equal to the eager path within tolerance
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compile_works() -> None:
    try:
        torch.compile(lambda t: t * 2.0 + 1.0)(torch.ones(3))
    except Exception as err:  # no C++ compiler, unsupported platform, ...
        pytest.skip(f"torch.compile cannot run here ({type(err).__name__}: {str(err)[:200]})")


@pytest.mark.slow
def test_compiled_update_equals_eager_within_tolerance(compile_works):
    """Same maths, traced: the reductions may sum in another order, so sums agree to 1e-6
    (float32 inputs) / 1e-12 (float64); counts exactly; histograms up to values within 1e-6
    of an edge (checked against the oracle with that freedom)."""
    cases_ = _edge_cases()
    rng = np.random.default_rng(5)
    chosen = [
        cases_["dead maps and samples"],
        cases_["NaN/Inf maps"],
        cases_["float32"],
        cases_["float16"],
        torch.tensor(make_activations(rng, (9, 4, 6, 6)), dtype=torch.float32),
        cases_["(N, C) features"],
    ]
    for x in chosen:
        eager, comp = LayerSparsity(x.shape[1], bins=7), LayerSparsity(x.shape[1], bins=7, compile=True)
        assert comp.compiled and not eager.compiled
        feed(eager, x, [x.shape[0] // 2, x.shape[0] - x.shape[0] // 2])
        feed(comp, x, [x.shape[0] // 2, x.shape[0] - x.shape[0] // 2])
        a, b = eager.compute(), comp.compute()
        double = x.dtype == torch.float64
        for k in a:
            if k.endswith("hist"):
                continue
            if a[k].dtype == torch.long:
                assert torch.equal(a[k], b[k]), k
            else:
                tol = 1e-12 if double else 1e-6
                torch.testing.assert_close(b[k], a[k], rtol=tol, atol=tol, equal_nan=True, msg=k)
        assert_matches_reference(b, ref_of(x, 7), 7, torch.float64 if double else torch.float32)


# --------------------------------------------------------------------------------------------
# No host synchronisation in the per-batch path (CUDA only)
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the sync debug mode needs one")
def test_per_batch_path_makes_no_host_sync_on_cuda():
    from xaisparse.monitor import SparsityMonitor

    x = torch.tensor(make_activations(np.random.default_rng(8), (6, 3, 5, 5)), dtype=torch.float32).cuda()
    est = LayerSparsity(3, bins=10).cuda()
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU())
    model = model.cuda().eval()
    monitor = SparsityMonitor(model)
    batch = torch.randn(8, 1, 12, 12, device="cuda")
    with monitor.track("test"), torch.no_grad():
        model(batch)  # the first batch creates the estimators (and copies their zero state)
    est.update(x)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            est.update(x)
            est.update(x[:, :, :1, :1])  # 1x1 maps: the spatial skip
        with monitor.track("test"), torch.no_grad():
            for _ in range(3):
                model(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_matches_reference(
        {k: v.cpu() for k, v in monitor.estimator("test", monitor.layer_names[0]).compute().items()},
        ref_of(torch.relu(model[0](batch.repeat(4, 1, 1, 1))).cpu().double(), 20),
        20,
        torch.float32,
    )


@pytest.mark.parametrize("sizes", [[7], [1] * 7, [3, 0, 4], [0, 0, 7, 0], [2, 5]])
def test_chunkings_agree_with_each_other_and_with_one_shot(sizes):
    rng = np.random.default_rng(0)
    x = torch.tensor(make_activations(rng, (7, 4, 3, 5)))
    m = LayerSparsity(4, bins=10)
    feed(m, x, sizes)
    out = m.compute()
    assert_matches_reference(out, ref_of(x, 10), 10, torch.float64)
    one = LayerSparsity(4, bins=10).one_shot(x)
    for k in out:  # same sums in another order: equal to rounding; counts and histograms exactly
        if out[k].dtype == torch.long:
            assert torch.equal(out[k], one[k]), k
        else:
            torch.testing.assert_close(out[k], one[k], rtol=1e-9, atol=1e-6, equal_nan=True, msg=k)


def test_per_channel_exclusion_on_the_lifetime_axis():
    """A NaN map of channel 0 drops sample 0 from channel 0's lifetime vector only; the
    channel (population) axis drops the whole sample; the spatial axis drops that map only."""
    x = torch.rand(4, 3, 2, 2, dtype=torch.float64) + 0.1
    x[0, 0, 1, 1] = float("nan")
    x[2, 2, 0, 0] = float("inf")
    m = LayerSparsity(3, bins=5)
    m.update(x)
    out = m.compute()
    assert out["sample_count"].tolist() == [3, 4, 3]
    assert out["sample_nonfinite"].tolist() == [1, 0, 1]
    assert out["channel_count"].item() == 2 and out["channel_nonfinite"].item() == 2
    assert out["spatial_count"].tolist() == [3, 4, 3]
    assert out["spatial_nonfinite"].tolist() == [1, 0, 1]
    # channel 1's lifetime sparsity uses all four samples' means
    means1 = x[:, 1].abs().flatten(1).mean(1).numpy()
    pp1 = float(oracle.perplexity_rows(means1))
    assert out["sample_perplexity"][1].item() == pytest.approx(pp1, rel=1e-12)
    assert out["sample_sparsity"][1].item() == pytest.approx(1 - (pp1 - 1) / 3, abs=1e-12)
    assert_matches_reference(out, ref_of(x, 5), 5, torch.float64)


def test_dead_maps_count_as_sparsity_one_and_as_dead():
    x = torch.zeros(3, 2, 2, 2, dtype=torch.float64)
    x[:, 0] = 1.0  # channel 0 uniform -> 0
    x[0, 1, 0, 0] = -4.0  # channel 1: sample 0 one-hot, samples 1 and 2 dead
    m = LayerSparsity(2, bins=4)
    m.update(x)
    out = m.compute()
    assert out["spatial_mean"].tolist() == [0.0, 1.0]
    assert out["spatial_dead"].tolist() == [0, 2]
    assert out["spatial_hist"].tolist() == [[3, 0, 0, 0], [0, 0, 0, 3]]
    assert out["channel_dead"].item() == 0
    # a channel dead in every sample: lifetime perplexity 1, sparsity 1
    y = torch.zeros(4, 2, 3, 3, dtype=torch.float64)
    y[:, 0] = torch.rand(4, 3, 3, dtype=torch.float64)
    m2 = LayerSparsity(2, bins=4)
    m2.update(y)
    out2 = m2.compute()
    assert out2["sample_perplexity"][1].item() == 1.0 and out2["sample_sparsity"][1].item() == 1.0
    assert out2["spatial_dead"].tolist() == [0, 4]
    # every map dead: the population vector of each sample is dead too
    m3 = LayerSparsity(2, bins=4)
    m3.update(torch.zeros(5, 2, 2, 2))
    out3 = m3.compute()
    assert out3["channel_dead"].item() == 5 and out3["channel_mean"].item() == 1.0
    assert out3["channel_hist"].tolist() == [0, 0, 0, 5]


def test_half_precision_activations_are_measured_in_float32():
    """float16 maps summing past 65504 used to overflow to inf and read as sparsity 1."""
    x = torch.full((2, 1, 8, 8), 2000.0, dtype=torch.float16)  # uniform: sparsity 0
    m = LayerSparsity(1, bins=10)
    m.update(x)
    out = m.compute()
    assert out["spatial_mean"].item() < 1e-5
    assert out["spatial_hist"].tolist() == [[2] + [0] * 9]
    rng = np.random.default_rng(3)
    for dtype in (torch.float16, torch.bfloat16):
        xh = torch.tensor(make_activations(rng, (6, 3, 4, 4))).clamp(-6e4, 6e4).to(dtype)
        mh = LayerSparsity(3, bins=7)
        feed(mh, xh, [2, 4])
        assert_matches_reference(mh.compute(), ref_of(xh, 7), 7, torch.float32)


# --------------------------------------------------------------------------------------------
# Histogram binning on exact edges: the same rule as np.histogram on np.linspace edges
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bins", [1, 2, 3, 5, 7, 9, 10, 11, 20, 33, 60])
def test_histogram_binning_equals_np_histogram_on_and_around_edges(bins):
    edges = np.linspace(0.0, 1.0, bins + 1)
    np.testing.assert_array_equal(LayerSparsity(1, bins=bins).bin_edges.numpy(), edges)  # bit-identical
    vals = set()
    for centre in (*edges, *(k / bins for k in range(bins + 1))):
        v = float(centre)
        for _ in range(3):
            v = np.nextafter(v, -1.0)
        for _ in range(7):
            if 0.0 <= v <= 1.0:
                vals.add(v)
            v = np.nextafter(v, 2.0)
    values = np.array(sorted(vals))
    expected = np.array([np.histogram([v], bins=edges)[0].argmax() for v in values])
    got = _hist_index(torch.tensor(values), bins).numpy()
    np.testing.assert_array_equal(got, expected)
    # float32 sparsities (from float32 activations) are binned by their exact value too
    v32 = values.astype(np.float32)
    expected32 = np.array([np.histogram([float(v)], bins=edges)[0].argmax() for v in v32])
    np.testing.assert_array_equal(_hist_index(torch.tensor(v32), bins).numpy(), expected32)
    # NaN never reaches a histogram with weight (it is masked), but must index safely
    assert 0 <= _hist_index(torch.tensor([float("nan")]), bins).item() < bins


# --------------------------------------------------------------------------------------------
# merge_state, reset, state_dict, device / dtype moves, compute before update
# --------------------------------------------------------------------------------------------


def test_merge_state_of_disjoint_halves_equals_one_estimator_on_all():
    rng = np.random.default_rng(1)
    x = torch.tensor(make_activations(rng, (9, 3, 3, 3)))
    a, b, both = LayerSparsity(3, bins=6), LayerSparsity(3, bins=6), LayerSparsity(3, bins=6)
    a.update(x[:4])
    b.update(x[4:])
    both.update(x[:4])
    both.update(x[4:])
    a.merge_state(b)
    sa, sb = states(a), states(both)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same additions in the same order: bit-identical
    assert a.update_count == both.update_count == 2
    assert outputs_equal(a.compute(), both.compute())
    assert_matches_reference(a.compute(), ref_of(x, 6), 6, torch.float64)
    # merging a plain state dict (e.g. loaded from disk) works the same way
    c = LayerSparsity(3, bins=6)
    c.update(x[:4])
    c.merge_state(states(b))
    assert outputs_equal(c.compute(), both.compute())


def test_merge_state_rejects_incompatible_estimators():
    m = LayerSparsity(3, bins=6)
    with pytest.raises(ValueError, match="shape"):
        m.merge_state(LayerSparsity(4, bins=6))
    with pytest.raises(ValueError, match="shape"):
        m.merge_state(LayerSparsity(3, bins=5))
    with pytest.raises(TypeError):
        m.merge_state(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="spatial_hist"):
        m.merge_state({"spatial_sum": torch.zeros(3, dtype=torch.float64)})


def test_reset_returns_to_the_empty_state():
    fresh = LayerSparsity(2, bins=4)
    m = LayerSparsity(2, bins=4)
    m.update(torch.rand(5, 2, 3, 3))
    assert m.update_count == 1
    m.reset()
    assert m.update_count == 0
    s_m, s_f = states(m), states(fresh)
    assert all(torch.equal(s_m[k], s_f[k]) and s_m[k].dtype == s_f[k].dtype for k in s_f)
    with pytest.warns(UserWarning, match="before any update"):
        m.compute()
    y = torch.rand(3, 2, 3, 3, dtype=torch.float64)
    m.update(y)
    assert_matches_reference(m.compute(), ref_of(y, 4), 4, torch.float64)  # nothing left from before


def test_state_dict_round_trip():
    """The states are persistent buffers (not torchmetrics' non-persistent states): all 16 are
    in ``state_dict``, survive ``torch.save``/``torch.load(weights_only=True)``, and a loaded
    estimator computes and keeps streaming exactly like the original."""
    rng = np.random.default_rng(2)
    x = torch.tensor(make_activations(rng, (8, 3, 2, 3)))
    m = LayerSparsity(3, bins=5)
    m.update(x[:5])
    sd = m.state_dict()
    assert set(sd) == STATE_NAMES
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    n = LayerSparsity(3, bins=5)
    n.load_state_dict(loaded)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loaded state counts as data: no "before update" warning
        assert outputs_equal(n.compute(), m.compute())
    m.update(x[5:])
    n.update(x[5:])
    assert outputs_equal(n.compute(), m.compute())
    assert_matches_reference(n.compute(), ref_of(x, 5), 5, torch.float64)
    with pytest.raises(RuntimeError):  # wrong shapes are refused by load_state_dict
        LayerSparsity(4, bins=5).load_state_dict(loaded)


@pytest.mark.parametrize("compiled", [False, True])
def test_pickle_and_deepcopy_keep_state_and_the_compile_flag(compiled):
    x = torch.tensor(make_activations(np.random.default_rng(7), (5, 3, 3, 3)))
    m = LayerSparsity(3, bins=5, compile=compiled)
    m.merge_state(_layer_sparsity_update(x, 5))  # the state of x, without compiling anything
    for other in (pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert other.compiled is compiled and other.update_count == m.update_count == 1
        assert outputs_equal(other.compute(), m.compute())
        assert_matches_reference(other.compute(), ref_of(x, 5), 5, torch.float64)


def test_to_float64_and_cpu_keep_working():
    x = torch.tensor(make_activations(np.random.default_rng(4), (6, 2, 3, 3)))
    m = LayerSparsity(2, bins=8)
    dtypes = {k: v.dtype for k, v in m.state_dict().items()}
    assert m.to(torch.float64) is m
    assert m.to("cpu") is m
    m.double()
    assert {k: v.dtype for k, v in m.state_dict().items()} == dtypes  # counts stay int64, sums float64
    assert m.to(torch.device("cpu"), torch.float64) is m
    feed(m, x, [1, 5])
    out = m.compute()
    assert all(v.device.type == "cpu" for v in out.values())
    assert_matches_reference(out, ref_of(x, 8), 8, torch.float64)
    assert m.bin_edges.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_estimator_and_one_shot():
    x = torch.tensor(make_activations(np.random.default_rng(5), (6, 3, 4, 4)))
    m = LayerSparsity(3, bins=10).to("cuda")
    feed(m, x.cuda(), [2, 4])
    out = m.compute()
    assert all(v.device.type == "cuda" for v in out.values())
    assert_matches_reference(out, ref_of(x, 10), 10, torch.float64)
    one = LayerSparsity(3, bins=10).one_shot(x.cuda())  # the fresh estimator follows the input's device
    assert_matches_reference(one, ref_of(x, 10), 10, torch.float64)


def test_compute_before_update_warns_and_returns_nan_means():
    m = LayerSparsity(3, bins=4)
    with pytest.warns(UserWarning, match="before any update"):
        out = m.compute()
    assert set(out) == OUT_KEYS
    for k in ("spatial_mean", "spatial_std", "channel_mean", "channel_std", "sample_perplexity", "sample_sparsity"):
        assert torch.isnan(out[k]).all(), k
    for k in OUT_KEYS - {
        "spatial_mean",
        "spatial_std",
        "channel_mean",
        "channel_std",
        "sample_perplexity",
        "sample_sparsity",
    }:
        assert not out[k].any(), k
    assert out["spatial_hist"].shape == (3, 4) and out["channel_hist"].shape == (4,)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_a_type_error_naming_the_dtype(dtype):
    m = LayerSparsity(2)
    before = states(m)
    with pytest.raises(TypeError, match=r"dtype.*" + re.escape(str(dtype))):
        m.update(torch.ones(2, 2, 3, 3, dtype=dtype))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # state untouched
    with pytest.raises(TypeError, match="torch.Tensor"):
        m.update(np.ones((2, 2, 3, 3)))  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(2, 4, 5, 5), (2, 2), (3, 1, 4), (6,), ()])
def test_wrong_shape_is_a_value_error_with_expected_and_got(shape):
    m = LayerSparsity(3)
    with pytest.raises(ValueError) as err:
        m.update(torch.ones(shape))
    msg = str(err.value)
    assert "(N, 3, ...)" in msg and f"got shape {tuple(shape)}" in msg, msg


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3", None, True])
def test_bad_num_channels_or_bins_is_a_clear_error(bad):
    """A wrong kind of value is a TypeError, an int below 1 a ValueError (the _validation rule)."""
    error = ValueError if isinstance(bad, int) and not isinstance(bad, bool) else TypeError
    with pytest.raises(error, match="num_channels"):
        LayerSparsity(bad)  # type: ignore[arg-type]
    with pytest.raises(error, match="bins"):
        LayerSparsity(3, bins=bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Spatial skip: (N, C) inputs and 1×1 maps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spatial", [(), (1,), (1, 1)])
def test_spatial_axis_skipped_with_one_warning_others_measured(spatial):
    rng = np.random.default_rng(6)
    x = torch.tensor(make_activations(rng, (9, 4, *spatial)))
    m = LayerSparsity(4, bins=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for chunk in (x[:3], x[3:5], x[5:]):
            m.update(chunk)
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in caught]
    assert "spatial" in str(runtime[0].message)
    out = m.compute()
    assert torch.isnan(out["spatial_mean"]).all() and torch.isnan(out["spatial_std"]).all()
    for k in ("spatial_count", "spatial_dead", "spatial_nonfinite", "spatial_hist"):
        assert not out[k].any(), k
    assert out["channel_count"].item() + out["channel_nonfinite"].item() == 9
    assert_matches_reference(out, ref_of(x, 5), 5, torch.float64)  # channel and sample axes measured


def test_conv_maps_do_not_warn():
    m = LayerSparsity(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.update(torch.rand(3, 2, 2, 1))
        m.update(torch.rand(3, 2, 4, 4))
        m.compute()


# --------------------------------------------------------------------------------------------
# Distributed: a real two-process gloo group; compute() sums the states over the ranks
# --------------------------------------------------------------------------------------------

DDP_SHAPE = (11, 3, 3, 4)
DDP_SPLIT = 4  # rank 0 gets samples [0, 4), rank 1 gets [4, 11): unequal shards on purpose
DDP_BINS = 7


def _ddp_data() -> torch.Tensor:
    x = make_activations(np.random.default_rng(123), DDP_SHAPE)
    x[1, 0] = 0.0  # a dead map on rank 0
    x[6, 2, 0, 0] = np.nan  # a non-finite map on rank 1
    return torch.tensor(x)


def _ddp_worker(rank: int, port: int, outdir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        x = _ddp_data()
        shard = x[:DDP_SPLIT] if rank == 0 else x[DDP_SPLIT:]
        m = LayerSparsity(DDP_SHAPE[1], bins=DDP_BINS)
        feed(m, shard, [1, shard.shape[0] - 1])
        local = states(m)
        first = m.compute()
        after = states(m)  # compute must restore the local states
        second = m.compute()  # and not reduce twice
        torch.save(
            {
                "first": first,
                "second": second,
                "local_restored": all(torch.equal(local[k], after[k]) for k in local),
                "local_count": int(after["spatial_count"].sum()),
            },
            os.path.join(outdir, f"rank{rank}.pt"),
        )
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available in this build")
def test_two_process_gloo_compute_equals_one_shot_on_the_concatenation(tmp_path):
    import torch.multiprocessing as mp

    ctx = mp.spawn(_ddp_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=False)
    deadline = time.monotonic() + 240
    while not ctx.join(timeout=1):  # re-raises a worker's exception with its traceback
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("two-process gloo test did not finish in time")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    x = _ddp_data()
    ref = ref_of(x, DDP_BINS)
    assert_matches_reference(r0["first"], ref, DDP_BINS, torch.float64)
    for r in (r0, r1):
        assert outputs_equal(r["first"], r0["first"])  # every rank gets the global result
        assert outputs_equal(r["second"], r["first"])  # a second compute does not reduce again
        assert r["local_restored"]
    assert r0["local_count"] == ref_of(x[:DDP_SPLIT], DDP_BINS)["spatial_count"].sum()
    assert r1["local_count"] == ref_of(x[DDP_SPLIT:], DDP_BINS)["spatial_count"].sum()
    assert r0["local_count"] + r1["local_count"] == ref["spatial_count"].sum()
