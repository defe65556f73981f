"""The runs of study v2 (studies/PROTOCOL.md §2–4) and how one of them is trained.

A :class:`Job` is one training run: dataset × seed × architecture × regime × condition.
:func:`jobs` lists the pre-registered grid (parts A, R, T) or the ``--quick`` version of
it; :func:`train_job` trains one job in a worker process and saves its History atomically
(``History.save`` writes a temporary directory and renames it into place), so a run directory
holding ``history.json`` is a finished run and anything else is not.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

#: name -> (build_model name, keyword arguments): the three architectures (§3).
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
CONDITIONS = ("baseline", "penalty", "dropout", "batch_norm", "weight_decay")
DROPOUT = {"small_cnn": 0.3, "vgg_small": 0.5}
WEIGHT_DECAY = 5e-4
PENALTY_WEIGHT = 0.1
#: the architectures and regime of part R (ResNet has BN built in and no dropout slot).
R_ARCHS = ("small_cnn", "vgg_small")
R_REGIME = "noise20"

TUNING_SEEDS = tuple(range(5))  # digits only (§4)
HELD_OUT_SEEDS = {"digits": tuple(range(5, 15))}  # any other dataset: seeds 0–9
OTHER_SEEDS = tuple(range(10))

LR, BATCH_SIZE, PROBE_SIZE = 2e-3, 32, 512


@dataclass(frozen=True)
class Job:
    """One training run of the study."""

    dataset: str
    seed: int
    arch: str
    regime: str
    condition: str
    part: str  # "A", "R" or "T"
    epochs: int
    size: int = 16
    train_subset: int = 300
    probe_size: int = PROBE_SIZE
    data_root: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.regime}-{self.arch}-{self.condition}-s{self.seed}"

    @property
    def split(self) -> str:
        """``tuning`` (digits seeds 0–4) or ``held_out``."""
        return "tuning" if self.part == "T" else "held_out"

    def settings(self) -> dict[str, Any]:
        """What must match for a saved run to count as this job (resuming checks it)."""
        out = asdict(self)
        out.pop("extra")
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
    """The grid, in the order it is run: part A seed-major, then R, then T (§4's cut order).

    ``quick``: the same grid on 2 held-out seeds per dataset and 1 tuning seed, 8 epochs,
    100 training images and 200-image probes — minutes instead of hours, the same code.
    """
    unknown = sorted(set(archs) - set(ARCHS))
    if unknown:
        raise ValueError(f"unknown architecture(s) {unknown}; valid: {list(ARCHS)}")
    sizes: dict[str, Any] = {"size": size, "data_root": data_root}
    if quick:
        sizes.update(train_subset=100, probe_size=200)

    def epochs(arch: str) -> int:
        return 8 if quick else EPOCHS[arch]

    def seeds(dataset: str) -> tuple[int, ...]:
        s = held_out_seeds(dataset)
        return s[:2] if quick else s

    out: list[Job] = []
    if "A" in parts:
        for dataset in datasets:
            for seed in seeds(dataset):
                for arch in archs:
                    for regime in REGIMES:
                        out.append(Job(dataset, seed, arch, regime, "baseline", "A", epochs(arch), **sizes))
    if "R" in parts:
        for condition in CONDITIONS[1:]:
            for dataset in datasets:
                for seed in seeds(dataset):
                    for arch in (a for a in R_ARCHS if a in archs):
                        out.append(Job(dataset, seed, arch, R_REGIME, condition, "R", epochs(arch), **sizes))
    if "T" in parts and "digits" in datasets:
        for seed in TUNING_SEEDS[:1] if quick else TUNING_SEEDS:
            for arch in archs:
                for regime in REGIMES:
                    out.append(Job("digits", seed, arch, regime, "baseline", "T", epochs(arch), **sizes))
    return out


def run_dir(root: Path, job: Job) -> Path:
    return root / "runs" / job.name


def is_finished(path: Path) -> bool:
    """A run directory written completely by ``History.save`` (the manifest is written last, then renamed)."""
    return (path / "history.json").is_file()


def clean_partial(root: Path) -> list[str]:
    """Remove what a killed study left: temporary save directories (``.<name>.tmp-*``, ``.<name>.old-*``)."""
    runs = root / "runs"
    removed = []
    if runs.is_dir():
        for p in runs.iterdir():
            if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    return removed


def build(job: Job) -> tuple[Any, Any, Any]:
    """The data split, the model and fit's keyword arguments of one job (seeded as in §3)."""
    import torch

    from xaisparse.data import load_dataset
    from xaisparse.models import build_model
    from xaisparse.penalty import SparsityPenalty

    regime = dict(REGIMES[job.regime], train_subset=job.train_subset)
    root = {} if job.data_root is None else {"root": job.data_root}
    split = load_dataset(job.dataset, size=job.size, seed=job.seed, **root, **regime)
    name, kw = ARCHS[job.arch]
    kw = dict(kw)
    if job.condition == "dropout":
        kw["dropout"] = DROPOUT[job.arch]
    if job.condition == "batch_norm":
        kw["batch_norm"] = True
    torch.manual_seed(job.seed)
    model = build_model(name, in_channels=split.in_channels, num_classes=split.num_classes, image_size=job.size, **kw)
    fit_kw: dict[str, Any] = {
        "epochs": job.epochs,
        "optimizer": "adam",
        "lr": LR,
        "batch_size": BATCH_SIZE,
        "seed": job.seed,
        "probe_size": job.probe_size,
        "weight_decay": WEIGHT_DECAY if job.condition == "weight_decay" else 0.0,
        "penalty": SparsityPenalty(model, weight=PENALTY_WEIGHT) if job.condition == "penalty" else None,
    }
    return split, model, fit_kw


def train_job(job: Job, root: str) -> dict[str, Any]:
    """Train one job and save it under ``root/runs``; skipped when already finished. Runs in a worker."""
    import warnings

    import torch

    from xaisparse.train import fit

    torch.set_num_threads(1)
    # VGG's last stage has 1×1 maps at 16×16 input: known, recorded as NaN, excluded by the detectors (§5)
    warnings.filterwarnings("ignore", message="spatial maps of size 1")
    path = run_dir(Path(root), job)
    if is_finished(path):
        return {"name": job.name, "skipped": True, "seconds": 0.0}
    started = time.time()
    split, model, fit_kw = build(job)
    config = {
        "name": job.name,
        "study": {**job.settings(), "split": job.split, "started": started},
        "data": split.info,
    }
    history = fit(model, split.train, split.test, progress=False, config=config, **fit_kw)
    finished = time.time()
    load1 = float(open("/proc/loadavg").read().split()[0]) if os.path.exists("/proc/loadavg") else float("nan")
    history.config["study"].update(finished=finished, wall_seconds=finished - started, load1=load1)
    history.save(path)
    return {"name": job.name, "skipped": False, "seconds": finished - started}
