"""SparsityMonitor: an activation recorder feeding one streaming estimator per (split, layer)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn

from ._validation import check_split
from .estimators import LayerSparsity
from .recording import ActivationRecorder, LayerSelector

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd  # imported where tables are built: `import xaisparse` stays light

__all__ = ["CHANNEL_STATISTICS", "LAYER_STATISTICS", "SparsityMonitor", "SparsityReport"]

#: Per-channel statistics in :attr:`SparsityReport.channels`.
CHANNEL_STATISTICS = (
    "spatial_mean",  # mean over samples of the channel's map sparsity (dead maps count as 1)
    "spatial_std",
    "dead_fraction",  # share of the channel's maps that were all zero
    "count",  # finite maps measured
    "nonfinite",  # maps with NaN/Inf, excluded
    "sample_sparsity",  # sparsity of the channel's spatial means over all samples seen
    "sample_perplexity",
)
#: Per-layer statistics in :attr:`SparsityReport.layers`.
LAYER_STATISTICS = (
    "spatial_mean",  # mean map sparsity over all channels and samples
    "dead_fraction",
    "nonfinite",
    "channel_mean",  # population sparsity: mean over samples of sparsity across channels
    "channel_std",
    "sample_mean",  # mean over channels of the sample-axis (lifetime) sparsity
    "num_channels",
    "samples",
)


@dataclass
class SparsityReport:
    """What a :class:`SparsityMonitor` measured, as tidy tables plus fixed-bin histograms.

    ``channels``: columns ``split, layer, channel, statistic, value`` (see
    :data:`CHANNEL_STATISTICS`). ``layers``: ``split, layer, statistic, value`` (see
    :data:`LAYER_STATISTICS`). ``spatial_hist[(split, layer)]``: ``(channels, bins)`` counts of
    per-sample map sparsity; ``channel_hist[(split, layer)]``: ``(bins,)`` counts of per-sample
    population sparsity; both on ``bin_edges``.
    """

    channels: pd.DataFrame
    layers: pd.DataFrame
    spatial_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    channel_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    bin_edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 21))

    def layer_value(self, split: str, layer: str, statistic: str = "spatial_mean") -> float:
        """One layer-level number, e.g. ``report.layer_value("test", "block1.relu")``."""
        rows = self.layers[
            (self.layers.split == split) & (self.layers.layer == layer) & (self.layers.statistic == statistic)
        ]
        if rows.empty:
            raise KeyError(f"no {statistic!r} for split={split!r}, layer={layer!r}")
        return float(rows.value.iloc[0])


#: Left out of the tables for layers without spatial extent ((N, F) features, 1x1 maps).
_SPATIAL_CHANNEL_STATISTICS = ("spatial_mean", "spatial_std", "dead_fraction", "count")
_SPATIAL_LAYER_STATISTICS = ("spatial_mean", "dead_fraction")


def _frames(out: dict[str, Tensor]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Per-channel values (by statistic) and per-layer numbers of one estimator's ``compute()`` output.

    Arrays, not a DataFrame: :meth:`SparsityMonitor.compute` builds one table from all layers at
    once (a DataFrame per layer cost ~15 ms each: seconds for a model with hundreds of layers).
    """
    np_out = {k: v.detach().cpu().numpy() for k, v in out.items()}
    count = np_out["spatial_count"].astype(np.float64)
    # (N, F) features and 1x1 maps: the spatial axis was skipped (nothing counted, not even a
    # non-finite map) although samples were measured; their spatial rows would all be NaN
    measured = np_out["sample_count"].any() or np_out["sample_nonfinite"].any()
    no_spatial = bool(measured) and not count.any() and not np_out["spatial_nonfinite"].any()
    dead = np_out["spatial_dead"].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        dead_fraction = np.where(count > 0, dead / np.maximum(count, 1), np.nan)
    per_channel = {
        "spatial_mean": np_out["spatial_mean"],
        "spatial_std": np_out["spatial_std"],
        "dead_fraction": dead_fraction,
        "count": count,
        # maps with NaN/Inf; counted on every layer (also 1x1 maps, where spatial is skipped)
        "nonfinite": np_out["sample_nonfinite"].astype(np.float64),
        "sample_sparsity": np_out["sample_sparsity"],
        "sample_perplexity": np_out["sample_perplexity"],
    }
    c = len(count)
    total = count.sum()
    lifetime = np_out["sample_sparsity"]
    with np.errstate(invalid="ignore", divide="ignore"):
        spatial_mean = float((np_out["spatial_mean"] * count)[count > 0].sum() / total) if total else np.nan
        stats = {
            "spatial_mean": spatial_mean,
            "dead_fraction": float(dead.sum() / total) if total else np.nan,
            "nonfinite": float(np_out["sample_nonfinite"].sum()),  # non-finite maps, like per channel
            "channel_mean": float(np_out["channel_mean"]),
            "channel_std": float(np_out["channel_std"]),
            "sample_mean": float(np.nanmean(lifetime)) if np.isfinite(lifetime).any() else np.nan,
            "num_channels": float(c),
            "samples": float(np_out["sample_count"].max(initial=0)),
        }
    if no_spatial:
        per_channel = {k: v for k, v in per_channel.items() if k not in _SPATIAL_CHANNEL_STATISTICS}
        stats = {k: v for k, v in stats.items() if k not in _SPATIAL_LAYER_STATISTICS}
    return {k: np.asarray(v, dtype=np.float64) for k, v in per_channel.items()}, stats


