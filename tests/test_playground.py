"""Tests of ``xaisparse.widgets.OverfittingPlayground``, driven in plain pytest: set the knobs'
``.value``s, train tiny runs in the background thread, and check

* that a run is the same as training directly through ``load_digits_dataset`` + ``SmallCNN`` +
  ``fit`` (an independent path), and that its settings string reproduces it bit for bit;
* Stop within one batch, Pause/Step by exactly one epoch — without timing anything: a batch
  hook holds the training thread at a chosen batch until the test has pressed the button;
* knob changes between epochs, the settings string's round trip and its errors, the knobs'
  ranges, the load box, Reset, and that failures become messages.
"""

from __future__ import annotations

import html
import threading

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.test_widgets import PNG, _shown_text_pt, line_by_gid
from xaisparse import plots
from xaisparse.data import load_digits_dataset
from xaisparse.models import SmallCNN
from xaisparse.penalty import SparsityPenalty
from xaisparse.train import fit
from xaisparse.widgets import KNOB_RANGES, OverfittingPlayground, PlaygroundSettings
from xaisparse.widgets.playground import PlaygroundRun
from xaisparse.widgets.playground.settings import LIVE_KNOBS

TINY = {"train_size": 40, "label_noise": 0.25, "width": 2, "epochs": 2, "weight": 0.5, "batch_size": 16}
BATCHES = 3  # 40 training images in batches of 16
WAIT = 300  # seconds: only a guard against a hang, never a measured duration


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(**knobs) -> OverfittingPlayground:
    return OverfittingPlayground(**{**TINY, **knobs}, probe_size=64)


def same_history(a, b) -> None:
    """Bit-for-bit equal measurements (the run's wall times may differ)."""
    for kind in ("metrics", "layers", "channels"):
        pd.testing.assert_frame_equal(a.to_dataframe(kind), b.to_dataframe(kind), check_exact=True)
    assert sorted(a.spatial_hist) == sorted(b.spatial_hist)
    for key in a.spatial_hist:
        np.testing.assert_array_equal(a.spatial_hist[key], b.spatial_hist[key])
        np.testing.assert_array_equal(a.population_hist[key], b.population_hist[key])
    assert a.alarm_epoch == b.alarm_epoch


