"""History: tidy tables, atomic save/load, and clear errors for damaged or foreign run directories."""

import json

import numpy as np
import pandas as pd
import pytest

from tests import oracle
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
        np.testing.assert_array_equal(h1.population_hist[key], h2.population_hist[key])
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
    m = hist.layer_frame("test")
    assert list(m.columns) == ["a", "b"] and list(m.index) == [0, 1, 2, 3, 4]
    rows = hist.layers[
        (hist.layers.split == "test") & (hist.layers.layer == "b") & (hist.layers.statistic == "spatial_mean")
    ]
    assert m["b"].tolist() == rows.value.tolist()
    with pytest.warns(DeprecationWarning, match="layer_frame"):
        old = hist.layer_matrix("test")
    pd.testing.assert_frame_equal(old, m.T, check_names=False)
    assert hist.histogram("test", "a", 2).shape == (3, 20)
    with pytest.raises(KeyError, match="recorded epochs"):
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
    m = nan_h.layer_frame("test")
    assert list(m.index) == [0, 1, 2, 3, 4] and m.loc[3].isna().all()  # an all-NaN epoch keeps its row
    loss = hist.metric("test", "loss")
    assert hist.test_loss_minimum() == (int(loss.idxmin()), pytest.approx(loss.min()))
    frame = hist.metric_frame("loss")
    assert list(frame.columns) == ["train", "test"]
    np.testing.assert_array_equal(frame["test"].to_numpy(), loss.to_numpy())
    counts = hist.histogram("test", "a", 2)
    np.testing.assert_array_equal(hist.pooled_histogram("test", "a", 2), counts.sum(0))
    assert hist.histogram_epochs("test", "a") == [0, 1, 2, 3, 4] and hist.histogram_epochs("val", "a") == []
    with pytest.raises(KeyError, match="splits with histograms"):
        hist.histogram("val", "a", 2)
    with pytest.raises(ValueError, match="closest"):
        hist.check_layer("c")


