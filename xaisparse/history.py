"""The record of a run, and the only reader of run data.

A :class:`History` holds the configuration, per-epoch metrics, per-layer and per-channel
sparsity (tidy pandas tables), the fixed-bin per-channel histograms, the overfitting
detector's result and the run's outcome. Every consumer — widgets, plots, reports, the CLI,
the detector's evaluation, notebooks — asks it for what it needs (:meth:`History.layer_frame`,
:meth:`History.test_loss_minimum`, :meth:`History.histogram`, …) instead of filtering the
tables itself.

Saved as a directory: a JSON manifest (the schema version, what the run is, a SHA-256 of every
data file and of itself) and a data directory of Parquet tables and one NPZ of histograms
(loaded with ``allow_pickle=False``). Saving is crash-safe: killed at any point, the directory
holds the previous run or the new one, complete (the layout is described in
``xaisparse/_runfiles.py``). Loading validates the manifest against a schema before it reads
any data, so a damaged, truncated, foreign or newer run gets a
:class:`~xaisparse.HistoryFormatError` naming the file and the problem. Runs saved by earlier
versions (schemas 1 to 3) load too, upgraded to the current names.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._deprecation import deprecated, renamed_keyword
from ._errors import HistoryFormatError, UnknownLayerError, closest
from ._io import jsonable
from ._runfiles import SCHEMA_VERSION, TABLE_COLUMNS, RunState, append_run, read_run, write_run, write_whole
from ._validation import check_split
from .detection import DetectionResult
from .histogram_stats import histogram_mean

__all__ = [
    "CHANNEL_COLUMNS",
    "CHANNEL_ORDERINGS",
    "DEAD_THRESHOLD",
    "LAYER_COLUMNS",
    "METRIC_COLUMNS",
    "SCHEMA_VERSION",
    "History",
    "HistoryWriter",
    "RunOutcome",
    "as_runs",
    "canonical_statistic",
    "channel_ordering",
    "check_history",
    "common_layers",
    "epoch_series",
    "load_runs",
    "loss_minimum",
    "run_names",
]

METRIC_COLUMNS = TABLE_COLUMNS["metrics"]
LAYER_COLUMNS = TABLE_COLUMNS["layers"]
CHANNEL_COLUMNS = TABLE_COLUMNS["channels"]
_TABLES = TABLE_COLUMNS
# schema 1 named the sample-axis statistics after their reading ("lifetime")
_V1_STATISTICS = {
    "lifetime_sparsity": "sample_sparsity",
    "lifetime_perplexity": "sample_perplexity",
    "lifetime_mean": "sample_mean",
}
#: Schema 2 named the population (channel-axis) layer statistics ``channel_*``, which read as
#: per-channel values; schema 4 calls them ``population_*``. The old names still work, with a warning.
RENAMED_STATISTICS = {"channel_mean": "population_mean", "channel_std": "population_std"}


def canonical_statistic(statistic: str) -> str:
    """A layer statistic's current name: an old one (``"channel_mean"``) warns and is translated.

    >>> canonical_statistic("spatial_mean")
    'spatial_mean'
    """
    new = RENAMED_STATISTICS.get(statistic) if isinstance(statistic, str) else None
    if new is None:
        return statistic
    deprecated(
        f"the layer statistic {statistic!r} is now called {new!r} (the population, i.e. channel-axis, "
        "sparsity: not a per-channel value); the old name works for one release",
        stacklevel=3,
    )
    return new


#: A channel whose ``dead_fraction`` is at least this counts as dead in plots and tables.
DEAD_THRESHOLD = 0.5
#: Channel orderings of :meth:`History.channel_order`.
CHANNEL_ORDERINGS: tuple[str, ...] = ("mean sparsity", "dead fraction", "index")
_ORDER_ALIASES = {
    "mean sparsity": "mean sparsity",
    "mean": "mean sparsity",
    "spatial_mean": "mean sparsity",
    "dead fraction": "dead fraction",
    "dead": "dead fraction",
    "dead_fraction": "dead fraction",
    "index": "index",
    "channel": "index",
}


def channel_ordering(by: object) -> str:
    """The canonical name of a channel ordering (``"mean"`` -> ``"mean sparsity"``), or a ``ValueError``.

    >>> channel_ordering("dead")
    'dead fraction'
    """
    key = _ORDER_ALIASES.get(by) if isinstance(by, str) else None
    if key is None:
        raise ValueError(f"channel ordering must be one of {list(CHANNEL_ORDERINGS)} (or 'mean', 'dead'), got {by!r}")
    return key


@dataclass
class RunOutcome:
    """How a training run ended (written by :func:`~xaisparse.train.fit`).

    ``stopped_early_at``: the epoch after which training stopped before ``epochs`` (a callback
    or the detector asked), else None; ``stop_reason``: who asked; ``train_seconds``: wall time;
    ``phase_seconds``: where that time went, summed over the epochs: ``train`` (the optimisation
    steps), ``measure`` (the probe passes with the monitor), ``detect``, ``callbacks`` and
    ``checkpoint`` (only the phases that ran).
    """

    train_seconds: float | None = None
    stopped_early_at: int | None = None
    stop_reason: str | None = None
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RunOutcome:
        data = data or {}
        stopped = data.get("stopped_early_at")
        seconds = data.get("train_seconds")
        return cls(
            train_seconds=None if seconds is None else float(seconds),
            stopped_early_at=None if stopped is None else int(stopped),
            stop_reason=data.get("stop_reason"),
            phase_seconds={str(k): float(v) for k, v in (data.get("phase_seconds") or {}).items()},
        )


#: What makes a row of each table unique: one value per key (``record_epoch`` refuses a second epoch).
_KEYS = {
    "metrics": ["epoch", "split", "metric"],
    "layers": ["epoch", "split", "layer", "statistic"],
    "channels": ["epoch", "split", "layer", "channel", "statistic"],
}


def _series(rows: pd.DataFrame, name: str) -> pd.Series:
    """``value`` by epoch, ascending (the rows of one key: no epoch twice, see :data:`_KEYS`)."""
    s = pd.Series(rows.value.to_numpy(dtype=float), index=rows.epoch.to_numpy(dtype=np.int64), name=name)
    s = s.sort_index()
    s.index.name = "epoch"
    return s


def epoch_series(series: object, what: str = "series") -> pd.Series:
    """``series`` as floats by epoch, ascending; a ``ValueError`` when an epoch appears twice.

    The one check of a per-epoch series given to the detector's baselines and evaluation (a
    History's queries never hold an epoch twice: :meth:`History.record_epoch` refuses it).

    >>> epoch_series(pd.Series([0.5, 1.0], index=[2, 1])).tolist()
    [1.0, 0.5]
    """
    if not isinstance(series, pd.Series):
        raise TypeError(f"{what} must be a pandas Series indexed by epoch, got {type(series).__name__}")
    twice = series.index[series.index.duplicated()].unique().tolist()
    if twice:
        raise ValueError(f"{what} has epoch(s) {twice[:5]} more than once; expected one value per epoch")
    return series.sort_index().astype(np.float64)


def loss_minimum(loss: pd.Series) -> tuple[int, float] | None:
    """``(epoch, value)`` of the smallest finite value of a per-epoch series (earliest on ties), or None.

    The yardstick of overfitting (:meth:`History.test_loss_minimum` applies it to the test loss).

    >>> loss_minimum(pd.Series([1.0, 0.6, float("nan"), 0.6]))
    (1, 0.6)
    """
    s = epoch_series(loss, "loss")
    s = s[np.isfinite(s.to_numpy())]
    if s.empty:
        return None
    pos = int(np.argmin(s.to_numpy()))
    return int(s.index[pos]), float(s.iloc[pos])


@renamed_keyword("channel_hist", "population_hist")
@dataclass
class History:
    """Everything a run produced, epoch by epoch.

    * ``metrics``: ``epoch, split, metric, value`` (``loss``, ``accuracy``, …)
    * ``layers``: ``epoch, split, layer, statistic, value`` (see ``monitor.LAYER_STATISTICS``)
    * ``channels``: ``epoch, split, layer, channel, statistic, value``
    * ``spatial_hist[(split, layer)]``: ``(epochs, channels, bins)`` counts of per-sample map
      sparsity (one histogram per channel), aligned with ``hist_epochs[(split, layer)]``;
      ``population_hist``: ``(epochs, bins)`` counts of per-sample population sparsity
    * ``config``: the run's settings (JSON-safe); ``detection``: the detector's
      :class:`~xaisparse.detection.DetectionResult` (or None); ``outcome``: a :class:`RunOutcome`

    >>> h = History(config={"model": "demo"})
    >>> h.record_epoch(0, {"train": {"loss": 1.0}, "test": {"loss": 1.2}})
    >>> h.record_epoch(1, {"train": {"loss": 0.5}, "test": {"loss": 1.1}})
    >>> h.metric("test", "loss").tolist(), h.test_loss_minimum()
    ([1.2, 1.1], (1, 1.1))
    """

    config: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=METRIC_COLUMNS))
    layers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAYER_COLUMNS))
    channels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHANNEL_COLUMNS))
    spatial_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    population_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    hist_epochs: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    bin_edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 21))
    layer_order: list[str] = field(default_factory=list)
    detection: DetectionResult | None = None
    outcome: RunOutcome = field(default_factory=RunOutcome)
    # (metrics, layers, their lengths, splits, sparsity splits): see _split_lists
    _splits_seen: dict[str, tuple[Any, int, list[str]]] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        for kind, keys in _KEYS.items():
            table = getattr(self, kind)
            if kind == "channels" or table.empty:  # channels: written with their layer rows, one per key
                continue
            twice = table.duplicated(keys)
            if twice.any():
                first = table.loc[twice, keys].iloc[0].to_dict()
                raise ValueError(
                    f"the {kind} table holds {int(twice.sum())} duplicate row(s) (e.g. {first}); a History keeps "
                    "one value per epoch (record_epoch refuses a recorded epoch)"
                )

    # ------------------------------------------------------------------ building
    def record_epoch(
        self,
        epoch: int,
        metrics: Mapping[str, Mapping[str, float]] | None = None,
        report: Any | None = None,
    ) -> None:
        """Append one epoch: ``metrics[split][name] = value`` and a monitor's ``SparsityReport``."""
        if not isinstance(epoch, (int, np.integer)) or isinstance(epoch, bool):
            raise TypeError(f"epoch must be an int, got {type(epoch).__name__}")
        epoch = int(epoch)
        if epoch in set(self.epochs):
            raise ValueError(f"epoch {epoch} is already recorded (recorded: {self.epochs[-5:]}…)")
        for split in metrics or {}:
            check_split(split, "metrics split")
        rows = [
            {"epoch": epoch, "split": split, "metric": name, "value": float(value)}
            for split, values in (metrics or {}).items()
            for name, value in values.items()
        ]
        if rows:
            self.metrics = _append(self.metrics, pd.DataFrame(rows, columns=METRIC_COLUMNS))
        if report is not None:
            self.layers = _append(self.layers, report.layers.assign(epoch=epoch)[LAYER_COLUMNS])
            self.channels = _append(self.channels, report.channels.assign(epoch=epoch)[CHANNEL_COLUMNS])
            self.bin_edges = np.asarray(report.bin_edges, dtype=np.float64)
            for key, hist in report.spatial_hist.items():
                self._push_hist(key, epoch, hist, report.population_hist[key])
            for layer in report.layers.layer.unique():
                if layer not in self.layer_order:
                    self.layer_order.append(str(layer))

    @classmethod
    def from_report(cls, report: Any, epoch: int = 0, config: Mapping[str, Any] | None = None) -> History:
        """A History of one epoch holding a :class:`~xaisparse.SparsityReport` (one evaluation pass).

        What the plots do with a report: every query, plot and widget that takes a History then
        shows that pass as epoch ``epoch``.

        >>> import torch
        >>> from torch import nn
        >>> from xaisparse import SparsityMonitor
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
        >>> monitor = SparsityMonitor(net)
        >>> with monitor.track("test"), torch.no_grad():
        ...     _ = net(torch.randn(8, 1, 6, 6))
        >>> h = History.from_report(monitor.compute())
        >>> h.epochs, h.layer_names, h.layer_frame("test").shape
        ([0], ['1'], (1, 1))
        """
        history = cls(config=dict(config or {}))
        history.record_epoch(epoch, None, report)
        return history

    def _push_hist(self, key: tuple[str, str], epoch: int, spatial: np.ndarray, population: np.ndarray) -> None:
        prev = self.spatial_hist.get(key)
        self.spatial_hist[key] = spatial[None] if prev is None else np.concatenate([prev, spatial[None]])
        prev_p = self.population_hist.get(key)
        self.population_hist[key] = population[None] if prev_p is None else np.concatenate([prev_p, population[None]])
        self.hist_epochs.setdefault(key, []).append(epoch)

    # ------------------------------------------------------------------ what is recorded
    @property
    def epochs(self) -> list[int]:
        """Every epoch with any record, ascending."""
        found = set(self.metrics.epoch.astype(int)) | set(self.layers.epoch.astype(int))
        return sorted(found)

    @property
    def splits(self) -> list[str]:
        """Splits with any record, ``train`` first, then ``val``, ``test``, then any other."""
        return _split_order(list(dict.fromkeys([*self._table_splits("metrics"), *self._table_splits("layers")])))

    @property
    def sparsity_splits(self) -> list[str]:
        """Splits with layer sparsity recorded (same order as :attr:`splits`; never read from the metrics)."""
        return _split_order(self._table_splits("layers"))

    def _table_splits(self, name: str) -> list[str]:
        """The splits of one table (``metrics`` or ``layers``), computed once per state of that table.

        Every query checks its split, so scoring many runs asked for these lists again and again.
        The cache holds the table object itself (so its id cannot be reused) and its length:
        replacing the table (as :meth:`record_epoch` and loading do) or adding rows recomputes it.
        """
        table = getattr(self, name)
        seen = self._splits_seen.get(name)
        if seen is not None and seen[0] is table and seen[1] == len(table):
            return seen[2]
        found = [str(x) for x in table.split.unique()]
        self._splits_seen[name] = (table, len(table), found)
        return found

    @property
    def sparsity_epochs(self) -> list[int]:
        """Epochs with layer sparsity recorded, ascending (never read from the metrics: no labels)."""
        return sorted(set(self.layers.epoch.astype(int)))

    @property
    def layer_names(self) -> list[str]:
        """Recorded layers in network order (then any layer of the tables that the order lacks)."""
        order = list(self.layer_order)
        return order + [n for n in dict.fromkeys(self.layers.layer.astype(str)) if n not in order]

    @property
    def histogram_splits(self) -> list[str]:
        """Splits with per-channel histograms (same order as :attr:`splits`)."""
        return _split_order(list(dict.fromkeys(s for s, _ in self.spatial_hist)))

    @property
    def histogram_layers(self) -> list[str]:
        """Layers with per-channel histograms, in network order."""
        have = list(dict.fromkeys(name for _, name in self.spatial_hist))
        names = self.layer_names
        return [n for n in names if n in have] + [n for n in have if n not in names]

    @property
    def is_empty(self) -> bool:
        return self.metrics.empty and self.layers.empty

    def statistics(self, split: str | None = None) -> list[str]:
        """Layer statistics recorded (for one split, or any)."""
        t = self.layers if split is None else self.layers[self.layers.split == split]
        return list(dict.fromkeys(t.statistic.astype(str)))

    def metric_names(self) -> list[str]:
        """Metrics recorded in any split (``loss`` and ``accuracy`` first)."""
        names = list(dict.fromkeys(self.metrics.metric.astype(str)))
        return sorted(names, key=lambda m: (m != "loss", m != "accuracy", names.index(m)))

    def check_layer(self, layer: object) -> str:
        """``layer`` if this run records it; an :class:`~xaisparse.UnknownLayerError` naming the closest ones."""
        if not isinstance(layer, str):
            raise TypeError(f"layer must be a layer name (str), got {type(layer).__name__}")
        names = self.layer_names
        if layer not in names:
            raise UnknownLayerError(
                f"layer {layer!r} is not recorded in this run; closest recorded layers: {closest(layer, names)}"
            )
        return layer

    def check_split(self, split: object, *, sparsity: bool = False) -> str:
        """``split`` if this run records it (with ``sparsity=True``: records layer sparsity for it); else
        a ``ValueError`` listing the recorded splits."""
        if not isinstance(split, str):
            raise TypeError(f"split must be a split name (str), got {type(split).__name__}")
        known = self.sparsity_splits if sparsity else self.splits
        if split not in known:
            what = "layer sparsity is recorded" if sparsity else "this run records anything"
            raise ValueError(f"split {split!r} is not recorded in this run; splits for which {what}: {known}")
        return split

    def check_metric(self, name: object) -> str:
        """``name`` if any split records this metric; else a ``ValueError`` listing the recorded metrics."""
        if not isinstance(name, str):
            raise TypeError(f"metric must be a metric name (str), got {type(name).__name__}")
        names = self.metric_names()
        if name not in names:
            raise ValueError(
                f"metric {name!r} is not recorded in this run; recorded metrics: {names}"
                + (f" (closest: {closest(name, names, 3)})" if names else "")
            )
        return name

    def check_statistic(self, statistic: object, *, channels: bool = False) -> str:
        """``statistic`` if this run records it (per layer, or per channel); else a ``ValueError`` listing them."""
        if not isinstance(statistic, str):
            raise TypeError(f"statistic must be a statistic name (str), got {type(statistic).__name__}")
        if not channels:
            statistic = canonical_statistic(statistic)
        table = self.channels if channels else self.layers
        names = list(dict.fromkeys(table.statistic.astype(str)))
        if statistic not in names:
            what = "per-channel" if channels else "layer"
            raise ValueError(f"{what} statistic {statistic!r} is not recorded in this run; recorded: {names}")
        return statistic

    def _has_channel_statistic(self, statistic: str) -> bool:
        return bool((self.channels.statistic == statistic).any())

    def _check_layer_query(self, split: str, layer: str | None, statistic: str | None = None) -> None:
        """The names of a query on layer sparsity: a split with sparsity, a recorded layer and statistic."""
        self.check_split(split, sparsity=True)
        if layer is not None:
            self.check_layer(layer)
        if statistic is not None:
            self.check_statistic(statistic)

    def to_dataframe(self, kind: str = "layers") -> pd.DataFrame:
        """A tidy long table: ``"metrics"``, ``"layers"`` or ``"channels"`` (a copy)."""
        if kind not in _TABLES:
            raise ValueError(f"kind must be one of {list(_TABLES)}, got {kind!r}")
        return getattr(self, kind).copy()

    # ------------------------------------------------------------------ metrics
    def metric(self, split: str, name: str = "loss") -> pd.Series:
        """One metric over epochs (index: epoch, ascending).

        An unknown split or metric raises ``ValueError`` listing the recorded ones; a metric that is
        recorded, but not for this split, gives an empty series.
        """
        self.check_split(split)
        self.check_metric(name)
        m = self.metrics
        return _series(m[(m.split == split) & (m.metric == name)], f"{split} {name}")

    def epoch_metrics(self, epoch: int) -> dict[str, dict[str, float]]:
        """What :meth:`record_epoch` got at one epoch: ``metrics[split][name]`` (empty if none).

        >>> h = History()
        >>> h.record_epoch(0, {"train": {"loss": 1.0}, "test": {"loss": 1.5}})
        >>> h.epoch_metrics(0)
        {'train': {'loss': 1.0}, 'test': {'loss': 1.5}}
        """
        m = self.metrics[self.metrics.epoch == int(epoch)]
        out: dict[str, dict[str, float]] = {}
        for split, name, value in zip(m.split.astype(str), m.metric.astype(str), m.value.astype(float)):
            out.setdefault(split, {})[name] = float(value)
        return out

    def metric_frame(self, metric: str = "loss") -> pd.DataFrame:
        """Epochs × splits table of one metric (``train``/``test`` loss by default); empty where no split records it
        (so several runs can be tabulated alike; :meth:`metric` raises for an unknown name)."""
        series = [
            _series(self.metrics[(self.metrics.split == s) & (self.metrics.metric == metric)], s) for s in self.splits
        ]
        series = [s for s in series if not s.empty]
        if not series:
            return pd.DataFrame(index=pd.Index([], dtype=np.int64, name="epoch"))
        frame = pd.concat(series, axis=1).sort_index()
        frame.index.name = "epoch"
        return frame.astype(np.float64)

    def test_loss_minimum(self, split: str = "test", metric: str = "loss") -> tuple[int, float] | None:
        """``(epoch, value)`` of the smallest finite test loss (earliest on ties), or None.

        The yardstick of overfitting: where the held-out loss is lowest. It reads held-out
        labels, so the detector never uses it; its evaluation and the plots do.

        >>> h = History()
        >>> for e, v in enumerate([1.0, 0.6, 0.7, 0.6]):
        ...     h.record_epoch(e, {"test": {"loss": v}})
        >>> h.test_loss_minimum()
        (1, 0.6)
        """
        if split not in self.splits or metric not in self.metric_names():
            return None
        return loss_minimum(self.metric(split, metric))

    def summary(self, name: str | None = None, split: str = "test") -> pd.DataFrame:
        """The run's facts in one row (best/last accuracy and loss, epoch of the loss minimum, rise
        after it, final sparsity per layer, alarm epoch, training seconds): see
        :func:`xaisparse.summary.run_summary`, and :func:`~xaisparse.summary.compare_runs` for
        several runs side by side."""
        from .summary import run_summary

        return run_summary(self, name, split)

    @property
    def alarm_epoch(self) -> int | None:
        """The detector's alarm epoch, or None (no detector, or no alarm)."""
        return None if self.detection is None else self.detection.alarm_epoch

    # ------------------------------------------------------------------ layer statistics
    def layer_series(self, split: str, layer: str, statistic: str = "spatial_mean") -> pd.Series:
        """One layer statistic over epochs (index: epoch, ascending).

        Unknown names raise: the layer :class:`~xaisparse.UnknownLayerError` (closest names), the split or
        the statistic a ``ValueError`` listing the recorded ones.
        """
        statistic = canonical_statistic(statistic)
        self._check_layer_query(split, layer, statistic)
        t = self.layers
        return _series(t[(t.split == split) & (t.layer == layer) & (t.statistic == statistic)], layer)

    def layer_frame(
        self, split: str, layers: Sequence[str] | None = None, statistic: str = "spatial_mean"
    ) -> pd.DataFrame:
        """Epochs × layers table of one layer statistic: the one wide table of a run's layer sparsity.

        Columns in the order given (default: every layer with this statistic in this split, in
        network order), epochs ascending; every epoch with a value of these layers keeps its row,
        also when all its values are NaN (they stay visible as gaps). NaN where a value is missing
        or not finite. Unknown names raise, as in :meth:`layer_series`.

        >>> from xaisparse.testing import synthetic_history
        >>> synthetic_history(epochs=4, layers=("a", "b")).layer_frame("test").shape
        (4, 2)
        """
        statistic = canonical_statistic(statistic)
        self._check_layer_query(split, None, statistic)
        t = self.layers
        t = t[(t.split == split) & (t.statistic == statistic)]
        if layers is None:
            present = set(t.layer.astype(str))
            names = [n for n in self.layer_names if n in present]
        else:
            names = [self.check_layer(n) for n in layers]
            t = t[t.layer.isin(names)]
        wide = t.pivot(index="epoch", columns="layer", values="value") if not t.empty else pd.DataFrame()
        frame = wide.reindex(columns=names).sort_index()
        frame.index = pd.Index(frame.index.to_numpy(dtype=np.int64), name="epoch")
        frame.columns = pd.Index([str(c) for c in frame.columns], dtype=object)
        return frame.astype(np.float64)

    def layer_values(self, split: str, epoch: int, statistic: str = "spatial_mean") -> dict[str, float]:
        """One epoch's row of :meth:`layer_frame`: ``{layer: value}`` in network order (empty if none)."""
        frame = self.layer_frame(split, statistic=canonical_statistic(statistic))
        if int(epoch) not in frame.index:
            return {}
        row = frame.loc[int(epoch)]
        return {str(name): float(value) for name, value in zip(row.index, row.to_numpy(dtype=np.float64))}

    def layer_matrix(self, split: str, statistic: str = "spatial_mean") -> pd.DataFrame:
        """Deprecated: ``layer_frame(split, statistic=statistic).T`` (layers × epochs)."""
        deprecated(
            "History.layer_matrix(split, statistic) is deprecated: use History.layer_frame(split, "
            "statistic=statistic) (epochs × layers; .T for layers × epochs)",
            stacklevel=2,
        )
        wide = self.layer_frame(split, statistic=canonical_statistic(statistic)).T
        wide.index.name, wide.columns.name = "layer", "epoch"
        return wide

    # ------------------------------------------------------------------ histograms and channels
    def histogram_epochs(self, split: str, layer: str) -> list[int]:
        """Epochs with a spatial histogram of ``(split, layer)``. Unknown names raise, as in :meth:`layer_series`."""
        self._check_layer_query(split, layer)
        return [int(e) for e in self.hist_epochs.get((split, layer), [])]

    def histogram(self, split: str, layer: str, epoch: int) -> np.ndarray:
        """``(channels, bins)`` counts of one layer's per-sample spatial sparsity at one epoch.

        Unknown names raise as in :meth:`layer_series`; a split or an epoch without a histogram of
        this layer raises a ``ValueError`` saying which do exist.
        """
        self._check_layer_query(split, layer)
        key = (split, layer)
        if key not in self.spatial_hist:
            have = sorted({s for s, name in self.spatial_hist if name == layer})
            raise ValueError(
                f"no histogram for split={split!r}, layer={layer!r} (splits with histograms of this layer: {have})"
            )
        epochs = self.histogram_epochs(split, layer)
        if int(epoch) not in epochs:
            raise ValueError(f"no histogram for epoch {epoch} of {key}; recorded epochs {_span(epochs)}")
        return np.asarray(self.spatial_hist[key][epochs.index(int(epoch))], dtype=np.float64)

    def pooled_histogram(self, split: str, layer: str, epoch: int) -> np.ndarray:
        """``(bins,)`` counts over all channels of one layer at one epoch (sum of the channel rows)."""
        return self.histogram(split, layer, epoch).sum(axis=0)

    def channel_values(
        self, split: str, layer: str, epoch: int, statistic: str = "spatial_mean", channels: int | None = None
    ) -> np.ndarray:
        """One per-channel statistic as an array indexed by channel (NaN where not recorded).

        ``channels`` sets the length (default: the largest recorded channel index + 1). Unknown
        names raise as in :meth:`layer_series` (the statistic: a per-channel one), an epoch that is
        not recorded a ``ValueError``; a layer without this statistic (e.g. ``spatial_mean`` of a
        layer without spatial extent) gives NaN.
        """
        self._check_layer_query(split, layer)
        self.check_statistic(statistic, channels=True)
        if int(epoch) not in self.epochs:
            raise ValueError(f"epoch {epoch} is not recorded in this run; recorded epochs {_span(self.epochs)}")
        t = self.channels
        rows = t[(t.split == split) & (t.layer == layer) & (t.epoch == int(epoch)) & (t.statistic == statistic)]
        idx = rows.channel.to_numpy(dtype=np.int64)
        n = channels if channels is not None else (int(idx.max()) + 1 if idx.size else 0)
        out = np.full(n, np.nan)
        keep = (idx >= 0) & (idx < n)
        out[idx[keep]] = rows.value.to_numpy(dtype=np.float64)[keep]
        return out

    def channel_series(self, split: str, layer: str, channel: int, statistic: str = "spatial_mean") -> pd.Series:
        """One channel's statistic over epochs (index: epoch; empty when not recorded)."""
        t = self.channels
        rows = t[(t.split == split) & (t.layer == layer) & (t.channel == int(channel)) & (t.statistic == statistic)]
        return _series(rows, f"{layer}[{channel}]")

    def dead_channels(
        self,
        split: str | Iterable[str],
        layer: str,
        epoch: int,
        threshold: float = DEAD_THRESHOLD,
        channels: int | None = None,
    ) -> np.ndarray:
        """Boolean mask of channels whose ``dead_fraction`` is ``>= threshold``.

        With several splits a channel counts as dead when it is dead in any of them. Channels
        without a recorded ``dead_fraction`` are not dead.
        """
        splits = [split] if isinstance(split, str) else list(split)
        for s in splits:
            self._check_layer_query(s, layer)
        if not self._has_channel_statistic("dead_fraction"):  # e.g. only layers without spatial extent
            if channels is None:
                channels = self.histogram(splits[0], layer, epoch).shape[0] if splits else 0
            return np.zeros(channels, dtype=bool)
        if channels is None:
            lengths = [self.channel_values(s, layer, epoch, "dead_fraction").size for s in splits]
            channels = max(lengths, default=0)
        mask = np.zeros(channels, dtype=bool)
        for s in splits:
            frac = self.channel_values(s, layer, epoch, "dead_fraction", channels)
            with np.errstate(invalid="ignore"):
                mask |= np.nan_to_num(frac, nan=-1.0) >= threshold
        return mask

    def channel_order(self, split: str, layer: str, epoch: int, by: str = "mean sparsity") -> np.ndarray:
        """Channel indices in display order.

        ``by``: ``"mean sparsity"`` (sparsest first, from the ``spatial_mean`` channel statistic,
        else the histogram mean), ``"dead fraction"`` (most dead first) or ``"index"``. Ties keep
        index order; channels without a value go last.
        """
        key = channel_ordering(by)
        counts = self.histogram(split, layer, epoch)
        n = counts.shape[0]
        if key == "index":
            return np.arange(n)
        if key == "mean sparsity":
            values = (
                self.channel_values(split, layer, epoch, "spatial_mean", n)
                if self._has_channel_statistic("spatial_mean")
                else np.full(n, np.nan)
            )
            if np.all(np.isnan(values)):
                values = np.array([histogram_mean(row, self.bin_edges) for row in counts])
        elif self._has_channel_statistic("dead_fraction"):
            values = self.channel_values(split, layer, epoch, "dead_fraction", n)
        else:
            values = np.full(n, np.nan)
        keyed = np.where(np.isnan(values), np.inf, -values)  # descending, NaN last, stable on index
        return np.argsort(keyed, kind="stable")

    # ------------------------------------------------------------------ deprecated
    @property
    def channel_hist(self) -> dict[tuple[str, str], np.ndarray]:
        """Deprecated: :attr:`population_hist` (the population-sparsity histograms, not per channel)."""
        deprecated(
            "History.channel_hist is deprecated: it is History.population_hist (per-channel histograms are "
            "History.spatial_hist)",
            stacklevel=2,
        )
        return self.population_hist

    @property
    def detector(self) -> dict[str, Any] | None:
        """Deprecated: the detector's result as a dict; use :attr:`detection`."""
        deprecated("History.detector is deprecated; use History.detection (a DetectionResult)", stacklevel=2)
        return None if self.detection is None else self.detection.to_dict()

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the run to directory ``path``, crash-safely; returns the path.

        Killed at any point, the directory holds the previous run or this one, complete (see
        :ref:`the on-disk layout <history-layout>`). An existing directory is replaced only if
        it is itself a saved History or empty (never a foreign directory: ``FileExistsError``);
        on any failure the previous contents stay as they were.
        """
        return write_run(path, tables=self._clean_tables(), **vars(self._run_state()))

    def _clean_tables(self) -> dict[str, pd.DataFrame]:
        return {kind: _clean_table(getattr(self, kind), kind) for kind in _TABLES}

    def _run_state(self) -> RunState:
        """What a save writes besides the tables (JSON-safe fields, evidence, histograms as int64)."""
        return RunState(
            config=jsonable(self.config),
            detection=None if self.detection is None else self.detection.to_dict(),
            outcome=jsonable(asdict(self.outcome)),
            layer_order=[str(name) for name in self.layer_order],
            evidence=None if self.detection is None else self.detection.evidence,
            bin_edges=np.asarray(self.bin_edges, dtype=np.float64),
            hists={
                key: (
                    [int(e) for e in self.hist_epochs.get(key, [])],
                    np.asarray(self.spatial_hist[key], dtype=np.int64),
                    np.asarray(self.population_hist[key], dtype=np.int64),
                )
                for key in sorted(self.spatial_hist)
            },
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """Read a run directory written by :meth:`save` (or a run directory holding one in ``history/``).

        The manifest is validated (its checksum, then every key, type and reference) before any
        data file is read, and every data file is checked against its size and SHA-256: a
        damaged, truncated, foreign or newer run raises :class:`~xaisparse.HistoryFormatError`
        naming the file and the problem; a missing directory raises ``FileNotFoundError``.
        """
        run = read_run(path)
        manifest, tables = run.manifest, run.tables
        config = dict(manifest.get("config") or {})
        if run.version == 1:
            _upgrade_v1(tables, config, manifest)
        if run.version <= 3:
            _upgrade_statistics(tables, config, manifest)
        try:
            h = cls(
                config=config,
                metrics=tables["metrics"],
                layers=tables["layers"],
                channels=tables["channels"],
                bin_edges=run.bin_edges if run.bin_edges is not None else np.linspace(0, 1, 21),
                layer_order=list(manifest.get("layer_order") or []),
                outcome=RunOutcome.from_dict(manifest.get("outcome")),
            )
        except ValueError as exc:  # e.g. a table that repeats an epoch
            raise HistoryFormatError(f"run directory {path} is inconsistent: {exc}") from None
        detection = manifest.get("detection")
        if isinstance(detection, Mapping):
            try:
                h.detection = DetectionResult.from_dict(detection, run.evidence)
            except (KeyError, TypeError, ValueError) as exc:
                raise HistoryFormatError(
                    f"the detection result of run {path} cannot be read: {type(exc).__name__}: {exc}"
                ) from None
        for key, (epochs, spatial, population) in run.hists.items():
            h.spatial_hist[key], h.population_hist[key], h.hist_epochs[key] = spatial, population, epochs
        return h

    def __repr__(self) -> str:
        ep = self.epochs
        span = f"{ep[0]}..{ep[-1]}" if ep else "none"
        return (
            f"History(epochs={span}, splits={self.splits}, layers={len(self.layer_names)}, config={self.config!r:.80})"
        )


class HistoryWriter:
    """Saves a growing :class:`History` to one run directory again and again, writing only what changed.

    What :func:`~xaisparse.train.fit` uses for its checkpoint after every epoch. The first
    :meth:`save` writes the whole run, as :meth:`History.save` does; each later one appends the
    table rows recorded since as one more part of each table, writes the histograms and the
    detector's evidence anew (they are small) and commits a new manifest: the same layout and the
    same crash safety (a process killed at any point leaves the last committed save or this one;
    see :ref:`the on-disk layout <history-layout>`), and loading gives exactly what one whole save
    would. The whole run is written again instead when the rows saved before changed (tables only
    grow by :meth:`History.record_epoch`), when something else wrote the directory meanwhile, or
    when a table reaches ``max_parts`` parts (so that a load reads few files).

    >>> import tempfile
    >>> from pathlib import Path
    >>> h, writer = History(), HistoryWriter(Path(tempfile.mkdtemp()) / "run")
    >>> for epoch in range(3):
    ...     h.record_epoch(epoch, {"test": {"loss": 1.0 / (epoch + 1)}})
    ...     _ = writer.save(h)
    >>> History.load(writer.path).metric("test").tolist()
    [1.0, 0.5, 0.3333333333333333]
    """

    def __init__(self, path: str | os.PathLike[str], *, max_parts: int = 32) -> None:
        if isinstance(max_parts, bool) or not isinstance(max_parts, int) or max_parts < 1:
            raise ValueError(f"max_parts must be a positive int, got {max_parts!r}")
        self.path = Path(path)
        self.max_parts = max_parts
        self._committed: bytes | None = None
        self._saved: dict[str, pd.DataFrame] = {}

    def save(self, history: History) -> Path:
        """Write ``history`` to ``self.path``: appended to this writer's last save where it can be, else whole."""
        check_history(history)
        state = history._run_state()
        parts = self._new_rows(history) if self._committed is not None else None
        raw = None
        if parts is not None and self._committed is not None:
            cleaned = {kind: _clean_table(rows, kind) for kind, rows in parts.items() if len(rows)}
            raw = append_run(self.path, self._committed, cleaned, state, self.max_parts)
        if raw is None:
            raw = write_whole(self.path, history._clean_tables(), state)
        self._committed = raw
        self._saved = {kind: getattr(history, kind).reset_index(drop=True) for kind in _TABLES}
        return self.path

    def _new_rows(self, history: History) -> dict[str, pd.DataFrame] | None:
        """Each table's rows past those of the last save, or None if those rows changed."""
        parts = {}
        for kind in _TABLES:
            table, saved = getattr(history, kind), self._saved[kind]
            n = len(saved)
            if len(table) < n or not table.iloc[:n].reset_index(drop=True).equals(saved):
                return None
            parts[kind] = table.iloc[n:]
        return parts


