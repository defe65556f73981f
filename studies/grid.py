"""The runs of the study (PROTOCOL.md §2–4 and the v3 addendum) and how one of them is trained.

A :class:`Job` is one training run: dataset × seed × architecture × regime × condition, plus
the optimiser and the initialisation seed (a *twin* shares its data with the run it pairs but
not its initialisation and batch order). :func:`jobs` lists a study's grid; :func:`train_job`
trains one job (in whatever process the executor gives it) and writes its run directory::

    runs/<name>/history/     History.save (its own layout)
    runs/<name>/labelfree/   LabelFreeSignals.save (v3 parts)
    runs/<name>/done.json    written last, atomically: the run is finished

so a directory without ``done.json`` is unfinished, whatever ``History.save`` does inside
``history/``; :func:`clean_partial` removes such directories (unless their owner is alive).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: name -> (build_model name, keyword arguments): the three architectures (PROTOCOL.md §3).
ARCHS: dict[str, tuple[str, dict[str, Any]]] = {
    "small_cnn": ("small_cnn", {"width": 16, "depth": 3}),
    "vgg_small": ("vgg11", {"width_mult": 0.125, "dropout": 0.0}),
    "resnet18_small": ("resnet18", {"width": 16}),
}
#: epochs per architecture (§3: VGG learns slowly, its minimum must lie well inside the run).
EPOCHS = {"small_cnn": 60, "vgg_small": 100, "resnet18_small": 60}
#: name -> load_dataset keywords (besides seed and size): the two overfitting regimes (§3).
REGIMES: dict[str, dict[str, Any]] = {
    "clean": {"train_subset": 300, "label_noise": 0.0},
    "noise20": {"train_subset": 300, "label_noise": 0.2},
}
#: the conditions of part R (§4), fixed a priori; "baseline" is part A's run of the same seed.
#: Model keywords and weight decay come from :func:`xaisparse.models.regularisation` (the CLI's recipe).
CONDITIONS = ("baseline", "penalty", "dropout", "batch_norm", "weight_decay")
_RECIPE = {"dropout": ("dropout",), "batch_norm": ("batchnorm",), "weight_decay": ("weight_decay",)}
PENALTY_WEIGHT = 0.1
#: the architectures and regime of part R (ResNet has BN built in and no dropout slot).
R_ARCHS = ("small_cnn", "vgg_small")
R_REGIME = "noise20"

TUNING_SEEDS = tuple(range(5))  # digits only (§4)
HELD_OUT_SEEDS = {"digits": tuple(range(5, 15))}  # any other dataset: seeds 0–9
OTHER_SEEDS = tuple(range(10))

LR, BATCH_SIZE, PROBE_SIZE = 2e-3, 32, 512
#: v3 addendum: the plain-SGD cell (no momentum, no weight decay) for the EB-criterion.
SGD_LR = 0.1
#: v3 addendum: a twin's initialisation/batch-order seed is the run's seed + this.
TWIN_OFFSET = 1000
#: the parts of each study (letters of :func:`jobs`).
STUDY_PARTS = {"v2": "ART", "v3": "TAWS"}

DONE = "done.json"
OWNER = "owner.json"


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    dataset: str
    seed: int
    arch: str
    regime: str
    condition: str
    part: str  # A, R, T (v2); W (twin), S (plain SGD) (v3)
    epochs: int
    size: int = 16
    train_subset: int = 300
    probe_size: int = PROBE_SIZE
    data_root: str | None = None
    optimizer: str = "adam"
    init_seed: int | None = None  # None: the data seed (every run but a twin)
    signals: str = "none"  # "none", "all" (LabelFreeSignals) or "predict" (predictions only)

    @property
    def twin(self) -> bool:
        return self.init_seed is not None and self.init_seed != self.seed

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.regime}-{self.arch}-{self.condition}-s{self.seed}" + (
            "-twin" if self.twin else ""
        )

    @property
    def partner(self) -> str:
        """The name of the run a twin pairs with (its own name otherwise)."""
        return f"{self.dataset}-{self.regime}-{self.arch}-{self.condition}-s{self.seed}"

    @property
    def split(self) -> str:
        """``tuning`` (digits seeds 0–4, in any part) or ``held_out``."""
        return "tuning" if self.dataset == "digits" and self.seed in TUNING_SEEDS else "held_out"

    def settings(self) -> dict[str, Any]:
        """What must match for a saved run to count as this job (resuming checks it)."""
        out = asdict(self)
        out.pop("data_root")
        return out


def held_out_seeds(dataset: str) -> tuple[int, ...]:
    return HELD_OUT_SEEDS.get(dataset, OTHER_SEEDS)


def jobs(
    datasets: tuple[str, ...] = ("digits", "mnist_embedded"),
    archs: tuple[str, ...] = tuple(ARCHS),
    *,
    quick: bool = False,
    size: int = 16,
    data_root: str | None = None,
    parts: str = "ART",
) -> list[Job]:
    """The grid, in the order it is run (each part in the order of ``parts``).

    v2 (``ART``): A = held-out seeds × archs × regimes, baseline; R = the part-R conditions on
    ``R_ARCHS`` × ``noise20``; T = digits tuning seeds × archs × regimes. v3 (``TAWS``, with
    label-free signals): T first (the rules are chosen on it), then A without ResNet-18, W = a
    twin of every ``small_cnn`` run of T and A (predictions only), S = ``small_cnn`` with plain
    SGD on the tuning and held-out seeds, and A's ResNet-18 runs last (the addendum's cut order). ``quick``: 2 held-out seeds per dataset and 1 tuning seed, 8 epochs, 100
    training images and 200-image probes — minutes instead of hours, the same code.
    """
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; valid: {list(ARCHS)}")
    bad = sorted(set(parts) - set("ARTWS"))
    if bad:
        raise ValueError(f"unknown part(s) {bad}; valid: A, R, T (study v2), W, S (study v3)")
    v3 = bool(set(parts) & set("WS"))
    base: dict[str, Any] = {"size": size, "data_root": data_root}
    if quick:
        base.update(train_subset=100, probe_size=200)

    def epochs(arch: str) -> int:
        return 8 if quick else EPOCHS[arch]

    def seeds(dataset: str) -> tuple[int, ...]:
        s = held_out_seeds(dataset)
        return s[:2] if quick else s

    tuning = TUNING_SEEDS[:1] if quick else TUNING_SEEDS
    signals = "all" if v3 else "none"

    def baseline(dataset: str, seed: int, arch: str, regime: str, part: str) -> Job:
        return Job(dataset, seed, arch, regime, "baseline", part, epochs(arch), signals=signals, **base)

    a = [baseline(d, s, arch, regime, "A") for d in datasets for s in seeds(d) for arch in archs for regime in REGIMES]
    t = [baseline("digits", s, arch, regime, "T") for s in tuning for arch in archs for regime in REGIMES]
    t = t if "digits" in datasets else []
    out: list[Job] = []
    for part in parts:
        if part == "A":
            out += [j for j in a if not v3 or j.arch != "resnet18_small"]  # v3: ResNet-18 at the very end
        elif part == "T":
            out += t
        elif part == "R":
            out += [
                Job(d, s, arch, R_REGIME, condition, "R", epochs(arch), **base)
                for condition in CONDITIONS[1:]
                for d in datasets
                for s in seeds(d)
                for arch in (x for x in R_ARCHS if x in archs)
            ]
        elif part == "W":
            out += [
                Job(**{**asdict(j), "part": "W", "init_seed": j.seed + TWIN_OFFSET, "signals": "predict"})
                for j in [*t, *a]
                if j.arch == "small_cnn"
            ]
        elif part == "S" and "small_cnn" in archs:
            sgd = [("digits", s) for s in tuning] if "digits" in datasets else []
            sgd += [(d, s) for d in datasets for s in seeds(d)]
            out += [
                Job(d, s, "small_cnn", regime, "sgd", "S", epochs("small_cnn"), optimizer="sgd", signals="all", **base)
                for d, s in sgd
                for regime in REGIMES
            ]
    if v3 and "A" in parts:
        out += [j for j in a if j.arch == "resnet18_small"]  # the addendum's cut order: last of all
    return out


# ---------------------------------------------------------------------------- run directories
def run_dir(root: Path, job: Job) -> Path:
    return Path(root) / "runs" / job.name


def history_dir(path: Path) -> Path:
    """Where a run directory keeps its History."""
    return Path(path) / "history"


def signals_dir(path: Path) -> Path:
    """Where a run directory keeps its label-free signals (v3 parts)."""
    return Path(path) / "labelfree"


def is_finished(path: Path) -> bool:
    """A run directory whose completion marker was written (the last thing :func:`train_job` writes)."""
    return (Path(path) / DONE).is_file()


def finished_info(path: Path) -> dict[str, Any]:
    """What the completion marker records: the job's settings, times and load."""
    return json.loads((Path(path) / DONE).read_text(encoding="utf-8"))


