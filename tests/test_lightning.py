"""SparsityCallback with a real lightning.Trainer on CPU, against the NumPy/SciPy oracle.

The recorded statistics are compared to a one-shot reference on the same model and probe
data (forward hooks, ``tests.oracle``); the penalty's parameter update to a hand-written torch
formula of the sparsity; the model's training to a run without the callback; the checkpointed
History to the one of the run; ``strategy="ddp"`` (2 gloo processes, bounded) to one process.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests import oracle

pl = pytest.importorskip("lightning.pytorch")

from xaisparse import SparsityPenalty  # noqa: E402
from xaisparse.integrations.lightning import SparsityCallback, sparsity_penalty  # noqa: E402

LAYERS = ["net.1", "net.3"]
pytestmark = pytest.mark.usefixtures("one_thread")


class Net(pl.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 3)
        )
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss + sparsity_penalty(self)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def data(n: int = 24, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g)


def trainer(callbacks: list[Any], epochs: int = 2, **kw: Any) -> Any:
    opts: dict[str, Any] = dict(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    opts.update(kw)
    return pl.Trainer(callbacks=callbacks, **opts)


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int = 8) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def reference(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per-layer statistics by forward hooks and the oracle, on float64 copies of the activations."""
    acts: dict[str, np.ndarray] = {}
    modules = dict(model.named_modules())
    handles = [
        modules[n].register_forward_hook(lambda m, i, o, n=n: acts.__setitem__(n, o.detach().double().numpy()))
        for n in LAYERS
    ]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return {name: oracle.layer_reference(a) for name, a in acts.items()}


def assert_matches(history: Any, split: str, epoch: int, ref: dict[str, dict[str, Any]]) -> None:
    for layer, want in ref.items():
        got = history.channel_values(split, layer, epoch, "spatial_mean")
        np.testing.assert_allclose(got, want["spatial_mean"], rtol=1e-5, atol=1e-6)
        got = history.channel_values(split, layer, epoch, "sample_sparsity")
        np.testing.assert_allclose(got, want["sample_sparsity"], rtol=1e-5, atol=1e-6)
        for stat, key in (
            ("spatial_mean", "layer_spatial_mean"),
            ("population_mean", "channel_mean"),  # History name, oracle (estimator) key
            ("dead_fraction", "layer_dead_fraction"),
        ):
            got = history.layer_series(split, layer, stat).loc[epoch]
            np.testing.assert_allclose(got, want[key], rtol=1e-5, atol=1e-6, err_msg=f"{layer} {stat}")


