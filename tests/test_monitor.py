"""Tests of xaisparse.monitor.SparsityMonitor against independent references.

Every number the monitor reports is compared with a one-shot NumPy/SciPy computation of
DESIGN §1 on *all* the data at once, on activations captured independently with Captum's
``LayerActivation`` (never with the project's own recorder, estimator or functional code).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation
from torch import nn
from torchvision.models import resnet18

from tests import oracle
from xaisparse.monitor import CHANNEL_STATISTICS, LAYER_STATISTICS, SparsityMonitor, SparsityReport
from xaisparse.testing import count_hooks

BINS = 10
ATOL = 2e-5  # float32 activations and float32 maths inside the estimator vs float64 reference


# -- independent reference (NumPy + SciPy, DESIGN §1) ---------------------------------------------
def reference(acts: torch.Tensor) -> dict[str, np.ndarray | float]:
    """DESIGN §1 statistics of one layer's activations ``(N, C, H, W)``, all data at once."""
    a = np.abs(acts.detach().double().cpu().numpy())
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1)
    finite = np.isfinite(flat).all(-1)  # (N, C) maps free of NaN/Inf
    clean = np.where(np.isfinite(flat), flat, 0.0)
    means = clean.mean(-1)  # (N, C) spatial means of |a|
    out: dict[str, np.ndarray | float] = {"finite": finite, "nonfinite": (~finite).sum(0).astype(float)}
    if flat.shape[-1] > 1:
        s = np.where(finite, oracle.sparsity_rows(clean), np.nan)  # (N, C) per-map sparsity
        dead = finite & (clean.sum(-1) == 0)
        count = finite.sum(0)
        out.update(
            maps=s,
            spatial_mean=np.nanmean(s, axis=0),
            dead_fraction=dead.sum(0) / count,
            count=count.astype(float),
            layer_spatial_mean=float(np.nanmean(s)),
            layer_dead_fraction=float(dead.sum() / finite.sum()),
        )
    # lifetime: one channel's spatial means over all finite samples
    out["sample_sparsity"] = oracle.sparsity_rows(np.where(finite, means, 0.0).T, finite.sum(0))
    # population: per sample, the vector of channel means (rows with any non-finite map excluded)
    rows = finite.all(1)
    pop = oracle.sparsity_rows(means[rows])
    out["population"] = pop
    out["channel_mean"] = float(pop.mean())
    return out


def channel_values(report: SparsityReport, split: str, layer: str, statistic: str) -> np.ndarray:
    t = report.channels
    rows = t[(t.split == split) & (t.layer == layer) & (t.statistic == statistic)].sort_values("channel")
    assert list(rows.channel) == list(range(len(rows))), "channels must be 0..C-1, once each"
    return rows.value.to_numpy()


