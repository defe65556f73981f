"""Smoke test of the overhead benchmark: ``bench/overhead.py --quick`` runs and reports.

No timing is asserted (the ratios depend on the machine and its load); only that the script
exits 0, prints the results table with every case, and that the monitor agrees with the
research-code reference (the sanity line) and with every peer of the peers table (NumPy/SciPy,
the torch hook, Captum, TorchLens) on the mean sparsity of one batch, for both models; and that
the op-count table is printed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "overhead.py"

pytestmark = pytest.mark.slow


def test_overhead_benchmark_quick_runs_and_agrees_with_reference() -> None:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} not found")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # One thread: a busy shared runner makes spinning OpenMP workers slow the run down a lot.
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--threads", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "| case | model | plain ms/step | ours ms/step | ratio | spread (IQR) | target | result |" in proc.stdout
    for case in (
        "(a) monitor, train step",
        "(b) monitor, eval pass",
        "(c) penalty, train step",
        "(d) vs scipy reference",
        "(e) memory growth",
        "(f) update vs one log pass",
        "(g) vs torch mean-only hook",
        "(h) fit: measure+checkpoint share",
        "(i) fit + penalty, train+measure ms/epoch",
    ):
        assert case in proc.stdout, case
    # the op-count table: every path counted, with a number
    assert "| path | top-level aten ops | CUDA kernels | per | target | result |" in proc.stdout
    for path in (
        "plain eval forward",
        "+ SparsityMonitor, amortised over 64 batches",
        "+ SparsityPenalty",
        "update eager",
    ):
        assert re.search(rf"^\| [^|]*{re.escape(path)}[^|]* \| [\d.]+ \|", proc.stdout, flags=re.MULTILINE), path
    assert "| variant | model | ms/step | x plain | added ms/step | added / ours' added |" in proc.stdout
    peers = re.findall(
        r"^\| ([^|]+) \| (SmallCNN|ResNet-18) \| [\d.]+ \| [\d.]+x \| [-\d.]+ \| [^|]* \| ([^|]*) \|$",
        proc.stdout,
        flags=re.MULTILINE,
    )
    rows = {(name.strip(), model): agreement.strip() for name, model, agreement in peers}
    for model in ("SmallCNN", "ResNet-18"):
        for name in (
            "NumPy/SciPy hooks, per channel",
            "NumPy/SciPy hooks, vectorised",
            "torch hook, mean only",
            "Captum LayerActivation + post hoc",
            "TorchLens trace + post hoc",
        ):
            agreement = rows[(name, model)]  # a row that ran, with its max |difference| to ours
            assert float(agreement.split()[0]) <= 1e-5, (name, model, agreement)
    sanity = re.findall(
        r"^sanity: max \|mean sparsity ours - reference\| = (\S+) over (\d+) layers of (\S+) "
        r"\(tolerance (\S+)\): (\w+)$",
        proc.stdout,
        flags=re.MULTILINE,
    )
    assert {m[2] for m in sanity} == {"SmallCNN", "ResNet-18"}, proc.stdout[-3000:]
    for diff, layers, model, tol, verdict in sanity:
        assert float(tol) == 1e-5
        assert float(diff) <= 1e-5 and verdict == "OK", (model, diff)
        assert int(layers) > 0
