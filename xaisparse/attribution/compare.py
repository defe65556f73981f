"""Two models on the same images: do their attributions differ, and where do they look?

Typical use: a baseline and a sparsity-penalised model (two runs or checkpoints of one
architecture). :func:`compare_models` attributes both on every image of one pass over the
data and returns the per-image attribution sparsity of each, the per-image rank correlation
of their maps, a paired summary (Wilcoxon signed-rank test over images) and the first few
maps for display.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from .._validation import check_int, check_number, check_str
from ._inputs import batch_target, check_model, iter_batches, model_device, modes, target_column
from .methods import ALGORITHMS, check_kwargs, explainer, run
from .sparsity import MEASURES, Rows, _frame, attribution_map, measures, predicted

__all__ = ["ModelComparison", "compare_models", "resolve_models"]


@dataclass
class ModelComparison:
    """What :func:`compare_models` found; everything is plain data (tensors on the CPU, pandas tables).

    ``names``: the two model names, in order (``a``, ``b`` in the summary columns).
    ``per_image``: one row per (model, image): ``model, sample, target, predicted`` and the
    columns of :func:`~xaisparse.attribution.attribution_sparsity`. ``similarity``: one row
    per image: ``sample`` and ``map_spearman``, Spearman's rho between the two models' maps over
    the pixels (1: same pixel ranking; NaN where a map is constant). ``summary``: one row per
    measure of :data:`~xaisparse.attribution.MEASURES`: ``statistic, n`` (images with both
    values finite), ``median_a, median_b, median_difference`` (median of ``b − a``),
    ``wilcoxon, pvalue`` (``scipy.stats.wilcoxon`` of the paired values, two-sided; NaN when no
    pair is left). ``images``: the first ``keep`` inputs; ``attributions[name]``: Captum's output on
    them; :attr:`maps`: their attribution maps.
    """

    names: tuple[str, str]
    algorithm: str
    per_image: pd.DataFrame
    similarity: pd.DataFrame
    summary: pd.DataFrame
    images: Tensor
    attributions: dict[str, Tensor] = field(default_factory=dict)

    @property
    def maps(self) -> dict[str, Tensor]:
        """``|attributions|`` summed over channels, per model: ``(keep, H, W)``."""
        return {name: attribution_map(a) for name, a in self.attributions.items()}

    def distribution(self, statistic: str = "sparsity") -> pd.DataFrame:
        """``model, sample, <statistic>`` rows: one measure's distribution over images, per model."""
        if statistic not in MEASURES:
            raise ValueError(f"statistic must be one of {list(MEASURES)}, got {statistic!r}")
        return self.per_image[["model", "sample", statistic]]


def resolve_models(
    models: Any, architecture: nn.Module | None = None, *, count: int | None = 2
) -> dict[str, nn.Module]:
    """``{name: model}`` from ``{name: model or checkpoint}``; checkpoints are loaded into ``architecture``.

    A checkpoint is a path (a ``fit(checkpoint_dir=...)`` run directory or ``.pt`` file) or a
    ``state_dict``, loaded by :func:`xaisparse.checkpoint.load_weights` into a copy of
    ``architecture``; one that does not fit raises ``ValueError`` naming the mismatch.
    ``count``: how many entries are required (``None``: one or more).
    """
    from ..checkpoint import load_weights

    entries = "two entries" if count == 2 else ("one or more entries" if count is None else f"{count} entries")
    if not isinstance(models, Mapping):
        raise TypeError(
            f"models must be a dict {{name: model or checkpoint}} of {entries}, e.g. "
            f"{{'baseline': m0, 'penalty': m1}}; got {type(models).__name__}"
        )
    if count is not None and len(models) != count:
        raise ValueError(f"models must hold exactly {entries} to compare, got {len(models)}: {list(models)}")
    if not models:
        raise ValueError("models must hold at least one entry, got an empty dict")
    if architecture is not None:
        check_model(architecture, "architecture")
    out: dict[str, nn.Module] = {}
    for name, spec in models.items():
        check_str("a model name", name)
        if isinstance(spec, nn.Module):
            out[name] = spec
        elif isinstance(spec, (str, os.PathLike, Mapping)):
            if architecture is None:
                raise TypeError(
                    f"models[{name!r}] is a checkpoint; pass architecture= (a model of the same class and "
                    "configuration) to load it into"
                )
            out[name] = load_weights(architecture, spec)
        else:
            raise TypeError(
                f"models[{name!r}] must be an nn.Module or a checkpoint (path or state_dict), got {type(spec).__name__}"
            )
    return out


def _spearman_rows(a: Tensor, b: Tensor) -> list[float]:
    """Spearman's rho between the flattened maps of ``a`` and ``b``, per sample."""
    import scipy.stats

    rhos = []
    for u, v in zip(a.flatten(1).cpu().double().numpy(), b.flatten(1).cpu().double().numpy()):
        if not (np.isfinite(u).all() and np.isfinite(v).all()) or np.ptp(u) == 0 or np.ptp(v) == 0:
            rhos.append(float("nan"))
            continue
        rhos.append(float(scipy.stats.spearmanr(u, v).statistic))
    return rhos