def test_one_value_per_epoch_is_the_one_rule(tmp_path, hist):
    """Duplicates are refused where tables enter a History, so no reader drops them."""
    from xaisparse.detect import early_stopping_epoch
    from xaisparse.detect.baselines import restored_best_epoch, train_loss_plateau_epoch
    from xaisparse.history import epoch_series

    twice = pd.concat([hist.metrics, hist.metrics.iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match="duplicate row"):
        History(metrics=twice)
    with pytest.raises(ValueError, match="duplicate row"):
        History(layers=pd.concat([hist.layers, hist.layers.iloc[-1:]], ignore_index=True))
    path = hist.save(tmp_path / "run")
    twice.to_parquet(path / "metrics.parquet", index=False)
    manifest = json.loads((path / "history.json").read_text())
    import hashlib

    manifest["files"]["metrics.parquet"] = hashlib.sha256((path / "metrics.parquet").read_bytes()).hexdigest()
    (path / "history.json").write_text(json.dumps(manifest))
    with pytest.raises(HistoryFormatError, match="duplicate row"):
        History.load(path)
    doubled = pd.Series([1.0, 0.5, 0.7], index=[0, 1, 1])
    for use in (
        epoch_series,
        early_stopping_epoch,
        lambda s: restored_best_epoch(s, 1),
        lambda s: train_loss_plateau_epoch(s, window=1),
    ):
        with pytest.raises(ValueError, match=r"epoch\(s\) \[1\] more than once"):
            use(doubled)
    assert epoch_series(pd.Series([3.0, 1.0], index=[5, 2])).index.tolist() == [2, 5]  # sorted by epoch


def test_loss_minimum_is_the_earliest_finite_argmin():
    from xaisparse.history import loss_minimum

    rng = np.random.default_rng(3)
    for _ in range(20):
        values = rng.choice([0.5, 0.7, 1.0, np.nan, np.inf], size=8)
        epochs = rng.permutation(np.arange(10, 18))
        finite = [(e, v) for e, v in zip(epochs, values) if np.isfinite(v)]
        expected = min(finite, key=lambda ev: (ev[1], ev[0])) if finite else None  # lowest value, then epoch
        got = loss_minimum(pd.Series(values, index=epochs))
        assert got == (None if expected is None else (int(expected[0]), float(expected[1])))


def test_queries_over_one_epoch_and_the_histogram_keys(hist):
    metrics = {"train": {"loss": 0.25, "accuracy": 0.5}, "val": {"loss": 0.75}}
    h = History()
    h.record_epoch(3, metrics)
    assert h.epoch_metrics(3) == metrics and h.epoch_metrics(4) == {}
    assert h.sparsity_epochs == [] and h.epochs == [3]
    assert hist.sparsity_epochs == [0, 1, 2, 3, 4]
    for epoch in (0, 4):
        for stat in ("spatial_mean", "sample_mean"):
            expected = oracle.epochs_by_layers(hist.layers, "train", stat)[epoch]
            assert hist.layer_values("train", epoch, stat) == expected
    assert hist.layer_values("train", 99) == {}
    assert hist.histogram_splits == ["train", "test"] and hist.histogram_layers == ["a", "b"]
    assert History().histogram_splits == [] and History().histogram_layers == []


def _rewrite_manifest(path, manifest) -> None:
    import hashlib

    manifest["files"] = {n: hashlib.sha256((path / n).read_bytes()).hexdigest() for n in manifest["files"]}
    (path / "history.json").write_text(json.dumps(manifest))


def test_schema_2_runs_load_with_the_population_names(tmp_path, hist):
    """Schema 2 called the population (channel-axis) statistics channel_*: they load as population_*."""
    hist.detection = OverfitDetector(signal="gap", statistic="population_mean").detect(hist)
    hist.config["detector"] = {"statistic": "population_mean", "signal": "gap"}
    path = hist.save(tmp_path / "v2")
    manifest = json.loads((path / "history.json").read_text())
    t = pd.read_parquet(path / "layers.parquet")
    t["statistic"] = t["statistic"].replace({"population_mean": "channel_mean", "population_std": "channel_std"})
    t.to_parquet(path / "layers.parquet", index=False)
    with np.load(path / "histograms.npz") as npz:
        arrays = {k.replace("population_", "channel_"): npz[k] for k in npz.files}
    np.savez_compressed(path / "histograms.npz", **arrays)
    manifest["schema_version"] = 2
    manifest["config"]["detector"]["statistic"] = "channel_mean"
    manifest["detection"]["params"]["statistic"] = "channel_mean"
    _rewrite_manifest(path, manifest)
    old = History.load(path)
    assert "channel_mean" not in old.statistics() and {"population_mean", "population_std"} <= set(old.statistics())
    _same(hist, old)
    assert old.config["detector"]["statistic"] == old.detection.params["statistic"] == "population_mean"
    saved = old.save(tmp_path / "v3")
    assert json.loads((saved / "history.json").read_text())["schema_version"] == 3


def test_the_old_statistic_names_still_work_with_a_warning(hist):
    from xaisparse import plots
    from xaisparse.detect import DetectorConfig

    with pytest.warns(DeprecationWarning, match="population_mean"):
        old = hist.layer_frame("test", statistic="channel_mean")
    pd.testing.assert_frame_equal(old, hist.layer_frame("test", statistic="population_mean"))
    with pytest.warns(DeprecationWarning, match="population_std"):
        assert DetectorConfig(statistic="channel_std").statistic == "population_std"
    with pytest.warns(DeprecationWarning, match="population_mean"):
        plots.timeline(hist, statistic="channel_mean")
    with pytest.warns(DeprecationWarning, match="population_hist"):
        assert hist.channel_hist is hist.population_hist


def test_the_saved_study_runs_load():
    from pathlib import Path

    for path in sorted((Path(__file__).parent / "data" / "explore").iterdir()):
        h = History.load(path)  # schema 2 on disk
        assert "population_mean" in h.statistics() and "channel_mean" not in h.statistics()
        assert set(h.population_hist) == set(h.spatial_hist) and h.layer_frame("test").shape[0] == len(h.epochs)
