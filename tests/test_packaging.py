"""Packaging facts a fresh machine relies on."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib"}


def _name(spec: str) -> str:
    return re.split(r"[<>=!~ \[]", spec.strip(), maxsplit=1)[0].lower()


def test_environment_yml_agrees_with_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = {_name(s) for s in project["dependencies"]}
    for extra in project["optional-dependencies"].values():
        pypi |= {_name(s) for s in extra}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {CONDA_TO_PYPI.get(_name(d), _name(d)) for d in env["dependencies"] if isinstance(d, str)}
    conda -= {"python", "pip"}
    assert conda == pypi, f"only in environment.yml: {sorted(conda - pypi)}; only in pyproject: {sorted(pypi - conda)}"


def test_lock_pins_a_matching_torch_torchvision_pair():
    lock = (ROOT / "requirements.lock").read_text()
    torch_v = re.search(r"^torch==(\d+)\.(\d+)", lock, re.M)
    tv_v = re.search(r"^torchvision==0\.(\d+)", lock, re.M)
    assert torch_v and tv_v, "requirements.lock must pin torch and torchvision exactly"
    # torchvision 0.N is released with torch 2.(N-15)
    assert int(tv_v.group(1)) - 15 == int(torch_v.group(2)), (torch_v.group(0), tv_v.group(0))


def test_torchvision_ops_import_and_run():
    import torch
    from torchvision.ops import nms

    keep = nms(torch.tensor([[0, 0, 10, 10.0], [1, 1, 11, 11], [50, 50, 60, 60]]), torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert keep.tolist() == [0, 2]


def test_import_xaisparse_stays_light():
    code = (
        "import sys, xaisparse\n"
        "from xaisparse import SparsityMonitor, SparsityPenalty, perplexity_sparsity\n"
        "heavy = [m for m in ('ipywidgets', 'matplotlib', 'seaborn') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
