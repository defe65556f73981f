"""``python -m studies --quick`` runs the study's own code end to end through submitit's local executor
(training in worker processes, resuming, the v3 scoring and files; v2's scoring on the same runs).

The scored rates are checked against the per-run table recomputed here by hand from the saved
histories (NumPy argmin of the test loss, the protocol's outcome windows), not against the
analysis' own arithmetic; the published signals' stops against the rules applied by hand.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("submitit")

ARGS = ["--quick", "--archs", "small_cnn", "--datasets", "digits", "--no-progress"]
# 1 tuning seed x 2 regimes (T) + 2 held-out seeds x 2 regimes (A) + 6 twins (W) + 3 seeds x 2 regimes (S)
RUNS = 18


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    from studies import study

    out = tmp_path_factory.mktemp("quick")
    assert study.main([*ARGS, "--out", str(out), "--executor", "local", "--workers", "2", "--resamples", "200"]) == 0
    return out


def test_quick_study_writes_every_result(quick):
    res = quick / "results"
    for name in (
        "results.md",
        "grid_status.csv",
        "rules.csv",
        "tuning_grid.csv",
        "detector_runs.csv",
        "detector_summary.csv",
        "decision.csv",
        "scores.png",
        "signals.png",
    ):
        assert (res / name).is_file(), name
    status = pd.read_csv(res / "grid_status.csv")
    assert len(status) == RUNS and set(status.status) == {"complete"}
    assert set(status.part) == {"T", "A", "W", "S"}
    assert "--quick" in (res / "results.md").read_text(encoding="utf-8")
    decision = pd.read_csv(res / "decision.csv")
    assert set(decision.method) == {f"P{i}" for i in range(1, 10)}


def test_quick_study_resumes_without_retraining(quick, capsys):
    from studies import study

    assert study.main([*ARGS, "--out", str(quick), "--train-only", "--executor", "debug"]) == 0
    assert f"{RUNS} finished, 0 to train" in capsys.readouterr().out


def test_scores_match_a_hand_recomputation(quick):
    from studies.grid import load_history

    runs = pd.read_csv(quick / "results" / "detector_runs.csv")
    summary = pd.read_csv(quick / "results" / "detector_summary.csv")
    held = runs[(runs.split == "held_out") & (runs.part == "A")]
    assert len(held.run.unique()) == 4
    for name, g in held.groupby("run"):
        loss = load_history(quick, name).metric("test", "loss").sort_index()
        values = loss.to_numpy(dtype=float)
        e_star = int(loss.index[np.argmin(values)])
        overfit = values[loss.index > e_star].max(initial=-np.inf) > 1.05 * values.min()
        for row in g[g.method != "B3"].itertuples():
            if np.isnan(row.stop):
                want = "miss" if overfit else "correct_rejection"
            else:
                lead = e_star - int(row.stop)
                if not overfit:
                    want = "false_alarm"
                else:
                    want = "hit" if -2 <= lead <= 5 else ("false_alarm" if lead > 5 else "miss")
            assert row.outcome == want, (name, row.method)
    pooled = summary[summary.group == "held_out · adam: pooled"].set_index("method")
    assert {"P1", "P2", "P6", "D1", "L2"} <= set(pooled.index)
    for method, g in held[held.method.isin(pooled.index) & (held.method != "B3")].groupby("method"):
        assert pooled.loc[method, "hit"] == pytest.approx((g.outcome == "hit").mean())
        assert pooled.loc[method, "score"] == pytest.approx(
            (g.outcome == "hit").mean() - (g.outcome == "false_alarm").mean()
        )
        assert (
            pooled.loc[method, "score_lo"] - 1e-12
            <= pooled.loc[method, "score"]
            <= pooled.loc[method, "score_hi"] + 1e-12
        )


def test_published_stops_are_the_rules_applied_by_hand(quick):
    from xaisparse.stopping import load_signals, minimum_stop, threshold_stop

    runs = pd.read_csv(quick / "results" / "detector_runs.csv")
    for name, g in runs[runs.part == "A"].groupby("run"):
        sig = load_signals(quick / "runs" / name / "labelfree").signals
        stops = g.set_index("method").stop
        eb = threshold_stop(sig.eb_criterion, 0.0)  # P1: EB > 0
        gd = minimum_stop(sig.gradient_disparity, patience=5)  # P3
        alpha = threshold_stop(sig.alpha_mean, 2.0, above=False)  # P5
        for method, want in (("P1", eb), ("P3", gd), ("P5", alpha)):
            got = stops[method]
            assert (np.isnan(got) and want is None) or got == want, (name, method)
    assert {"P7"} <= set(runs[runs.part == "A"].method)  # the twins' disagreement was scored
    assert {"P8", "P9"} <= set(runs[runs.part == "S"].method)


def test_v2_scoring_runs_on_the_same_runs(quick, tmp_path):
    from studies import study

    out = tmp_path / "v2"
    code = study.main(
        [*ARGS, "--study", "v2", "--parts", "AT", "--out", str(quick), "--analyse-only", "--results", str(out)]
    )
    assert code == 0
    summary = pd.read_csv(out / "detector_summary.csv")
    v3 = pd.read_csv(quick / "results" / "detector_summary.csv")
    a = summary[summary.group == "held_out: pooled"].set_index("method").score
    b = v3[v3.group == "held_out · adam: pooled"].set_index("method").score
    for method in ("D0", "D1", "D3", "B1", "L2"):
        assert a[method] == pytest.approx(b[method])
