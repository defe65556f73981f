"""xaisparse.plots.attribution: the drawn numbers against NumPy/SciPy one-shot computations,
hand-built channel tables (ground truth) and Captum's raw output."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.stats
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from xaisparse import plots
from xaisparse.plots._style import DEAD_COLOR
from xaisparse.plots.attribution import IRRELEVANT_COLOR

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

from torch import nn  # noqa: E402

from xaisparse.attribution import ChannelTable, attribution_map, channel_table, compare_models  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Input Tensor 0 did not already require gradients"),
]


def map_image(fig: Figure, row: str, j: int):
    for ax in fig.axes:
        for im in ax.get_images():
            if im.get_gid() == f"map:{row}:{j}":
                return im
    raise AssertionError(f"no map image {row!r} {j}")


def artist_by_gid(ax, gid: str):
    found = [c for c in [*ax.collections, *ax.patches] if c.get_gid() == gid]
    assert found, f"no artist with gid {gid!r}"
    return found


def net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(320, 3),
    ).eval()


# -- display maps ---------------------------------------------------------------------------------


def test_display_maps_follow_captums_sign_vocabulary():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 2, 4, 5))
    np.testing.assert_allclose(plots.display_maps(a), attribution_map(torch.from_numpy(a)).numpy())
    np.testing.assert_allclose(plots.display_maps(a, "all"), a[:, 0] + a[:, 1])
    np.testing.assert_allclose(plots.display_maps(a, "positive"), np.clip(a[:, 0] + a[:, 1], 0, None))
    np.testing.assert_allclose(plots.display_maps(a, "negative"), np.clip(-(a[:, 0] + a[:, 1]), 0, None))
    np.testing.assert_allclose(plots.display_maps(torch.from_numpy(a[:, 0])), np.abs(a[:, 0]))  # (N, H, W)
    assert plots.display_maps(a[:, 0, 0]).shape == (3, 1, 5)  # (N, F): one row of pixels
    with pytest.raises(ValueError, match="sign must be one of"):
        plots.display_maps(a, "abs")
    with pytest.raises(ValueError, match=r"shape \(N, C, H, W\)"):
        plots.display_maps(np.zeros(3))


# -- attribution_maps -----------------------------------------------------------------------------


def test_maps_draw_captums_maps_over_the_inputs_with_percentile_scales():
    model = net()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 0])
    raw = {
        "saliency": captum_attr.Saliency(model).attribute(x, target=y),
        "integrated gradients": captum_attr.IntegratedGradients(model).attribute(x, target=y, n_steps=8),
    }
    data: dict = {}
    notes: list[str] = []
    fig = plots.attribution_maps(
        x, raw, sparsity={"saliency": [0.1, 0.2, 0.3, 0.4]}, captions=list("abcd"), notes=notes, data=data
    )
    assert notes == [] and data["rows"] == ["saliency", "integrated gradients"] and data["cmap"] == "viridis"
    for row, a in raw.items():
        maps = np.abs(a.detach().double().numpy()).sum(1)
        np.testing.assert_allclose(data["maps"][row], maps)
        for j in range(4):
            im = map_image(fig, row, j)
            np.testing.assert_allclose(np.asarray(im.get_array()), maps[j])
            assert im.get_clim() == (0.0, pytest.approx(np.percentile(maps[j], 98.0)))
            assert im.get_cmap().name == "viridis"
    input_axes = fig.axes[:4]
    assert [ax.get_title() for ax in input_axes] == list("abcd")
    for ax, img in zip(input_axes, x):
        np.testing.assert_allclose(np.asarray(ax.get_images()[0].get_array()), img[0].numpy())  # the input itself
    titles = [ax.get_title() for ax in fig.axes[4:8]]
    assert titles == ["s = 0.100", "s = 0.200", "s = 0.300", "s = 0.400"]
    assert "integrated\ngradients" in fig.axes[8].get_ylabel()

    # signed maps: diverging colour map, symmetric limits; one scale per image shared by the rows
    fig = plots.attribution_maps(x, raw, sign="all", scale="image", show_inputs=False, data=data)
    for j in range(4):
        both = np.concatenate([a.detach().double().numpy()[j].sum(0).ravel() for a in raw.values()])
        top = np.percentile(np.abs(both), 98.0)
        for row in raw:
            im = map_image(fig, row, j)
            assert im.get_cmap().name == "RdBu_r"
            assert im.get_clim() == (pytest.approx(-top), pytest.approx(top))
    assert len(fig.axes) == 2 * 4 + 1  # no input row, one colour bar


def test_maps_bad_states_and_notes():
    x = np.random.default_rng(1).random((14, 1, 4, 4))
    a = np.random.default_rng(2).normal(size=(14, 1, 4, 4))
    a[3] = 0.0  # a dead map
    notes: list[str] = []
    data: dict = {}
    fig = plots.attribution_maps(x, {"m": a}, sparsity={"m": np.ones(14)}, notes=notes, data=data)
    assert any("first 12" in n for n in notes) and any("no attribution at all" in n for n in notes)
    assert data["maps"]["m"].shape == (12, 4, 4)
    assert to_hex(fig.axes[12 + 3].title.get_color()) == DEAD_COLOR
    with pytest.raises(plots.NoData, match="at least one model"):
        plots.attribution_maps(x, {})
    with pytest.raises(plots.NoData, match="at least one image"):
        plots.attribution_maps(x[:0], {"m": a[:0]})
    with pytest.raises(ValueError, match="holds 14 maps for 3 images"):
        plots.attribution_maps(x[:3], {"m": a})
    with pytest.raises(TypeError, match="dict"):
        plots.attribution_maps(x, [a])
    with pytest.raises(ValueError, match="scale"):
        plots.attribution_maps(x, {"m": a}, scale="row")


# -- attribution_distributions --------------------------------------------------------------------


@pytest.fixture(scope="module")
def comparison():
    torch.manual_seed(3)
    data = [(torch.rand(10, 1, 8, 8), torch.randint(0, 3, (10,))) for _ in range(2)]
    return compare_models({"a": net(0), "b": net(1)}, data, n_steps=8, progress=False)


def test_distributions_draw_the_per_image_values_and_scipys_paired_test(comparison):
    data: dict = {}
    notes: list[str] = []
    fig = plots.attribution_distributions(comparison, "sparsity", notes=notes, data=data)
    assert notes == []
    per = comparison.per_image
    va = per[per.model == "a"].sort_values("sample").sparsity.to_numpy()
    vb = per[per.model == "b"].sort_values("sample").sparsity.to_numpy()
    ax_dist, ax_pair, ax_rho = fig.axes
    np.testing.assert_allclose(artist_by_gid(ax_dist, "values:0")[0].get_offsets()[:, 1], va)
    np.testing.assert_allclose(artist_by_gid(ax_dist, "values:1")[0].get_offsets()[:, 1], vb)
    assert len(artist_by_gid(ax_dist, "violin:0")) == 1
    np.testing.assert_allclose(artist_by_gid(ax_pair, "paired")[0].get_offsets(), np.column_stack([va, vb]))
    p = scipy.stats.wilcoxon(vb, va).pvalue
    assert f"Wilcoxon signed-rank p = {p:.2g}" in ax_pair.get_title()
    assert f"median b − a = {np.median(vb - va):+.3f}" in ax_pair.get_title()
    assert f"{int((vb > va).sum())} above the diagonal" in ax_pair.get_title()
    rho = comparison.similarity.map_spearman.to_numpy()
    heights = [patch.get_height() for patch in ax_rho.patches]
    np.testing.assert_array_equal(heights, np.histogram(rho, bins=np.linspace(-1, 1, 41))[0])
    assert f"median {np.median(rho):.2f}" in ax_rho.get_title()
    assert ax_dist.get_ylabel().startswith("attribution sparsity")

    plots.attribution_distributions(comparison, "gini", "box", data=data)
    np.testing.assert_allclose(data["values"]["b"], per[per.model == "b"].sort_values("sample").gini)


def test_distributions_bad_states(comparison):
    import copy

    flat = copy.deepcopy(comparison)
    flat.per_image["sparsity"] = 0.5  # constant: no KDE, boxes instead, and no error
    fig = plots.attribution_distributions(flat)
    assert not [c for c in fig.axes[0].collections if str(c.get_gid()).startswith("violin")]
    flat.per_image["sparsity"] = np.nan
    with pytest.raises(plots.NoData, match="No finite sparsity"):
        plots.attribution_distributions(flat)
    with pytest.raises(TypeError, match="ModelComparison"):
        plots.attribution_distributions(comparison.per_image)
    with pytest.raises(ValueError, match="statistic must be one of"):
        plots.attribution_distributions(comparison, "spatial_mean")


# -- channel_importance ---------------------------------------------------------------------------


def hand_table() -> ChannelTable:
    """Six channels with known values: 1 is dead but important, 4 alive but irrelevant, 5 dead and unimportant."""
    channels = pd.DataFrame(
        {
            "layer": "conv",
            "channel": np.arange(6),
            "sparsity": [0.2, 0.9, 0.4, 0.6, 0.3, 1.0],
            "dead_fraction": [0.0, 0.8, 0.1, 0.0, 0.0, 1.0],
            "gradcam": [0.5, -2.0, 1.0, 0.2, 0.01, 0.0],
            "conductance": [0.4, 1.5, -0.8, 0.1, 0.0, 0.0],
            "ablation": [0.3, 3.0, 0.9, -0.6, 0.02, 0.0],
            "dead_but_important": [False, True, False, False, False, False],
            "alive_but_irrelevant": [False, False, False, False, True, False],
        }
    )
    rows = []
    for act in ("sparsity", "dead_fraction"):
        for imp in ("gradcam", "conductance", "ablation"):
            res = scipy.stats.spearmanr(channels[act], channels[imp].abs())
            rows.append({"activation": act, "importance": imp, "rho": res.statistic, "pvalue": res.pvalue, "n": 6})
    return ChannelTable("conv", channels, pd.DataFrame(rows), images=20, thresholds={"dead_threshold": 0.5})


def test_channel_view_draws_the_table_sorted_and_flags_highlighted():
    table = hand_table()
    ch = table.channels
    data: dict = {}
    fig = plots.channel_importance(table, "ablation", data=data)
    ax_sc, ax_imp, ax_act = fig.axes
    np.testing.assert_allclose(
        artist_by_gid(ax_sc, "channels")[0].get_offsets(), np.column_stack([ch.sparsity, ch.ablation.abs()])
    )
    order = [1, 2, 3, 0, 4, 5]  # |ablation| descending (ties keep index order)
    assert [t.get_text() for t in ax_imp.get_yticklabels()] == [str(c) for c in order]
    bars = artist_by_gid(ax_imp, "importance")
    np.testing.assert_allclose([b.get_width() for b in bars], ch.ablation.to_numpy()[order])
    np.testing.assert_allclose(
        [b.get_width() for b in artist_by_gid(ax_act, "sparsity")], ch.sparsity.to_numpy()[order]
    )
    colors = {t.get_text(): to_hex(t.get_color()) for t in ax_imp.get_yticklabels()}
    assert colors["1"] == DEAD_COLOR and colors["5"] == DEAD_COLOR and colors["4"] == IRRELEVANT_COLOR
    assert colors["0"] == to_hex("black")
    faces = [to_hex(c) for c in artist_by_gid(ax_sc, "channels")[0].get_facecolors()]
    assert faces[1] == DEAD_COLOR and faces[4] == IRRELEVANT_COLOR and faces[5] == "#ffffff"
    rho = scipy.stats.spearmanr(ch.sparsity, ch.ablation.abs()).statistic
    assert f"Spearman ρ = {rho:+.2f}" in ax_sc.get_title()
    assert data["flags"] == {"dead_but_important": [1], "alive_but_irrelevant": [4]}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "dead but important (1)" in legend and any(t.endswith("0.5): 1") for t in legend)

    fig = plots.channel_importance(
        table, "gradcam", sort="sparsity", top=3, activation="dead_fraction", title="m0", data=data
    )
    assert [t.get_text() for t in fig.axes[1].get_yticklabels()] == ["5", "1", "3"]  # by sparsity, the first 3
    np.testing.assert_allclose(data["shown"].gradcam, ch.gradcam.to_numpy()[[5, 1, 3]])
    np.testing.assert_allclose(data["x"], ch.dead_fraction)
    assert fig._suptitle.get_text().startswith("m0 · channel table of conv on 20 images")


def test_channel_view_of_a_real_table_and_bad_states():
    x = torch.rand(6, 1, 8, 8)
    table = channel_table(net(), [(x, torch.tensor([0, 1, 2, 0, 1, 2]))], "3", n_steps=4, progress=False)
    notes: list[str] = []
    data: dict = {}
    plots.channel_importance(table, "conductance", top=2, notes=notes, data=data)
    assert any("5 channels; the first 2" in n for n in notes)
    want = table.channels.conductance.abs().sort_values(ascending=False, kind="stable").index[:2]
    assert data["shown"].index.tolist() == want.tolist()
    empty = ChannelTable("x", table.channels.iloc[:0], table.correlations, 0)
    with pytest.raises(plots.NoData, match="no channels"):
        plots.channel_importance(empty)
    with pytest.raises(TypeError, match="ChannelTable"):
        plots.channel_importance(table.channels)
    with pytest.raises(ValueError, match="importance must be one of"):
        plots.channel_importance(table, "shap")
    with pytest.raises(ValueError, match="sort must be one of"):
        plots.channel_importance(table, sort="rank")


def test_no_pyplot_state_and_titles_are_plain_numbers(comparison):
    before = plt.get_fignums()
    fig = plots.attribution_distributions(comparison)
    assert isinstance(fig, Figure) and plt.get_fignums() == before == []
    assert re.search(r"medians\na: [0-9.]+\nb: [0-9.]+", fig.axes[0].get_title())


@pytest.mark.parametrize(("columns", "rows"), [(3, 1), (2, 2), (1, 3)])
def test_distributions_wrap_their_panels_into_rows(comparison, columns, rows):
    """``columns`` panels to a row: the same three panels, page-wide when they wrap."""
    fig = plots.attribution_distributions(comparison, columns=columns)
    tops = sorted({round(ax.get_subplotspec().rowspan.start) for ax in fig.axes})
    assert len(fig.axes) == 3 and tops == list(range(rows))
    assert ("paired" in fig.axes[1].get_title()) and fig.axes[2].get_xlabel() == "ρ over the pixels"
    width = fig.get_figwidth()
    assert width == 13.5 if rows == 1 else width == 9.0
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        plots.attribution_distributions(comparison, columns=0)


def test_channel_view_wraps_the_scatter_above_the_bars():
    """``columns=2``: the scatter across the page width on top, the two bar panels below it; the
    same artists as in the wide row."""
    table = hand_table()
    wide, wrapped = plots.channel_importance(table), plots.channel_importance(table, columns=2)
    spans = [(ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start) for ax in wrapped.axes]
    assert spans == [(0, 0), (1, 0), (1, 1)] and wrapped.axes[0].get_subplotspec().colspan.stop == 2
    assert (wide.get_figwidth(), wrapped.get_figwidth()) == (13.5, 9.0)
    for i, gid in ((0, "channels"), (1, "importance"), (2, "sparsity")):
        got, want = artist_by_gid(wrapped.axes[i], gid), artist_by_gid(wide.axes[i], gid)
        assert len(got) == len(want) > 0
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        plots.channel_importance(table, columns=-1)
