"""History: tidy tables; crash-safe save; validated load with clear errors for damaged or foreign runs."""

import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import oracle
from tests.killsave import RUN, first_history, new_history, old_history
from xaisparse import HistoryFormatError, _runfiles
from xaisparse.detect import OverfitDetector
from xaisparse.history import History, HistoryWriter, RunOutcome, load_runs
from xaisparse.testing import synthetic_history

ROOT = Path(__file__).resolve().parents[1]


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
    with pytest.raises(ValueError, match="recorded epochs"):
        hist.histogram("test", "a", 99)
    with pytest.raises(ValueError, match="kind must be one of"):
        hist.to_dataframe("nope")
    with pytest.raises(ValueError, match="already recorded"):
        hist.record_epoch(2, {"train": {"loss": 1.0}})


def test_overwrite_replaces_a_saved_run_and_refuses_foreign_dirs(tmp_path, hist):
    path = hist.save(tmp_path / "run")
    other = synthetic_history(epochs=3, layers=("a",), channels=2, seed=5)
    other.save(path)  # replacing a saved History is fine
    assert History.load(path).epochs == [0, 1, 2]
    assert sorted(p.name for p in path.iterdir()) == ["data-000002", "history.json"]  # the old data are gone
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(FileExistsError, match="not a saved xaisparse History"):
        hist.save(foreign)
    assert (foreign / "cat.jpg").read_bytes() == b"meow"
    (tmp_path / "empty").mkdir()
    _same(hist, History.load(hist.save(tmp_path / "empty")))  # an empty directory is not foreign


