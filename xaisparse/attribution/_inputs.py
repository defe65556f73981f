"""Checks and plumbing shared by the attribution functions: inputs, targets, layers, modes, batches.

Captum asserts on user input (or fails deep inside with an ``IndexError``); these checks run
first and say what was expected and what was got.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Generator, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_bool, is_int
from ..recording import select_layers
from ..recording.expose import SITE_MODULE, expose_call_site
from ..recording.sites import call_site_call

__all__ = [
    "TARGET_KEYWORDS",
    "batch_target",
    "check_inputs",
    "check_model",
    "check_target",
    "first_call",
    "iter_batches",
    "model_device",
    "modes",
    "one_layer",
    "quiet_captum",
    "target_column",
]

#: The target names the dataset-level functions understand besides explicit class indices.
TARGET_KEYWORDS: tuple[str, ...] = ("label", "predicted")


def check_model(model: Any, name: str = "model") -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"{name} must be a torch.nn.Module, got {type(model).__name__}")
    return model


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a model without tensors."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def check_inputs(inputs: Any, name: str = "inputs") -> Tensor:
    """A floating-point tensor with a batch dimension, e.g. images ``(N, C, H, W)``."""
    if not isinstance(inputs, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, C, H, W) (a batch of images), got {type(inputs).__name__}"
        )
    if not inputs.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (gradients need real values), got dtype {inputs.dtype}; "
            "convert it as the model was trained, e.g. x.float() / 255 for uint8 images"
        )
    if inputs.dim() < 2 or inputs.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, ...) with N >= 1 samples, got shape {tuple(inputs.shape)}")
    return inputs


def _check_index(value: Any, size: int, what: str, out_shape: str) -> int:
    if not is_int(value):
        raise TypeError(f"{what} must be an int class index, got {type(value).__name__} {value!r}")
    if not 0 <= value < size:
        raise ValueError(f"{what} must be in [0, {size}) for a model with outputs of shape {out_shape}, got {value}")
    return int(value)


def check_target(target: Any, output_shape: Sequence[int], n: int, device: torch.device | None = None) -> Any:
    """``target`` checked against the model's ``output_shape`` (of a batch of ``n`` samples), in Captum's forms.

    ``None`` for one output per sample; an int class index; a tuple of indices for outputs with
    more than one dim per sample; a tensor of shape ``()`` or ``(n,)`` of integer indices; a list
    of ``n`` ints (or tuples). Tensors are moved to ``device``. Returns the target to pass to Captum.

    >>> check_target(3, (2, 10), 2)
    3
    >>> check_target(10, (2, 10), 2)
    Traceback (most recent call last):
    ...
    ValueError: target must be in [0, 10) for a model with outputs of shape (N, 10), got 10
    """
    per_sample = tuple(int(s) for s in output_shape[1:])
    shown = "(N" + "".join(f", {s}" for s in per_sample) + ")" if per_sample else "(N,)"
    numel = math.prod(per_sample)
    if target is None:
        if numel != 1:
            raise ValueError(
                f"target is required: the model returns outputs of shape {shown}, so Captum needs to know which "
                "output to explain; pass target= a class index, a tensor of N class indices, or (for the "
                "dataset-level functions) 'label' or 'predicted'"
            )
        return None
    if not per_sample:
        raise ValueError(
            f"the model returns one number per sample (outputs of shape {shown}); pass target=None, got {target!r}"
        )
    if isinstance(target, tuple):
        if len(target) != len(per_sample):
            raise ValueError(
                f"a tuple target needs one index per output dim: {len(per_sample)} for outputs of shape {shown}, "
                f"got {target!r}"
            )
        return tuple(_check_index(t, s, "target", shown) for t, s in zip(target, per_sample))
    if len(per_sample) != 1:
        raise ValueError(
            f"the model returns outputs of shape {shown}: target must be a tuple of {len(per_sample)} indices "
            f"(or a list of N such tuples), got {type(target).__name__} {target!r}"
        )
    (size,) = per_sample
    if isinstance(target, Tensor):
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise TypeError(f"a target tensor must hold integer class indices (e.g. int64), got dtype {target.dtype}")
        if target.dim() > 1 or (target.dim() == 1 and target.shape[0] != n):
            raise ValueError(
                f"a target tensor must have shape () or ({n},) (one class index per sample), got shape "
                f"{tuple(target.shape)}"
            )
        if target.numel() and (int(target.min()) < 0 or int(target.max()) >= size):
            bad = target[(target < 0) | (target >= size)].flatten()[:5].tolist()
            raise ValueError(
                f"target must hold class indices in [0, {size}) for a model with outputs of shape {shown}, got {bad}"
            )
        return target if device is None else target.to(device)
    if isinstance(target, list):
        if len(target) != n:
            raise ValueError(f"a target list needs one class index per sample ({n}), got {len(target)}")
        return [_check_index(t, size, f"target[{i}]", shown) for i, t in enumerate(target)]
    if is_int(target):
        return _check_index(target, size, "target", shown)
    raise TypeError(
        "target must be None, an int class index, a tuple of indices, a tensor or a list of class indices, "
        f"got {type(target).__name__} {target!r}"
    )


def batch_target(target: Any, labels: Tensor | None, logits: Tensor, *, single_batch: bool) -> Any:
    """The Captum target of one batch of a dataset-level function, checked against ``logits``.

    ``"label"``: the batch's labels; ``"predicted"``: the model's arg-max class; ``None`` or an
    int: as given; a tensor or list of class indices only when ``data`` is a single tensor batch.
    """
    if logits.dim() > 2:
        raise ValueError(
            "the dataset-level attribution functions explain class scores, i.e. outputs of shape (N, K) or (N,); "
            f"the model returned shape {tuple(logits.shape)} (use attribute() with a tuple target for those)"
        )
    n = logits.shape[0]
    if isinstance(target, str):
        if target == "predicted":
            if logits.dim() < 2 or logits.shape[1] < 2:
                raise ValueError(
                    f"target='predicted' needs class scores of shape (N, K), K >= 2; got {tuple(logits.shape)}"
                )
            return logits.argmax(1)
        if target == "label":
            if labels is None:
                raise ValueError(
                    "target='label' needs batches of (inputs, labels); these batches hold inputs only: pass "
                    "target='predicted', an int class index, or data as [(inputs, labels)]"
                )
            labels = labels.to(logits.device)
            if labels.dim() != 1 or labels.shape[0] != n:
                raise ValueError(
                    f"target='label' needs labels of shape ({n},) (one class index per sample), got shape "
                    f"{tuple(labels.shape)}"
                )
            return check_target(labels, logits.shape, n)
        raise ValueError(f"target must be one of {list(TARGET_KEYWORDS)}, None, or class indices, got {target!r}")
    if (isinstance(target, (Tensor, list)) and not (isinstance(target, Tensor) and target.dim() == 0)) and (
        not single_batch
    ):
        raise ValueError(
            "a tensor or list of per-sample targets only fits when data is one tensor batch; for a loader pass "
            "target='label', 'predicted', an int class index or None"
        )
    return check_target(target, logits.shape, n, logits.device)


def target_column(target: Any, n: int) -> list[int | None]:
    """The class index per sample of a checked target (``None`` where there is none), for tables."""
    if target is None:
        return [None] * n
    if isinstance(target, Tensor):
        values = target.expand(n).tolist() if target.dim() == 0 else target.tolist()
        return [int(v) for v in values]
    if isinstance(target, list):
        return [int(v) for v in target]
    return [int(target)] * n


@contextmanager
def modes(models: Sequence[nn.Module], eval_mode: bool | None, *, warn: bool = True) -> Iterator[None]:
    """Run the body with the models in eval mode (unless ``eval_mode=False``); restore every flag after.

    ``eval_mode=None`` (the default of the public functions) warns when a model is in train mode.
    Every submodule's ``training`` flag is put back exactly as it was, also after an exception.
    """
    if eval_mode is not None:
        check_bool("eval_mode", eval_mode)
    flags = [(m, m.training) for model in models for m in model.modules()]
    if eval_mode is None and warn:
        for model in dict.fromkeys(models):  # each model once, in order
            training = sum(m.training for m in model.modules())
            if training:
                warnings.warn(
                    f"{type(model).__name__} is in train mode ({training} of {len(list(model.modules()))} modules "
                    "have training=True); attributions are computed in eval mode (dropout off, batch norm on its "
                    "running statistics) and every module's training flag is restored afterwards. Pass "
                    "eval_mode=True to silence this warning, or eval_mode=False to attribute in train mode "
                    "(batch norm then updates its running statistics)",
                    UserWarning,
                    stacklevel=4,
                )
    try:
        if eval_mode is not False:
            for model in models:
                model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextmanager
def quiet_captum() -> Iterator[None]:
    """Hide Captum's notice that it set ``requires_grad`` on the inputs (it gives it on every call)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Input Tensor \d+ did not already require gradients")
        yield


