"""The facts of a run in one row, and several runs side by side.

:func:`run_summary` (also :meth:`History.summary <xaisparse.history.History.summary>`) reads
the facts a reader asks of a training run from its :class:`~xaisparse.history.History`:
best and last held-out accuracy and loss, the epoch of the loss minimum, how far the loss rose
after it, each layer's final sparsity, the detector's alarm epoch and the training time.
:func:`compare_runs` puts several runs' rows into one table and, given baseline runs, adds
the difference of each run to the baseline run of the **same seed** (paired by seed).

The rules, so that every consumer reads the same numbers:

* only finite values count for a best or a minimum (a NaN loss is never the minimum); ties
  go to the earliest epoch;
* "last" is the value at the last epoch that records the metric, also when it is NaN (a
  diverged run shows NaN, not an older number);
* ``rise after min`` is ``last loss − min loss``: 0 when the minimum is the last epoch, NaN
  when the last loss is not finite;
* a layer's final sparsity is its ``spatial_mean`` on the summary's split at the last epoch
  that records the layer.

>>> from xaisparse.history import History
>>> h = History(config={"name": "demo", "seed": 3})
>>> for e, (loss, acc) in enumerate([(1.0, 0.5), (0.6, 0.8), (0.7, 0.8)]):
...     h.record_epoch(e, {"test": {"loss": loss, "accuracy": acc}})
>>> row = run_summary(h)
>>> int(row.loc["demo", "min-loss epoch"]), row.loc["demo", ["min test loss", "last test loss"]].tolist()
(1, [0.6, 0.7])
>>> round(float(row.loc["demo", "rise after min"]), 3)
0.1
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ._validation import check_split, is_int
from .history import History, as_runs, check_history

__all__ = ["DELTA_COLUMNS", "compare_runs", "run_summary", "summary_columns"]

#: Summary columns that :func:`compare_runs` differences against a baseline (the split's name
#: replaces ``{split}``; every ``sparsity …`` column is differenced too).
DELTA_COLUMNS: tuple[str, ...] = (
    "best {split} acc",
    "last {split} acc",
    "min {split} loss",
    "last {split} loss",
    "rise after min",
)


def summary_columns(layers: Sequence[str] = (), split: str = "test") -> list[str]:
    """The columns of :func:`run_summary` for runs recording ``layers``, in order.

    >>> summary_columns(["block1"])[:4]
    ['seed', 'last epoch', 'best test acc', 'last test acc']
    """
    return [
        "seed",
        "last epoch",
        f"best {split} acc",
        f"last {split} acc",
        f"min {split} loss",
        "min-loss epoch",
        f"last {split} loss",
        "rise after min",
        *(f"sparsity {layer}" for layer in layers),
        "alarm epoch",
        "train seconds",
    ]


_INT_COLUMNS = ("seed", "last epoch", "min-loss epoch", "alarm epoch")


def _last(series: pd.Series) -> float:
    """The value at the series' last epoch (NaN included), NaN when empty."""
    if series.empty:
        return math.nan
    series = series[~series.index.duplicated(keep="first")].sort_index()
    return float(series.iloc[-1])


