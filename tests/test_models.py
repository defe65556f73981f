"""Tests of xaisparse.models: shapes, sizes, the CIFAR stem, one training step, errors, factory."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xaisparse.models import MODEL_NAMES, SmallCNN, VGGSmall, build_model, resnet18_small

DIGITS = dict(in_channels=1, image_size=16)
CIFAR = dict(in_channels=3, image_size=32)


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


CASES = [
    ("small_cnn", DIGITS, {}),
    ("small_cnn", CIFAR, {"batch_norm": True, "dropout": 0.3}),
    ("vgg11", DIGITS, {"width_mult": 0.25}),
    ("vgg_small", CIFAR, {"width_mult": 0.25, "batch_norm": True, "config": "vgg13"}),
    ("resnet18", CIFAR, {"width": 8}),
    ("resnet18", DIGITS, {"width": 8}),
]


@pytest.mark.parametrize(("name", "geometry", "kw"), CASES)
def test_output_shapes(name: str, geometry: dict, kw: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **geometry, **kw).eval()
    s = geometry["image_size"]
    with torch.no_grad():
        out = model(torch.randn(3, geometry["in_channels"], s, s))
    assert out.shape == (3, 10)


@pytest.mark.parametrize(("name", "geometry", "kw"), CASES)
def test_one_training_step_is_finite(name: str, geometry: dict, kw: dict) -> None:
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, **geometry, **kw).train()
    s = geometry["image_size"]
    x, y = torch.randn(4, geometry["in_channels"], s, s), torch.tensor([0, 1, 2, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    for p in model.parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all())
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_parameter_counts() -> None:
    # SmallCNN, width 32, depth 3 on 16x16x1: convs 1->32->64->128, 128*2*2 -> 128 -> 10
    conv = (1 * 9 + 1) * 32 + (32 * 9 + 1) * 64 + (64 * 9 + 1) * 128
    head = (128 * 4 + 1) * 128 + (128 + 1) * 10
    assert _params(SmallCNN()) == conv + head == 159_626
    # the standard CIFAR ResNet-18 has 11,173,962 parameters
    assert _params(resnet18_small()) == 11_173_962
    assert 9_000_000 < _params(VGGSmall(in_channels=3, image_size=32)) < 10_000_000
    assert _params(resnet18_small(width=16)) < _params(resnet18_small(width=32)) / 3


def test_small_cnn_structure_and_names() -> None:
    model = SmallCNN(depth=5, width=4, image_size=16, batch_norm=True, dropout=0.5)
    convs = [m for m in model.features.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 8, 16, 32, 32]  # doubling, capped at 8 * width
    assert all(c.bias is None for c in convs)  # batch norm: no conv bias
    pools = [n for n, m in model.named_modules() if isinstance(m, nn.MaxPool2d)]
    assert pools == [f"features.block{i}.pool" for i in range(1, 5)]  # 16 -> 8 -> 4 -> 2 -> 1, then no pool
    relus = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert [n for n, _ in relus][:2] == ["features.block1.relu", "features.block2.relu"]
    assert not any(m.inplace for _, m in relus)
    assert sum(isinstance(m, nn.Dropout) for m in model.classifier) == 2
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 5


def test_vgg_structure() -> None:
    model = VGGSmall(in_channels=1, image_size=16, width_mult=0.5, dropout=0.0)
    convs = [m for m in model.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 128, 256, 256, 256, 256]
    pools = [n for n, m in model.features.named_children() if isinstance(m, nn.MaxPool2d)]
    assert pools == ["pool1", "pool2", "pool3", "pool4"]  # 16 -> 1 after four pools; the fifth is skipped
    assert isinstance(model.avgpool, nn.AdaptiveAvgPool2d)
    assert not any(isinstance(m, nn.Dropout) for m in model.classifier)
    assert "relu3_2" in dict(model.features.named_children())
    assert hasattr(model, "features") and hasattr(model, "classifier")


def test_resnet18_small_cifar_stem() -> None:
    model = resnet18_small(in_channels=1, num_classes=7, width=16)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.padding == (1, 1)
    assert model.conv1.in_channels == 1 and model.conv1.out_channels == 16
    assert isinstance(model.maxpool, nn.Identity)
    assert [model.layer1[0].conv1.out_channels, model.layer4[1].conv2.out_channels] == [16, 128]
    assert model.fc.in_features == 128 and model.fc.out_features == 7
    std = resnet18_small()
    assert std.conv1.out_channels == 64 and std.fc.in_features == 512


def test_deterministic_init_under_manual_seed() -> None:
    for name, geometry, kw in CASES[::2]:
        torch.manual_seed(123)
        a = build_model(name, num_classes=10, **geometry, **kw)
        torch.manual_seed(123)
        b = build_model(name, num_classes=10, **geometry, **kw)
        torch.manual_seed(124)
        c = build_model(name, num_classes=10, **geometry, **kw)
        sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
        assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_fx_feature_extraction_still_works() -> None:
    from torchvision.models.feature_extraction import create_feature_extractor

    model = SmallCNN(width=4).eval()
    extractor = create_feature_extractor(model, return_nodes=["features.block2.relu"])
    out = extractor(torch.zeros(1, 1, 16, 16))
    assert out["features.block2.relu"].shape == (1, 8, 8, 8)


@pytest.mark.parametrize(
    ("factory", "kwargs", "exc", "fragments"),
    [
        (SmallCNN, {"depth": 0}, ValueError, ["depth", ">= 1", "0"]),
        (SmallCNN, {"width": 2.5}, TypeError, ["width", "int", "float"]),
        (SmallCNN, {"dropout": 1.0}, ValueError, ["dropout", "[0, 1)"]),
        (SmallCNN, {"batch_norm": "yes"}, TypeError, ["batch_norm", "bool"]),
        (SmallCNN, {"num_classes": 0}, ValueError, ["num_classes", ">= 1"]),
        (VGGSmall, {"config": "vgg12"}, ValueError, ["vgg12", "vgg11", "vgg19"]),
        (VGGSmall, {"width_mult": 0}, ValueError, ["width_mult", "positive"]),
        (resnet18_small, {"width": 0}, ValueError, ["width", ">= 1"]),
        (resnet18_small, {"in_channels": True}, TypeError, ["in_channels", "int", "bool"]),
    ],
)
def test_bad_arguments(factory, kwargs: dict, exc: type, fragments: list[str]) -> None:
    with pytest.raises(exc) as info:
        factory(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_wrong_input_shape_is_named() -> None:
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 1, 16, 16\), got \(2, 3, 32, 32\)"):
        SmallCNN()(torch.zeros(2, 3, 32, 32))


def test_build_model_dispatch_and_errors() -> None:
    assert isinstance(build_model("small_cnn", **DIGITS, num_classes=10), SmallCNN)
    vgg = build_model("VGG11", **DIGITS, num_classes=10, width_mult=0.125)
    assert isinstance(vgg, VGGSmall) and vgg.config == "vgg11"
    assert build_model("vgg_small", **DIGITS, num_classes=10, width_mult=0.125, config="vgg16").config == "vgg16"
    assert isinstance(build_model("resnet18", **CIFAR, num_classes=10, width=8).maxpool, nn.Identity)
    with pytest.raises(ValueError) as info:
        build_model("alexnet", **DIGITS, num_classes=10)
    for name in MODEL_NAMES:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="unexpected keyword.*depth.*resnet18.*valid: width"):
        build_model("resnet18", **CIFAR, num_classes=10, depth=3)
    with pytest.raises(TypeError, match="config"):
        build_model("vgg11", **CIFAR, num_classes=10, config="vgg16")
