"""Tests of xaisparse.penalty.SparsityPenalty: gradients, value, layer weights, lifecycle, effect.

Penalty values are compared with an independent NumPy/SciPy computation of DESIGN §1 on
activations captured with Captum's ``LayerActivation`` (or a manual forward of a Sequential),
never with the project's own recorder or functional code.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerActivation
from torch import nn
from torch.func import functional_call
from torchvision.models import resnet18

from tests import oracle
from xaisparse._errors import UnknownLayerError
from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.testing import count_hooks

pytestmark = pytest.mark.usefixtures("one_thread")


# -- independent reference (NumPy + SciPy, DESIGN §1) ---------------------------------------------
def ref_layer_mean(acts: torch.Tensor) -> float:
    """Mean sparsity of one layer: over (sample, channel) maps, or over samples for 1x1 maps."""
    a = acts.detach().double().numpy()
    n, c = a.shape[:2]
    flat = a.reshape(n, c, -1)
    if flat.shape[-1] > 1:
        return float(oracle.sparsity_rows(flat).mean())
    return float(oracle.sparsity_rows(flat.mean(-1)).mean())  # channel axis: per-sample channel vector


def captum(model: nn.Module, names: list[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    mods = [model.get_submodule(n) for n in names]
    with torch.no_grad():
        out = LayerActivation(model, mods).attribute(x)
    return {n: o.detach().clone() for n, o in zip(names, out)}


# -- models ----------------------------------------------------------------------------------------
def double_cnn(dead_channel: bool = True) -> nn.Sequential:
    """A tiny float64 CNN whose ReLU outputs hold exact zeros (and, optionally, a dead channel)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2)
    ).double()
    if dead_channel:
        with torch.no_grad():
            model[0].bias[2] = -50.0  # conv1 channel 2: every map exactly zero, far from the kink
    return model


