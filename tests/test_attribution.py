"""xaisparse.attribution against independent references: Captum called directly, hand-built
ground-truth models, NumPy/SciPy on Captum's raw output (tests/oracle.py), manual ablation."""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from torch import nn

from tests.oracle import perplexity_rows, sparsity_rows
from xaisparse import UnknownLayerError
from xaisparse.attribution import (
    ALGORITHMS,
    GRADIENT_ALGORITHMS,
    IMPORTANCES,
    attribute,
    attribution_map,
    attribution_sparsity,
    attribution_sparsity_table,
    channel_attributions,
    channel_table,
    compare_models,
)
from xaisparse.testing import count_hooks

captum_attr = pytest.importorskip("captum.attr")

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Captum's own notice when the reference calls below get inputs without requires_grad
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


# -- models ------------------------------------------------------------------------------------


def small_net(seed: int = 0, classes: int = 3, width: int = 4) -> nn.Module:
    """Conv → BN → ReLU → dropout → linear: eval and train mode differ."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Flatten(),
        nn.Linear(width * 8 * 8, classes),
    ).eval()


class QuadrantNet(nn.Module):
    """Three logits that depend only on the pixels of one quadrant (the input is masked first)."""

    def __init__(self, quadrant: tuple[int, int], size: int = 8) -> None:
        super().__init__()
        torch.manual_seed(1)
        mask = torch.zeros(1, 1, size, size)
        h = size // 2
        mask[..., quadrant[0] * h : (quadrant[0] + 1) * h, quadrant[1] * h : (quadrant[1] + 1) * h] = 1
        self.register_buffer("mask", mask)
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * size * size, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * self.mask)


class ChannelNet(nn.Module):
    """Only channel ``k`` of ``act`` reaches the output: a 1×1 read-out with zero weight elsewhere."""

    def __init__(self, k: int, channels: int = 6) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = nn.Conv2d(1, channels, 3, padding=1)
        with torch.no_grad():
            self.conv.bias.fill_(0.5)  # every channel alive on positive inputs
        self.act = nn.ReLU()
        self.read = nn.Conv2d(channels, 1, 1)
        with torch.no_grad():
            self.read.weight.zero_()
            self.read.weight[0, k] = 1.0
            self.read.bias.zero_()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1, 3))
        with torch.no_grad():
            self.head[2].weight.copy_(torch.tensor([[1.0], [-1.0], [0.5]]))
            self.head[2].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.read(self.act(self.conv(x))))


class FlagNet(nn.Module):
    """Channel 0: alive, weak; channel 1: dead unless a pixel exceeds 3, then decisive; channel 2: alive, unused."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1)
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.copy_(torch.tensor([0.0, -3.0, 1.0]))
        self.act = nn.ReLU()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.1, 10.0, 0.0], [0.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act(self.conv(x))))


class Failing(nn.Module):
    """Identity that raises on its ``fail_at``-th call (to break a Captum call half-way)."""

    def __init__(self, fail_at: int) -> None:
        super().__init__()
        self.fail_at, self.calls = fail_at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("boom")
        return x


