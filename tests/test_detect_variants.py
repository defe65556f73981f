"""Tests of the label-free detector variants (signals, the slope rule, the baselines) of study v2.

References: SciPy's ``jensenshannon`` for the divergence, ``numpy.polyfit`` for slopes, the
rules worked by hand on tiny series or re-written literally from studies/PROTOCOL.md §5, and
the stop epochs that the independent exploration code (studies/explore/) recorded on the
digits tuning runs (``studies/explore/results/selected_runs.csv``), recomputed here from two
of those runs' saved histories (tests/data/explore/).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import jensenshannon
from torch import nn
from torch.utils.data import TensorDataset

from xaisparse.detect import OverfitDetector, early_stopping_epoch, evaluate_detector
from xaisparse.detect.baselines import chance_outcomes, fixed_epoch, restored_best_epoch, train_loss_plateau_epoch
from xaisparse.detect.config import DetectorConfig
from xaisparse.detect.scoring import classify, overfits
from xaisparse.detect.signals import divergence, gap, js_divergence, layer_mean, least_squares_slope, trailing_slope
from xaisparse.detect.slope import run_slope
from xaisparse.history import LAYER_COLUMNS, History

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "data" / "explore"
SELECTED = ROOT / "studies" / "explore" / "results" / "selected_runs.csv"


def two_split_history(train: dict[str, list[float]], test: dict[str, list[float]], statistic: str) -> History:
    rows = [
        (i, split, layer, statistic, float(v))
        for split, series in (("train", train), ("test", test))
        for layer, values in series.items()
        for i, v in enumerate(values)
    ]
    return History(layers=pd.DataFrame(rows, columns=LAYER_COLUMNS), layer_order=list(train))


def hist_history(counts: dict[tuple[str, str], np.ndarray]) -> History:
    """A History holding ``counts[(split, layer)]`` as (epochs, channels, bins) spatial histograms."""
    layers = sorted({layer for _, layer in counts})
    n_epochs = next(iter(counts.values())).shape[0]
    rows = [(e, s, layer, "spatial_mean", 0.5) for e in range(n_epochs) for s, layer in counts]
    h = History(layers=pd.DataFrame(rows, columns=LAYER_COLUMNS), layer_order=layers)
    for key, arr in counts.items():
        h.spatial_hist[key] = arr
        h.population_hist[key] = arr.sum(1)
        h.hist_epochs[key] = list(range(n_epochs))
    return h


# --------------------------------------------------------------------------- divergence
@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=5, max_size=5),
    st.lists(st.integers(0, 30), min_size=5, max_size=5),
)
def test_js_divergence_matches_scipy(p, q):
    p, q = np.asarray(p), np.asarray(q)
    got = js_divergence(p, q)
    if p.sum() == 0 or q.sum() == 0:
        assert math.isnan(got)
    else:
        assert got == pytest.approx(jensenshannon(p, q, base=2) ** 2, abs=1e-12)


def test_js_divergence_by_hand_and_bad_shapes():
    assert js_divergence(np.array([1, 0]), np.array([0, 1])) == 1.0  # disjoint: 1 bit
    assert js_divergence(np.array([3, 1]), np.array([6, 2])) == pytest.approx(0.0, abs=1e-15)
    # P = (1, 0), Q = (½, ½): M = (¾, ¼); JS = ½·log2(4/3) + ½·(½·log2(2/3) + ½·log2(2))
    want = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25))
    assert js_divergence(np.array([2, 0]), np.array([1, 1])) == pytest.approx(want, abs=1e-12)
    with pytest.raises(ValueError, match="same shape"):
        js_divergence(np.ones(3), np.ones(4))


def test_divergence_signal_is_the_channel_mean_of_scipy_js():
    rng = np.random.default_rng(3)
    tr = rng.integers(0, 9, size=(4, 3, 6))
    te = rng.integers(0, 9, size=(4, 3, 6))
    tr[1, 2] = 0  # an empty channel on one side is skipped at that epoch
    te[2] = 0  # every channel empty: the layer is undefined there
    h = hist_history({("train", "conv"): tr, ("test", "conv"): te})
    got = divergence(h)
    assert list(got.index) == [0, 1, 2, 3] and list(got.columns) == ["conv"]
    for e in range(4):
        js = [jensenshannon(tr[e, c], te[e, c], base=2) ** 2 for c in range(3) if tr[e, c].sum() and te[e, c].sum()]
        if js:
            assert got.loc[e, "conv"] == pytest.approx(np.mean(js), abs=1e-12)
        else:
            assert math.isnan(got.loc[e, "conv"])
    assert list(divergence(h, epochs=[1, 3]).index) == [1, 3]


# --------------------------------------------------------------------------- gap, mean, slope
def test_gap_is_train_minus_test():
    h = two_split_history(
        {"a": [0.5, 0.6, 0.7], "b": [0.1, 0.1, 0.2]}, {"a": [0.5, 0.5, 0.5], "b": [0.2, 0.1, 0.0]}, "population_mean"
    )
    g = gap(h, "population_mean")
    np.testing.assert_allclose(g["a"], [0.0, 0.1, 0.2], atol=1e-12)
    np.testing.assert_allclose(g["b"], [-0.1, 0.0, 0.2], atol=1e-12)
    with pytest.raises(ValueError, match="available"):
        gap(h, "spatial_mean")


def test_layer_mean_skips_nan():
    frame = pd.DataFrame({"a": [1.0, np.nan, np.nan], "b": [3.0, 4.0, np.nan]})
    out = layer_mean(frame)
    assert out.iloc[0] == 2.0 and out.iloc[1] == 4.0 and math.isnan(out.iloc[2])


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=12), st.integers(3, 6))
def test_slopes_match_polyfit(values, window):
    y = np.asarray(values)
    assert least_squares_slope(y) == pytest.approx(np.polyfit(np.arange(len(y)), y, 1)[0], abs=1e-8)
    got = trailing_slope(pd.Series(y), window)
    for i in range(len(y)):
        if i < window - 1:
            assert math.isnan(got.iloc[i])
        else:
            seg = y[i - window + 1 : i + 1]
            assert got.iloc[i] == pytest.approx(np.polyfit(np.arange(window), seg, 1)[0], abs=1e-8)


def slope_reference(x: np.ndarray, window: int, k: float, patience: int, warmup: int) -> int | None:
    """PROTOCOL.md §5 D4, written literally (numpy.polyfit for the slope)."""
    streak = 0
    for i in range(len(x)):
        if i < warmup + window:
            continue
        d = np.diff(x[warmup : i + 1])
        d = d[np.isfinite(d)]
        if len(d) < 3:
            continue
        sd_b = np.std(d, ddof=1) / np.sqrt(2) * np.sqrt(12 / (window**3 - window))
        seg = x[i - window + 1 : i + 1]
        ok = np.isfinite(seg)
        b = np.polyfit(np.arange(window)[ok], seg[ok], 1)[0] if ok.sum() >= 3 else np.nan
        streak = streak + 1 if np.isfinite(b) and b > k * sd_b else 0
        if streak >= patience:
            return i
    return None


def test_slope_rule_by_hand():
    # warmup 0, window 3, k 3: at i = 5 the slope of (.01, 0, .2) is .095; the 5 differences
    # (.01, -.01, .01, -.01, .2) have sd .0921 -> sd_b = .0921/√2·√½ = .0461, bar .138: quiet.
    # At i = 6 the slope of (0, .2, .4) is .2; with the difference .2 added sd = .1019 ->
    # bar 3·.1019/√2·√½ = .153 < .2: rising -> alarm at position 6.
    x = [0.0, 0.01, 0.0, 0.01, 0.0, 0.2, 0.4, 0.6]
    cfg = DetectorConfig(rule="slope", window=3, noise=3.0, threshold=0.0, patience=1, warmup=0)
    assert run_slope(x, cfg) == 6
    assert run_slope(x, DetectorConfig(rule="slope", window=3, noise=3.0, threshold=0.0, patience=2, warmup=0)) == 7
    assert run_slope(x[:6], cfg) is None


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-1, 1, allow_nan=False), st.just(float("nan"))), min_size=0, max_size=25),
    st.integers(3, 5),
    st.sampled_from([1.0, 2.0, 3.0]),
    st.integers(1, 3),
    st.integers(0, 6),
)
def test_slope_rule_matches_the_protocol_text(values, window, k, patience, warmup):
    cfg = DetectorConfig(rule="slope", window=window, noise=k, threshold=0.0, patience=patience, warmup=warmup)
    x = np.asarray(values, dtype=float)
    assert run_slope(x, cfg) == slope_reference(x, window, k, patience, warmup)
    # the detector (one series, one "layer") says the same, epoch by epoch
    det = OverfitDetector(rule="slope", window=window, noise=k, threshold=0.0, patience=patience, warmup=warmup)
    for e, v in enumerate(x):
        det.step(e, {"conv": v})
    assert det.alarm_epoch == slope_reference(x, window, k, patience, warmup)


# --------------------------------------------------------------------------- detector options
def test_exclude_undefined_layers():
    # layer "flat" is undefined at the first epoch (a 1×1 map): kept, min_layers=1.0 is unreachable
    rising = [0.3, 0.3, 0.3, 0.5, 0.7]
    h = two_split_history({"x": rising, "flat": [np.nan] * 5}, {"x": rising, "flat": [np.nan] * 5}, "spatial_mean")
    kw = dict(smooth=1, threshold=0.05, noise=0.0, patience=1, warmup=0, min_layers=1.0)
    assert OverfitDetector(exclude_undefined=False, **kw).detect(h).alarm_epoch is None
    res = OverfitDetector(**kw).detect(h)  # exclude_undefined=True is the default (study v2's D1)
    assert res.alarm_epoch == 3 and res.monitored == ["x"] and res.params["required"] == 1


def test_gap_and_divergence_detectors_by_hand():
    # train − test gap of layer a: 0, 0, 0, .1, .2 -> rises above .05 at epoch 3
    h = two_split_history({"a": [0.5, 0.5, 0.5, 0.6, 0.7]}, {"a": [0.5, 0.5, 0.5, 0.5, 0.5]}, "population_mean")
    det = OverfitDetector(
        signal="gap", statistic="population_mean", smooth=1, threshold=0.05, noise=0.0, patience=1, warmup=0
    )
    assert det.detect(h).alarm_epoch == 3
    assert "gap" in det.detect(h).summary()
    # histograms identical for 3 epochs, then disjoint: JS 0, 0, 0, 1
    same = np.array([[[4, 0], [0, 4]]] * 3 + [[[4, 0], [4, 0]]])
    other = np.array([[[4, 0], [0, 4]]] * 3 + [[[0, 4], [0, 4]]])
    hh = hist_history({("train", "conv"): same, ("test", "conv"): other})
    res = OverfitDetector(signal="divergence", smooth=1, threshold=0.5, noise=0.0, patience=1, warmup=0).detect(hh)
    assert res.alarm_epoch == 3 and res.evidence.value.tolist() == pytest.approx([0, 0, 0, 1])


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(signal="loss"), ValueError),
        (dict(rule="plateau"), ValueError),
        (dict(rule="slope", window=2), ValueError),
        (dict(exclude_undefined=1), TypeError),
    ],
)
def test_bad_variant_parameters(kwargs, exc):
    with pytest.raises(exc):
        OverfitDetector(**kwargs)


class _Poison:
    def __getattr__(self, name):
        raise AssertionError("the detector read history.metrics")

    def __getitem__(self, key):
        raise AssertionError("the detector read history.metrics")


def fixture(name: str) -> History:
    return History.load(FIXTURES / name)


@pytest.mark.parametrize("variant", ["D1", "D2", "D3", "D4"])
def test_variants_never_read_metrics(variant):
    from studies.methods import DETECTORS

    h = fixture("digits-clean-vgg_small-s4")
    want = DETECTORS[variant].detect(h).alarm_epoch
    h.metrics = _Poison()
    assert DETECTORS[variant].detect(h).alarm_epoch == want


# --------------------------------------------------------------------------- tuning-run stops
@pytest.mark.parametrize("run", ["digits-clean-vgg_small-s4", "digits-noise20-small_cnn-s0"])
def test_stops_reproduce_the_exploration(run):
    """The package recomputes every stop the exploration code recorded on these tuning runs."""
    from studies.methods import LABELS, stops

    table = pd.read_csv(SELECTED)
    table = table[table.run == run]
    assert len(table) == 9
    got = stops(fixture(run))
    ids = {label: key for key, (label, _) in LABELS.items()}
    for row in table.itertuples():
        want = None if pd.isna(row.stop) else int(row.stop)
        assert got[ids[row.method]] == want, row.method
    assert sum(v is not None for v in got.values()) >= 8  # the comparison is not vacuous


def test_online_equals_offline_in_training(tmp_path):
    """Fed by fit after every epoch, each variant ends where it ends offline on the saved run."""
    from studies.methods import DETECTORS
    from xaisparse.monitor import SparsityMonitor
    from xaisparse.train import fit

    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 8, 8), torch.randint(0, 3, (96,))
    train, test = TensorDataset(x[:48], y[:48]), TensorDataset(x[48:], y[48:])
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    dets = [
        OverfitDetector.from_config(DetectorConfig(**{**DETECTORS[k].config.to_dict(), "warmup": 1, "noise": 0.5}))
        for k in ("D2", "D3", "D4")
    ]
    # the first is fit's detector, the others plain epoch-end callbacks: both online paths
    h = fit(
        net,
        train,
        test,
        epochs=8,
        lr=0.05,
        batch_size=16,
        progress=False,
        detector=dets[0],
        callbacks=dets[1:],
        monitor=SparsityMonitor(net, ["1", "3"]),
    )
    saved = History.load(h.save(tmp_path / "run"))
    assert h.detection is not None and h.detection.alarm_epoch == dets[0].alarm_epoch
    for det in dets:
        online, offline = det.result(), det.clone().detect(saved)
        assert online.alarm_epoch == offline.alarm_epoch
        pd.testing.assert_frame_equal(online.evidence, offline.evidence)
        assert len(online.epochs) == 9
    assert any(d.alarm_epoch is not None for d in dets)  # not vacuous


# --------------------------------------------------------------------------- baselines, scoring
def test_train_loss_plateau_by_hand():
    loss = pd.Series([2.0, 1.0, 0.5, 0.49, 0.485])
    # window 2: (2-.5)/2 = .75, (1-.49)/1 = .51, (.5-.485)/.5 = .03 < .05 -> epoch 4
    assert train_loss_plateau_epoch(loss, window=2, tau=0.05) == 4
    assert train_loss_plateau_epoch(loss, window=2, tau=0.02) is None
    assert train_loss_plateau_epoch(pd.Series([1.0, 1.0]), window=1, tau=0.0) is None  # 0 < 0 is false
    with pytest.raises(TypeError, match="Series"):
        train_loss_plateau_epoch([1.0, 2.0])


def test_fixed_restored_and_chance():
    assert fixed_epoch(list(range(61)), 36) == 36 and fixed_epoch(list(range(9)), 36) is None
    loss = pd.Series([1.0, 0.6, 0.7, 0.5, 0.9, 0.4])
    stop = early_stopping_epoch(loss, patience=1)
    assert stop == 2 and restored_best_epoch(loss, stop) == 1 and restored_best_epoch(loss, None) is None
    # e* = 3, overfits; candidates 5..9: leads -2..-6 -> hit (5), miss (6..9)
    epochs = list(range(10))
    rates = chance_outcomes(epochs, lambda s: classify(True, s, 3)[0])
    assert rates == {"hit": 0.2, "miss": 0.8}


def test_relative_rise_by_hand():
    loss = pd.Series([1.0, 0.40, 0.41, 0.415])  # rises by 3.75 % after its minimum
    assert overfits(loss, 0.05, relative=True) == (1, False)
    assert overfits(loss, 0.03, relative=True) == (1, True)
    assert overfits(loss, 0.0) == (1, True)
    assert overfits(pd.Series([1.0, 0.5]), 0.0) == (1, False)
    h = History()
    for e, v in enumerate(loss):
        h.record_epoch(e, {"test": {"loss": float(v), "accuracy": 0.5}})
    rows = [(e, "test", "c", "spatial_mean", 0.3) for e in range(4)]
    h.layers = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    h.layer_order = ["c"]
    assert not evaluate_detector(h, min_rise=0.05, relative_rise=True).runs.overfits.any()
    assert evaluate_detector(h, min_rise=0.03, relative_rise=True).runs.overfits.all()
    with pytest.raises(TypeError, match="relative_rise"):
        evaluate_detector(h, relative_rise="yes")
