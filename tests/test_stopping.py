"""xaisparse.stopping: the label-free signals against independent computations and hand-built cases
where each must fire, and EarlyStopping against a hand-written training loop.

References: per-sample gradients from one ``backward()`` per sample (not ``torch.func``), the
papers' formulas written out here in NumPy; ``powerlaw.Fit`` and ``weightwatcher`` for the
power-law α; Pareto samples and a weight matrix built with a known spectrum; a training loop
written here with ``copy.deepcopy`` of the best weights; :func:`xaisparse.detect.early_stopping_epoch`
for the stop rule.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xaisparse.detect import early_stopping_epoch, restored_best_epoch
from xaisparse.stopping import (
    EarlyStopping,
    LabelFreeSignals,
    disagreement_series,
    gradient_statistics,
    layer_eigenvalues,
    load_signals,
    minimum_stop,
    model_alpha,
    power_law_fit,
    prediction_disagreement,
    threshold_stop,
)
from xaisparse.train import fit

pytestmark = pytest.mark.usefixtures("one_thread")


def small_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 3))


def toy_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


def loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """One backward() per sample: (samples, parameters) — independent of torch.func."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        out.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy().copy())
    model.zero_grad()
    return np.stack(out)


# --------------------------------------------------------------------------- EB-criterion, gradient disparity
def test_eb_criterion_and_disparity_equal_the_formulas_on_looped_gradients() -> None:
    net = small_net()
    x, y = toy_data(64)
    stats = gradient_statistics(net, x, y, batch_size=16, eb_samples=32)
    g = loop_gradients(net, x, y)
    # EB (Mahsereci et al. 2017, eq. 7) on the first 32 samples, over entries with positive variance
    b = 32
    mean, var = g[:b].mean(0), g[:b].var(0, ddof=1)
    keep = var > 0
    assert stats.parameters == keep.sum()
    assert stats.eb_criterion == pytest.approx(1 - b * np.mean(mean[keep] ** 2 / var[keep]), rel=1e-6)
    # GD (Forouzesh & Thiran 2021): mean pairwise distance of the 4 mini-batch gradients
    batches = [g[i : i + 16].mean(0) for i in range(0, 64, 16)]
    want = np.mean([np.linalg.norm(a - c) for a, c in itertools.combinations(batches, 2)])
    assert stats.batches == 4
    assert stats.gradient_disparity == pytest.approx(want, rel=1e-6)
    assert stats.mean_norm == pytest.approx(np.linalg.norm(mean), rel=1e-6)


def test_gradient_signals_leave_the_model_as_it_was() -> None:
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 3))
    net.train()
    net[1].eval()  # a submodule deliberately in eval mode stays so
    before = copy.deepcopy(net.state_dict())
    gradient_statistics(net, *toy_data(32), batch_size=8)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert net.training and not net[1].training and net[0].training
    assert all(p.grad is None for p in net.parameters())


