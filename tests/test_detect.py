"""Tests of xaisparse.detect: the sparsity-based overfitting alarm and its evaluation.

Expectations come from the rule worked by hand on tiny series, from an independent
(vectorised, pandas) re-implementation of the rule, and from the generator of
``synthetic_history`` — never from snapshots of the detector's own output.
"""

from __future__ import annotations

import json
import math
import statistics
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xaisparse.detect import LEGACY_DEFAULTS, DetectionResult, early_stopping_epoch, evaluate_detector
from xaisparse.detect import OverfitDetector as _Detector
from xaisparse.detection import EVIDENCE_COLUMNS
from xaisparse.history import LAYER_COLUMNS, History
from xaisparse.testing import synthetic_history


def OverfitDetector(*args, **kw) -> _Detector:  # stands in for the class in these tests
    """The rule at the settings it shipped with until study v3: these tests exercise its mechanics.

    The current defaults (study v2's D1) are tested in test_default_is_study_v2s_d1.
    """
    return _Detector(*args, **{**LEGACY_DEFAULTS, **kw})


def test_default_is_study_v2s_d1() -> None:
    from studies.methods import DETECTORS

    assert _Detector().config == DETECTORS["D1"].config
    assert _Detector(**LEGACY_DEFAULTS).config == DETECTORS["D0"].config


# The plain threshold rule of the brief, with nothing adaptive: easy to follow by hand.
PLAIN = dict(noise=0.0, warmup=0)


def make_history(
    series: dict[str, list[float]],
    loss: list[float] | None = None,
    split: str = "test",
    statistic: str = "spatial_mean",
    start: int = 0,
) -> History:
    """A History whose ``layers`` table holds ``series[layer][i]`` at epoch ``start + i``."""
    rows = [
        (start + i, split, layer, statistic, float(v)) for layer, values in series.items() for i, v in enumerate(values)
    ]
    rows.sort(key=lambda r: r[0])
    h = History(layers=pd.DataFrame(rows, columns=LAYER_COLUMNS), layer_order=list(series))
    if loss is not None:
        h.metrics = pd.DataFrame(
            [
                (start + i, "test", m, float(v if m == "loss" else 1 - v))
                for i, v in enumerate(loss)
                for m in ("loss", "accuracy")
            ],
            columns=["epoch", "split", "metric", "value"],
        )
    return h


def truncated(h: History, last: int) -> History:
    """The history as it stood after epoch ``last`` (what an online detector sees then)."""
    return History(
        config=dict(h.config),
        metrics=h.metrics[h.metrics.epoch <= last].reset_index(drop=True),
        layers=h.layers[h.layers.epoch <= last].reset_index(drop=True),
        layer_order=list(h.layer_order),
    )


# --------------------------------------------------------------------------- hand-worked rules
def test_single_layer_plain_threshold():
    # smooth=1: running min 0.30, 0.28 (e1); rise e2 = 0.03 <= 0.05; e3 = 0.12 > 0.05 -> alarm 3.
    det = OverfitDetector(smooth=1, threshold=0.05, patience=1, **PLAIN)
    states = [det.step(e, {"conv": v}) for e, v in enumerate([0.30, 0.28, 0.31, 0.40])]
    assert [s.alarmed for s in states] == [False, False, False, True]
    assert states[-1].new_alarm and states[-1].rising == ("conv",)
    res = det.result()
    assert res.alarm_epoch == 3 and res.layers == ["conv"]
    assert res.minima == {"conv": 1}
    # e2 has rise 0.03 > limit/2 = 0.025, so the last quiet epoch is e1.
    assert res.onsets == {"conv": 1}


# Two layers, smooth=3, patience=2, threshold=0.05, warmup=1 (epoch 0 = 9.0 / 0.0 is ignored).
# a: smoothed e3..e8 = .4, .3333, .32, .36, .42, .5; running min .32 at e5;
#    rise .04 (e6), .10 (e7), .18 (e8) -> exceeds at e7, e8 -> rising from e8, quiet last at e5.
# b: smoothed e3..e6 = .2, .2333, .3, .4; running min .2 at e3; rise .0333 (e4), .1 (e5), .2 (e6)
#    -> exceeds e5, e6 -> rising from e6; quiet only at e3 (.0333 > .025).
TWO = {
    "a": [9.0, 0.5, 0.4, 0.3, 0.3, 0.36, 0.42, 0.48, 0.6],
    "b": [0.0, 0.2, 0.2, 0.2, 0.3, 0.4, 0.5, 0.5, 0.5],
}
TWO_KW = dict(smooth=3, threshold=0.05, patience=2, noise=0.0, warmup=1)


