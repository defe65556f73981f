"""Running the grid through submitit: in-process (debug), on this machine (local) or on Slurm.

:func:`run_jobs` trains every job of a grid that is not finished yet. Finished runs are
skipped and unfinished ones (killed mid-way) are removed and redone, so any executor resumes
where the last one stopped. Every outcome is appended to ``ROOT/train_log.jsonl``; submitit
keeps each job's pickles and logs under ``ROOT/submitit/``.

* ``debug``: ``submitit.DebugExecutor``, one job after the other in this process (for
  debugging: breakpoints work);
* ``local`` (default): ``submitit.LocalExecutor``, one process per run, at most ``workers`` at
  a time, with a progress bar and ETA;
* ``slurm``: ``submitit.AutoExecutor(cluster="slurm")``, one job array (``map_array``) with
  ``slurm_array_parallelism`` tasks at a time on ``partition``, ``time`` minutes and ``mem_gb``
  per task; with ``wait=False`` it returns right after submitting (run again, or with
  ``--analyse-only``, when the array is done).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .grid import Job, clean_partial, finished_info, is_finished, owner_alive, run_dir, train_job

EXECUTORS = ("local", "slurm", "debug")


@dataclass(frozen=True)
class Slurm:
    """Slurm settings of ``--executor slurm`` (per array task)."""

    partition: str | None = None
    time_min: int = 60
    mem_gb: float = 4.0
    cpus: int = 1
    parallelism: int = 32
    extra: tuple[tuple[str, Any], ...] = ()


def check_saved(root: Path, todo: list[Job]) -> None:
    """A finished run directory must hold the run this job would train (else: a clear error, nothing reused)."""
    for job in todo:
        path = run_dir(root, job)
        if not is_finished(path):
            continue
        saved = finished_info(path).get("settings", {})
        want = job.settings()
        diff = {k: (saved.get(k), v) for k, v in want.items() if saved.get(k) != v}
        if diff:
            raise SystemExit(
                f"{path} holds a run with other settings {diff} (saved, wanted); use another --out or remove it"
            )


def _log(root: Path, info: dict[str, Any]) -> None:
    with open(root / "train_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps({**info, "time": time.time()}) + "\n")


def _outcome(job: Job, sub: Any) -> dict[str, Any]:
    try:
        return dict(sub.result())
    except Exception as exc:  # a failed run is reported, the others go on
        text = str(exc).strip().splitlines()
        return {"name": job.name, "error": f"{type(exc).__name__}: {text[-1] if text else ''}"}


def run_jobs(
    root: Path,
    todo: list[Job],
    *,
    executor: str = "local",
    workers: int = 2,
    slurm: Slurm | None = None,
    wait: bool = True,
    progress: bool = True,
) -> list[str]:
    """Train the unfinished jobs of ``todo`` under ``root``; returns the names of the failed ones."""
    import submitit
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    removed = clean_partial(root)
    if removed:
        print(f"removed {len(removed)} unfinished run director{'y' if len(removed) == 1 else 'ies'}: {removed}")
    check_saved(root, todo)
    unfinished = [j for j in todo if not is_finished(run_dir(root, j))]
    elsewhere = [j.name for j in unfinished if owner_alive(run_dir(root, j))]
    pending = [j for j in unfinished if j.name not in elsewhere]
    print(f"{len(todo)} runs in the grid, {len(todo) - len(unfinished)} finished, {len(pending)} to train", flush=True)
    if elsewhere:
        print(f"{len(elsewhere)} being trained by another live process, left to it: {elsewhere}", flush=True)
    if not pending:
        return []
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the worker processes
    checkout = str(Path(__file__).resolve().parents[1])  # the workers import studies/ from this checkout
    paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if checkout not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([checkout, *[p for p in paths if p]])
    folder = root / "submitit" / "%j"
    failed: list[str] = []
    bar = tqdm(total=len(pending), desc="runs", unit="run", disable=not progress, smoothing=0.05, file=sys.stdout)

    def finish(job: Job, sub: Any) -> None:
        info = _outcome(job, sub)
        if "error" in info:
            failed.append(job.name)
            print(f"FAILED {job.name}: {info['error']}", file=sys.stderr, flush=True)
        _log(root, info)
        bar.set_postfix_str(f"{job.name} {info.get('seconds', 0):.0f} s")
        bar.update(1)

    if executor == "debug":
        ex: Any = submitit.DebugExecutor(folder=folder)
        for job in pending:
            finish(job, ex.submit(train_job, job, str(root)))
    elif executor == "local":
        ex = submitit.LocalExecutor(folder=folder)
        ex.update_parameters(timeout_min=7 * 24 * 60)
        queue, running = list(pending), {}
        try:
            while queue or running:
                while queue and len(running) < workers:
                    job = queue.pop(0)
                    running[job] = ex.submit(train_job, job, str(root))
                time.sleep(0.5)
                for job in [j for j, s in running.items() if s.done()]:
                    finish(job, running.pop(job))
        except KeyboardInterrupt:
            for sub in running.values():
                sub.cancel()
            raise
    else:
        s = slurm or Slurm()
        ex = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": s.time_min,
            "mem_gb": s.mem_gb,
            "cpus_per_task": s.cpus,
            "slurm_array_parallelism": s.parallelism,
            "name": f"xaisparse-study-{root.name}",
        }
        if s.partition:
            params["slurm_partition"] = s.partition
        params.update(dict(s.extra))
        ex.update_parameters(**params)
        subs = ex.map_array(train_job, pending, [str(root)] * len(pending))
        print(f"submitted a job array of {len(subs)} tasks: {subs[0].job_id.split('_')[0]}", flush=True)
        if not wait:
            bar.close()
            return []
        running = dict(zip(pending, subs))
        while running:
            time.sleep(10)
            for job in [j for j, sub in running.items() if sub.done()]:
                finish(job, running.pop(job))
    bar.close()
    return failed