def test_eb_criterion_fires_at_the_minimum_of_the_training_loss_and_not_far_from_it() -> None:
    """Ground truth: at the minimiser of the probe's own loss the mean gradient is ~0, so EB > 0."""
    torch.manual_seed(0)
    x = torch.randn(64, 1, 2, 2)
    y = (x.flatten(1).sum(1) > 0).long()
    y[:12] = 1 - y[:12]  # label noise: the minimum is not at infinity
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[1].weight.fill_(3.0)  # far from the minimum: the gradient stands out of the noise
    far = gradient_statistics(net, x, y, batch_size=16).eb_criterion
    opt = torch.optim.LBFGS(net.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    at_min = gradient_statistics(net, x, y, batch_size=16).eb_criterion
    assert far < -1.0
    assert at_min > 0.9  # 1 − B·mean(ĝ²/Σ̂) with ĝ ≈ 0
    assert threshold_stop(pd.Series([far, far / 2, at_min]), 0.0) == 2


def test_gradient_disparity_is_zero_for_identical_batches_and_grows_with_conflicting_labels() -> None:
    net = small_net()
    x, y = toy_data(16)
    same = gradient_statistics(net, torch.cat([x, x]), torch.cat([y, y]), batch_size=16)
    assert same.gradient_disparity == pytest.approx(0.0, abs=1e-12)
    flipped = gradient_statistics(net, torch.cat([x, x]), torch.cat([y, (y + 1) % 3]), batch_size=16)
    assert flipped.gradient_disparity > 0.05


@pytest.mark.parametrize("bad", [dict(batch_size=40), dict(eb_samples=1)])
def test_gradient_statistics_rejects_bad_input(bad: dict) -> None:
    with pytest.raises(ValueError, match="batch|eb_samples"):
        gradient_statistics(small_net(), *toy_data(64), **bad)


# --------------------------------------------------------------------------- power-law α
def _quiet(fn, *args, **kw):
    with (
        contextlib.redirect_stdout(io.StringIO()),
        contextlib.redirect_stderr(io.StringIO()),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        return fn(*args, **kw)


@pytest.mark.parametrize("alpha", [2.0, 2.6, 3.5])
def test_power_law_fit_equals_powerlaw_package_and_recovers_a_pareto_exponent(alpha: float) -> None:
    powerlaw = pytest.importorskip("powerlaw")
    rng = np.random.default_rng(int(alpha * 10))
    x = 0.7 * (1 - rng.random(3000)) ** (-1 / (alpha - 1))  # density ∝ x^(-alpha) above 0.7
    ours = power_law_fit(x)
    assert ours.alpha == pytest.approx(alpha, abs=0.15)
    if alpha <= 3:  # powerlaw 2.0 only accepts x_min candidates whose α lies in its range (1, 3]
        ref = _quiet(powerlaw.Fit, x, verbose=False)
        assert ours.alpha == pytest.approx(ref.alpha, rel=1e-9)
        assert ours.xmin == pytest.approx(ref.xmin, rel=1e-12)
        assert ours.ks == pytest.approx(ref.D, rel=1e-9)


def test_model_alpha_equals_weightwatcher_per_layer() -> None:
    ww = pytest.importorskip("weightwatcher")
    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(4, 24, 3), nn.ReLU(), nn.Conv2d(24, 32, 3), nn.Flatten(), nn.Linear(32, 40))
    ours = model_alpha(net).set_index("layer")
    theirs = _quiet(lambda: ww.WeightWatcher(model=net).analyze())
    got = ours.alpha[ours.eigenvalues >= 20].to_numpy()
    want = theirs[theirs.num_evals >= 20].alpha.to_numpy()
    assert len(got) == 3 and np.allclose(got, want, rtol=1e-6)


def test_alpha_of_a_weight_built_with_a_power_law_spectrum() -> None:
    """Ground truth: W = U diag(√λ) Vᵀ with λ drawn from a power law of exponent 3 has α ≈ 3."""
    rng = np.random.default_rng(0)
    n = 1500
    lam = (1 - rng.random(n)) ** (-1 / 2.0)  # density ∝ λ^-3
    u, _ = np.linalg.qr(rng.standard_normal((n, n)))
    v, _ = np.linalg.qr(rng.standard_normal((n, n)))
    w = torch.from_numpy(u @ np.diag(np.sqrt(lam)) @ v.T)
    assert np.allclose(layer_eigenvalues(w), np.sort(lam), rtol=1e-6)
    assert power_law_fit(layer_eigenvalues(w)).alpha == pytest.approx(3.0, abs=0.2)
    # a conv kernel's ESD pools its kernel positions' (out, in) matrices
    k = torch.zeros(5, 4, 2, 1)
    k[:, :, 0, 0] = torch.eye(5, 4)
    k[:, :, 1, 0] = 2 * torch.eye(5, 4)
    assert layer_eigenvalues(k).tolist() == [1.0] * 4 + [4.0] * 4


def test_power_law_fit_needs_enough_eigenvalues() -> None:
    assert math.isnan(power_law_fit(np.arange(1.0, 10.0)).alpha)


# --------------------------------------------------------------------------- disagreement, rules
def test_prediction_disagreement_by_hand() -> None:
    assert prediction_disagreement([1, 2, 3, 4], [1, 2, 3, 4]) == 0.0
    assert prediction_disagreement([1, 2, 3, 4], [1, 0, 3, 0]) == 0.5
    s = disagreement_series({0: [1, 1], 1: [1, 2], 2: [0, 0]}, {1: [1, 1], 2: [1, 1], 3: [0, 0]})
    assert s.to_dict() == {1: 0.5, 2: 1.0}
    with pytest.raises(ValueError, match="same length|one length"):
        prediction_disagreement([1, 2], [1])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0.0, 5.0), min_size=1, max_size=30), st.integers(1, 6))
def test_minimum_stop_is_patience_early_stopping(values: list[float], patience: int) -> None:
    s = pd.Series(values)
    stop = early_stopping_epoch(s, patience=patience)
    assert minimum_stop(s, patience=patience) == stop
    assert minimum_stop(s, patience=patience, restore=True) == restored_best_epoch(s, stop)


