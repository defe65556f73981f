"""Tests of xaisparse.widgets: pure data functions against independent references, and every
widget driven in plain pytest by setting control values and reading the figures back."""

from __future__ import annotations

import base64
import math
import re
import struct
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from tests import oracle
from xaisparse import histogram_stats as HS
from xaisparse import plots
from xaisparse.detect import DetectionResult
from xaisparse.history import History, as_runs, common_layers
from xaisparse.plots._style import DEAD_COLOR
from xaisparse.plots.runs import nonfinite_epochs
from xaisparse.testing import synthetic_history
from xaisparse.widgets import (
    ChannelInspector,
    LayerEpochHeatmap,
    LiveDashboard,
    RunComparison,
    SparsityDistribution,
    SparsityTimeline,
)

PNG = b"\x89PNG\r\n\x1a\n"
L1, L2, L3 = "block1.relu", "block2.relu", "block3.relu"


@pytest.fixture(scope="module")
def hist() -> History:
    """A shared read-only history (tests that modify one build their own)."""
    h = synthetic_history()
    h.detection = detection(4)
    return h


def detection(alarm: int | None) -> DetectionResult:
    """A detector result with only an alarm epoch (what the widgets mark)."""
    return DetectionResult(alarm_epoch=alarm, layers=[], onsets={}, evidence=pd.DataFrame(), params={})


def with_dead(h: History, layer: str, channels: list[int], value: float = 0.8) -> History:
    t = h.channels
    m = (t.statistic == "dead_fraction") & (t.layer == layer) & (t.channel.isin(channels))
    h.channels.loc[m, "value"] = value
    return h


def titles(fig: Figure) -> str:
    parts = [ax.get_title() for ax in fig.axes]
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    return " | ".join(parts)


def line_by_gid(fig: Figure, gid: str):
    for ax in fig.axes:
        for line in ax.get_lines():
            if line.get_gid() == gid:
                return line
    raise AssertionError(f"no line with gid {gid!r}")


# ================================================================== pure functions
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_quantiles_match_samples_within_one_bin(seed):
    rng = np.random.default_rng(seed)
    samples = rng.beta(2 + seed, 5, 400)
    edges = np.linspace(0, 1, 21)
    counts = np.histogram(samples, bins=edges)[0]
    qs = [0.05, 0.25, 0.5, 0.75, 0.95]
    got = HS.histogram_quantile(counts, edges, qs)
    want = np.quantile(samples, qs)
    assert np.all(np.abs(got - want) <= 0.05 + 1e-12)
    stats = HS.histogram_box_stats(counts, edges)
    assert stats["n"] == 400
    assert abs(stats["med"] - np.median(samples)) <= 0.05
    assert abs(stats["q1"] - np.quantile(samples, 0.25)) <= 0.05
    assert abs(stats["q3"] - np.quantile(samples, 0.75)) <= 0.05
    assert abs(stats["mean"] - samples.mean()) <= 0.025 + 1e-12  # half a bin
    # whiskers lie within the binned data range and within 1.5 IQR of the box
    assert samples.min() - 0.05 <= stats["whislo"] <= stats["q1"]
    assert stats["q3"] <= stats["whishi"] <= samples.max() + 0.05
    assert stats["whishi"] <= stats["q3"] + 1.5 * (stats["q3"] - stats["q1"]) + 1e-12