def assert_hist_matches(got: np.ndarray, values: np.ndarray, bins: int, tol: float = 1e-5) -> int:
    """``got`` equals ``np.histogram(values, np.linspace(0, 1, bins + 1))``.

    A value within ``tol`` of an interior bin edge may legitimately land on either side
    (float32 inside the estimator vs float64 here); such values get that freedom and nothing
    else. Returns how many values were that close (0 means the comparison was exact).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    values = values[np.isfinite(values)]
    ref, _ = np.histogram(values, bins=edges)
    inner = edges[1:-1]
    near = np.abs(values[:, None] - inner[None, :]).min(1) < tol if inner.size else np.zeros(len(values), bool)
    assert got.sum() == len(values)
    if not near.any():
        np.testing.assert_array_equal(got, ref)
        return 0
    sure, _ = np.histogram(values[~near], bins=edges)
    lo = np.histogram(np.clip(values[near] - tol, 0, 1), bins=edges)[0]
    hi = np.histogram(np.clip(values[near] + tol, 0, 1), bins=edges)[0]
    assert np.all(got >= sure) and np.all(got <= sure + lo + hi)
    return int(near.sum())


def check_layer(report: SparsityReport, split: str, layer: str, acts: torch.Tensor) -> None:
    """All per-channel, per-layer and histogram outputs of one (split, layer) vs the reference."""
    ref = reference(acts)
    c = acts.shape[1]
    close = dict(rtol=0, atol=ATOL)
    np.testing.assert_allclose(channel_values(report, split, layer, "sample_sparsity"), ref["sample_sparsity"], **close)
    np.testing.assert_array_equal(channel_values(report, split, layer, "nonfinite"), ref["nonfinite"])
    np.testing.assert_allclose(report.layer_value(split, layer, "channel_mean"), ref["channel_mean"], **close)
    assert report.layer_value(split, layer, "num_channels") == c
    assert report.layer_value(split, layer, "samples") == ref["finite"].sum(0).max()
    assert_hist_matches(report.channel_hist[(split, layer)], ref["population"], BINS)
    if "maps" in ref:
        np.testing.assert_allclose(channel_values(report, split, layer, "spatial_mean"), ref["spatial_mean"], **close)
        np.testing.assert_allclose(
            channel_values(report, split, layer, "dead_fraction"), ref["dead_fraction"], rtol=0, atol=1e-12
        )
        np.testing.assert_array_equal(channel_values(report, split, layer, "count"), ref["count"])
        np.testing.assert_allclose(report.layer_value(split, layer, "spatial_mean"), ref["layer_spatial_mean"], **close)
        np.testing.assert_allclose(
            report.layer_value(split, layer, "dead_fraction"), ref["layer_dead_fraction"], atol=1e-12
        )
        hist = report.spatial_hist[(split, layer)]
        assert hist.shape == (c, BINS)
        for ch in range(c):
            assert_hist_matches(hist[ch], ref["maps"][:, ch], BINS)


# -- models ----------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Two conv blocks; conv1's channel 0 is always dead and channel 1 is dead on some samples."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(8 * 4, 10))
        with torch.no_grad():
            self.conv1.weight[0].zero_()
            self.conv1.bias[0] = 0.0  # exactly zero output: a dead channel
            self.conv1.weight[1].zero_()
            self.conv1.weight[1, 0, 1, 1] = 1.0  # relu(x[:, 0] - 3): dead unless some pixel > 3
            self.conv1.bias[1] = -3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu2(self.conv2(self.relu1(self.conv1(x)))))


LAYERS = ["relu1", "relu2"]


def batches(seed: int, n_batches: int = 3, batch: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # Per-sample scales so that the half-dead channel is dead on some samples only.
    scale = torch.tensor([0.5, 1.0, 1.5, 2.0] * (n_batches * batch // 4 + 1))[: n_batches * batch]
    x = torch.randn(n_batches * batch, 3, 32, 32, generator=g) * scale.view(-1, 1, 1, 1)
    return list(x.split(batch))


def captum_acts(model: nn.Module, layers: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each layer's activations on the concatenated batches, with Captum (last call of a module)."""
    mods = [model.get_submodule(name) for name in layers]
    with torch.no_grad():
        acts = LayerActivation(model, mods).attribute(x)
    return {name: a.detach().clone() for name, a in zip(layers, acts)}


def run(monitor: SparsityMonitor, xs: list[torch.Tensor], split: str = "test") -> None:
    with monitor.track(split=split), torch.no_grad():
        for x in xs:
            monitor.model(x)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN().eval()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


# -- agreement with the reference ------------------------------------------------------------------
def test_small_cnn_matches_captum_numpy_reference(cnn: SmallCNN) -> None:
    xs = batches(1)
    monitor = SparsityMonitor(cnn, bins=BINS)
    run(monitor, xs)
    report = monitor.compute()
    assert monitor.layer_names == LAYERS and monitor.splits == ["test"]
    acts = captum_acts(cnn, LAYERS, torch.cat(xs))
    for name in LAYERS:
        check_layer(report, "test", name, acts[name])
    # The crafted dead channels are there and are reported as such.
    dead = channel_values(report, "test", "relu1", "dead_fraction")
    assert dead[0] == 1.0 and 0.0 < dead[1] < 1.0, dead
    assert report.spatial_hist[("test", "relu1")][0, -1] == 12  # dead maps count as sparsity 1
    # Non-trivial values: not all maps dead or uniform.
    assert 0.05 < report.layer_value("test", "relu2") < 0.95