def test_threshold_and_minimum_rules_by_hand() -> None:
    s = pd.Series([5.0, 4.0, 1.9, 2.5, 1.8, 1.7], index=range(10, 16))
    assert threshold_stop(s, 2.0, above=False) == 12
    assert threshold_stop(s, 2.0, above=False, patience=2) == 15
    assert threshold_stop(s, 2.0, above=False, warmup=3) == 14
    assert threshold_stop(s, 2.0, above=False, smooth=2) == 15  # means 4.5, 2.95, 2.2, 2.15, 1.75
    assert threshold_stop(s, 10.0) is None
    u = pd.Series([3.0, 2.0, 1.0, 1.5, 2.0, 3.0, 0.5])
    assert minimum_stop(u, patience=2) == 4 and minimum_stop(u, patience=2, restore=True) == 2
    assert minimum_stop(u, patience=2, warmup=3) == 5  # the minimum is tracked from position 3 on
    assert minimum_stop(u, patience=10) is None


# --------------------------------------------------------------------------- the callback
def test_label_free_signals_do_not_change_training_and_round_trip(tmp_path) -> None:
    x, y = toy_data(96, seed=3)
    train, test = TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])
    runs = []
    for with_signals in (False, True):
        torch.manual_seed(4)  # a conv with 72 eigenvalues: α is defined
        net = nn.Sequential(nn.Conv2d(1, 24, 3), nn.ReLU(), nn.Conv2d(24, 8, 3), nn.Flatten(), nn.Linear(32, 3))
        cb = [LabelFreeSignals(train, test, probe_size=32, batch_size=8, eb_samples=16, predict_size=20)]
        h = fit(
            net, train, test, epochs=3, lr=0.05, batch_size=16, progress=False, callbacks=cb if with_signals else []
        )
        runs.append((net, h, cb[0]))
    (net0, h0, _), (net1, h1, signals) = runs
    pd.testing.assert_frame_equal(h0.metrics, h1.metrics)
    assert all(torch.equal(a, b) for a, b in zip(net0.state_dict().values(), net1.state_dict().values()))
    frame = signals.frame()
    assert (
        list(frame.index) == [0, 1, 2, 3]
        and frame[["eb_criterion", "gradient_disparity", "alpha_mean"]].notna().all().all()
    )
    # the predictions are the network's classes on the first 20 test inputs of probe_subset (labels unread)
    from xaisparse.data import probe_subset

    probe = probe_subset(test, 20, 0)
    with torch.no_grad():
        net1.eval()
        want = net1(torch.stack([probe[i][0] for i in range(len(probe))])).argmax(1).numpy()
    assert np.array_equal(signals.predictions[3], want)
    back = load_signals(signals.save(tmp_path / "signals"))
    pd.testing.assert_frame_equal(back.signals, frame, check_dtype=False)
    assert back.settings == signals.settings and np.array_equal(back.predictions[2], signals.predictions[2])
    assert len(back.alpha) == 4 * 3  # 4 epochs × (conv, conv, linear)


