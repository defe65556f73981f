"""``History.summary`` and ``compare_runs`` against values worked out by hand from small,
hand-written histories (ties, NaN losses, a layer that stops early, a run with no alarm)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from xaisparse import compare_runs
from xaisparse.detect.result import DetectionResult
from xaisparse.history import LAYER_COLUMNS, History, RunOutcome

NAN = float("nan")


def _run(name, seed, test_loss, test_acc, sparsity, alarm=None, seconds=None):
    """A History from explicit per-epoch lists; ``sparsity[layer]`` lists the test values (train = 1 - test)."""
    h = History(config={"name": name, "seed": seed})
    for e, (loss, acc) in enumerate(zip(test_loss, test_acc)):
        h.record_epoch(e, {"train": {"loss": 0.1, "accuracy": 1.0}, "test": {"loss": loss, "accuracy": acc}})
    rows = [
        (e, split, layer, "spatial_mean", v if split == "test" else 1 - v)
        for layer, values in sparsity.items()
        for e, v in enumerate(values)
        for split in ("train", "test")
    ]
    rows += [(e, "test", layer, "dead_fraction", 0.9) for layer, values in sparsity.items() for e in range(len(values))]
    h.layers = pd.DataFrame(rows, columns=LAYER_COLUMNS)
    h.layer_order = list(sparsity)
    if alarm is not None:
        h.detection = DetectionResult(alarm, [], {}, pd.DataFrame(), {})
    h.outcome = RunOutcome(train_seconds=seconds)
    return h


def _facts(row: pd.DataFrame) -> dict:
    """The one row's cells with their column's type (``.at``: NaN stays NaN, a missing int is <NA>)."""
    return {col: row.at[row.index[0], col] for col in row.columns}


# epoch:         0    1    2    3    4    5
TIED = _run(
    "tied",
    seed=0,
    test_loss=[1.0, 0.5, NAN, 0.5, 0.8, 0.9],  # minimum 0.5 at epochs 1 and 3: the earliest counts
    test_acc=[0.1, 0.6, NAN, 0.7, 0.65, 0.6],
    sparsity={"a": [0.2, 0.3, 0.4, 0.5, 0.6, 0.55], "b": [0.1, 0.2, 0.3, 0.4, 0.35]},  # b stops at epoch 4
    alarm=3,
    seconds=12.5,
)


def test_summary_of_a_run_with_ties_and_nan_losses():
    row = TIED.summary()
    assert row.index.tolist() == ["tied"] and row.index.name == "run"
    r = _facts(row)
    assert int(r["seed"]) == 0 and int(r["last epoch"]) == 5
    assert r["best test acc"] == 0.7  # the NaN epoch is not a best
    assert r["last test acc"] == 0.6
    assert r["min test loss"] == 0.5 and int(r["min-loss epoch"]) == 1  # tie: earliest epoch
    assert r["last test loss"] == 0.9
    assert r["rise after min"] == pytest.approx(0.4, abs=1e-12)
    assert r["sparsity a"] == 0.55  # the test split's value at the last epoch, not the maximum
    assert r["sparsity b"] == 0.35  # the last epoch that records b
    assert int(r["alarm epoch"]) == 3 and r["train seconds"] == 12.5
    assert list(row.columns) == [
        "seed",
        "last epoch",
        "best test acc",
        "last test acc",
        "min test loss",
        "min-loss epoch",
        "last test loss",
        "rise after min",
        "sparsity a",
        "sparsity b",
        "alarm epoch",
        "train seconds",
    ]
    assert str(row["alarm epoch"].dtype) == "Int64" and row["rise after min"].dtype == np.float64


def test_a_diverged_run_reports_nan_where_the_last_value_is_nan():
    h = _run("diverged", 1, [2.0, 1.0, 1.0, NAN], [0.2, 0.5, 0.4, NAN], {"a": [0.3, 0.2, 0.1, NAN]})
    r = _facts(h.summary())
    assert r["min test loss"] == 1.0 and int(r["min-loss epoch"]) == 1
    assert math.isnan(r["last test loss"]) and math.isnan(r["rise after min"]) and math.isnan(r["last test acc"])
    assert r["best test acc"] == 0.5 and math.isnan(r["sparsity a"])
    assert r["alarm epoch"] is pd.NA and math.isnan(r["train seconds"])


def test_all_nan_and_empty_runs():
    r = _facts(_run("nan", 2, [NAN, NAN], [NAN, NAN], {}).summary())
    assert math.isnan(r["min test loss"]) and r["min-loss epoch"] is pd.NA and math.isnan(r["best test acc"])
    empty = History().summary()
    assert empty.index.tolist() == ["run"] and empty.loc["run", "last epoch"] is pd.NA
    assert empty.loc["run", "seed"] is pd.NA


def test_summary_of_another_split_and_names():
    r = _facts(TIED.summary(name="mine", split="train"))
    assert r["last train loss"] == 0.1 and r["sparsity a"] == pytest.approx(0.45)
    with pytest.raises(ValueError, match="split must be one of"):
        TIED.summary(split="held-out")
    with pytest.raises(TypeError, match="name must be a str or None, got int"):
        TIED.summary(name=3)


def test_compare_runs_pairs_each_run_with_the_baseline_of_its_seed():
    runs = {
        "base s0": _run("x", 0, [1.0, 0.6, 0.7], [0.5, 0.7, 0.6], {"a": [0.2, 0.3, 0.4]}),
        "pen s0": _run("x", 0, [1.0, 0.5, 0.5], [0.5, 0.8, 0.8], {"a": [0.2, 0.1, 0.1]}),
        "base s1": _run("x", 1, [1.0, 0.8, 0.9], [0.5, 0.6, 0.5], {"a": [0.2, 0.4, 0.5]}),
        "pen s1": _run("x", 1, [1.0, 0.7, 0.6], [0.5, 0.6, 0.7], {"a": [0.2, 0.2, 0.2]}),
        "pen s2": _run("x", 2, [1.0, 0.9, 0.9], [0.5, 0.5, 0.5], {"a": [0.3, 0.3, 0.3]}),
    }
    table = compare_runs(runs, baseline=["base s0", "base s1"])
    # seeds repeat: grouped by seed, given order kept within a seed; seed 2 has no baseline
    assert table.index.tolist() == ["base s0", "pen s0", "base s1", "pen s1", "pen s2"]
    assert table["paired with"].tolist() == ["base s0", "base s0", "base s1", "base s1", ""]
    # by hand: pen s0 − base s0 and pen s1 − base s1
    assert table.loc["pen s0", "Δ min test loss"] == pytest.approx(0.5 - 0.6)
    assert table.loc["pen s0", "Δ rise after min"] == pytest.approx(0.0 - 0.1)
    assert table.loc["pen s0", "Δ last test acc"] == pytest.approx(0.8 - 0.6)
    assert table.loc["pen s1", "Δ last test loss"] == pytest.approx(0.6 - 0.9)
    assert table.loc["pen s1", "Δ sparsity a"] == pytest.approx(0.2 - 0.5)
    assert table.loc["base s1", "Δ best test acc"] == 0.0
    assert table.loc["pen s2", ["Δ min test loss", "Δ sparsity a"]].isna().all()
    assert int(table.loc["pen s0", "min-loss epoch"]) == 1  # tie at epochs 1 and 2: the earliest


def test_compare_runs_with_one_baseline_and_unique_seeds():
    runs = [
        _run("a", 0, [1.0, 0.4], [0.5, 0.9], {"x": [0.1, 0.2]}),
        _run("b", 5, [1.0, 0.6], [0.5, 0.7], {"y": [0.3, 0.4]}),
    ]
    table = compare_runs(runs, baseline="a")
    assert table.index.tolist() == ["a", "b"]  # no seed repeats: the given order
    assert table["paired with"].tolist() == ["a", "a"]  # one baseline for all
    assert table.loc["b", "Δ min test loss"] == pytest.approx(0.2)
    assert math.isnan(table.loc["a", "sparsity y"]) and math.isnan(table.loc["b", "Δ sparsity x"])
    assert "paired with" not in compare_runs(runs).columns


@pytest.mark.parametrize(
    ("runs", "baseline", "error", "match"),
    [
        ([], None, ValueError, "needs at least one run"),
        ("runs", None, TypeError, "runs must be a dict name -> History"),
        ([TIED], "nope", ValueError, r"baseline run\(s\) \['nope'\] are not among the runs \['tied'\]"),
        ([TIED], 3, TypeError, "baseline must be a run name"),
        ({"x": TIED, "y": TIED}, ["x", "y"], ValueError, "have the same seed 0"),
    ],
)
def test_compare_runs_errors(runs, baseline, error, match):
    with pytest.raises(error, match=match):
        compare_runs(runs, baseline=baseline)
