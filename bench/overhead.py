#!/usr/bin/env python
"""Overhead of xaisparse's monitor and penalty, measured side by side with plain PyTorch and peers.

Prints RATIOS measured in one run (no absolute timing is asserted anywhere):

(a) ``SparsityMonitor.track("train")`` on a training step (forward + backward + SGD step)
    against the same step without hooks;                           target ours/plain <= 1.10
(b) the monitor on an evaluation pass (``no_grad`` forward);       target ours/plain <= 1.25
    (small CNN), <= 1.10 (ResNet-18); (b') the same with ``LayerSparsity(compile=True)``
(c) ``loss + SparsityPenalty()`` on a training step;               target ours/plain <= 1.25
    (small CNN), <= 1.05 (ResNet-18)
(d) the monitor's eval pass against a typical research-code reference (forward hooks,
    ``.detach().cpu().numpy()``, ``scipy.stats.entropy`` per channel);
                                                                    target reference/ours >= 10
    (d') the same, counting only the time each adds above the plain forward (information);
    plus a sanity line: both give the same mean sparsity on one batch;
(e) memory after 2 x DEFER_BATCHES + 16 and after N batches of monitored evaluation (small
    CNN): RSS growth (torch's CPU allocations are invisible to tracemalloc) and tracemalloc
    growth, against the size of one batch's recorded activations;  target: flat;
(f) ``LayerSparsity.update`` (every statistic of one batch, the fold amortised) against one
    ``log`` pass over the same tensor (``x.sum()`` and ``x.amax()`` beside it);
                                                                    target update/log <= 1.5, compiled <= 1.2
(g) the time the monitor adds to an eval pass against a hand-written torch hook that computes
    only the mean sparsity;                                         target hook/ours >= 1
(i) ``fit`` with a penalty in the demo setting, ``train_statistics="probe"`` vs ``"training"``
    (the train split's sparsity from the training forwards): the time per epoch each phase takes;
and a peers table: plain, ours, NumPy/SciPy hooks (per channel, vectorised), the torch hook,
Captum ``LayerActivation`` + post-hoc computation, TorchLens, each with its agreement with ours;
and the op-count table (``opcount.py``): top-level ``aten::`` operators (and on CUDA kernels)
per call site of the monitor, the penalty and both, and per ``LayerSparsity.update``, on
ResNet-18 at batch 8 (what a GPU pays per launch, counted on any device); targets: monitor
<= 6 per call site and batch, penalty <= 20 per call site and step, compiled update <= 2 kernels.

Method: the variants of a comparison are interleaved (their order rotated every repeat)
after a warm-up; each sample times a block of a few steps; the table gives medians and the
interquartile range of the per-repeat ratios, because the machine may be shared.

    python bench/overhead.py                 # full run (about 15 min on 2 busy CPU cores)
    python bench/overhead.py --quick         # short run (the smoke test uses it); no compile
    python bench/overhead.py --device cuda   # GPU: synchronised timings, CUDA memory stats
    python bench/overhead.py --omp-passive   # OMP_WAIT_POLICY=PASSIVE (busy shared machine)
    python bench/overhead.py --malloc-stable # glibc keeps freed blocks (no page faults per batch)
    python bench/overhead.py --clock cpu     # process CPU time instead of wall time (CPU only)
    python bench/overhead.py --device cuda --models resnet18,resnet50 --amp bf16 --sync-check
"""

from __future__ import annotations

import os
import sys

# Must happen before torch loads its OpenMP runtime. Spinning OpenMP workers on a machine
# whose cores are busy with other processes inflate every parallel op, and thereby the ratios.
if "--omp-passive" in sys.argv[1:]:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


import argparse
import contextlib
import ctypes
import ctypes.util
import gc
import platform
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import scipy
import scipy.stats
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

# Measure the working tree this script lives in (also without an install, and with an editable
# install whose finder resolves ``xaisparse`` to a namespace package when run from bench/).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import xaisparse
from xaisparse.estimators import LayerSparsity
from xaisparse.estimators.layer import DEFER_BATCHES
from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.recording import ActivationRecorder, call_site_base

sys.path.insert(0, str(Path(__file__).resolve().parent))
import opcount  # bench/opcount.py
import peers  # bench/peers.py, next to this script


def _malloc_stable() -> str:
    """Make glibc keep freed memory for reuse: a fixed 32 MiB mmap threshold, no trimming.

    By default glibc serves a large allocation (an activation-sized buffer) by ``mmap`` and
    returns it to the OS on free, or trims the top of the heap; the next batch then pays a page
    fault per 4 KiB page of its fresh buffers, often more than the arithmetic on them. With
    ``M_MMAP_THRESHOLD`` fixed at 32 MiB and ``M_TRIM_THRESHOLD`` at 1 GiB, freed blocks stay in
    the heap and are reused, so per-batch timings measure compute, not the kernel's page
    zeroing. Equivalent to ``MALLOC_MMAP_THRESHOLD_=33554432 MALLOC_TRIM_THRESHOLD_=1073741824``.
    """
    name = ctypes.util.find_library("c")
    if not name:
        return "malloc-stable: no C library found, left as is"
    libc = ctypes.CDLL(name)
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) == 1 and libc.mallopt(m_trim_threshold, 1 << 30) == 1
    return "malloc-stable: M_MMAP_THRESHOLD=32 MiB, M_TRIM_THRESHOLD=1 GiB" + ("" if ok else " (mallopt refused)")


# Early, before the benchmark allocates anything large (mallopt applies to later allocations).
MALLOC_MODE = _malloc_stable() if "--malloc-stable" in sys.argv[1:] else "malloc: glibc defaults"

