"""The command line's error path: one line ``xaisparse: error: ...`` and exit status 2 for every error
the library raises on purpose (tracebacks with ``--debug``), unexpected exceptions untouched; and
``fit`` naming an empty split. Each case of issue 17 runs through ``xaisparse.cli.main`` and through
the installed ``xaisparse`` script."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tests.test_data import write_cifar10
from xaisparse import DeviceUnavailableError, HistoryFormatError
from xaisparse.cli import main
from xaisparse.data import DatasetIntegrityError
from xaisparse.testing import synthetic_history
from xaisparse.train import fit

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--epochs", "1", "--train-subset", "20", "--probe-size", "16", "--width", "2", "--no-progress"]
# The md5 sums torchvision checks CIFAR-10 against, replaced by those of the test's files (in the
# script's process too, through a sitecustomize on its path), as tests/test_data.py does in-process.
SITECUSTOMIZE = """
import json, os
import torchvision.datasets as tvd
sums = json.loads(open(os.environ["XAISPARSE_TEST_CIFAR10_MD5"]).read())
tvd.CIFAR10.train_list, tvd.CIFAR10.test_list, tvd.CIFAR10.meta = sums["train_list"], sums["test_list"], sums["meta"]
"""


def _cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, empty_train: bool = False) -> Path:
    """CIFAR-10 files under ``root`` with their md5 sums in force (here and, via ``_script``, in the
    script); ``empty_train``: five training batches of no images."""
    write_cifar10(root, monkeypatch, per_batch=4)
    base = root / "cifar-10-batches-py"
    if empty_train:
        for i in range(1, 6):
            with open(base / f"data_batch_{i}", "wb") as f:
                batch = {"batch_label": "empty", "data": np.zeros((0, 3072), np.uint8), "labels": [], "filenames": []}
                pickle.dump(batch, f, protocol=2)

    def md5(name: str) -> str:
        return hashlib.md5((base / name).read_bytes()).hexdigest()

    sums = {
        "train_list": [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)],
        "test_list": [["test_batch", md5("test_batch")]],
        "meta": {"filename": "batches.meta", "key": "label_names", "md5": md5("batches.meta")},
    }
    monkeypatch.setattr(tvd.CIFAR10, "train_list", sums["train_list"])
    monkeypatch.setattr(tvd.CIFAR10, "test_list", sums["test_list"])
    monkeypatch.setattr(tvd.CIFAR10, "meta", sums["meta"])
    (root / "md5.json").write_text(json.dumps(sums))
    return root


def _truncated_cifar10(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    root = _cifar10(tmp / "cifar", monkeypatch)
    batch = root / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:1000])  # a download cut short
    return ["run", "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp / "out"), *QUICK]


def _no_such_cuda(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    # "cuda" where there is no CUDA; one past the last GPU where there is
    device = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    return ["run", "--device", device, "--out", str(tmp / "out"), *QUICK]


def _damaged_run(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    run = tmp / "run"
    synthetic_history(epochs=3, seed=1).save(run / "history")
    manifest = run / "history" / "history.json"
    manifest.write_text(manifest.read_text().replace('"layer"', '"layeR"', 1))  # the edit of issue 17
    return ["report", str(run)]


def _empty_train_split(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    root = _cifar10(tmp / "cifar", monkeypatch, empty_train=True)
    return ["run", "--dataset", "cifar10", "--data-root", str(root), "--out", str(tmp / "out"), "--epochs", "1"]


CASES = {
    "truncated CIFAR-10 files": (
        _truncated_cifar10,
        DatasetIntegrityError,
        r"torchvision\.datasets\.CIFAR10 rejected the files of CIFAR-10 under '.*cifar' \(train split\).*truncated",
    ),
    "--device cuda without CUDA": (
        _no_such_cuda,
        DeviceUnavailableError,
        r"device='cuda(:\d+)?' was requested but this machine has \d+ CUDA device\(s\).*use device='cpu'",
    ),
    "report on a damaged run": (
        _damaged_run,
        HistoryFormatError,
        r"run/history/history\.json is not a valid xaisparse history manifest: its SHA-256 does not match",
    ),
    # through the command line an empty training set stops at --train-subset (default 300); fit's
    # own check (the split named) is tested below, where fit gets the empty set itself
    "an empty training set": (
        _empty_train_split,
        ValueError,
        r"train_subset must be <= the number of training samples of CIFAR-10 \(0\), got 300",
    ),
}


def _one_error_line(stderr: str, pattern: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("xaisparse: error: ") and "Traceback" not in stderr, stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("case", list(CASES))
def test_main_prints_one_line_and_returns_2(case, tmp_path, monkeypatch, capsys):
    make, error, pattern = CASES[case]
    argv = make(tmp_path, monkeypatch)
    assert main(argv) == 2
    _one_error_line(capsys.readouterr().err, pattern)
    with pytest.raises(error, match=pattern):  # --debug: the exception itself, with its traceback
        main(["--debug", *argv])


def _script(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """The installed ``xaisparse`` console script, importing this checkout."""
    script = Path(sys.executable).with_name("xaisparse")
    if not script.is_file():
        pytest.skip(f"no installed xaisparse script beside {sys.executable} (pip install -e .)")
    patch = tmp / "sitecustomize"
    patch.mkdir(exist_ok=True)
    (patch / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XAISPARSE_TEST")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *([str(patch)] if (tmp / "cifar" / "md5.json").is_file() else [])])
    if (tmp / "cifar" / "md5.json").is_file():
        env["XAISPARSE_TEST_CIFAR10_MD5"] = str(tmp / "cifar" / "md5.json")
    return subprocess.run([str(script), *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("case", list(CASES))
def test_the_installed_script_prints_one_line_and_exits_2(case, tmp_path, monkeypatch):
    make, _, pattern = CASES[case]
    argv = make(tmp_path, monkeypatch)
    out = _script(argv, tmp_path)
    assert out.returncode == 2, out.stderr
    _one_error_line(out.stderr, pattern)
    if case == "report on a damaged run":  # --debug, before or after the command: the traceback
        for debug in (["--debug", *argv], [argv[0], "--debug", *argv[1:]]):
            out = _script(debug, tmp_path)
            assert out.returncode == 1 and "Traceback" in out.stderr, out.stderr
            assert "xaisparse._errors.HistoryFormatError: " in out.stderr.splitlines()[-1]


def test_unexpected_exceptions_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import xaisparse.cli as cli

    def broken(args):
        raise KeyError("a bug")

    monkeypatch.setattr(cli, "cmd_report", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["report", str(tmp_path)])
    assert capsys.readouterr().err == ""


def test_usage_errors_stay_argparses_and_compare_needs_two_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--epochs", "many"])
    assert exit_.value.code == 2 and "invalid int value: 'many'" in capsys.readouterr().err
    run = synthetic_history(epochs=2).save(tmp_path / "a")
    assert main(["compare", str(run)]) == 2
    assert capsys.readouterr().err.strip() == "xaisparse: error: compare needs at least two run directories, got 1"


# ---------------------------------------------------------------------------- fit
def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(n)
    return TensorDataset(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


def test_fit_names_the_empty_split_and_the_missing_device():
    with pytest.raises(ValueError, match="the train split is empty: fit\\(\\) got a TensorDataset with 0 samples"):
        fit(_net(), _data(0), _data(8), epochs=1, progress=False)
    with pytest.raises(ValueError, match="the train split is empty"):
        fit(_net(), DataLoader(_data(0), batch_size=4), _data(8), epochs=1, progress=False)
    with pytest.raises(ValueError, match="the test split is empty.*test=None to train without a test split"):
        fit(_net(), _data(8), _data(0), epochs=1, progress=False)
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda', 'cuda:N' or a torch.device, got 'gpu'"):
        fit(_net(), _data(8), epochs=1, progress=False, device="gpu")
    missing = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"
    with pytest.raises(DeviceUnavailableError, match=f"device='{missing}' was requested") as err:
        fit(_net(), _data(8), epochs=1, progress=False, device=missing)
    assert isinstance(err.value, RuntimeError)  # what fit raised before: existing handlers still catch it