@pytest.mark.parametrize(
    "min_layers, alarm, layers, onsets",
    [
        (1, 6, ["b"], {"b": 3}),  # a count: one layer is enough
        (0.5, 6, ["b"], {"b": 3}),  # half of two layers, rounded up = 1
        (2, 8, ["a", "b"], {"a": 5, "b": 3}),
        (1.0, 8, ["a", "b"], {"a": 5, "b": 3}),  # a fraction: all layers
    ],
)
def test_two_layers_vote(min_layers, alarm, layers, onsets):
    res = OverfitDetector(min_layers=min_layers, **TWO_KW).detect(make_history(TWO))
    assert res.alarm_epoch == alarm
    assert res.layers == layers
    assert res.onsets == onsets
    assert res.params["required"] == (1 if alarm == 6 else 2)


def test_two_layers_evidence_by_hand():
    res = OverfitDetector(min_layers=1.0, **TWO_KW).detect(make_history(TWO))
    ev = res.evidence.set_index(["layer", "epoch"])
    assert list(res.evidence.columns) == EVIDENCE_COLUMNS
    a = ev.loc["a"]
    # warmup epoch and the two epochs before the smoothing window fills have no smoothed value
    assert a.loc[[0, 1, 2], "smoothed"].isna().all()
    np.testing.assert_allclose(a.loc[3:8, "smoothed"], [0.4, 1 / 3, 0.32, 0.36, 0.42, 0.5], atol=1e-12)
    np.testing.assert_allclose(a.loc[3:8, "running_min"], [0.4, 1 / 3, 0.32, 0.32, 0.32, 0.32], atol=1e-12)
    np.testing.assert_allclose(a.loc[6:8, "rise"], [0.04, 0.10, 0.18], atol=1e-12)
    assert a.loc[3:8, "streak"].tolist() == [0, 0, 0, 0, 1, 2]
    assert a.loc[:, "rising"].tolist() == [False] * 8 + [True]
    assert a.loc[8, "min_epoch"] == 5
    assert (a.loc[3:8, "limit"] == 0.05).all()
    b = ev.loc["b"]
    assert b.loc[:, "rising"].tolist() == [False] * 6 + [True] * 3


def test_warmup_excludes_early_epochs():
    # warmup=0: b's epoch-0 value 0.0 enters; smoothed e2 = .1333 is the minimum; rise e3 = .0667,
    # e4 = .1 -> b rises at e4 (quiet last at e2). a's huge 9.0 only delays its own minimum.
    res = OverfitDetector(min_layers=1, **{**TWO_KW, "warmup": 0}).detect(make_history(TWO))
    assert res.alarm_epoch == 4 and res.layers == ["b"] and res.onsets == {"b": 2}


def test_patience_needs_consecutive_exceedances():
    series = {"x": [0.3, 0.3, 0.3, 0.5, 0.3, 0.3, 0.45, 0.5]}  # one spike at e3, sustained from e6
    h = make_history(series)
    assert OverfitDetector(smooth=1, threshold=0.1, patience=1, **PLAIN).detect(h).alarm_epoch == 3
    assert OverfitDetector(smooth=1, threshold=0.1, patience=2, **PLAIN).detect(h).alarm_epoch == 7


def test_relative_threshold_scales_with_the_series():
    h = make_history({"x": [10.0, 10.0, 10.5, 11.2, 11.3]})
    # absolute 0.1: rise 0.5 at e2 already counts
    assert OverfitDetector(smooth=1, threshold=0.1, patience=1, **PLAIN).detect(h).alarm_epoch == 2
    # relative 0.1 of the running minimum 10 -> 1.0: first exceeded by 1.2 at e3
    res = OverfitDetector(smooth=1, threshold=0.1, relative=True, patience=1, **PLAIN).detect(h)
    assert res.alarm_epoch == 3
    assert res.evidence.set_index("epoch").loc[3, "limit"] == pytest.approx(1.0)


def test_onset_is_last_quiet_epoch_not_the_minimum():
    # min 0.20 at e1; e2 rise .04 <= .05 (half the limit) is quiet; e3 rise .06 is not; alarm e4.
    h = make_history({"x": [0.30, 0.20, 0.24, 0.26, 0.40]})
    res = OverfitDetector(smooth=1, threshold=0.1, patience=1, **PLAIN).detect(h)
    assert res.alarm_epoch == 4
    assert res.minima == {"x": 1}
    assert res.onsets == {"x": 2}