SANITY_TOL = 1e-5
TABLE_HEADER = "| case | model | plain ms/step | ours ms/step | ratio | spread (IQR) | target | result |"


# -- models ------------------------------------------------------------------------------------
class BenchCNN(nn.Module):
    """Three conv blocks (32/64/128 channels, ReLU, 2×2 max-pool) and a linear head."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, size: int = 16) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = in_channels
        for c_out in (32, 64, 128):
            blocks += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Linear(128 * (size // 8) ** 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


def cifar_resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem: 3×3 stride-1 conv1, no max-pool."""
    model = torchvision.models.resnet18(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@dataclass
class Setup:
    name: str
    build: Callable[[], nn.Module]
    input_shape: tuple[int, ...]  # (batch, C, H, W)
    inner: int  # steps per timed block
    warmup: int  # untimed rounds first (a round = one block of every variant)
    min_repeats: int  # timed rounds: as many as fit in budget_s, within [min_repeats, max_repeats]
    max_repeats: int
    budget_s: float  # per comparison (train: plain/monitor/penalty; eval: plain/monitor/hook/reference)
    eval_limit: float = 1.10  # target of (b): ours/plain on an eval pass
    penalty_limit: float = 1.05  # target of (c): ours/plain on a training step


def cifar_resnet50(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-50 with the CIFAR stem (GPU runs: ~50 call sites)."""
    model = torchvision.models.resnet50(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def setups(quick: bool, cuda: bool = False) -> dict[str, Setup]:
    if quick:  # a smoke run: every code path, few repeats, a smaller ResNet batch
        return {
            "small_cnn": Setup("SmallCNN", BenchCNN, (64, 1, 16, 16), 2, 1, 3, 4, 2.0, 1.25, 1.25),
            "resnet18": Setup("ResNet-18", cifar_resnet18, (4, 3, 32, 32), 1, 1, 2, 2, 2.0, 1.10, 1.05),
            "resnet50": Setup("ResNet-50", cifar_resnet50, (4, 3, 32, 32), 1, 1, 2, 2, 2.0, 1.10, 1.05),
        }
    if cuda:  # a GPU's batch: the per-launch cost against real work
        return {
            "small_cnn": Setup("SmallCNN", BenchCNN, (256, 1, 16, 16), 10, 3, 10, 60, 20.0, 1.25, 1.25),
            "resnet18": Setup("ResNet-18", cifar_resnet18, (256, 3, 32, 32), 5, 3, 10, 60, 30.0, 1.10, 1.05),
            "resnet50": Setup("ResNet-50", cifar_resnet50, (256, 3, 32, 32), 3, 3, 10, 60, 30.0, 1.10, 1.05),
        }
    return {
        "small_cnn": Setup("SmallCNN", BenchCNN, (64, 1, 16, 16), 4, 2, 8, 60, 35.0, 1.25, 1.25),
        "resnet18": Setup("ResNet-18", cifar_resnet18, (32, 3, 32, 32), 1, 2, 5, 15, 50.0, 1.10, 1.05),
        "resnet50": Setup("ResNet-50", cifar_resnet50, (8, 3, 32, 32), 1, 2, 5, 15, 50.0, 1.10, 1.05),
    }


def peer_setup(setup: Setup, quick: bool) -> Setup:
    """The peers table: one step per block (TorchLens and SciPy per channel take seconds a step)."""
    return Setup(
        setup.name, setup.build, setup.input_shape, 1, 1, 2 if quick else 3, 3 if quick else 10, 2.0 if quick else 60.0
    )


#: The timer: wall time (default), or the process' CPU time (``--clock cpu``: robust to other
#: processes on a shared machine, but blind to time spent waiting, e.g. for a GPU).
CLOCK: Callable[[], float] = time.perf_counter


# -- timing ------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    variants: dict[str, Callable[[int], None]], setup: Setup, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per step of each variant: rounds of one ``setup.inner``-step block per variant.

    After ``setup.warmup`` untimed rounds, as many timed rounds as fit in ``setup.budget_s``
    (judged from the last warm-up round), clipped to ``[min_repeats, max_repeats]``; the order of
    the variants rotates (and reverses every other cycle) from round to round.
    """
    names, inner = list(variants), setup.inner
    round_s = 0.0
    for _ in range(max(setup.warmup, 1)):
        t0 = time.perf_counter()  # the budget is wall time whatever the clock
        for name in names:
            variants[name](inner)
        _sync(device)
        round_s = time.perf_counter() - t0
    repeats = int(min(setup.max_repeats, max(setup.min_repeats, setup.budget_s // max(round_s, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names)
        order = names[k:] + names[:k]
        if (r // len(names)) % 2:
            order = order[::-1]
        for name in order:
            _sync(device)
            t0 = CLOCK()
            variants[name](inner)
            _sync(device)
            times[name].append((CLOCK() - t0) / inner)
    return times


@dataclass
class Row:
    case: str
    model: str
    base: str  # baseline cell: plain, or the reference for (d)
    ours: str
    ratio: str
    spread: str
    target: str
    ok: bool | None  # None: information only


def ratio_row(case: str, model: str, base: list[float], ours: list[float], *, speedup: bool, limit: float) -> Row:
    """Ratio of the medians; spread = interquartile range of the per-repeat (paired) ratios."""
    mb, mo = statistics.median(base), statistics.median(ours)
    paired = [(b / o) if speedup else (o / b) for b, o in zip(base, ours)]
    lo, hi = np.percentile(np.asarray(paired), [25, 75])
    ratio = mb / mo if speedup else mo / mb
    ok = ratio >= limit if speedup else ratio <= limit
    target = f">= {limit:g}x" if speedup else f"<= {limit:.2f}x"
    return Row(case, model, f"{mb * 1e3:.2f}", f"{mo * 1e3:.2f}", f"{ratio:.2f}x", f"[{lo:.2f}, {hi:.2f}]", target, ok)


# -- memory (case e) ---------------------------------------------------------------------------
def _proc_status_bytes(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return float(line.split()[1]) * 1024  # kB
    return float("nan")


@dataclass
class MemPoint:
    rss: float  # bytes: VmRSS (CUDA: memory_allocated)
    hwm: float  # bytes: VmHWM (CUDA: max_memory_allocated)
    py: float  # tracemalloc current


def mem_point(device: torch.device) -> MemPoint:
    gc.collect()
    py = float(tracemalloc.get_traced_memory()[0]) if tracemalloc.is_tracing() else float("nan")
    if device.type == "cuda":
        _sync(device)
        return MemPoint(float(torch.cuda.memory_allocated(device)), float(torch.cuda.max_memory_allocated(device)), py)
    return MemPoint(_proc_status_bytes("VmRSS"), _proc_status_bytes("VmHWM"), py)


def memory_case(device: torch.device, quick: bool) -> tuple[list[Row], list[str]]:
    # From after the estimators' first two folds (each folds up to DEFER_BATCHES batches of deferred
    # per-map sums at once): by then their buffers have reached their size.
    first = 2 * DEFER_BATCHES + 16
    last = first + (56 if quick else 856)
    mid = (first + last) // 2
    checkpoints = (first, mid, last)
    batch = 32
    torch.manual_seed(1)
    model = BenchCNN().to(device).eval()
    inputs = torch.randn(8, batch, 1, 16, 16, device=device)
    monitor = SparsityMonitor(model)

    act_bytes = 0  # one batch's recorded activations

    def count(name: str, x: torch.Tensor) -> None:
        nonlocal act_bytes
        act_bytes += x.numel() * x.element_size()

    with ActivationRecorder(model, monitor.recorder.modules, callback=count), torch.no_grad():
        model(inputs[0])

    # Two passes per variant: RSS without tracemalloc (its own bookkeeping would show up in RSS),
    # then the Python heap with tracemalloc; the monitor sees both passes.
    points: dict[str, dict[int, MemPoint]] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # speed does not matter here, and one thread is quick on a busy machine
    try:
        for variant in ("plain", "ours"):
            points[variant] = {}
            for traced in (False, True):
                gc.collect()
                if traced:
                    tracemalloc.start()
                ctx = monitor.track("test") if variant == "ours" else contextlib.nullcontext()
                with ctx, torch.no_grad():
                    for i in range(1, last + 1):
                        model(inputs[i % len(inputs)])
                        if i in checkpoints:
                            p = mem_point(device)
                            if traced:
                                points[variant][i].py = p.py
                            else:
                                points[variant][i] = p
                if traced:
                    tracemalloc.stop()
    finally:
        torch.set_num_threads(threads)
    seen = int(monitor.compute().layers.query("statistic == 'samples'").value.iloc[0])
    if seen != 2 * last * batch:
        raise RuntimeError(f"the monitor saw {seen} samples, expected {2 * last * batch}")

    def growth(variant: str, attr: str, start: int = first) -> float:
        p = points[variant]
        return getattr(p[last], attr) - getattr(p[start], attr)

    mib = 2.0**20
    cuda = device.type == "cuda"
    rss, hwm = ("memory_allocated", "max_memory_allocated") if cuda else ("VmRSS", "VmHWM")
    lines = [
        f"memory: SmallCNN eval, batch {batch}, batch {first} -> {last} (1 CPU thread); one batch's recorded "
        f"activations {act_bytes / mib:.2f} MiB",
        f"| variant | {rss} @{first} (MiB) | {rss} growth {first}->{last} (MiB) | {rss} growth "
        f"{mid}->{last} (MiB) | {hwm} growth {first}->{last} (MiB) | {hwm} growth {mid}->{last} (MiB) "
        f"| tracemalloc growth (KiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in ("plain", "ours"):
        lines.append(
            f"| {v} | {points[v][first].rss / mib:.1f} | {growth(v, 'rss') / mib:+.2f} | "
            f"{growth(v, 'rss', mid) / mib:+.2f} | {growth(v, 'hwm') / mib:+.2f} | "
            f"{growth(v, 'hwm', mid) / mib:+.2f} | {growth(v, 'py') / 1024:+.1f} |"
        )
    # Flat: neither the resident set nor its peak grows from batch 10 to the end.
    frac = max(growth("ours", "rss"), growth("ours", "hwm"), 0.0) / act_bytes
    py_growth = growth("ours", "py")
    row = Row(
        f"(e) memory growth {first}->{last} batches (MiB)",
        "SmallCNN",
        f"{growth('plain', 'rss') / mib:+.2f}",
        f"{growth('ours', 'rss') / mib:+.2f}",
        f"{frac:.3f} batch",
        f"py {py_growth / 1024:+.1f} KiB",
        "<= 0.25 batch; py <= 64 KiB",
        frac <= 0.25 and py_growth <= 64 * 1024,
    )
    return [row], lines


# -- cases (a)-(d), (g) and the peers table ----------------------------------------------------
def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _agreement(peer: object, model: nn.Module, x: torch.Tensor, ours: SparsityMonitor) -> tuple[float, int]:
    """Max |mean sparsity peer - ours| over the modules, on one batch, fresh accumulators."""
    peers.peer_runner(peer)(1, x)
    got = peer.means()  # type: ignore[attr-defined]
    sites = ours.layer_names
    if getattr(peer, "calls", "all") == "last":  # one output per module: its last call
        sites = list({call_site_base(site): site for site in sites}.values())
    mine = peers.pooled_means((site, ours.estimator("test", site).compute()) for site in sites)
    if set(got) != set(mine):
        raise RuntimeError(f"layers differ: ours {sorted(mine)}, {type(peer).__name__} {sorted(got)}")
    return max(abs(got[k] - mine[k]) for k in mine), len(mine)


def _autocast(device: torch.device, amp: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    return torch.autocast(device.type, amp) if amp is not None else contextlib.nullcontext()


def run_model(
    setup: Setup,
    device: torch.device,
    *,
    quick: bool,
    use_compile: bool,
    peers_table: bool = True,
    amp: torch.dtype | None = None,
) -> tuple[list[Row], list[str], list[str]]:
    torch.manual_seed(0)
    model = setup.build().to(device)
    x = torch.randn(*setup.input_shape, device=device)
    y = torch.randint(0, 10, (setup.input_shape[0],), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor = SparsityMonitor(model)
    penalty = SparsityPenalty(model, weight=1e-2)
    layers = monitor.recorder.modules
    reference = peers.ScipyPerChannel(model, layers)
    hook = peers.TorchMeanHook(model, layers)
    compiled = peers.CompiledMonitor(model, layers) if use_compile else None

    def train_step(extra: Callable[[], torch.Tensor] | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = F.cross_entropy(model(x), y)
            if extra is not None:
                loss = loss + extra()
        loss.backward()
        opt.step()

    def plain_train(k: int) -> None:
        for _ in range(k):
            train_step()

    def monitor_train(k: int) -> None:
        with monitor.track("train"):
            for _ in range(k):
                train_step()

    def penalty_train(k: int) -> None:
        with penalty:
            for _ in range(k):
                train_step(penalty)

    def plain_eval(k: int) -> None:
        with torch.no_grad(), _autocast(device, amp):
            for _ in range(k):
                model(x)

    def monitor_eval(k: int) -> None:
        with monitor.track("test"), torch.no_grad(), _autocast(device, amp):
            for _ in range(k):
                model(x)

    # Sanity first, on fresh accumulators: the monitor and each peer measure the same thing.
    model.eval()
    check = SparsityMonitor(model)
    with check.track("test"), torch.no_grad():
        model(x)
    diff, n_layers = _agreement(peers.ScipyPerChannel(model, layers), model, x, check)
    notes = [
        f"sanity: max |mean sparsity ours - reference| = {diff:.2e} over {n_layers} layers of "
        f"{setup.name} (tolerance {SANITY_TOL:g}): {'OK' if diff <= SANITY_TOL else 'MISMATCH'}"
    ]
    if compiled is not None:  # compile before timing (the first batch of a new shape compiles)
        t0 = time.perf_counter()
        peers.peer_runner(compiled)(1, x)
        notes.append(f"{setup.name}: LayerSparsity(compile=True) compiled in {time.perf_counter() - t0:.0f} s")

    model.train()
    t = interleaved({"plain": plain_train, "monitor": monitor_train, "penalty": penalty_train}, setup, device)
    model.eval()
    variants: dict[str, Callable[[int], None]] = {
        "plain": plain_eval,
        "monitor": monitor_eval,
        "hook": partial(peers.peer_runner(hook), x=x),
        "reference": partial(peers.peer_runner(reference), x=x),
    }
    if compiled is not None:
        variants["compiled"] = partial(peers.peer_runner(compiled), x=x)
    e = interleaved(variants, setup, device)

    name = setup.name
    med = {k: statistics.median(v) for k, v in e.items()}
    added = {k: v - med["plain"] for k, v in med.items()}
    rows = [
        ratio_row("(a) monitor, train step", name, t["plain"], t["monitor"], speedup=False, limit=1.10),
        ratio_row("(b) monitor, eval pass", name, e["plain"], e["monitor"], speedup=False, limit=setup.eval_limit),
        ratio_row("(c) penalty, train step", name, t["plain"], t["penalty"], speedup=False, limit=setup.penalty_limit),
        ratio_row("(d) vs scipy reference, eval pass", name, e["reference"], e["monitor"], speedup=True, limit=10.0),
        _added_row("(d') vs scipy reference, time above plain eval", name, added["reference"], added["monitor"], None),
        _added_row("(g) vs torch mean-only hook, time above plain eval", name, added["hook"], added["monitor"], 1.0),
    ]
    if compiled is not None:
        rows.insert(
            2,
            ratio_row(
                "(b') monitor compiled, eval pass",
                name,
                e["plain"],
                e["compiled"],
                speedup=False,
                limit=setup.eval_limit,
            ),
        )
        rows.append(
            _added_row(
                "(g') compiled vs torch mean-only hook, above plain", name, added["hook"], added["compiled"], 1.0
            )
        )
    if device.type == "cpu":
        faults = {}
        for label, run in (("plain", plain_eval), ("monitor", monitor_eval)):
            f0 = _minor_faults()
            run(3)
            faults[label] = (_minor_faults() - f0) / 3
        notes.append(
            f"{name}: minor page faults per eval step: plain {faults['plain']:.0f}, monitor {faults['monitor']:.0f} "
            f"({MALLOC_MODE})"
        )
    notes.append(
        f"{name}: input {tuple(setup.input_shape)}, {len(layers)} hooked modules ({len(monitor.layer_names)} call "
        f"sites); {max(setup.warmup, 1)} warm-up + {len(t['plain'])} (train) / {len(e['plain'])} (eval) timed "
        f"rounds of {setup.inner} step(s) per variant"
    )
    return rows, notes, (peer_table(setup, model, x, compiled, device, quick) if peers_table else [])


def _added_row(case: str, model: str, theirs: float, ours: float, limit: float | None) -> Row:
    """Time each adds above the plain eval pass; ratio theirs/ours (a speed-up when > 1)."""
    ratio = theirs / ours if ours > 0 else float("inf")
    return Row(
        case,
        model,
        f"{theirs * 1e3:.2f}",
        f"{ours * 1e3:.2f}",
        f"{ratio:.2f}x" if ours > 0 else "n/a",
        "",
        "info" if limit is None else f">= {limit:g}x",
        None if limit is None else ratio >= limit,
    )


PEER_HEADER = (
    "| variant | model | ms/step | x plain | added ms/step | added / ours' added | agreement with ours "
    "(max abs diff, mean sparsity per module) |"
)


def peer_table(
    setup: Setup,
    model: nn.Module,
    x: torch.Tensor,
    compiled: peers.CompiledMonitor | None,
    device: torch.device,
    quick: bool,
) -> list[str]:
    """Rows of the peers table for one model: every peer interleaved with plain and ours."""
    model.eval()
    check = SparsityMonitor(model)  # one batch, the model's current weights: the agreement reference
    _monitor_eval(check, model, x, 1)
    layers = check.recorder.modules
    monitor = SparsityMonitor(model)
    variants: dict[str, Callable[[int], None]] = {
        "plain": lambda k: peers.peer_runner(_Plain(model))(k, x),
        "ours (SparsityMonitor, every statistic)": lambda k: _monitor_eval(monitor, model, x, k),
    }
    agreement: dict[str, str] = {"plain": "", "ours (SparsityMonitor, every statistic)": "(reference)"}
    if compiled is not None:
        label = "ours, LayerSparsity(compile=True)"
        variants[label] = partial(peers.peer_runner(compiled), x=x)
        fresh = peers.CompiledMonitor(model, layers)
        peers.peer_runner(fresh)(1, x)
        mine = peers.pooled_means((s, check.estimator("test", s).compute()) for s in check.layer_names)
        agreement[label] = f"{max(abs(fresh.means()[k] - mine[k]) for k in mine):.1e}"
    isolated = []
    for label, (cls, _) in peers.PEERS.items():
        if getattr(cls, "isolated", False):
            isolated.append((label, cls))
            continue
        diff, n = _agreement(cls(model, layers), model, x, check)
        variants[label] = partial(peers.peer_runner(cls(model, layers)), x=x)
        agreement[label] = f"{diff:.1e} ({n} modules)" + (
            f"; {_captum_note(check)}" if getattr(cls, "calls", "all") == "last" else ""
        )
    times = interleaved(variants, peer_setup(setup, quick), device)
    med = {k: statistics.median(v) for k, v in times.items()}
    ours_key = "ours (SparsityMonitor, every statistic)"
    base = {k: (med["plain"], med[ours_key]) for k in med}  # (plain, ours) of the interleave each ran in
    for label, cls in isolated:  # e.g. TorchLens: after the others, with plain and ours again
        peer = cls(model, layers)
        try:
            diff, n = _agreement(peer, model, x, check)
            alone = interleaved(
                {
                    "plain": variants["plain"],
                    ours_key: variants[ours_key],
                    label: partial(peers.peer_runner(peer), x=x),
                },
                peer_setup(setup, quick),
                device,
            )
        finally:
            peer.restore()
        med[label] = statistics.median(alone[label])
        base[label] = (statistics.median(alone["plain"]), statistics.median(alone[ours_key]))
        agreement[label] = f"{diff:.1e} ({n} modules); timed in its own interleave with plain and ours (it wraps torch)"
    lines = []
    for label, note in agreement.items():
        plain, ours = base[label]
        add, ours_added = med[label] - plain, ours - plain
        rel = "" if label == "plain" else (f"{add / ours_added:.2f}" if ours_added > 0 else "n/a")
        lines.append(
            f"| {label} | {setup.name} | {med[label] * 1e3:.2f} | {med[label] / plain:.2f}x | "
            f"{add * 1e3:.2f} | {rel} | {note} |"
        )
    return lines


def _captum_note(check: SparsityMonitor) -> str:
    sites, modules = len(check.layer_names), len({call_site_base(s) for s in check.layer_names})
    if sites == modules:
        return "every module called once"
    return f"compared on the last call of each module only: Captum keeps one output per module ({sites - modules} of {sites} call sites unseen)"


class _Plain:
    """The model alone, as a peer."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def forward(self, x: torch.Tensor) -> None:
        self.model(x)


def _monitor_eval(monitor: SparsityMonitor, model: nn.Module, x: torch.Tensor, k: int) -> None:
    with monitor.track("test"), torch.no_grad():
        for _ in range(k):
            model(x)


# -- case (f): one update against one read pass -------------------------------------------------
def _log_pass(x: torch.Tensor, tiny: float) -> torch.Tensor:
    return x.clamp_min(tiny).log_()


def _repeat(fn: Callable[[], object]) -> Callable[[int], None]:
    def run(k: int) -> None:
        for _ in range(k):
            fn()

    return run


def update_case(device: torch.device, quick: bool, use_compile: bool) -> tuple[list[Row], list[str]]:
    """``LayerSparsity.update`` against one ``log`` pass over the same ReLU activations, interleaved.

    Each timed block runs ``DEFER_BATCHES`` updates, so the fold of their small work (once per
    that many batches) is included, amortised.
    """
    shapes = [(64, 32, 16, 16), (32, 64, 32, 32)] + ([] if quick else [(128, 64, 32, 32)])
    setup = Setup(
        "update",
        lambda: nn.Identity(),
        (0,),
        DEFER_BATCHES,
        1,
        3 if quick else 8,
        4 if quick else 20,
        1.0 if quick else 20.0,
    )
    tiny = torch.finfo(torch.float32).tiny
    rows, lines = [], []
    for shape in shapes:
        torch.manual_seed(2)
        x = torch.relu(torch.randn(*shape, device=device))
        eager = LayerSparsity(shape[1]).to(device)
        relu = LayerSparsity(shape[1], nonnegative=True).to(device)
        variants = {
            "sum": _repeat(x.sum),
            "amax": _repeat(x.amax),
            "log": _repeat(partial(_log_pass, x, tiny)),
            "update": _repeat(partial(eager.update, x)),
            "relu": _repeat(partial(relu.update, x)),
        }
        if use_compile:
            comp = LayerSparsity(shape[1], compile=True).to(device)
            comp.update(x)  # compile (or fetch from the cache) before timing
            comp._flush()  # and the fold's graph
            variants["compiled"] = _repeat(partial(comp.update, x))
        times = interleaved(variants, setup, device)
        label = f"{tuple(shape)} {x.numel() * 4 / 2**20:.0f} MiB"
        rows.append(
            ratio_row("(f) update vs one log pass", label, times["log"], times["update"], speedup=False, limit=1.5)
        )
        rows.append(
            ratio_row(
                "(f) update, nonnegative=True (ReLU)", label, times["log"], times["relu"], speedup=False, limit=1.5
            )
        )
        if use_compile:
            rows.append(
                ratio_row(
                    "(f') compiled update vs one log pass",
                    label,
                    times["log"],
                    times["compiled"],
                    speedup=False,
                    limit=1.2,
                )
            )
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        lines.append(
            f"(f) {label}: ms per call "
            + ", ".join(f"{k} {v:.3f}" for k, v in med.items())
            + f"; one log pass = {med['log'] / med['sum']:.1f}x x.sum(); update = {med['update'] / med['sum']:.1f}x x.sum()"
        )
    return rows, lines


# -- fit phases (case h) -----------------------------------------------------------------------
def _demo() -> tuple[dict[str, object], object, nn.Module]:
    """``xaisparse demo``'s defaults, its data split, and its model freshly seeded."""
    from xaisparse.cli import DEMO_DEFAULTS as d
    from xaisparse.data import load_dataset
    from xaisparse.models import build_model

    data = load_dataset(
        d["dataset"],
        None,
        train_subset=d["train_subset"],
        label_noise=d["label_noise"],
        seed=d["seed"],
        size=d["image_size"],
    )
    torch.manual_seed(d["seed"])
    model = build_model(
        d["model"],
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        width=d["width"],
    )
    return d, data, model


def train_stats_case(quick: bool) -> tuple[list[Row], list[str]]:
    """``fit`` with a penalty in the demo setting: the train split's sparsity from an eval pass over the
    train probe (``train_statistics="probe"``) vs from the training forwards (``"training"``; one read
    of each activation for the penalty and the monitor). Two runs of each, alternated; the faster of
    each phase."""
    from xaisparse import fit

    epochs = 3 if quick else 10
    best: dict[str, dict[str, float]] = {}
    for variant in ("probe", "training") * 2:
        d, data, model = _demo()
        h = fit(
            model,
            data.train,
            data.test,
            epochs=epochs,
            lr=d["lr"],
            batch_size=d["batch_size"],
            monitor=SparsityMonitor(model),
            penalty=SparsityPenalty(model, weight=0.1),
            progress=False,
            seed=d["seed"],
            train_statistics=variant,
        )
        ph = h.outcome.phase_seconds
        per = {"train": ph["train"] / epochs, "measure": ph["measure"] / (epochs + 1)}
        best[variant] = {k: min(v, best.get(variant, {}).get(k, v)) * 1e3 for k, v in per.items()}
    rows = []
    for phase in ("measure", "train"):
        a, b = best["probe"][phase], best["training"][phase]
        rows.append(
            Row(
                f"(i) fit + penalty, {phase} ms/epoch",
                "SmallCNN demo",
                f"{a:.1f}",
                f"{b:.1f}",
                f"{b / a:.2f}x",
                "",
                "info",
                None,
            )
        )
    a, b = sum(best["probe"].values()), sum(best["training"].values())
    rows.append(
        Row(
            "(i) fit + penalty, train+measure ms/epoch",
            "SmallCNN demo",
            f"{a:.1f}",
            f"{b:.1f}",
            f"{b / a:.2f}x",
            "",
            "info",
            None,
        )
    )
    note = (
        f"(i): fit with SparsityPenalty(weight=0.1), {epochs} epochs, demo data; plain column: train_statistics='probe', "
        f"ours: 'training' (train-mode statistics from the epoch's training forwards); saves {a - b:.1f} ms per epoch "
        f"({(a - b) / a:.0%})"
    )
    return rows, [note]


def fit_case(quick: bool) -> tuple[list[Row], list[str]]:
    """Where an epoch of ``fit`` goes in the demo setting (``xaisparse demo``'s defaults, with a
    checkpoint every epoch): the shares of measurement (the probe passes with the monitor) and
    checkpointing, read from ``history.outcome.phase_seconds``."""
    import tempfile

    from xaisparse import OverfitDetector, _runfiles, fit

    # One-time per process, not per checkpoint: compiling the manifest's JSON-schema check
    # (fastjsonschema, ~10 ms; jsonschema's import, ~1 s through rfc3987_syntax's parsers, jsonschema#1428,
    # is paid only to explain a damaged manifest). Built here, before the run, and reported on its own.
    t0 = time.perf_counter()
    _runfiles._validator(_runfiles.SCHEMA_VERSION)
    validator_s = time.perf_counter() - t0
    d, data, model = _demo()
    epochs = 4 if quick else 20
    with tempfile.TemporaryDirectory() as tmp:
        h = fit(
            model,
            data.train,
            data.test,
            epochs=epochs,
            lr=d["lr"],
            batch_size=d["batch_size"],
            monitor=SparsityMonitor(model),
            detector=OverfitDetector(),
            checkpoint_dir=tmp,
            progress=False,
            seed=d["seed"],
        )
    ph = h.outcome.phase_seconds
    total = sum(ph.values())
    # ms per epoch: epochs 1..E train, epochs 0..E are measured (and checkpointed)
    per = {k: v / (epochs if k == "train" else epochs + 1) * 1e3 for k, v in ph.items()}
    train_ms = f"{per.get('train', 0.0):.1f}"
    ckpt_share = ph["checkpoint"] / total
    rows = [
        Row(
            "(h) fit: measure share",
            "SmallCNN demo",
            train_ms,
            f"{per['measure']:.1f}",
            f"{ph['measure'] / total:.2f}",
            "-",
            "info",
            None,
        ),
        Row(
            "(h) fit: checkpoint share",
            "SmallCNN demo",
            train_ms,
            f"{per['checkpoint']:.1f}",
            f"{ckpt_share:.3f}",
            "-",
            "<= 0.05",
            ckpt_share <= 0.05,
        ),
    ]
    share = (ph["measure"] + ph["checkpoint"]) / total
    both = f"{per['measure'] + per['checkpoint']:.1f}"
    rows.append(
        Row(
            "(h) fit: measure+checkpoint share",
            "SmallCNN demo",
            train_ms,
            both,
            f"{share:.2f}",
            "-",
            "<= 0.25",
            share <= 0.25,
        )
    )
    phases = ", ".join(f"{k} {v:.1f}" for k, v in per.items())
    probes = f"{min(len(data.train), 512)} train + {min(len(data.test), 512)} test probe images"
    return rows, [
        f"(h): ms per epoch over {epochs} epochs: {phases}; the probe passes read {probes} per epoch; "
        f"the manifest validator was built once before the run ({validator_s * 1e3:.0f} ms, not in the shares; "
        f"with it the checkpoint share would be {(ph['checkpoint'] + validator_s) / (total + validator_s):.3f})"
    ]


# -- report ------------------------------------------------------------------------------------
def environment(device: torch.device) -> list[str]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    lines = [
        f"python {platform.python_version()} | torch {torch.__version__} | torchvision {torchvision.__version__} "
        f"| numpy {np.__version__} | scipy {scipy.__version__} | xaisparse {xaisparse.__version__}",
        f"device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + f" | torch threads {torch.get_num_threads()} | CPU {cpu}, {cores} usable cores"
        + f" | OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}",
    ]
    return lines


def load_line(cores: int) -> str:
    try:
        one, five, _ = os.getloadavg()
    except OSError:
        return "load average: unknown"
    line = f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {cores} cores"
    if one > cores:
        line += " -- BUSY: other processes compete for the cores; timings and ratios are noisy"
    return line


def sync_check(device: torch.device, amp: torch.dtype | None) -> str:
    """Monitored eval passes and penalty training steps under ``set_sync_debug_mode("error")``:
    any host synchronisation in the per-batch path raises."""
    torch.manual_seed(0)
    model = cifar_resnet18().to(device)
    x = torch.randn(64, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (64,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    monitor, penalty = SparsityMonitor(model), SparsityPenalty(model, weight=1e-2)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss = F.cross_entropy(model(x), y) + penalty()
        loss.backward()
        opt.step()

    def run(k: int) -> None:
        model.eval()
        with monitor.track("test"), torch.no_grad(), _autocast(device, amp):
            for _ in range(k):
                model(x)
        model.train()
        with penalty, monitor.track("train"):
            for _ in range(k):
                step()

    run(2)  # first batches create estimators and cached constants
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(3 * DEFER_BATCHES // 2)  # crosses a fold
        verdict = "no host synchronisation: OK"
    except RuntimeError as err:
        verdict = f"SYNC: {str(err).splitlines()[0]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")
    return f"sync check (ResNet-18, batch 64, monitor eval + penalty/monitor train steps): {verdict}"


def table(rows: list[Row]) -> list[str]:
    out = [TABLE_HEADER, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = "info" if r.ok is None else ("pass" if r.ok else "FAIL")
        out.append(f"| {r.case} | {r.model} | {r.base} | {r.ours} | {r.ratio} | {r.spread} | {r.target} | {res} |")
    return out


def main(argv: list[str] | None = None) -> int:
    global CLOCK
    parser = argparse.ArgumentParser(description="Overhead of xaisparse's monitor and penalty (ratios).")
    parser.add_argument("--quick", action="store_true", help="few repeats and batches (smoke test); no compile")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", default="small_cnn,resnet18", help="comma-separated: small_cnn, resnet18")
    parser.add_argument("--skip-memory", action="store_true", help="skip case (e)")
    parser.add_argument("--skip-fit", action="store_true", help="skip case (h), fit's phases in the demo setting")
    parser.add_argument(
        "--only-fit", action="store_true", help="run case (h) only (fit's phases in the demo setting), nothing else"
    )
    parser.add_argument("--skip-peers", action="store_true", help="skip the peers table (and its imports)")
    parser.add_argument("--skip-ops", action="store_true", help="skip the op-count table")
    parser.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="torch.autocast for the model's forwards (GPU runs)",
    )
    parser.add_argument(
        "--sync-check",
        action="store_true",
        help="CUDA: run monitored eval passes and penalty steps under torch.cuda.set_sync_debug_mode('error')",
    )
    parser.add_argument(
        "--compile",
        choices=("auto", "on", "off"),
        default="auto",
        help="rows with LayerSparsity(compile=True): auto = on except with --quick (compiling takes minutes)",
    )
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="wall time or process CPU time")
    parser.add_argument(
        "--omp-passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE (read before torch loads)"
    )
    parser.add_argument(
        "--malloc-stable", action="store_true", help="glibc keeps freed blocks (set before torch allocates)"
    )
    args = parser.parse_args(argv)

    if args.only_fit:
        if args.skip_fit:
            parser.error("--only-fit and --skip-fit exclude each other")
        args.skip_memory = args.skip_peers = args.skip_ops = True
        args.models = ""
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    if args.clock == "cpu" and device.type == "cuda":
        parser.error("--clock cpu cannot time GPU work; use the default wall clock with --device cuda")
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    use_compile = args.compile == "on" or (args.compile == "auto" and not args.quick)
    amp = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.amp]
    if args.sync_check and device.type != "cuda":
        parser.error("--sync-check needs --device cuda (the sync debug mode is CUDA's)")
    torch.set_num_threads(args.threads)
    all_setups = setups(args.quick, device.type == "cuda")
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in all_setups]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; choose from {sorted(all_setups)}")
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1

    t_start = time.perf_counter()
    print("# xaisparse overhead benchmark" + (" (--quick)" if args.quick else ""))
    for line in environment(device):
        print(line)
    print(f"clock {args.clock} | {MALLOC_MODE} | compile rows {'on' if use_compile else 'off'} | autocast {args.amp}")
    print("at start: " + load_line(cores), flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    peer_lines: list[str] = []
    if not args.skip_memory:  # first, while VmHWM (a process-lifetime peak) is still low
        r, lines = memory_case(device, args.quick)
        rows += r
        notes += lines
        print(f"... memory case done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    if not args.only_fit:
        t0 = time.perf_counter()
        r, lines = update_case(device, args.quick, use_compile)
        rows += r
        notes += lines
        print(f"... update case done ({time.perf_counter() - t0:.0f} s)", flush=True)
    for key in chosen:
        t0 = time.perf_counter()
        r, n, p = run_model(
            all_setups[key],
            device,
            quick=args.quick,
            use_compile=use_compile,
            peers_table=not args.skip_peers and amp is None,
            amp=amp,
        )
        rows += r
        notes += n
        peer_lines += p
        print(f"... {all_setups[key].name} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if not args.skip_fit and device.type == "cpu":
        t0 = time.perf_counter()
        r, lines = fit_case(args.quick)
        rows += r
        notes += lines
        if not args.only_fit:
            r, lines = train_stats_case(args.quick)
            rows += r
            notes += lines
        print(f"... fit cases done ({time.perf_counter() - t0:.0f} s)", flush=True)
    op_rows: list[opcount.OpRow] = []
    if not args.skip_ops:
        t0 = time.perf_counter()
        op_rows, lines = opcount.op_table(
            cifar_resnet18,
            "ResNet-18",
            device,
            use_compile=use_compile,
            amp=amp,
            batch=8 if device.type == "cpu" else 256,
        )
        notes += lines
        print(f"... op counts done ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.sync_check:
        notes.append(sync_check(device, amp))
    order = ["(a)", "(b)", "(b')", "(c)", "(d)", "(d')", "(g)", "(g')", "(e)", "(f)", "(f')", "(h)", "(i)"]
    models = [all_setups[k].name for k in chosen] + ["SmallCNN"]
    rows.sort(key=lambda r: (order.index(r.case.split()[0]), models.index(r.model) if r.model in models else 99))

    print()
    for line in table(rows):
        print(line)
    print()
    print("ratio: ours/plain for (a)-(c), lower is better; reference/ours for (d) and (d'), a speed-up. (d'), (g)")
    print("compare only the time each adds above the plain eval forward ((g): the hand-written torch hook computes")
    print("the mean only, ours every statistic). spread: interquartile range of the per-repeat ratios (variants")
    print("interleaved, order rotated). (e): plain and ours columns: VmRSS growth from the first checkpoint")
    print("(measured without tracemalloc); ratio: the larger of the VmRSS and VmHWM (peak) growth, in units of one")
    print("batch's recorded activations; spread column: tracemalloc growth (separate pass). (f): one")
    print("LayerSparsity.update (all 16 state sums of one batch, its fold amortised) against one log pass")
    print("x.clamp_min(tiny).log_() over the same tensor, the floor of any exact p ln p; plain column: log pass ms.")
    print("(h): fit in the demo setting with a checkpoint every epoch; plain column: training ms/epoch, ours: the")
    print("phase's ms/epoch, ratio: its share of the epoch (history.outcome.phase_seconds). (i): fit with a penalty;")
    print("plain column: train_statistics='probe', ours: 'training'.")
    if op_rows:
        print()
        batch = 8 if device.type == "cpu" else 256
        print(f"op counts: ResNet-18 (CIFAR stem, 17 call sites), batch {batch}, 32 px; top-level aten ops per unit")
        print(opcount.HEADER)
        print("|---|---|---|---|---|---|")
        for op_row in op_rows:
            print(op_row.line())
    if peer_lines:
        print()
        print("peers: mean map sparsity per module on an eval pass (one step per timed block)")
        print(PEER_HEADER)
        print("|---|---|---|---|---|---|---|")
        for line in peer_lines:
            print(line)
    print()
    for line in notes:
        print(line)
    print("at end: " + load_line(cores))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
