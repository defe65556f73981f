"""Study v2's post-hoc pieces on hand-made tables: the learning check, the C3 verdicts, the study's busy time."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest


def _runs(cells: dict[tuple[str, str, str], tuple[list[float], list[float]]]) -> pd.DataFrame:
    """One row per seed: (dataset, arch, condition) -> (best test accuracies, last test losses)."""
    rows = []
    for (dataset, arch, condition), (accs, losses) in cells.items():
        for seed, (acc, loss) in enumerate(zip(accs, losses)):
            rows.append(
                {
                    "run": f"{dataset}-{arch}-{condition}-s{seed}",
                    "dataset": dataset,
                    "arch": arch,
                    "condition": condition,
                    "regime": "noise20",
                    "seed": seed,
                    "num_classes": 10,
                    "best_acc": acc,
                    "last_acc": acc,
                    "last_loss": loss,
                    "min_loss": loss,
                    "final_sparsity": 0.5,
                }
            )
    return pd.DataFrame(rows)


def test_learning_check_counts_runs_below_twice_chance() -> None:
    from studies.regularisers import learning_check

    runs = _runs(
        {
            ("d", "a", "baseline"): ([0.8, 0.7, 0.9], [1.0, 1.1, 1.2]),
            ("d", "a", "penalty"): ([0.10, 0.19, 0.20], [2.30, 2.31, 2.29]),  # 0.20 = 2/10 is learned (not below)
        }
    )
    table = learning_check(runs).set_index("condition")
    assert table.loc["baseline", "did_not_learn"] == 0
    assert table.loc["penalty", "did_not_learn"] == 2
    assert table.loc["penalty", "median_best_acc"] == pytest.approx(0.19)
    assert table.loc["penalty", "median_last_loss"] == pytest.approx(2.30)


def test_c3_post_hoc_verdict_drops_cells_where_the_penalised_networks_never_learned() -> None:
    from studies.regularisers import c3

    seeds = 10
    good = [0.85] * seeds
    cells = {
        # cell 1: the penalty lowers the loss in every seed, and its networks learned
        ("d", "small", "baseline"): (good, [1.0 + 0.01 * s for s in range(seeds)]),
        ("d", "small", "penalty"): (good, [0.8 + 0.01 * s for s in range(seeds)]),
        # cell 2: lower loss too, but every penalised network sits at chance (uniform predictions)
        ("d", "vgg", "baseline"): (good, [4.0 + 0.1 * s for s in range(seeds)]),
        ("d", "vgg", "penalty"): ([0.1] * seeds, [2.3026] * seeds),
    }
    table, verdict = c3(_runs(cells), resamples=200)
    row = verdict.set_index("dataset").loc["d"]
    # pre-registered rule: both cells favourable with exact Wilcoxon p = 2 / 2**10, Holm over 2 cells
    from scipy.stats import wilcoxon

    p = wilcoxon(np.full(seeds, -0.2), method="exact").pvalue
    assert p < 0.05 / 2
    assert (row.cells, row.cells_supporting, row.verdict) == (2, 2, "supported")
    assert (row.cells_supporting_where_penalty_learned, row.verdict_learned_only_post_hoc) == (1, "partly supported")
    last = table[table.metric == "last_loss"].set_index("arch")
    assert last.loc["vgg", "median_diff"] == pytest.approx(2.3026 - np.median([4.0 + 0.1 * s for s in range(seeds)]))


def test_busy_seconds_is_the_union_of_the_run_intervals() -> None:
    from studies.analysis import _busy_seconds

    runs = pd.DataFrame(
        {
            "started": [0.0, 5.0, 20.0, 21.0, np.nan],
            "finished": [10.0, 12.0, 30.0, 25.0, 99.0],
        }
    )
    # [0, 12] ∪ [20, 30] = 22 seconds; the run with no start time is left out
    assert _busy_seconds(runs) == pytest.approx(22.0)
    assert _busy_seconds(runs.iloc[:0]) == 0.0


def test_v2_figures_redrawn_from_the_committed_tables_fit_the_page(tmp_path):
    """``python -m studies --study v2 --redraw-figures`` needs only the results' own tables, and
    every figure it draws is at most 736 px wide (the docs column: shown at its natural size)."""
    import shutil
    import struct
    from pathlib import Path

    from studies.analysis import redraw_figures

    committed = Path(__file__).resolve().parents[1] / "studies" / "results" / "v2"
    for name in ("runs.csv", "detector_summary.csv", "detector_runs.csv"):
        shutil.copy(committed / name, tmp_path / name)
    drawn = redraw_figures(tmp_path)
    assert drawn == ["scores.png", "lead_ecdf.png", "paired_last_loss.png"]
    for name in drawn:
        head = (tmp_path / name).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])  # the IHDR chunk
        assert 600 <= width <= 736 and height > 300, (name, width, height)
    groups = pd.read_csv(tmp_path / "detector_summary.csv").group.nunique()
    assert groups == 5  # five score panels, two to a row: three rows