def test_histogram_quantile_exact_cases_and_errors():
    edges = [0.0, 1.0, 2.0, 3.0, 4.0]
    assert HS.histogram_quantile([0, 4, 0, 4], edges, 0.5) == pytest.approx(2.0)
    assert HS.histogram_quantile([0, 4, 0, 4], edges, 0.0) == 1.0
    assert HS.histogram_quantile([0, 4, 0, 4], edges, 1.0) == 4.0
    assert math.isnan(HS.histogram_quantile([0, 0, 0, 0], edges, 0.5))
    with pytest.raises(ValueError, match="edges"):
        HS.histogram_quantile([1, 2], [0.0, 1.0], 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        HS.histogram_quantile([1, 2], [0.0, 1.0, 2.0], 1.5)
    empty = HS.histogram_box_stats(np.zeros(4), edges)
    assert math.isnan(empty["med"]) and empty["n"] == 0


def test_histogram_violin_is_a_density_closed_at_the_data_range():
    edges = np.linspace(0, 1, 11)
    counts = np.array([0, 0, 3, 5, 0, 2, 0, 0, 0, 0])
    y, d = HS.histogram_violin(counts, edges)
    assert y[0] == pytest.approx(0.2) and y[-1] == pytest.approx(0.6)
    assert d[0] == 0 and d[-1] == 0
    np.testing.assert_allclose(y[1:-1], HS.bin_centers(edges)[2:6])
    assert np.sum(d[1:-1] * 0.1) == pytest.approx(1.0)
    np.testing.assert_allclose(d[1:-1], counts[2:6] / counts.sum() / 0.1)
    assert HS.histogram_violin(np.zeros(10), edges)[0].size == 0


def test_box_stats_are_drawable_by_bxp():
    edges = np.linspace(0, 1, 21)
    counts = np.histogram(np.random.default_rng(3).beta(2, 2, 200), bins=edges)[0]
    fig = Figure()
    ax = fig.add_subplot()
    parts = ax.bxp([HS.histogram_box_stats(counts, edges)])
    assert parts["medians"][0].get_ydata()[0] == pytest.approx(HS.histogram_quantile(counts, edges, 0.5))


def test_channel_order_and_dead_channels_against_the_channel_table():
    h = with_dead(synthetic_history(epochs=3), L2, [1, 6], 0.7)
    t = h.channels
    rows = t[(t.split == "test") & (t.layer == L2) & (t.epoch == 2)]
    means = rows[rows.statistic == "spatial_mean"].set_index("channel").value.sort_index().to_numpy()
    dead = rows[rows.statistic == "dead_fraction"].set_index("channel").value.sort_index().to_numpy()
    np.testing.assert_array_equal(h.channel_order("test", L2, 2, "mean sparsity"), np.argsort(-means, kind="stable"))
    np.testing.assert_array_equal(h.channel_order("test", L2, 2, "index"), np.arange(8))
    order = h.channel_order("test", L2, 2, "dead fraction")
    assert set(order[:2]) == {1, 6}
    assert list(dead[order]) == sorted(dead, reverse=True)
    mask = h.dead_channels("test", L2, 2)
    assert np.flatnonzero(mask).tolist() == [1, 6]
    assert not h.dead_channels("test", L1, 2).any()
    assert h.dead_channels(["train", "test"], L2, 2).sum() == 2
    with pytest.raises(ValueError, match="ordering"):
        h.channel_order("test", L2, 2, "random")


def test_timeline_frame_loss_minimum_alarm_and_heatmap(hist):
    frame = hist.layer_frame("test", [L1, L3], "spatial_mean")
    assert list(frame.columns) == [L1, L3] and frame.index.name == "epoch"
    epochs, values = oracle.wide(hist.layers, "test", "spatial_mean", [L1, L3])  # a loop over the tidy rows
    assert frame.index.tolist() == epochs
    np.testing.assert_array_equal(frame.to_numpy(), values)
    rows = [(int(e), v) for e, s, m, v in hist.metrics.itertuples(index=False) if (s, m) == ("test", "loss")]
    low = min(v for _, v in rows)
    assert hist.test_loss_minimum() == (min(e for e, v in rows if v == low), pytest.approx(low))
    assert History().test_loss_minimum() is None
    assert hist.alarm_epoch == 4
    h = History()
    for alarm in (None, 7):
        h.detection = None if alarm is None else detection(alarm)
        assert h.alarm_epoch == alarm
    nan_h = synthetic_history(nan_epoch=3)
    m = nan_h.layer_frame("test")
    assert 3 in m.index and m.loc[3].isna().all()  # the all-NaN epoch keeps its row
    assert nonfinite_epochs(m.T, axis="columns") == [3]
    assert nonfinite_epochs(m) == [3]
    with pytest.raises(ValueError, match="closest"):
        hist.layer_frame("test", ["block9.relu"])


def test_runs_helpers():
    a, b = synthetic_history(epochs=3), synthetic_history(epochs=3, layers=(L1, L3))
    runs = as_runs([a, b])
    assert list(runs) == ["synthetic-0", "synthetic-0 (2)"]
    assert common_layers({"a": a, "b": b}) == [L1, L3]
    with pytest.raises(TypeError, match="History"):
        as_runs({"a": a, "b": "not a run"})
    with pytest.raises(TypeError, match="dict"):
        as_runs(42)
    with pytest.raises(TypeError, match="single History"):
        as_runs(a)


# ================================================================== SparsityDistribution
def test_distribution_follows_the_controls(hist):
    w = SparsityDistribution(hist, layer=L2)
    assert w.epoch_slider.min == 0 and w.epoch_slider.max == 11 and w.epoch_slider.value == 11
    assert w.message == ""
    fig = w.to_figure()
    ax = fig.axes[0]
    assert L2 in ax.get_title() and "epoch 11" in ax.get_title()
    assert ax.get_ylabel() == "spatial sparsity (0 dense – 1 one unit)"
    assert ax.get_xlabel().startswith("channel")
    assert len([c for c in ax.collections if c.get_gid() == "violin:test"]) == 8
    raw = hist.spatial_hist[("test", L2)]  # (epochs, channels, bins), epochs as recorded
    means = {
        int(ch): v
        for e, s, name, ch, stat, v in hist.channels.itertuples(index=False)
        if (int(e), s, name, stat) == (11, "test", L2, "spatial_mean")
    }
    order = sorted(range(8), key=lambda ch: (-means[ch], ch))  # sparsest first, ties by index: by hand
    np.testing.assert_array_equal(w.data["counts"]["test"], raw[hist.hist_epochs[("test", L2)].index(11)][order])
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(c) for c in order]
    png = bytes(w.image.value)
    assert png.startswith(PNG)

    w.epoch_slider.value = 5
    assert bytes(w.image.value) != png and bytes(w.image.value).startswith(PNG)
    assert "epoch 5" in w.to_figure().axes[0].get_title()
    np.testing.assert_array_equal(
        np.sort(w.data["counts"]["test"], axis=0), np.sort(raw[hist.hist_epochs[("test", L2)].index(5)], axis=0)
    )

    w.order_dropdown.value = "index"
    labels = [t.get_text() for t in w.to_figure().axes[0].get_xticklabels()]
    assert labels == [str(c) for c in range(8)]

    w.layer_dropdown.value = L3
    assert L3 in w.to_figure().axes[0].get_title() and w.epoch_slider.value == 5

    w.kind_dropdown.value = "box"
    fig = w.to_figure()
    expected = [HS.histogram_box_stats(row, hist.bin_edges)["med"] for row in hist.histogram("test", L3, 5)]
    medians = sorted(
        line.get_ydata()[0]
        for line in fig.axes[0].get_lines()
        if len(line.get_ydata()) == 2 and line.get_ydata()[0] == line.get_ydata()[1] and line.get_color() == "#222222"
    )
    np.testing.assert_allclose(medians, sorted(expected))
    assert w.message == ""


