"""``studies/study.py --quick`` runs the study's own code end to end (training, resuming, scoring, files).

The scored rates are checked against the per-run table recomputed here by hand from the saved
histories (NumPy argmin of the test loss, the protocol's outcome windows), not against the
analysis' own arithmetic.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "studies"))

ARGS = ["--quick", "--archs", "small_cnn", "--datasets", "digits", "--workers", "1", "--no-progress"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    import study

    out = tmp_path_factory.mktemp("quick")
    assert study.main([*ARGS, "--out", str(out), "--resamples", "200"]) == 0
    return out


def test_quick_study_writes_every_result(quick):
    res = quick / "results"
    for name in (
        "results.md",
        "grid_status.csv",
        "detector_runs.csv",
        "detector_summary.csv",
        "decision.csv",
        "penalty_vs_baseline.csv",
        "scores.png",
        "lead_ecdf.png",
    ):
        assert (res / name).is_file(), name
    status = pd.read_csv(res / "grid_status.csv")
    # 2 held-out seeds x 2 regimes (A) + 4 conditions x 2 seeds (R) + 1 tuning seed x 2 regimes (T)
    assert len(status) == 14 and set(status.status) == {"complete"}
    assert "--quick" in (res / "results.md").read_text(encoding="utf-8")


def test_quick_study_resumes_without_retraining(quick, capsys):
    import study

    assert study.main([*ARGS, "--out", str(quick), "--train-only"]) == 0
    assert "14 finished, 0 to train" in capsys.readouterr().out


def test_scores_match_a_hand_recomputation(quick):
    from xaisparse.history import History

    runs = pd.read_csv(quick / "results" / "detector_runs.csv")
    summary = pd.read_csv(quick / "results" / "detector_summary.csv")
    held = runs[runs.split == "held_out"]
    for name, g in held.groupby("run"):
        loss = History.load(quick / "runs" / name).metric("test", "loss").sort_index()
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
        assert g.set_index("method").loc["N0", "stop"] != g.set_index("method").loc["N0", "stop"]  # NaN: no stop
    pooled = summary[summary.group == "held_out: pooled"].set_index("method")
    for method, g in held[held.method != "B3"].groupby("method"):
        assert pooled.loc[method, "hit"] == pytest.approx((g.outcome == "hit").mean())
        assert pooled.loc[method, "score"] == pytest.approx(
            (g.outcome == "hit").mean() - (g.outcome == "false_alarm").mean()
        )
        assert (
            pooled.loc[method, "score_lo"]
            <= pooled.loc[method, "score"] + 1e-12
            <= pooled.loc[method, "score_hi"] + 2e-12
        )
