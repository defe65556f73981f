"""Study v2 (issue 11): the pre-registered grid of studies/PROTOCOL.md, trained and scored.

Trains every run of the grid that is not finished yet in parallel worker processes (one
torch thread each; a killed study resumes where it stopped: finished runs are skipped, a
half-written run directory is removed and redone), then scores the pre-registered detector
variants and references and the penalty/regulariser comparison, and regenerates every table
and figure of ``--results`` (never edit them by hand). Usage::

    nice -n 19 python studies/study.py --out runs/study --workers 2     # full study (hours)
    python studies/study.py --quick --out /tmp/quick                    # same code, minutes
    python studies/study.py --datasets cifar10 --data-root ~/data --size 32 --out runs/cifar

``--train-only`` stops after training; ``--analyse-only`` scores what is there (missing runs
are listed in the results, never filled in).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from grid import ARCHS, Job, clean_partial, is_finished, jobs, run_dir, train_job

RESULTS = Path(__file__).resolve().parent / "results" / "v2"


def _check_saved(root: Path, todo: list[Job]) -> None:
    """A finished run directory must hold the run this job would train (else: a clear error, nothing reused)."""
    for job in todo:
        path = run_dir(root, job)
        if not is_finished(path):
            continue
        saved = json.loads((path / "history.json").read_text(encoding="utf-8"))["config"].get("study", {})
        want = job.settings()
        diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(
                f"{path} holds a run with other settings {diff} (saved, wanted); use another --out or remove it"
            )


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def train_all(root: Path, todo: list[Job], workers: int, progress: bool = True) -> list[str]:
    """Train the unfinished jobs; returns the names of failed ones (the others are saved)."""
    from tqdm.auto import tqdm

    root.mkdir(parents=True, exist_ok=True)
    removed = clean_partial(root)
    if removed:
        print(f"removed {len(removed)} half-written run director{'y' if len(removed) == 1 else 'ies'}: {removed}")
    _check_saved(root, todo)
    pending = [j for j in todo if not is_finished(run_dir(root, j))]
    print(f"{len(todo)} runs in the grid, {len(todo) - len(pending)} finished, {len(pending)} to train", flush=True)
    failed: list[str] = []
    if not pending:
        return failed
    log = root / "train_log.jsonl"
    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress, smoothing=0.05)
    with ProcessPoolExecutor(max_workers=workers, initializer=_init_worker) as pool:
        queue = list(pending)
        running: dict[Future, Job] = {}
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                running[pool.submit(train_job, job, str(root))] = job
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                job = running.pop(fut)
                try:
                    info = fut.result()
                except Exception as exc:  # a failed run is reported, the others go on
                    failed.append(job.name)
                    info = {"name": job.name, "error": f"{type(exc).__name__}: {exc}"}
                    print(f"FAILED {job.name}: {info['error']}", file=sys.stderr, flush=True)
                with open(log, "a", encoding="utf-8") as f:
                    f.write(json.dumps({**info, "time": time.time()}) + "\n")
                bar.set_postfix_str(f"{job.name} {info.get('seconds', 0):.0f} s")
                bar.update(1)
    bar.close()
    return failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/study", help="where the run directories go (default runs/study)")
    ap.add_argument(
        "--results", default=None, help="tables and figures (default studies/results; --quick: OUT/results)"
    )
    ap.add_argument("--quick", action="store_true", help="2 seeds per dataset, 8 epochs, 100 images: minutes")
    ap.add_argument("--datasets", nargs="+", default=["digits", "mnist_embedded"])
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    ap.add_argument(
        "--parts", default="ART", help="which parts of the grid: A (detector), R (regularisers), T (tuning)"
    )
    ap.add_argument("--size", type=int, default=16, help="input side in pixels (default 16; CIFAR-10: 32)")
    ap.add_argument("--data-root", default=None, help="folder of a torchvision dataset (e.g. cifar-10-batches-py/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 10,000; --quick 1,000)")
    ap.add_argument("--train-only", action="store_true")
    ap.add_argument("--analyse-only", action="store_true")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.workers < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    if args.train_only and args.analyse_only:
        ap.error("--train-only and --analyse-only exclude each other")
    from xaisparse.data import DATASET_NAMES, _canonical_name

    try:
        datasets = tuple(_canonical_name(d) for d in args.datasets)
    except ValueError as exc:
        ap.error(f"{exc} (valid: {', '.join(DATASET_NAMES)})")
    root = Path(args.out)
    grid = jobs(
        datasets, tuple(args.archs), quick=args.quick, size=args.size, data_root=args.data_root, parts=args.parts
    )
    failed: list[str] = []
    if not args.analyse_only:
        failed = train_all(root, grid, args.workers, progress=not args.no_progress)
    if not args.train_only:
        from analysis import analyse

        results = Path(args.results) if args.results else (root / "results" if args.quick else RESULTS)
        resamples = args.resamples or (1_000 if args.quick else 10_000)
        analyse(root, grid, results, resamples=resamples, quick=args.quick)
        print(f"results written to {results}")
    if failed:
        print(f"{len(failed)} run(s) failed: {failed}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