def one_layer(model: nn.Module, layer: Any) -> tuple[str, nn.Module, nn.Module, str]:
    """The single layer ``layer`` names: its name, the model to run, the module to hook and that module's name.

    ``layer`` is a module (or its name, or a glob matching one module), or any call-site name the
    monitor reports: ``"act#2"`` (the second call of a module used twice per forward), a functional
    activation call (``"relu"``). Captum hooks one module that must run once per forward; for a call
    site, and for a module called several times, the model to run is a traced copy on which that
    call is a module of its own (:func:`~xaisparse.recording.expose_call_site`; same parameters,
    same outputs), else the model itself (see :func:`first_call` for a module found to run several times).
    """
    if not isinstance(layer, (str, nn.Module)):
        raise TypeError(
            f"layer must be a module name (str, e.g. 'features.block3.relu'), a call-site name shown in a table "
            f"(e.g. 'act#2') or a submodule of the model, got {type(layer).__name__} {layer!r}"
        )
    module_names = {n for n, _ in model.named_modules() if n}
    if isinstance(layer, str) and layer not in module_names and not any(c in layer for c in "*?["):
        try:
            copy, module = expose_call_site(model, layer)
        except TypeError as err:  # not traceable
            base, call = call_site_call(layer)
            if call == 1 or base not in module_names:
                select_layers(model, layer)  # an unknown name gets the closest module names
            raise TypeError(
                f"layer {layer!r} is call {call} of the module {base!r}; attributing one call of a module that runs "
                f"several times needs a copy of the model made with torch.fx: {err}"
            ) from err
        return layer, copy, module, SITE_MODULE
    names = select_layers(model, layer)  # UnknownLayerError with the closest names
    if len(names) != 1:
        raise ValueError(f"layer must select exactly one module, {layer!r} selects {len(names)}: {names[:8]}")
    return names[0], model, model.get_submodule(names[0]), names[0]