class BatchSizes(nn.Module):
    """Identity that records the batch sizes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(int(x.shape[0]))
        return x


def images(n: int = 4, size: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g) + 0.05


def seed(s: int) -> None:
    """Captum draws from torch (NoiseTunnel) and from NumPy (GradientShap's baselines and alphas)."""
    torch.manual_seed(s)
    np.random.seed(s)  # noqa: NPY002 - Captum uses the legacy global NumPy generator


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


# -- 1. the wrappers return exactly Captum's tensors ---------------------------------------------

CASES = [
    ("integrated_gradients", False, {"n_steps": 8}),
    ("integrated_gradients", False, {"n_steps": 6, "method": "riemann_trapezoid", "internal_batch_size": 5}),
    ("integrated_gradients", False, {"n_steps": 5, "baselines": 0.5, "return_convergence_delta": True}),
    ("saliency", False, {}),
    ("saliency", False, {"abs": False}),
    ("input_x_gradient", False, {}),
    ("gradient_shap", False, {"baselines": torch.rand(3, 1, 8, 8), "n_samples": 3, "stdevs": 0.1}),
    ("occlusion", False, {"sliding_window_shapes": (1, 3, 3), "strides": 2, "baselines": 0.0}),
    ("saliency", True, {"nt_type": "smoothgrad", "nt_samples": 3, "stdevs": 0.2}),
    ("integrated_gradients", True, {"nt_type": "vargrad", "nt_samples": 2, "n_steps": 4}),
    ("input_x_gradient", True, {"nt_type": "smoothgrad_sq", "nt_samples": 2, "nt_samples_batch_size": 1}),
]


@pytest.mark.parametrize(("algorithm", "tunnel", "kwargs"), CASES)
def test_attribute_is_exactly_captum(algorithm, tunnel, kwargs):
    model, x, target = small_net(), images(), torch.tensor([0, 2, 1, 0])
    cls = getattr(captum_attr, ALGORITHMS[algorithm])
    ref_obj = captum_attr.NoiseTunnel(cls(model)) if tunnel else cls(model)
    seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ref_obj.attribute(x, target=target, **kwargs)
    seed(7)
    got = attribute(model, x, target, algorithm=algorithm, noise_tunnel=tunnel, **kwargs)
    if kwargs.get("return_convergence_delta"):
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    else:
        assert torch.equal(got, expected)
        assert got.shape == x.shape
    assert count_hooks(model) == 0


def test_attribute_accepts_a_captum_object():
    model, x = small_net(), images()
    local_ig = captum_attr.IntegratedGradients(model, multiply_by_inputs=False)
    expected = local_ig.attribute(x, target=1, n_steps=5)
    assert torch.equal(attribute(model, x, 1, algorithm=local_ig, n_steps=5), expected)
    gradcam = captum_attr.LayerGradCam(model, model[2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = gradcam.attribute(x, target=2)
    assert torch.equal(attribute(model, x, 2, algorithm=gradcam), expected)


# -- 2. train mode -------------------------------------------------------------------------------


def test_train_mode_warns_attributes_in_eval_and_restores_every_flag():
    model = small_net().train()
    model[1].eval()  # mixed flags must come back exactly
    before, stats = flags(model), copy.deepcopy(model[1].state_dict())
    x = images()
    reference = copy.deepcopy(model).eval()
    with pytest.warns(UserWarning, match=r"Sequential is in train mode \(6 of 7 modules.*eval_mode=False") as rec:
        got = attribute(model, x, 1, algorithm="saliency")
    assert rec[0].filename == __file__  # points at the caller
    assert torch.equal(got, captum_attr.Saliency(reference).attribute(x, target=1))
    assert flags(model) == before
    assert all(torch.equal(v, stats[k]) for k, v in model[1].state_dict().items())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attribute(model, x, 1, algorithm="saliency", eval_mode=True)
    assert flags(model) == before


def test_eval_mode_false_keeps_train_mode():
    model = small_net().train()
    x, twin = images(), copy.deepcopy(small_net().train())
    torch.manual_seed(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = attribute(model, x, 0, algorithm="input_x_gradient", eval_mode=False)
    torch.manual_seed(3)
    expected = captum_attr.InputXGradient(twin).attribute(x, target=0)
    assert torch.equal(got, expected)  # same dropout draws: attributed in train mode
    assert all(flags(model))


def test_dataset_functions_warn_once_and_restore_flags():
    model = small_net().train()
    data = [(images(seed=i), torch.tensor([0, 1, 2, 0])) for i in range(3)]
    with pytest.warns(UserWarning, match="train mode") as rec:
        channel_table(model, data, "2", n_steps=3, progress=False)
    assert len([w for w in rec if "train mode" in str(w.message)]) == 1
    assert all(flags(model))
    other = small_net(1).train()
    with pytest.warns(UserWarning, match="train mode") as rec:
        compare_models({"a": model, "b": other}, data, algorithm="saliency", progress=False)
    assert len([w for w in rec if "train mode" in str(w.message)]) == 2  # one per model
    assert all(flags(model)) and all(flags(other))


# -- 3. ground truth -----------------------------------------------------------------------------

GROUND_TRUTH = [(a, False, {}) for a in GRADIENT_ALGORITHMS] + [
    ("saliency", True, {"nt_samples": 4, "stdevs": 0.3}),
    ("integrated_gradients", True, {"nt_type": "smoothgrad_sq", "nt_samples": 3, "stdevs": 0.2}),
    ("occlusion", False, {"sliding_window_shapes": (1, 4, 4), "strides": 4}),
]
EXTRA = {
    "integrated_gradients": {"n_steps": 16},
    "gradient_shap": {"baselines": torch.zeros(2, 1, 8, 8), "stdevs": 0.1, "n_samples": 4},
}


@pytest.mark.parametrize("quadrant", [(0, 1), (1, 0)])
@pytest.mark.parametrize(("algorithm", "tunnel", "kwargs"), GROUND_TRUTH)
def test_attribution_mass_lies_in_the_one_quadrant_the_logit_reads(quadrant, algorithm, tunnel, kwargs):
    model = QuadrantNet(quadrant).eval()
    x = images(6, seed=4)
    torch.manual_seed(0)
    a = attribute(model, x, 2, algorithm=algorithm, noise_tunnel=tunnel, **{**EXTRA.get(algorithm, {}), **kwargs})
    mass = a.abs().detach().numpy()
    inside = mass * model.mask.numpy()
    share = inside.reshape(6, -1).sum(1) / mass.reshape(6, -1).sum(1)
    assert share.min() >= 0.95, share
    assert mass.reshape(6, -1).sum(1).min() > 0  # not a vacuous 0/0


@pytest.mark.parametrize("k", [0, 3, 5])
def test_only_the_channel_that_reaches_the_output_is_important(k):
    model = ChannelNet(k).eval()
    data = [(images(5, seed=s), torch.zeros(5, dtype=torch.long)) for s in range(2)]
    table = channel_table(model, data, "act", n_steps=8, progress=False)
    ch = table.channels.set_index("channel")
    for key in IMPORTANCES:
        assert ch[f"{key}_rank"].idxmin() == k and ch.loc[k, f"{key}_rank"] == 1
        assert ch.loc[k, key] != 0
        assert (ch.drop(index=k)[key] == 0).all(), key
    # the ablation column against a hand-made ablation: zero channel k, read the target logit again
    x = torch.cat([d[0] for d in data])
    with torch.no_grad():
        act = model.act(model.conv(x))
        ablated = act.clone()
        ablated[:, k] = 0
        drop = model.head(model.read(act))[:, 0] - model.head(model.read(ablated))[:, 0]
    assert ch.loc[k, "ablation"] > 0 and ch.loc[k, "gradcam"] > 0  # conductance is relative to the baseline
    assert ch.loc[k, "ablation"] == pytest.approx(drop.double().mean().item(), rel=1e-5)
    assert count_hooks(model) == 0


def test_inplace_relus_give_the_same_table_as_plain_ones():
    def make(inplace: bool) -> nn.Module:
        torch.manual_seed(3)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Conv2d(4, 4, 3, padding=1),
            nn.ReLU(inplace=inplace),
            nn.Flatten(),
            nn.Linear(4 * 64, 3),
        ).eval()

    data = [(images(6, seed=8), torch.tensor([0, 1, 2, 0, 1, 2]))]
    for layer in ("1", "2", "3"):
        inplace = channel_table(make(True), data, layer, n_steps=4, progress=False).channels
        plain = channel_table(make(False), data, layer, n_steps=4, progress=False).channels
        assert inplace.equals(plain), layer


def test_channel_attributions_are_captums_per_channel_outputs():
    model, x, target = small_net(), images(), torch.tensor([1, 0, 2, 1])
    got = channel_attributions(model, x, "2", target, n_steps=6, internal_batch_size=8)
    layer, mask = model[2], torch.arange(4).view(1, 4, 1, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gc_ = captum_attr.LayerGradCam(model, layer).attribute(x, target=target, attr_dim_summation=False)
        lc = captum_attr.LayerConductance(model, layer).attribute(x, target=target, n_steps=6, internal_batch_size=8)
        fa = captum_attr.LayerFeatureAblation(model, layer).attribute(x, target=target, layer_mask=mask)
    assert torch.equal(got["gradcam"], gc_.mean((2, 3)))
    assert torch.equal(got["conductance"], lc.sum((2, 3)))
    assert torch.equal(got["ablation"], fa[:, :, 0, 0])
    assert (fa == fa[:, :, :1, :1]).all()  # one value per channel, as the mask asks


# -- 4. attribution sparsity against NumPy/SciPy on Captum's raw output -------------------------


def gini_np(v: np.ndarray) -> np.ndarray:
    """Hurley & Rickard's Gini index per row, written out (dead row: 1)."""
    c = np.sort(np.abs(v), axis=1)
    n = c.shape[1]
    k = np.arange(1, n + 1)
    total = c.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        g = 1 - 2 * ((c / total) * ((n - k + 0.5) / n)).sum(1)
    return np.where(total[:, 0] > 0, g, 1.0)


def test_attribution_sparsity_equals_numpy_on_captums_output():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 3)).eval()
    x = torch.rand(5, 3, 8, 8)
    raw = captum_attr.IntegratedGradients(model).attribute(x, target=1, n_steps=8).detach()
    raw[3] = 0.0  # a dead map
    raw[4] = 0.0
    raw[4, 1, 2, 5] = -2.0  # a one-pixel map
    table = attribution_sparsity(raw, threshold=1e-3)
    maps = np.abs(raw.double().numpy()).sum(1).reshape(5, -1)
    np.testing.assert_allclose(table.sparsity, sparsity_rows(maps, clip=True), atol=2e-6)
    np.testing.assert_allclose(table.perplexity, perplexity_rows(maps), rtol=2e-5)
    np.testing.assert_allclose(table.gini, gini_np(maps), atol=2e-6)
    np.testing.assert_allclose(table.zero_fraction, (maps <= 1e-3).mean(1))
    assert table.dead.tolist() == [False, False, False, True, False]
    assert table.sparsity[3] == 1.0 and table.sparsity[4] == 1.0
    np.testing.assert_allclose(attribution_map(raw).numpy(), np.abs(raw.numpy()).sum(1))


def test_nonfinite_maps_are_flagged_and_nan():
    a = torch.rand(3, 2, 4, 4)
    a[1, 0, 0, 0] = float("nan")
    table = attribution_sparsity(a)
    assert table.nonfinite.tolist() == [False, True, False]
    assert table.loc[1, ["sparsity", "perplexity", "gini", "zero_fraction"]].isna().all()
    assert table.loc[[0, 2], ["sparsity", "gini"]].notna().all().all()


def test_sparsity_table_streams_to_the_one_shot_result():
    model = small_net()
    data = [(images(seed=s), torch.tensor([s % 3, 1, 2, 0])) for s in range(3)]
    table = attribution_sparsity_table(model, data, n_steps=6, progress=False)
    maps = []
    for x, y in data:
        raw = captum_attr.IntegratedGradients(model).attribute(x, target=y, n_steps=6)
        maps.append(np.abs(raw.double().numpy()).sum(1).reshape(4, -1))
    maps = np.concatenate(maps)
    np.testing.assert_allclose(table.sparsity, sparsity_rows(maps, clip=True), atol=2e-6)
    assert table["sample"].tolist() == list(range(12))
    assert table.target.tolist() == torch.cat([y for _, y in data]).tolist()
    with torch.no_grad():
        assert table.predicted.tolist() == torch.cat([model(x).argmax(1) for x, _ in data]).tolist()


def test_predicted_and_int_targets():
    model, x = small_net(), images()
    with torch.no_grad():
        pred = model(x).argmax(1)
    t = attribution_sparsity_table(model, x, "predicted", algorithm="saliency", progress=False)
    expected = attribution_sparsity(captum_attr.Saliency(model).attribute(x, target=pred))
    np.testing.assert_array_equal(t.sparsity, expected.sparsity)
    assert t.target.tolist() == pred.tolist()
    t = attribution_sparsity_table(model, [x, x], 2, algorithm="saliency", progress=False)
    assert t.target.tolist() == [2] * 8


# -- 5. the channel table's activation columns and statistics -----------------------------------


def test_channel_table_sparsity_columns_equal_numpy_on_the_activations():
    torch.manual_seed(5)
    conv = nn.Conv2d(1, 6, 3, padding=1)
    with torch.no_grad():
        conv.weight.abs_()
        conv.bias.copy_(torch.tensor([0.5, -0.5, -1.0, 0.0, -1.5, -30.0]))  # from alive to always dead
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), nn.Linear(6 * 64, 3)).eval()
    scale = torch.linspace(0.05, 1.0, 4).view(4, 1, 1, 1)  # dim images leave the negative-bias channels dead
    data = [
        (torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(s)) * scale, torch.tensor([0, 1, 2, 1]))
        for s in range(3)
    ]
    table = channel_table(model, data, "1", n_steps=4, progress=False)
    with torch.no_grad():
        act = torch.relu(conv(torch.cat([d[0] for d in data]))).double().numpy().reshape(12, 6, -1)
    dead = (act == 0).all(-1)
    sparsity = sparsity_rows(act, clip=True)  # (12, 6); dead maps give 1
    ch = table.channels
    np.testing.assert_allclose(ch.sparsity, sparsity.mean(0), atol=1e-5)
    np.testing.assert_allclose(ch.dead_fraction, dead.mean(0))
    assert 0 < ch.dead_fraction.iloc[1] < 1 and ch.dead_fraction.iloc[0] == 0 and ch.dead_fraction.iloc[5] == 1
    assert table.images == 12 and list(ch.channel) == list(range(6)) and (ch.layer == "1").all()
    for _, row in table.correlations.iterrows():
        res = scipy.stats.spearmanr(ch[row.activation], ch[row.importance].abs())
        assert row.rho == pytest.approx(res.statistic) and row.pvalue == pytest.approx(res.pvalue) and row.n == 6
    for key in IMPORTANCES:
        expected_rank = scipy.stats.rankdata(-ch[key].abs().to_numpy(), method="min")
        np.testing.assert_array_equal(ch[f"{key}_rank"].to_numpy(int), expected_rank)
    assert table.sorted("ablation").channel.iloc[0] == ch.channel[ch.ablation.abs().idxmax()]
    assert table.sorted("dead_fraction").dead_fraction.is_monotonic_decreasing


