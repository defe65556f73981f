"""Every torchvision classification architecture and a set of timm CNNs, as a new user tries them.

Default arguments and random weights, ``SparsityMonitor(model)`` and ``SparsityPenalty(model)``
with their defaults, on the smallest input each model accepts. For each model: a non-empty
default selection; finite statistics (eval pass) and a finite penalty with finite gradients
(train-mode step); no hook left; the model unchanged (same parameters and buffers, training
flags, module tree and attributes). What the values are is tested elsewhere against NumPy and
Captum; this checks that the whole zoo goes through the same code paths without breaking.

The gradient check is about our code, so it runs on an input where the model's *own* gradient
(its loss alone, no hooks) is finite: deep ResNets at 16 px train with BatchNorm over 2 values
per channel in their last stages, and whether their own backward overflows there depends on the
CPU's arithmetic. The train side starts at ``SIZE`` and doubles (up to ``MAX_TRAIN_SIDE``) until
the model's own gradient is finite; a model whose own gradient is never finite keeps every other
check and records why its gradient check was skipped (a warning and the ``gradient_check``
property).

The largest variants (``ON_META``) run on the meta device: the same modules, hooks, default
selection and hooks for the monitor, and the penalty's train step with the in-place checks of
autograd and the backward, without the arithmetic (so no finiteness check): building and running
them for real costs minutes and gigabytes, and each shares its block types with a smaller
variant of its family that runs for real here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.testing import count_hooks

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

TORCHVISION = torchvision.models.list_models(module=torchvision.models)
TIMM = [
    "resnet18",
    "resnet50",
    "efficientnet_b0",
    "efficientnetv2_rw_t",
    "convnext_atto",
    "convnext_tiny",
    "regnetx_002",
    "regnety_002",
    "mobilenetv3_small_100",
    "mobilenetv3_large_100",
    "densenet121",
    "inception_v3",
]

#: Smallest square input side (eval pass, train step) accepted by each model; 16 otherwise.
#: Found on the meta device over 16, 24, 32, 48, 64, 75, ..., 299; torchvision's Inception v3
#: needs 299 in training mode for its auxiliary head.
SIZE: dict[str, tuple[int, int]] = {
    "alexnet": (64, 64),
    "inception_v3": (75, 299),
    "maxvit_t": (224, 224),
    "squeezenet1_0": (24, 24),
    "squeezenet1_1": (24, 24),
    # At 16 px BatchNorm sees 2 values per channel in layer3 and layer4 (1x1 maps, batch 2) and the
    # model's own gradient overflows on some CPUs (see own_gradient_side); 32 px gives layer3 2x2 maps.
    "resnet152": (16, 32),
    "resnext101_32x8d": (16, 32),
    "resnext101_64x4d": (16, 32),
    "timm:inception_v3": (75, 75),
    **{n: (32, 32) for n in TORCHVISION if n.startswith(("convnext", "densenet", "vgg"))},
    **{n: (224, 224) for n in TORCHVISION if n.startswith("vit_")},
    "timm:convnext_atto": (32, 32),
    "timm:convnext_tiny": (32, 32),
    "timm:densenet121": (32, 32),
}

#: Run on the meta device: large models with few recorded layers, where building the model and
#: its gradients is the cost (seconds and gigabytes each), and the 224-px ViTs. Each shares its
#: blocks with a smaller variant that runs for real. (The meta device is no shortcut for models
#: with many recorded layers: per operation it costs more than the CPU does on tiny inputs.)
ON_META = {
    "convnext_base",
    "convnext_large",
    "regnet_y_128gf",
    "swin_b",
    "swin_s",
    "swin_v2_b",
    "swin_v2_s",
    "wide_resnet101_2",
    *(n for n in TORCHVISION if n.startswith("vit_") and n != "vit_b_32"),
    *(n for n in TORCHVISION if n.startswith("vgg") and n != "vgg11"),
}


def build(factory: Callable[[], nn.Module], meta: bool, monkeypatch: pytest.MonkeyPatch) -> nn.Module:
    torch.manual_seed(0)
    if meta:  # RegNet computes its stage widths with tensor ops and .tolist(): those run on the CPU
        from torchvision.models.regnet import BlockParams

        widths = BlockParams.from_init_params.__func__  # type: ignore[attr-defined]

        def on_cpu(cls: type, *args: object, **kwargs: object) -> object:
            with torch.device("cpu"):
                return widths(cls, *args, **kwargs)

        monkeypatch.setattr(BlockParams, "from_init_params", classmethod(on_cpu))
    with warnings.catch_warnings(), torch.device("meta" if meta else "cpu"):
        warnings.simplefilter("ignore")  # GoogLeNet/Inception init-weights FutureWarnings
        return factory()


def fingerprint(t: torch.Tensor) -> tuple[object, ...]:
    """Storage, version counter (bumped by every in-place write) and a strided sample of the values.

    Cheap on the large models (a float64 sum over every weight took seconds), and exact for what
    could go wrong: any write into the tensor bumps its version; a replaced tensor has another
    storage; and the sampled values are compared too.
    """
    sample = t if t.is_meta else t.detach().flatten()[:: max(1, t.numel() // 1024)].clone()
    return (t.data_ptr() if not t.is_meta else None, t._version, sample)


def same(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    *head_a, sample_a = a
    *head_b, sample_b = b
    assert isinstance(sample_a, torch.Tensor) and isinstance(sample_b, torch.Tensor)
    if sample_a.is_meta:
        return head_a[1:] == head_b[1:] and sample_a.shape == sample_b.shape and sample_a.dtype == sample_b.dtype
    return head_a == head_b and torch.equal(sample_a, sample_b)


def snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "tensors": {k: fingerprint(v) for k, v in model.state_dict(keep_vars=True).items()},
        "params": [id(p) for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "tree": [(n, type(m).__name__, sorted(m.__dict__)) for n, m in model.named_modules()],
    }


def assert_unchanged(model: nn.Module, before: dict[str, object], *, values: bool = True) -> None:
    after = snapshot(model)
    assert count_hooks(model) == 0
    for key in ("params", "training", "tree"):
        assert after[key] == before[key], key
    tensors_before, tensors_after = before["tensors"], after["tensors"]
    assert isinstance(tensors_before, dict) and isinstance(tensors_after, dict)
    assert list(tensors_after) == list(tensors_before)
    if values:
        for k, v in tensors_before.items():
            assert same(tensors_after[k], v), k


def logits(out: object) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out[0]  # GoogLeNetOutputs / InceptionOutputs in training mode: (logits, aux...)


#: The largest train-side tried by :func:`own_gradient_side` (doubling from ``SIZE``).
MAX_TRAIN_SIDE = 64


def train_input(side: int, device: str) -> torch.Tensor:
    """The train-step batch at one side (its own generator: the same tensor whichever sides were tried)."""
    return torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2)).to(device)


def own_gradient_side(model: nn.Module, first: int) -> tuple[int, str | None]:
    """The first train side from ``first`` (doubling) where the model's own gradient is finite.

    The model's loss alone, no hooks of ours: a non-finite gradient here is the model's (and the
    CPU's), not ours. Returns ``(side, None)``, or ``(first, reason)`` when neither ``first`` nor
    a doubling of it up to ``MAX_TRAIN_SIDE`` gives a finite gradient. Parameters are untouched (only gradients and
    BatchNorm's running statistics, which the train step moves anyway).
    """
    sides = [first]
    while sides[-1] * 2 <= MAX_TRAIN_SIDE:
        sides.append(sides[-1] * 2)
    tried = []
    for side in sides:
        model.train()
        logits(model(train_input(side, "cpu"))).float().logsumexp(-1).mean().backward()
        bad = [n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())]
        model.zero_grad(set_to_none=True)
        if not bad:
            return side, None
        tried.append(f"{side} px: {len(bad)} parameters, e.g. {bad[0]}")
    return first, "the model's own gradient (no penalty, no hooks) is non-finite at every side tried: " + "; ".join(
        tried
    )


def check(model: nn.Module, key: str) -> tuple[int, int, str | None]:
    """The whole check for one architecture.

    Returns the number of layers the monitor recorded, the train side used and, when the gradient
    check was skipped, why.
    """
    meta = next(model.parameters()).is_meta
    device = "meta" if meta else "cpu"
    eval_side, train_side = SIZE.get(key, (16, 16))
    x = torch.randn(2, 3, eval_side, eval_side, generator=torch.Generator().manual_seed(1)).to(device)

    # monitor: an eval pass
    model.eval()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 1x1 maps at the smallest inputs
        monitor = SparsityMonitor(model)
        with monitor.track("test"), torch.no_grad(), monitor.recorder.paused() if meta else nullcontext():
            model(x)  # on meta: hooks and selection only (the estimators' maths is the slow part there)
    sites = monitor.recorder.layer_names
    assert sites, "the default selection recorded nothing"
    assert_unchanged(model, before, values=not meta)
    if not meta:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = monitor.compute()
        layers = report.layers.pivot(index="layer", columns="statistic", values="value")
        assert sorted(layers.index) == sorted(sites)
        assert (layers["nonfinite"] == 0).all()
        assert np.isfinite(layers["channel_mean"]).all() and layers["channel_mean"].between(0, 1).all()
        assert np.isfinite(layers["sample_mean"]).all()
        spatial = layers["spatial_mean"].dropna()  # NaN only where maps are 1x1 (no spatial sparsity)
        assert spatial.between(0, 1).all()
        one_by_one = set(layers.index) - set(spatial.index)
        assert all(report.spatial_hist[("test", s)].sum() == 0 for s in one_by_one)

    # penalty: a train-mode step, on an input where the model's own gradient is finite
    skipped = None
    if not meta:
        train_side, skipped = own_gradient_side(model, train_side)
        if skipped:
            warnings.warn(f"{key}: gradient check skipped: {skipped}", UserWarning, stacklevel=1)
    xt = train_input(train_side, device)
    model.train()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        penalty = SparsityPenalty(model, weight=0.1)
        with penalty:
            out = logits(model(xt))
            terms = penalty.terms
            pen = penalty()
    assert terms, "the penalty collected no term"
    loss = out.float().logsumexp(-1).mean() + pen
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    if not meta:
        assert torch.isfinite(pen) and 0 < pen.item() <= 0.1 * len(terms)
        if skipped is None:
            bad = [
                n for n, p in model.named_parameters() if p.grad is not None and not bool(torch.isfinite(p.grad).all())
            ]
            assert not bad, f"non-finite gradients with the penalty (finite without it) in {bad[:5]}"
    model.zero_grad(set_to_none=True)
    # parameters, training flags, hooks as before; BatchNorm buffers moved by the model's own train step
    assert_unchanged(model, before, values=False)
    tensors = before["tensors"]
    assert isinstance(tensors, dict)
    for name, p in model.named_parameters():
        assert same(fingerprint(p), tensors[name]), name
    return len(sites), train_side, skipped


def record(record_property: Callable, result: tuple[int, int, str | None], device: str) -> None:
    """The zoo table (``pytest --junitxml=...``): layers recorded, device, train side, skipped checks."""
    layers, train_side, skipped = result
    record_property("recorded_layers", layers)
    record_property("device", device)
    record_property("train_side", train_side)
    record_property("gradient_check", (skipped or "done") if device == "cpu" else "not run (meta device)")


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_architecture(name: str, monkeypatch: pytest.MonkeyPatch, record_property: Callable) -> None:
    model = build(lambda: torchvision.models.get_model(name), name in ON_META, monkeypatch)
    record(record_property, check(model, name), "meta" if name in ON_META else "cpu")


@pytest.mark.parametrize("name", TIMM)
def test_timm_architecture(name: str, monkeypatch: pytest.MonkeyPatch, record_property: Callable) -> None:
    timm = pytest.importorskip("timm")
    model = build(lambda: timm.create_model(name, pretrained=False), False, monkeypatch)
    record(record_property, check(model, f"timm:{name}"), "cpu")