def test_resnet18_matches_captum_numpy_reference(resnet: nn.Module) -> None:
    xs = batches(2, n_batches=2)
    x = torch.cat(xs)
    monitor = SparsityMonitor(resnet, bins=BINS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(monitor, xs)
    report = monitor.compute()
    sites = monitor.layer_names
    assert len(sites) == 17 and "layer1.0.relu#2" in sites and "layer4.1.relu#2" in sites
    # layer4 sees 1x1 maps at CIFAR size: one warning per such call site, nothing else warns.
    one_by_one = [s for s in sites if s.startswith("layer4")]
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == len(one_by_one) == 4 and all("no spatial extent" in m for m in msgs)

    # Captum returns the last call of a reused module: the "#2" call sites, and the stem relu.
    last_calls = ["relu"] + [s.split("#")[0] for s in sites if s.endswith("#2")]
    acts = captum_acts(resnet, last_calls, x)
    for site in ["relu"] + [s for s in sites if s.endswith("#2")]:
        check_layer(report, "test", site, acts[site.split("#")[0]])
    # The first call of a block's relu is relu(bn1(...)): also independent via Captum on bn1.
    bn1 = captum_acts(resnet, ["layer1.0.bn1", "layer3.1.bn1"], x)
    check_layer(report, "test", "layer1.0.relu", bn1["layer1.0.bn1"].clamp(min=0))
    check_layer(report, "test", "layer3.1.relu", bn1["layer3.1.bn1"].clamp(min=0))
    # 1x1 sites: spatial stats left out (no NaN rows), channel/lifetime stats present and finite.
    for site in one_by_one:
        assert len(channel_values(report, "test", site, "spatial_mean")) == 0
        assert len(channel_values(report, "test", site, "count")) == 0
        assert np.isfinite(channel_values(report, "test", site, "sample_sparsity")).all()
        assert np.isfinite(report.layer_value("test", site, "channel_mean"))


def test_one_by_one_maps_warn_once_and_report_channel_and_lifetime() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3),
        nn.AdaptiveAvgPool2d(1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(5, 2),
    ).eval()
    g = torch.Generator().manual_seed(4)
    xs = list(torch.randn(12, 1, 9, 9, generator=g).split(4))
    # the ReLU after the global pooling is left out of the default selection (as a squeeze-excitation gate)
    assert SparsityMonitor(model).recorder.modules == ["1"]
    monitor = SparsityMonitor(model, nn.ReLU, bins=BINS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(monitor, xs[:2], split="train")
        run(monitor, [xs[2][:3]])  # another split, another batch shape: still one warning for the layer
        report = monitor.compute()
    runtime = [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(runtime) == 1, [str(w.message) for w in caught]
    assert "layer '4' has no spatial extent (activations (N, 5, 1, 1))" in str(runtime[0].message)
    assert "channel axis" in str(runtime[0].message)
    acts = captum_acts(model, ["1", "4"], torch.cat(xs[:2]))
    check_layer(report, "train", "1", acts["1"])
    check_layer(report, "train", "4", acts["4"])
    # no NaN rows: the spatial statistics are not in the tables for this layer
    layer_stats = set(report.layers[report.layers.layer == "4"].statistic)
    assert "spatial_mean" not in layer_stats and "dead_fraction" not in layer_stats and "channel_mean" in layer_stats
    channel_stats = set(report.channels[report.channels.layer == "4"].statistic)
    assert channel_stats == {"nonfinite", "sample_sparsity", "sample_perplexity"}
    assert report.channels.value[report.channels.layer == "4"].notna().all()
    assert report.layer_value("train", "4", "samples") == 8


def test_nan_activations_counted_and_excluded() -> None:
    class InjectNonFinite(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[0, 1, 2, 2] = float("nan")  # sample 0, channel 1
            x[2, 1, 0, 0] = float("nan")  # sample 2, channel 1
            x[3, 2, 1, 3] = float("inf")  # sample 3, channel 2
            return x

    torch.manual_seed(5)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), InjectNonFinite(), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)
    ).eval()
    xs = list(torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(6)).split(4))
    monitor = SparsityMonitor(model, nn.ReLU, bins=BINS)  # (named: torch.fx cannot trace the injection)
    run(monitor, xs)
    report = monitor.compute()
    # The injection acts per forward: capture batch by batch, then concatenate.
    acts = torch.cat([captum_acts(model, ["2"], x)["2"] for x in xs])
    assert torch.isnan(acts).any() and torch.isinf(acts).any()
    check_layer(report, "test", "2", acts)
    np.testing.assert_array_equal(channel_values(report, "test", "2", "nonfinite"), [0, 4, 2, 0])
    np.testing.assert_array_equal(channel_values(report, "test", "2", "count"), [8, 4, 6, 8])
    # Layer level: 6 non-finite maps (the unit of the per-channel column and of the widgets).
    assert report.layer_value("test", "2", "nonfinite") == 6
    for stat in ("spatial_mean", "spatial_std", "sample_sparsity", "sample_perplexity"):
        assert np.isfinite(channel_values(report, "test", "2", stat)).all(), stat
    for stat in ("spatial_mean", "dead_fraction", "channel_mean", "sample_mean"):
        assert np.isfinite(report.layer_value("test", "2", stat)), stat
    assert report.spatial_hist[("test", "2")].sum(1).tolist() == [8, 4, 6, 8]
    assert report.channel_hist[("test", "2")].sum() == 8 - 6  # samples 0, 2, 3 of each batch dropped


