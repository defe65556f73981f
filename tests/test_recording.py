"""Tests of xaisparse.recording: layer selection, hook lifecycle, call sites, fx exposure."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation
from torch import nn
from torchvision.models import resnet18, vgg11

from xaisparse._errors import UnknownLayerError
from xaisparse.recording import (
    ActivationRecorder,
    call_site_base,
    call_site_name,
    default_activation_layers,
    expose_functional_activations,
    positionwise_activation_layers,
    select_layers,
)
from xaisparse.testing import count_hooks


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(4 * 4 * 4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FunctionalCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 3, 3)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = self.conv2(x).relu()
        return self.fc(torch.tanh(x).mean((2, 3)))


class Collect:
    """A sink that copies each activation at hook time (consumes it immediately)."""

    def __init__(self) -> None:
        self.seen: dict[str, torch.Tensor] = {}
        self.order: list[str] = []

    def __call__(self, name: str, a: torch.Tensor) -> None:
        self.order.append(name)
        self.seen[name] = a.detach().clone()


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


@pytest.fixture
def cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN()


X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))


# -- selection ---------------------------------------------------------------------------------
def test_model_must_be_module() -> None:
    with pytest.raises(TypeError, match="nn.Module.*got list"):
        ActivationRecorder([nn.ReLU()])
    with pytest.raises(TypeError, match="got function"):
        select_layers(lambda x: x)


def test_default_selection_small_cnn(cnn: SmallCNN) -> None:
    assert default_activation_layers(cnn) == ["features.1", "features.3"]
    assert ActivationRecorder(cnn).modules == ["features.1", "features.3"]


def test_default_selection_vgg11() -> None:
    with torch.device("meta"):
        vgg = vgg11(num_classes=10)
    expected = [f"features.{i}" for i in (1, 4, 7, 9, 12, 14, 17, 19)]
    assert expected == [f"features.{i}" for i, m in enumerate(vgg.features) if isinstance(m, nn.ReLU)]
    assert default_activation_layers(vgg) == expected  # classifier ReLUs excluded


def test_default_selection_resnet18_call_sites(resnet: nn.Module) -> None:
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert default_activation_layers(resnet) == ["relu"] + [f"{b}.relu" for b in blocks]
    sink = Collect()
    with torch.no_grad(), ActivationRecorder(resnet, callback=sink) as rec:
        resnet(torch.randn(1, 3, 32, 32))
        resnet(torch.randn(1, 3, 32, 32))  # counters restart: no "#3", no duplicates
    expected_sites = ["relu"] + [s for b in blocks for s in (f"{b}.relu", f"{b}.relu#2")]
    assert rec.layer_names == expected_sites
    assert len(rec.layer_names) == 17
    assert sink.order == expected_sites * 2
    assert {"layer1.0.relu", "layer1.0.relu#2"} <= set(sink.seen)


def test_glob_type_predicate_list_module_selectors(cnn: SmallCNN) -> None:
    assert select_layers(cnn, "features.*") == [f"features.{i}" for i in range(4)]
    assert select_layers(cnn, "classifier.1") == ["classifier.1"]
    assert select_layers(cnn, nn.Conv2d) == ["features.0", "features.2"]
    assert select_layers(cnn, (nn.Conv2d, nn.Linear)) == ["features.0", "features.2", "classifier.1", "classifier.3"]
    assert select_layers(cnn, nn.ReLU) == ["features.1", "features.3", "classifier.2"]
    pred = lambda name, m: isinstance(m, nn.Linear) and name.endswith("3")  # noqa: E731
    assert select_layers(cnn, pred) == ["classifier.3"]
    # a list is a union, returned in registration order without duplicates
    assert select_layers(cnn, [pred, "features.?", cnn.classifier[1], nn.Conv2d]) == [
        "features.0",
        "features.1",
        "features.2",
        "features.3",
        "classifier.1",
        "classifier.3",
    ]
    assert select_layers(cnn, cnn.features) == ["features"]


def test_unknown_name_lists_closest(cnn: SmallCNN) -> None:
    with pytest.raises(UnknownLayerError, match="features.1") as info:
        ActivationRecorder(cnn, "feature.1")
    assert isinstance(info.value, ValueError)
    assert "'feature.1'" in str(info.value)
    with pytest.raises(UnknownLayerError, match="classifier"):
        select_layers(cnn, "clasifier.*")
    with pytest.raises(UnknownLayerError, match="not a submodule"):
        select_layers(cnn, nn.ReLU())


def test_empty_and_invalid_selection(cnn: SmallCNN) -> None:
    with pytest.raises(ValueError, match=r"selects no layer.*features\.0 \(Conv2d\)"):
        select_layers(cnn, nn.GELU)
    with pytest.raises(ValueError, match="selects no layer"):
        select_layers(cnn, lambda n, m: False)
    with pytest.raises(ValueError, match="selects no layer"):
        select_layers(cnn, [])
    with pytest.raises(TypeError, match="got int"):
        select_layers(cnn, 3)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        select_layers(cnn, int)


def test_default_errors_explain_alternatives() -> None:
    with pytest.raises(ValueError, match="functional") as info:
        default_activation_layers(FunctionalCNN())
    assert "layers=nn.Conv2d" in str(info.value)
    assert "expose_functional_activations" in str(info.value)
    with pytest.raises(ValueError, match="no Conv1d/Conv2d/Conv3d"):
        ActivationRecorder(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))


# -- values: Captum as the independent reference -------------------------------------------------
def test_matches_captum_layer_activation_small_cnn(cnn: SmallCNN) -> None:
    names = ["features.0", "features.1", "features.3", "classifier.2", "classifier.3"]
    sink = Collect()
    with ActivationRecorder(cnn, names, callback=sink):
        cnn(X)
    for name in names:
        ref = LayerActivation(cnn, cnn.get_submodule(name)).attribute(X)
        torch.testing.assert_close(sink.seen[name], ref, rtol=0, atol=0)


def test_matches_captum_layer_activation_resnet18(resnet: nn.Module) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    sink = Collect()
    with ActivationRecorder(resnet, ["layer1.0.bn1", "layer1.0.relu"], callback=sink):
        resnet(x)
    # bn1 output is modified in place by the following ReLU(inplace=True): the value at hook
    # time (pre-activation, has negatives) is what both Captum and the recorder report.
    ref_bn = LayerActivation(resnet, resnet.layer1[0].bn1).attribute(x)
    assert (ref_bn < 0).any()
    torch.testing.assert_close(sink.seen["layer1.0.bn1"], ref_bn, rtol=0, atol=0)
    # Captum keeps the last call of a reused module: the block's second ReLU call site.
    ref_relu = LayerActivation(resnet, resnet.layer1[0].relu).attribute(x, attribute_to_layer_input=False)
    torch.testing.assert_close(sink.seen["layer1.0.relu#2"], ref_relu, rtol=0, atol=0)
    assert not torch.equal(sink.seen["layer1.0.relu"], sink.seen["layer1.0.relu#2"])


# -- lifecycle ------------------------------------------------------------------------------------
def test_nothing_registered_in_init_and_attach_idempotent(cnn: SmallCNN) -> None:
    rec = ActivationRecorder(cnn, nn.ReLU)
    assert count_hooks(cnn) == 0 and not rec.attached
    rec.attach()
    n = count_hooks(cnn)
    # one forward hook per selected module, plus the root's pre-hook and post-hook (the
    # latter is also listed in ``_forward_hooks_always_called``)
    assert [len(m._forward_hooks) for m in cnn.modules() if isinstance(m, nn.ReLU)] == [1, 1, 1]
    assert (len(cnn._forward_pre_hooks), len(cnn._forward_hooks)) == (1, 1)
    assert n == 3 + 2 + 1
    rec.attach()
    assert count_hooks(cnn) == n
    rec.detach()
    assert count_hooks(cnn) == 0 and not rec.attached
    rec.detach()  # harmless when not attached
    assert count_hooks(cnn) == 0


def test_no_hooks_after_exception_in_body(cnn: SmallCNN) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with ActivationRecorder(cnn, nn.ReLU, callback=lambda n, a: None):
            cnn(X)
            assert count_hooks(cnn) > 0
            raise RuntimeError("boom")
    assert count_hooks(cnn) == 0


class Boom(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("forward failed")


def test_no_hooks_after_exception_in_forward_and_counters_recover() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), relu, relu, Boom())
    sink = Collect()
    with pytest.warns(UserWarning, match="could not be searched for"):  # fx's trace runs into Boom too
        rec = ActivationRecorder(model, callback=sink).attach()
    with pytest.raises(RuntimeError, match="forward failed"):
        model(X)
    del model[3]  # forward works again; counters restart from scratch
    sink.order.clear()
    model(X)
    assert sink.order == ["1", "1#2"]
    rec.detach()
    assert count_hooks(model) == 0
    model.append(Boom())
    with pytest.raises(RuntimeError, match="forward failed"), pytest.warns(UserWarning, match="searched"):
        with ActivationRecorder(model, callback=sink):
            model(X)
    assert count_hooks(model) == 0


def test_exception_in_callback_leaves_no_hooks(cnn: SmallCNN) -> None:
    def bad(name: str, a: torch.Tensor) -> None:
        raise KeyError(name)

    with pytest.raises(KeyError, match="features.1"):
        with ActivationRecorder(cnn, callback=bad):
            cnn(X)
    assert count_hooks(cnn) == 0


def test_model_left_exactly_as_it_was(resnet: nn.Module) -> None:
    before_state = {k: v.clone() for k, v in resnet.state_dict().items()}
    before_keys = {name: set(m.__dict__) for name, m in resnet.named_modules()}
    before_mods = {name: m for name, m in resnet.named_modules()}
    before_flags = {name: m.training for name, m in resnet.named_modules()}
    rec = ActivationRecorder(resnet, callback=lambda n, a: None)
    rec.attach()
    rec.attach()
    with torch.no_grad():
        resnet(torch.randn(1, 3, 32, 32))
    rec.detach()
    with ActivationRecorder(resnet, "layer*.bn*", callback=lambda n, a: None), torch.no_grad():
        resnet(torch.randn(1, 3, 32, 32))
    assert count_hooks(resnet) == 0
    assert dict(resnet.named_modules()) == before_mods  # same objects, none replaced
    assert {name: set(m.__dict__) for name, m in resnet.named_modules()} == before_keys
    assert {name: m.training for name, m in resnet.named_modules()} == before_flags
    after = resnet.state_dict()
    assert after.keys() == before_state.keys()
    assert all(torch.equal(after[k], v) for k, v in before_state.items())


def test_paused_and_callback_management(cnn: SmallCNN) -> None:
    first, second = Collect(), Collect()
    rec = ActivationRecorder(cnn, callback=first)
    assert rec.add_callback(second) is second
    with rec:
        with rec.paused():
            cnn(X)
            assert rec.attached
        assert first.order == [] and second.order == []
        cnn(X)
        rec.remove_callback(second)
        cnn(X)
    assert first.order == ["features.1", "features.3"] * 2
    assert second.order == ["features.1", "features.3"]
    with pytest.raises(ValueError, match="not registered"):
        rec.remove_callback(second)
    with pytest.raises(TypeError, match="callable"):
        rec.add_callback("not a function")  # type: ignore[arg-type]


def test_submodule_called_outside_root_forward_keeps_plain_name(cnn: SmallCNN) -> None:
    sink = Collect()
    with ActivationRecorder(cnn, callback=sink):
        cnn.features(X)
        cnn.features(X)
    assert sink.order == ["features.1", "features.3"] * 2


# -- tensors: inplace, no_grad, train/eval, autograd -------------------------------------------
class AddOneInplace(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x += 1
        return x


def test_inplace_relu_values_at_hook_time() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(inplace=True), AddOneInplace())
    sums, kept = [], []

    def sink(name: str, a: torch.Tensor) -> None:
        sums.append(a.sum().item())  # a statistic computed immediately
        kept.append(a)  # what sinks must NOT do: keep the live tensor

    with torch.no_grad(), ActivationRecorder(model, callback=sink):
        out = model(X)
    ref = F.relu(model[0](X))
    assert sums == [pytest.approx(ref.sum().item(), rel=1e-6)]
    assert (ref == 0).any()
    # the kept reference was changed by the later in-place op: it is the model's output
    assert kept[0] is out
    torch.testing.assert_close(kept[0], ref + 1)


def test_no_grad_and_eval_train_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU())
    sink = Collect()
    grads: list[bool] = []
    rec = ActivationRecorder(model, callback=sink)
    rec.add_callback(lambda n, a: grads.append(a.requires_grad))
    with rec:
        model.train()
        model(X)
        train_ref = F.relu(F.batch_norm(model[0](X), None, None, training=True))
        torch.testing.assert_close(sink.seen["2"], train_ref)
        model.eval()
        with torch.no_grad():
            model(X)
        eval_ref = F.relu(model[1](model[0](X)))
        torch.testing.assert_close(sink.seen["2"], eval_ref)
    assert grads == [True, False]
    assert model.training is False


def test_recorded_tensors_keep_autograd_graph(cnn: SmallCNN) -> None:
    live: list[torch.Tensor] = []
    with ActivationRecorder(cnn, callback=lambda n, a: live.append(a)):
        cnn(X)
    assert all(a.grad_fn is not None for a in live)
    sum(a.sum() for a in live).backward()
    got = cnn.features[0].weight.grad.clone()
    assert got.abs().sum() > 0
    cnn.zero_grad()
    h1 = F.relu(cnn.features[0](X))
    (h1.sum() + F.relu(cnn.features[2](h1)).sum()).backward()
    torch.testing.assert_close(got, cnn.features[0].weight.grad)


# -- outputs of other shapes --------------------------------------------------------------------
def test_tuple_output_records_first_tensor() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, batch_first=True)
    model = nn.Sequential(lstm)
    sink = Collect()
    x = torch.randn(2, 3, 4)
    with ActivationRecorder(model, nn.LSTM, callback=sink):
        model(x)
    torch.testing.assert_close(sink.seen["0"], lstm(x)[0])


class DictOut(nn.Module):
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"x": x}


def test_non_tensor_output_raises_naming_layer() -> None:
    model = nn.Sequential(nn.Identity(), DictOut())
    with pytest.raises(TypeError, match="'1' \\(DictOut\\) returned dict"):
        with ActivationRecorder(model, DictOut, callback=lambda n, a: None):
            model(X)
    assert count_hooks(model) == 0


# -- expose_functional_activations ----------------------------------------------------------------
def test_expose_functional_activations_records_and_shares_parameters() -> None:
    torch.manual_seed(0)
    model = FunctionalCNN()
    keys_before = {name: set(m.__dict__) for name, m in model.named_modules()}
    gm = expose_functional_activations(model, X)
    assert isinstance(gm, torch.fx.GraphModule)
    # the original object is untouched
    assert [n for n, _ in model.named_children()] == ["conv1", "conv2", "fc"]
    assert {name: set(m.__dict__) for name, m in model.named_modules()} == keys_before
    # registered in execution order, so the default selection finds the conv activations; named
    # as the recorder names the calls on the model itself (one naming scheme)
    assert [n for n, _ in gm.named_children()] == ["conv1", "relu", "conv2", "relu#2", "tanh", "fc"]
    assert isinstance(gm.relu, nn.ReLU) and isinstance(gm.tanh, nn.Tanh)
    sink = Collect()
    with ActivationRecorder(gm, callback=sink) as rec:
        out = gm(X)
    assert rec.layer_names == ["relu", "relu#2", "tanh"]
    with pytest.warns(UserWarning, match=r"cannot be recorded on the model itself: \['tanh'\]"):
        assert ActivationRecorder(model).functional_sites == ["relu", "relu#2"]
    h1 = F.relu(model.conv1(X))
    h2 = F.relu(model.conv2(h1))
    torch.testing.assert_close(sink.seen["relu"], h1)
    torch.testing.assert_close(sink.seen["relu#2"], h2)
    torch.testing.assert_close(sink.seen["tanh"], torch.tanh(h2))
    torch.testing.assert_close(out, model(X))
    # same Parameter objects: training the GraphModule trains the original model
    assert {id(p) for p in gm.parameters()} == {id(p) for p in model.parameters()}
    before = model.conv1.weight.detach().clone()
    opt = torch.optim.SGD(gm.parameters(), lr=0.1)
    gm(X).sum().backward()
    opt.step()
    assert not torch.equal(model.conv1.weight, before)
    assert count_hooks(gm) == 0 and count_hooks(model) == 0


def test_expose_keeps_arguments_and_flags() -> None:
    class Args(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.leaky_relu(self.conv(x), 0.3)
            return F.gelu(x, approximate="tanh") + torch.relu_(x.clone())

    model = Args().eval()
    gm = expose_functional_activations(model, X)
    assert gm.leaky_relu.negative_slope == 0.3
    assert gm.gelu.approximate == "tanh"
    assert gm.relu.inplace is True  # torch.relu_ -> "relu", as the recorder names the call
    assert gm.training is False and all(not m.training for m in gm.modules())
    torch.testing.assert_close(gm(X), model(X))


def test_expose_errors_and_warnings(cnn: SmallCNN) -> None:
    class Untraceable(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x if x.sum() > 0 else -x

    with pytest.raises(TypeError, match="layers=nn.Conv2d"):
        expose_functional_activations(Untraceable())
    with pytest.raises(TypeError, match="nn.Module"):
        expose_functional_activations("model")  # type: ignore[arg-type]
    with pytest.warns(UserWarning, match="no functional activation"):
        expose_functional_activations(cnn)


# -- functional activations recorded on the model itself (default selection) -------------------
class FunctionalMix(nn.Module):
    """Each way a functional activation is taken, and the calls that are left out.

    ``F.relu(bn1(...), inplace=True)``: at ``bn1``'s output; ``F.silu(conv2(...), inplace=True)``:
    at ``conv2``'s output, on a copy (SiLU's backward needs its input, which the model then
    overwrites); ``F.relu(x + y)``: at ``conv3``'s input; ``F.gelu(fc1(...))`` on a channels-last
    grid: at ``fc1``'s output, channels last; ``torch.sigmoid(y.mean(...) * 2)``: no module next
    to it (a warning); ``F.relu(head(h))`` and ``.tanh()`` on ``(N, F)`` vectors: classifier, skipped.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv2, self.conv3 = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 6, 3)
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(6), nn.Linear(6, 8), nn.Linear(8, 6)
        self.head, self.out = nn.Linear(6, 5), nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = F.silu(self.conv2(x), inplace=True)
        y = y * torch.sigmoid(y.mean((2, 3), keepdim=True) * 2)
        h = self.conv3(F.relu(x + y)).permute(0, 2, 3, 1)
        h = self.fc2(F.gelu(self.fc1(self.norm(h)))).mean((1, 2))
        return self.out(F.relu(self.head(h))).tanh()