def test_noise_term_by_hand():
    # smooth=1, threshold=0, noise=2: limit = 2 * stdev(diffs) / sqrt(2), needs >= 3 diffs.
    values = [0.0, 0.1, 0.0, 0.2, 0.1, 1.0]
    h = make_history({"x": values})
    res = OverfitDetector(smooth=1, threshold=0.0, noise=2.0, patience=1, warmup=0).detect(h)
    ev = res.evidence.set_index("epoch")
    diffs = np.diff(values)
    for e in (3, 4, 5):
        expected = 2 * statistics.stdev(diffs[:e]) / math.sqrt(2)
        assert ev.loc[e, "limit"] == pytest.approx(expected)
    assert math.isinf(ev.loc[1, "limit"]) and math.isinf(ev.loc[2, "limit"])  # too few diffs
    # rises: e3 0.2 < 0.216, e4 0.1 < 0.212, e5 1.0 > 0.583
    assert res.alarm_epoch == 5
    # with the noise term off, the first positive rise (e1: 0.1 > 0) alarms
    assert OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(h).alarm_epoch == 1


def test_nan_is_skipped_and_never_alarms():
    kw = dict(smooth=1, threshold=0.05, patience=1, min_layers=1.0, **PLAIN)
    # both layers rise at e2, but b is NaN then: it counts as not rising -> alarm only at e3
    h = make_history({"a": [0.3, 0.3, 0.5, 0.5, 0.5], "b": [0.3, 0.3, math.nan, 0.5, 0.5]})
    res = OverfitDetector(**kw).detect(h)
    assert res.alarm_epoch == 3
    row = res.evidence.set_index(["layer", "epoch"]).loc[("b", 2)]
    assert not row["rising"] and math.isnan(row["smoothed"])
    # a streak pauses over NaN (patience 2: exceed e2, NaN e3, exceed e4 -> rising at e4)
    h2 = make_history({"x": [0.3, 0.3, 0.5, math.nan, 0.5, 0.5]})
    assert OverfitDetector(smooth=1, threshold=0.05, patience=2, **PLAIN).detect(h2).alarm_epoch == 4
    # all-NaN tail: no alarm, no exception
    h3 = make_history({"x": [0.3, 0.3, math.nan, math.nan, math.nan]})
    assert OverfitDetector(smooth=1, threshold=0.0, patience=1, **PLAIN).detect(h3).alarm_epoch is None


def test_history_built_with_record_epoch_and_report_objects():
    def report(values: dict[str, float]) -> SimpleNamespace:
        layers = pd.DataFrame(
            [("test", name, "spatial_mean", v) for name, v in values.items()]
            + [("train", name, "spatial_mean", 0.0) for name in values],
            columns=["split", "layer", "statistic", "value"],
        )
        return SimpleNamespace(
            layers=layers,
            channels=pd.DataFrame(columns=["split", "layer", "channel", "statistic", "value"]),
            spatial_hist={},
            population_hist={},
            bin_edges=np.linspace(0, 1, 21),
        )

    h = History()
    for e in range(len(TWO["a"])):
        h.record_epoch(e, {"test": {"loss": 1.0}}, report({k: v[e] for k, v in TWO.items()}))
    res = OverfitDetector(min_layers=1.0, **TWO_KW).detect(h)
    assert res.alarm_epoch == 8 and res.onsets == {"a": 5, "b": 3}
    # the train split's flat zeros never rise
    assert OverfitDetector(split="train", min_layers=1, **TWO_KW).detect(h).alarm_epoch is None


# --------------------------------------------------------------------------- independent reference
def reference_alarm(series: dict[str, list[float]], smooth, threshold, noise, patience, required, warmup):
    """The rule re-implemented with whole-series pandas operations (not incremental)."""
    n = len(next(iter(series.values())))
    rising = pd.DataFrame(False, index=range(n), columns=list(series))
    for name, values in series.items():
        s = pd.Series(values, dtype=float).iloc[warmup:].dropna()
        sm = s.rolling(smooth).mean()
        rise = sm - sm.cummin()
        limit = pd.Series(threshold, index=s.index)
        if noise > 0:
            d = s.diff()
            sd = d.expanding(min_periods=3).std()  # ddof=1; the first diff is NaN
            limit = np.maximum(threshold, noise * sd / math.sqrt(2) / math.sqrt(smooth)).fillna(math.inf)
        exceed = (rise > limit) & sm.notna()
        streak = exceed.groupby((~exceed).cumsum()).cumsum()
        rising.loc[s.index, name] = streak >= patience
    hits = rising.index[rising.sum(axis=1) >= required]
    return int(hits[0]) if len(hits) else None