def test_distribution_marks_dead_channels_in_every_kind():
    h = with_dead(synthetic_history(epochs=4), L2, [2, 5])
    w = SparsityDistribution(h, layer=L2, order="index")
    fig = w.to_figure()
    ax = fig.axes[0]
    assert "2 dead channels" in ax.get_title()
    violins = [c for c in ax.collections if c.get_gid() == "violin:test"]
    colors = [to_hex(v.get_facecolor()[0]) for v in violins]
    assert [i for i, c in enumerate(colors) if c == DEAD_COLOR] == [2, 5]
    red_ticks = [t.get_text() for t in ax.get_xticklabels() if to_hex(t.get_color()) == DEAD_COLOR]
    assert red_ticks == ["2", "5"]
    assert any("dead channel" in t.get_text() for t in ax.get_legend().get_texts())
    for kind in ("box", "ridge", "heatmap"):
        w.kind_dropdown.value = kind
        fig = w.to_figure()
        assert "2 dead channels" in titles(fig), kind
        assert w.message == "", kind
    # heatmap = channels × bins, each row the share of the channel's samples
    mesh = fig.axes[0].collections[0]
    counts = h.histogram("test", L2, 3)
    share = counts / counts.sum(1, keepdims=True)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(counts.shape), share)
    assert ("train + test", ("train", "test")) in w.split_buttons.options
    w.split_buttons.value = ("train", "test")
    fig = w.to_figure()
    assert len([a for a in fig.axes if a.get_title() in ("train", "test")]) == 2
    w.kind_dropdown.value = "violin"
    ax = w.to_figure().axes[0]
    assert "train vs test" in ax.get_title()
    assert {c.get_gid() for c in ax.collections} >= {"violin:train", "violin:test"}


