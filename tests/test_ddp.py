"""SparsityMonitor under torch.distributed: real two-process gloo groups on the CPU.

``compute()`` is a collective. Ranks that saw no batch, fewer batches, or other splits than the
others must neither deadlock nor pair up the wrong all-reduces, also across ``reset()``. Before
the fix a rank without data created no estimator and skipped the all-reduces the others were
waiting in: the first case below then blocks until the process group's timeout (20 s here),
and the test fails instead of hanging. Results are compared with one process fed every batch.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from tests.distributed import free_port, spawn
from xaisparse.monitor import SparsityMonitor, SparsityReport

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available in this build"
)

BINS = 8
#: Per epoch, the batches each rank measures, by split (then ``compute()`` and ``reset()``).
PLAN: list[tuple[dict[str, list[int]], dict[str, list[int]]]] = [
    ({"test": [0, 1, 2]}, {}),  # rank 1 sees no batch at all (it has no estimator yet)
    ({"test": [3]}, {"test": [4, 5]}),  # uneven
    ({"test": [6]}, {"train": [7]}),  # a split only rank 1 measured
    ({}, {}),  # nothing anywhere: an empty report on both, no hang
]


def _model(width: int = 4) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.ReLU(), nn.Conv2d(width, 3, 3), nn.ReLU())


def _batch(i: int) -> torch.Tensor:
    return torch.randn(3 + i % 2, 1, 7, 7, generator=torch.Generator().manual_seed(100 + i))


def _run_epoch(model: nn.Module, monitor: SparsityMonitor, batches: dict[str, list[int]]) -> SparsityReport:
    for split, ids in batches.items():
        with monitor.track(split), torch.no_grad():
            for i in ids:
                model(_batch(i))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*before any activation")  # the empty epoch
        report = monitor.compute()
    monitor.reset()
    return report


def _init(rank: int, port: int) -> None:
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=20)
    )
    torch.set_num_threads(1)


def _worker(rank: int, port: int, outdir: str) -> None:
    """Both cases in one pair of processes (starting processes is the slow part on a small machine)."""
    _init(rank, port)
    try:
        model = _model()
        monitor = SparsityMonitor(model, bins=BINS)
        reports = [_run_epoch(model, monitor, plan[rank]) for plan in PLAN]
        torch.save(reports, os.path.join(outdir, f"rank{rank}.pt"))

        model = _model(width=4 + rank)  # now the ranks disagree on the first layer's channels
        try:
            _run_epoch(model, SparsityMonitor(model), {"test": [rank]})
            message = "no error"
        except ValueError as err:
            message = str(err)
        Path(outdir, f"rank{rank}.txt").write_text(message)
    finally:
        torch.distributed.destroy_process_group()


@pytest.fixture(scope="module")
def ranks_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    spawn(_worker, (free_port(), str(out)), deadline_s=300)
    return out


def _tables_equal(got: SparsityReport, want: SparsityReport) -> None:
    for attr in ("layers", "channels"):
        g, w = getattr(got, attr), getattr(want, attr)
        keys = [c for c in w.columns if c != "value"]
        merged = w.merge(g, on=keys, how="outer", suffixes=("_want", "_got"), indicator=True)
        assert (merged["_merge"] == "both").all(), merged[merged["_merge"] != "both"]
        # The same float32 per-map values summed in float64 in another order: rounding only.
        got_v, want_v = merged["value_got"].to_numpy(float), merged["value_want"].to_numpy(float)
        np.testing.assert_allclose(got_v, want_v, rtol=1e-12, atol=1e-12)
    assert got.spatial_hist.keys() == want.spatial_hist.keys()
    for key in want.spatial_hist:
        np.testing.assert_array_equal(got.spatial_hist[key], want.spatial_hist[key])
        np.testing.assert_array_equal(got.population_hist[key], want.population_hist[key])


def test_compute_with_idle_uneven_and_disjoint_ranks_equals_one_process(ranks_dir: Path) -> None:
    ranks = [torch.load(ranks_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    model = _model()
    reference = SparsityMonitor(model, bins=BINS)
    for epoch, (mine, theirs) in enumerate(PLAN):
        union = {s: mine.get(s, []) + theirs.get(s, []) for s in {*mine, *theirs}}
        want = _run_epoch(model, reference, union)
        for r in (0, 1):
            _tables_equal(ranks[r][epoch], want)
        if not union:
            assert ranks[0][epoch].layers.empty and ranks[1][epoch].layers.empty
    assert len(ranks[0][0].layers.layer.unique()) == 2  # the idle rank reports both layers too


def test_ranks_with_different_channel_counts_raise_on_every_rank(ranks_dir: Path) -> None:
    for r in (0, 1):
        message = (ranks_dir / f"rank{r}.txt").read_text()
        assert "ranks disagree" in message and "4 channels" in message and "5 on rank 1" in message


# -- examples/ddp_train.py under torchrun ---------------------------------------------------------
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ddp_train.py"
EXAMPLE_ARGS = ["--epochs", "3", "--train-subset", "256", "--batch-size", "32", "--seed", "3"]


def _run_example_here(out: Path) -> dict:
    """The example as one process, in this one (what ``python examples/ddp_train.py`` does)."""
    spec = importlib.util.spec_from_file_location("ddp_train", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([*EXAMPLE_ARGS, "--out", str(out)])
    return json.loads((out / "stats.json").read_text())


def _run_example_torchrun(out: Path, nproc: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(EXAMPLE.parents[1])}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*torchrun, str(EXAMPLE), *EXAMPLE_ARGS, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "stats.json").read_text())


@pytest.mark.slow
def test_example_under_torchrun_two_processes_equals_one_process(tmp_path: Path, one_thread: None) -> None:
    two = _run_example_torchrun(tmp_path / "two", 2)
    one = _run_example_here(tmp_path / "one")
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert [e["epoch"] for e in two["epochs"]] == [0, 1, 2]
    for e1, e2 in zip(one["epochs"], two["epochs"]):
        # Training: DDP averages the two ranks' gradients of their half-batch means, which is the
        # gradient of the full-batch mean summed in another order, so over 24 SGD steps the
        # weights drift apart by float32 rounding. Measured: losses and penalties 3e-8 relative,
        # statistics 2e-8 absolute (7e-7 relative), histograms identical. Asserted: 10x and more.
        np.testing.assert_allclose(e2["train_loss"], e1["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(e2["penalty"], e1["penalty"], rtol=1e-6)
        l1, l2 = pd.DataFrame(e1["layers"]), pd.DataFrame(e2["layers"])
        keys = ["split", "layer", "statistic"]
        merged = l1.merge(l2, on=keys, suffixes=("_one", "_two"), how="outer", indicator=True)
        assert (merged["_merge"] == "both").all()
        np.testing.assert_allclose(merged["value_two"], merged["value_one"], rtol=1e-5, atol=1e-7)
        counts = merged[merged.statistic.isin(["samples", "num_channels"])]
        assert (counts["value_two"] == counts["value_one"]).all()  # every test image measured once
        # Histogram counts agree except for maps whose sparsity lies within rounding of a bin edge.
        for layer, h1 in e1["spatial_hist"].items():
            h1, h2 = np.asarray(h1), np.asarray(e2["spatial_hist"][layer])
            assert h1.sum() == h2.sum() == 540 * h1.shape[0]  # the whole test split
            assert np.abs(h1 - h2).sum() <= 2