def test_flags_follow_the_documented_thresholds():
    x = torch.rand(10, 1, 4, 4) * 0.5
    x[:2, 0, 0, 0] = 5.0  # channel 1 alive on two images of ten
    data = [(x, torch.zeros(10, dtype=torch.long))]
    table = channel_table(FlagNet().eval(), data, "act", n_steps=8, progress=False)
    ch = table.channels
    np.testing.assert_allclose(ch.dead_fraction, [0.0, 0.8, 0.0])
    assert ch.dead_but_important.tolist() == [False, True, False]
    assert ch.alive_but_irrelevant.tolist() == [False, False, True]
    assert table.thresholds == {"dead_threshold": 0.5, "important_threshold": 0.5, "irrelevant_threshold": 0.05}
    relaxed = channel_table(FlagNet().eval(), data, "act", n_steps=8, dead_threshold=0.9, progress=False)
    assert not relaxed.channels.dead_but_important.any()
    strict = channel_table(FlagNet().eval(), data, "act", n_steps=8, irrelevant_threshold=0.0, progress=False)
    assert strict.channels.alive_but_irrelevant.tolist() == [False, False, True]  # exactly zero importance


# -- 6. two models -------------------------------------------------------------------------------


def _per_image_numpy(model, x, y, **kw):
    raw = captum_attr.IntegratedGradients(model).attribute(x, target=y, **kw)
    maps = np.abs(raw.double().numpy()).sum(1).reshape(len(x), -1)
    return raw, maps, sparsity_rows(maps, clip=True), gini_np(maps)