EXPECTED_TAPS = [  # (site, module, call, where)
    ("relu", "bn1", 1, "output"),
    ("silu", "conv2", 1, "output"),
    ("relu#2", "conv3", 1, "input"),
    ("gelu", "fc1", 1, "output"),
    ("relu#3", "head", 1, "output"),
    ("tanh", "out", 1, "output"),
]
#: Our site -> the activation module of expose_functional_activations' traced copy (the same name).
EXPOSED = {"relu": "relu", "silu": "silu", "relu#2": "relu#2", "gelu": "gelu"}


def _functional_mix() -> nn.Module:
    torch.manual_seed(0)
    return FunctionalMix()


def test_call_site_names_written_and_read_in_one_place() -> None:
    assert call_site_name("layer1.0.relu", 1) == "layer1.0.relu"
    assert call_site_name("layer1.0.relu", 3) == "layer1.0.relu#3"
    assert call_site_base("layer1.0.relu#3") == "layer1.0.relu"
    assert call_site_base("inception3a.branch1.relu") == "inception3a.branch1.relu"


def test_functional_activations_found_and_taken_where_documented() -> None:
    model = _functional_mix().eval()
    with pytest.warns(UserWarning, match=r"1 functional activation call.*\['sigmoid'\]"):
        rec = ActivationRecorder(model)
    assert rec.modules == []  # no activation module at all
    got = [(a.site, a.module, a.call, a.where) for a in rec.functional_activations]
    assert got == EXPECTED_TAPS
    flags = {a.site: (a.copy_input, a.channels_last) for a in rec.functional_activations}
    assert flags["silu"] == (True, False) and flags["relu"] == (False, False)  # ReLU's backward needs no input
    assert flags["gelu"] == (False, True) and flags["relu#3"] == (False, True)
    assert rec.functional_sites == [s for s, *_ in EXPECTED_TAPS]
    # tracing both modes restored every training flag
    assert all(not m.training for m in model.modules())


