"""``capture_feature_maps`` and ``plots.feature_maps`` / ``plots.channel_over_epochs``: the
sparsity printed over each map is checked against an independent computation (plain forward
hooks, SciPy's entropy, the definition written out), and the model is left as it was."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from scipy.stats import entropy
from torch import nn

from tests.test_widgets import line_by_gid
from xaisparse import plots
from xaisparse.activations import capture_feature_maps, feature_maps_from
from xaisparse.models import SmallCNN
from xaisparse.plots import NoData
from xaisparse.testing import count_hooks, synthetic_history

LAYERS = ["features.block1.relu", "features.block2.relu"]


def reference_sparsity(fmap: np.ndarray) -> float:
    """DESIGN §1 written out with SciPy: s = 1 − (exp H − 1)/(N − 1); a dead map is 1."""
    a = np.abs(fmap.astype(np.float64)).ravel()
    if a.sum() == 0:
        return 1.0
    return 1.0 - (np.exp(entropy(a)) - 1.0) / (a.size - 1)


def hooked_outputs(model: nn.Module, images: torch.Tensor, names: list[str]) -> dict[str, np.ndarray]:
    """The layers' outputs through plain forward hooks (not the library's recorder)."""
    out: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())

    def keep(name: str):
        def hook(module, inputs, output) -> None:
            out.setdefault(name, output.detach().numpy().copy())

        return hook

    handles = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        for h in handles:
            h.remove()
    return out


@pytest.fixture
def model_and_images():
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10, depth=2, width=6, image_size=12)
    with torch.no_grad():  # one channel of block 1 never fires: a dead map on every image
        model.features.block1.conv.weight[5].zero_()
        model.features.block1.conv.bias[5] = -1.0
    images = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    return model, images


def test_the_titles_show_the_sparsity_of_each_map(model_and_images):
    model, images = model_and_images
    model.train()
    drawn: dict = {}
    fig = plots.feature_maps(model, images, image=2, data=drawn)
    assert model.training and count_hooks(model) == 0  # the model is left as it was
    reference = hooked_outputs(model, images, LAYERS)
    assert drawn["layers"] == LAYERS and drawn["image"] == 2
    for layer in LAYERS:
        maps = reference[layer][2]
        expected = np.array([reference_sparsity(m) for m in maps])
        dead = np.array([not m.any() for m in maps])
        np.testing.assert_allclose(drawn["sparsity"][layer], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(drawn["dead"][layer], dead)
        for c, (text, value, is_dead) in enumerate(zip(drawn["titles"][layer], expected, dead)):
            shown = re.fullmatch(rf"{c}: (\S+)", text).group(1)  # "channel: value" over each map
            if is_dead:
                assert shown == "dead"
            else:
                assert abs(float(shown) - value) <= 0.005 + 1e-6, (layer, c, shown, value)
    assert drawn["dead"]["features.block1.relu"][5]  # the silenced channel, titled in red
    texts = {t.get_text(): t.get_color() for ax in fig.axes for t in ax.texts}
    assert texts["5: dead"] == "#d62728"
    assert sum(len(v) for v in drawn["titles"].values()) == sum(
        1 for ax in fig.axes for t in ax.texts if ":" in t.get_text()
    )


def test_captured_maps_and_maps_from_a_dict_agree(model_and_images):
    model, images = model_and_images
    fm = capture_feature_maps(model, images)
    reference = hooked_outputs(model, images, LAYERS)
    assert fm.layers == LAYERS
    for layer in LAYERS:
        np.testing.assert_array_equal(fm.maps[layer], reference[layer])
    again = feature_maps_from(reference, images)
    for layer in LAYERS:
        np.testing.assert_array_equal(again.sparsity[layer], fm.sparsity[layer])
    a, b = {}, {}
    plots.feature_maps(fm, data=a)
    plots.feature_maps({k: torch.from_numpy(v) for k, v in reference.items()}, data=b)
    assert a["titles"] == b["titles"]


def test_channel_limit_order_and_layer_choice(model_and_images):
    model, images = model_and_images
    fm = capture_feature_maps(model, images)
    notes: list[str] = []
    drawn: dict = {}
    plots.feature_maps(fm, layers=["features.block2.relu"], max_channels=4, order="sparsity", notes=notes, data=drawn)
    values = fm.sparsity["features.block2.relu"][0]
    assert drawn["layers"] == ["features.block2.relu"]
    np.testing.assert_array_equal(drawn["channels"]["features.block2.relu"], np.argsort(-values, kind="stable")[:4])
    assert notes == ["features.block2.relu: showing 4 of 12 channels (sparsity order)."]
    wrapped: dict = {}
    fig = plots.feature_maps(fm, columns=5, data=wrapped)  # 6 and 12 maps, five to a row
    mosaic = fig.axes[2].get_images()[0].get_array()
    # 12 tiles of 12 px, five to a row: 3 rows of 12 × 1.55 px (title room), 5 columns of 12 × 1.12 px
    assert wrapped["channels"]["features.block2.relu"].size == 12 and mosaic.shape == (56, 68)
    with pytest.raises(ValueError, match=r"no feature maps of layer 'block9'; layers with maps: \['features"):
        plots.feature_maps(fm, layers=["block9"])
    with pytest.raises(ValueError, match=r"image must be an int in \[0, 2\] \(there are 3 images\), got 3"):
        plots.feature_maps(fm, image=3)
    with pytest.raises(ValueError, match="order must be one of"):
        plots.feature_maps(fm, order="random")
    with pytest.raises(TypeError, match="pass the images"):
        plots.feature_maps(model)
    with pytest.raises(TypeError, match="source must be a FeatureMaps"):
        plots.feature_maps([1, 2])


def test_the_model_is_restored_after_an_error():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.relu = nn.Conv2d(1, 2, 3), nn.ReLU()

        def forward(self, x):
            self.relu(self.conv(x))
            raise RuntimeError("broken forward")

    model = Broken().train()
    with pytest.raises(RuntimeError, match="broken forward"):
        capture_feature_maps(model, torch.zeros(1, 1, 5, 5))
    assert model.training and count_hooks(model) == 0


def test_channel_over_epochs_draws_the_given_numbers(model_and_images):
    model, images = model_and_images
    fm = capture_feature_maps(model, images)
    h = synthetic_history(epochs=5, layers=("features.block1.relu",), channels=6)
    per_image = np.linspace(0, 1, 15).reshape(5, 3)
    drawn: dict = {}
    fig = plots.channel_over_epochs(
        fm, "features.block1.relu", 2, history=h, epochs=[0, 1, 2, 3, 4], per_image=per_image, data=drawn
    )
    for i in range(3):
        np.testing.assert_array_equal(line_by_gid(fig, f"image:{i}").get_ydata(), per_image[:, i])
    expected = h.channels[
        (h.channels.split == "test")
        & (h.channels.layer == "features.block1.relu")
        & (h.channels.channel == 2)
        & (h.channels.statistic == "spatial_mean")
    ].value.to_numpy()
    np.testing.assert_array_equal(drawn["lines"]["probe"].to_numpy(), expected)
    np.testing.assert_array_equal(drawn["sparsity"], fm.sparsity["features.block1.relu"][:, 2])
    with pytest.raises(ValueError, match=r"channel must be an int in \[0, 5\]"):
        plots.channel_over_epochs(fm, "features.block1.relu", 6)


def test_learning_curves_draw_the_run_and_earlier_runs_faintly():
    h, old = synthetic_history(epochs=6), synthetic_history(epochs=9, seed=3)
    drawn: dict = {}
    fig = plots.learning_curves(h, [old], [(2, "λ 0→1")], total_epochs=10, data=drawn)
    np.testing.assert_array_equal(line_by_gid(fig, "loss:test").get_ydata(), h.metric("test", "loss").to_numpy())
    earlier = line_by_gid(fig, "earlier:loss")
    np.testing.assert_array_equal(earlier.get_ydata(), old.metric("test", "loss").to_numpy())
    assert earlier.get_alpha() < 1 and line_by_gid(fig, "change:2").get_xdata()[0] == 2.5
    assert fig.axes[0].get_xlim()[1] == 10.5 and drawn["earlier"] == 1  # epochs 0..5: room up to 10
    wide = plots.learning_curves(synthetic_history(epochs=41), total_epochs=200)
    assert wide.axes[0].get_xlim()[1] == 50.5  # 1.25 × 40, not all 200 epochs
    with pytest.raises(NoData):
        plots.learning_curves(type(h)())


def test_learning_curves_wrap_into_rows_for_a_page():
    h = synthetic_history(epochs=6)
    one_row = plots.learning_curves(h)
    wrapped = plots.learning_curves(h, columns=2)
    boxes = [ax.get_position() for ax in wrapped.axes[:3]]
    assert boxes[0].y0 == pytest.approx(boxes[1].y0) and boxes[2].y1 < boxes[0].y0  # loss, accuracy; sparsity below
    assert boxes[2].width > 1.5 * boxes[0].width  # the last panel spans the short last row
    assert wrapped.get_figwidth() < one_row.get_figwidth() and wrapped.get_figheight() > one_row.get_figheight()
    assert [ax.get_title() for ax in wrapped.axes[:3]] == ["loss", "accuracy", "sparsity per layer (test)"]
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        plots.learning_curves(h, columns=0)