dyadic = st.integers(0, 64).map(lambda k: k / 64)  # exact in floating point: no tie ambiguity
maybe_nan = st.one_of(dyadic, dyadic, dyadic, dyadic, st.just(math.nan))


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.integers(1, 14).flatmap(
        lambda n: st.lists(st.lists(maybe_nan, min_size=n, max_size=n), min_size=1, max_size=3)
    ),
    smooth=st.integers(1, 3),
    threshold=st.sampled_from([0.0, 0.05, 0.2]),
    noise=st.sampled_from([0.0, 1.5]),
    patience=st.integers(1, 3),
    min_layers=st.sampled_from([1, 0.5, 1.0]),
    warmup=st.integers(0, 2),
)
def test_matches_reference_and_online_equals_offline(data, smooth, threshold, noise, patience, min_layers, warmup):
    series = {f"l{i}": vals for i, vals in enumerate(data)}
    kw = dict(smooth=smooth, threshold=threshold, noise=noise, patience=patience, min_layers=min_layers, warmup=warmup)
    h = make_history(series)
    offline = OverfitDetector(**kw).detect(h)
    required = min_layers if isinstance(min_layers, int) else math.ceil(min_layers * len(series))
    assert offline.alarm_epoch == reference_alarm(series, smooth, threshold, noise, patience, required, warmup)
    # online, fed epoch by epoch with step(): the same alarm as offline at every epoch
    online = OverfitDetector(**kw)
    n = len(data[0])
    for e in range(n):
        online.step(e, {name: vals[e] for name, vals in series.items()})
        seen = offline.alarm_epoch if offline.alarmed and offline.alarm_epoch <= e else None
        assert online.alarm_epoch == seen
    pd.testing.assert_frame_equal(online.result().evidence, offline.evidence)
    # and offline on a cut-off history agrees with the reference on the cut-off series
    cut = n // 2
    short = {name: vals[: cut + 1] for name, vals in series.items()}
    assert OverfitDetector(**kw).detect(truncated(h, cut)).alarm_epoch == reference_alarm(
        short, smooth, threshold, noise, patience, required, warmup
    )


# --------------------------------------------------------------------------- synthetic runs
# synthetic_history: the layer mean moves by 0.04 per epoch from overfit_at - 2 and has noise of
# sd ~0.03 per epoch (per-channel offsets sd 0.08 over 8 channels). Smoothed over 3 epochs that is
# sd ~0.017, so the default limit 4 sd is ~0.07. The smoothed rise is 0.04 (j - 1) at j epochs
# after the start (j >= 2), i.e. 0.04 at k, 0.08 at k + 1, 0.12 at k + 2: it crosses the limit at
# k + 1 or k + 2 and, with patience 2, the alarm comes at k + 2 or k + 3. Before k - 2 nothing
# rises (an alarm there is a false alarm, which the flat runs below show is rare); by k + 3 the
# rise is ~9 sd, so k + 4 is a safe upper bound. This generator therefore puts the alarm
# *after* the test-loss minimum: its built-in lead (2 epochs) is smaller than its noise allows
# anyone to see.
SYNTH = [(6, 0), (7, 1), (8, 2), (10, 3), (12, 4)]


@pytest.fixture(scope="module")
def synth_runs():
    return {(k, seed): synthetic_history(epochs=k + 8, overfit_at=k, seed=seed) for k, seed in SYNTH}


@pytest.mark.parametrize("k, seed", SYNTH)
def test_synthetic_alarm_near_overfitting(synth_runs, k, seed):
    res = OverfitDetector().detect(synth_runs[(k, seed)])
    assert res.alarm_epoch is not None, res.summary()
    assert k - 2 <= res.alarm_epoch <= k + 4, res.summary()
    assert len(res.layers) >= 2  # 0.5 of 3 layers, rounded up
    for layer, onset in res.onsets.items():
        # a quiet epoch precedes the >= patience exceeding epochs; the window needs 3 epochs
        # after the 2 warmup epochs
        assert 4 <= onset <= res.alarm_epoch - 2
        assert 4 <= res.minima[layer] <= res.alarm_epoch - 2
    assert res.to_dict()["alarm_epoch"] == res.alarm_epoch