def _tree(path):
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("fails", ["serialising", "committing"])
def test_failed_save_leaves_previous_run_intact(tmp_path, hist, monkeypatch, fails):
    path = hist.save(tmp_path / "run")
    before = _tree(path)

    def boom(*a, **k):
        raise OSError("disk full")

    if fails == "serialising":
        monkeypatch.setattr(np.lib.format, "write_array", boom)
    else:  # the new data directory is written; replacing the manifest fails
        monkeypatch.setattr(_runfiles, "atomic_write_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        synthetic_history(epochs=2, seed=9).save(path)
    assert _tree(path) == before  # no new data directory left behind either
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temp directory left behind
    _same(hist, History.load(path))


def test_a_history_that_cannot_be_saved_consistently_writes_nothing(tmp_path, hist):
    hist.hist_epochs[("test", "a")] = hist.hist_epochs[("test", "a")][:-1]  # 5 epochs of counts, 4 listed
    with pytest.raises(ValueError, match=r"histograms of \('test', 'a'\).*for 4 epochs"):
        hist.save(tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- damaged runs
DATA = "data-000001"  # the data directory of a run saved once


def _manifest(path):
    return json.loads((path / "history.json").read_text())


def _signed(manifest: dict) -> bytes:
    """The manifest with a matching checksum (sha256 of its canonical JSON without the checksum key),
    the way a writer would sign it."""
    manifest = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    return json.dumps({**manifest, "manifest_sha256": hashlib.sha256(canonical).hexdigest()}, indent=1).encode()


def _resign(path, change):
    """Apply ``change`` to the manifest, then sign it: so that what is tested is what comes after the checksum."""
    manifest = _manifest(path)
    change(manifest)
    (path / "history.json").write_bytes(_signed(manifest))


def _refile(path, name):
    """Make the manifest's size and SHA-256 of data file ``name`` match the file as it now is."""
    data = (path / DATA / name).read_bytes()

    def change(m):
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}

    _resign(path, change)


def _truncate(path, name):
    f = path / DATA / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda p: _truncate(p, "layers.parquet"), r"layers.parquet is corrupt or truncated: \d+ bytes"),
        (lambda p: (p / DATA / "histograms.npz").unlink(), "incomplete: data-000001/histograms.npz is missing"),
        (lambda p: (p / "history.json").write_text('{"format": "xaisparse.history", "schema'), "not valid JSON"),
        (
            lambda p: (p / "history.json").write_text(json.dumps({"format": "something-else"})),
            "not an xaisparse history",
        ),
        (
            lambda p: (p / "history.json").write_text(
                json.dumps({"format": "xaisparse.history", "schema_version": 99})
            ),
            "schema version 99; this xaisparse reads versions 1..4",
        ),
        (lambda p: (p / "history.json").unlink(), "not an xaisparse run directory"),
        # the examples of issue 17, each given a matching manifest checksum so that the schema decides
        (
            lambda p: _resign(p, lambda m: m["histograms"][0].update(layeR=m["histograms"][0].pop("layer"))),
            r"at \$\.histograms\[0\]: 'layer' is a required property",
        ),
        (
            lambda p: _resign(p, lambda m: m["histograms"][0].update(spatial="spatial_8")),
            r"histograms.npz does not match .*history.json: array 'spatial_8' of \('test', 'a'\) is missing",
        ),
        (
            lambda p: _resign(p, lambda m: m["histograms"][1].update(epochz=m["histograms"][1].pop("epochs"))),
            r"at \$\.histograms\[1\]: 'epochs' is a required property",
        ),
        (lambda p: _resign(p, lambda m: m["histograms"][1].update(epochs=[0, 1])), r"shape \(5, 3, 20\), expected \(2"),
        (lambda p: _resign(p, lambda m: m["histograms"][1].update(epochs=[0, 2, 1, 3, 4])), "strictly increasing"),
        (lambda p: _resign(p, lambda m: m["histograms"][1].update(split="held-out")), r"histograms\[1\]\.split"),
        (lambda p: _resign(p, lambda m: m["tables"].update(metrics=["../../etc/passwd"])), r"\$\.tables\.metrics\[0\]"),
        (lambda p: _resign(p, lambda m: m["tables"].update(metrics=["layers.parquet"])), "has columns"),
        (lambda p: _resign(p, lambda m: m.update(arrays="other.npz")), "other.npz is used but not listed"),
        (lambda p: _resign(p, lambda m: m.update(data="data-000002")), "data-000002/metrics.parquet is missing"),
        (lambda p: _resign(p, lambda m: m.update(extra=1)), "Additional properties are not allowed"),
        (lambda p: _resign(p, lambda m: m["outcome"].update(train_seconds="fast")), r"\$\.outcome\.train_seconds"),
        (lambda p: _resign(p, lambda m: m["detection"].pop("onsets")), "'onsets' is a required property"),
        (lambda p: _resign(p, lambda m: m.update(schema_version=2)), r"\(schema 2\)"),
        (
            lambda p: _resign(p, lambda m: m["files"]["layers.parquet"].update(sha256="0" * 64)),
            "SHA-256 does not match",
        ),
        (lambda p: (_truncate(p, "layers.parquet"), _refile(p, "layers.parquet")), "layers.parquet cannot be read"),
        (lambda p: (_truncate(p, "histograms.npz"), _refile(p, "histograms.npz")), "histograms.npz cannot be read"),
        (lambda p: (_truncate(p, "detection.parquet"), _refile(p, "detection.parquet")), "detection.parquet cannot"),
        (
            lambda p: (p / "history.json").write_text(
                (p / "history.json").read_text().replace('"layer"', '"layeR"', 1)
            ),
            "its SHA-256 does not match its contents",
        ),
    ],
)
def test_damaged_runs_get_clear_errors(tmp_path, hist, damage, message):
    hist.detection = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(hist)
    path = hist.save(tmp_path / "run")
    damage(path)
    with pytest.raises(HistoryFormatError, match=message) as err:
        History.load(path)
    assert str(tmp_path / "run") in str(err.value)  # the message names the file


def test_the_fast_manifest_check_agrees_with_jsonschema(tmp_path, hist):
    """Manifests are checked by fastjsonschema (quick to import); jsonschema, the reference
    implementation of draft 2020-12, must give the same verdict on valid and damaged manifests."""
    import jsonschema

    hist.detection = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(hist)
    manifest = json.loads((hist.save(tmp_path / "run") / "history.json").read_text())
    damaged = [
        lambda m: m["histograms"][0].pop("layer"),
        lambda m: m.update(extra=1),
        lambda m: m["outcome"].update(train_seconds="fast"),
        lambda m: m["detection"].pop("onsets"),
        lambda m: m["histograms"][1].update(split="held-out"),
        lambda m: m["tables"].update(metrics=["../x.parquet"]),
        lambda m: m["histograms"][0].update(index=-1),
        lambda m: m.update(detection=None),  # allowed: a run without a detector
        lambda m: m.update(layer_order=None),
    ]
    for version, schema in ((4, _runfiles.SCHEMA_4), (3, _runfiles.SCHEMA_3), (2, _runfiles.SCHEMA_2)):
        reference = jsonschema.validators.validator_for(schema)
        reference.check_schema(schema)
        if version != 4:
            continue
        for damage in [lambda m: None, *damaged]:
            m = json.loads(json.dumps(manifest))
            damage(m)
            expected = reference(schema).is_valid(m)
            assert (_runfiles._schema_problem(m, 4) is None) == expected, m


