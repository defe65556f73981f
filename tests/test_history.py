"""History: tidy tables, atomic save/load, and clear errors for damaged or foreign run directories."""

import json

import numpy as np
import pandas as pd
import pytest

from xaisparse import HistoryFormatError
from xaisparse.detect import OverfitDetector
from xaisparse.history import History, RunOutcome, load_runs
from xaisparse.testing import synthetic_history


@pytest.fixture
def hist():
    return synthetic_history(epochs=5, layers=("a", "b"), channels=3, seed=1)


def _same(h1: History, h2: History) -> None:
    for kind in ("metrics", "layers", "channels"):
        a = h1.to_dataframe(kind).astype(
            {c: str for c in ("split", "layer", "statistic", "metric") if c in h1.to_dataframe(kind)}
        )
        b = h2.to_dataframe(kind).astype({c: str for c in a.columns if a[c].dtype == object})
        pd.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)
    assert sorted(h1.spatial_hist) == sorted(h2.spatial_hist)
    for key in h1.spatial_hist:
        np.testing.assert_array_equal(h1.spatial_hist[key], h2.spatial_hist[key])
        np.testing.assert_array_equal(h1.channel_hist[key], h2.channel_hist[key])
        assert h1.hist_epochs[key] == h2.hist_epochs[key]
    assert h1.config == h2.config and h1.layer_names == h2.layer_names


def test_round_trip(tmp_path, hist):
    result = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(hist)
    result.params["score"] = float("nan")
    hist.detection = result
    hist.outcome = RunOutcome(train_seconds=1.5, stopped_early_at=3, stop_reason="test")
    path = hist.save(tmp_path / "run")
    loaded = History.load(path)
    _same(hist, loaded)
    got = loaded.detection
    assert (got.alarm_epoch, got.layers, got.onsets, got.minima) == (
        result.alarm_epoch,
        result.layers,
        result.onsets,
        result.minima,
    )
    assert got.monitored == result.monitored and got.epochs == result.epochs == [0, 1, 2, 3, 4]
    assert got.params["score"] is None  # NaN -> null in JSON
    pd.testing.assert_frame_equal(got.evidence, result.evidence)
    assert loaded.outcome == hist.outcome
    # a run directory holding the history in history/ loads too
    hist.save(tmp_path / "outer" / "history")
    _same(hist, History.load(tmp_path / "outer"))


def test_tidy_tables_and_accessors(hist):
    assert list(hist.to_dataframe("channels").columns) == ["epoch", "split", "layer", "channel", "statistic", "value"]
    assert hist.epochs == [0, 1, 2, 3, 4]
    m = hist.layer_matrix("test")
    assert list(m.index) == ["a", "b"] and list(m.columns) == [0, 1, 2, 3, 4]
    rows = hist.layers[
        (hist.layers.split == "test") & (hist.layers.layer == "b") & (hist.layers.statistic == "spatial_mean")
    ]
    assert m.loc["b"].tolist() == rows.value.tolist()
    assert hist.histogram("test", "a", 2).shape == (3, 20)
    with pytest.raises(ValueError, match="recorded epochs"):
        hist.histogram("test", "a", 99)
    with pytest.raises(ValueError, match="kind must be one of"):
        hist.to_dataframe("nope")
    with pytest.raises(ValueError, match="already recorded"):
        hist.record_epoch(2, {"train": {"loss": 1.0}})