def manual_acts(model: nn.Sequential, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of every module of a Sequential, by a plain step-by-step forward (no hooks)."""
    out = {}
    with torch.no_grad():
        for name, mod in model.named_children():
            x = mod(x)
            out[name] = x.clone()
    return out


class SmallCNN(nn.Module):
    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def resnet_x() -> torch.Tensor:
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# -- gradients -------------------------------------------------------------------------------------
def test_gradcheck_params_and_input_with_exact_zeros() -> None:
    model = double_cnn()
    x = torch.randn(3, 2, 7, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    acts = manual_acts(model, x)
    for pre, post in (("0", "1"), ("2", "3")):
        assert (acts[post] == 0).any() and (acts[post] > 0).any()  # exact zeros are present
        # Finite differences must not cross the ReLU kink: pre-activations are far from 0.
        assert acts[pre].abs().min() > 1e-4, acts[pre].abs().min()
    assert (acts["1"][:, 2] == 0).all()  # a whole channel dead on every sample

    # The conv parameters (the penalty does not depend on the linear head).
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]
    params = tuple(model.get_parameter(n).detach().clone().requires_grad_() for n in names)

    with SparsityPenalty(model, weight=0.7) as penalty:

        def of_params(*ps: torch.Tensor) -> torch.Tensor:
            functional_call(model, dict(zip(names, ps)), (x,))
            return penalty()

        def of_input(inp: torch.Tensor) -> torch.Tensor:
            model(inp)
            return penalty()

        assert torch.autograd.gradcheck(of_params, params, eps=1e-6, atol=1e-5, nondet_tol=0)
        assert torch.autograd.gradcheck(of_input, (x.clone().requires_grad_(),), eps=1e-6, atol=1e-5, nondet_tol=0)
        # The gradient is not trivially zero.
        grads = torch.autograd.grad(of_params(*params), params)
        assert all(g.abs().sum() > 1e-6 for g in grads)


def test_gradients_finite_when_whole_maps_are_dead() -> None:
    model = double_cnn().float()
    with torch.no_grad():
        model[2].bias[1] = -1e3  # conv2 channel 1 dead too: its maps are all exactly zero
    x = torch.randn(4, 2, 7, 7, generator=torch.Generator().manual_seed(3), requires_grad=True)
    with SparsityPenalty(model, weight=1.0) as penalty:
        out = model(x)
        loss = out.square().mean() + penalty()
        loss.backward()
    acts = manual_acts(model, x.detach())
    assert (acts["1"][:, 2] == 0).all() and (acts["3"][:, 1] == 0).all()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    assert torch.isfinite(x.grad).all()

    # A layer whose every map is dead: penalty is exactly 1 (sparsity 1), gradients 0, no NaN.
    dead = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
    with torch.no_grad():
        dead[0].bias.fill_(-1e3)
    xd = torch.randn(2, 1, 6, 6, requires_grad=True)
    with SparsityPenalty(dead, weight=1.0) as penalty:
        dead(xd)
        value = penalty()
    value.backward()
    assert value.item() == 1.0
    assert all(torch.isfinite(p.grad).all() and (p.grad == 0).all() for p in dead.parameters())
    assert torch.isfinite(xd.grad).all()


# -- value -----------------------------------------------------------------------------------------
def test_value_matches_independent_computation_small_cnn() -> None:
    torch.manual_seed(4)
    model = SmallCNN()
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    lam, w = 0.37, {"features.1": 2.5}
    with SparsityPenalty(model, weight=lam, layer_weights=w) as penalty:
        model(x)
        value = penalty().item()
    acts = captum(model, ["features.1", "features.4"], x)
    expected = lam * (2.5 * ref_layer_mean(acts["features.1"]) + 1.0 * ref_layer_mean(acts["features.4"]))
    assert 0.05 < expected / lam < 3.5  # non-trivial sparsities
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_value_matches_independent_computation_resnet18(resnet: nn.Module, resnet_x: torch.Tensor) -> None:
    """All 17 call sites; layer4's 1x1 maps fall back to the channel axis (one warning each)."""
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with SparsityPenalty(resnet, weight=0.5) as penalty:
            resnet(resnet_x)
            terms = penalty.terms
            value = penalty().item()
    assert len(terms) == 17
    msgs = [str(w.message) for w in caught if "no spatial extent" in str(w.message)]
    assert len(msgs) == 4 and all("layer4" in m for m in msgs)

    last = captum(resnet, ["relu"] + [f"{b}.relu" for b in blocks], resnet_x)  # second calls
    first = captum(resnet, [f"{b}.bn1" for b in blocks], resnet_x)  # first call = relu(bn1)
    ref_terms = {"relu": ref_layer_mean(last["relu"])}
    for b in blocks:
        ref_terms[f"{b}.relu"] = ref_layer_mean(first[f"{b}.bn1"].clamp(min=0))
        ref_terms[f"{b}.relu#2"] = ref_layer_mean(last[f"{b}.relu"])
    assert set(terms) == set(ref_terms)
    for site, t in terms.items():
        np.testing.assert_allclose(t.item(), ref_terms[site], rtol=1e-5, atol=1e-6, err_msg=site)
    np.testing.assert_allclose(value, 0.5 * sum(ref_terms.values()), rtol=1e-5)


# -- layer weights ---------------------------------------------------------------------------------
def test_layer_weights_by_module_name_and_call_site(resnet: nn.Module, resnet_x: torch.Tensor) -> None:
    selected = SparsityPenalty(resnet).recorder.modules
    zeros = {name: 0.0 for name in selected}
    last = captum(resnet, ["layer1.0.relu"], resnet_x)["layer1.0.relu"]
    first = captum(resnet, ["layer1.0.bn1"], resnet_x)["layer1.0.bn1"].clamp(min=0)
    s_first, s_second = ref_layer_mean(first), ref_layer_mean(last)
    assert abs(s_first - s_second) > 1e-3  # the two call sites differ

    # Call-site name: only the block's second relu call.
    with SparsityPenalty(resnet, weight=0.3, layer_weights={**zeros, "layer1.0.relu#2": 2.0}) as penalty:
        resnet(resnet_x)
        assert set(penalty.terms) == {"layer1.0.relu#2"}
        np.testing.assert_allclose(penalty().item(), 0.3 * 2.0 * s_second, rtol=1e-5)

    # Module name: both calls of the module share its weight.
    with SparsityPenalty(resnet, weight=0.3, layer_weights={**zeros, "layer1.0.relu": 3.0}) as penalty:
        resnet(resnet_x)
        assert set(penalty.terms) == {"layer1.0.relu", "layer1.0.relu#2"}
        np.testing.assert_allclose(penalty().item(), 0.3 * 3.0 * (s_first + s_second), rtol=1e-5)

    # A call-site weight overrides its module's weight.
    w = {**zeros, "layer1.0.relu": 3.0, "layer1.0.relu#2": -1.0}
    with SparsityPenalty(resnet, weight=0.3, layer_weights=w) as penalty:
        resnet(resnet_x)
        np.testing.assert_allclose(penalty().item(), 0.3 * (3.0 * s_first - s_second), rtol=1e-5)


def test_unknown_layer_weight_name_raises_with_close_name(resnet: nn.Module) -> None:
    with pytest.raises(UnknownLayerError, match=r"layer1\.0\.relu") as info:
        SparsityPenalty(resnet, layer_weights={"layer1.0.reul": 1.0})
    assert isinstance(info.value, ValueError) and "layer1.0.reul" in str(info.value)
    with pytest.raises(UnknownLayerError, match=r"layer2\.1\.relu"):
        SparsityPenalty(resnet, layer_weights={"layer2.1.rlu#2": 1.0})
    with pytest.raises(UnknownLayerError):
        SparsityPenalty(resnet, layer_weights={"fc": 1.0})  # a module, but not a selected layer
    with pytest.raises(TypeError):
        SparsityPenalty(resnet, layer_weights={"relu": "1"})
    with pytest.raises(TypeError):
        SparsityPenalty(resnet, weight="0.1")
    assert count_hooks(resnet) == 0


def test_weight_zero_excludes_a_layer() -> None:
    torch.manual_seed(6)
    model = SmallCNN()
    x = torch.randn(4, 1, 16, 16, generator=torch.Generator().manual_seed(7))
    with SparsityPenalty(model, weight=1.0, layer_weights={"features.4": 0.0}) as penalty:
        model(x)
        assert set(penalty.terms) == {"features.1"}
        value = penalty().item()
    np.testing.assert_allclose(value, ref_layer_mean(captum(model, ["features.1"], x)["features.1"]), rtol=1e-5)


# -- which forward ---------------------------------------------------------------------------------
def test_no_grad_forwards_record_nothing() -> None:
    torch.manual_seed(8)
    model = SmallCNN()
    x = torch.randn(4, 1, 16, 16)
    with SparsityPenalty(model, weight=1.0) as penalty:
        with torch.no_grad():
            model(x)
        assert penalty.terms == {}
        with pytest.raises(RuntimeError, match=r"ran under torch.no_grad\(\)"):
            penalty()


def test_second_forward_replaces_first() -> None:
    torch.manual_seed(9)
    model = SmallCNN()
    g = torch.Generator().manual_seed(10)
    x1, x2 = torch.randn(4, 1, 16, 16, generator=g), 3 * torch.rand(5, 1, 16, 16, generator=g)
    layers = ["features.1", "features.4"]
    ref1 = sum(ref_layer_mean(a) for a in captum(model, layers, x1).values())
    ref2 = sum(ref_layer_mean(a) for a in captum(model, layers, x2).values())
    assert abs(ref1 - ref2) > 1e-3
    with SparsityPenalty(model, weight=0.9) as penalty:
        model(x1)
        model(x2)
        np.testing.assert_allclose(penalty().item(), 0.9 * ref2, rtol=1e-5)
        # The penalty consumed the terms: a second call has nothing left, and says so.
        with pytest.raises(RuntimeError, match=r"since the last penalty\(\) call"):
            penalty()
        model(x1)
        np.testing.assert_allclose(penalty().item(), 0.9 * ref1, rtol=1e-5)


# -- lifecycle and model integrity -----------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:layer .* has no spatial extent:RuntimeWarning")
def test_no_hooks_left_after_exit_and_exception(resnet: nn.Module, resnet_x: torch.Tensor) -> None:
    penalty = SparsityPenalty(resnet, weight=0.1)
    assert count_hooks(resnet) == 0
    with penalty:
        assert count_hooks(resnet) > 0
        resnet(resnet_x[:1])
    assert count_hooks(resnet) == 0 and penalty.terms == {}
    with pytest.raises(RuntimeError, match="boom"):
        with penalty:
            resnet(resnet_x[:1])
            raise RuntimeError("boom")
    assert count_hooks(resnet) == 0 and penalty.terms == {}
    penalty.attach()
    penalty.attach()  # idempotent
    penalty.detach()
    assert count_hooks(resnet) == 0


def test_model_unchanged_apart_from_training() -> None:
    torch.manual_seed(11)
    model = SmallCNN()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    attrs, kinds = set(vars(model)), [(n, type(m)) for n, m in model.named_modules()]
    penalty = SparsityPenalty(model, weight=0.2)
    assert list(penalty.parameters()) == [] and list(penalty.children()) == []
    x = torch.randn(4, 1, 16, 16)
    with penalty:
        loss = model(x).square().mean() + penalty()
        loss.backward()
    after = model.state_dict()
    assert list(after) == list(state) and all(torch.equal(state[k], after[k]) for k in state)
    assert set(vars(model)) == attrs and [(n, type(m)) for n, m in model.named_modules()] == kinds
    assert model.training and count_hooks(model) == 0
    model.eval()
    with penalty:
        model(x)
    assert not model.training


def test_functional_sites_take_layer_weights_and_match_numpy() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.conv2(F.relu(self.conv1(x)))).mean((2, 3))

    torch.manual_seed(16)
    model = Functional()
    with pytest.raises(UnknownLayerError, match="relu"):
        SparsityPenalty(model, layer_weights={"relu#3": 1.0, "rleu": 2.0})
    penalty = SparsityPenalty(model, weight=0.5, layer_weights={"relu#2": 3.0})
    x = torch.randn(5, 1, 9, 9, generator=torch.Generator().manual_seed(17))
    with penalty:
        model(x)
        value = penalty().item()
    with torch.no_grad():
        a1 = F.relu(model.conv1(x))
        a2 = F.relu(model.conv2(a1))
    np.testing.assert_allclose(value, 0.5 * (ref_layer_mean(a1) + 3.0 * ref_layer_mean(a2)), rtol=1e-5)


