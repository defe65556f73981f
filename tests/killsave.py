"""Kill ``History.save`` with SIGKILL at every filesystem operation (run by tests/test_history.py).

``python tests/killsave.py CASES_DIR`` reads ``CASES_DIR/plan.json``: scenarios, each an initial
folder (what the parent of the run directory holds before the save), and ``CASES_DIR/new.pickle``
(the History to save: :func:`new_history`, pickled by the test so that this process needs neither
torch nor the test's imports, and its forks stay small). A scenario whose name starts with
``append`` saves with a :class:`~xaisparse.history.HistoryWriter` instead: the child first saves
``CASES_DIR/first.pickle`` with it (untraced, the whole run), then appends the new History (traced). For each scenario it first saves it once to count and list the filesystem operations of the save: every
``open``, ``os.*`` and ``shutil.*`` audit event (:func:`sys.addaudithook`) whose path lies in the
scenario's folder (or is relative: ``shutil.rmtree`` works with directory descriptors). Then, for
each operation ``k``, it copies the initial folder, forks a child that saves into the copy and
kills itself with SIGKILL just before operation ``k`` — so after operations ``1..k-1`` — and records
how the child ended. The parent test loads every copy. The driver runs in its own interpreter so
that the children fork from a process with no test framework threads and no Arrow thread pool.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

RUN = "run"


def old_history():
    """The run on disk before the save (two layers, three epochs)."""
    from xaisparse.testing import synthetic_history

    return synthetic_history(epochs=3, layers=("a", "b"), channels=2, seed=1)


def new_history():
    """The run being saved: other values, one more epoch, a detector result (so every file kind)."""
    from xaisparse.detect import OverfitDetector
    from xaisparse.history import RunOutcome
    from xaisparse.testing import synthetic_history

    h = synthetic_history(epochs=4, layers=("a", "b"), channels=2, seed=2)
    h.detection = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(h)
    h.outcome = RunOutcome(train_seconds=2.5, stopped_early_at=None, stop_reason=None, phase_seconds={"train": 2.0})
    return h


def first_history():
    """What a HistoryWriter saved before appending :func:`new_history`: its first three epochs, with a
    detector result and an outcome of their own."""
    from xaisparse.detect import OverfitDetector
    from xaisparse.testing import synthetic_history

    h = synthetic_history(epochs=3, layers=("a", "b"), channels=2, seed=2)
    h.detection = OverfitDetector(smooth=1, threshold=0.0, noise=0.0, patience=1, warmup=0).detect(h)
    return h


def _save(history, folder: Path, kill_at: int, report_fd: int, first=None) -> None:
    """In the child: save with a tracer that kills the process before operation ``kill_at`` (0: never);
    with ``first``: a HistoryWriter saves ``first`` (not traced), then ``history`` (an append)."""
    if first is None:
        save = history.save
    else:
        from xaisparse.history import HistoryWriter

        writer = HistoryWriter(folder / RUN)
        writer.save(first)  # the whole run, before the tracer
        save = lambda _path: writer.save(history)  # noqa: E731 - an append
    root = str(folder)
    seen: list[str] = []

    def tracer(event: str, args: tuple) -> None:
        if not (event == "open" or event.startswith(("os.", "shutil."))) or not args:
            return
        path = args[0]
        if isinstance(path, (bytes, os.PathLike)):
            path = os.fsdecode(path)
        if not isinstance(path, str) or (os.path.isabs(path) and not path.startswith(root)):
            return
        seen.append(f"{event} {os.path.relpath(path, root) if os.path.isabs(path) else '<dir_fd>/' + path}")
        if len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(tracer)
    save(folder / RUN)
    os.write(report_fd, json.dumps(seen).encode())


def _fork_save(history, folder: Path, kill_at: int, first=None) -> tuple[int, list[str]]:
    """Save in a forked child; returns (the signal that ended it or 0, the operations it reported)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to the caller
        code = 0
        try:
            os.close(r)
            _save(history, folder, kill_at, w, first)
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
        raise RuntimeError(f"the saving child failed (exit {os.WEXITSTATUS(status)}); see stderr")
    killed = os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0
    return killed, json.loads(b"".join(chunks) or b"[]")


def main(cases_dir: str) -> None:
    import pandas.io.parquet  # noqa: F401 - imported before forking: the children trace only their own files
    import pyarrow.parquet  # noqa: F401

    from xaisparse import _runfiles

    _runfiles._validator(_runfiles.SCHEMA_VERSION)  # built once here, not in every child

    cases = Path(cases_dir)
    plan = json.loads((cases / "plan.json").read_text())
    with open(cases / "new.pickle", "rb") as f:
        history = pickle.load(f)  # written by the test itself
    first = None
    if (cases / "first.pickle").exists():
        with open(cases / "first.pickle", "rb") as f:
            first = pickle.load(f)  # written by the test itself
    results = {}
    for name, initial in plan.items():
        before = first if name.startswith("append") else None
        probe = cases / name / "complete"
        shutil.copytree(initial, probe)
        killed, operations = _fork_save(history, probe, 0, before)
        assert killed == 0 and operations, (name, killed, operations)
        for k in range(1, len(operations) + 1):
            folder = cases / name / f"kill-{k:03d}"
            shutil.copytree(initial, folder)
            signal_no, _ = _fork_save(history, folder, k, before)
            assert signal_no == signal.SIGKILL, f"{name}: the child was not killed before operation {k}"
        results[name] = operations
    (cases / "operations.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
