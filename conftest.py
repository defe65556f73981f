"""Fixtures shared by every test module (pytest runs with ``--import-mode=importlib``).

Determinism: every test, doctest included, starts from generators seeded from its own node id
(:func:`_seeded_generators`), so no test depends on what another test drew before it, on the
order the tests run in or on the xdist worker it lands in; it also gets back the torch settings
a test may change (threads, default dtype, grad mode) and matplotlib's rcParams. Hypothesis runs derandomised and without
its example database (the same examples on every machine and run). pytest-randomly, when
installed (the ``dev`` extra), shuffles the order of modules and tests on every run — the
order-independence check of ``make test``; rerun an order with ``-p randomly --randomly-seed=N``
(printed in the header), or keep the file order with ``-p no:randomly``.
"""

from __future__ import annotations

import os
import random
import zlib
from collections.abc import Iterator
from typing import Any

import pytest

try:
    from hypothesis import settings as _hypothesis_settings
except ImportError:  # pragma: no cover - hypothesis is in the dev extra
    pass
else:
    _hypothesis_settings.register_profile("deterministic", derandomize=True, database=None, deadline=None)
    _hypothesis_settings.register_profile("explore", deadline=None)  # fresh random examples each run
    _hypothesis_settings.load_profile(os.environ.get("XAISPARSE_HYPOTHESIS_PROFILE", "deterministic"))


def pytest_configure(config: pytest.Config) -> None:
    # pytest-randomly would reseed `random` and NumPy to its per-run seed before every test
    # call, which changes with every run; the seeds here come from each test's own node id.
    if hasattr(config.option, "randomly_reset_seed"):
        config.option.randomly_reset_seed = False


def _group_suffix(item: pytest.Item) -> str:
    """``@name`` of the item's ``xdist_group`` marks, as pytest-xdist's ``--dist loadgroup`` spells it."""
    names = {str(m.args[0] if m.args else m.kwargs.get("name", "default")) for m in item.iter_markers("xdist_group")}
    return "@" + "_".join(sorted(names)) if names else ""


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep ``--dist loadgroup`` grouping (``make test``) working on pytest 9.2.

    pytest-xdist 3.8 tells its scheduler an item's group by appending ``@group`` to
    ``item._nodeid``, which pytest 9.2 no longer reads (node ids are structured there:
    pytest-dev/pytest-xdist#1386). The groups are then silently ignored: each worker builds the
    docs site and starts JupyterLab for itself. This does what xdist meant, on the structured id;
    with an xdist that does it itself (the id already ends in the suffix) it does nothing.
    """
    if not getattr(config.option, "loadgroup", False):  # set in xdist's workers under --dist loadgroup
        return
    for item in items:
        suffix = _group_suffix(item)
        if suffix and not item.nodeid.endswith(suffix) and hasattr(item, "_id"):
            from _pytest.nodeid import NodeId

            item._id = NodeId.parse(item.nodeid + suffix)


def node_seed(item: pytest.Item) -> int:
    """A seed that depends only on the test's node id (the same on every machine, order and worker)."""
    nodeid, suffix = item.nodeid, _group_suffix(item)
    if suffix and nodeid.endswith(suffix):  # the same seed with and without xdist
        nodeid = nodeid[: -len(suffix)]
    return zlib.crc32(nodeid.encode("utf-8"))


@pytest.fixture(autouse=True)
def _seeded_generators(request: pytest.FixtureRequest) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators for this test; restore torch and matplotlib settings after."""
    import matplotlib
    import numpy as np
    import torch

    seed = node_seed(request.node)
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - seeding the legacy global stream is the point
    torch.manual_seed(seed)
    threads, dtype, grad = torch.get_num_threads(), torch.get_default_dtype(), torch.is_grad_enabled()
    with matplotlib.rc_context():  # a theme one test sets (seaborn.set_theme) does not reach the next
        matplotlib.rcdefaults()  # nor one a module or session fixture set before this test
        yield
    torch.set_num_threads(threads)
    torch.set_default_dtype(dtype)
    torch.set_grad_enabled(grad)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny tensors on shared CPU cores: intra-op threads only add contention."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def resnet() -> Any:
    """torchvision's ResNet-18 (10 classes, seeded weights) in eval mode: reused ReLUs, 1x1 maps at CIFAR size."""
    import torch
    from torchvision.models import resnet18

    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()
