"""Tests of ``xaisparse.widgets.OverfittingPlayground``, driven in plain pytest: set the knobs'
``.value``s, train with tiny settings, read the figure and the History back, and compare the run
with the same training done directly through ``load_digits_dataset`` + ``SmallCNN`` + ``fit``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.test_widgets import PNG, line_by_gid
from xaisparse.data import load_digits_dataset
from xaisparse.models import SmallCNN
from xaisparse.penalty import SparsityPenalty
from xaisparse.train import fit
from xaisparse.widgets import KNOB_RANGES, OverfittingPlayground

TINY = {"train_size": 40, "label_noise": 0.25, "width": 2, "epochs": 2, "weight": 0.5}


@pytest.fixture(scope="module")
def trained():
    """One tiny run through the knobs (set by ``.value``), with every redraw's PNG recorded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pg = OverfittingPlayground(probe_size=64, batch_size=16)
        for name, value in TINY.items():
            getattr(pg, name).value = value
        pngs: list[bytes] = []
        pg.image.observe(lambda change: pngs.append(bytes(change["new"])), names="value")
        history = pg.train()
        yield pg, history, pngs
    finally:
        torch.set_num_threads(before)


def test_knobs_are_sliders_with_the_documented_ranges():
    pg = OverfittingPlayground(train_size=300, label_noise=0.1, width=4, epochs=12, weight=0.3)
    assert pg.settings == {"train_size": 300, "label_noise": 0.1, "width": 4, "epochs": 12, "weight": 0.3}
    for name, (lo, hi, _) in KNOB_RANGES.items():
        knob = getattr(pg, name)
        assert (knob.min, knob.max) == (lo, hi)
        assert knob in pg.knob_box.children
    assert pg.train_button in pg.knob_box.children and pg.stop_button in pg.controls.children
    assert pg.message == "Set the knobs and press Train." and not pg.runs
    assert pg._repr_png_().startswith(PNG)  # a static image even before any run


def test_train_uses_the_knob_values_and_redraws_every_epoch(trained):
    pg, history, pngs = trained
    assert pg.runs == [history] and pg.history is history
    assert history.epochs == [0, 1, 2]
    assert history.config["playground"] == TINY
    assert history.config["penalty"]["weight"] == 0.5
    # one redraw per measured epoch (epoch 0 is the untrained model), each a new PNG
    drawn = [p for p in pngs if p]
    assert pg.updates == len(history.epochs) == len(drawn) == len(set(drawn))
    assert all(p.startswith(PNG) for p in drawn) and drawn[-1] == bytes(pg.image.value)
    assert pg.message == "" and "epoch 2 / 2" in pg.status and not pg.train_button.disabled


def test_the_figure_shows_the_runs_own_numbers(trained):
    pg, history, _ = trained
    fig = pg.to_figure()
    assert fig.axes[0].get_title().startswith("epoch 2:")
    for layer in history.layer_names:
        np.testing.assert_array_equal(
            line_by_gid(fig, f"layer:{layer}").get_ydata(), history.layer_series("test", layer).to_numpy()
        )
    for split in ("train", "test"):
        np.testing.assert_array_equal(
            line_by_gid(fig, f"loss:{split}").get_ydata(), history.metric(split, "loss").to_numpy()
        )
    final = history.metric("test", "loss").iloc[-1]
    assert f"test loss {final:.4g}" in pg.status


def test_the_run_is_the_same_as_training_directly(trained):
    """The independent path: the same data, model, penalty and seed through the library by hand."""
    _, history, _ = trained
    torch.set_num_threads(1)
    data = load_digits_dataset(size=16, seed=0, train_subset=40, label_noise=0.25)
    assert len(data.train) == 40 and data.info["flipped_count"] == 10
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10, width=2, image_size=16)
    direct = fit(
        model,
        data.train,
        data.test,
        epochs=2,
        lr=2e-3,
        batch_size=16,
        probe_size=64,
        penalty=SparsityPenalty(model, weight=0.5),
        seed=0,
        progress=False,
    )
    for split in ("train", "test"):
        np.testing.assert_allclose(history.metric(split, "loss"), direct.metric(split, "loss"), rtol=1e-6)
    np.testing.assert_allclose(history.layer_frame("test"), direct.layer_frame("test"), rtol=1e-6)


def test_zero_weight_trains_without_a_penalty():
    torch.set_num_threads(1)
    pg = OverfittingPlayground(train_size=20, width=1, epochs=1, weight=0.0, probe_size=32)
    history = pg.train(live=False)
    assert pg.updates == 1 and pg.to_figure().axes[0].get_title().startswith("epoch 1:")
    assert history.config["penalty"] is None and "penalty" not in set(history.metrics.metric)


@pytest.mark.parametrize(
    ("knobs", "error", "match"),
    [
        ({"train_size": 5}, ValueError, r"train_size must be an int >= 20, got 5"),
        ({"train_size": 5000}, ValueError, r"train_size must be an int <= 1257"),
        ({"label_noise": 1.0}, ValueError, r"label_noise must be in \[0, 0.9\], got 1.0"),
        ({"width": 0}, ValueError, r"width must be an int >= 1"),
        ({"epochs": 2.5}, TypeError, r"epochs must be an int, got float 2.5"),
        ({"weight": "big"}, TypeError, r"weight must be"),
        ({"weight": float("nan")}, ValueError, r"weight must be a finite number"),
        ({"lambda": 0.1}, ValueError, r"unknown knob\(s\) \['lambda'\]: the knobs are \['train_size'"),
    ],
)
def test_bad_knob_values_are_clear_errors_and_change_nothing(knobs, error, match):
    pg = OverfittingPlayground()
    before = pg.settings
    with pytest.raises(error, match=match):
        pg.train(**{"epochs": 1, **knobs})
    assert pg.settings == before and not pg.runs
    if "lambda" not in knobs:  # the constructor checks its starting values the same way
        with pytest.raises(error, match=match):
            OverfittingPlayground(**knobs)


def test_a_failing_click_becomes_a_message_not_a_traceback():
    pg = OverfittingPlayground(train_size=20, width=1, epochs=1)
    pg.lr = float("nan")  # fit rejects it
    pg.train_button.click()
    assert pg.message_level == "error" and pg.message.startswith("could not train:")
    assert not pg.runs and not pg.train_button.disabled
