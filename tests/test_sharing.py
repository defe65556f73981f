"""A monitor and a penalty on the same model: one recorder, one read of each activation, and fit's
``train_statistics="training"`` (the train split's sparsity from the training forwards).

References: a monitor and a penalty each on their own (different layer selections, so nothing
is shared), run on the same forwards; hooks counted on the model; reads of the activations
counted with the profiler (one ``log`` pass per activation).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile
from torch.utils.data import TensorDataset

from xaisparse import fit
from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.testing import count_hooks

pytestmark = pytest.mark.usefixtures("one_thread")


def net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.GELU(),  # signed activations: the path with |x|
        nn.Flatten(),
        nn.Linear(6 * 8 * 8, 3),
    )


LAYERS = ["1", "3"]


def batch(seed: int = 1, n: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def log_passes(fn) -> int:
    """Top-level log passes while ``fn`` runs: one per read of an activation (``aten::xlogy``, the
    forward's ``x ln x``) and per backward (``aten::log_``)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(
        1
        for e in prof.events()
        if e.name in ("aten::xlogy", "aten::log_")
        and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )


def test_same_selection_shares_one_recorder_and_one_set_of_hooks() -> None:
    model = net()
    monitor, penalty = SparsityMonitor(model, LAYERS), SparsityPenalty(model, LAYERS)
    assert monitor.recorder is penalty.recorder
    alone = count_hooks(model)
    with penalty:
        one = count_hooks(model)
        with monitor.track("train"):
            assert count_hooks(model) == one  # no second set
        assert count_hooks(model) == one  # the penalty still holds them
    assert count_hooks(model) == alone == 0
    # either may leave first, also after an exception
    with pytest.raises(RuntimeError, match="boom"):
        with monitor.track("train"):
            penalty.attach()
            raise RuntimeError("boom")
    assert count_hooks(model) == one  # the penalty is still attached
    x, _ = batch()
    model(x)  # the penalty records (grad enabled), the monitor (not tracking) does not
    assert set(penalty.terms) == set(LAYERS) and monitor.splits == []
    penalty.detach()
    assert count_hooks(model) == 0
    assert SparsityMonitor(model, ["1"]).recorder is not penalty.recorder  # another selection: its own


def test_selections_of_different_calls_of_one_module_are_not_shared() -> None:
    """'act#1' and 'act#2' hook the same module: each selection keeps its own recorder (and calls)."""

    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2, self.act = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.conv2(self.act(self.conv1(x))))

    torch.manual_seed(0)
    model = Twice()
    first, second, both = (SparsityMonitor(model, sel) for sel in ("act#1", "act#2", "act"))
    assert len({id(first.recorder), id(second.recorder), id(both.recorder)}) == 3
    assert SparsityPenalty(model, "act#2").recorder is second.recorder  # the same selection: shared
    x, _ = batch()
    for monitor in (first, second, both):
        with monitor.track("test"), torch.no_grad():
            model(x)
    assert (first.layer_names, second.layer_names, both.layer_names) == (["act"], ["act#2"], ["act", "act#2"])


def test_a_penalty_attached_for_the_monitor_only_records_nothing_and_user_attach_still_works() -> None:
    model = net()
    monitor, penalty = SparsityMonitor(model, LAYERS), SparsityPenalty(model, LAYERS)
    x, _ = batch()
    with monitor.track("train"):
        model(x)
    assert penalty.terms == {}  # the hooks were there for the monitor only
    with monitor.track("train"), pytest.raises(RuntimeError, match="the penalty is not attached"):
        model(x)
        penalty()  # the hooks are attached, but for the monitor: the penalty says it was not
    with penalty.recorder:  # attached by the user directly, as before: the penalty records
        model(x)
    assert set(penalty.terms) == set(LAYERS)
    assert count_hooks(model) == 0