def _best(series: pd.Series) -> float:
    values = series.to_numpy(dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else math.nan


def run_summary(history: History, name: str | None = None, split: str = "test") -> pd.DataFrame:
    """One row of a run's facts (see the module's rules), indexed by the run's name.

    ``name`` defaults to ``history.config["name"]``, else ``"run"``; ``split`` is the held-out
    split the accuracy, loss and sparsity columns read (``"test"``). The integer columns
    (seed, epochs) are pandas' nullable ``Int64``: ``<NA>`` where there is no value (no alarm,
    no seed in the config). Columns: :func:`summary_columns` of the run's layers.
    """
    check_history(history)
    split = check_split(split)
    if name is None:
        name = str((history.config or {}).get("name") or "run")
    elif not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    loss, acc = history.metric(split, "loss"), history.metric(split, "accuracy")
    best = history.test_loss_minimum(split)
    last_loss = _last(loss)
    seed = (history.config or {}).get("seed")
    epochs = history.epochs
    row: dict[str, Any] = {
        "seed": int(seed) if is_int(seed) else None,  # type: ignore[arg-type]
        "last epoch": epochs[-1] if epochs else None,
        f"best {split} acc": _best(acc),
        f"last {split} acc": _last(acc),
        f"min {split} loss": math.nan if best is None else best[1],
        "min-loss epoch": None if best is None else best[0],
        f"last {split} loss": last_loss,
        "rise after min": last_loss - best[1] if best is not None and math.isfinite(last_loss) else math.nan,
    }
    for layer in history.layer_names:
        row[f"sparsity {layer}"] = _last(history.layer_series(split, layer, "spatial_mean"))
    row["alarm epoch"] = history.alarm_epoch
    seconds = history.outcome.train_seconds
    row["train seconds"] = math.nan if seconds is None else float(seconds)
    frame = pd.DataFrame([row], index=pd.Index([name], name="run"))
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Nullable ints for the integer columns, floats for the rest."""
    out = frame.copy()
    for col in out.columns:
        out[col] = out[col].astype("Int64") if col in _INT_COLUMNS else pd.to_numeric(out[col]).astype(np.float64)
    return out


def compare_runs(
    runs: Mapping[str, History] | Sequence[History],
    baseline: str | Collection[str] | None = None,
    split: str = "test",
) -> pd.DataFrame:
    """Several runs side by side: one :func:`run_summary` row per run, paired by seed.

    ``runs``: a dict ``name -> History`` or a list of histories (named by
    :func:`~xaisparse.history.run_names`). Rows keep the given order, except that when a seed
    repeats the rows are grouped by seed (stable), so each seed's runs sit together. Layers a
    run does not record are NaN in its row.

    ``baseline``: the name of one run, or several (one per seed, e.g. the baseline condition
    over seeds). Each run is then paired with the baseline run of its own seed and two kinds of
    columns are added: ``paired with`` (that run's name, ``""`` where there is none) and
    ``Δ <column>`` = run − partner for :data:`DELTA_COLUMNS` and every ``sparsity …`` column.
    A single baseline run whose seed differs from a run's is still its partner (one baseline
    for all); with several baseline runs a run whose seed has none stays unpaired (NaN).

    >>> from xaisparse.testing import synthetic_history
    >>> table = compare_runs([synthetic_history(seed=0), synthetic_history(seed=1)], baseline="synthetic-0")
    >>> table.index.tolist(), table["paired with"].tolist()
    (['synthetic-0', 'synthetic-1'], ['synthetic-0', 'synthetic-0'])
    >>> float(table.loc["synthetic-0", "Δ min test loss"])
    0.0
    """
    named = as_runs(runs)
    if not named:
        raise ValueError("compare_runs needs at least one run, got none")
    rows = [run_summary(h, name, split) for name, h in named.items()]
    table = pd.concat(rows)
    layers = list(dict.fromkeys(c for r in rows for c in r.columns if c.startswith("sparsity ")))
    ordered = [c for c in summary_columns((), split) if c not in ("alarm epoch", "train seconds")]
    table = table.reindex(columns=[*ordered, *layers, "alarm epoch", "train seconds"])
    seeds = table["seed"]
    if seeds.notna().any() and seeds.dropna().duplicated().any():
        order = seeds.astype("Float64").fillna(np.inf).to_numpy(dtype=np.float64)
        table = table.iloc[np.argsort(order, kind="stable")]
    seed_of = {run: (None if pd.isna(s) else int(s)) for run, s in table["seed"].items()}
    if baseline is None:
        return table
    base = [baseline] if isinstance(baseline, str) else list(baseline) if isinstance(baseline, Collection) else []
    if not base or not all(isinstance(b, str) for b in base):
        raise TypeError(f"baseline must be a run name or a collection of run names, got {baseline!r}")
    unknown = [b for b in base if b not in table.index]
    if unknown:
        raise ValueError(f"baseline run(s) {unknown} are not among the runs {list(table.index)}")
    by_seed: dict[Any, str] = {}
    for b in base:
        key = seed_of[b]
        if key in by_seed:
            raise ValueError(
                f"baseline runs {by_seed[key]!r} and {b!r} have the same seed {key}: pass one baseline run per seed"
            )
        by_seed[key] = b
    partners = []
    for run in table.index:
        partners.append(by_seed.get(seed_of[run], base[0] if len(base) == 1 else ""))
    table = table.copy()
    table["paired with"] = partners
    for col in [c.format(split=split) for c in DELTA_COLUMNS] + layers:
        partner_values = [table.at[p, col] if p else np.nan for p in partners]
        table[f"Δ {col}"] = table[col].to_numpy(dtype=np.float64) - np.asarray(partner_values, dtype=np.float64)
    return table