def owner_alive(path: Path) -> bool:
    """True while the process that is writing this run directory lives (or runs on another machine)."""
    return _owner_alive(path)


def _owner_alive(path: Path) -> bool:
    try:
        owner = json.loads((path / OWNER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return True  # another machine's worker (a cluster job): never touch it
    try:
        os.kill(int(owner["pid"]), 0)
    except (OSError, KeyError, ValueError):
        return False
    return True


def clean_partial(root: Path) -> list[str]:
    """Remove what a killed study left: run directories without a completion marker whose owner is gone."""
    runs = Path(root) / "runs"
    removed = []
    if runs.is_dir():
        for p in sorted(runs.iterdir()):
            if p.is_dir() and not is_finished(p) and not _owner_alive(p):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


# ---------------------------------------------------------------------------- training
def build(job: Job) -> tuple[Any, Any, dict[str, Any]]:
    """The data split, the model and fit's keyword arguments of one job (seeded as in §3)."""
    import torch

    from xaisparse.data import load_dataset
    from xaisparse.models import build_model, regularisation
    from xaisparse.penalty import SparsityPenalty

    regime = dict(REGIMES[job.regime], train_subset=job.train_subset)
    root = {} if job.data_root is None else {"root": job.data_root}
    split = load_dataset(job.dataset, size=job.size, seed=job.seed, **root, **regime)
    name, kw = ARCHS[job.arch]
    extra, weight_decay = regularisation(name, _RECIPE.get(job.condition, ()))
    seed = job.seed if job.init_seed is None else job.init_seed
    torch.manual_seed(seed)
    model = build_model(
        name, in_channels=split.in_channels, num_classes=split.num_classes, image_size=job.size, **{**kw, **extra}
    )
    fit_kw: dict[str, Any] = {
        "epochs": job.epochs,
        "optimizer": job.optimizer,
        "lr": SGD_LR if job.optimizer == "sgd" else LR,
        "batch_size": BATCH_SIZE,
        "seed": seed,
        "probe_size": job.probe_size,
        "weight_decay": weight_decay,
        "penalty": SparsityPenalty(model, weight=PENALTY_WEIGHT) if job.condition == "penalty" else None,
    }
    if job.optimizer == "sgd":
        fit_kw["momentum"] = 0.0
    return split, model, fit_kw


def train_job(job: Job, root: str) -> dict[str, Any]:
    """Train one job and write its run directory under ``root/runs``; skipped when already finished."""
    import warnings

    import torch

    from xaisparse._io import atomic_write_text
    from xaisparse.stopping import LabelFreeSignals
    from xaisparse.train import fit

    torch.set_num_threads(1)
    # VGG's last stage has 1×1 maps at 16×16 input: known, recorded as NaN, excluded by the detectors (§5)
    warnings.filterwarnings("ignore", message="spatial maps of size 1")
    path = run_dir(Path(root), job)
    if is_finished(path):
        return {"name": job.name, "skipped": True, "seconds": 0.0}
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    atomic_write_text(path / OWNER, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    started = time.time()
    split, model, fit_kw = build(job)
    callbacks = []
    if job.signals != "none":
        # seeded by the data seed, so a twin predicts the same unlabelled test inputs as its partner
        only_predict = job.signals == "predict"
        signals = LabelFreeSignals(
            split.train,
            split.test,
            seed=job.seed,
            predict_size=job.probe_size,
            gradients=not only_predict,
            spectra=not only_predict,
        )
        callbacks.append(signals)
    config = {"name": job.name, "study": {**job.settings(), "split": job.split, "started": started}, "data": split.info}
    history = fit(model, split.train, split.test, progress=False, config=config, callbacks=callbacks, **fit_kw)
    finished = time.time()
    load1 = float(open("/proc/loadavg").read().split()[0]) if os.path.exists("/proc/loadavg") else float("nan")
    history.config["study"].update(finished=finished, wall_seconds=finished - started, load1=load1)
    history.save(history_dir(path))
    if callbacks:
        callbacks[0].save(signals_dir(path))
    info = {
        "name": job.name,
        "settings": job.settings(),
        "split": job.split,
        "started": started,
        "finished": finished,
        "wall_seconds": finished - started,
        "load1": load1,
        "phase_seconds": history.outcome.phase_seconds,
    }
    atomic_write_text(path / DONE, json.dumps(info, indent=1))
    (path / OWNER).unlink(missing_ok=True)
    return {"name": job.name, "skipped": False, "seconds": finished - started}


def load_history(root: Path, name: str) -> Any:
    """The History of a finished run (through ``History.load`` only)."""
    from xaisparse.history import History

    return History.load(history_dir(Path(root) / "runs" / name))