def hooks(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


def test_statistics_match_the_oracle_every_epoch_and_training_is_unchanged() -> None:
    x, y = data()
    xv, yv = data(16, seed=1)
    torch.manual_seed(0)
    model = Net()
    initial = copy.deepcopy(model)
    snapshots: dict[int, nn.Module] = {}

    class Snapshot(pl.Callback):  # the model at each epoch end, before SparsityCallback measures it
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            snapshots[trainer.current_epoch + 1] = copy.deepcopy(pl_module)

    modes: list[bool] = []

    class Mode(pl.Callback):  # runs after SparsityCallback's probe passes (in eval mode)
        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            modes.append(pl_module.training)

    cb = SparsityCallback(train=(x, y), val=loader(xv, yv), test=xv + 0.5, batch_size=7)
    trainer([Snapshot(), cb, Mode()], epochs=2).fit(model, loader(x, y), loader(xv, yv))

    h = cb.history
    assert h.epochs == [0, 1, 2]
    assert h.sparsity_splits == ["train", "val", "test"]
    assert h.layer_names == LAYERS
    assert_matches(h, "train", 0, reference(initial, x))
    for epoch in (1, 2):
        assert_matches(h, "train", epoch, reference(snapshots[epoch], x))
        assert_matches(h, "val", epoch, reference(snapshots[epoch], xv))
        assert_matches(h, "test", epoch, reference(snapshots[epoch], xv + 0.5))
    # per-sample map histograms hold every map once
    assert h.histogram("val", "net.3", 2).sum() == 16 * 6
    # what the module logged became the History's metrics
    assert sorted(h.metric_names()) == ["loss"]
    assert set(h.metrics.split) == {"train", "val"}
    # no hook left; the training mode restored after each probe pass
    assert hooks(model) == 0
    assert modes == [True, True]

    # the same training without the callback gives bit-identical weights
    torch.manual_seed(0)
    plain = Net()
    trainer([], epochs=2).fit(plain, loader(x, y), loader(xv, yv))
    for (name, a), (_, b) in zip(model.state_dict().items(), plain.state_dict().items()):
        assert torch.equal(a, b), name


def _sparsity_by_hand(a: torch.Tensor) -> torch.Tensor:
    """Mean spatial sparsity of a ReLU output, written out in torch ops (not the package's code)."""
    v = a.flatten(2)
    s = v.sum(-1, keepdim=True)
    p = v / s.clamp_min(1e-30)
    h = -(torch.where(p > 0, p * torch.log(p.clamp_min(1e-30)), torch.zeros_like(p))).sum(-1)
    pp = torch.where(s.squeeze(-1) > 0, torch.exp(h), torch.ones_like(h))
    return (1 - (pp - 1) / (v.shape[-1] - 1)).mean()


def test_penalty_enters_the_loss_like_a_hand_written_one() -> None:
    x, y = data(8)
    torch.manual_seed(0)
    model = Net(lr=0.5)
    by_hand = copy.deepcopy(model)
    penalty = SparsityPenalty(model.net, weight=0.7)
    cb = SparsityCallback(train=x, penalty=penalty)
    trainer([cb], epochs=1).fit(model, loader(x, y, batch_size=8))

    # one SGD step on task + 0.7 * (mean sparsity of both ReLU outputs), computed by hand
    opt = torch.optim.SGD(by_hand.parameters(), lr=0.5)
    a1 = by_hand.net[1](by_hand.net[0](x))
    a2 = by_hand.net[3](by_hand.net[2](a1))
    out = by_hand.net[5](by_hand.net[4](a2))
    pen = 0.7 * (_sparsity_by_hand(a1) + _sparsity_by_hand(a2))
    (nn.functional.cross_entropy(out, y) + pen).backward()
    opt.step()
    for (name, a), (_, b) in zip(model.state_dict().items(), by_hand.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    np.testing.assert_allclose(cb.history.metric("train", "penalty").loc[1], float(pen.detach()), rtol=1e-5)
    assert hooks(model) == 0 and not penalty.recorder.attached


def test_a_penalty_never_added_to_the_loss_warns() -> None:
    class Forgetful(Net):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

    x, y = data(8)
    model = Forgetful()
    cb = SparsityCallback(train=x, penalty=SparsityPenalty(model, weight=0.1))
    with pytest.warns(RuntimeWarning, match="not added to the loss"):
        trainer([cb], epochs=1).fit(model, loader(x, y))
    assert "penalty" not in cb.history.metric_names()


def test_without_the_callback_the_penalty_is_zero() -> None:
    x, y = data(8)
    model = Net()
    seen = []

    class Look(pl.Callback):
        def on_train_batch_end(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            seen.append(float(sparsity_penalty(pl_module)))

    trainer([Look()], epochs=1).fit(model, loader(x, y))
    assert seen == [0.0]


def test_scalars_reach_the_logger(tmp_path: Path) -> None:
    x, y = data(8)
    model = Net()
    cb = SparsityCallback(train=x, val=x + 1)
    logger = pl.loggers.CSVLogger(tmp_path, name="run", version=0)
    trainer([cb], epochs=2, logger=logger, log_every_n_steps=1).fit(model, loader(x, y), loader(x, y))
    frame = pd.read_csv(tmp_path / "run" / "version_0" / "metrics.csv")
    for split in ("train", "val"):
        for layer in LAYERS:
            logged = frame[f"sparsity/{split}/{layer}"].dropna().to_numpy()
            want = cb.history.layer_series(split, layer, "spatial_mean").to_numpy()
            np.testing.assert_allclose(logged, want, rtol=1e-6)  # epoch 0 (before training), 1, 2


def test_history_travels_with_the_checkpoint_and_resumes(tmp_path: Path) -> None:
    x, y = data()
    torch.manual_seed(0)
    model = Net()
    cb = SparsityCallback(train=x, test=x + 1)
    ckpt = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trainer([cb, ckpt], epochs=2, enable_checkpointing=True).fit(model, loader(x, y))
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain bytes: safe loading works
    saved = [v for k, v in state["callbacks"].items() if "SparsityCallback" in k]
    assert len(saved) == 1

    resumed = SparsityCallback(train=x, test=x + 1)
    torch.manual_seed(0)
    model2 = Net()
    trainer([resumed], epochs=4).fit(model2, loader(x, y), ckpt_path=tmp_path / "last.ckpt")
    h = resumed.history
    assert h.epochs == [0, 1, 2, 3, 4]
    before = cb.history.layers.sort_values(["epoch", "split", "layer", "statistic"]).reset_index(drop=True)
    again = h.layers[h.layers.epoch <= 2].sort_values(["epoch", "split", "layer", "statistic"])
    pd.testing.assert_frame_equal(before, again.reset_index(drop=True), check_dtype=False)
    assert_matches(h, "train", 4, reference(model2, x))


def test_detector_stops_the_trainer() -> None:
    class AlarmAt:
        """A stand-in detector that alarms at epoch 1 (the callback's wiring, not the rule)."""

        alarm_epoch = None
        stop_requested = False

        def update(self, history: Any) -> None:
            if 1 in history.epochs:
                self.alarm_epoch, self.stop_requested = 1, True

        def result(self) -> None:
            return None

    x, y = data(8)
    cb = SparsityCallback(train=x, detector=AlarmAt())
    trainer([cb], epochs=5).fit(Net(), loader(x, y))
    assert cb.history.epochs == [0, 1]
    assert cb.history.outcome.stopped_early_at == 1 and "alarm at epoch 1" in (cb.history.outcome.stop_reason or "")


def test_real_detector_result_is_kept() -> None:
    from xaisparse import OverfitDetector

    x, y = data(8)
    cb = SparsityCallback(train=x, test=x, detector=OverfitDetector(warmup=0, smooth=1))
    trainer([cb], epochs=2).fit(Net(), loader(x, y))
    assert cb.history.detection is not None
    assert cb.history.detection.epochs == [0, 1, 2]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({}, ValueError, "needs probe data"),
        ({"train": "images"}, TypeError, "train= must be a tensor"),
        ({"train": torch.zeros(0, 1, 8, 8)}, ValueError, "empty"),
        ({"train": torch.zeros(2, 1, 8, 8), "monitor": 3}, TypeError, "SparsityMonitor"),
        ({"train": torch.zeros(2, 1, 8, 8), "penalty": 0.1}, TypeError, "SparsityPenalty"),
        ({"train": torch.zeros(2, 1, 8, 8), "log_statistic": "mean"}, ValueError, "log_statistic"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SparsityCallback(**kwargs)


def test_a_penalty_on_another_model_is_refused() -> None:
    x, y = data(8)
    cb = SparsityCallback(train=x, penalty=SparsityPenalty(Net(), weight=0.1))
    with pytest.raises(ValueError, match="not part of the LightningModule"):
        trainer([cb], epochs=1).fit(Net(), loader(x, y))


def test_import_xaisparse_does_not_import_lightning() -> None:
    code = "import sys, xaisparse, xaisparse.integrations; print('lightning' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------- DDP (2 gloo CPU processes)
DDP_SCRIPT = Path(__file__).with_name("lightning_ddp.py")


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    """``strategy="ddp"`` with 2 CPU processes: every epoch's statistics equal the oracle on the model."""
    from tests.distributed import free_port

    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).parents[1]),
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),  # never a port another test (or agent) is using
    }
    try:
        run = subprocess.run(
            [sys.executable, str(DDP_SCRIPT), str(tmp_path)], env=env, capture_output=True, text=True, timeout=400
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the 2-process Lightning DDP run did not finish in 400 s (deadlock?)")
    assert run.returncode == 0, run.stderr[-4000:]
    from xaisparse import History

    x, _ = torch.load(tmp_path / "data.pt")
    for rank in (0, 1):
        h = History.load(tmp_path / f"history_{rank}")
        assert h.epochs == [0, 1, 2]
        for epoch in (0, 1, 2):
            model = Net()
            model.load_state_dict(torch.load(tmp_path / f"model_{epoch}.pt"))
            assert_matches(h, "train", epoch, reference(model, x))
            assert h.histogram("train", "net.1", epoch).sum() == len(x) * 4  # every map once, not twice
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one = History.load(tmp_path / "history_0")
        two = History.load(tmp_path / "history_1")
    pd.testing.assert_frame_equal(one.layers, two.layers)
