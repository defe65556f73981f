"""CNNs for small inputs: a plain small CNN, VGG-style nets and a CIFAR-style ResNet-18.

All ReLUs are modules (never ``F.relu``) so forward hooks see every activation. Layer names
are chosen to read well in plots: ``features.block1.relu`` (SmallCNN),
``features.relu3_2`` (VGGSmall, VGG-paper numbering), ``layer2.1.relu`` (ResNet).
Which layers are *recorded* is the recorder's business (:mod:`xaisparse.recording`).
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from ._validation import check_bool, check_fraction, check_int, check_number, check_str

__all__ = [
    "CLASSICAL_REGULARISERS",
    "MODEL_NAMES",
    "VGG_CONFIGS",
    "SmallCNN",
    "VGGSmall",
    "build_model",
    "regularisation",
    "resnet18_small",
]


def _is_tracing() -> bool:
    """True under torch.fx symbolic tracing / TorchScript, where Python shape checks must be skipped."""
    if torch.jit.is_scripting() or torch.jit.is_tracing():
        return True
    try:
        from torch.fx._symbolic_trace import is_fx_symbolic_tracing as is_fx_tracing
    except ImportError:  # pragma: no cover - older torch
        return False
    return is_fx_tracing()


def _check_input(x: torch.Tensor, in_channels: int, image_size: int, model: str) -> None:
    if _is_tracing():
        return
    if x.dim() != 4 or x.shape[1] != in_channels or x.shape[2] != image_size or x.shape[3] != image_size:
        raise ValueError(
            f"{model} expects input of shape (batch, {in_channels}, {image_size}, {image_size}), got {tuple(x.shape)}"
        )


class SmallCNN(nn.Module):
    """``depth`` conv blocks (Conv3x3 → [BN] → ReLU → [MaxPool2]) and a 2-layer classifier.

    The width doubles every block (``width, 2w, 4w, …``) up to ``8 * width``; a block pools
    while the spatial size is at least 2. Module names: ``features.block{i}.{conv,bn,relu,pool}``
    and ``classifier.{flatten,dropout1,fc1,relu,dropout2,fc2}``. ReLUs are not in-place.

    Args:
        in_channels, num_classes: input channels and classes.
        depth: number of conv blocks (>= 1).
        width: channels of the first block (>= 1).
        batch_norm: add BatchNorm2d after each conv (the conv then has no bias).
        dropout: dropout probability before each classifier Linear (0 disables).
        image_size: side of the square input (fixes the classifier's input size).

    >>> model = SmallCNN(in_channels=1, num_classes=10, depth=3, width=8, image_size=16)
    >>> model(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 10])
    >>> [name for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    ['features.block1.relu', 'features.block2.relu', 'features.block3.relu', 'classifier.relu']
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        depth: int = 3,
        width: int = 32,
        batch_norm: bool = False,
        dropout: float = 0.0,
        image_size: int = 16,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        depth = check_int("depth", depth, minimum=1)
        width = check_int("width", width, minimum=1)
        batch_norm = check_bool("batch_norm", batch_norm)
        dropout = check_fraction("dropout", dropout, high_open=True)
        self.image_size = check_int("image_size", image_size, minimum=1)

        blocks: list[tuple[str, nn.Module]] = []
        channels, spatial = self.in_channels, self.image_size
        for i in range(depth):
            out = min(width * 2**i, 8 * width)
            layers: list[tuple[str, nn.Module]] = [
                ("conv", nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm))
            ]
            if batch_norm:
                layers.append(("bn", nn.BatchNorm2d(out)))
            layers.append(("relu", nn.ReLU(inplace=False)))
            if spatial >= 2:
                layers.append(("pool", nn.MaxPool2d(2)))
                spatial //= 2
            blocks.append((f"block{i + 1}", nn.Sequential(OrderedDict(layers))))
            channels = out
        self.features = nn.Sequential(OrderedDict(blocks))

        head: list[tuple[str, nn.Module]] = [("flatten", nn.Flatten())]
        if dropout:
            head.append(("dropout1", nn.Dropout(dropout)))
        head += [("fc1", nn.Linear(channels * spatial * spatial, 128)), ("relu", nn.ReLU(inplace=False))]
        if dropout:
            head.append(("dropout2", nn.Dropout(dropout)))
        head.append(("fc2", nn.Linear(128, self.num_classes)))
        self.classifier = nn.Sequential(OrderedDict(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.image_size, type(self).__name__)
        return self.classifier(self.features(x))


#: The standard VGG layer configurations (numbers: conv output channels, "M": max-pool).
VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class VGGSmall(nn.Module):
    """A VGG for small inputs: the standard configs, a width multiplier and a small head.

    Pooling stops once the spatial size is 1; then ``avgpool`` (adaptive, to 1×1) and
    ``classifier`` = ``fc1 → relu → [dropout] → fc2`` with ``round(512 * width_mult)`` hidden
    units. Conv layers are named after the VGG paper: ``features.conv{stage}_{i}``,
    ``features.bn…``, ``features.relu{stage}_{i}``, ``features.pool{stage}``. ReLUs are not
    in-place.

    >>> model = VGGSmall(in_channels=3, num_classes=10, width_mult=0.125, image_size=32)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> [n for n, m in model.features.named_children()][:4]
    ['conv1_1', 'relu1_1', 'pool1', 'conv2_1']
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        config: str = "vgg11",
        batch_norm: bool = False,
        dropout: float = 0.5,
        width_mult: float = 1.0,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, minimum=1)
        self.num_classes = check_int("num_classes", num_classes, minimum=1)
        key = check_str("config", config).lower().replace("_", "").replace("-", "")
        if key not in VGG_CONFIGS:
            raise ValueError(f"unknown VGG config {config!r}; valid: {', '.join(VGG_CONFIGS)}")
        batch_norm = check_bool("batch_norm", batch_norm)
        dropout = check_fraction("dropout", dropout, high_open=True)
        if not check_number("width_mult", width_mult) > 0:
            raise ValueError(f"width_mult must be a positive float, got {width_mult!r}")
        self.image_size = check_int("image_size", image_size, minimum=1)
        self.config = key

        layers: list[tuple[str, nn.Module]] = []
        channels, spatial, stage, index = self.in_channels, self.image_size, 1, 0
        for v in VGG_CONFIGS[key]:
            if v == "M":
                if spatial > 1:
                    layers.append((f"pool{stage}", nn.MaxPool2d(kernel_size=2, stride=2)))
                    spatial //= 2
                stage, index = stage + 1, 0
                continue
            index += 1
            out = max(1, round(int(v) * float(width_mult)))
            tag = f"{stage}_{index}"
            layers.append((f"conv{tag}", nn.Conv2d(channels, out, kernel_size=3, padding=1, bias=not batch_norm)))
            if batch_norm:
                layers.append((f"bn{tag}", nn.BatchNorm2d(out)))
            layers.append((f"relu{tag}", nn.ReLU(inplace=False)))
            channels = out
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        hidden = max(1, round(512 * float(width_mult)))
        head: list[tuple[str, nn.Module]] = [
            ("flatten", nn.Flatten()),
            ("fc1", nn.Linear(channels, hidden)),
            ("relu", nn.ReLU(inplace=False)),
        ]
        if dropout:
            head.append(("dropout", nn.Dropout(dropout)))
        head.append(("fc2", nn.Linear(hidden, self.num_classes)))
        self.classifier = nn.Sequential(OrderedDict(head))

        for m in self.modules():  # torchvision's VGG initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels, self.image_size, type(self).__name__)
        return self.classifier(self.avgpool(self.features(x)))


def resnet18_small(in_channels: int = 3, num_classes: int = 10, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 with a CIFAR-style stem, for 32×32-ish inputs.

    Built from :func:`torchvision.models.resnet18` (``weights=None``); ``conv1`` becomes a
    3×3 stride-1 conv from ``in_channels``, ``maxpool`` becomes :class:`~torch.nn.Identity`.
    ``width`` (default 64, the standard) sets the channels of the four stages to
    ``width, 2w, 4w, 8w``; smaller widths are much faster on CPU. Note torchvision's blocks
    reuse one in-place ReLU module twice per forward (the recorder handles this).

    >>> model = resnet18_small(in_channels=3, num_classes=10, width=8)
    >>> model(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    >>> model.conv1.kernel_size, model.conv1.stride, type(model.maxpool).__name__
    ((3, 3), (1, 1), 'Identity')
    """
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    in_channels = check_int("in_channels", in_channels, minimum=1)
    num_classes = check_int("num_classes", num_classes, minimum=1)
    width = check_int("width", width, minimum=1)

    model = resnet18(weights=None, num_classes=num_classes)
    if width != 64:
        # rebuild the stages with torchvision's own _make_layer at the requested width
        model.inplanes = width
        model.dilation = 1
        model.bn1 = model._norm_layer(width)
        model.layer1 = model._make_layer(BasicBlock, width, 2)
        model.layer2 = model._make_layer(BasicBlock, 2 * width, 2, stride=2)
        model.layer3 = model._make_layer(BasicBlock, 4 * width, 2, stride=2)
        model.layer4 = model._make_layer(BasicBlock, 8 * width, 2, stride=2)
        model.fc = nn.Linear(8 * width * BasicBlock.expansion, num_classes)
    model.conv1 = nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    # torchvision's initialisation for the replaced convs / norms
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    return model


def _build_vgg(config: str):
    def build(*, in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
        kw.setdefault("config", config)
        return VGGSmall(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)

    return build


def _build_small_cnn(*, in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    return SmallCNN(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


def _build_resnet18(*, in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    check_int("image_size", image_size, minimum=1)  # the ResNet is size-agnostic (adaptive pooling)
    return resnet18_small(in_channels=in_channels, num_classes=num_classes, **kw)


_BUILDERS: dict[str, tuple[Any, Any]] = {
    # name: (builder, the callable whose keywords are accepted)
    "small_cnn": (_build_small_cnn, SmallCNN),
    "vgg_small": (_build_vgg("vgg11"), VGGSmall),
    "vgg11": (_build_vgg("vgg11"), VGGSmall),
    "vgg13": (_build_vgg("vgg13"), VGGSmall),
    "vgg16": (_build_vgg("vgg16"), VGGSmall),
    "vgg19": (_build_vgg("vgg19"), VGGSmall),
    "resnet18": (_build_resnet18, resnet18_small),
}

#: Names :func:`build_model` accepts.
MODEL_NAMES: tuple[str, ...] = tuple(_BUILDERS)


def build_model(name: str, *, in_channels: int, num_classes: int, image_size: int, **kw: Any) -> nn.Module:
    """Build a model by name: ``small_cnn``, ``vgg_small``/``vgg11``/``vgg13``/``vgg16``/``vgg19``, ``resnet18``.

    Extra keywords go to the model (e.g. ``width=16``, ``batch_norm=True``); ``vgg11`` …
    ``vgg19`` fix the config, ``vgg_small`` takes ``config=`` (default ``"vgg11"``).
    ``image_size`` is checked but unused by ``resnet18`` (adaptive pooling).

    >>> build_model("small_cnn", in_channels=1, num_classes=10, image_size=16, width=8).num_classes
    10
    >>> build_model("alexnet", in_channels=1, num_classes=10, image_size=16)
    Traceback (most recent call last):
    ...
    ValueError: unknown model 'alexnet'; valid names: small_cnn, vgg_small, vgg11, vgg13, vgg16, vgg19, resnet18
    """
    key = check_str("model name", name).strip().lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    builder, target = _BUILDERS[key]
    fixed = {"in_channels", "num_classes", "image_size"}
    valid = [p for p in inspect.signature(target).parameters if p not in fixed]
    if key.startswith("vgg") and key != "vgg_small":
        valid = [p for p in valid if p != "config"]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise TypeError(f"unexpected keyword(s) {', '.join(unknown)} for model {key!r}; valid: {', '.join(valid)}")
    return builder(in_channels=in_channels, num_classes=num_classes, image_size=image_size, **kw)


#: The classical regularisers of the CLI (``--regularizer``) and of the study, with fixed settings
#: (not tuned): dropout 0.3 before each classifier ``Linear`` of ``small_cnn`` and 0.5 in VGG,
#: batch normalisation after each convolution, Adam/SGD weight decay 5e-4; ``augment`` is a data
#: setting (random crops and flips of the torchvision datasets), not a model one.
CLASSICAL_REGULARISERS = ("dropout", "batchnorm", "weight_decay", "augment")
_DROPOUT = {"small_cnn": 0.3, "vgg": 0.5}
_WEIGHT_DECAY = 5e-4


def regularisation(model: str, regularisers: Any = ()) -> tuple[dict[str, Any], float]:
    """``(model keywords, weight decay)`` of a set of :data:`CLASSICAL_REGULARISERS` for ``build_model(model, ...)``.

    ``small_cnn`` and the VGGs get explicit ``batch_norm``/``dropout`` values (off unless asked);
    ``resnet18`` has batch normalisation built in and no dropout slot, so asking for either is an error.

    >>> regularisation("small_cnn", ["dropout", "weight_decay"])
    ({'batch_norm': False, 'dropout': 0.3}, 0.0005)
    >>> regularisation("vgg11")
    ({'batch_norm': False, 'dropout': 0.0}, 0.0)
    """
    chosen = [regularisers] if isinstance(regularisers, str) else list(regularisers)
    unknown = sorted(set(chosen) - set(CLASSICAL_REGULARISERS))
    if unknown:
        raise ValueError(f"unknown regulariser(s) {unknown}; valid: {list(CLASSICAL_REGULARISERS)}")
    key = check_str("model name", model).strip().lower().replace("-", "_")
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {model!r}; valid names: {', '.join(MODEL_NAMES)}")
    family = "vgg" if key.startswith("vgg") else key
    kw: dict[str, Any] = {}
    if family in _DROPOUT:
        kw = {"batch_norm": "batchnorm" in chosen, "dropout": _DROPOUT[family] if "dropout" in chosen else 0.0}
    elif {"dropout", "batchnorm"} & set(chosen):
        raise ValueError(
            f"{key} has batch normalisation built in and no dropout slot; drop --regularizer dropout/batchnorm"
        )
    return kw, (_WEIGHT_DECAY if "weight_decay" in chosen else 0.0)