def _paired(statistic: str, a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    import scipy.stats

    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    row: dict[str, Any] = {"statistic": statistic, "n": int(ok.sum())}
    d = b - a
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # all-zero differences: scipy warns and gives p = 1
        row["median_a"] = float(np.median(a)) if a.size else float("nan")
        row["median_b"] = float(np.median(b)) if b.size else float("nan")
        row["median_difference"] = float(np.median(d)) if d.size else float("nan")
        if d.size:
            res = scipy.stats.wilcoxon(b, a)
            row["wilcoxon"], row["pvalue"] = float(res.statistic), float(res.pvalue)
        else:
            row["wilcoxon"], row["pvalue"] = float("nan"), float("nan")
    return row


def compare_models(
    models: Mapping[str, Any],
    data: Any,
    target: Any = "label",
    *,
    architecture: nn.Module | None = None,
    algorithm: Any = "integrated_gradients",
    noise_tunnel: bool = False,
    threshold: float = 0.0,
    keep: int = 8,
    eval_mode: bool | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ModelComparison:
    """Attribute two models on the same images and compare their attribution maps.

    Args:
        models: ``{name: model or checkpoint}``, two entries (see :func:`resolve_models`).
        data, target: as in :func:`~xaisparse.attribution.attribution_sparsity_table`. With
            ``"predicted"`` each model explains its own prediction; ``"label"`` (default) or an
            int asks both the same question.
        architecture: the model to load checkpoints into (unused for ``nn.Module`` values).
        algorithm, noise_tunnel, eval_mode, ``**kwargs``: as in :func:`~xaisparse.attribution.attribute`
            (one Captum algorithm for both models; a Captum object is not accepted here, as it
            is bound to one model).
        threshold: the zero-fraction threshold.
        keep: how many of the first images to keep with both models' attributions (for
            display; 0 keeps none). Nothing else is kept across batches.

    >>> from torch import nn
    >>> torch.manual_seed(0) and None
    >>> make = lambda: nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).eval()
    >>> data = [(torch.rand(6, 1, 6, 6), torch.tensor([0, 1, 2, 0, 1, 2]))]
    >>> result = compare_models({"baseline": make(), "penalty": make()}, data, algorithm="saliency", progress=False)
    >>> result.per_image.groupby("model").size().to_dict(), result.maps["penalty"].shape
    ({'baseline': 6, 'penalty': 6}, torch.Size([6, 6, 6]))
    >>> list(result.summary.statistic)
    ['sparsity', 'perplexity', 'gini', 'zero_fraction']
    """
    nets = resolve_models(models, architecture)
    names = tuple(nets)
    if not isinstance(algorithm, str):
        raise TypeError(
            f"compare_models takes an algorithm name ({', '.join(ALGORITHMS)}), "
            f"not a Captum object bound to one model; got {type(algorithm).__name__}"
        )
    keep = check_int("keep", keep, minimum=0)
    check_number("threshold", threshold, minimum=0.0)
    objs = {name: explainer(net, algorithm, noise_tunnel=noise_tunnel) for name, net in nets.items()}
    devices = {name: model_device(net) for name, net in nets.items()}
    kws = {name: check_kwargs(objs[name], kwargs, devices[name], delta=False) for name in names}
    rows = Rows()
    rhos: list[float] = []
    kept_x: list[Tensor] = []
    kept_a: dict[str, list[Tensor]] = {name: [] for name in names}
    offset = 0
    single = isinstance(data, Tensor)
    with modes(list(nets.values()), eval_mode), closing(iter_batches(data, progress=progress, desc="compare")) as it:
        for x, labels in it:
            n = x.shape[0]
            take = max(0, min(n, keep - offset))
            batch_maps = []
            for name, net in nets.items():
                xd = x.to(devices[name])
                with torch.no_grad():
                    logits = net(xd)
                tgt = batch_target(target, labels, logits, single_batch=single)
                attr = run(objs[name], xd, tgt, kws[name])
                batch_maps.append(attribution_map(attr).cpu())
                if take:
                    kept_a[name].append(attr[:take].detach().cpu())
                rows.add(
                    model=name,
                    sample=np.arange(offset, offset + n),
                    target=target_column(tgt, n),
                    predicted=predicted(logits),
                    **_frame(measures(attr, threshold)),
                )
                del attr
            rhos.extend(_spearman_rows(*batch_maps))
            if take:
                kept_x.append(x[:take].detach().cpu())
            offset += n
    framed = rows.frame()
    per_image = pd.concat([framed[framed.model == name] for name in names], ignore_index=True)
    similarity = pd.DataFrame({"sample": np.arange(offset), "map_spearman": np.asarray(rhos, dtype=np.float64)})
    a, b = (per_image[per_image.model == name].sort_values("sample") for name in names)
    paired = [_paired(m, a[m].to_numpy(np.float64), b[m].to_numpy(np.float64)) for m in MEASURES]
    return ModelComparison(
        names=(names[0], names[1]),
        algorithm=algorithm,
        per_image=per_image,
        similarity=similarity,
        summary=pd.DataFrame(paired),
        images=torch.cat(kept_x) if kept_x else torch.empty(0),
        attributions={name: torch.cat(v) if v else torch.empty(0) for name, v in kept_a.items()},
    )