def test_overwrite_is_atomic_and_refuses_foreign_dirs(tmp_path, hist):
    path = hist.save(tmp_path / "run")
    other = synthetic_history(epochs=3, layers=("a",), channels=2, seed=5)
    other.save(path)  # replacing a saved History is fine
    assert History.load(path).epochs == [0, 1, 2]
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not a saved xaisparse History"):
        hist.save(foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"


def test_failed_save_leaves_previous_run_intact(tmp_path, hist, monkeypatch):
    path = hist.save(tmp_path / "run")
    before = {p.name: p.read_bytes() for p in path.iterdir()}

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", boom)
    with pytest.raises(OSError, match="disk full"):
        synthetic_history(epochs=2, seed=9).save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp directory left behind


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda p: (p / "layers.parquet").write_bytes((p / "layers.parquet").read_bytes()[:100]),
            "corrupt or truncated",
        ),
        (lambda p: (p / "histograms.npz").unlink(), "histograms.npz is missing"),
        (lambda p: (p / "history.json").write_text('{"format": "xaisparse.history", "schema'), "not valid JSON"),
        (
            lambda p: (p / "history.json").write_text(json.dumps({"format": "something-else"})),
            "not an xaisparse history",
        ),
        (
            lambda p: (p / "history.json").write_text(
                json.dumps({"format": "xaisparse.history", "schema_version": 99})
            ),
            "schema version 99",
        ),
        (lambda p: (p / "history.json").unlink(), "not an xaisparse run directory"),
    ],
)
def test_damaged_runs_get_clear_errors(tmp_path, hist, damage, message):
    path = hist.save(tmp_path / "run")
    damage(path)
    with pytest.raises(HistoryFormatError, match=message):
        History.load(path)


def test_load_runs_names_and_missing(tmp_path):
    a = synthetic_history(epochs=3, seed=1)
    b = synthetic_history(epochs=3, seed=1)  # same config name: made unique
    runs = load_runs([a.save(tmp_path / "a"), b.save(tmp_path / "b")])
    assert list(runs) == ["synthetic-1", "synthetic-1 (2)"]
    with pytest.raises(FileNotFoundError, match="no run directory"):
        History.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="at least one"):
        load_runs([])


def test_schema_1_runs_load_with_the_new_names(tmp_path, hist):
    """A run directory written by xaisparse 0.1 (schema 1): lifetime_* statistics, results in config."""
    path = hist.save(tmp_path / "old")
    manifest = json.loads((path / "history.json").read_text())
    for kind in ("layers", "channels"):
        t = pd.read_parquet(path / f"{kind}.parquet")
        t["statistic"] = t["statistic"].replace(
            {"sample_mean": "lifetime_mean", "sample_sparsity": "lifetime_sparsity"}
        )
        t.to_parquet(path / f"{kind}.parquet", index=False)
    import hashlib

    manifest["files"] = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in manifest["files"]}
    manifest["schema_version"] = 1
    manifest["config"].update(train_seconds=12.5, stopped_early_at=4)
    manifest["detector"] = {"alarm_epoch": 2, "layers": ["a"], "onsets": {"a": 1}, "params": {"split": "test"}}
    for key in ("detection", "outcome"):
        manifest.pop(key)
    (path / "history.json").write_text(json.dumps(manifest))
    old = History.load(path)
    assert set(old.statistics()) == set(hist.statistics())
    assert "lifetime_mean" not in set(old.layers.statistic)
    assert old.outcome == RunOutcome(train_seconds=12.5, stopped_early_at=4)
    assert "train_seconds" not in old.config and old.alarm_epoch == 2 and old.detection.onsets == {"a": 1}


def test_queries_the_widgets_and_reports_use(hist):
    nan_h = synthetic_history(epochs=5, layers=("a", "b"), channels=3, seed=1, nan_epoch=3)
    m = nan_h.layer_matrix("test")
    assert list(m.columns) == [0, 1, 2, 3, 4] and m[3].isna().all()  # an all-NaN epoch keeps its column
    loss = hist.metric("test", "loss")
    assert hist.test_loss_minimum() == (int(loss.idxmin()), pytest.approx(loss.min()))
    frame = hist.metric_frame("loss")
    assert list(frame.columns) == ["train", "test"]
    np.testing.assert_array_equal(frame["test"].to_numpy(), loss.to_numpy())
    counts = hist.histogram("test", "a", 2)
    np.testing.assert_array_equal(hist.pooled_histogram("test", "a", 2), counts.sum(0))
    assert hist.histogram_epochs("test", "a") == [0, 1, 2, 3, 4]
    for query in (lambda: hist.histogram_epochs("val", "a"), lambda: hist.histogram("val", "a", 2)):
        with pytest.raises(ValueError, match=r"split 'val' is not recorded in this run; .*\['train', 'test'\]"):
            query()
    with pytest.raises(ValueError, match="closest"):
        hist.check_layer("c")