def test_functional_values_equal_the_traced_reference_exactly() -> None:
    model = _functional_mix().eval()
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = expose_functional_activations(model, x)
        rec = ActivationRecorder(model, callback=(ours := Collect()))
    plain = model(x)
    ref = Collect()
    with torch.no_grad(), ActivationRecorder(gm, list(EXPOSED.values()), callback=ref):
        gm(x)
    with torch.no_grad(), rec:
        out = model(x)
    assert torch.equal(out, plain)  # the model computes what it computed without us
    assert ours.order == list(EXPOSED)  # the (N, F) classifier calls are not recorded
    for site, module in EXPOSED.items():
        assert torch.equal(ours.seen[site], ref.seen[module]), site
    # channels-last: the GELU output (N, H, W, C) is handed over as (N, C, H, W)
    gelu_nhwc = ref.seen["gelu"].movedim(1, -1)
    assert ours.seen["gelu"].shape == (3, 8, 6, 6) and gelu_nhwc.shape == (3, 6, 6, 8)
    assert count_hooks(model) == 0


def test_functional_penalty_gradient_equals_the_traced_reference() -> None:
    from xaisparse.penalty import SparsityPenalty

    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    grads = []
    for exposed in (False, True):
        model = _functional_mix().train()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = expose_functional_activations(model) if exposed else model
            penalty = SparsityPenalty(net, list(EXPOSED.values()) if exposed else None, weight=0.5)
        with penalty:
            loss = net(x).square().mean() + penalty()  # in-place ReLU and SiLU in the forward
        loss.backward()  # the copy taken for the in-place SiLU keeps the graph valid
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    ours, ref = grads
    assert ours.keys() == ref.keys() and "conv1.weight" in ours
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], msg=name)