# -- in-place writes after a recorded activation ----------------------------------------------------
class ResidualBlock(nn.Module):
    """EfficientNetV2's FusedMBConv shape: conv, BN, SiLU, then the residual added into the SiLU output.

    ``write`` chooses ``out += x`` (in place, as torchvision does) or ``out = out + x``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.act = nn.SiLU()
        self.head = nn.Linear(3, 2)
        self.write = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn(self.conv(x)))
        if self.write:
            out += x
        else:
            out = out + x
        return self.head(out.mean((2, 3)))


def _step(model: ResidualBlock, penalty: SparsityPenalty, x: torch.Tensor) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with penalty:
        loss = model(x).square().mean() + penalty()
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_in_place_write_after_the_layer_never_breaks_backward() -> None:
    torch.manual_seed(12)
    model, twin = ResidualBlock(), ResidualBlock()
    twin.load_state_dict(model.state_dict())
    twin.write = False  # the reference: the same maths without the in-place write
    lam = 0.3
    penalty, twin_penalty = SparsityPenalty(model, weight=lam), SparsityPenalty(twin, weight=lam)
    gen = torch.Generator().manual_seed(13)
    for _ in range(3):  # first step: copy; the write is seen, so every later step copies too
        x = torch.randn(4, 3, 6, 6, generator=gen)
        with penalty:
            model(x)
            value = penalty().item()
        with torch.no_grad():
            acts = F.silu(model.bn(model.conv(x)))  # before the write, computed here
        np.testing.assert_allclose(value, lam * ref_layer_mean(acts.abs()), rtol=1e-5)
        loss, grads = _step(model, penalty, x)
        twin_loss, twin_grads = _step(twin, twin_penalty, x)
        assert loss == pytest.approx(twin_loss, rel=1e-6)
        for name in grads:
            torch.testing.assert_close(grads[name], twin_grads[name], msg=name)


def test_a_write_that_starts_later_drops_that_step_term_with_a_warning() -> None:
    torch.manual_seed(14)
    model = ResidualBlock()
    penalty = SparsityPenalty(model, weight=0.3)
    x = torch.randn(4, 3, 6, 6, generator=torch.Generator().manual_seed(15))
    model.write = False
    _step(model, penalty, x)  # nothing written: from now on the activation is used without a copy
    model.write = True  # data-dependent code starts writing into it
    with penalty:
        out = model(x)
        with pytest.warns(RuntimeWarning, match="modified in place after the penalty read it"):
            p = penalty()
    assert p.item() == 0.0  # the only term was invalid: left out
    (out.square().mean() + p).backward()  # and backward works
    with penalty:
        model(x)
        assert set(penalty.terms) == {"act"}
        value = penalty().item()  # copied from now on
    with torch.no_grad():
        acts = F.silu(model.bn(model.conv(x)))
    np.testing.assert_allclose(value, 0.3 * ref_layer_mean(acts.abs()), rtol=1e-5)
    _step(model, penalty, x)


# -- the effect on training ------------------------------------------------------------------------
def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = perm[:512], perm[512:768]
    return x[train], y[train], x[test], y[test]


def train_once(lam: float, data, steps: int = 60) -> tuple[float, float]:
    """Train the seeded SmallCNN with penalty weight ``lam``; held-out (conv sparsity, accuracy)."""
    xtr, ytr, xte, yte = data
    torch.manual_seed(0)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    penalty = SparsityPenalty(model, weight=lam)
    with penalty:
        for _ in range(steps):
            idx = torch.randint(0, len(xtr), (64,), generator=g)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx]) + penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert count_hooks(model) == 0
    model.eval()
    monitor = SparsityMonitor(model)
    with monitor.track(split="test"), torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    report = monitor.compute()
    sparsity = float(np.mean([report.layer_value("test", name) for name in monitor.layer_names]))
    return sparsity, acc


def test_penalty_lowers_sparsity_and_negative_weight_raises_it() -> None:
    """Measured (60 Adam steps, 512 train / 256 held-out digits): held-out mean conv sparsity
    0.407 (acc 0.867) with lambda=0, 0.205 (acc 0.836) with lambda=+0.5, 0.900 with lambda=-0.5."""
    data = digits()
    base, acc0 = train_once(0.0, data)
    dense, acc_pos = train_once(0.5, data)
    sparse, acc_neg = train_once(-0.5, data)
    print(
        f"\nheld-out conv sparsity / accuracy: lambda=0: {base:.4f} / {acc0:.3f}; "
        f"lambda=+0.5: {dense:.4f} / {acc_pos:.3f}; lambda=-0.5: {sparse:.4f} / {acc_neg:.3f}"
    )
    assert acc0 > 0.75 and acc_pos > 0.75  # both still learn the task
    assert dense < base - 0.1, (base, dense)
    assert sparse > base + 0.2, (base, sparse)