def test_synthetic_onsets_track_the_true_start(synth_runs):
    # The raw rise starts at k - 2, the 3-epoch trailing mean's at k - 1.
    offsets = [
        onset - k for (k, seed), h in synth_runs.items() for onset in OverfitDetector().detect(h).onsets.values()
    ]
    assert -3 <= float(np.median(offsets)) <= 0, offsets


@pytest.mark.parametrize("epochs, seed", [(12, 0), (20, 1), (30, 2)])
def test_synthetic_no_overfitting_no_alarm(epochs, seed):
    res = OverfitDetector().detect(synthetic_history(epochs=epochs, overfit_at=None, seed=seed))
    assert res.alarm_epoch is None, res.summary()
    assert res.summary().startswith("No overfitting warning")


def test_synthetic_nan_epoch():
    k = 8
    h = synthetic_history(epochs=k + 8, overfit_at=k, seed=2, nan_epoch=k + 1)
    res = OverfitDetector().detect(h)
    ev = res.evidence
    assert not ev.loc[ev.epoch == k + 1, "rising"].any()
    assert res.alarm_epoch is not None and res.alarm_epoch != k + 1
    assert k - 2 <= res.alarm_epoch <= k + 5  # one skipped epoch delays by at most one


def test_online_update_equals_offline_every_epoch(synth_runs):
    for h in (synth_runs[(7, 1)], synthetic_history(epochs=10, overfit_at=None, seed=5, layers=("a", "b"))):
        offline = OverfitDetector().detect(h)
        online = OverfitDetector()
        for e in h.epochs:
            part = truncated(h, e)
            state = online.update(part)
            assert state is not None and state.epoch == e
            assert online.update(part) is None  # nothing new: idempotent
            assert online.alarm_epoch == OverfitDetector().detect(part).alarm_epoch
            assert online.alarm_epoch == (offline.alarm_epoch if offline.alarmed and offline.alarm_epoch <= e else None)
        final = online.result()
        assert (final.alarm_epoch, final.layers, final.onsets) == (offline.alarm_epoch, offline.layers, offline.onsets)
        pd.testing.assert_frame_equal(final.evidence, offline.evidence)


# --------------------------------------------------------------------------- labels are never read
class _Poison:
    def __getattr__(self, name):
        raise AssertionError(f"the detector read history.metrics.{name}")

    def __len__(self):
        raise AssertionError("the detector read history.metrics")


def test_detector_never_reads_metrics(synth_runs):
    h = synth_runs[(8, 2)]
    expected = OverfitDetector().detect(h)
    no_loss = truncated(h, max(h.epochs))
    no_loss.metrics = no_loss.metrics[~((no_loss.metrics.split == "test") & (no_loss.metrics.metric == "loss"))]
    assert OverfitDetector().detect(no_loss).alarm_epoch == expected.alarm_epoch
    poisoned = truncated(h, max(h.epochs))
    poisoned.metrics = _Poison()
    res = OverfitDetector().detect(poisoned)
    assert (res.alarm_epoch, res.onsets) == (expected.alarm_epoch, expected.onsets)
    det = OverfitDetector()
    det.on_epoch_end(poisoned)
    assert det.alarm_epoch == expected.alarm_epoch


# --------------------------------------------------------------------------- callback protocol
def test_callback_stops_training_at_the_alarm(synth_runs, tmp_path):
    full = synth_runs[(7, 1)]
    alarm = OverfitDetector().detect(full).alarm_epoch
    cb = OverfitDetector(stop_on_alarm=True)
    live = History(config={"name": "live"})
    stopped_at = None
    for e in full.epochs:  # what xaisparse.train.fit does: record, call back, check stop_requested
        live.layers = full.layers[full.layers.epoch <= e].reset_index(drop=True)
        live.layer_order = list(full.layer_order)
        cb.on_epoch_end(live)
        if getattr(cb, "stop_requested", False):
            stopped_at = e
            break
    assert stopped_at == alarm
    live.detection = cb.result()  # what fit does after each epoch: the History holds the typed result
    assert live.detection.alarm_epoch == alarm and live.detection.layers == cb.result().layers
    json.dumps(live.detection.to_dict(include_evidence=True), allow_nan=False)
    # the result survives a save/load round trip of the History, evidence table included
    loaded = History.load(live.save(tmp_path / "run"))
    assert loaded.detection.alarm_epoch == alarm and loaded.alarm_epoch == alarm
    pd.testing.assert_frame_equal(loaded.detection.evidence, live.detection.evidence)

    observer = OverfitDetector()  # stop_on_alarm=False: observe only
    observer.on_epoch_end(full)
    assert observer.alarmed and not observer.stop_requested


