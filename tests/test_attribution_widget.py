"""AttributionComparison driven in plain pytest: set control values, read the figures and their
data back, and compare with Captum called directly (and with the phase-1 functions, which
tests/test_attribution.py checks against Captum, ground truth and NumPy/SciPy)."""

from __future__ import annotations

import base64
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from tests import oracle
from tests.test_widgets import tiny_net

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from torch import nn  # noqa: E402

from xaisparse import UnknownLayerError  # noqa: E402
from xaisparse.attribution import channel_table  # noqa: E402
from xaisparse.testing import count_hooks  # noqa: E402
from xaisparse.widgets import AttributionComparison  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]

PNG = b"\x89PNG\r\n\x1a\n"
N_STEPS = 8


def net(seed: int) -> nn.Module:
    """tests.test_widgets' tiny two-block CNN, initialised from ``seed``, in eval mode."""
    return tiny_net(seed).eval()


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    x = torch.rand(7, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    return {"a": net(0), "b": net(1)}, x, y


@pytest.fixture
def widget(setup):
    models, x, y = setup
    return AttributionComparison(models, x, y, n_steps=N_STEPS)


def shown_maps(w) -> dict[str, np.ndarray]:
    return w.data["maps"]


def captum_maps(a: torch.Tensor, chosen) -> np.ndarray:
    return np.abs(a.detach().double().numpy()).sum(1)[chosen]


def seeded(fn):
    np.random.seed(0)  # noqa: NPY002 - Captum's GradientShap draws from NumPy's global generator
    torch.manual_seed(0)
    return fn()


def test_maps_equal_captum_for_every_algorithm(setup, widget):
    models, x, y = setup
    w = widget
    assert w.message == "" and w.view_buttons.value == "maps" and w.images_select.value == (0, 1, 2, 3)
    assert w.data["rows"] == ["a", "b"] and w.data["images"] == [0, 1, 2, 3]
    zeros = torch.zeros(1, 1, 8, 8)
    references = {
        "integrated_gradients": lambda m: captum_attr.IntegratedGradients(m).attribute(
            x, target=y, n_steps=N_STEPS, baselines=zeros
        ),
        "saliency": lambda m: captum_attr.Saliency(m).attribute(x, target=y),
        "input_x_gradient": lambda m: captum_attr.InputXGradient(m).attribute(x, target=y),
        "gradient_shap": lambda m: seeded(lambda: captum_attr.GradientShap(m).attribute(x, zeros, target=y)),
        "occlusion": lambda m: captum_attr.Occlusion(m).attribute(x, target=y, sliding_window_shapes=(1, 2, 2)),
    }
    pngs = set()
    for algorithm, reference in references.items():
        w.algorithm_dropdown.value = algorithm
        assert w.message == "", algorithm
        pngs.add(bytes(w.image.value))
        for name, model in models.items():
            np.testing.assert_allclose(
                shown_maps(w)[name], captum_maps(reference(model), [0, 1, 2, 3]), rtol=1e-5, atol=1e-7
            )
    assert len(pngs) == 5 and all(p.startswith(PNG) for p in pngs)

    # the titles carry the prediction and the map's sparsity (NumPy/SciPy on Captum's output)
    w.algorithm_dropdown.value = "saliency"
    w.images_select.value = (5, 2)
    fig = w.to_figure()
    ref = captum_maps(references["saliency"](models["b"]), [5, 2])
    with torch.no_grad():
        pred = models["b"](x).argmax(1)[[5, 2]].tolist()
    want = [
        f"pred {p}{'' if p == t else ' ✗'} · s = {oracle.sparsity_of_vector(m):.3f}"
        for p, t, m in zip(pred, [2, 2], ref)
    ]
    assert [fig.axes[k].get_title() for k in (4, 5)] == want  # row "b" (after the input row and row "a")
    assert [fig.axes[k].get_title() for k in (0, 1)] == ["image 5 · label 2", "image 2 · label 2"]
    np.testing.assert_allclose(w.data["sparsity"]["b"], [oracle.sparsity_of_vector(m) for m in ref], atol=1e-6)

    # signed view, noise tunnel, and a model left out
    w.sign_dropdown.value = "all"
    w.algorithm_dropdown.value = "integrated_gradients"
    np.testing.assert_allclose(
        shown_maps(w)["a"],
        references["integrated_gradients"](models["a"]).detach().double().numpy().sum(1)[[5, 2]],
        rtol=1e-5,
        atol=1e-7,
    )
    w.sign_dropdown.value = "absolute_value"
    w.algorithm_dropdown.value = "saliency"
    w.smooth_checkbox.value = True
    stdevs = 0.15 * float(x.max() - x.min())
    ref = seeded(
        lambda: captum_attr.NoiseTunnel(captum_attr.Saliency(models["a"])).attribute(
            x, target=y, nt_samples=8, stdevs=stdevs
        )
    )
    np.testing.assert_allclose(shown_maps(w)["a"], captum_maps(ref, [5, 2]), rtol=1e-5, atol=1e-7)
    assert "NoiseTunnel" in w.to_figure()._suptitle.get_text()
    w.models_select.value = ("b",)
    assert w.data["rows"] == ["b"] and len(w.to_figure().axes) == 2 * 2 + 1


def test_predicted_targets_and_checkpoints(setup, tmp_path):
    models, x, _ = setup
    torch.save(models["b"].state_dict(), tmp_path / "b.pt")
    before = {k: v.clone() for k, v in models["a"].state_dict().items()}
    w = AttributionComparison(
        {"a": models["a"], "b from disk": tmp_path / "b.pt"}, x, architecture=models["a"], algorithm="saliency"
    )
    assert w.target == "predicted" and w.message == ""
    for k, v in models["a"].state_dict().items():  # the architecture passed in is not touched
        assert torch.equal(v, before[k])
    with torch.no_grad():
        pred = models["b"](x).argmax(1)
    assert torch.equal(w.targets["b from disk"], pred)
    ref = captum_attr.Saliency(models["b"]).attribute(x, target=pred)
    np.testing.assert_allclose(shown_maps(w)["b from disk"], captum_maps(ref, [0, 1, 2, 3]), rtol=1e-6)
    assert w.images_select.options[0][0] == "image 0"
    assert w.to_figure().axes[4].get_title().startswith("pred ")


def test_channel_view_equals_channel_table_sorted(setup, widget):
    models, x, y = setup
    w = widget
    png = bytes(w.image.value)
    w.view_buttons.value = "channels"
    assert w.maps_controls.layout.display == "none" and w.channel_controls.layout.display is None
    assert w.layer_dropdown.options == ("1", "3") and w.message == ""
    assert bytes(w.image.value) != png
    ref = channel_table(models["a"], [(x, y)], "1", n_steps=N_STEPS, progress=False)
    shown = w.data["shown"]
    order = ref.channels.ablation.abs().sort_values(ascending=False, kind="stable").index
    assert shown.channel.tolist() == ref.channels.channel[order].tolist()
    for column in ("sparsity", "dead_fraction", "gradcam", "conductance", "ablation"):
        np.testing.assert_allclose(shown[column], ref.channels[column][order], rtol=1e-6, atol=1e-9)
    assert [t.get_text() for t in w.to_figure().axes[1].get_yticklabels()] == [str(c) for c in shown.channel]

    w.sort_dropdown.value = "sparsity"
    by = ref.channels.sparsity.sort_values(ascending=False, kind="stable").index
    assert w.data["shown"].channel.tolist() == ref.channels.channel[by].tolist()
    w.importance_dropdown.value = "gradcam"
    w.sort_dropdown.value = "importance"
    by = ref.channels.gradcam.abs().sort_values(ascending=False, kind="stable").index
    assert w.data["shown"].channel.tolist() == ref.channels.channel[by].tolist()
    np.testing.assert_allclose(w.data["y"], ref.channels.gradcam.abs(), rtol=1e-6)

    w.model_dropdown.value = "b"
    w.layer_dropdown.value = "3"
    ref = channel_table(models["b"], [(x, y)], "3", n_steps=N_STEPS, progress=False)
    np.testing.assert_allclose(w.data["x"], ref.channels.sparsity, rtol=1e-6)
    assert w.data["model"] == "b" and len(w.data["channels"]) == 6
    assert w.to_figure()._suptitle.get_text().startswith("b · channel table of 3 on 7 images")


def test_captum_runs_only_for_views_it_has_not_computed(widget):
    w = widget
    assert w.captum_runs == [("maps", "a", "integrated_gradients", False), ("maps", "b", "integrated_gradients", False)]
    w.images_select.value = (1, 4, 6)
    w.sign_dropdown.value = "all"
    w.models_select.value = ("a",)
    assert len(w.captum_runs) == 2
    w.algorithm_dropdown.value = "saliency"
    assert w.captum_runs[2:] == [("maps", "a", "saliency", False)]
    w.algorithm_dropdown.value = "integrated_gradients"
    w.models_select.value = ("a", "b")
    assert len(w.captum_runs) == 3
    w.view_buttons.value = "channels"
    for value in ("sparsity", "dead_fraction", "importance"):
        w.sort_dropdown.value = value
    w.importance_dropdown.value = "conductance"
    w.view_buttons.value = "maps"
    w.view_buttons.value = "channels"
    assert w.captum_runs[3:] == [("channels", "a", "1")]
    w.layer_dropdown.value = "3"
    w.layer_dropdown.value = "1"
    assert w.captum_runs[4:] == [("channels", "a", "3")]


def test_bad_states_are_messages(setup, widget):
    _, x, y = setup
    w = widget
    w.images_select.value = ()
    assert w.message == "Select at least one image." and w.image.layout.display == "none"
    assert w._repr_png_().startswith(PNG)  # the message as a figure
    w.images_select.value = tuple(range(7))
    assert "7 images selected; the first 6 are shown" in w.message and w.data["images"] == [0, 1, 2, 3, 4, 5]
    w.models_select.value = ()
    assert w.message == "Select at least one model."
    w.models_select.value = ("a",)
    assert w.message_level == "warning" and bytes(w.image.value).startswith(PNG)

    class Shared(nn.Module):
        """One ReLU module used twice, in a forward torch.fx cannot trace: its calls cannot be taken apart."""

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.act = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()
            self.fc = nn.Linear(3 * 64, 3)

        def forward(self, t):
            h = self.act(self.conv2(self.act(self.conv1(t))))
            return self.fc(h.flatten(1) if h.sum() > 0 else -h.flatten(1))

    torch.manual_seed(0)
    shared = Shared().eval()
    bad = AttributionComparison(shared, x, y, view="channels", layer="act#2", n_steps=2)
    assert bad.message_level == "error" and "cannot be traced by torch.fx" in bad.message
    assert count_hooks(shared) == 0
    assert isinstance(bad.to_figure(), Figure)  # a message figure, no traceback
    bad.view_buttons.value = "maps"
    assert bad.message == "" and bytes(bad.image.value).startswith(PNG)


def test_train_mode_models_seeds_and_hooks(setup):
    _, x, y = setup
    model = net(2).train()
    model[1].eval()
    flags = [m.training for m in model.modules()]
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state().clone()  # noqa: NPY002
    w = AttributionComparison(model, x, y, algorithm="gradient_shap")
    assert "train mode" in w.message and w.message_level == "warning"
    w.view_buttons.value = "channels"
    assert [m.training for m in model.modules()] == flags and count_hooks(model) == 0
    assert np.array_equal(np.random.get_state()[1], np_state)  # noqa: NPY002
    assert torch.equal(torch.get_rng_state(), torch_state)
    w.view_buttons.value = "maps"
    assert w.message == ""  # the constructor's note goes once a control changes
    again = AttributionComparison(model, x, y, algorithm="gradient_shap")
    np.testing.assert_array_equal(again.data["maps"]["Sequential"], w.data["maps"]["Sequential"])  # seeded


def test_constructor_errors(setup):
    models, x, y = setup
    with pytest.raises(TypeError, match="nn.Module or a checkpoint"):
        AttributionComparison({"a": 42}, x, y)
    with pytest.raises(TypeError, match="checkpoint"):
        AttributionComparison({"a": "model.pt"}, x, y)
    with pytest.raises(ValueError, match="target='label' needs labels"):
        AttributionComparison(models, x, target="label")
    with pytest.raises(ValueError, match="labels go up to 5"):
        AttributionComparison(models, x, torch.tensor([5, 0, 0, 0, 0, 0, 0]))
    with pytest.raises(TypeError, match="integer class indices"):
        AttributionComparison(models, x, y.float())
    with pytest.raises(ValueError, match="holds 3 entries for 7 images"):
        AttributionComparison(models, x, y[:3])
    with pytest.raises(ValueError, match="algorithm must be one of"):
        AttributionComparison(models, x, y, algorithm="lime")
    with pytest.raises(UnknownLayerError, match="closest"):
        AttributionComparison(models, x, y, layer="33")
    with pytest.raises(ValueError, match="captum_kwargs key"):
        AttributionComparison(models, x, y, captum_kwargs={"deeplift": {}})
    with pytest.raises(ValueError, match="model must be one of"):
        AttributionComparison(models, x, y, model="c")
    with pytest.raises(ValueError, match="at least one entry"):
        AttributionComparison({}, x, y)
    with pytest.raises(TypeError, match="images must be a tensor"):
        AttributionComparison(models, "images")


def test_dataset_input_and_captum_kwargs(setup):
    from torch.utils.data import TensorDataset

    models, _, _ = setup
    torch.manual_seed(5)
    data = TensorDataset(torch.rand(40, 1, 8, 8), torch.randint(0, 3, (40,)))
    w = AttributionComparison(
        models["a"],
        data,
        algorithm="occlusion",
        captum_kwargs={"occlusion": {"sliding_window_shapes": (1, 4, 4), "strides": 4}},
    )
    assert "first 32 are offered" in w.message and w.images.shape == (32, 1, 8, 8)
    assert torch.equal(w.labels, data.tensors[1][:32])
    ref = captum_attr.Occlusion(models["a"]).attribute(
        data.tensors[0][:32], target=data.tensors[1][:32], sliding_window_shapes=(1, 4, 4), strides=4
    )
    np.testing.assert_allclose(shown_maps(w)["Sequential"], captum_maps(ref, [0, 1, 2, 3]), rtol=1e-6)


def test_static_form_and_bundle(widget):
    before = plt.get_fignums()
    assert isinstance(widget.to_figure(), Figure)
    bundle = widget._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]) == widget._repr_png_() and widget._repr_png_().startswith(PNG)
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/plain"].startswith("AttributionComparison(view='maps', models=['a', 'b']")
    assert plt.get_fignums() == before == []


def test_import_stays_torch_free():
    code = (
        "import sys, xaisparse.widgets as w, xaisparse.plots as p; "
        "assert 'torch' not in sys.modules and 'captum' not in sys.modules, sorted(sys.modules); "
        "assert 'AttributionComparison' in w.__all__ and 'attribution_maps' in p.__all__"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
