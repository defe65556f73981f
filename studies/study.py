"""The study's command line: train the grid through submitit, then score it.

Study v2 (``--study v2``, PROTOCOL.md) trains parts A, R and T; study v3 (``--study v3``, the
default: the v3 addendum of PROTOCOL.md) retrains parts T and A with the published label-free
signals recorded every epoch, plus the twins (W) and the plain-SGD cell (S). Finished runs are
skipped and unfinished ones redone, so a killed study resumes where it stopped; the tables and
figures of ``--results`` are regenerated from the runs every time (never edit them). Usage::

    nice -n 19 python -m studies --out runs/study --workers 2            # v3 (hours)
    python -m studies --quick --out /tmp/quick                           # same code, minutes
    python -m studies --study v2 --out runs/study-v2                     # study v2's grid
    python -m studies --executor slurm --slurm-partition cpu --out /scratch/study   # a cluster
    python -m studies --datasets cifar10 --data-root ~/data --size 32 --out runs/cifar

``--train-only`` stops after training; ``--analyse-only`` scores what is there (missing runs
are listed in the results, never filled in).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .engine import EXECUTORS, Slurm, run_jobs
from .grid import ARCHS, STUDY_PARTS, jobs

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m studies", description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="v3", choices=sorted(STUDY_PARTS), help="which protocol (default v3)")
    ap.add_argument("--out", default="runs/study", help="where the run directories go (default runs/study)")
    ap.add_argument(
        "--results", default=None, help="tables and figures (default studies/results/<study>; --quick: OUT/results)"
    )
    ap.add_argument("--quick", action="store_true", help="2 seeds per dataset, 8 epochs, 100 images: minutes")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist_embedded"])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument("--parts", default=None, help="which parts of the grid (default: the study's, v2 ART, v3 TAWS)")
    ap.add_argument("--size", type=int, default=16, help="input side in pixels (default 16; CIFAR-10: 32)")
    ap.add_argument("--data-root", default=None, help="folder of a torchvision dataset (e.g. cifar-10-batches-py/)")
    ap.add_argument("--executor", default="local", choices=EXECUTORS, help="submitit executor (default local)")
    ap.add_argument("--workers", type=int, default=2, help="local executor: runs at a time (default 2)")
    ap.add_argument("--slurm-partition", default=None, help="slurm: partition")
    ap.add_argument("--slurm-time", type=int, default=60, help="slurm: minutes per run (default 60)")
    ap.add_argument("--slurm-mem", type=float, default=4.0, help="slurm: GB of memory per run (default 4)")
    ap.add_argument("--slurm-cpus", type=int, default=1, help="slurm: CPUs per run (default 1)")
    ap.add_argument("--slurm-parallelism", type=int, default=32, help="slurm: array tasks at a time (default 32)")
    ap.add_argument("--no-wait", action="store_true", help="slurm: submit the array and exit (analyse later)")
    ap.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10,000; --quick 1,000)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument(
        "--redraw-figures",
        action="store_true",
        help="v2: draw the results folder's figures again from its own tables (no runs needed, no number changes)",
    )
    args = ap.parse_args(argv)
    if args.redraw_figures:
        if args.study != "v2":
            ap.error("--redraw-figures is for --study v2 (v3's figures come with --analyse-only)")
        from .analysis import redraw_figures

        results = Path(args.results) if args.results else RESULTS / args.study
        print(f"figures drawn again in {results}: {', '.join(redraw_figures(results))}")
        return 0
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if args.train_only and args.analyse_only:
        ap.error("--train-only and --analyse-only exclude each other")
    from xaisparse.data import DATASET_NAMES, _canonical_name

    try:
        datasets = tuple(_canonical_name(d) for d in args.datasets)
    except ValueError as exc:
        ap.error(f"{exc} (valid: {', '.join(DATASET_NAMES)})")
    parts = args.parts or STUDY_PARTS[args.study]
    try:
        grid = jobs(
            datasets, tuple(args.archs), quick=args.quick, size=args.size, data_root=args.data_root, parts=parts
        )
    except ValueError as exc:
        ap.error(str(exc))
    root = Path(args.out)
    failed: list[str] = []
    if not args.analyse_only:
        slurm = Slurm(
            partition=args.slurm_partition,
            time_min=args.slurm_time,
            mem_gb=args.slurm_mem,
            cpus=args.slurm_cpus,
            parallelism=args.slurm_parallelism,
        )
        failed = run_jobs(
            root,
            grid,
            executor=args.executor,
            workers=args.workers,
            slurm=slurm,
            wait=not args.no_wait,
            progress=not args.no_progress,
        )
        if args.no_wait and args.executor == "slurm":
            return 0
    if not args.train_only:
        results = Path(args.results) if args.results else (root / "results" if args.quick else RESULTS / args.study)
        resamples = args.resamples or (1_000 if args.quick else 10_000)
        if args.study == "v2":
            from .analysis import analyse
        else:
            from .analysis_v3 import analyse
        analyse(root, grid, results, resamples=resamples, quick=args.quick)
        print(f"results written to {results}")
    if failed:
        print(f"{len(failed)} run(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