def test_distribution_robustness_messages():
    w = SparsityDistribution(History())
    assert "no epochs" in w.message and bytes(w.image.value) == b"" and w._repr_png_().startswith(PNG)

    one = SparsityDistribution(synthetic_history(epochs=1))
    assert one.epoch_slider.value == 0 and one.message == "" and bytes(one.image.value).startswith(PNG)

    nan = SparsityDistribution(synthetic_history(nan_epoch=3), epoch=3)
    assert "No finite sparsity values" in nan.message
    nan.epoch_slider.value = 4
    assert nan.message == "" and bytes(nan.image.value).startswith(PNG)

    single = SparsityDistribution(synthetic_history(epochs=3, layers=("only",), channels=1))
    assert single.layer_dropdown.options == ("only",) and single.message == ""

    train_only = SparsityDistribution(synthetic_history(epochs=3, splits=("train",)))
    assert "'test' is not recorded" in train_only.message and train_only.split_buttons.value == "train"
    assert bytes(train_only.image.value).startswith(PNG)

    with pytest.raises(TypeError, match="History"):
        SparsityDistribution({"not": "a history"})
    with pytest.raises(ValueError, match="kind"):
        SparsityDistribution(synthetic_history(epochs=1), kind="pie")
    with pytest.raises(ValueError, match="closest"):
        SparsityDistribution(synthetic_history(epochs=1), layer="block9.relu")


def test_callbacks_route_errors_into_the_message():
    h = synthetic_history(epochs=3)
    w = SparsityDistribution(h)
    h.spatial_hist[("test", L1)] = np.ones((3, 8, 7))  # corrupt: 7 bins against 21 edges
    w.epoch_slider.value = 1  # must not raise
    assert w.message_level == "error" and "could not draw" in w.message
    assert "xaisparse-message" in w.message_html._dom_classes
    assert w.image.layout.display == "none"
    w.layer_dropdown.value = L2
    assert w.message == "" and w.image.layout.display is None


# ================================================================== SparsityTimeline / heatmap
def test_timeline_lines_equal_layer_series_and_markers(hist):
    w = SparsityTimeline(hist)
    fig = w.to_figure()
    ax = fig.axes[0]
    for layer in (L1, L2, L3):
        line = line_by_gid(fig, f"layer:{layer}")
        ser = hist.layer_series("test", layer, "spatial_mean")
        np.testing.assert_array_equal(line.get_xdata(), ser.index.to_numpy())
        np.testing.assert_array_equal(line.get_ydata(), ser.to_numpy())
    loss = line_by_gid(fig, "loss:test")
    np.testing.assert_array_equal(loss.get_ydata(), hist.metric("test", "loss").to_numpy())
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "spatial sparsity (0 dense – 1 one unit)"
    assert fig.axes[1].get_ylabel() == "loss"
    assert line_by_gid(fig, "alarm").get_xdata()[0] == 4
    best = int(hist.metric("test", "loss").idxmin())
    assert line_by_gid(fig, "minimum").get_xdata()[0] == best
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "sparsity alarm (epoch 4)" in legend and f"test-loss minimum (epoch {best})" in legend

    png = bytes(w.image.value)
    w.statistic_dropdown.value = "dead_fraction"
    fig = w.to_figure()
    assert fig.axes[0].get_ylabel().startswith("dead-map fraction")
    np.testing.assert_array_equal(
        line_by_gid(fig, f"layer:{L2}").get_ydata(), hist.layer_series("test", L2, "dead_fraction").to_numpy()
    )
    assert bytes(w.image.value) != png
    w.layers_select.value = (L3,)
    fig = w.to_figure()
    assert [l.get_gid() for l in fig.axes[0].get_lines() if str(l.get_gid()).startswith("layer:")] == [f"layer:{L3}"]
    w.split_buttons.value = "train"
    np.testing.assert_array_equal(
        line_by_gid(w.to_figure(), f"layer:{L3}").get_ydata(),
        hist.layer_series("train", L3, "dead_fraction").to_numpy(),
    )
    w.layers_select.value = ()
    assert "at least one layer" in w.message


def test_timeline_robustness():
    assert "no epochs" in SparsityTimeline(History()).message
    nan = SparsityTimeline(synthetic_history(nan_epoch=3))
    assert "epoch(s) [3]" in nan.message and bytes(nan.image.value).startswith(PNG)
    one = SparsityTimeline(synthetic_history(epochs=1))  # no detector result either
    assert one.message == "" and bytes(one.image.value).startswith(PNG)
    fig = one.to_figure()
    assert all(line.get_gid() != "alarm" for line in fig.axes[0].get_lines())
    assert line_by_gid(fig, "minimum").get_xdata()[0] == 0
    train_only = SparsityTimeline(synthetic_history(epochs=4, splits=("train",)), layers=[L1])
    assert "'test' is not recorded" in train_only.message
    assert line_by_gid(train_only.to_figure(), f"layer:{L1}").get_ydata().size == 4
    with pytest.raises(TypeError):
        SparsityTimeline([1, 2, 3])
    with pytest.raises(ValueError, match="statistic"):
        SparsityTimeline(synthetic_history(epochs=1), statistic="bogus")