def _upgrade_v1(tables: dict[str, pd.DataFrame], config: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Schema 1 -> 2: ``lifetime_*`` statistics renamed ``sample_*``; run results out of ``config``."""
    for kind in ("layers", "channels"):
        tables[kind]["statistic"] = tables[kind]["statistic"].replace(_V1_STATISTICS)
    manifest["outcome"] = {k: config.pop(k) for k in ("train_seconds", "stopped_early_at") if k in config}
    old = manifest.get("detector")
    if isinstance(old, Mapping) and "alarm_epoch" in old:
        manifest["detection"] = {**old, "epochs": old.get("epochs") or []}


def _upgrade_statistics(tables: dict[str, pd.DataFrame], config: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Schemas 2 and 3 -> 4: ``channel_mean``/``channel_std`` renamed ``population_*`` (also in the
    detector's settings). The population histograms' new key is the reader's (:mod:`xaisparse._runfiles`)."""
    tables["layers"]["statistic"] = tables["layers"]["statistic"].replace(RENAMED_STATISTICS)
    for settings in (config.get("detector"), (manifest.get("detection") or {}).get("params")):
        if isinstance(settings, dict) and settings.get("statistic") in RENAMED_STATISTICS:
            settings["statistic"] = RENAMED_STATISTICS[settings["statistic"]]


def _split_order(found: list[str]) -> list[str]:
    rank = {"train": 0, "val": 1, "test": 2}
    return sorted(found, key=lambda s: (rank.get(s, 3), found.index(s)))


def _span(epochs: Sequence[int]) -> str:
    if not epochs:
        return "none"
    if list(epochs) == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}..{epochs[-1]}"
    return str(list(epochs))