def test_functional_googlenet_equals_traced_reference() -> None:
    from torchvision.models import googlenet

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # init-weights FutureWarning
        model = googlenet(init_weights=False).eval()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    ours, ref = Collect(), Collect()
    gm = expose_functional_activations(model)
    rec = ActivationRecorder(model, callback=ours)
    assert len(rec.functional_sites) == 61  # 57 in eval mode, 4 more in the auxiliary heads (training)
    with torch.no_grad(), rec:
        model(x)
    with torch.no_grad(), ActivationRecorder(gm, nn.ReLU, callback=ref):
        gm(x)
    relus = [n for n in ref.order if n in ref.seen]
    assert len(ours.order) == len(relus) == 57
    assert ours.order[:2] == ["conv1.relu", "conv2.relu"] and "inception5b.branch4.1.relu" in ours.order
    for site, module in zip(ours.order, relus):
        assert torch.equal(ours.seen[site], ref.seen[module]), site


def test_untraceable_model_without_activation_modules_gets_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return F.relu(y) if y.sum() > 0 else torch.tanh(y)

    with pytest.raises(ValueError, match="cannot be traced by torch.fx") as info:
        ActivationRecorder(Branchy())
    assert "layers=nn.Conv2d" in str(info.value) and "expose_functional_activations" in str(info.value)
    rec = ActivationRecorder(Branchy(), nn.Conv2d)  # the alternative it names works
    assert rec.modules == ["conv"]