def first_call(model: nn.Module, name: str) -> tuple[nn.Module, nn.Module, str]:
    """For a module ``name`` seen to run several times per forward: a traced copy on which its first call
    (the monitor's ``name``; the others are ``name#2``, ...) is a module of its own; the copy, that
    module and its name."""
    copy, module = expose_call_site(model, name)
    return copy, module, SITE_MODULE


def _split_batch(batch: Any, i: int) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return check_inputs(batch, f"batch {i}"), None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], Tensor):
        x = check_inputs(batch[0], f"the inputs of batch {i}")
        labels = batch[1] if len(batch) > 1 else None
        if labels is not None and not isinstance(labels, Tensor):
            labels = torch.as_tensor(labels)
        return x, labels
    raise TypeError(
        f"batch {i} is a {type(batch).__name__}; expected a tensor of inputs or a tuple/list (inputs, labels, ...) "
        "as a torch DataLoader yields"
    )


def iter_batches(data: Any, *, progress: bool, desc: str) -> Generator[tuple[Tensor, Tensor | None], None, None]:
    """``(inputs, labels or None)`` of each batch of ``data``, with a tqdm progress bar.

    ``data``: one tensor (a single batch of inputs) or an iterable of batches (a DataLoader, a
    list of tensors or of ``(inputs, labels)`` pairs). Nothing is kept between batches.
    """
    check_bool("progress", progress)
    if isinstance(data, Tensor):
        yield check_inputs(data, "data"), None
        return
    if not isinstance(data, Iterable) or isinstance(data, (str, bytes)):
        raise TypeError(
            "data must be a tensor batch or an iterable of batches (a DataLoader, a list of (inputs, labels)), got "
            f"{type(data).__name__}"
        )
    from tqdm.auto import tqdm

    total = len(data) if isinstance(data, Sized) else None
    n = 0
    with tqdm(data, desc=desc, total=total, unit="batch", leave=False, disable=not progress) as bar:
        for i, batch in enumerate(bar):
            n += 1
            yield _split_batch(batch, i)
    if n == 0:
        raise ValueError("data yielded no batches")