def train_step(model: nn.Module, penalty: SparsityPenalty, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y) + penalty()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("first", ["monitor", "penalty"])
def test_one_read_per_activation_and_the_same_results_as_separate_users(first: str) -> None:
    """Both on one model vs each alone on a copy (the steps compute gradients without updating the
    weights, so every forward sees the same model): identical gradients and statistics. The user
    built first is called first: it reads, the other takes its sums."""
    shared_model, monitor_model, penalty_model = net(), net(), net()
    if first == "monitor":
        monitor = SparsityMonitor(shared_model, LAYERS)
        penalty = SparsityPenalty(shared_model, LAYERS, weight=0.3)
    else:
        penalty = SparsityPenalty(shared_model, LAYERS, weight=0.3)
        monitor = SparsityMonitor(shared_model, LAYERS)
    ref_monitor = SparsityMonitor(monitor_model, LAYERS)
    ref_penalty = SparsityPenalty(penalty_model, LAYERS, weight=0.3)
    steps = [batch(seed) for seed in range(3)]
    with penalty, monitor.track("train"):
        reads = log_passes(lambda: shared_model(steps[0][0]))
        grads = [train_step(shared_model, penalty, x, y) for x, y in steps]
    with ref_monitor.track("train"):
        monitor_reads = log_passes(lambda: monitor_model(steps[0][0]))
        for x, _ in steps:
            monitor_model(x)
    with ref_penalty:
        penalty_reads = log_passes(lambda: penalty_model(steps[0][0]))
        ref_grads = [train_step(penalty_model, ref_penalty, x, y) for x, y in steps]
    assert reads == monitor_reads == penalty_reads == len(LAYERS)  # one read per activation for both
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    got, want = monitor.compute(), ref_monitor.compute()
    assert got.layers.equals(want.layers) and got.channels.equals(want.channels)
    assert got.layer_value("train", "1", "samples") == 4 * 5  # the profiled forward and the three steps
    for key, hist in want.spatial_hist.items():
        np.testing.assert_array_equal(got.spatial_hist[key], hist)
    # the monitor's state holds no autograd graph of the penalty's
    assert not any(t.requires_grad for est in monitor._estimators.values() for t in est.metric_state().values())
    assert count_hooks(shared_model) == 0


def test_a_garbage_collected_user_drops_out_of_the_shared_recorder() -> None:
    model = net()
    penalty = SparsityPenalty(model, LAYERS)
    monitor = SparsityMonitor(model, LAYERS)
    assert monitor.recorder is penalty.recorder
    del monitor
    gc.collect()
    x, _ = batch()
    with penalty:
        model(x)
        assert set(penalty.terms) == set(LAYERS)
    assert count_hooks(model) == 0


# -- fit(train_statistics=...) ------------------------------------------------------------------
def data(n: int = 24) -> TensorDataset:
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def run(train_statistics: str, **kw: object):
    model = net(seed=4)  # no batch norm, no dropout: train and eval mode forwards agree
    return fit(
        model,
        data(),
        data(),
        epochs=2,
        lr=0.0,  # the weights never change: the epoch's training forwards see the probe's model
        batch_size=8,
        monitor=SparsityMonitor(model, LAYERS),
        penalty=SparsityPenalty(model, LAYERS, weight=0.5),
        progress=False,
        train_statistics=train_statistics,
        **kw,
    )


def test_fit_takes_the_train_split_from_the_training_forwards_when_asked() -> None:
    probe, training = run("probe"), run("training")
    assert training.config["train_statistics"] == "training" and probe.config["train_statistics"] == "probe"
    a, b = probe.layers, training.layers
    assert list(a.columns) == list(b.columns) and len(a) == len(b)
    cols = [c for c in a.columns if c != "value"]
    merged = a.merge(b, on=cols, suffixes=("_probe", "_training"))
    assert len(merged) == len(a)
    # same model, same 24 samples, same mode (no BN, no dropout), weights unchanged: the same numbers
    np.testing.assert_allclose(merged.value_training, merged.value_probe, rtol=1e-9, atol=1e-12)
    assert (a.query("split == 'train'").statistic == "samples").any()
    samples = b.query("split == 'train' and statistic == 'samples'").value
    assert (samples == 24).all()  # every training sample once per epoch (the probe takes them all too)
    with pytest.raises(ValueError, match="train_statistics must be 'probe' or 'training', got 'eval'"):
        run("eval")
