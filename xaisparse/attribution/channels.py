"""The channel table: one layer's activation sparsity beside three Captum channel importances.

Per channel of one layer, on the same images: the activation sparsity and dead fraction that
:class:`~xaisparse.SparsityMonitor` measures, and three importances, each a signed mean over
the images (positive: the channel supports the target output):

``gradcam``
    the channel's term of the Grad-CAM map, ``α_k · mean(A_k)`` (Captum's ``LayerGradCam``
    with ``attr_dim_summation=False``, averaged over positions): the Grad-CAM weight ``α_k``
    as it acts on this image's activation.
``conductance``
    Captum's ``LayerConductance`` summed over the channel's positions (the channel's share of
    ``F(x) − F(baseline)``).
``ablation``
    the drop in the target output when the whole channel is set to ``layer_baselines``
    (default 0): Captum's ``LayerFeatureAblation`` with one mask group per channel.

A channel's importance by a method is the magnitude of that mean; ranks and flags use it.
"""

from __future__ import annotations

import warnings
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_choice, check_fraction, check_int
from ._inputs import (
    batch_target,
    check_inputs,
    check_model,
    check_target,
    first_call,
    iter_batches,
    model_device,
    modes,
    one_layer,
    quiet_captum,
)

__all__ = ["ACTIVATION_COLUMNS", "IMPORTANCES", "ChannelTable", "channel_attributions", "channel_table"]

#: The importance columns of a channel table, in order.
IMPORTANCES: tuple[str, ...] = ("gradcam", "conductance", "ablation")
#: The activation-sparsity columns of a channel table (from the monitor).
ACTIVATION_COLUMNS: tuple[str, ...] = ("sparsity", "dead_fraction")


def _scores(
    model: nn.Module,
    module: nn.Module,
    x: Tensor,
    target: Any,
    layer_shape: tuple[int, ...],
    captum_kwargs: dict[str, Any],
) -> dict[str, Tensor]:
    """Per-(sample, channel) Captum importances of one checked batch; ``(N, C)`` each."""
    from captum.attr import LayerConductance, LayerFeatureAblation, LayerGradCam

    channels = layer_shape[1]
    mask = torch.arange(channels, device=x.device).view(1, channels, *([1] * (len(layer_shape) - 2)))
    with quiet_captum():
        gradcam = LayerGradCam(model, module).attribute(x, target=target, attr_dim_summation=False)
        conductance = LayerConductance(model, module).attribute(
            x,
            baselines=captum_kwargs["baselines"],
            target=target,
            n_steps=captum_kwargs["n_steps"],
            method=captum_kwargs["method"],
            internal_batch_size=captum_kwargs["internal_batch_size"],
        )
        ablation = LayerFeatureAblation(model, module).attribute(
            x,
            layer_baselines=captum_kwargs["layer_baselines"],
            target=target,
            layer_mask=mask,
            perturbations_per_eval=captum_kwargs["perturbations_per_eval"],
        )
    spatial = tuple(range(2, len(layer_shape)))
    return {
        "gradcam": gradcam.detach().mean(spatial) if spatial else gradcam.detach(),
        "conductance": conductance.detach().sum(spatial) if spatial else conductance.detach(),
        # one value per mask group, repeated over the channel's positions: take it as Captum gives it
        "ablation": ablation.detach().flatten(2)[..., 0] if spatial else ablation.detach(),
    }


def _captum_kwargs(
    baselines: Any,
    n_steps: int,
    method: str,
    internal_batch_size: int | None,
    layer_baselines: Any,
    perturbations_per_eval: int,
    device: torch.device,
) -> dict[str, Any]:
    def to(v: Any) -> Any:
        return v.to(device) if isinstance(v, Tensor) else v

    return {
        "baselines": to(baselines),
        "n_steps": check_int("n_steps", n_steps, minimum=1),
        "method": method,
        "internal_batch_size": None
        if internal_batch_size is None
        else check_int("internal_batch_size", internal_batch_size, minimum=1),
        "layer_baselines": to(layer_baselines),
        "perturbations_per_eval": check_int("perturbations_per_eval", perturbations_per_eval, minimum=1),
    }


class _LayerProbe:
    """Collects the shape of each call of one layer during a forward (the call sites the recorder names)."""

    def __init__(self) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}

    def __call__(self, site: str, tensor: Tensor) -> None:
        self.shapes.setdefault(site, tuple(tensor.shape))

    def several_calls(self, may_split: bool) -> bool:
        """Whether the hooked module ran several times (and the caller may take a call apart); then reset."""
        if len(self.shapes) > 1 and may_split:
            self.shapes.clear()
            return True
        return False

    def shape(self, hooked: str, name: str) -> tuple[int, ...]:
        """The shape of the hooked module's one call (``name``: the layer as the user named it)."""
        if len(self.shapes) > 1:  # not reached: a module called several times is taken apart first
            raise ValueError(
                f"layer {name!r} ran {len(self.shapes)} times per forward (call sites {list(self.shapes)})"
            )
        if not self.shapes:
            raise ValueError(f"layer {name!r} did not run in the model's forward")
        shape = self.shapes[hooked]
        if len(shape) < 2:
            raise ValueError(f"layer {name!r} outputs shape {shape}; a channel table needs (N, C, ...)")
        return shape


