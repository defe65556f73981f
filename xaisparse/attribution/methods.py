"""Input attributions through Captum, in Captum's own vocabulary.

:func:`attribute` builds the Captum object for ``algorithm`` on the model, checks the
arguments Captum would assert on, and calls ``attribute(inputs, target=..., **kwargs)``: the
tensor returned is exactly Captum's. Captum is imported on first use, never at
``import xaisparse``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._validation import check_bool
from ._inputs import check_inputs, check_model, check_target, model_device, modes, quiet_captum

__all__ = ["ALGORITHMS", "GRADIENT_ALGORITHMS", "NOISE_TUNNEL_TYPES", "attribute", "explainer"]

#: The attribution algorithms by name, and the Captum class each one is.
ALGORITHMS: dict[str, str] = {
    "integrated_gradients": "IntegratedGradients",
    "saliency": "Saliency",
    "input_x_gradient": "InputXGradient",
    "gradient_shap": "GradientShap",
    "occlusion": "Occlusion",
}
#: The algorithms that follow gradients (all but occlusion, a perturbation method).
GRADIENT_ALGORITHMS: tuple[str, ...] = ("integrated_gradients", "saliency", "input_x_gradient", "gradient_shap")
#: ``nt_type`` values of Captum's NoiseTunnel (``noise_tunnel=True``).
NOISE_TUNNEL_TYPES: tuple[str, ...] = ("smoothgrad", "smoothgrad_sq", "vargrad")

# Keyword arguments that hold tensors to move to the model's device.
_TENSOR_KWARGS = ("baselines", "layer_baselines")


def explainer(model: nn.Module, algorithm: Any = "integrated_gradients", *, noise_tunnel: bool = False) -> Any:
    """The Captum attribution object for ``algorithm`` on ``model`` (wrapped in NoiseTunnel if asked).

    ``algorithm``: a name of :data:`~xaisparse.attribution.ALGORITHMS`, or a Captum attribution object you built yourself
    (e.g. ``IntegratedGradients(model, multiply_by_inputs=False)``, ``LayerGradCam(model, layer)``).

    >>> from torch import nn
    >>> type(explainer(nn.Linear(4, 2), "saliency")).__name__
    'Saliency'
    >>> type(explainer(nn.Linear(4, 2), "saliency", noise_tunnel=True)).__name__
    'NoiseTunnel'
    """
    import captum.attr

    check_model(model)
    check_bool("noise_tunnel", noise_tunnel)
    if isinstance(algorithm, str):
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"algorithm must be one of {list(ALGORITHMS)} (or a Captum attribution object), got {algorithm!r}"
            )
        obj = getattr(captum.attr, ALGORITHMS[algorithm])(model)
    elif isinstance(algorithm, captum.attr.Attribution):
        obj = algorithm
    else:
        raise TypeError(
            f"algorithm must be one of {list(ALGORITHMS)} or a captum.attr Attribution object, got "
            f"{type(algorithm).__name__} {algorithm!r}"
        )
    return captum.attr.NoiseTunnel(obj) if noise_tunnel else obj


def _parameters(fn: Any) -> tuple[dict[str, inspect.Parameter], bool]:
    params = dict(inspect.signature(fn).parameters)
    params.pop("self", None)
    params.pop("inputs", None)
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: p for k, p in params.items() if p.kind is not inspect.Parameter.VAR_KEYWORD}, var_kw


def check_kwargs(obj: Any, kwargs: Mapping[str, Any], device: torch.device, *, delta: bool = True) -> dict[str, Any]:
    """``kwargs`` for ``obj.attribute``: unknown and missing names raise ``TypeError``; tensors go to ``device``.

    ``delta=False`` (the dataset-level functions) refuses ``return_convergence_delta=True``.
    """
    import captum.attr

    if not delta and kwargs.get("return_convergence_delta"):
        raise TypeError(
            "return_convergence_delta=True is for attribute() on one batch, not the dataset-level functions"
        )

    tunnel = isinstance(obj, captum.attr.NoiseTunnel)
    inner = obj.attribution_method if tunnel else obj
    inner_name = type(inner).__name__
    accepted, open_ended = _parameters(inner.attribute)
    if tunnel:
        nt_params, _ = _parameters(obj.attribute)
        accepted = {**accepted, **nt_params}
    if "target" in kwargs:
        raise TypeError("pass target as the third argument (target=...), not among the Captum keyword arguments")
    if not open_ended:
        unknown = [k for k in kwargs if k not in accepted]
        if unknown:
            noise = set(_parameters(captum.attr.NoiseTunnel.attribute)[0]) - set(accepted)
            hint = " (NoiseTunnel arguments need noise_tunnel=True)" if not tunnel and set(unknown) & noise else ""
            raise TypeError(
                f"{inner_name}.attribute{' inside NoiseTunnel' if tunnel else ''} takes no argument "
                f"{', '.join(map(repr, unknown))}{hint}; it takes: {', '.join(k for k in accepted if k != 'target')}"
            )
    missing = [k for k, p in accepted.items() if p.default is inspect.Parameter.empty and k not in kwargs]
    if missing:
        raise TypeError(
            f"{inner_name}.attribute needs {', '.join(f'{k}=' for k in missing)} (Captum has no default for it), "
            + {
                "sliding_window_shapes": "e.g. sliding_window_shapes=(1, 3, 3) for 1-channel images",
                "baselines": "e.g. baselines=torch.zeros(1, *inputs.shape[1:]) or a batch of reference images",
            }.get(missing[0], "see Captum's documentation")
        )
    nt_type = kwargs.get("nt_type")
    if tunnel and nt_type is not None and nt_type not in NOISE_TUNNEL_TYPES:
        raise ValueError(f"nt_type must be one of {list(NOISE_TUNNEL_TYPES)}, got {nt_type!r}")
    out = dict(kwargs)
    for key in _TENSOR_KWARGS:
        value = out.get(key)
        if isinstance(value, Tensor):
            out[key] = value.to(device)
        elif isinstance(value, tuple):
            out[key] = tuple(v.to(device) if isinstance(v, Tensor) else v for v in value)
    return out


def _probe_shape(model: nn.Module, inputs: Tensor, kwargs: Mapping[str, Any]) -> torch.Size:
    """Output shape of ``model`` for ``inputs`` (one sample, unless extra forward arguments are given)."""
    extra = kwargs.get("additional_forward_args")
    if extra is None:
        args: tuple[Any, ...] = (inputs[:1],)
    else:
        args = (inputs, *(extra if isinstance(extra, tuple) else (extra,)))
    with modes([model], True), torch.no_grad():  # eval: a one-sample forward must not touch batch-norm statistics
        out = model(*args)
    if not isinstance(out, Tensor):
        raise TypeError(f"the model must return a tensor of scores (N, ...), it returned {type(out).__name__}")
    return torch.Size((inputs.shape[0], *out.shape[1:]))


def attribute(
    model: nn.Module,
    inputs: Tensor,
    target: Any = None,
    *,
    algorithm: Any = "integrated_gradients",
    noise_tunnel: bool = False,
    eval_mode: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Captum's attributions of ``model``'s ``target`` output to ``inputs``, for one batch.

    Args:
        model: the network; its training flags are restored afterwards (see ``eval_mode``).
        inputs: a floating-point batch ``(N, C, H, W)``; moved to the model's device.
        target: Captum's ``target=``: ``None`` for a model with one output per sample, a class
            index, a tensor/list of ``N`` class indices (a tuple of indices for outputs with
            more dims). Checked against the model's output shape first.
        algorithm: ``"integrated_gradients"`` (default), ``"saliency"``, ``"input_x_gradient"``,
            ``"gradient_shap"``, ``"occlusion"`` (see :data:`~xaisparse.attribution.ALGORITHMS`), or a Captum
            attribution object built on ``model``.
        noise_tunnel: wrap the algorithm in Captum's ``NoiseTunnel`` (SmoothGrad and friends);
            its arguments ``nt_type``, ``nt_samples``, ``nt_samples_batch_size``, ``stdevs``
            go into ``kwargs`` like every other Captum argument.
        eval_mode: ``None`` (default): attribute in eval mode and warn if the model was in train
            mode; ``True``: eval mode, silently; ``False``: leave the modes as they are.
        **kwargs: passed to Captum's ``attribute`` unchanged: ``baselines=``, ``n_steps=``,
            ``internal_batch_size=``, ``method=``, ``sliding_window_shapes=``, ``strides=``,
            ``n_samples=``, ``return_convergence_delta=``, ... Unknown names raise ``TypeError``.

    Returns:
        What Captum returns: the attribution tensor, shaped like ``inputs`` (with
        ``return_convergence_delta=True``, Captum's ``(attributions, delta)``).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3)).eval()
    >>> x = torch.rand(2, 1, 8, 8)
    >>> attribute(model, x, target=0, n_steps=8).shape
    torch.Size([2, 1, 8, 8])
    >>> attribute(model, x, target=[0, 2], algorithm="saliency", noise_tunnel=True, nt_samples=4, stdevs=0.1).shape
    torch.Size([2, 1, 8, 8])
    >>> attribute(model, x, target=3, algorithm="saliency")
    Traceback (most recent call last):
    ...
    ValueError: target must be in [0, 3) for a model with outputs of shape (N, 3), got 3
    """
    check_model(model)
    inputs = check_inputs(inputs)
    obj = explainer(model, algorithm, noise_tunnel=noise_tunnel)
    device = model_device(model)
    inputs = inputs.to(device)
    kwargs = check_kwargs(obj, kwargs, device)
    target = check_target(target, _probe_shape(model, inputs, kwargs), inputs.shape[0], device)
    with modes([model], eval_mode), quiet_captum():
        return obj.attribute(inputs, target=target, **kwargs)


def run(obj: Any, inputs: Tensor, target: Any, kwargs: Mapping[str, Any]) -> Tensor:
    """``obj.attribute`` on checked arguments, for the dataset-level functions (one tensor back)."""
    with quiet_captum():
        out = obj.attribute(inputs, target=target, **kwargs)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"expected one attribution tensor from {type(obj).__name__}.attribute, got {type(out).__name__}"
        )
    return out
