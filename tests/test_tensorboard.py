"""TensorBoard export, read back with TensorBoard's own EventAccumulator and compared to the History."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from xaisparse import OverfitDetector, fit
from xaisparse.integrations.tensorboard import TensorBoardCallback, write_epoch, write_history
from xaisparse.testing import synthetic_history

pytestmark = pytest.mark.usefixtures("one_thread")


def events(logdir: Path) -> Any:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def check_against(acc: Any, h: Any, stats: tuple[str, ...], channel_stats: tuple[str, ...]) -> int:
    """Every scalar and histogram equals the History's numbers; returns how many were checked."""
    checked = 0
    tags = acc.Tags()
    for split in h.splits:
        for name in h.metric_names():
            series = h.metric(split, name)
            if series.empty:
                continue
            got = {e.step: e.value for e in acc.Scalars(f"{split}/{name}")}
            assert sorted(got) == series.index.tolist()
            np.testing.assert_allclose([got[e] for e in series.index], series.to_numpy(), rtol=1e-6)
            checked += len(got)
    for split in h.sparsity_splits:
        for layer in h.layer_names:
            for stat in stats:
                series = h.layer_series(split, layer, stat).dropna()
                got = {e.step: e.value for e in acc.Scalars(f"sparsity/{stat}/{split}/{layer}")}
                assert sorted(got) == series.index.tolist()
                np.testing.assert_allclose([got[e] for e in series.index], series.to_numpy(), rtol=1e-6)
                checked += len(got)
            for stat in channel_stats:
                tag = f"sparsity/channels/{stat}/{split}/{layer}"
                assert tag in tags["histograms"]
                by_step = {e.step: e.histogram_value for e in acc.Histograms(tag)}
                assert sorted(by_step) == h.epochs
                for epoch, hv in by_step.items():
                    v = h.channel_values(split, layer, epoch, stat)
                    v = v[np.isfinite(v)]
                    assert hv.num == v.size
                    np.testing.assert_allclose([hv.min, hv.max], [v.min(), v.max()], rtol=1e-6)
                    np.testing.assert_allclose(hv.sum, v.sum(), rtol=1e-6)
                    np.testing.assert_allclose(hv.sum_squares, (v**2).sum(), rtol=1e-6)
                    checked += 1
    return checked


def test_write_history_reads_back(tmp_path: Path) -> None:
    h = synthetic_history(epochs=5, layers=("conv1", "conv2"), channels=6)
    tags = write_history(h, tmp_path, statistics=("spatial_mean", "dead_fraction"), channel_statistics="spatial_mean")
    acc = events(tmp_path)
    assert set(acc.Tags()["scalars"]) | set(acc.Tags()["histograms"]) == set(tags)
    n = check_against(acc, h, ("spatial_mean", "dead_fraction"), ("spatial_mean",))
    e = len(h.epochs)
    assert e == 5
    # 2 splits x 2 metrics x 5 epochs + 2 splits x 2 layers x (2 stats x 5 epochs + 5 histograms)
    assert n == 2 * 2 * e + 2 * 2 * (2 * e + e)


def test_a_given_writer_is_left_open(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    h = synthetic_history(epochs=2, layers=("a",), channels=3)
    with SummaryWriter(tmp_path) as writer:
        write_history(h, writer)
        writer.add_scalar("after", 1.0, 0)  # still usable
    assert "after" in events(tmp_path).Tags()["scalars"]


def test_live_callback_during_fit_equals_the_history(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(48, 1, 8, 8), torch.randint(0, 3, (48,)))
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3))
    with TensorBoardCallback(tmp_path) as tb:
        h = fit(net, data, data, epochs=2, progress=False, callbacks=[tb], detector=OverfitDetector(warmup=0))
    acc = events(tmp_path)
    assert check_against(
        acc, h, ("spatial_mean", "population_mean", "sample_mean"), ("spatial_mean", "sample_sparsity")
    )
    alarm = {e.step: e.value for e in acc.Scalars("sparsity/alarm")}
    assert alarm == {e: float(h.alarm_epoch is not None and e >= h.alarm_epoch) for e in h.epochs}


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda h, d: write_history(h, 3), TypeError, "SummaryWriter"),
        (lambda h, d: write_history("run", d), TypeError, "History"),
        (lambda h, d: write_history(h, d, statistics=("mean",)), ValueError, "statistics"),
        (lambda h, d: write_history(h, d, channel_statistics="sample_mean"), ValueError, "channel_statistics"),
        (lambda h, d: write_epoch(h, d, 99), TypeError, "SummaryWriter|epoch"),
        (lambda h, d: TensorBoardCallback(d, colour="red"), TypeError, "unexpected option"),
    ],
)
def test_bad_arguments(tmp_path: Path, call: Any, error: type, match: str) -> None:
    h = synthetic_history(epochs=2, layers=("a",), channels=3)
    with pytest.raises(error, match=match):
        call(h, tmp_path)