def _channel_table(keys: list[tuple[str, str]], values: list[dict[str, np.ndarray]]) -> pd.DataFrame:
    """The tidy per-channel table of several layers, built once (string columns from codes)."""
    import pandas as pd

    columns = ["split", "layer", "channel", "statistic", "value"]
    if not keys:
        return pd.DataFrame(columns=columns)
    sizes = [sum(len(v) for v in per.values()) for per in values]
    splits, layers = sorted({s for s, _ in keys}), sorted({name for _, name in keys})
    stats = list(dict.fromkeys(k for per in values for k in per))  # layers without spatial extent have fewer
    split_code = np.repeat([splits.index(s) for s, _ in keys], sizes)
    layer_code = np.repeat([layers.index(name) for _, name in keys], sizes)
    stat_code = np.concatenate(
        [np.repeat([stats.index(k) for k in per], [len(v) for v in per.values()]) for per in values]
    )
    return pd.DataFrame(
        {
            "split": pd.array(splits, dtype="str").take(split_code),
            "layer": pd.array(layers, dtype="str").take(layer_code),
            "channel": np.concatenate([np.tile(np.arange(len(next(iter(per.values())))), len(per)) for per in values]),
            "statistic": pd.array(stats, dtype="str").take(stat_code),
            "value": np.concatenate([v for per in values for v in per.values()]),
        }
    )