def channel_attributions(
    model: nn.Module,
    inputs: Tensor,
    layer: str | nn.Module,
    target: Any = None,
    *,
    baselines: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    layer_baselines: Any = None,
    perturbations_per_eval: int = 1,
    eval_mode: bool | None = None,
) -> dict[str, Tensor]:
    """Per-image channel importances of one layer for one batch: ``{"gradcam", "conductance", "ablation"}``.

    Each value is ``(N, C)``, signed, taken from Captum's output as the module docstring
    describes. ``target`` is Captum's (checked against the model's outputs); ``baselines``,
    ``n_steps``, ``method`` and ``internal_batch_size`` go to ``LayerConductance``,
    ``layer_baselines`` and ``perturbations_per_eval`` to ``LayerFeatureAblation``.
    ``layer`` is a module name (an unknown one raises ``UnknownLayerError`` with the closest
    names) or the module.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    >>> scores = channel_attributions(model, torch.rand(5, 1, 4, 4), "1", target=1, n_steps=4)
    >>> {k: tuple(v.shape) for k, v in scores.items()}
    {'gradcam': (5, 3), 'conductance': (5, 3), 'ablation': (5, 3)}
    """
    from ..recording import ActivationRecorder

    check_model(model)
    inputs = check_inputs(inputs)
    name, run, module, hooked = one_layer(model, layer)
    device = model_device(model)
    kw = _captum_kwargs(
        baselines, n_steps, method, internal_batch_size, layer_baselines, perturbations_per_eval, device
    )
    x = inputs.to(device)
    probe = _LayerProbe()
    with modes([model], eval_mode):
        with ActivationRecorder(run, hooked, callback=probe), torch.no_grad():
            logits = run(x)
        if probe.several_calls(run is model):  # Captum needs one call: take the first apart
            run, module, hooked = first_call(model, name)
            with ActivationRecorder(run, hooked, callback=probe), torch.no_grad():
                run(x)
        checked = check_target(target, logits.shape, x.shape[0], device)
        return _scores(run, module, x, checked, probe.shape(hooked, name), kw)


@dataclass
class ChannelTable:
    """One layer's channels: activation sparsity beside Captum importances, with rank correlations.

    ``channels``: one row per channel: ``layer, channel, sparsity, dead_fraction`` (from the
    monitor), ``gradcam, conductance, ablation`` (signed means over the images), their ranks
    ``*_rank`` (1 = largest magnitude), and the flags ``dead_but_important`` and
    ``alive_but_irrelevant``. ``correlations``: Spearman's rho (``scipy.stats.spearmanr``)
    between each activation column and each importance magnitude over the channels, with its
    p-value and the number of channels used (``activation, importance, rho, pvalue, n``).
    ``images``: how many images were measured; ``thresholds``: the flag thresholds used.
    """

    layer: str
    channels: pd.DataFrame
    correlations: pd.DataFrame
    images: int
    thresholds: dict[str, float] = field(default_factory=dict)

    def sorted(self, by: str = "ablation") -> pd.DataFrame:
        """The channel rows ordered by an importance magnitude, or by sparsity / dead fraction (descending)."""
        check_choice("by", by, IMPORTANCES + ACTIVATION_COLUMNS)
        key = self.channels[by].abs() if by in IMPORTANCES else self.channels[by]
        return self.channels.loc[key.sort_values(ascending=False, kind="stable").index]


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float, int]:
    import scipy.stats

    ok = np.isfinite(a) & np.isfinite(b)
    n = int(ok.sum())
    if n < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan"), float("nan"), n
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = scipy.stats.spearmanr(a[ok], b[ok])
    return float(res.statistic), float(res.pvalue), n