def _append(frame: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame:
    return rows.reset_index(drop=True) if frame.empty else pd.concat([frame, rows], ignore_index=True)


def _clean_table(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Stable dtypes for Parquet (an empty table keeps its columns)."""
    out = frame.reindex(columns=_TABLES[kind]).copy()
    for col in out.columns:
        if col in ("epoch", "channel"):
            out[col] = out[col].astype("int64")
        elif col == "value":
            out[col] = out[col].astype("float64")
        else:
            out[col] = out[col].astype("string")
    return out


# ---------------------------------------------------------------------------- several runs
def _unique(bases: Iterable[str]) -> list[str]:
    names: list[str] = []
    for base in bases:
        name, k = base, 2
        while name in names:
            name, k = f"{base} ({k})", k + 1
        names.append(name)
    return names


def run_names(histories: Iterable[History]) -> list[str]:
    """One readable, unique name per run: ``config["name"]``, else ``"run {i}"``; clashes get `` (2)``, …

    >>> run_names([History(config={"name": "a"}), History(config={"name": "a"}), History()])
    ['a', 'a (2)', 'run 2']
    """
    return _unique(str((h.config or {}).get("name") or f"run {i}") for i, h in enumerate(histories))


def as_runs(runs: object) -> dict[str, History]:
    """A ``name -> History`` dict from a dict or a list of histories (named by :func:`run_names`).

    ``TypeError`` for anything else or for elements that are not histories.
    """
    if isinstance(runs, History):
        raise TypeError("runs must be several histories (a dict name -> History or a list), got a single History")
    if isinstance(runs, Mapping):
        for name, h in runs.items():
            check_history(h, f"runs[{name!r}]")
        return {str(name): h for name, h in runs.items()}
    if isinstance(runs, (list, tuple)):
        for i, h in enumerate(runs):
            check_history(h, f"runs[{i}]")
        return dict(zip(run_names(runs), runs))
    raise TypeError(
        "runs must be a dict name -> History (e.g. from xaisparse.history.load_runs) or a list of "
        f"histories, got {type(runs).__name__}"
    )


def check_history(history: object, what: str = "history") -> History:
    if not isinstance(history, History):
        raise TypeError(
            f"{what} must be an xaisparse.history.History (e.g. from fit(...) or History.load(path)), "
            f"got {type(history).__name__}"
        )
    return history


def common_layers(runs: Mapping[str, History]) -> list[str]:
    """Layers recorded in every run, in the first run's network order."""
    histories = list(runs.values())
    if not histories:
        return []
    rest = [set(h.layer_names) for h in histories[1:]]
    return [name for name in histories[0].layer_names if all(name in s for s in rest)]


def load_runs(paths: Iterable[str | os.PathLike[str]]) -> dict[str, History]:
    """Load several run directories for comparison, keyed by a readable run name.

    The name is ``config["name"]`` when the run has one, else the directory name (made unique).
    """
    paths = list(paths)
    histories = [History.load(p) for p in paths]
    if not histories:
        raise ValueError("load_runs needs at least one run directory, got none")
    bases = [str(h.config.get("name") or Path(p).name) for h, p in zip(histories, paths)]
    return dict(zip(_unique(bases), histories))
