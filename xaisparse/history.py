"""The record of a run: config, per-epoch metrics, per-layer/per-channel sparsity and histograms.

Saved as a directory of Parquet tables, one NPZ of histograms (loaded with
``allow_pickle=False``) and a JSON manifest holding the schema version and a SHA-256 of every
data file. Writes are atomic (a temporary directory renamed into place), so a failed save never
leaves a half-written run; a corrupt, truncated or foreign directory gets a clear
:class:`~xaisparse.HistoryFormatError`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._errors import HistoryFormatError

__all__ = ["SCHEMA_VERSION", "History", "load_runs"]

SCHEMA_VERSION = 1
FORMAT = "xaisparse.history"
MANIFEST = "history.json"
METRIC_COLUMNS = ["epoch", "split", "metric", "value"]
LAYER_COLUMNS = ["epoch", "split", "layer", "statistic", "value"]
CHANNEL_COLUMNS = ["epoch", "split", "layer", "channel", "statistic", "value"]
_TABLES = {"metrics": METRIC_COLUMNS, "layers": LAYER_COLUMNS, "channels": CHANNEL_COLUMNS}


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: NaN/Inf become None, numpy scalars and paths become plain values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class History:
    """Everything a run produced, epoch by epoch.

    * ``metrics``: ``epoch, split, metric, value`` (``loss``, ``accuracy``, …)
    * ``layers``: ``epoch, split, layer, statistic, value`` (see ``monitor.LAYER_STATISTICS``)
    * ``channels``: ``epoch, split, layer, channel, statistic, value``
    * ``spatial_hist[(split, layer)]``: ``(epochs, channels, bins)`` counts of per-sample map
      sparsity, aligned with ``hist_epochs[(split, layer)]``; ``channel_hist``: ``(epochs, bins)``
    * ``config`` and ``detector``: JSON-safe dicts

    >>> h = History(config={"model": "demo"})
    >>> h.record_epoch(0, {"train": {"loss": 1.0}, "test": {"loss": 1.2}})
    >>> h.record_epoch(1, {"train": {"loss": 0.5}, "test": {"loss": 1.1}})
    >>> h.metric("test", "loss").tolist()
    [1.2, 1.1]
    """

    config: dict[str, Any] = field(default_factory=dict)
    metrics: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=METRIC_COLUMNS))
    layers: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LAYER_COLUMNS))
    channels: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=CHANNEL_COLUMNS))
    spatial_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    channel_hist: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)
    hist_epochs: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    bin_edges: np.ndarray = field(default_factory=lambda: np.linspace(0.0, 1.0, 21))
    detector: dict[str, Any] | None = None
    layer_order: list[str] = field(default_factory=list)

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
                self._push_hist(key, epoch, hist, report.channel_hist[key])
            for layer in report.layers.layer.unique():
                if layer not in self.layer_order:
                    self.layer_order.append(str(layer))

    def _push_hist(self, key: tuple[str, str], epoch: int, spatial: np.ndarray, channel: np.ndarray) -> None:
        prev = self.spatial_hist.get(key)
        self.spatial_hist[key] = spatial[None] if prev is None else np.concatenate([prev, spatial[None]])
        prev_c = self.channel_hist.get(key)
        self.channel_hist[key] = channel[None] if prev_c is None else np.concatenate([prev_c, channel[None]])
        self.hist_epochs.setdefault(key, []).append(epoch)

    # ------------------------------------------------------------------ reading
    @property
    def epochs(self) -> list[int]:
        """Every epoch with any record, ascending."""
        found = set(self.metrics.epoch.astype(int)) | set(self.layers.epoch.astype(int))
        return sorted(found)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys([*self.metrics.split.astype(str), *self.layers.split.astype(str)]))

    @property
    def layer_names(self) -> list[str]:
        return list(self.layer_order) or list(dict.fromkeys(self.layers.layer.astype(str)))

    @property
    def is_empty(self) -> bool:
        return self.metrics.empty and self.layers.empty

    def to_dataframe(self, kind: str = "layers") -> pd.DataFrame:
        """A tidy long table: ``"metrics"``, ``"layers"`` or ``"channels"`` (a copy)."""
        if kind not in _TABLES:
            raise ValueError(f"kind must be one of {list(_TABLES)}, got {kind!r}")
        return getattr(self, kind).copy()

    def metric(self, split: str, name: str = "loss") -> pd.Series:
        """One metric over epochs (index: epoch)."""
        m = self.metrics
        rows = m[(m.split == split) & (m.metric == name)]
        return pd.Series(rows.value.to_numpy(dtype=float), index=rows.epoch.to_numpy(dtype=int), name=f"{split} {name}")

    def layer_series(self, split: str, layer: str, statistic: str = "spatial_mean") -> pd.Series:
        """One layer statistic over epochs (index: epoch)."""
        t = self.layers
        rows = t[(t.split == split) & (t.layer == layer) & (t.statistic == statistic)]
        return pd.Series(rows.value.to_numpy(dtype=float), index=rows.epoch.to_numpy(dtype=int), name=layer)

    def layer_matrix(self, split: str, statistic: str = "spatial_mean") -> pd.DataFrame:
        """Layers × epochs table of one statistic (rows in network order)."""
        t = self.layers[(self.layers.split == split) & (self.layers.statistic == statistic)]
        if t.empty:
            return pd.DataFrame()
        wide = t.pivot_table(index="layer", columns="epoch", values="value", aggfunc="first")
        order = [name for name in self.layer_names if name in wide.index]
        return wide.reindex(order)

    def histogram(self, split: str, layer: str, epoch: int) -> np.ndarray:
        """``(channels, bins)`` spatial-sparsity histogram of one layer at one epoch."""
        key = (split, layer)
        if key not in self.spatial_hist:
            raise KeyError(f"no histogram for split={split!r}, layer={layer!r}; have {sorted(self.spatial_hist)}")
        epochs = self.hist_epochs[key]
        if epoch not in epochs:
            raise KeyError(f"no histogram for epoch {epoch} of {key}; recorded epochs {epochs}")
        return self.spatial_hist[key][epochs.index(epoch)]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the run to directory ``path`` atomically; returns the path.

        An existing directory is replaced only if it is itself a saved History (never a
        foreign directory); on any failure the previous contents stay as they were.
        """
        target = Path(path)
        if target.exists():
            if not target.is_dir() or not (target / MANIFEST).is_file():
                raise FileExistsError(
                    f"{target} exists and is not a saved xaisparse History (no {MANIFEST}); refusing to overwrite it"
                )
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
        try:
            files = {}
            for kind in _TABLES:
                name = f"{kind}.parquet"
                _clean_table(getattr(self, kind), kind).to_parquet(tmp / name, index=False)
                files[name] = None
            keys = sorted(self.spatial_hist)
            arrays: dict[str, np.ndarray] = {"bin_edges": np.asarray(self.bin_edges, dtype=np.float64)}
            for i, key in enumerate(keys):
                arrays[f"spatial_{i}"] = np.asarray(self.spatial_hist[key], dtype=np.int64)
                arrays[f"channel_{i}"] = np.asarray(self.channel_hist[key], dtype=np.int64)
            np.savez_compressed(tmp / "histograms.npz", **arrays)
            files["histograms.npz"] = None
            manifest = {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "config": _jsonable(self.config),
                "detector": _jsonable(self.detector),
                "layer_order": list(self.layer_order),
                "histograms": [
                    {"split": s, "layer": l, "index": i, "epochs": [int(e) for e in self.hist_epochs[(s, l)]]}
                    for i, (s, l) in enumerate(keys)
                ],
                "files": {name: _sha256(tmp / name) for name in files},
            }
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, allow_nan=False)
                f.flush()
                os.fsync(f.fileno())
            _replace_dir(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target

    @classmethod
    def load(cls, path: str | os.PathLike) -> History:
        """Read a run directory written by :meth:`save` (or a run directory holding one in ``history/``)."""
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"no run directory at {root}")
        if root.is_dir() and not (root / MANIFEST).exists() and (root / "history" / MANIFEST).exists():
            root = root / "history"
        man_path = root / MANIFEST
        if not man_path.is_file():
            raise HistoryFormatError(
                f"{root} is not an xaisparse run directory: expected {MANIFEST} (written by History.save) inside it"
            )
        try:
            manifest = json.loads(man_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise HistoryFormatError(f"{man_path} is corrupt or truncated (not valid JSON: {exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise HistoryFormatError(f"{man_path} is not an xaisparse history: expected format {FORMAT!r}, got {got!r}")
        version = manifest.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise HistoryFormatError(
                f"{man_path} has schema version {version!r}; this xaisparse reads versions 1..{SCHEMA_VERSION} "
                "(upgrade xaisparse to read newer runs)"
            )
        for name, digest in (manifest.get("files") or {}).items():
            fpath = root / name
            if not fpath.is_file():
                raise HistoryFormatError(f"run directory {root} is incomplete: {name} is missing")
            if _sha256(fpath) != digest:
                raise HistoryFormatError(f"{fpath} is corrupt or truncated (its SHA-256 does not match the manifest)")
        try:
            tables = {kind: pd.read_parquet(root / f"{kind}.parquet") for kind in _TABLES}
            with np.load(root / "histograms.npz", allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
        except Exception as exc:  # pyarrow / zipfile errors on damaged files
            raise HistoryFormatError(f"cannot read run directory {root}: {type(exc).__name__}: {exc}") from None
        for kind, cols in _TABLES.items():
            if list(tables[kind].columns) != cols:
                raise HistoryFormatError(
                    f"{kind}.parquet in {root} has columns {list(tables[kind].columns)}, expected {cols}"
                )
        h = cls(
            config=manifest.get("config") or {},
            metrics=tables["metrics"],
            layers=tables["layers"],
            channels=tables["channels"],
            bin_edges=arrays.get("bin_edges", np.linspace(0, 1, 21)),
            detector=manifest.get("detector"),
            layer_order=list(manifest.get("layer_order") or []),
        )
        for entry in manifest.get("histograms", []):
            key, i = (entry["split"], entry["layer"]), entry["index"]
            h.spatial_hist[key] = arrays[f"spatial_{i}"]
            h.channel_hist[key] = arrays[f"channel_{i}"]
            h.hist_epochs[key] = [int(e) for e in entry["epochs"]]
        return h

    def __repr__(self) -> str:
        ep = self.epochs
        span = f"{ep[0]}..{ep[-1]}" if ep else "none"
        return (
            f"History(epochs={span}, splits={self.splits}, layers={len(self.layer_names)}, config={self.config!r:.80})"
        )


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


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished ``src`` to ``dst``; an existing ``dst`` is swapped out, then removed."""
    if dst.exists():
        backup = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, backup)
        try:
            os.replace(src, dst)
        except BaseException:
            os.replace(backup, dst)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(src, dst)


def load_runs(paths: Iterable[str | os.PathLike]) -> dict[str, History]:
    """Load several run directories for comparison, keyed by a readable run name.

    The name is ``config["name"]`` when the run has one, else the directory name (made unique).
    """
    runs: dict[str, History] = {}
    for p in paths:
        h = History.load(p)
        name = str(h.config.get("name") or Path(p).name)
        base, k = name, 2
        while name in runs:
            name, k = f"{base} ({k})", k + 1
        runs[name] = h
    if not runs:
        raise ValueError("load_runs needs at least one run directory, got none")
    return runs