def test_compare_models_against_scipy():
    a, b = small_net(0), small_net(1)
    data = [(images(seed=s), torch.tensor([0, 1, 2, s % 3])) for s in range(3)]
    result = compare_models({"base": a, "pen": b}, data, n_steps=6, keep=5, progress=False)
    x, y = torch.cat([d[0] for d in data]), torch.cat([d[1] for d in data])
    _, maps_a, s_a, _ = _per_image_numpy(a, x, y, n_steps=6)
    raw_b, maps_b, s_b, g_b = _per_image_numpy(b, x, y, n_steps=6)
    per = result.per_image
    np.testing.assert_allclose(per[per.model == "base"].sparsity, s_a, atol=2e-6)
    np.testing.assert_allclose(per[per.model == "pen"].gini, g_b, atol=2e-6)
    summary = result.summary.set_index("statistic")
    w = scipy.stats.wilcoxon(s_b, s_a)
    assert summary.loc["sparsity", "pvalue"] == pytest.approx(w.pvalue, rel=1e-4)
    assert summary.loc["sparsity", "wilcoxon"] == pytest.approx(w.statistic)
    assert summary.loc["sparsity", "median_difference"] == pytest.approx(np.median(s_b - s_a), abs=2e-6)
    assert summary.loc["gini", "n"] == 12 and result.names == ("base", "pen")
    rho = [scipy.stats.spearmanr(u, v).statistic for u, v in zip(maps_a, maps_b)]
    np.testing.assert_allclose(result.similarity.map_spearman, rho, atol=1e-6)
    assert torch.equal(result.images, x[:5])
    assert torch.allclose(result.attributions["pen"], raw_b[:5])
    np.testing.assert_allclose(result.maps["base"].reshape(5, -1).numpy(), maps_a[:5], rtol=1e-6)
    assert result.distribution("gini").shape == (24, 3)