def test_nan_in_one_by_one_maps_counted() -> None:
    """Non-finite values are counted also where the spatial axis is skipped (1x1 maps)."""

    class InjectNaN(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.clone()
            x[1, 2] = float("nan")
            return x

    x = torch.rand(4, 3, 1, 1) + 0.1
    model = nn.Sequential(nn.Conv2d(3, 3, 1), InjectNaN(), nn.ReLU())
    monitor = SparsityMonitor(model, nn.ReLU, bins=BINS)  # (named: torch.fx cannot trace the injection)
    with pytest.warns(RuntimeWarning, match="no spatial extent"):
        run(monitor, [x])
    report = monitor.compute()
    np.testing.assert_array_equal(channel_values(report, "test", "2", "nonfinite"), [0, 0, 1])
    assert report.layer_value("test", "2", "nonfinite") == 1
    acts = captum_acts(model, ["2"], x)["2"]
    assert torch.isnan(acts[1, 2]).all() and torch.isfinite(acts[[0, 2, 3]]).all()
    check_layer(report, "test", "2", acts)


# -- splits and reset ------------------------------------------------------------------------------
def test_two_splits_keep_separate_statistics_and_reset(cnn: SmallCNN) -> None:
    x_train, x_test = batches(7, n_batches=2), batches(8, n_batches=3)
    monitor = SparsityMonitor(cnn, bins=BINS)
    run(monitor, x_train, "train")
    run(monitor, x_test, "test")
    run(monitor, x_train[:1], "train")  # a second block of the same split accumulates
    report = monitor.compute()
    assert monitor.splits == ["train", "test"]
    train_acts = captum_acts(cnn, LAYERS, torch.cat(x_train + x_train[:1]))
    test_acts = captum_acts(cnn, LAYERS, torch.cat(x_test))
    for name in LAYERS:
        check_layer(report, "train", name, train_acts[name])
        check_layer(report, "test", name, test_acts[name])
    assert report.layer_value("train", "relu1", "samples") == 12
    assert report.layer_value("test", "relu1", "samples") == 12

    monitor.reset("train")
    after = monitor.compute()
    assert set(after.channels.split) == {"test"} and set(after.layers.split) == {"test"}
    assert set(after.spatial_hist) == {("test", n) for n in LAYERS}
    pd.testing.assert_frame_equal(
        after.channels, report.channels[report.channels.split == "test"].reset_index(drop=True)
    )
    run(monitor, x_test[:1], "train")  # the train split starts afresh
    check_layer(monitor.compute(), "train", "relu2", captum_acts(cnn, ["relu2"], x_test[0])["relu2"])

    monitor.reset()
    with pytest.warns(UserWarning, match="before any activation"):
        empty = monitor.compute()
    assert empty.channels.empty and empty.layers.empty


# -- lifecycle, model integrity, grad modes --------------------------------------------------------
def test_hooks_removed_after_normal_exit_and_after_exception(cnn: SmallCNN) -> None:
    monitor = SparsityMonitor(cnn)
    assert count_hooks(cnn) == 0  # nothing registered in __init__
    with monitor.track(split="test"):
        assert count_hooks(cnn) > 0
        cnn(batches(9, 1)[0])
    assert count_hooks(cnn) == 0

    with pytest.raises(ZeroDivisionError):
        with monitor.track(split="test"):
            cnn(batches(9, 1)[0])
            1 / 0  # noqa: B018
    assert count_hooks(cnn) == 0
    # The monitor is usable again after the exception, and the first block's data is kept.
    run(monitor, batches(9, 1))
    assert monitor.compute().layer_value("test", "relu1", "samples") == 12
    assert count_hooks(cnn) == 0


@pytest.mark.filterwarnings("ignore:layer .* has no spatial extent:RuntimeWarning")
def test_resnet_hooks_removed_after_exception(resnet: nn.Module) -> None:
    monitor = SparsityMonitor(resnet)
    with pytest.raises(RuntimeError, match="boom"):
        with monitor.track(split="val"):
            resnet(torch.randn(2, 3, 32, 32))
            raise RuntimeError("boom")
    assert count_hooks(resnet) == 0


@pytest.mark.filterwarnings("ignore:layer .* has no spatial extent:RuntimeWarning")
def test_model_unchanged(resnet: nn.Module) -> None:
    before = {k: v.clone() for k, v in resnet.state_dict().items()}
    attrs = set(vars(resnet))
    kinds = [(n, type(m)) for n, m in resnet.named_modules()]
    monitor = SparsityMonitor(resnet)
    run(monitor, batches(10, 2))
    monitor.compute()
    after = resnet.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not resnet.training and set(vars(resnet)) == attrs
    assert [(n, type(m)) for n, m in resnet.named_modules()] == kinds


def test_track_in_train_mode_with_grad(cnn: SmallCNN) -> None:
    """Training-time tracking: gradients flow untouched; the training flag stays as it was."""
    cnn.train()
    xs = batches(11, n_batches=2)
    ref_grads = []
    for x in xs:
        cnn.zero_grad()
        cnn(x).square().mean().backward()
        ref_grads.append([p.grad.clone() for p in cnn.parameters()])
    monitor = SparsityMonitor(cnn, bins=BINS)
    with monitor.track(split="train"):
        for x, ref in zip(xs, ref_grads):
            cnn.zero_grad()
            out = cnn(x)
            assert out.requires_grad
            out.square().mean().backward()
            for p, g in zip(cnn.parameters(), ref):
                torch.testing.assert_close(p.grad, g, rtol=0, atol=0)
    assert cnn.training
    acts = captum_acts(cnn, LAYERS, torch.cat(xs))
    report = monitor.compute()
    for name in LAYERS:
        check_layer(report, "train", name, acts[name])


@pytest.mark.parametrize("order", ["no_grad_outside", "no_grad_inside"])
def test_track_within_no_grad(cnn: SmallCNN, order: str) -> None:
    xs = batches(12, n_batches=2)
    monitor = SparsityMonitor(cnn, bins=BINS)
    if order == "no_grad_outside":
        with torch.no_grad(), monitor.track(split="test"):
            for x in xs:
                cnn(x)
    else:
        with monitor.track(split="test"):
            with torch.no_grad():
                for x in xs:
                    cnn(x)
    acts = captum_acts(cnn, LAYERS, torch.cat(xs))
    for name in LAYERS:
        check_layer(monitor.compute(), "test", name, acts[name])


def test_forwards_outside_track_are_not_recorded(cnn: SmallCNN) -> None:
    monitor = SparsityMonitor(cnn, bins=BINS)
    xs = batches(13, n_batches=2)
    run(monitor, xs[:1])
    with torch.no_grad():
        cnn(xs[1])  # not tracked
    acts = captum_acts(cnn, LAYERS, xs[0])
    check_layer(monitor.compute(), "test", "relu2", acts["relu2"])


def test_compute_before_data_warns_and_returns_empty_tables(cnn: SmallCNN) -> None:
    monitor = SparsityMonitor(cnn)
    with pytest.warns(UserWarning, match="track"):
        report = monitor.compute()
    assert list(report.channels.columns) == ["split", "layer", "channel", "statistic", "value"]
    assert list(report.layers.columns) == ["split", "layer", "statistic", "value"]
    assert report.channels.empty and report.layers.empty
    assert report.spatial_hist == {} and report.channel_hist == {}
    with pytest.raises(KeyError):
        report.layer_value("test", "relu1")


def test_nested_track_raises(cnn: SmallCNN) -> None:
    monitor = SparsityMonitor(cnn, bins=BINS)
    xs = batches(14, n_batches=1)
    with monitor.track(split="train"):
        with pytest.raises(RuntimeError, match="nest"):
            with monitor.track(split="test"):
                pass  # pragma: no cover
        with torch.no_grad():
            cnn(xs[0])  # the outer block still records, under its own split
    assert count_hooks(cnn) == 0
    assert monitor.splits == ["train"]
    check_layer(monitor.compute(), "train", "relu1", captum_acts(cnn, ["relu1"], xs[0])["relu1"])


def test_bad_arguments(cnn: SmallCNN) -> None:
    with pytest.raises(ValueError, match="bins"):
        SparsityMonitor(cnn, bins=0)
    monitor = SparsityMonitor(cnn)
    with pytest.raises(ValueError, match="split"):
        with monitor.track(split=""):
            pass  # pragma: no cover
    assert count_hooks(cnn) == 0


# -- report shape ----------------------------------------------------------------------------------
def test_report_tables_are_tidy(cnn: SmallCNN) -> None:
    monitor = SparsityMonitor(cnn, bins=BINS)
    run(monitor, batches(15, 1), "train")
    run(monitor, batches(16, 1), "test")
    report = monitor.compute()
    ch, ly = report.channels, report.layers
    assert list(ch.columns) == ["split", "layer", "channel", "statistic", "value"]
    assert list(ly.columns) == ["split", "layer", "statistic", "value"]
    n_channels = {"relu1": 6, "relu2": 8}
    assert len(ch) == 2 * sum(n_channels.values()) * len(CHANNEL_STATISTICS)
    assert not ch.duplicated(["split", "layer", "channel", "statistic"]).any()
    assert set(ch.statistic) == set(CHANNEL_STATISTICS)
    for (_split, layer), group in ch.groupby(["split", "layer"]):
        assert sorted(group.channel.unique()) == list(range(n_channels[layer]))
        per_channel = group.groupby("channel").statistic.agg(lambda s: tuple(sorted(s)))
        assert set(per_channel) == {tuple(sorted(CHANNEL_STATISTICS))}
    assert len(ly) == 2 * 2 * len(LAYER_STATISTICS)
    assert not ly.duplicated(["split", "layer", "statistic"]).any()
    assert set(ly.statistic) == set(LAYER_STATISTICS)
    assert pd.api.types.is_integer_dtype(ch.channel) and pd.api.types.is_float_dtype(ch.value)
    assert pd.api.types.is_float_dtype(ly.value)
    assert (
        set(report.spatial_hist) == set(report.channel_hist) == {(s, l) for s in ("train", "test") for l in n_channels}
    )
    assert report.spatial_hist[("train", "relu2")].shape == (8, BINS)
    assert report.channel_hist[("test", "relu1")].shape == (BINS,)
    np.testing.assert_array_equal(report.bin_edges, np.linspace(0, 1, BINS + 1))


# -- models without conv-following activation modules; in-place writes after a recorded layer -----
class ChannelsLastBlock(nn.Module):
    """ConvNeXt's block shape: depth-wise conv, then LayerNorm/Linear/GELU/Linear on (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.dwconv = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.norm = nn.LayerNorm(6)
        self.pwconv1 = nn.Linear(6, 10)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(10, 6)
        self.head = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.pwconv2(self.act(self.pwconv1(self.norm(self.dwconv(x).permute(0, 2, 3, 1)))))
        return self.head((x + y.permute(0, 3, 1, 2)).mean((2, 3)))


def measure(cls: type[nn.Module], seed: int) -> tuple[nn.Module, torch.Tensor, SparsityMonitor]:
    """A fresh ``cls()`` in eval mode, two batches through a default monitor; returns the data too."""
    torch.manual_seed(0)
    model = cls().eval()
    xs = batches(seed, n_batches=2)
    monitor = SparsityMonitor(model, bins=BINS)
    run(monitor, xs)
    return model, torch.cat(xs), monitor


def test_channels_last_activation_matches_numpy_on_the_permuted_tensor() -> None:
    model, x, monitor = measure(ChannelsLastBlock, 3)
    report = monitor.compute()
    assert monitor.layer_names == ["act"]
    nhwc = captum_acts(model, ["act"], x)["act"]
    assert nhwc.shape == (8, 32, 32, 10)  # channels last
    # channels are the Linear's 10 output features (the last axis), maps the 32x32 grid
    check_layer(report, "test", "act", nhwc.permute(0, 3, 1, 2))
    assert report.layer_value("test", "act", "num_channels") == 10


class FunctionalBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 3)
        self.bn = nn.BatchNorm2d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True).mean((2, 3))


def test_functional_activation_matches_numpy_on_an_independent_forward() -> None:
    model, x, monitor = measure(FunctionalBlock, 4)
    report = monitor.compute()
    assert monitor.layer_names == ["relu"]
    with torch.no_grad():
        acts = torch.relu(model.bn(model.conv(x)))  # computed here, without hooks
    assert (acts == 0).any() and (acts > 0).any()
    check_layer(report, "test", "relu", acts)


class WritesAfterReLU(nn.Module):
    """A residual ``+=`` into the recorded activation (EfficientNetV2's FusedMBConv does this)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.conv(x))
        out += x  # in place, after the hook
        return out


def test_in_place_write_after_the_layer_does_not_change_the_measurement() -> None:
    model, x, monitor = measure(WritesAfterReLU, 5)
    with torch.no_grad():
        acts = torch.relu(model.conv(x))
    check_layer(monitor.compute(), "test", "relu", acts)  # the values before the write