def test_heatmap_draws_the_layer_table(hist):
    w = LayerEpochHeatmap(hist)
    fig = w.to_figure()
    ax = fig.axes[0]
    image = ax.get_images()[0].get_array()
    _, expected = oracle.wide(hist.layers, "test", "spatial_mean", [L1, L2, L3])
    np.testing.assert_allclose(np.ma.filled(image, np.nan), expected.T)
    assert [t.get_text() for t in ax.get_yticklabels()] == [L1, L2, L3]
    assert ax.get_xlabel() == "epoch"
    assert fig.axes[1].get_ylabel() == "spatial sparsity (0 dense – 1 one unit)"  # the colorbar
    png = bytes(w.image.value)
    w.split_buttons.value = "train"
    w.statistic_dropdown.value = "sample_mean"
    image = w.to_figure().axes[0].get_images()[0].get_array()
    np.testing.assert_allclose(
        np.ma.filled(image, np.nan), oracle.wide(hist.layers, "train", "sample_mean", [L1, L2, L3])[1].T
    )
    assert bytes(w.image.value) != png
    assert "no epochs" in LayerEpochHeatmap(History()).message
    nan = LayerEpochHeatmap(synthetic_history(nan_epoch=3))
    assert "grey" in nan.message
    assert np.ma.getmaskarray(nan.to_figure().axes[0].get_images()[0].get_array())[:, 3].all()


# ================================================================== RunComparison
def test_run_comparison_curves_per_run_and_missing_layer():
    a = synthetic_history(epochs=6, seed=0)
    b = synthetic_history(epochs=8, seed=1, layers=(L1, L2))
    w = RunComparison({"a": a, "b": b})
    assert w.layer_dropdown.options == (L1, L2)
    assert w.message == ""
    fig = w.to_figure()
    np.testing.assert_array_equal(line_by_gid(fig, "loss:a:test").get_ydata(), a.metric("test", "loss").to_numpy())
    np.testing.assert_array_equal(line_by_gid(fig, "loss:b:train").get_ydata(), b.metric("train", "loss").to_numpy())
    np.testing.assert_array_equal(line_by_gid(fig, "layer:b").get_ydata(), b.layer_series("test", L1).to_numpy())
    assert w.epoch_slider.max == 7 and w.epoch_slider.value == 5  # the last epoch both runs have
    assert set(w.data["pooled"]) == {"a", "b"}
    np.testing.assert_array_equal(w.data["pooled"]["a"], a.histogram("test", L1, 5).sum(0))
    png = bytes(w.image.value)
    w.epoch_slider.value = 7
    assert bytes(w.image.value) != png
    assert "no histogram" in w.message and "['a']" in w.message  # run a ends at epoch 5
    np.testing.assert_array_equal(w.data["pooled"]["b"], b.histogram("test", L1, 7).sum(0))
    w.epoch_slider.value = 3
    assert w.message == ""
    w.layer_dropdown.value = L2
    w.statistic_dropdown.value = "population_mean"
    w.kind_dropdown.value = "box"
    fig = w.to_figure()
    assert fig.axes[1].get_ylabel().startswith("population sparsity")
    assert "block2.relu · epoch 3" in fig.axes[2].get_title()
    np.testing.assert_array_equal(
        line_by_gid(fig, "layer:a").get_ydata(), a.layer_series("test", L2, "population_mean").to_numpy()
    )

    missing = RunComparison([a, b], layer=L3)
    assert "missing from run(s)" in missing.message and bytes(missing.image.value).startswith(PNG)
    with pytest.raises(TypeError):
        RunComparison("runs")
    with pytest.raises(TypeError):
        RunComparison({"a": a, "b": 1})


def test_comparison_wraps_its_panels_into_rows():
    """``plots.comparison(columns=2)``: loss and layer panels side by side, the distribution below
    across the page width; the panels hold the same lines as in one row."""
    runs = {"a": synthetic_history(epochs=6, seed=0), "b": synthetic_history(epochs=6, seed=1)}
    wide, wrapped = plots.comparison(runs), plots.comparison(runs, columns=2)
    spans = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.stop) for ax in wrapped.axes]
    assert spans == [(0, 1), (0, 2), (1, 2)]
    assert (wide.get_figwidth(), wrapped.get_figwidth()) == (14.0, 9.0)
    for gid in ("loss:a:test", "layer:b"):
        np.testing.assert_array_equal(line_by_gid(wrapped, gid).get_ydata(), line_by_gid(wide, gid).get_ydata())
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        plots.comparison(runs, columns=True)


