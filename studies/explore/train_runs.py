"""Exploration runs for the pre-registered study (issue 11, phase 1): digits TUNING seeds only.

Trains ``archs × regimes × seeds`` with the current API (``xaisparse.train.fit``), one
run at a time in this process (``torch.set_num_threads(1)``; run it under ``nice``), saves
each History under ``--out`` (finished runs are skipped, so a killed job resumes) and appends
the measured wall time of each run to ``--out/timings.csv``.

Seeds are restricted to the tuning seeds 0–4 unless ``--timing-only`` is given: then the
runs are short (``--epochs``), nothing but the time is kept, and any dataset is allowed
(the held-out seeds and MNIST are never trained here for their results).

    nice -n 19 .venv/bin/python studies/explore/train_runs.py --out runs/explore
    nice -n 19 .venv/bin/python studies/explore/train_runs.py --timing-only --dataset mnist_embedded \
        --epochs 3 --out runs/explore-timing
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import torch

#: name -> (build_model name, keyword arguments): the three architectures of the study.
ARCHS = {
    "small_cnn": ("small_cnn", {"width": 16, "depth": 3}),
    "vgg_small": ("vgg11", {"width_mult": 0.125, "dropout": 0.0}),
    "resnet18_small": ("resnet18", {"width": 16}),
}
#: name -> load_dataset keywords (besides seed and size): the two overfitting regimes.
REGIMES = {
    "clean": {"train_subset": 300, "label_noise": 0.0},
    "noise20": {"train_subset": 300, "label_noise": 0.2},
}
TUNING_SEEDS = range(5)


def train_one(dataset: str, arch: str, regime: str, seed: int, epochs: int, size: int, out: Path) -> float:
    """Train one run, save its History to ``out``; returns the wall time in seconds."""
    from xaisparse.data import load_dataset
    from xaisparse.models import build_model
    from xaisparse.train import fit

    t0 = time.perf_counter()
    split = load_dataset(dataset, size=size, seed=seed, **REGIMES[regime])
    name, kw = ARCHS[arch]
    torch.manual_seed(seed)
    model = build_model(name, in_channels=1, num_classes=10, image_size=size, **kw)
    history = fit(
        model,
        split.train,
        split.test,
        epochs=epochs,
        lr=2e-3,
        batch_size=32,
        seed=seed,
        progress=False,
        config={"name": out.name, "dataset": dataset, "arch": arch, "regime": regime, "data": split.info},
    )
    history.save(out)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/explore")
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--regimes", nargs="+", default=list(REGIMES), choices=list(REGIMES))
    ap.add_argument("--seeds", nargs="+", type=int, default=list(TUNING_SEEDS))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--timing-only", action="store_true")
    args = ap.parse_args(argv)
    if not args.timing_only and (args.dataset != "digits" or any(s not in TUNING_SEEDS for s in args.seeds)):
        ap.error("exploration is on the digits tuning seeds 0-4 only (use --timing-only to measure time)")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "timings.csv"
    new = not log.exists()
    with open(log, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["dataset", "arch", "regime", "seed", "epochs", "size", "seconds", "load1"])
        # seed-major order: every (arch, regime) gets a first run (and a time) early
        for seed in args.seeds:
            for arch in args.archs:
                for regime in args.regimes:
                    run = out / "runs" / f"{args.dataset}-{regime}-{arch}-s{seed}"
                    if (run / "history.json").exists():
                        continue
                    seconds = train_one(args.dataset, arch, regime, seed, args.epochs, args.size, run)
                    load1 = open("/proc/loadavg").read().split()[0]
                    writer.writerow([args.dataset, arch, regime, seed, args.epochs, args.size, f"{seconds:.1f}", load1])
                    f.flush()
                    print(f"{run.name}: {seconds:.0f} s (load {load1})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
