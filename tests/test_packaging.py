"""Packaging facts a fresh machine relies on."""

import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch", "matplotlib-base": "matplotlib", "python-fastjsonschema": "fastjsonschema"}


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


def test_recording_a_model_loads_nothing_heavy_beyond_torch():
    """Start-up cost: measuring and penalising a model imports nothing that ``import torch`` did not.

    ``torch._dynamo`` (loaded by ``torch.compiler.disable``, slower to import than torch itself)
    comes in only when the user compiles a model; pandas only when tables are built
    (``monitor.compute()``); matplotlib, scipy and ipywidgets only with plots, attributions and widgets.
    """
    code = (
        "import sys, torch\n"
        "import torch.nn.functional as F\n"
        "from torch import nn\n"
        "from xaisparse import ActivationRecorder, SparsityMonitor, SparsityPenalty\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.c1, self.c2 = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)\n"
        "    def forward(self, x):\n"
        "        return F.relu(self.c2(F.relu(self.c1(x)))).mean()\n"  # functional: traced with torch.fx
        "torch.manual_seed(0)\n"
        "net = Net()\n"
        "monitor, penalty = SparsityMonitor(net), SparsityPenalty(net)\n"
        "with monitor.track('test'), penalty:\n"
        "    (net(torch.randn(2, 1, 8, 8)) + penalty()).backward()\n"
        "assert monitor.layer_names == ['relu', 'relu#2'], monitor.layer_names\n"
        "heavy = ('torch._dynamo', 'pandas', 'matplotlib', 'scipy', 'ipywidgets', 'captum', 'torchvision')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
