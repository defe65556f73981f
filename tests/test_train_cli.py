"""fit(): measurements, callbacks, early stop, resume; the xaisparse command line."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from xaisparse.checkpoint import load_weights
from xaisparse.detect import OverfitDetector
from xaisparse.history import History
from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.stopping import EarlyStopping
from xaisparse.train import Callback, fit


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))


def test_fit_measures_probe_loss_and_sparsity_independently():
    train, test = _data(seed=0), _data(seed=1)
    model = _net()
    h = fit(model, train, test, epochs=2, progress=False, probe_size=1000, batch_size=32)
    assert h.epochs == [0, 1, 2]
    # the recorded final test loss/accuracy equal a direct evaluation of the returned model
    model.eval()
    with torch.no_grad():
        x, y = test.tensors
        out = model(x)
    assert h.metric("test", "loss").iloc[-1] == pytest.approx(nn.functional.cross_entropy(out, y).item(), rel=1e-5)
    assert h.metric("test", "accuracy").iloc[-1] == pytest.approx((out.argmax(1) == y).float().mean().item())
    assert set(h.layer_names) == {"1", "3"}
    assert h.spatial_hist[("test", "1")].shape == (3, 4, 20)


def test_callbacks_and_stop_after_current_epoch():
    seen_batches, seen_epochs = [], []

    class Stopper(Callback):
        def on_batch_end(self, state):
            seen_batches.append((state.epoch, state.batch))

        def on_epoch_end(self, state):
            seen_epochs.append(state.history.epochs[-1])
            self.stop_requested = state.history.epochs[-1] == 2

    h = fit(
        _net(),
        _data(),
        _data(seed=1),
        epochs=10,
        progress=False,
        batch_size=32,
        callbacks=[Stopper(), lambda state: seen_epochs.append(("state", state.epoch))],
    )
    assert h.epochs == [0, 1, 2] and h.outcome.stopped_early_at == 2
    assert "Stopper" in h.outcome.stop_reason and "stopped_early_at" not in h.config
    assert [e for e in seen_epochs if isinstance(e, int)] == [0, 1, 2]
    # a plain function gets the same TrainState at every epoch end
    assert [e for tag, e in (s for s in seen_epochs if not isinstance(s, int))] == [0, 1, 2]
    assert seen_batches == [(e, b) for e in (1, 2) for b in range(3)]


def test_resume_equals_an_uninterrupted_run(tmp_path):
    full = fit(
        _net(), _data(), _data(seed=1), epochs=4, progress=False, batch_size=32, checkpoint_dir=tmp_path / "full"
    )
    fit(_net(), _data(), _data(seed=1), epochs=2, progress=False, batch_size=32, checkpoint_dir=tmp_path / "part")
    model = _net(seed=123)  # different init: resume must overwrite it
    resumed = fit(
        model,
        _data(),
        _data(seed=1),
        epochs=4,
        progress=False,
        batch_size=32,
        checkpoint_dir=tmp_path / "part",
        resume=tmp_path / "part",
    )
    assert resumed.epochs == full.epochs
    a, b = full.metric("test", "loss"), resumed.metric("test", "loss")
    assert a.tolist() == pytest.approx(b.tolist(), rel=1e-6)
    assert History.load(tmp_path / "part" / "history").epochs == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("watch", ["test loss", "test accuracy (EarlyStopping, max)"])
def test_best_checkpoint_holds_the_weights_of_the_best_epoch(tmp_path, watch):
    snapshots = {}  # the weights after each epoch, copied by hand (callbacks run before the checkpoint)
    early = None if watch == "test loss" else EarlyStopping(patience=50, metric="accuracy", mode="max")
    h = fit(
        _net(),
        _data(),
        _data(seed=1),
        epochs=5,
        lr=0.5,
        progress=False,
        batch_size=16,
        checkpoint_dir=tmp_path,
        early_stopping=early,
        callbacks=[lambda s: snapshots.__setitem__(s.epoch, {k: v.clone() for k, v in s.model.state_dict().items()})],
    )
    values = h.metric("test", "loss" if early is None else "accuracy").to_numpy()
    best_epoch = int(np.argmin(values) if early is None else np.argmax(values))  # numpy: the first on ties
    assert best_epoch < 5  # not simply the last epoch (here: the loss at 0, the accuracy tied at 2 and 5)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == best_epoch and best["value"] == pytest.approx(values[best_epoch])
    assert best["watched"] == ("test loss" if early is None else "test accuracy")
    for name, tensor in snapshots[best_epoch].items():
        assert torch.equal(best["model"][name], tensor), name
    restored = load_weights(_net(seed=5), tmp_path / "best.pt")
    assert torch.equal(restored[0].weight, snapshots[best_epoch]["0.weight"])


def test_no_best_checkpoint_without_held_out_data(tmp_path):
    fit(_net(), _data(), epochs=1, progress=False, checkpoint_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file() and not (tmp_path / "best.pt").exists()


def test_detector_result_is_saved_and_bad_args_are_clear():
    h = fit(_net(), _data(), _data(seed=1), epochs=3, progress=False, detector=OverfitDetector())
    assert h.detection is not None and h.detection.epochs == [0, 1, 2, 3]
    assert h.detection.alarm_epoch == OverfitDetector().detect(h).alarm_epoch
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fit("not a model", _data())
    with pytest.raises(ValueError, match="epochs"):
        fit(_net(), _data(), epochs=-1)
    with pytest.raises(ValueError, match="optimizer"):
        fit(_net(), _data(), epochs=1, optimizer="lbfgs", progress=False)
    with pytest.raises(TypeError, match="penalty"):
        fit(_net(), _data(), epochs=1, penalty="yes", progress=False)


def test_fit_takes_objects_and_the_old_keywords_still_work_with_a_warning():
    net = _net()
    pen = SparsityPenalty(net, weight=0.2, layer_weights={"3": 0.0})
    mon = SparsityMonitor(net, layers=["1"], bins=10)
    h = fit(net, _data(), _data(seed=1), epochs=1, progress=False, monitor=mon, penalty=pen)
    assert h.layer_names == ["1"] and h.spatial_hist[("test", "1")].shape[-1] == 10
    assert h.config["penalty"]["weight"] == 0.2 and h.config["penalty"]["layer_weights"] == {"3": 0.0}
    net2 = _net()
    with pytest.warns(DeprecationWarning, match="penalty"):
        old = fit(net2, _data(), _data(seed=1), epochs=1, progress=False, penalty=0.2, layer_weights={"3": 0.0})
    with pytest.warns(DeprecationWarning, match="monitor_layers"):
        fit(_net(), _data(), epochs=0, progress=False, monitor_layers=["1"], bins=10)
    # the same training either way: the deprecated path builds the same objects
    assert old.metric("test", "loss").tolist() == pytest.approx(h.metric("test", "loss").tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="another model"):
        fit(_net(), _data(), epochs=0, progress=False, penalty=SparsityPenalty(_net(), weight=0.1))
    with pytest.raises(TypeError, match="unexpected keyword"):
        fit(_net(), _data(), epochs=0, progress=False, penalty_weight=0.1)


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "xaisparse.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600
    )


def test_cli_help_for_every_command():
    for cmd in ([], ["demo"], ["run"], ["report"], ["compare"]):
        out = _cli(*cmd, "--help")
        assert out.returncode == 0 and "usage: xaisparse" in out.stdout, out.stderr


@pytest.mark.slow
def test_cli_run_report_compare(tmp_path):
    common = ["--epochs", "2", "--train-subset", "60", "--probe-size", "64", "--width", "4", "--no-progress"]
    a = _cli("run", "--out", str(tmp_path / "a"), *common)
    assert a.returncode == 0, a.stderr
    assert "test-loss minimum: epoch" in a.stdout and "sparsity event (not validated" in a.stdout
    assert (tmp_path / "a" / "report" / "index.html").is_file() and (
        tmp_path / "a" / "report" / "timeline.png"
    ).is_file()
    b = _cli("run", "--out", str(tmp_path / "b"), "--penalty", "0.1", "--no-report", *common)
    assert b.returncode == 0, b.stderr
    rep = _cli("report", str(tmp_path / "b"))
    assert rep.returncode == 0 and (tmp_path / "b" / "report" / "index.html").is_file(), rep.stderr
    cmp_ = _cli("compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp"))
    assert cmp_.returncode == 0 and (tmp_path / "cmp" / "comparison.png").is_file(), cmp_.stderr
    bad = _cli("report", str(tmp_path / "nothing-here"))
    assert bad.returncode == 2 and "no run directory" in bad.stderr
    missing = _cli("run", "--out", str(tmp_path / "c"), "--dataset", "cifar10", "--data-root", str(tmp_path), *common)
    assert missing.returncode == 2 and "cifar-10-batches-py" in missing.stderr


def test_cli_works_without_ipywidgets_and_widgets_name_the_extra(tmp_path):
    """The core CLI needs matplotlib only: run, report and compare with ipywidgets unimportable."""
    blocked = "import sys; sys.modules['ipywidgets'] = None\n"  # any `import ipywidgets` now raises ImportError
    common = ["--epochs", "1", "--train-subset", "40", "--probe-size", "32", "--width", "4", "--no-progress"]
    for run in ("a", "b"):
        code = (
            blocked
            + f"from xaisparse.cli import main; sys.exit(main({['run', '--out', str(tmp_path / run), *common]!r}))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert "sparsity event (not validated" in out.stdout
        for name in ("index.html", "timeline.png", "heatmap.png", "distribution.png"):
            assert (tmp_path / run / "report" / name).stat().st_size > 1000, name
    args = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")]
    code = blocked + f"from xaisparse.cli import main; sys.exit(main({args!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "cmp" / "comparison.png").stat().st_size > 1000
    code = blocked + "import xaisparse.widgets"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "ImportError" in out.stderr and "xaisparse[widgets]" in out.stderr


def test_phase_seconds_say_where_the_time_went(tmp_path):
    import time

    def slow_callback(state):  # a known cost: 30 ms at every epoch end
        time.sleep(0.03)

    h = fit(_net(), _data(), _data(seed=1), epochs=2, progress=False, batch_size=32, callbacks=[slow_callback])
    phases = h.outcome.phase_seconds
    assert set(phases) == {"train", "measure", "callbacks"}  # no detector, no checkpoint: not timed
    assert phases["callbacks"] >= 3 * 0.03  # epochs 0, 1, 2
    assert sum(phases.values()) <= h.outcome.train_seconds + 0.01
    h2 = fit(
        _net(), _data(), _data(seed=1), epochs=1, progress=False, checkpoint_dir=tmp_path, detector=OverfitDetector()
    )
    assert {"checkpoint", "detect"} <= set(h2.outcome.phase_seconds)
    loaded = History.load(tmp_path / "history")
    # the checkpoint of the last epoch holds the sums so far (its own write is still running)
    assert set(loaded.outcome.phase_seconds) == {"train", "measure", "detect", "checkpoint"}


def test_build_mnist_embedded_takes_the_image_size():
    """``cli._build`` gives mnist_embedded its size (not download/augment, which it does not take)."""
    import argparse

    from xaisparse.cli import _build

    args = argparse.Namespace(
        dataset="MNIST-embedded",
        data_root=None,
        train_subset=50,
        label_noise=0.0,
        seed=0,
        image_size=12,
        download=False,
        regularizer=[],
        model="small_cnn",
        width=4,
        depth=2,
    )
    data, model = _build(args)[:2]
    assert model(data.train[0][0][None]).shape == (1, 10)
    x, _ = data.train[0]
    assert data.name == "mnist_embedded" and tuple(x.shape) == (1, 12, 12) and len(data.train) == 50


def test_the_epoch_step_leaves_a_mixed_mode_model_as_it_was():
    """measure_split / measure_epoch (fit's and the Lightning callback's step) restore every flag."""
    from xaisparse.epoch import measure_epoch, measure_split

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 6 * 6, 2))
    net.train()
    net[1].eval()  # deliberately frozen
    before = [m.training for m in net.modules()]
    x, y = torch.randn(12, 1, 8, 8), torch.randint(0, 2, (12,))
    loader = [(x[:6], y[:6]), (x[6:], y[6:])]
    got = measure_split(net, loader, "cpu", split="test")
    assert [m.training for m in net.modules()] == before
    with torch.no_grad():
        net.eval()
        logits = net(x)
        net.train()
        net[1].eval()
    assert got["loss"] == pytest.approx(float(nn.functional.cross_entropy(logits, y)), rel=1e-6)
    assert got["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    history = History()
    step = measure_epoch(
        net, history, 0, SparsityMonitor(net), {"test": [x]}, device="cpu", metrics={"train": {"a": 1.0}}
    )
    assert [m.training for m in net.modules()] == before
    assert step.metrics == {"train": {"a": 1.0}} and step.stop_reason is None
    assert history.sparsity_epochs == [0] and history.epoch_metrics(0) == {"train": {"a": 1.0}}
    fit(net, TensorDataset(x, y), TensorDataset(x, y), epochs=0, progress=False)  # epoch 0: measuring only
    assert [m.training for m in net.modules()] == before