def _flips(raw: bytes, both: bool = True):
    """Every byte changed, one at a time; ASCII stays ASCII: digits, letters' case, quotes, brackets.

    ``both``: each byte XOR 0x01 and XOR 0x20; else one flip a byte (a letter's case, anything else's
    lowest bit)."""
    for i in range(len(raw)):
        masks = (0x01, 0x20) if both else (0x20 if chr(raw[i]).isalpha() else 0x01,)
        for mask in masks:
            yield raw[:i] + bytes([raw[i] ^ mask]) + raw[i + 1 :]


@pytest.fixture
def manifest_bytes(monkeypatch):
    """Feed History.load edited manifest bytes without writing each to disk (thousands of writes are
    slow on a busy disk): ``feed(raw)`` sets what the reader gets as the manifest's bytes."""
    fed = {}
    real = _runfiles._manifest_bytes_of
    monkeypatch.setattr(_runfiles, "_manifest_bytes_of", lambda p: fed.get("raw") or real(p))
    return lambda raw: fed.update(raw=raw)


def test_every_single_byte_flip_of_a_manifest_is_caught_or_harmless(tmp_path, manifest_bytes):
    """Flip each byte of a small manifest (two ways): HistoryFormatError, or the very same run.

    The manifest carries its own checksum, so no edit loads as another run. With the checksum made
    to match (as a foreign writer would), the schema and cross-checks must still turn every edit
    into HistoryFormatError or a History, never another exception.
    """
    h = new_history()
    path = h.save(tmp_path / "run")
    raw = (path / "history.json").read_bytes()
    outcomes = {"error": 0, "same": 0}
    for flipped in _flips(raw):
        manifest_bytes(flipped)
        try:
            got = History.load(path)
        except HistoryFormatError:
            outcomes["error"] += 1
            continue
        _same_run(h, got)  # only an edit that parses to the same JSON may load (e.g. \u00e9 -> \u00E9)
        outcomes["same"] += 1
    assert outcomes["error"] + outcomes["same"] == 2 * len(raw) and outcomes["same"] < 20, outcomes
    resigned = {"error": 0, "loaded": 0, "not json": 0}
    own = raw.index(b'"manifest_sha256"')  # its own checksum is recomputed below: flips there are moot
    for flipped in _flips(raw[:own], both=False):
        try:
            manifest = json.loads(flipped + raw[own:])
        except ValueError:
            resigned["not json"] += 1
            continue
        manifest_bytes(_signed(manifest))
        try:
            History.load(path)
        except HistoryFormatError:
            resigned["error"] += 1
        else:
            resigned["loaded"] += 1  # a changed name or number in config, layer_order, ...
    assert resigned["error"] > 50 and resigned["loaded"] > 10, resigned
    manifest_bytes(None)
    _same_run(h, History.load(path))


def test_every_single_byte_flip_of_a_schema_2_manifest_raises_clearly_or_loads(tmp_path, manifest_bytes):
    """Schema 2 manifests have no checksum: every edit is an error or a History, never another exception."""
    path = _save_schema_2(old_history(), tmp_path / "v2")
    raw = (path / "history.json").read_bytes()
    seen = set()
    for flipped in _flips(raw, both=False):
        manifest_bytes(flipped)
        try:
            History.load(path)
            seen.add("loaded")
        except HistoryFormatError:
            seen.add("error")
    assert seen == {"loaded", "error"}


def _same_run(a: History, b: History) -> None:
    _same(a, b)
    assert a.outcome == b.outcome
    np.testing.assert_array_equal(a.bin_edges, b.bin_edges)
    assert (a.detection is None) == (b.detection is None)
    if a.detection is not None:
        assert a.detection.to_dict() == b.detection.to_dict()
        pd.testing.assert_frame_equal(a.detection.evidence, b.detection.evidence)