# -- position-wise (channels-last) activation modules -----------------------------------------------
class ConvNeXtish(nn.Module):
    """A ConvNeXt block (depth-wise conv, then LayerNorm/Linear/GELU/Linear on (N, H, W, C)),
    a constant MLP on a coordinate table (as Swin V2's position bias), and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 6, 3)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.mlp = nn.Sequential(nn.LayerNorm(6), nn.Linear(6, 12), nn.GELU(), nn.Linear(12, 6))
        self.bias_mlp = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 1))
        self.register_buffer("coords", torch.linspace(-1, 1, 2 * 9).reshape(1, 3, 3, 2))
        self.head = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.mlp(self.dw(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        bias = self.bias_mlp(self.coords).mean()
        return self.head((x + y).mean((2, 3)) + bias)


def test_positionwise_default_selection_and_error_message() -> None:
    model = ConvNeXtish()
    with pytest.raises(ValueError, match="follow nn.Linear layers, not convolutions") as info:
        default_activation_layers(model)
    assert "functional" not in str(info.value)  # the old message blamed functional calls
    assert positionwise_activation_layers(model) == ["mlp.2", "bias_mlp.1", "head.1"]
    rec = ActivationRecorder(model)
    assert rec.modules == ["mlp.2", "head.1"]  # bias_mlp.1 never sees the input (fx trace)
    sink = Collect()
    rec.add_callback(sink)
    x = torch.randn(2, 1, 7, 7, generator=torch.Generator().manual_seed(6))
    with torch.no_grad(), rec:
        model(x)
    assert sink.order == ["mlp.2"]  # head.1 acts on (N, F) vectors: a classifier, skipped
    with torch.no_grad():
        ref = model.mlp[2](model.mlp[1](model.mlp[0](model.dw(model.stem(x)).permute(0, 2, 3, 1))))
    assert ref.shape == (2, 5, 5, 12)
    assert torch.equal(sink.seen["mlp.2"], ref.permute(0, 3, 1, 2))  # channels (Linear features) on axis 1
    # explicitly selected, a Linear-fed activation is still channels-last, and (N, F) outputs pass as they are
    sink = Collect()
    with torch.no_grad(), ActivationRecorder(model, ["mlp.1", "head.1"], callback=sink):
        model(x)
    assert sink.seen["mlp.1"].shape == (2, 12, 5, 5) and sink.seen["head.1"].shape == (2, 5)


# -- wrappers ----------------------------------------------------------------------------------------
def test_dataparallel_is_recorded_through_its_module_and_replicas_raise(cnn: SmallCNN) -> None:
    dp = nn.DataParallel(cnn)  # without GPUs DataParallel calls the module directly
    ours, ref = Collect(), Collect()
    with torch.no_grad(), ActivationRecorder(dp, callback=ours) as rec:
        dp(X)
    with torch.no_grad(), ActivationRecorder(cnn, callback=ref):
        cnn(X)
    assert rec.model is cnn and rec.layer_names == ["features.1", "features.3"]
    assert ours.order == ref.order and all(torch.equal(ours.seen[k], ref.seen[k]) for k in ref.seen)
    # over several GPUs DataParallel runs replicas of the module (sharing its hooks) in threads
    replica = cnn._replicate_for_data_parallel()
    with ActivationRecorder(dp, callback=ours), pytest.raises(RuntimeError, match="DistributedDataParallel"):
        replica(X)
    assert count_hooks(cnn) == 0