# --------------------------------------------------------------------------- EarlyStopping
def hand_loop(train: TensorDataset, test: TensorDataset, epochs: int, patience: int) -> tuple[int | None, int, dict]:
    """Early stopping written out: Adam, the same batches as fit, the best weights deep-copied."""
    net = small_net(seed=7)
    torch.manual_seed(0)
    opt = torch.optim.Adam(net.parameters(), lr=0.05)
    loader = DataLoader(train, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    xt, yt = test.tensors

    def test_loss() -> float:
        net.eval()
        with torch.no_grad():
            value = float(nn.functional.cross_entropy(net(xt), yt, reduction="sum")) / len(yt)
        net.train()
        return value

    best, best_epoch, best_state, waited = test_loss(), 0, copy.deepcopy(net.state_dict()), 0
    for epoch in range(1, epochs + 1):
        for xb, yb in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(net(xb), yb).backward()
            opt.step()
        value = test_loss()
        if value < best:
            best, best_epoch, best_state, waited = value, epoch, copy.deepcopy(net.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                return epoch, best_epoch, best_state
    return None, best_epoch, best_state


def es_data() -> tuple[TensorDataset, TensorDataset]:
    x, y = toy_data(160, seed=5)
    y[:64] = torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(9))  # noisy labels: it overfits
    return TensorDataset(x[:96], y[:96]), TensorDataset(x[96:], y[96:])


def test_fit_early_stopping_equals_a_hand_written_loop() -> None:
    train, test = es_data()
    stop, best_epoch, best_state = hand_loop(train, test, epochs=30, patience=3)
    assert stop is not None and stop < 30  # the case is not vacuous
    net = small_net(seed=7)
    es = EarlyStopping(patience=3)
    h = fit(net, train, test, epochs=30, lr=0.05, batch_size=16, probe_size=512, progress=False, early_stopping=es)
    assert (es.stopped_epoch, es.best_epoch, es.restored_epoch) == (stop, best_epoch, best_epoch)
    assert h.outcome.stopped_early_at == stop and h.epochs[-1] == stop
    assert "restored the weights of epoch" in h.outcome.stop_reason
    assert h.config["early_stopping"]["restored_epoch"] == best_epoch
    assert all(torch.allclose(v, best_state[k], atol=1e-6) for k, v in net.state_dict().items())
    loss = h.metric("test", "loss")
    assert early_stopping_epoch(loss, patience=3) == stop
    assert restored_best_epoch(loss, stop) == best_epoch


def test_early_stopping_restores_at_the_last_epoch_and_checks_its_input() -> None:
    net = nn.Linear(1, 1)
    es = EarlyStopping(patience=5, mode="max")
    for epoch, acc in enumerate([0.1, 0.5, 0.4]):
        with torch.no_grad():
            net.weight.fill_(epoch)
        es.step(epoch, acc, net, last=epoch == 2)
    assert es.stopped_epoch is None and es.restored_epoch == 1 and float(net.weight.detach()) == 1.0
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)
    with pytest.raises(ValueError, match="mode"):
        EarlyStopping(mode="up")
    with pytest.raises(ValueError, match="test=None"):
        fit(small_net(), TensorDataset(*toy_data(8)), None, epochs=1, progress=False, early_stopping=EarlyStopping())
    with pytest.raises(TypeError, match="EarlyStopping"):
        fit(small_net(), TensorDataset(*toy_data(8)), None, epochs=1, progress=False, early_stopping=3)  # type: ignore[arg-type]


def test_lightning_callback_early_stopping_stops_and_restores() -> None:
    pl = pytest.importorskip("lightning.pytorch")
    from xaisparse.integrations.lightning import SparsityCallback

    class Net(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_net(seed=7)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch, i):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def validation_step(self, batch, i):
            self.log("val_loss", nn.functional.cross_entropy(self(batch[0]), batch[1]))

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.05)

    class Snapshots(pl.Callback):  # the weights after every epoch, before SparsityCallback restores any
        def __init__(self) -> None:
            self.states: dict[int, dict] = {}

        def on_train_epoch_end(self, trainer, module) -> None:
            self.states[trainer.current_epoch + 1] = copy.deepcopy(module.state_dict())

    train, test = es_data()
    model, snaps = Net(), Snapshots()
    cb = SparsityCallback(val=test.tensors[0], early_stopping=EarlyStopping(patience=3), log_statistic=None)
    trainer = pl.Trainer(
        max_epochs=30,
        callbacks=[snaps, cb],
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(train, batch_size=16), DataLoader(test, batch_size=64))
    loss = cb.history.metric("val", "loss")
    stop = early_stopping_epoch(loss, patience=3)
    assert stop is not None and stop < 30
    assert cb.early_stopping.stopped_epoch == stop and cb.history.epochs[-1] == stop
    best = restored_best_epoch(loss, stop)
    assert cb.early_stopping.restored_epoch == best
    assert all(torch.equal(v, snaps.states[best][k]) for k, v in model.state_dict().items())
    assert cb.history.outcome.stopped_early_at == stop


def test_cli_early_stopping_and_verdict_order(tmp_path, capsys) -> None:
    from xaisparse.cli import main
    from xaisparse.history import History

    out = tmp_path / "run"
    args = ["run", "--out", str(out), "--epochs", "6", "--train-subset", "60", "--width", "4", "--probe-size", "64"]
    assert main([*args, "--early-stopping", "2", "--no-progress", "--no-report"]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    first = {
        key: next(i for i, line in enumerate(lines) if line.startswith(key))
        for key in ("test-loss", "early", "sparsity")
    }
    assert first["test-loss"] < first["early"] < first["sparsity"]
    assert "not validated" in lines[first["sparsity"]]
    h = History.load(out / "history")
    assert h.config["early_stopping"]["patience"] == 2
    loss = h.metric("test", "loss")
    assert h.config["early_stopping"]["stopped_epoch"] == early_stopping_epoch(loss, patience=2)