# ---------------------------------------------------------------------------- crash safety
def test_a_save_killed_at_any_filesystem_operation_leaves_the_old_run_or_the_new_one(tmp_path):
    """SIGKILL just before each filesystem operation of save (tests/killsave.py): after the kill the
    path loads as the complete old run or the complete new one (for a first save: no run or the new
    one), switching once; the next save removes whatever the killed one left behind."""
    old, new = old_history(), new_history()
    plan = {}
    for scenario in ("first save", "over a saved run", "over a schema-2 run"):
        initial = tmp_path / "initial" / scenario
        initial.mkdir(parents=True)
        if scenario == "over a saved run":
            old.save(initial / RUN)
        elif scenario == "over a schema-2 run":
            _save_schema_2(old, initial / RUN)
        plan[scenario] = str(initial)
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "plan.json").write_text(json.dumps(plan))
    with open(cases / "new.pickle", "wb") as f:
        pickle.dump(new, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "tests" / "killsave.py"), str(cases)], check=True, env=env, timeout=600)
    operations = json.loads((cases / "operations.json").read_text())
    for scenario, ops in operations.items():
        kinds = {op.split()[0] for op in ops}
        assert {"open", "os.mkdir", "os.rename"} <= kinds, (scenario, ops)  # files, directories, the commit
        if scenario != "first save":
            assert {"shutil.rmtree", "os.rmdir", "os.remove"} & kinds, (scenario, ops)  # the old data removed
        states = []
        for k in range(1, len(ops) + 1):
            run = cases / scenario / f"kill-{k:03d}" / RUN
            if scenario == "first save" and not run.exists():
                with pytest.raises(FileNotFoundError):
                    History.load(run)
                states.append("old")
                continue
            got = History.load(run)
            try:
                _same_run(new, got)
                states.append("new")
            except AssertionError:
                _same_run(old, got)  # neither the old run nor the new one: fails here
                states.append("old")
        assert states == sorted(states, key=["old", "new"].index), (scenario, list(zip(ops, states)))
        assert "old" in states and "new" in states, (scenario, states)
        for k in range(1, len(ops) + 1):  # the next save cleans up after the killed one
            folder = cases / scenario / f"kill-{k:03d}"
            old.save(folder / RUN)
            assert [p.name for p in folder.iterdir()] == [RUN], (scenario, k, list(folder.iterdir()))
            assert len([p for p in (folder / RUN).iterdir() if p.name.startswith("data-")]) == 1
            _same_run(old, History.load(folder / RUN))


def test_an_append_killed_at_any_filesystem_operation_leaves_the_last_committed_epoch_or_the_new_one(tmp_path):
    """SIGKILL just before each filesystem operation of a HistoryWriter's append (epoch 3 after epochs
    0-2): the run loads as the committed three epochs or as all four, switching once; a new writer
    over what the kill left saves and appends cleanly (no file the manifest does not name)."""
    first, new = first_history(), new_history()
    pd.testing.assert_frame_equal(  # the append's premise: the new run extends the first one
        new.channels[new.channels.epoch < 3].reset_index(drop=True), first.channels.reset_index(drop=True)
    )
    initial = tmp_path / "initial" / "append"
    initial.mkdir(parents=True)
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "plan.json").write_text(json.dumps({"append": str(initial)}))
    for name, h in (("new", new), ("first", first)):
        with open(cases / f"{name}.pickle", "wb") as f:
            pickle.dump(h, f)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, str(ROOT / "tests" / "killsave.py"), str(cases)], check=True, env=env, timeout=600)
    ops = json.loads((cases / "operations.json").read_text())["append"]
    assert not [op for op in ops if op.startswith("os.mkdir") and "data-" in op], ops  # no new data directory
    assert any(op.startswith("os.rename run/.history.json") for op in ops), ops  # the commit (os.replace)
    assert "os.remove run/data-000001/histograms.npz" in ops, ops  # the previous save's histograms
    states = []
    for k in range(1, len(ops) + 1):
        run = cases / "append" / f"kill-{k:03d}" / RUN
        got = History.load(run)
        try:
            _same_run(new, got)
            states.append("new")
        except AssertionError:
            _same_run(first, got)
            states.append("first")
    assert states == sorted(states, key=["first", "new"].index), list(zip(ops, states))
    assert "first" in states and "new" in states, states
    for k in range(1, len(ops) + 1):
        run = cases / "append" / f"kill-{k:03d}" / RUN
        writer = HistoryWriter(run)
        writer.save(first)
        writer.save(new)
        _same_run(new, History.load(run))
        manifest = _manifest(run)
        assert len(manifest["tables"]["channels"]) == 2, manifest["tables"]  # the second save appended
        assert sorted(p.name for p in (run / manifest["data"]).iterdir()) == sorted(manifest["files"])
        assert [p.name for p in run.iterdir() if p.name != "history.json"] == [manifest["data"]]