def test_result_dict_and_summary():
    res = OverfitDetector(min_layers=1.0, **TWO_KW).detect(make_history(TWO))
    d = res.to_dict(include_evidence=True)
    json.dumps(d, allow_nan=False)
    assert d["alarm_epoch"] == 8 and d["layers"] == ["a", "b"] and d["onsets"] == {"a": 5, "b": 3}
    assert d["params"]["smooth"] == 3 and d["monitored"] == ["a", "b"]
    assert len(d["evidence"]["epoch"]) == 18
    assert "epoch 8" in res.summary() and "a (since epoch 5)" in res.summary()
    assert isinstance(res, DetectionResult) and res.alarmed


# --------------------------------------------------------------------------- selection and errors
def test_layer_selection_names_and_globs():
    h = make_history({"block1.relu": [0.1] * 4, "block2.relu": [0.1] * 4, "head.relu": [0.1] * 4})
    assert OverfitDetector().detect(h).monitored == ["block1.relu", "block2.relu", "head.relu"]
    assert OverfitDetector(layers="block*").detect(h).monitored == ["block1.relu", "block2.relu"]
    det = OverfitDetector(layers=["head.relu", "block[12].*"])
    assert det.detect(h).monitored == ["block1.relu", "block2.relu", "head.relu"]  # network order, as select_layers
    with pytest.raises(ValueError, match=r"block3\.relu.*closest valid names.*block1\.relu"):
        OverfitDetector(layers=["block3.relu"]).detect(h)
    with pytest.raises(ValueError, match="matches no layer of the run"):
        OverfitDetector(layers=["conv*"]).detect(h)
    with pytest.raises(ValueError, match="exceeds"):
        OverfitDetector(min_layers=4).detect(h)


def test_unknown_split_or_statistic_lists_available():
    h = make_history({"x": [0.1, 0.2]})
    with pytest.raises(ValueError, match=r"'val'.*\['test'\]"):
        OverfitDetector(split="val").detect(h)
    with pytest.raises(ValueError, match=r"'hoyer'.*\['spatial_mean'\]"):
        OverfitDetector(statistic="hoyer").detect(h)
    with pytest.raises(TypeError):
        OverfitDetector().detect({"not": "a history"})


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_too_short_histories_do_not_alarm(n):
    h = make_history({"x": [0.1 * i for i in range(n)]}) if n else History()
    res = OverfitDetector().detect(h)
    assert res.alarm_epoch is None
    assert isinstance(res.summary(), str)
    state = OverfitDetector().update(h)
    assert (state is None) == (n == 0)
    assert state is None or not state.alarmed


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        (dict(smooth=0), ValueError),
        (dict(smooth=1.5), ValueError),
        (dict(threshold=-0.1), ValueError),
        (dict(threshold=math.nan), ValueError),
        (dict(noise=-1), ValueError),
        (dict(patience=0), ValueError),
        (dict(warmup=-1), ValueError),
        (dict(min_layers=0), ValueError),
        (dict(min_layers=1.5), ValueError),
        (dict(min_layers="all"), TypeError),
        (dict(layers=[1, 2]), TypeError),
        (dict(split=""), TypeError),
    ],
)
def test_bad_parameters(kwargs, exc):
    with pytest.raises(exc):
        OverfitDetector(**kwargs)


def test_step_rejects_going_back_in_time():
    det = OverfitDetector()
    det.step(3, {"x": 0.1})
    with pytest.raises(ValueError, match="increase"):
        det.step(3, {"x": 0.1})


# --------------------------------------------------------------------------- evaluation
def test_early_stopping_epoch_by_hand():
    loss = pd.Series([1.0, 0.8, 0.9, 0.85, 0.95, 0.7])
    assert early_stopping_epoch(loss, patience=2) == 3  # e2, e3 without improving on 0.8
    assert early_stopping_epoch(loss, patience=3) == 4
    assert early_stopping_epoch(loss, patience=4) is None  # e5 improves before a 4th miss
    # equal is not an improvement; NaN is not either; epochs keep their labels
    assert early_stopping_epoch(pd.Series([1.0, 1.0, math.nan], index=[5, 6, 7]), patience=2) == 7
    assert early_stopping_epoch(pd.Series([1.0, 0.95, 0.9]), patience=1, min_delta=0.1) == 1