class SparsityMonitor:
    """Measure activation sparsity of selected layers, per data split, while a model runs.

    ``layers`` takes any selector of :class:`~xaisparse.recording.ActivationRecorder`
    (default: the activation outputs of the conv blocks). Statistics stream into one
    :class:`~xaisparse.estimators.LayerSparsity` per ``(split, layer)`` on the activations'
    device; nothing is stored across batches but fixed-size sums and histograms.

    >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
    >>> monitor = SparsityMonitor(model, bins=10)
    >>> with monitor.track(split="test"), torch.no_grad():
    ...     for batch in torch.randn(3, 5, 1, 8, 8):
    ...         _ = model(batch)
    >>> report = monitor.compute()
    >>> sorted(report.layers.layer.unique()), report.spatial_hist[("test", "1")].shape
    (['1'], (4, 10))
    >>> int(report.layer_value("test", "1", "samples"))
    15
    """

    def __init__(self, model: nn.Module, layers: LayerSelector = None, *, bins: int = 20) -> None:
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive int, got {bins!r}")
        self.bins = bins
        self.recorder = ActivationRecorder(model, layers, callback=self._on_activation)
        self._split: str | None = None
        self._estimators: dict[tuple[str, str], LayerSparsity] = {}
        self._no_spatial: set[str] = set()  # layers warned about: no spatial extent

    @property
    def model(self) -> nn.Module:
        return self.recorder.model

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(split for (split, _), est in self._estimators.items() if est.update_count))

    @property
    def layer_names(self) -> list[str]:
        """Recorded call sites, in the order they were first seen."""
        return list(dict.fromkeys(layer for _, layer in self._estimators))

    @contextmanager
    def track(self, split: str = "test") -> Iterator[SparsityMonitor]:
        """Within this block every forward of the model feeds the estimators of ``split``.

        Hooks are attached on entry and removed on exit (also after an exception) unless the
        recorder was already attached by the caller.
        """
        check_split(split)
        if self._split is not None:
            raise RuntimeError(f"already tracking split {self._split!r}; tracking blocks do not nest")
        attached_here = not self.recorder.attached
        self.recorder.attach()
        self._split = split
        try:
            yield self
        finally:
            self._split = None
            if attached_here:
                self.recorder.detach()

    def _on_activation(self, name: str, x: Tensor) -> None:
        if self._split is None:
            return
        key = (self._split, name)
        est = self._estimators.get(key)
        if est is None:
            if x.dim() < 2:
                raise ValueError(f"layer {name!r} produced a tensor of shape {tuple(x.shape)}; expected (N, C, ...)")
            est = self._new_estimator(key, int(x.shape[1]), x.device)
            if math.prod(x.shape[2:]) <= 1:
                est._warned_spatial = True  # one warning per layer, from here, not one per split and shape
                self._warn_no_spatial(name, x)
        est.update(x)

    def _warn_no_spatial(self, name: str, x: Tensor) -> None:
        if name in self._no_spatial:
            return
        self._no_spatial.add(name)
        shape = ", ".join(["N", *map(str, x.shape[1:])])
        warnings.warn(
            f"layer {name!r} has no spatial extent (activations ({shape})): it is measured on the channel axis "
            f"('channel_mean': how concentrated each sample's {x.shape[1]} features are) and the sample axis "
            f"('sample_mean'); its spatial statistics (spatial_mean, dead_fraction, ...) are left out of the tables",
            RuntimeWarning,
            stacklevel=4,
        )

    def _new_estimator(self, key: tuple[str, str], channels: int, device: torch.device) -> LayerSparsity:
        est = LayerSparsity(channels, bins=self.bins).to(device)
        self._estimators[key] = est
        return est

    def _device(self) -> torch.device:
        """Where estimators created for other ranks' layers live: beside ours, else beside the model."""
        for est in self._estimators.values():
            return next(est.buffers()).device
        for t in (*self.model.parameters(), *self.model.buffers()):
            return t.device
        return torch.device("cpu")

    def _measured_keys(self) -> list[tuple[str, str]]:
        """The (split, layer) pairs with data, in one order; in DDP the same on every rank.

        Estimators are created on a layer's first activation, so ranks may hold different sets
        (a rank with no batch holds none) and would then enter different all-reduces, or none,
        in ``compute()``: a deadlock. So every rank first shares its ``(split, layer, channels,
        updates)`` list (one ``all_gather_object``); each creates the estimators it lacks, and all
        compute the union, in rank-0-first order, keeping pairs that any rank has data for.
        """
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return [key for key, est in self._estimators.items() if est.update_count > 0]
        local = [(key, est.num_channels, est.update_count) for key, est in self._estimators.items()]
        gathered: list[object] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, local)
        channels: dict[tuple[str, str], int] = {}
        updates: dict[tuple[str, str], int] = {}
        clashes = []
        for rank, entries in enumerate(gathered):
            for key, c, n in entries:  # type: ignore[attr-defined]
                key = tuple(key)
                if channels.setdefault(key, c) != c:
                    clashes.append(f"{key}: {channels[key]} channels on an earlier rank, {c} on rank {rank}")
                updates[key] = updates.get(key, 0) + n
        if clashes:
            raise ValueError(
                "SparsityMonitor.compute(): ranks disagree on the shape of a layer, so their statistics "
                f"cannot be summed: {clashes[:4]}; every rank must run the same model"
            )
        for key, c in channels.items():
            if key not in self._estimators:
                self._new_estimator(key, c, self._device())
        return [key for key in channels if updates[key] > 0]

    def compute(self) -> SparsityReport:
        """Tidy tables and histograms of everything measured since the last :meth:`reset`.

        Under ``torch.distributed`` (DDP) this is a collective: call it on every rank. The
        statistics are summed over the ranks (exactly: the state is sums and counts), also when
        some ranks saw no batch at all or fewer batches than others, or a layer only some ranks
        reached; every rank gets the same report.
        """
        import pandas as pd

        measured = {key: self._estimators[key] for key in self._measured_keys()}
        if not measured:
            warnings.warn(
                "SparsityMonitor.compute() called before any activation was recorded: run the model "
                "inside `with monitor.track(split=...)` first; returning an empty report",
                UserWarning,
                stacklevel=2,
            )
        tables: list[dict[str, np.ndarray]] = []
        rows: list[dict[str, object]] = []
        spatial_hist, channel_hist = {}, {}
        for (split, layer), est in measured.items():
            with warnings.catch_warnings():
                if not est.update_count:  # another rank's data only: no "before any update" warning
                    warnings.filterwarnings("ignore", message=".*before any update", category=UserWarning)
                out = est.compute()
            table, layer_stats = _frames(out)
            tables.append(table)
            rows.extend({"split": split, "layer": layer, "statistic": k, "value": v} for k, v in layer_stats.items())
            spatial_hist[(split, layer)] = out["spatial_hist"].cpu().numpy()
            channel_hist[(split, layer)] = out["channel_hist"].cpu().numpy()
        channels = _channel_table(list(measured), tables)
        layers = pd.DataFrame(rows, columns=["split", "layer", "statistic", "value"])
        return SparsityReport(
            channels=channels,
            layers=layers,
            spatial_hist=spatial_hist,
            channel_hist=channel_hist,
            bin_edges=np.linspace(0.0, 1.0, self.bins + 1),
        )

    def reset(self, split: str | None = None) -> None:
        """Forget what was measured (for one split, or all).

        The estimators stay (zeroed), so the layers they stand for stay known to ``compute()``.
        """
        for key, est in self._estimators.items():
            if split is None or key[0] == split:
                est.reset()

    def estimator(self, split: str, layer: str) -> LayerSparsity:
        """The streaming estimator of one split and layer (for merging or DDP)."""
        try:
            return self._estimators[(split, layer)]
        except KeyError:
            raise KeyError(
                f"no estimator for split={split!r}, layer={layer!r}; measured: {sorted(self._estimators)}"
            ) from None

    def to(self, device: torch.device | str) -> SparsityMonitor:
        for est in self._estimators.values():
            est.to(device)
        return self

    def __repr__(self) -> str:
        return f"SparsityMonitor(layers={self.recorder.modules}, bins={self.bins}, splits={self.splits})"