@pytest.mark.parametrize("columns", [3, 2, 1])
def test_comparison_legend_fits_the_figure(columns):
    """Seven runs with long names (notebook 06's knobs): the figure-wide legend wraps into as many
    rows as it needs; after drawing, its box lies inside the figure, and every run is listed."""
    names = [
        "start",
        "4× the images (800)",
        "clean labels (noise 0)",
        "more noise (0.4)",
        "3× the width (24)",
        "dropout 0.5",
        "penalty λ=1",
    ]
    runs = {name: synthetic_history(epochs=4, seed=i) for i, name in enumerate(names)}
    fig = plots.comparison(runs, columns=columns)
    fig.draw_without_rendering()
    (legend,) = fig.legends
    box, page = legend.get_window_extent(), fig.bbox
    assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 and box.y1 <= page.y1
    assert [t.get_text() for t in legend.get_texts()] == names
    if columns < 3:  # the page-wide figure (9 in) wraps the legend into rows
        assert legend_rows(legend) > 1
    short = plots.comparison({"a": synthetic_history(epochs=4, seed=0), "b": synthetic_history(epochs=4, seed=1)})
    short.draw_without_rendering()
    assert legend_rows(short.legends[0]) == 1  # short names: one row


def legend_rows(legend) -> int:
    """Rows of a drawn legend: the distinct heights of its labels."""
    return len({round(t.get_window_extent().y0) for t in legend.get_texts()})


#: Width of the docs page's content column, where the static PNG of a widget is shown: furo's
#: 46em at 16 px (tests/test_docs.py measures the same in Chromium).
DOCS_PAGE_PX = 46 * 16


def _shown_text_pt(png: bytes, fig: Figure) -> float:
    """The smallest text of ``fig`` in pt as shown on the docs page from ``png`` (its rendering):
    a font of s pt is s·dpi/72 px in the PNG, shrunk by page/PNG width when the PNG is wider than the
    page, and 96 CSS px make 72 pt."""
    width_px = struct.unpack(">I", png[16:20])[0]  # the IHDR chunk's width
    dpi = width_px / fig.get_figwidth()
    scale = min(1.0, DOCS_PAGE_PX / width_px)
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text().strip()]
    assert len(texts) > 10  # titles, labels, tick labels, legend
    return min(t.get_fontsize() for t in texts) * dpi / 72 * scale * 72 / 96


def test_run_comparison_png_is_legible_at_the_page_width():
    """The widget's static PNG (what the docs show without a kernel) wraps its panels into rows:
    loss and layer side by side, the distribution below across the width; every text is at least
    8 pt where the PNG is shown at the page's width (the one wide row of three panels is not)."""
    runs = {"a": synthetic_history(epochs=6, seed=0), "b": synthetic_history(epochs=6, seed=1)}
    w = RunComparison(runs)
    fig = w.to_figure()
    fig.draw_without_rendering()  # constrained layout places the axes
    loss, layer, dist = (ax.get_position() for ax in fig.axes[:3])
    assert abs(loss.y0 - layer.y0) < 0.02 and loss.x1 < layer.x0  # one row of two
    assert dist.y1 < min(loss.y0, layer.y0) and dist.width > 1.5 * loss.width  # below, across the width
    assert _shown_text_pt(w._repr_png_(), fig) >= 8.0
    wide = RunComparison(runs, columns=3)
    assert _shown_text_pt(wide._repr_png_(), wide.to_figure()) < 8.0  # shrunk to the page: unreadable
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        RunComparison(runs, columns=0)


