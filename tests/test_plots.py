"""Tests of xaisparse.plots: the figures themselves, read back and compared with values computed
by hand from a History's tidy rows (``tests.oracle``), never with the History's own queries."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pandas as pd
import pytest

from tests import oracle
from xaisparse import plots
from xaisparse.detection import DetectionResult
from xaisparse.history import History
from xaisparse.testing import synthetic_history

L1, L2, L3 = "block1.relu", "block2.relu", "block3.relu"


@pytest.fixture(scope="module")
def run() -> History:
    """A made-up run (read-only here) with an alarm at epoch 5."""
    h = synthetic_history(epochs=10, overfit_at=6, seed=4)
    h.detection = DetectionResult(alarm_epoch=5, layers=[L2], onsets={}, evidence=pd.DataFrame(), params={})
    return h


def _lines(ax, prefix: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {
        line.get_gid()[len(prefix) :]: (np.asarray(line.get_xdata(), float), np.asarray(line.get_ydata(), float))
        for line in ax.get_lines()
        if str(line.get_gid()).startswith(prefix)
    }


def _metric_rows(h: History, split: str, metric: str = "loss") -> tuple[list[int], list[float]]:
    rows = sorted((int(e), float(v)) for e, s, m, v in h.metrics.itertuples(index=False) if (s, m) == (split, metric))
    return [e for e, _ in rows], [v for _, v in rows]


def _lowest_test_loss(h: History) -> int:
    epochs, values = _metric_rows(h, "test")
    low = min(v for v in values if np.isfinite(v))
    return min(e for e, v in zip(epochs, values) if v == low)


@pytest.mark.parametrize("split, statistic", [("test", "spatial_mean"), ("train", "sample_mean")])
def test_timeline_lines_are_the_recorded_values(run, split, statistic):
    fig = plots.timeline(run, split, statistic=statistic)
    ax = fig.axes[0]
    epochs, values = oracle.wide(run.layers, split, statistic, [L1, L2, L3])
    drawn = _lines(ax, "layer:")
    assert list(drawn) == [L1, L2, L3]  # network order
    for i, layer in enumerate([L1, L2, L3]):
        np.testing.assert_array_equal(drawn[layer][0], epochs)
        np.testing.assert_array_equal(drawn[layer][1], values[:, i])
    losses = _lines(fig.axes[1], "loss:")  # the twin axis
    for s in ("train", "test"):
        e, v = _metric_rows(run, s)
        np.testing.assert_array_equal(losses[s][0], e)
        np.testing.assert_array_equal(losses[s][1], v)
    marks = {line.get_gid(): line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() in ("alarm", "minimum")}
    assert marks == {"alarm": 5, "minimum": _lowest_test_loss(run)}


def test_timeline_of_chosen_layers_and_its_nan_epoch():
    h = synthetic_history(epochs=6, seed=2, nan_epoch=3)
    notes: list[str] = []
    fig = plots.timeline(h, layers=[L3, L1], notes=notes)
    drawn = _lines(fig.axes[0], "layer:")
    assert list(drawn) == [L1, L3]  # network order, whatever the order asked for (as layers= everywhere)
    epochs, values = oracle.wide(h.layers, "test", "spatial_mean", [L1, L3])
    assert 3 in epochs and np.isnan(values[epochs.index(3)]).all()
    for i, layer in enumerate([L1, L3]):
        np.testing.assert_array_equal(drawn[layer][1], values[:, i])  # NaN stays a gap
    assert any("epoch(s) [3]" in n for n in notes)


def test_heatmap_image_is_the_layer_table(run):
    data: dict = {}
    fig = plots.heatmap(run, "test", data=data)
    ax = fig.axes[0]
    epochs, values = oracle.wide(run.layers, "test", "spatial_mean", [L1, L2, L3])
    np.testing.assert_array_equal(np.ma.filled(ax.get_images()[0].get_array(), np.nan), values.T)
    assert [t.get_text() for t in ax.get_yticklabels()] == [L1, L2, L3]
    assert [int(t.get_text()) for t in ax.get_xticklabels()] == epochs
    marks = {line.get_gid(): line.get_xdata()[0] for line in ax.get_lines()}
    assert marks == {"alarm": epochs.index(5), "minimum": epochs.index(_lowest_test_loss(run))}  # image columns


def test_distribution_heatmap_shares_in_the_hand_computed_order(run):
    epoch, layer = 7, L2
    data: dict = {}
    plots.distribution(run, layer, epoch, "test", kind="heatmap", data=data)
    raw = run.spatial_hist[("test", layer)][run.hist_epochs[("test", layer)].index(epoch)].astype(float)
    means = {
        int(ch): v
        for e, s, name, ch, stat, v in run.channels.itertuples(index=False)
        if (int(e), s, name, stat) == (epoch, "test", layer, "spatial_mean")
    }
    order = sorted(range(raw.shape[0]), key=lambda ch: (-means[ch], ch))  # sparsest first, ties by index
    assert list(data["order"]) == order
    np.testing.assert_array_equal(data["counts"]["test"], raw[order])


def test_distribution_of_both_splits_and_of_a_missing_epoch(run):
    notes: list[str] = []
    data: dict = {}
    fig = plots.distribution(run, L1, 99, ("train", "test"), kind="box", notes=notes, data=data)
    assert data["epoch"] == 9 and any("nearest recorded epoch 9" in n for n in notes)  # epochs 0..9
    assert data["splits"] == ["train", "test"]
    for s in ("train", "test"):
        raw = run.spatial_hist[(s, L1)][run.hist_epochs[(s, L1)].index(9)]
        np.testing.assert_array_equal(data["counts"][s], raw[data["order"]])
    assert fig.axes[0].get_title().startswith(f"{L1} · epoch 9 · train vs test")


def test_comparison_draws_each_runs_values():
    a = synthetic_history(epochs=5, seed=1)
    b = synthetic_history(epochs=7, seed=2, layers=(L1, L2))
    data: dict = {}
    fig = plots.comparison({"a": a, "b": b}, layer=L2, split="train", data=data)
    ax_loss, ax_layer = fig.axes[0], fig.axes[1]
    losses = _lines(ax_loss, "loss:")
    for name, h in (("a", a), ("b", b)):
        e, v = _metric_rows(h, "test")
        np.testing.assert_array_equal(losses[f"{name}:test"][0], e)
        np.testing.assert_array_equal(losses[f"{name}:test"][1], v)
        epochs, values = oracle.wide(h.layers, "train", "spatial_mean", [L2])
        x, y = _lines(ax_layer, "layer:")[name]
        np.testing.assert_array_equal(x, epochs)
        np.testing.assert_array_equal(y, values[:, 0])


def test_nothing_to_draw_is_said():
    with pytest.raises(plots.NoData, match="no epochs"):
        plots.timeline(History())
    metrics_only = History()
    metrics_only.record_epoch(0, {"test": {"loss": 1.0}})
    with pytest.raises(plots.NoData, match="no layer sparsity"):
        plots.heatmap(metrics_only)


def test_the_pseudo_split_both_still_works_with_a_warning(run):
    old: dict = {}
    with pytest.warns(DeprecationWarning, match=r'split=\("train", "test"\)'):
        plots.distribution(run, L1, 4, "both", data=old)
    new: dict = {}
    plots.distribution(run, L1, 4, ("train", "test"), data=new)
    assert old["splits"] == new["splits"] == ["train", "test"]
    for s in ("train", "test"):
        np.testing.assert_array_equal(old["counts"][s], new["counts"][s])
    with pytest.raises(ValueError, match="split must be one of"):
        plots.distribution(run, L1, 4, ("train", "holdout"))