def test_a_model_compared_with_itself_differs_nowhere():
    model = small_net()
    result = compare_models(
        {"a": model, "b": model}, images(6), [0, 1, 2, 0, 1, 2], algorithm="saliency", progress=False
    )
    assert (result.summary.median_difference == 0).all() and (result.summary.pvalue == 1).all()
    np.testing.assert_allclose(result.similarity.map_spearman, 1.0)


def test_compare_checkpoints(tmp_path: Path):
    a, b = small_net(0), small_net(1)
    torch.save({"model": a.state_dict(), "epoch": 3}, tmp_path / "a.pt")
    run_dir = tmp_path / "run_b"
    run_dir.mkdir()
    torch.save({"model": b.state_dict()}, run_dir / "checkpoint.pt")
    data = [(images(), torch.tensor([0, 1, 2, 0]))]
    from_files = compare_models(
        {"a": tmp_path / "a.pt", "b": str(run_dir)},
        data,
        architecture=small_net(9),
        algorithm="saliency",
        progress=False,
    )
    from_models = compare_models({"a": a, "b": b}, data, algorithm="saliency", progress=False)
    assert from_files.per_image.equals(from_models.per_image)
    with pytest.raises(ValueError, match=r"(?s)does not fit this Sequential.*size mismatch"):
        compare_models({"a": tmp_path / "a.pt", "b": b}, data, architecture=small_net(width=5), progress=False)
    with pytest.raises(TypeError, match="pass architecture="):
        compare_models({"a": tmp_path / "a.pt", "b": b}, data, progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        compare_models({"a": tmp_path / "nope", "b": b}, data, architecture=a, progress=False)


# -- 7. streaming: batch sizes, progress, hooks, memory -----------------------------------------


def test_internal_batch_size_is_respected():
    sizes = BatchSizes()
    model = nn.Sequential(sizes, *small_net()).eval()
    data = [(images(4, seed=s), torch.tensor([0, 1, 2, 0])) for s in range(2)]
    attribution_sparsity_table(model, data, n_steps=10, progress=False)
    assert max(sizes.sizes) == 40  # Captum's default: all 10 steps of 4 images at once
    sizes.sizes.clear()
    attribution_sparsity_table(model, data, n_steps=10, internal_batch_size=9, progress=False)
    assert max(sizes.sizes) == 8  # Captum batches whole steps: 2 steps of 4 images
    sizes.sizes.clear()
    channel_table(model, data, "3", n_steps=10, progress=False)
    assert max(sizes.sizes) == 44  # LayerConductance: n_steps + 1 points
    sizes.sizes.clear()
    channel_table(model, data, "3", n_steps=10, internal_batch_size=12, progress=False)
    assert max(sizes.sizes) == 12


def test_progress_bar(capsys):
    data = [(images(seed=s), torch.tensor([0, 1, 2, 0])) for s in range(2)]
    attribution_sparsity_table(small_net(), data, algorithm="saliency", progress=True)
    assert "attributions" in capsys.readouterr().err
    channel_table(small_net(), data, "2", n_steps=2, progress=True)
    assert "channels of 2" in capsys.readouterr().err
    attribution_sparsity_table(small_net(), data, algorithm="saliency", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fail_at", [1, 2, 3, 5, 9])
def test_no_hook_left_and_flags_restored_after_an_exception(fail_at):
    failing = Failing(fail_at)
    model = nn.Sequential(failing, *small_net()).train()
    model[2].eval()
    before = flags(model)
    data = [(images(), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(RuntimeError, match="boom"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        channel_table(model, data, "3", n_steps=3, progress=False)
    assert count_hooks(model) == 0 and flags(model) == before
    for call in (
        lambda: attribute(model, images(), 1, n_steps=3, eval_mode=True),
        lambda: attribution_sparsity_table(model, data, n_steps=3, eval_mode=True, progress=False),
        lambda: compare_models({"a": model, "b": small_net()}, data, eval_mode=True, progress=False, n_steps=3),
    ):
        failing.calls, failing.fail_at = 0, 2
        with pytest.raises(RuntimeError, match="boom"):
            call()
        assert count_hooks(model) == 0 and flags(model) == before


def test_no_hook_left_after_each_call():
    model = small_net()
    data = [(images(), torch.tensor([0, 1, 2, 0]))]
    attribute(model, images(), 0, algorithm="occlusion", sliding_window_shapes=(1, 2, 2))
    channel_attributions(model, images(), "2", 0, n_steps=2)
    channel_table(model, data, model[2], n_steps=2, progress=False)
    compare_models({"a": model, "b": model}, data, n_steps=2, progress=False)
    assert count_hooks(model) == 0


def _rss() -> int:
    import psutil

    return psutil.Process(os.getpid()).memory_info().rss


def _live_tensors() -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on lazy torch.distributed attributes warns
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def _usage() -> tuple[int, int, int]:
    gc.collect()
    # read the traced size last: the first calls of the others import modules (psutil, lazy torch parts)
    tensors, rss = _live_tensors(), _rss()
    return tracemalloc.get_traced_memory()[0], rss, tensors


@pytest.mark.slow
def test_memory_is_flat_over_100_calls():
    model, other, x, y = small_net(), small_net(1), images(), torch.tensor([0, 1, 2, 0])
    data = [(x, y)]

    def once() -> None:
        attribute(model, x, y, n_steps=4)
        channel_table(model, data, "2", n_steps=2, progress=False)
        compare_models({"a": model, "b": other}, data, n_steps=2, progress=False)

    tracemalloc.start()  # before the warm-up: memory allocated before tracing starts is never counted when freed
    try:
        for _ in range(10):
            once()
        traced0, rss0, tensors0 = _usage()
        for _ in range(100):
            once()
        traced, rss, tensors = (after - before for after, before in zip(_usage(), (traced0, rss0, tensors0)))
    finally:
        tracemalloc.stop()
    assert tensors <= 0, f"{tensors} more live tensors after 100 calls"  # fewer: earlier objects freed
    assert traced < 256 * 1024, f"Python memory grew by {traced / 1024:.0f} KiB over 100 calls"
    assert rss < 16 * 2**20, f"RSS grew by {rss / 2**20:.1f} MiB over 100 calls"
    assert count_hooks(model) == 0


@pytest.mark.parametrize("which", ["channel_table", "attribution_sparsity_table"])
def test_memory_is_flat_across_batches(which, monkeypatch):
    # The sparsity estimator keeps the map sums of up to DEFER_BATCHES batches by design (a bounded
    # buffer, folded in at once): with a buffer of one batch, whatever grows here is a leak.
    monkeypatch.setattr("xaisparse.estimators.layer.DEFER_BATCHES", 1)
    model = small_net()
    seen: list[tuple[int, int, int]] = []

    def loader():
        for i in range(100):
            if i in (10, 99):
                seen.append(_usage())
            yield images(seed=i % 5), torch.tensor([0, 1, 2, 0])

    tracemalloc.start()
    try:
        if which == "channel_table":
            channel_table(model, loader(), "2", n_steps=2, progress=False)
        else:
            out = attribution_sparsity_table(model, loader(), n_steps=2, progress=False)
            assert len(out) == 400
    finally:
        tracemalloc.stop()
    (t0, r0, n0), (t1, r1, n1) = seen
    rows = 89 * 4 if which == "attribution_sparsity_table" else 0  # the table's own rows grow, by design
    # a leak adds tensors; fewer is fine (objects of earlier tests in this worker freed meanwhile)
    assert n1 <= n0, f"{n1 - n0} more live tensors after 89 batches"
    assert t1 - t0 < 64 * 1024 + rows * 512, f"Python memory grew by {(t1 - t0) / 1024:.0f} KiB over 89 batches"
    assert r1 - r0 < 16 * 2**20, f"RSS grew by {(r1 - r0) / 2**20:.1f} MiB over 89 batches"


# -- 8. bad input --------------------------------------------------------------------------------

X4 = images()


@pytest.mark.parametrize(
    ("target", "error", "match"),
    [
        (3, ValueError, r"target must be in \[0, 3\) for a model with outputs of shape \(N, 3\), got 3"),
        (-1, ValueError, r"in \[0, 3\).*got -1"),
        (None, ValueError, r"target is required: the model returns outputs of shape \(N, 3\)"),
        (torch.tensor([0, 1]), ValueError, r"shape \(\) or \(4,\).*got shape \(2,\)"),
        (torch.zeros(4, 2, dtype=torch.long), ValueError, r"got shape \(4, 2\)"),
        (torch.tensor([0, 1, 5, 2]), ValueError, r"class indices in \[0, 3\).*got \[5\]"),
        (torch.tensor([0.0, 1.0, 2.0, 0.0]), TypeError, "integer class indices.*float32"),
        ([0, 1, 2], ValueError, r"one class index per sample \(4\), got 3"),
        ([0, 1, 2, 1.5], TypeError, r"target\[3\] must be an int"),
        ((0, 1), ValueError, "one index per output dim: 1"),
        ("label", TypeError, "target must be None, an int"),
        (1.0, TypeError, "got float 1.0"),
    ],
)
def test_bad_targets(target, error, match):
    with pytest.raises(error, match=match):
        attribute(small_net(), X4, target, algorithm="saliency")


def test_target_for_a_scalar_output_model():
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 1), nn.Flatten(0)).eval()
    assert attribute(model, X4, None, algorithm="saliency").shape == X4.shape
    with pytest.raises(ValueError, match=r"one number per sample \(outputs of shape \(N,\)\); pass target=None"):
        attribute(model, X4, 0, algorithm="saliency")


def test_dataset_level_target_errors():
    model = small_net()
    with pytest.raises(ValueError, match="target='label' needs batches of \\(inputs, labels\\)"):
        attribution_sparsity_table(model, [X4], progress=False)
    with pytest.raises(ValueError, match="only fits when data is one tensor batch"):
        attribution_sparsity_table(model, [X4], torch.tensor([0, 1, 2, 0]), progress=False)
    with pytest.raises(ValueError, match=r"class indices in \[0, 3\).*got \[7\]"):
        channel_table(model, [(X4, torch.tensor([0, 7, 1, 1]))], "2", progress=False)
    with pytest.raises(ValueError, match="labels of shape \\(4,\\)"):
        attribution_sparsity_table(model, [(X4, torch.zeros(4, 1, dtype=torch.long))], progress=False)
    with pytest.raises(ValueError, match="target must be one of \\['label', 'predicted'\\]"):
        attribution_sparsity_table(model, [(X4, torch.zeros(4))], "labels", progress=False)


def test_bad_inputs():
    model = small_net()
    with pytest.raises(TypeError, match=r"floating-point tensor.*got dtype torch.uint8; convert it.*x.float\(\) / 255"):
        attribute(model, (X4 * 255).to(torch.uint8), 0)
    with pytest.raises(TypeError, match="inputs must be a torch.Tensor of shape \\(N, C, H, W\\).*got list"):
        attribute(model, X4.tolist(), 0)
    with pytest.raises(TypeError, match="the inputs of batch 1 must be a floating-point tensor.*int64"):
        channel_table(model, [(X4, torch.zeros(4, dtype=torch.long)), (X4.long(), torch.zeros(4))], "2", progress=False)
    with pytest.raises(TypeError, match="batch 0 is a dict"):
        attribution_sparsity_table(model, [{"x": X4}], progress=False)
    with pytest.raises(ValueError, match="no batches"):
        attribution_sparsity_table(model, [], progress=False)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got str"):
        attribute("model", X4, 0)
    with pytest.raises(TypeError, match="attributions must be a floating-point tensor"):
        attribution_sparsity(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 2 pixels"):
        attribution_sparsity(torch.ones(2, 3, 1, 1))


def test_bad_algorithms_and_captum_arguments():
    model = small_net()
    with pytest.raises(ValueError, match=r"algorithm must be one of \['integrated_gradients', 'saliency'"):
        attribute(model, X4, 0, algorithm="deeplift")
    with pytest.raises(
        TypeError, match="IntegratedGradients.attribute takes no argument 'n_step'; it takes: baselines"
    ):
        attribute(model, X4, 0, n_step=4)
    with pytest.raises(TypeError, match="'nt_samples' \\(NoiseTunnel arguments need noise_tunnel=True\\)"):
        attribute(model, X4, 0, algorithm="saliency", nt_samples=4)
    with pytest.raises(TypeError, match=r"Occlusion.attribute needs sliding_window_shapes="):
        attribute(model, X4, 0, algorithm="occlusion")
    with pytest.raises(TypeError, match="GradientShap.attribute needs baselines="):
        attribute(model, X4, 0, algorithm="gradient_shap")
    with pytest.raises(ValueError, match=r"nt_type must be one of \['smoothgrad'"):
        attribute(model, X4, 0, algorithm="saliency", noise_tunnel=True, nt_type="smooth")
    with pytest.raises(TypeError, match="return_convergence_delta=True is for attribute"):
        attribution_sparsity_table(model, X4, 0, return_convergence_delta=True, progress=False)
    with pytest.raises(TypeError, match="eval_mode must be a bool"):
        attribute(model, X4, 0, eval_mode="yes")
    with pytest.raises(TypeError, match="not a Captum object bound to one model"):
        compare_models({"a": model, "b": model}, X4, 0, algorithm=captum_attr.Saliency(model), progress=False)


def test_bad_layers():
    model = small_net()
    with pytest.raises(UnknownLayerError, match="no layer named '7'; closest valid names"):
        channel_table(model, [(X4, torch.zeros(4, dtype=torch.long))], "7", progress=False)
    nested = nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), nn.Flatten(), nn.Linear(72, 2)).eval()
    with pytest.raises(UnknownLayerError, match=r"closest valid names: '0.1'"):
        channel_attributions(nested, X4, "0.relu", 0)
    with pytest.raises(ValueError, match="exactly one module, '0.\\*' selects 2"):
        channel_attributions(nested, X4, "0.*", 0)
    with pytest.raises(TypeError, match="layer must be a module name"):
        channel_attributions(nested, X4, 1, 0)
    with pytest.raises(UnknownLayerError, match="no layer named '1#3'"):
        channel_attributions(small_net(), X4, "1#3", 0)


def test_a_module_used_twice_is_attributed_per_call_site():
    """``"1"`` and ``"1#2"`` (the names the monitor shows for one ReLU used twice) each get their own
    attributions: those of the same network written with two ReLU modules."""
    torch.manual_seed(0)
    twice = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(2, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(128, 2),
    ).eval()
    reused = nn.Sequential(*twice[:3], twice[1], *twice[4:]).eval()  # the same weights, one ReLU used twice
    for site, separate in (("1", "1"), ("1#2", "3")):
        got = channel_attributions(reused, X4, site, 0, n_steps=4)
        want = channel_attributions(twice, X4, separate, 0, n_steps=4)
        for key in want:
            torch.testing.assert_close(got[key], want[key], msg=f"{site} {key}")
    assert count_hooks(reused) == 0 and count_hooks(twice) == 0


def test_bad_thresholds_and_models():
    model, data = small_net(), [(X4, torch.zeros(4, dtype=torch.long))]
    with pytest.raises(ValueError, match=r"dead_threshold must be in \(0, 1\], got 1.5"):
        channel_table(model, data, "2", dead_threshold=1.5)
    with pytest.raises(ValueError, match="irrelevant_threshold must be below important_threshold"):
        channel_table(model, data, "2", important_threshold=0.1, irrelevant_threshold=0.2)
    with pytest.raises(ValueError, match="exactly two entries to compare, got 3"):
        compare_models({"a": model, "b": model, "c": model}, data)
    with pytest.raises(TypeError, match="models must be a dict"):
        compare_models([model, model], data)
    with pytest.raises(TypeError, match=r"models\['b'\] must be an nn.Module or a checkpoint"):
        compare_models({"a": model, "b": 3}, data)


def test_import_xaisparse_attribution_does_not_import_captum():
    code = "import sys, xaisparse, xaisparse.attribution\nprint('captum' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False", out.stdout + out.stderr