def tiny_net(seed: int):
    """Two conv blocks and a linear head on 1×8×8 inputs, initialised from ``seed`` (train mode)."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 3),
    )


def _legible_widget(name: str):
    """Each widget in its default view on small synthetic data or a tiny seeded CNN."""
    if name in ("ChannelInspector", "AttributionComparison"):
        torch = pytest.importorskip("torch")
        torch.manual_seed(0)
        images = torch.rand(7, 1, 8, 8)
        if name == "ChannelInspector":
            return ChannelInspector(tiny_net(0).eval(), images)
        pytest.importorskip("captum.attr")
        from xaisparse.widgets import AttributionComparison

        labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
        return AttributionComparison({"a": tiny_net(0).eval(), "b": tiny_net(1).eval()}, images, labels, n_steps=4)
    h = synthetic_history(seed=0)
    h.detection = detection(4)
    if name == "LiveDashboard":
        dash = LiveDashboard(total_epochs=3)
        dash.on_epoch_end(synthetic_history(epochs=3, seed=0))
        return dash
    if name == "RunComparison":
        return RunComparison({"a": synthetic_history(epochs=6, seed=0), "b": synthetic_history(epochs=6, seed=1)})
    return {
        "SparsityTimeline": SparsityTimeline,
        "LayerEpochHeatmap": LayerEpochHeatmap,
        "SparsityDistribution": SparsityDistribution,
    }[name](h)


@pytest.mark.parametrize(
    "name",
    [
        "SparsityTimeline",
        "LayerEpochHeatmap",
        "SparsityDistribution",
        "RunComparison",
        "ChannelInspector",
        "LiveDashboard",
        "AttributionComparison",
    ],
)
def test_every_widget_png_is_legible_at_the_page_width(name):
    """The static PNG the docs show without a kernel: its smallest text is at least 8 pt where the
    PNG is shown in the 736 px column (it is drawn, not a message figure)."""
    w = _legible_widget(name)
    assert w.message_level != "error" and bytes(w.image.value).startswith(PNG), w.message
    fig = w.to_figure()
    fig.draw_without_rendering()
    assert _shown_text_pt(w._repr_png_(), fig) >= 8.0


def test_run_comparison_robustness():
    single = RunComparison({"only": synthetic_history(epochs=2)})
    assert "only one run" in single.message
    empty = RunComparison({"a": History(), "b": History()})
    assert "None of the runs" in empty.message
    train_only = RunComparison({"a": synthetic_history(epochs=3, splits=("train",)), "b": synthetic_history(epochs=3)})
    assert "no test loss" in train_only.message
    train_only.split_buttons.value = "train"
    assert bytes(train_only.image.value).startswith(PNG)
    nan = RunComparison({"a": synthetic_history(nan_epoch=2, epochs=4), "b": synthetic_history(epochs=4)}, epoch=2)
    assert "no finite sparsity values" in nan.message


# ================================================================== ChannelInspector
@pytest.fixture(scope="module")
def tiny_cnn():
    torch = pytest.importorskip("torch")
    return tiny_net(0), torch.randn(6, 1, 8, 8)


def test_channel_inspector_titles_equal_independent_sparsity(tiny_cnn):
    torch = pytest.importorskip("torch")
    net, images = tiny_cnn
    net.train()
    net[3].eval()  # a mixed state that must come back exactly
    flags = [m.training for m in net.modules()]
    w = ChannelInspector(net, images, channel=2)
    assert w.layer_dropdown.options == ("1", "3") and w.channel_slider.max == 3 and w.message == ""
    assert [m.training for m in net.modules()] == flags
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    with torch.no_grad():
        reference = net[1](net[0](images)).numpy()

    def check(layer_out, channel):
        fig = w.to_figure()
        got = [
            float(re.search(r"s = ([0-9.]+)", t).group(1)) for t in (ax.get_title() for ax in fig.axes) if "s = " in t
        ]
        want = [oracle.sparsity_of_vector(layer_out[i, channel]) for i in w.images_select.value]
        np.testing.assert_allclose(got, want, atol=6e-4)
        assert f"channel {channel}" in titles(fig)

    check(reference, 2)
    png = bytes(w.image.value)
    w.channel_slider.value = 0
    assert bytes(w.image.value) != png
    w.images_select.value = (5, 1)
    check(reference, 0)
    w.layer_dropdown.value = "3"
    assert w.channel_slider.max == 5
    with torch.no_grad():
        deeper = net[3](net[2](net[1](net[0](images)))).numpy()
    check(deeper, w.channel_slider.value)
    w.images_select.value = ()
    assert "at least one image" in w.message


def test_channel_inspector_checkpoint_does_not_touch_the_model(tiny_cnn, tmp_path):
    torch = pytest.importorskip("torch")
    net, images = tiny_cnn
    before = {k: v.clone() for k, v in net.state_dict().items()}
    g = torch.Generator().manual_seed(3)
    other = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in before.items()}
    torch.save({"model": other, "epoch": 3}, tmp_path / "ckpt.pt")
    w = ChannelInspector(net, images, layer="1", checkpoint=tmp_path / "ckpt.pt")
    assert w.model is not net
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(w.model.state_dict()[k], other[k]), k
    plain = ChannelInspector(net, images, layer="1")
    assert not np.allclose(w.data["sparsity"], plain.data["sparsity"])
    torch.save(other, tmp_path / "plain.pt")  # a bare state_dict works too
    assert ChannelInspector(net, images, checkpoint=tmp_path / "plain.pt").message == ""
    with pytest.raises(FileNotFoundError):
        ChannelInspector(net, images, checkpoint=tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="nn.Module"):
        ChannelInspector("model", images)
    with pytest.raises(ValueError, match="closest"):
        ChannelInspector(net, images, layer="nope")


# ================================================================== LiveDashboard
def test_live_dashboard_updates_in_place_and_stops():
    from types import SimpleNamespace

    dash = LiveDashboard(total_epochs=3)
    assert "waiting for the first epoch" in dash.message and "waiting" in dash.status
    image = dash.image
    children = dash.children
    full = synthetic_history(epochs=3)
    seen = []
    for n in range(1, 4):
        h = synthetic_history(epochs=n)  # the same run, one epoch longer each time
        if n == 2:
            h.detection = detection(1)
        dash.on_epoch_end(h)
        assert dash.message == "" and dash.image is image and dash.children is children
        seen.append(bytes(dash.image.value))
        assert f"epoch {n - 1} / 3" in dash.status
        assert ("alarm at epoch 1" in dash.status) == (n == 2)
    assert all(v.startswith(PNG) for v in seen) and len(set(seen)) == 3
    assert "test loss" in dash.status and "no alarm" in dash.status
    fig = dash.to_figure()
    np.testing.assert_array_equal(line_by_gid(fig, f"layer:{L1}").get_ydata(), full.layer_series("test", L1).to_numpy())
    assert not dash.stop_requested
    dash.stop_button.click()
    assert dash.stop_requested and dash.stop_button.disabled and "stop requested" in dash.status
    dash.on_epoch_end("garbage")  # never raises
    assert dash.message_level == "error"
    dash.on_epoch_end(SimpleNamespace(history=full))  # a training state holding the history works too
    assert dash.message == "" and "epoch 2 / 3" in dash.status
    nan = LiveDashboard(synthetic_history(nan_epoch=1, epochs=3))
    assert "epoch(s) [1]" in nan.message
    with pytest.raises(TypeError):
        LiveDashboard(history=3)


def test_live_dashboard_follows_the_fit_callback_protocol():
    """What ``xaisparse.train.fit`` does with a callback: ``on_batch_end(state)`` after each step,
    ``on_epoch_end(history)`` after each epoch, then stop when ``stop_requested`` is true."""
    from types import SimpleNamespace

    dash = LiveDashboard()
    done = []
    for epoch in range(6):
        for batch in range(3):
            dash.on_batch_end(SimpleNamespace(epoch=epoch, epochs=5, batch=batch, batches=3, loss=0.5))
        dash.on_epoch_end(synthetic_history(epochs=epoch + 1))
        done.append(epoch)
        if epoch == 1:
            dash.stop_button.click()  # the user clicks during epoch 1
        if getattr(dash, "stop_requested", False):
            break
    assert done == [0, 1] and "epoch 1 / 5" in dash.status
    assert dash.message == "" and bytes(dash.image.value).startswith(PNG)
    dash.reset()
    assert not dash.stop_requested and not dash.stop_button.disabled


# ================================================================== static forms, imports
def test_static_forms_and_mimebundle(hist):
    before = plt.get_fignums()
    for w in (SparsityDistribution(hist), SparsityTimeline(History())):
        assert isinstance(w.to_figure(), Figure)
        png = w._repr_png_()
        assert png.startswith(PNG)
        bundle = w._repr_mimebundle_()
        assert base64.b64decode(bundle["image/png"]) == png
        assert "application/vnd.jupyter.widget-view+json" in bundle
        assert bundle["text/plain"].startswith(type(w).__name__)
        assert set(w._repr_mimebundle_(include=["image/png"])) == {"image/png"}
        assert len(w.children) == 3
    assert plt.get_fignums() == before == []


def test_imports_stay_light():
    code = (
        "import sys, xaisparse; assert 'ipywidgets' not in sys.modules and 'matplotlib' not in sys.modules; "
        "import xaisparse.widgets as w; assert 'torch' not in sys.modules, 'widgets imported torch'; "
        "assert set(w.__all__) >= {'SparsityDistribution', 'SparsityTimeline', 'LayerEpochHeatmap', "
        "'ChannelInspector', 'RunComparison', 'LiveDashboard'}"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_the_old_widget_name_still_works_with_a_warning():
    from xaisparse.widgets import PerplexityDistribution

    with pytest.warns(DeprecationWarning, match="SparsityDistribution"):
        w = PerplexityDistribution(synthetic_history(epochs=2))
    assert isinstance(w, SparsityDistribution) and w._describe().startswith("PerplexityDistribution(")