def _prefixes(h: History):
    """``h`` as it grew: a History of its first k epochs, for k = 1..len(h.epochs) (rows in order)."""
    for k in range(1, len(h.epochs) + 1):
        part = History(
            config=dict(h.config),
            metrics=h.metrics[h.metrics.epoch < k].reset_index(drop=True),
            layers=h.layers[h.layers.epoch < k].reset_index(drop=True),
            channels=h.channels[h.channels.epoch < k].reset_index(drop=True),
            bin_edges=h.bin_edges,
            layer_order=list(h.layer_order),
        )
        for key, epochs in h.hist_epochs.items():
            part.spatial_hist[key], part.population_hist[key] = h.spatial_hist[key][:k], h.population_hist[key][:k]
            part.hist_epochs[key] = epochs[:k]
        part.detection = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(part)
        yield part


def test_appending_epoch_by_epoch_loads_as_one_whole_save(tmp_path):
    """A HistoryWriter saving a growing run after every epoch: each load equals the in-memory run and
    one whole History.save of it (the reference path), while the files on disk are table parts."""
    h = synthetic_history(epochs=6, layers=("a", "b"), channels=3, seed=4)
    writer = HistoryWriter(tmp_path / "run")
    for k, part in enumerate(_prefixes(h), start=1):
        writer.save(part)
        got = History.load(tmp_path / "run")
        _same_run(part, got)
        _same_run(History.load(part.save(tmp_path / f"whole-{k}")), got)
        manifest = _manifest(tmp_path / "run")
        assert manifest["data"] == "data-000001"  # one data directory: appended to, never rewritten
        assert len(manifest["tables"]["channels"]) == k and len(manifest["tables"]["metrics"]) == k
        assert sorted(p.name for p in (tmp_path / "run" / manifest["data"]).iterdir()) == sorted(manifest["files"])
    for kind in ("metrics", "layers", "channels"):  # dtypes too: the parts concatenate to the whole table
        pd.testing.assert_frame_equal(
            History.load(tmp_path / "run").to_dataframe(kind), History.load(tmp_path / "whole-6").to_dataframe(kind)
        )


def test_the_writer_saves_whole_when_saved_rows_changed_the_run_was_replaced_or_parts_pile_up(tmp_path):
    parts = list(_prefixes(synthetic_history(epochs=5, layers=("a",), channels=2, seed=5)))
    run = tmp_path / "run"
    writer = HistoryWriter(run, max_parts=3)
    writer.save(parts[0])
    writer.save(parts[1])
    edited = parts[2]
    edited.metrics.loc[0, "value"] = 123.0  # a row the writer saved before
    writer.save(edited)
    assert _manifest(run)["data"] == "data-000002" and History.load(run).metrics.value.iloc[0] == 123.0
    _same_run(edited, History.load(run))
    parts[3].metrics.loc[0, "value"] = 123.0
    parts[3].save(run)  # someone else saved the run meanwhile: the writer's last save is not on disk
    parts[4].metrics.loc[0, "value"] = 123.0
    writer.save(parts[4])
    assert _manifest(run)["data"] == "data-000004"
    _same_run(parts[4], History.load(run))
    history = parts[4]
    for epoch in range(5, 9):  # appends up to max_parts parts per table, then one whole save
        history.record_epoch(epoch, {"test": {"loss": float(epoch)}})
        writer.save(history)
        assert len(_manifest(run)["tables"]["metrics"]) <= 3
    assert _manifest(run)["data"] == "data-000005"
    _same_run(history, History.load(run))
    with pytest.raises(ValueError, match="max_parts must be a positive int"):
        HistoryWriter(run, max_parts=0)