# Loss with its minimum at e* = 5 of epochs 0..9; early stopping (patience 2) stops at 7.
LOSS_V = [1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.6, 0.7, 0.8, 0.9]
HAND = dict(smooth=1, threshold=0.05, patience=1, **PLAIN)


def step_at(epoch: int, n: int = 10) -> list[float]:
    """Sparsity flat at 0.3, jumping to 0.5 at ``epoch`` (HAND alarms exactly there)."""
    return [0.3 if e < epoch else 0.5 for e in range(n)]


def test_evaluate_classifies_by_hand():
    runs = {
        "early_hit": make_history({"x": step_at(4)}, LOSS_V),  # lead +1
        "late_hit": make_history({"x": step_at(7)}, LOSS_V),  # lead -2 (= -late)
        "too_late": make_history({"x": step_at(8)}, LOSS_V),  # lead -3 -> miss
        "too_early": make_history({"x": step_at(1)}, LOSS_V),  # lead +4 > max_lead 3
        "silent": make_history({"x": [0.3] * 10}, LOSS_V),  # overfits, no alarm -> miss
        "no_overfit_quiet": make_history({"x": [0.3] * 10}, [1 - 0.05 * e for e in range(10)]),
        "no_overfit_alarm": make_history({"x": step_at(6)}, [1 - 0.05 * e for e in range(10)]),
    }
    ev = evaluate_detector(runs, OverfitDetector(**HAND), max_lead=3, late=2, patience=2)
    t = ev.runs.set_index(["run", "method"])
    sp = t.xs("sparsity", level="method")
    assert sp["outcome"].to_dict() == {
        "early_hit": "hit",
        "late_hit": "hit",
        "too_late": "miss",
        "too_early": "false_alarm",
        "silent": "miss",
        "no_overfit_quiet": "correct_rejection",
        "no_overfit_alarm": "false_alarm",
    }
    assert sp.loc["early_hit", "lead"] == 1 and sp.loc["too_late", "lead"] == -3 and sp.loc["too_early", "lead"] == 4
    assert math.isnan(sp.loc["silent", "lead"]) and pd.isna(sp.loc["silent", "stop_epoch"])
    assert sp.loc["no_overfit_quiet", "best_epoch"] == 9 and not sp.loc["no_overfit_quiet", "overfits"]
    # excess training after e* = 5 is 4 epochs; stopping at 4 avoids all of it but loses 1 epoch
    r = sp.loc["early_hit"]
    assert (r.excess_epochs, r.avoided_epochs, r.avoided_fraction, r.premature_epochs) == (4, 4, 1.0, 1)
    assert r.loss_at_stop == pytest.approx(0.6) and r.loss_at_best == pytest.approx(0.5)
    assert r.loss_gap == pytest.approx(0.1) and r.accuracy_at_stop == pytest.approx(0.4)
    # no stop: the run trains to the end; nothing avoided; loss read at the last epoch
    r = sp.loc["silent"]
    assert (r.avoided_epochs, r.avoided_fraction, r.loss_at_stop) == (0, 0.0, pytest.approx(0.9))

    es = t.xs("early_stopping", level="method")
    # LOSS_V: 0.6 at e6, 0.7 at e7 without improving on 0.5 -> stop at 7, lead -2, a hit
    assert es.loc["early_hit", "stop_epoch"] == 7 and es.loc["early_hit", "lead"] == -2
    assert es.loc["early_hit", "outcome"] == "hit"
    assert es.loc["early_hit", "avoided_epochs"] == 2 and es.loc["early_hit", "avoided_fraction"] == 0.5
    assert es.loc["no_overfit_quiet", "outcome"] == "correct_rejection"

    s = ev.summary.set_index("method")
    assert s.loc["sparsity", "runs"] == 7 and s.loc["sparsity", "overfitting_runs"] == 5
    assert s.loc["sparsity", "hit_rate"] == pytest.approx(2 / 7)
    assert s.loc["sparsity", "miss_rate"] == pytest.approx(2 / 7)
    assert s.loc["sparsity", "false_alarm_rate"] == pytest.approx(2 / 7)
    assert s.loc["sparsity", "correct_rejection_rate"] == pytest.approx(1 / 7)
    # leads of the runs with an alarm: early_hit 1, late_hit -2, too_late -3, too_early 4,
    # no_overfit_alarm 9 - 6 = 3 -> median 1, quartiles -2 and 3
    assert s.loc["sparsity", "median_lead"] == 1
    assert (s.loc["sparsity", "lead_q25"], s.loc["sparsity", "lead_q75"]) == (-2, 3)
    assert s.loc["early_stopping", "median_lead"] == -2
    rates = s[["hit_rate", "false_alarm_rate", "miss_rate", "correct_rejection_rate"]].sum(axis=1)
    np.testing.assert_allclose(rates, 1.0)
    runs_df, summary_df = ev  # unpacks
    assert len(runs_df) == 14 and list(summary_df.method) == ["sparsity", "early_stopping"]