def _flags(
    table: pd.DataFrame, dead_threshold: float, important_threshold: float, irrelevant_threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    share = []
    for col in IMPORTANCES:
        mag = table[col].abs().to_numpy()
        top = np.nanmax(mag) if np.isfinite(mag).any() else 0.0
        share.append(mag / top if top > 0 else np.zeros_like(mag))
    shares = np.stack(share)
    dead = table["dead_fraction"].to_numpy() >= dead_threshold
    important = (shares >= important_threshold).any(0)
    irrelevant = (shares <= irrelevant_threshold).all(0)
    return dead & important, ~dead & irrelevant


def channel_table(
    model: nn.Module,
    data: Any,
    layer: str | nn.Module,
    target: Any = "label",
    *,
    baselines: Any = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    layer_baselines: Any = None,
    perturbations_per_eval: int = 1,
    dead_threshold: float = 0.5,
    important_threshold: float = 0.5,
    irrelevant_threshold: float = 0.05,
    eval_mode: bool | None = None,
    progress: bool = True,
) -> ChannelTable:
    """Activation sparsity and Captum importance of every channel of ``layer``, over ``data``.

    ``data`` and ``target`` as in :func:`~xaisparse.attribution.attribution_sparsity_table`
    (default: each batch's labels); the Captum arguments as in :func:`channel_attributions`.
    Each batch runs once through the model inside a :class:`~xaisparse.SparsityMonitor` (the
    activation columns) and then through the three Captum methods; only per-channel sums are
    kept between batches, on the model's device.

    Flags (documented thresholds): a channel is *dead* when ``dead_fraction >= dead_threshold``
    (its map was all zero on at least that share of the images), otherwise alive. It is
    *important* by a method when its importance magnitude is at least ``important_threshold``
    times the layer's largest for that method, *irrelevant* when it is at most
    ``irrelevant_threshold`` times that for every method. ``dead_but_important``: dead and
    important by at least one method; ``alive_but_irrelevant``: alive and irrelevant by all.

    >>> from torch import nn
    >>> model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 2)).eval()
    >>> data = [(torch.rand(4, 1, 4, 4), torch.tensor([0, 1, 1, 0]))]
    >>> table = channel_table(model, data, "1", n_steps=4, progress=False)
    >>> table.channels.shape, table.images, list(table.correlations.importance.unique())
    ((3, 12), 4, ['gradcam', 'conductance', 'ablation'])
    """
    from ..monitor import SparsityMonitor

    check_model(model)
    name, run, module, hooked = one_layer(model, layer)
    dead_threshold = check_fraction("dead_threshold", dead_threshold, low_open=True)
    important_threshold = check_fraction("important_threshold", important_threshold, low_open=True)
    irrelevant_threshold = check_fraction("irrelevant_threshold", irrelevant_threshold)
    if irrelevant_threshold >= important_threshold:
        raise ValueError(
            f"irrelevant_threshold must be below important_threshold, got {irrelevant_threshold} >= "
            f"{important_threshold}"
        )
    device = model_device(model)
    kw = _captum_kwargs(
        baselines, n_steps, method, internal_batch_size, layer_baselines, perturbations_per_eval, device
    )
    monitor = SparsityMonitor(run, hooked)
    probe = _LayerProbe()
    monitor.recorder.add_callback(probe)
    sums: dict[str, Tensor] = {}
    images = 0
    batches = closing(iter_batches(data, progress=progress, desc=f"channels of {name}"))
    with modes([model], eval_mode), batches as it:
        for x, labels in it:
            x = x.to(device)
            with monitor.track("test"), torch.no_grad():
                logits = run(x)
            if probe.several_calls(run is model):  # Captum needs one call: take the first apart, start again
                run, module, hooked = first_call(model, name)
                monitor = SparsityMonitor(run, hooked)
                monitor.recorder.add_callback(probe)
                with monitor.track("test"), torch.no_grad():
                    run(x)
            tgt = batch_target(target, labels, logits, single_batch=isinstance(data, Tensor))
            scores = _scores(run, module, x, tgt, probe.shape(hooked, name), kw)
            for key, value in scores.items():
                total = value.to(torch.float64).sum(0)
                sums[key] = sums[key] + total if key in sums else total
            images += x.shape[0]
    report = monitor.compute().channels
    stats = report[report.layer == hooked].pivot(index="channel", columns="statistic", values="value")
    table = pd.DataFrame(
        {
            "layer": name,
            "channel": stats.index.to_numpy(),
            "sparsity": stats["spatial_mean"].to_numpy(),
            "dead_fraction": stats["dead_fraction"].to_numpy(),
            **{key: (sums[key] / images).cpu().numpy() for key in IMPORTANCES},
        }
    )
    for key in IMPORTANCES:
        table[f"{key}_rank"] = table[key].abs().rank(ascending=False, method="min").astype("Int64")
    table["dead_but_important"], table["alive_but_irrelevant"] = _flags(
        table, dead_threshold, important_threshold, irrelevant_threshold
    )
    rows = []
    for act in ACTIVATION_COLUMNS:
        for key in IMPORTANCES:
            rho, p, n = _spearman(table[act].to_numpy(), table[key].abs().to_numpy())
            rows.append({"activation": act, "importance": key, "rho": rho, "pvalue": p, "n": n})
    return ChannelTable(
        layer=name,
        channels=table,
        correlations=pd.DataFrame(rows),
        images=images,
        thresholds={
            "dead_threshold": dead_threshold,
            "important_threshold": important_threshold,
            "irrelevant_threshold": irrelevant_threshold,
        },
    )