def test_leftovers_of_interrupted_saves_are_named_on_load_and_removed_by_the_next_save(tmp_path, hist):
    path = hist.save(tmp_path / "run")
    # what xaisparse 0.x left when killed between its two renames: the run moved aside, the new one not yet in
    path.rename(tmp_path / ".run.old-4242")
    with pytest.raises(FileNotFoundError, match=r"left \.run\.old-4242 beside it.*rename it to run"):
        History.load(path)
    (tmp_path / ".run.old-4242").rename(path)
    (tmp_path / ".run.tmp-abc").mkdir()
    (path / "data-000007").mkdir()  # an uncommitted data directory
    (path / ".history.json.x1y2").write_bytes(b"{")  # an unfinished manifest
    (path / "metrics.parquet").write_bytes(b"schema 2 file")
    other = synthetic_history(epochs=2, seed=4)
    other.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in path.iterdir()) == ["data-000008", "history.json"]
    _same(other, History.load(path))
    # a first save into an existing empty directory, killed before its manifest: no run yet, and
    # what it left does not make the directory foreign to the next save
    (tmp_path / "empty" / "data-000001").mkdir(parents=True)
    (tmp_path / "empty" / "data-000001" / "metrics.parquet").write_bytes(b"PAR1")
    (tmp_path / "empty" / ".history.json.k9").write_bytes(b"{")
    with pytest.raises(HistoryFormatError, match="not an xaisparse run directory"):
        History.load(tmp_path / "empty")
    other.save(tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["data-000002", "history.json"]


def test_a_load_racing_a_save_reads_the_run_again(tmp_path, hist, monkeypatch):
    """A reader that finds the files of the manifest it read removed by a concurrent save starts over."""
    path = hist.save(tmp_path / "run")
    other = synthetic_history(epochs=2, seed=4)
    real = _runfiles.sha256
    calls = []

    def save_meanwhile(p):
        if not calls:
            other.save(path)  # between reading the manifest and checking the first file
        calls.append(p)
        return real(p)

    monkeypatch.setattr(_runfiles, "sha256", save_meanwhile)
    _same(other, History.load(path))


_OLD_NAMES = {"population_mean": "channel_mean", "population_std": "channel_std"}


def _save_schema_3(h: History, path):
    """A run as schema 3 wrote it: this layout, the population histograms under "channel" (arrays
    channel_<i>), the population statistics named channel_mean/channel_std."""
    h.save(path)
    manifest = _manifest(path)
    data = path / manifest["data"]
    t = pd.read_parquet(data / "layers.parquet")
    t["statistic"] = t["statistic"].replace(_OLD_NAMES)
    t.to_parquet(data / "layers.parquet", index=False)
    with np.load(data / "histograms.npz") as npz:
        arrays = {k.replace("population_", "channel_"): npz[k] for k in npz.files}
    np.savez_compressed(data / "histograms.npz", **arrays)
    manifest["schema_version"] = 3
    for settings in (manifest["config"].get("detector"), (manifest["detection"] or {}).get("params")):
        if isinstance(settings, dict) and settings.get("statistic") in _OLD_NAMES:
            settings["statistic"] = _OLD_NAMES[settings["statistic"]]
    manifest["histograms"] = [
        {
            "split": e["split"],
            "layer": e["layer"],
            "epochs": e["epochs"],
            "spatial": e["spatial"],
            "channel": e["population"].replace("population_", "channel_"),
        }
        for e in manifest["histograms"]
    ]
    for name in manifest["files"]:
        blob = (data / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}
    _resign(path, lambda m: m.update(manifest))
    return path


def _save_schema_2(h: History, path):
    """A run as xaisparse 0.x wrote it (schema 2): flat files beside the manifest, histograms by index
    (arrays channel_<i>), the population statistics named channel_mean/channel_std."""
    _save_schema_3(h, path)
    manifest = _manifest(path)
    for f in (path / DATA).iterdir():
        f.rename(path / f.name)
    (path / DATA).rmdir()
    legacy = {k: manifest[k] for k in ("format", "config", "detection", "outcome", "layer_order")}
    legacy["schema_version"] = 2
    legacy["histograms"] = [
        {"split": e["split"], "layer": e["layer"], "index": i, "epochs": e["epochs"]}
        for i, e in enumerate(manifest["histograms"])
    ]
    assert all(e["spatial"] == f"spatial_{i}" for i, e in enumerate(manifest["histograms"]))
    legacy["files"] = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    (path / "history.json").write_text(json.dumps(legacy, indent=1))
    return path


def test_schema_2_runs_load_and_the_next_save_upgrades_them(tmp_path, hist):
    path = _save_schema_2(hist, tmp_path / "v2")
    _same(hist, History.load(path))
    for fixture in sorted((ROOT / "tests" / "data" / "explore").iterdir()):  # saved by xaisparse 0.x
        run = History.load(fixture)
        assert _manifest(fixture)["schema_version"] == 2 and run.epochs == list(range(61))
    other = synthetic_history(epochs=2, seed=4)
    other.save(path)
    assert sorted(p.name for p in path.iterdir()) == ["data-000001", "history.json"]  # flat files removed
    _same(other, History.load(path))


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
    path = _save_schema_2(hist, tmp_path / "old")
    manifest = _manifest(path)
    for kind in ("layers", "channels"):
        t = pd.read_parquet(path / f"{kind}.parquet")
        t["statistic"] = t["statistic"].replace(
            {"sample_mean": "lifetime_mean", "sample_sparsity": "lifetime_sparsity"}
        )
        t.to_parquet(path / f"{kind}.parquet", index=False)
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
    assert hist.histogram_epochs("test", "a") == [0, 1, 2, 3, 4]
    for query in (lambda: hist.histogram_epochs("val", "a"), lambda: hist.histogram("val", "a", 2)):
        with pytest.raises(ValueError, match=r"split 'val' is not recorded in this run; .*\['train', 'test'\]"):
            query()
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
    twice.to_parquet(path / DATA / "metrics.parquet", index=False)
    _refile(path, "metrics.parquet")  # a consistent run directory whose table repeats an epoch
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


@pytest.mark.parametrize("schema", [2, 3])
def test_schema_2_and_3_runs_load_with_the_population_names(tmp_path, hist, schema):
    """Schemas 2 and 3 called the population (channel-axis) statistics channel_* and their histograms
    channel: they load as population_*, also in the detector's settings; the next save writes schema 4."""
    hist.detection = OverfitDetector(signal="gap", statistic="population_mean").detect(hist)
    hist.config["detector"] = {"statistic": "population_mean", "signal": "gap"}
    expected = History.load(hist.save(tmp_path / "now"))
    path = (_save_schema_2 if schema == 2 else _save_schema_3)(expected, tmp_path / "old")
    manifest = _manifest(path)
    assert manifest["schema_version"] == schema and "channel_mean" in json.dumps(manifest)
    old = History.load(path)
    assert "channel_mean" not in old.statistics() and {"population_mean", "population_std"} <= set(old.statistics())
    _same(hist, old)
    for key, counts in hist.population_hist.items():
        np.testing.assert_array_equal(old.population_hist[key], counts)
    assert old.config["detector"]["statistic"] == old.detection.params["statistic"] == "population_mean"
    saved = old.save(tmp_path / "new")
    assert _manifest(saved)["schema_version"] == 4


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


def test_the_split_lists_follow_the_tables_after_they_are_cached():
    """splits/sparsity_splits (and check_split, which every query runs) are cached per state of the
    tables: a recorded epoch, a replaced table or rows added in place change them at once."""
    h = History()
    h.record_epoch(0, {"train": {"loss": 1.0}, "test": {"loss": 2.0}})
    assert (h.splits, h.sparsity_splits) == (["train", "test"], [])
    with pytest.raises(ValueError, match="splits for which this run records anything: \\['train', 'test'\\]"):
        h.check_split("val")
    h.record_epoch(1, {"val": {"loss": 1.5}})
    assert h.check_split("val") == "val" and h.splits == ["train", "val", "test"]
    h.metrics.loc[len(h.metrics)] = [2, "holdout", "loss", 0.5]  # a row added in place
    assert h.splits == ["train", "val", "test", "holdout"]
    h.layers = synthetic_history(epochs=2, layers=("a",), channels=2, splits=("test",), seed=3).layers
    assert h.sparsity_splits == ["test"] and h.check_split("test", sparsity=True) == "test"
    h.splits.append("mutated")  # callers get copies: the cache cannot be changed from outside
    assert h.splits == ["train", "val", "test", "holdout"]