def test_evaluate_min_rise_and_inputs():
    plateau = [1.0, 0.6, 0.5, 0.501, 0.502]  # e* = 2, then a rise of only 0.002
    h = make_history({"x": [0.3] * 5}, plateau)
    strict = evaluate_detector(h, OverfitDetector(**HAND)).runs
    assert strict.overfits.all() and (strict.set_index("method").loc["sparsity", "outcome"] == "miss")
    lenient = evaluate_detector(h, OverfitDetector(**HAND), min_rise=0.01).runs.set_index("method")
    assert not lenient.overfits.any()
    assert lenient.loc["sparsity", "outcome"] == "correct_rejection"
    assert lenient.loc["early_stopping", "outcome"] == "false_alarm"  # stops at e4
    # a list of runs with clashing names is made unique
    lst = evaluate_detector([h, h], OverfitDetector(**HAND)).runs
    assert lst.run.nunique() == 2
    with pytest.raises(ValueError, match="no finite"):
        evaluate_detector(make_history({"x": [0.3] * 3}), OverfitDetector(**HAND))
    with pytest.raises(ValueError):
        evaluate_detector(h, max_lead=-1)


def test_evaluate_synthetic_runs(synth_runs):
    runs = {f"k{k}": h for (k, _), h in synth_runs.items()}
    ev = evaluate_detector(runs, OverfitDetector())
    t = ev.runs.set_index(["run", "method"])
    for (k, _), h in synth_runs.items():
        loss = h.metric("test", "loss")
        e_star = int(loss.idxmin())
        alarm = OverfitDetector().detect(h).alarm_epoch
        assert t.loc[(f"k{k}", "sparsity"), "best_epoch"] == e_star
        assert t.loc[(f"k{k}", "sparsity"), "lead"] == e_star - alarm
        assert t.loc[(f"k{k}", "early_stopping"), "stop_epoch"] == early_stopping_epoch(loss, patience=2)
    # k = 6: before k the test loss falls by >= 1.2 (e^-2.5 - e^-3) = 0.039 per epoch (noise sd
    # 0.01), after k it rises by 0.12 (e - k)^1.3: the minimum is at 6 and patience 2 stops at 8.
    assert t.loc[("k6", "early_stopping"), ["best_epoch", "stop_epoch", "lead"]].tolist() == [6, 8, -2]
    assert set(ev.summary.method) == {"sparsity", "early_stopping"}


def test_old_names_still_work_for_one_release_with_a_warning():
    import xaisparse
    import xaisparse.detect as det
    from xaisparse.detect import scoring, signals

    with pytest.warns(DeprecationWarning, match="evaluate_detector"):
        assert det.evaluate is scoring.evaluate_detector
    with pytest.warns(DeprecationWarning, match="evaluate_detector"):
        assert xaisparse.evaluate is scoring.evaluate_detector
    for name, module in (("classify", scoring), ("js_divergence", signals), ("EVIDENCE_COLUMNS", xaisparse.detection)):
        with pytest.warns(DeprecationWarning, match=f"import it from {module.__name__}"):
            assert getattr(det, name) is getattr(module, name)
    assert "classify" not in det.__all__ and len(det.__all__) == 13
    with pytest.raises(AttributeError):
        det.no_such_name  # noqa: B018
    h = synthetic_history(epochs=6, seed=0)
    with pytest.warns(DeprecationWarning, match="layer_frame"):
        old = signals.sparsity(h)
    pd.testing.assert_frame_equal(old, h.layer_frame("test"))