@pytest.fixture(scope="module")
def trained():
    """One tiny run trained through the knobs (set by ``.value``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pg = OverfittingPlayground(probe_size=64)
        for name, value in TINY.items():
            getattr(pg, name).value = value
        history = pg.train()
        yield pg, history
    finally:
        torch.set_num_threads(before)


class Gate:
    """A batch hook that holds the training thread at ``(epoch, batch)`` until ``release()``."""

    def __init__(self, epoch: int, batch: int, action=None):
        self.at, self.action = (epoch, batch), action
        self.reached, self.go = threading.Event(), threading.Event()
        self.after = 0  # batches trained after the gate opened

    def __call__(self, run, state) -> None:
        if self.reached.is_set():
            self.after += 1
        elif (state.epoch, state.batch) == self.at:
            if self.action is not None:
                self.action()
            self.reached.set()
            assert self.go.wait(WAIT), "the test never released the gate"

    def release(self) -> None:
        self.go.set()


# ---------------------------------------------------------------------------- knobs and views
def test_knobs_are_controls_with_the_documented_ranges():
    pg = OverfittingPlayground(train_size=300, label_noise=0.1, width=4, epochs=12, weight=0.3)
    assert pg.settings == PlaygroundSettings(train_size=300, label_noise=0.1, width=4, epochs=12, weight=0.3)
    for name in ("label_noise", "width", "epochs", "dropout", "weight_decay", "weight"):
        lo, hi, _ = KNOB_RANGES[name]
        assert (getattr(pg, name).min, getattr(pg, name).max) == (lo, hi), name
    assert (pg.lr.min, pg.lr.max) == (-4, -1)  # a log slider: 1e-4 .. 1e-1
    assert pg.train_size.max == 1257  # the digits' training images
    pg.dataset.value = "mnist"
    assert pg.train_size.max == 3500 and pg.settings.dataset == "mnist"
    for button in (pg.train_button, pg.pause_button, pg.step_button, pg.stop_button, pg.reset_button):
        assert button in pg.controls.children
    assert not pg.train_button.disabled and pg.stop_button.disabled and pg.pause_button.disabled
    assert pg.message == "Set the knobs and press Train." and not pg.runs
    assert pg._repr_png_().startswith(PNG)  # a static image even before any run
    assert "task loss only" in pg.loss_html.value and "not part of the plotted losses" in pg.loss_html.value


def test_train_uses_the_knobs_and_draws_every_view(trained):
    pg, history = trained
    assert pg.runs == [history] and pg.history is history
    assert history.epochs == [0, 1, 2]
    settings = PlaygroundSettings(**TINY, probe_size=64)
    assert history.config["playground"] == settings.to_string() == pg.settings_text.value
    assert history.config["penalty"]["weight"] == 0.5
    assert history.outcome.stopped_early_at is None and history.detection is not None
    for name, image in pg.images.items():
        assert bytes(image.value).startswith(PNG), name
    assert pg.updates >= 1 and pg.message == ""
    assert "finished" in pg.status and "epoch 2 / 2" in pg.status and not pg.train_button.disabled
    table = pg.table()
    assert table.index.tolist() == ["run 1"] and table.at["run 1", "settings"] == settings.to_string()
    assert table.at["run 1", "status"] == "finished" and int(table.at["run 1", "last epoch"]) == 2
    assert html.escape(settings.to_string()) in pg.table_html.value


def test_the_views_show_the_runs_own_numbers(trained):
    pg, history = trained
    fig = pg.to_figure()
    for split in ("train", "test"):
        np.testing.assert_array_equal(
            line_by_gid(fig, f"loss:{split}").get_ydata(), history.metric(split, "loss").to_numpy()
        )
    for layer in history.layer_names:
        np.testing.assert_array_equal(
            line_by_gid(fig, f"layer:{layer}").get_ydata(), history.layer_series("test", layer).to_numpy()
        )
    maps = pg.run.snapshot.maps
    assert maps.layers == history.layer_names and maps.maps[maps.layers[0]].shape[0] == pg.n_images
    assert pg.run.snapshot.map_epochs == history.epochs
    assert pg.channel_choice.max == maps.maps[pg.layer_choice.value].shape[1] - 1
    assert pg.figure("maps").get_suptitle().startswith("epoch 2: feature maps of a test image of digit 0")
    page = pg.figure("curves", columns=2)  # for a document: two panels to a row
    assert len({round(ax.get_position().y0, 3) for ax in page.axes[:3]}) == 2
    assert _shown_text_pt(plots.figure_png(page), page) >= 8.0  # legible on the docs page
    wide = pg.figure("curves")
    assert _shown_text_pt(plots.figure_png(wide), wide) < 8.0  # the app's one wide row, shrunk to the page
    pg.columns = 2  # the playground's own default for its curves (OverfittingPlayground(columns=2))
    try:
        assert len({round(ax.get_position().y0, 3) for ax in pg.figure("curves").axes[:3]}) == 2
    finally:
        pg.columns = 3
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        OverfittingPlayground(columns=0)
    with pytest.raises(ValueError, match="columns must be an int >= 1"):
        pg.figure("curves", columns=0)
    test = load_digits_dataset(size=16, seed=0, train_subset=40, label_noise=0.25).test
    labels = test.tensors[1].tolist()
    assert [labels[i] for i in pg.run.image_index] == [0, 1, 2, 3]  # "digit k" is a test image of digit k
    assert pg.run.image_index == [labels.index(k) for k in range(4)]  # the first of each
    np.testing.assert_array_equal(maps.images, torch.stack([test[i][0] for i in pg.run.image_index]).numpy())


def test_the_run_is_the_same_as_training_directly(trained):
    """The independent path: the same data, model, penalty and seed through the library by hand."""
    _, history = trained
    data = load_digits_dataset(size=16, seed=0, train_subset=40, label_noise=0.25)
    assert len(data.train) == 40 and data.info["flipped_count"] == 10
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10, width=2, image_size=16)  # no dropout modules at all
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
        np.testing.assert_array_equal(history.metric(split, "loss"), direct.metric(split, "loss"))
    np.testing.assert_array_equal(history.layer_frame("test"), direct.layer_frame("test"))


def test_zero_weight_trains_exactly_as_without_a_penalty():
    pg = tiny(weight=0.0, epochs=1)
    history = pg.train(live=False)
    data = load_digits_dataset(size=16, seed=0, train_subset=40, label_noise=0.25)
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, num_classes=10, width=2, image_size=16)
    direct = fit(model, data.train, data.test, epochs=1, lr=2e-3, batch_size=16, probe_size=64, seed=0, progress=False)
    np.testing.assert_array_equal(history.metric("test", "loss"), direct.metric("test", "loss"))
    assert history.metric("train", "penalty").tolist() == [0.0]  # recorded, and exactly zero


# ---------------------------------------------------------------------------- reproducibility
def test_the_settings_string_reproduces_a_run_bit_for_bit_with_its_changes():
    pg = tiny(epochs=3)
    pg.step_button.click()  # a fresh run that pauses after epoch 1
    run = pg.run
    assert run.wait_for(lambda r: r.state == "paused", WAIT)
    pg.weight.value, pg.dropout.value, pg.lr.value = 1.0, 0.3, 0.005  # while paused
    assert run.pending == {"weight": 1.0, "dropout": 0.3, "lr": 0.005}
    pg.pause_button.click()  # "Resume"
    assert pg.wait(WAIT) and run.state == "finished"
    assert run.changes == [(1, "lr", 0.002, 0.005), (1, "dropout", 0.0, 0.3), (1, "weight", 0.5, 1.0)]
    text = run.history.config["playground"]
    assert text.endswith("&at1=lr:0.005,dropout:0.3,lam:1.0")
    again = OverfittingPlayground.from_settings(text)
    assert again.settings.changes == ((1, "lr", 0.005), (1, "dropout", 0.3), (1, "weight", 1.0))
    same_history(again.train(), run.history)
    # the changes did something: the run without them differs after epoch 1
    plain = tiny(epochs=3).train(live=False)
    np.testing.assert_array_equal(plain.metric("test", "loss")[:2], run.history.metric("test", "loss")[:2])
    assert not np.array_equal(plain.metric("test", "loss")[2:], run.history.metric("test", "loss")[2:])
    assert line_by_gid(pg.to_figure(), "change:1") is not None  # marked on the timeline


def test_same_seed_same_history_other_seed_another():
    a, b = tiny(epochs=1).train(live=False), tiny(epochs=1).train(live=False)
    same_history(a, b)
    c = tiny(epochs=1, seed=1).train(live=False)
    assert not np.array_equal(a.metric("test", "loss"), c.metric("test", "loss"))


# ---------------------------------------------------------------------------- stop, pause, step
def test_stop_takes_effect_within_one_batch_and_keeps_the_partial_run():
    pg = tiny(epochs=6)
    gate = Gate(epoch=2, batch=1)
    pg.start().batch_hooks.append(gate)
    assert gate.reached.wait(WAIT)
    pg.stop_button.click()  # while the thread is held after batch 2 of epoch 2
    gate.release()
    assert pg.wait(WAIT)
    run = pg.run
    assert run.state == "stopped" and gate.after == 0  # not one batch more
    assert run.batches_trained == BATCHES + 2  # epoch 1 whole, two batches of epoch 2
    assert run.history.epochs == [0, 1] and pg.runs == [run.history]
    assert run.history.outcome.stopped_early_at == 1
    assert run.history.outcome.stop_reason == "Stop pressed during epoch 2 (after batch 2 of 3)"
    assert pg.table().at["run 1", "status"] == "stopped after epoch 1"
    assert not pg.train_button.disabled and pg.stop_button.disabled
    assert "kept with the epochs measured so far" in pg.message


def test_stop_while_paused_ends_the_run():
    pg = tiny(epochs=4)
    run = pg.step()
    assert run.wait_for(lambda r: r.state == "paused", WAIT)
    pg.stop()
    assert pg.wait(WAIT) and run.state == "stopped" and run.history.epochs == [0, 1]
    assert run.batches_trained == BATCHES


def test_step_and_pause_advance_exactly_one_epoch():
    pg = tiny(epochs=4)
    run = pg.step()  # from idle: train epoch 1, then pause
    assert run.wait_for(lambda r: r.state == "paused", WAIT)
    assert run.history.epochs == [0, 1] and run.batches_trained == BATCHES
    assert pg.pause_button.description == "Resume" and not pg.step_button.disabled
    assert pg.width.disabled and not pg.weight.disabled  # fixed knobs locked, regularisers open
    pg.step_button.click()
    assert run.wait_for(lambda r: r.state == "paused" and r.snapshot.epoch == 2, WAIT)
    assert run.history.epochs == [0, 1, 2] and run.batches_trained == 2 * BATCHES
    # Pause pressed during epoch 3 (here: from inside the training thread, at its first batch)
    gate = Gate(epoch=3, batch=0, action=pg.pause)
    run.batch_hooks.append(gate)
    gate.release()
    pg.resume()
    assert run.wait_for(lambda r: r.state == "paused" and r.snapshot.epoch == 3, WAIT)
    assert run.history.epochs == [0, 1, 2, 3] and run.batches_trained == 3 * BATCHES
    pg.resume()
    assert pg.wait(WAIT) and run.state == "finished" and run.history.epochs == [0, 1, 2, 3, 4]


def test_reset_stops_keeps_the_run_and_clears_the_view():
    pg = tiny(epochs=5)
    run = pg.step()
    assert run.wait_for(lambda r: r.state == "paused", WAIT)
    pg.reset_button.click()
    assert run.state == "stopped" and pg.run is None and pg.runs == [run.history]
    assert all(not bytes(image.value) for image in pg.images.values())
    assert not pg.width.disabled and "ready" in pg.status


def test_a_failing_run_becomes_a_message_not_a_traceback():
    pg = tiny(epochs=3)

    def boom(run, state):
        if state.epoch == 2:
            raise RuntimeError("boom")

    run = pg.start()
    run.batch_hooks.append(boom)
    assert pg.wait(WAIT) and run.state == "failed"
    assert pg.message_level == "error" and pg.message == "training failed: RuntimeError: boom"
    assert pg.table().at["run 1", "status"] == "failed after epoch 1" and not pg.train_button.disabled


def test_train_raises_the_error_of_a_failing_run(monkeypatch):
    def boom(run, state):
        raise RuntimeError("boom")

    original = PlaygroundRun.start

    def start_with_hook(run, pause_after=None):
        run.batch_hooks.append(boom)
        original(run, pause_after)

    monkeypatch.setattr(PlaygroundRun, "start", start_with_hook)
    with pytest.raises(RuntimeError, match="boom"):
        tiny(epochs=1).train()


# ---------------------------------------------------------------------------- settings strings
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "the settings string is empty"),
        ("n=200&seed=0", r"must start with 'pg1&'"),
        ("pg2&n=200", r"must start with 'pg1&'"),
        ("pg1&n200", r"'n200' is not key=value"),
        ("pg1&nois=0.2", r"unknown setting 'nois'.*closest: \['noise'"),
        ("pg1&noise=0.2&noise=0.3", r"'noise' is given twice"),
        ("pg1&noise=lots", r"in 'noise=lots', 'lots' is not a finite number"),
        ("pg1&noise=nan", r"'nan' is not a finite number"),
        ("pg1&n=12.5", r"'12.5' is not an integer"),
        ("pg1&bn=yes", r"'yes' is not 0 or 1"),
        ("pg1&blocks=1x", r"not block digits"),
        ("pg1&blocks=4", r"blocks must be a non-empty subset of \(1, 2, 3\)"),
        ("pg1&noise=0.95", r"noise=0.95: label_noise must be in \[0, 0.9\], got 0.95"),
        ("pg1&n=2000", r"train_size must be an int <= 1257 for dataset 'digits'"),
        ("pg1&data=cifar", r"dataset must be one of \['digits', 'mnist'\], got 'cifar'"),
        ("pg1&epochs=5&at5=lam:1", r"change epoch must be an int <= 4, got 5"),
        ("pg1&at1=width:4", r"'width:4' is not knob:value with a knob of \['lr', 'dropout', 'wd', 'lam'"),
        ("pg1&at1=lam", r"'lam' is not knob:value"),
        ("pg1&at1=lam:9", r"weight must be <= 5, got 9.0"),
    ],
)
def test_bad_settings_strings_are_clear_errors(text, match):
    with pytest.raises(ValueError, match=match):
        PlaygroundSettings.from_string(text)
    with pytest.raises(ValueError, match=match):
        OverfittingPlayground.from_settings(text)


def test_the_load_box_sets_the_knobs_or_says_what_is_wrong():
    pg = OverfittingPlayground()
    pg.settings_text.value = "pg1&data=mnist&n=2000&noise=0.4&width=12&bn=1&lr=0.01&blocks=23&seed=7"
    pg.load_button.click()
    s = pg.settings
    assert (s.dataset, s.train_size, s.label_noise, s.width, s.batch_norm, s.lr, s.blocks, s.seed) == (
        "mnist",
        2000,
        0.4,
        12,
        True,
        0.01,
        (2, 3),
        7,
    )
    assert pg.message.startswith("Loaded pg1&data=mnist&n=2000")
    pg.settings_text.value = "pg1&noise=2"
    pg.load_button.click()
    assert pg.message_level == "error" and "label_noise must be in [0, 0.9], got 2.0" in pg.message
    assert pg.settings == s  # unchanged
    assert pg.settings_text.value == "pg1&noise=2"  # what the user typed stays to be corrected


_VALUES = {
    "dataset": st.sampled_from(["digits", "mnist"]),
    "train_size": st.integers(20, 1257),
    "label_noise": st.floats(0.0, 0.9),
    "width": st.integers(1, 64),
    "batch_norm": st.booleans(),
    "epochs": st.integers(2, 300),
    "batch_size": st.integers(4, 256),
    "lr": st.floats(1e-4, 0.1),
    "dropout": st.floats(0.0, 0.9),
    "weight_decay": st.floats(0.0, 0.05),
    "weight": st.floats(-2.0, 5.0),
    "blocks": st.sets(st.sampled_from([1, 2, 3]), min_size=1).map(lambda s: tuple(sorted(s))),
    "seed": st.integers(0, 2**31 - 1),
}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.fixed_dictionaries({}, optional=_VALUES), st.data())
def test_settings_strings_round_trip(knobs, draw):
    base = PlaygroundSettings(**knobs)
    epoch = draw.draw(st.integers(0, base.epochs - 1))
    knob = draw.draw(st.sampled_from(LIVE_KNOBS))
    value = draw.draw(_VALUES["weight" if knob == "weight" else knob if knob != "blocks" else "blocks"])
    s = base.replace(changes=((epoch, knob, value),))
    text = s.to_string()
    assert PlaygroundSettings.from_string(text) == s
    assert text.startswith("pg1&") and " " not in text


@pytest.mark.parametrize(
    ("knobs", "error", "match"),
    [
        ({"train_size": 5}, ValueError, r"train_size must be an int >= 20, got 5"),
        ({"train_size": 5000}, ValueError, r"train_size must be an int <= 1257 for dataset 'digits'"),
        ({"label_noise": 1.0}, ValueError, r"label_noise must be in \[0, 0.9\], got 1.0"),
        ({"width": 0}, ValueError, r"width must be an int >= 1"),
        ({"epochs": 2.5}, TypeError, r"epochs must be an int, got float 2.5"),
        ({"weight": "big"}, TypeError, r"weight must be"),
        ({"weight": float("nan")}, ValueError, r"weight must be a finite number"),
        ({"lr": 1.0}, ValueError, r"lr must be <= 0.1, got 1.0"),
        ({"batch_size": 1}, ValueError, r"batch_size must be an int >= 4"),
        ({"dropout": 0.95}, ValueError, r"dropout must be in \[0, 0.9\]"),
        ({"weight_decay": -0.1}, ValueError, r"weight_decay must be >= 0"),
        ({"blocks": ()}, ValueError, r"blocks must be a non-empty subset"),
        ({"batch_norm": 1}, TypeError, r"batch_norm must be a bool"),
        ({"lambda": 0.1}, ValueError, r"unknown knob\(s\) \['lambda'\]: the knobs are \['dataset', 'train_size'"),
    ],
)
def test_bad_knob_values_are_clear_errors_and_change_nothing(knobs, error, match):
    pg = OverfittingPlayground()
    before = pg.settings
    with pytest.raises(error, match=match):
        pg.train(**{"epochs": 1, **knobs})
    assert pg.settings == before and not pg.runs and pg.run is None
    with pytest.raises(error, match=match):
        OverfittingPlayground(**knobs)


def test_a_live_change_is_checked_like_the_settings():
    pg = tiny(epochs=3)
    run = pg.step()
    assert run.wait_for(lambda r: r.state == "paused", WAIT)
    with pytest.raises(ValueError, match=r"only \['lr', 'dropout'"):
        run.change("width", 4)
    with pytest.raises(ValueError, match=r"weight must be <= 5"):
        run.change("weight", 6.0)
    pg.stop()
    assert pg.wait(WAIT)


# ---------------------------------------------------------------------------- the classroom app
def test_the_app_notebook_holds_the_how_to_and_the_playground():
    from xaisparse.widgets.playground.app import HOW_TO, app_notebook, voila_command

    nb = app_notebook("pg1&noise=0.4&seed=1", threads=2)
    assert [c["cell_type"] for c in nb["cells"]] == ["markdown", "code"] and nb["cells"][0]["source"] == HOW_TO
    code = nb["cells"][1]["source"]
    assert "torch.set_num_threads(2)" in code and code.endswith(
        "OverfittingPlayground.from_settings('pg1&noise=0.4&seed=1')"
    )
    cmd = voila_command("app.ipynb", 9000)
    assert "--Voila.ip=127.0.0.1" in cmd and "--port=9000" in cmd and "--no-browser" in cmd
    assert "--VoilaConfiguration.strip_sources=True" in cmd
    with pytest.raises(ValueError, match="label_noise must be in"):
        app_notebook("pg1&noise=2")


def test_the_playground_command_rejects_bad_input_before_serving(capsys, monkeypatch):
    import builtins

    from xaisparse.cli import main

    assert main(["playground", "--settings", "pg1&noise=2"]) == 2
    assert "label_noise must be in [0, 0.9], got 2.0" in capsys.readouterr().err
    assert main(["playground", "--port", "0"]) == 2
    assert "port must be an int in [1, 65535], got 0" in capsys.readouterr().err
    real_import = builtins.__import__

    def no_voila(name, *args, **kwargs):
        if name == "voila":
            raise ImportError("No module named 'voila'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_voila)
    assert main(["playground"]) == 2
    assert "needs Voilà, which is not installed: pip install 'xaisparse[teach]'" in capsys.readouterr().err
