#!/usr/bin/env python
"""Overhead of xaisparse's monitor and penalty, measured side by side with plain PyTorch.

Prints RATIOS measured in one run (no absolute timing is asserted anywhere):

(a) ``SparsityMonitor.track("train")`` on a training step (forward + backward + SGD step)
    against the same step without hooks;                           target ours/plain <= 1.10
(b) the monitor on an evaluation pass (``no_grad`` forward);       target ours/plain <= 1.10
(c) ``loss + SparsityPenalty()`` on a training step;               target ours/plain <= 1.30
(d) the monitor's eval pass against a typical research-code reference (forward hooks,
    ``.detach().cpu().numpy()``, ``scipy.stats.entropy`` per channel);
                                                                    target reference/ours >= 10
    (d') the same, counting only the time each adds above the plain forward (information);
    plus a sanity line: both give the same mean sparsity on one batch;
(e) memory after 10 and after N batches of monitored evaluation (small CNN): RSS growth
    (torch's CPU allocations are invisible to tracemalloc) and tracemalloc growth, against
    the size of one batch's recorded activations;                  target: flat.

Method: the variants of a comparison are interleaved (their order rotated every repeat)
after a warm-up; each sample times a block of a few steps; the table gives medians and the
interquartile range of the per-repeat ratios, because the machine may be shared.

    python bench/overhead.py                 # full run (about 5 min on 2 CPU cores)
    python bench/overhead.py --quick         # short run (the smoke test uses it)
    python bench/overhead.py --device cuda   # GPU: synchronised timings, CUDA memory stats
    python bench/overhead.py --omp-passive   # OMP_WAIT_POLICY=PASSIVE (busy shared machine)
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
import gc
import platform
import statistics
import time
import tracemalloc
from collections import defaultdict
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
from xaisparse.monitor import SparsityMonitor
from xaisparse.penalty import SparsityPenalty
from xaisparse.recording import ActivationRecorder

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
    budget_s: float  # per comparison (train: plain/monitor/penalty; eval: plain/monitor/reference)


def setups(quick: bool) -> dict[str, Setup]:
    if quick:  # a smoke run: every code path, few repeats, a smaller ResNet batch
        return {
            "small_cnn": Setup("SmallCNN", BenchCNN, (64, 1, 16, 16), 2, 1, 3, 4, 2.0),
            "resnet18": Setup("ResNet-18", cifar_resnet18, (4, 3, 32, 32), 1, 1, 2, 2, 2.0),
        }
    return {
        "small_cnn": Setup("SmallCNN", BenchCNN, (64, 1, 16, 16), 4, 2, 8, 60, 35.0),
        "resnet18": Setup("ResNet-18", cifar_resnet18, (32, 3, 32, 32), 1, 2, 5, 15, 50.0),
    }


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
        t0 = time.perf_counter()
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
            t0 = time.perf_counter()
            variants[name](inner)
            _sync(device)
            times[name].append((time.perf_counter() - t0) / inner)
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


# -- the research-code reference (case d) ------------------------------------------------------
class ReferenceSparsity:
    """What research code typically does: numpy copies in forward hooks, scipy per channel.

    For every selected module and every channel, the batch's flattened maps go through one
    ``scipy.stats.entropy`` call (vectorised over the samples); perplexity sparsity
    ``1 - (exp(H) - 1)/(N - 1)``, a dead (all-zero) map counting as sparsity 1 as in the
    project's definition; running sums per module.
    """

    def __init__(self, model: nn.Module, layer_names: list[str]) -> None:
        self.model, self.layer_names = model, layer_names
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, int] = defaultdict(int)
        self.handles: list = []

    def __enter__(self) -> ReferenceSparsity:
        for name in self.layer_names:
            module = self.model.get_submodule(name)
            self.handles.append(module.register_forward_hook(partial(self._hook, name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def _hook(self, name: str, module: nn.Module, inputs: object, output: torch.Tensor) -> None:
        acts = output.detach().cpu().numpy()
        n, c = acts.shape[:2]
        acts = np.abs(acts.reshape(n, c, -1))
        length = acts.shape[-1]
        for ch in range(c):
            maps = acts[:, ch, :]  # (n, H*W): every sample's map of this channel
            with np.errstate(invalid="ignore", divide="ignore"):
                h = scipy.stats.entropy(maps, axis=1)  # NaN for a dead map
            s = 1.0 - (np.exp(h) - 1.0) / (length - 1)
            s[maps.sum(axis=1) == 0] = 1.0
            self.sums[name] += float(s.sum())
            self.counts[name] += n

    def means(self) -> dict[str, float]:
        return {k: self.sums[k] / self.counts[k] for k in self.sums}


def ours_pooled_means(monitor: SparsityMonitor, split: str) -> dict[str, float]:
    """The monitor's mean map sparsity per module (the call sites of one module pooled)."""
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    for site in monitor.layer_names:
        out = monitor.estimator(split, site).compute()
        base = site.split("#", 1)[0]
        sums[base] += float((out["spatial_mean"].nan_to_num() * out["spatial_count"]).sum())
        counts[base] += float(out["spatial_count"].sum())
    return {k: sums[k] / counts[k] for k in sums}


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
    first, last = 10, (60 if quick else 1000)
    checkpoints = (first, last // 2, last)
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
        f"{last // 2}->{last} (MiB) | {hwm} growth {first}->{last} (MiB) | {hwm} growth {last // 2}->{last} (MiB) "
        f"| tracemalloc growth (KiB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in ("plain", "ours"):
        lines.append(
            f"| {v} | {points[v][first].rss / mib:.1f} | {growth(v, 'rss') / mib:+.2f} | "
            f"{growth(v, 'rss', last // 2) / mib:+.2f} | {growth(v, 'hwm') / mib:+.2f} | "
            f"{growth(v, 'hwm', last // 2) / mib:+.2f} | {growth(v, 'py') / 1024:+.1f} |"
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


# -- cases (a)-(d) -----------------------------------------------------------------------------
def run_model(setup: Setup, device: torch.device) -> tuple[list[Row], list[str]]:
    torch.manual_seed(0)
    model = setup.build().to(device)
    x = torch.randn(*setup.input_shape, device=device)
    y = torch.randint(0, 10, (setup.input_shape[0],), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor = SparsityMonitor(model)
    penalty = SparsityPenalty(model, weight=1e-2)
    layers = monitor.recorder.modules
    reference = ReferenceSparsity(model, layers)

    def train_step(extra: Callable[[], torch.Tensor] | None = None) -> None:
        opt.zero_grad(set_to_none=True)
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
        with torch.no_grad():
            for _ in range(k):
                model(x)

    def monitor_eval(k: int) -> None:
        with monitor.track("test"), torch.no_grad():
            for _ in range(k):
                model(x)

    def reference_eval(k: int) -> None:
        with reference, torch.no_grad():
            for _ in range(k):
                model(x)

    # Sanity first, on fresh accumulators: both measure the same thing on the same batch.
    model.eval()
    check = SparsityMonitor(model)
    with check.track("test"), torch.no_grad():
        model(x)
    with ReferenceSparsity(model, layers) as ref_check, torch.no_grad():
        model(x)
    ours_m, ref_m = ours_pooled_means(check, "test"), ref_check.means()
    if set(ours_m) != set(ref_m):
        raise RuntimeError(f"layers differ: ours {sorted(ours_m)}, reference {sorted(ref_m)}")
    diff = max(abs(ours_m[k] - ref_m[k]) for k in ours_m)
    notes = [
        f"sanity: max |mean sparsity ours - reference| = {diff:.2e} over {len(ours_m)} layers of "
        f"{setup.name} (tolerance {SANITY_TOL:g}): {'OK' if diff <= SANITY_TOL else 'MISMATCH'}"
    ]

    model.train()
    t = interleaved({"plain": plain_train, "monitor": monitor_train, "penalty": penalty_train}, setup, device)
    model.eval()
    e = interleaved({"plain": plain_eval, "monitor": monitor_eval, "reference": reference_eval}, setup, device)

    name = setup.name
    rows = [
        ratio_row("(a) monitor, train step", name, t["plain"], t["monitor"], speedup=False, limit=1.10),
        ratio_row("(b) monitor, eval pass", name, e["plain"], e["monitor"], speedup=False, limit=1.10),
        ratio_row("(c) penalty, train step", name, t["plain"], t["penalty"], speedup=False, limit=1.30),
        ratio_row("(d) vs scipy reference, eval pass", name, e["reference"], e["monitor"], speedup=True, limit=10.0),
    ]
    plain_med = statistics.median(e["plain"])
    ref_add = statistics.median(e["reference"]) - plain_med
    ours_add = statistics.median(e["monitor"]) - plain_med
    rows.append(
        Row(
            "(d') vs scipy reference, time above plain eval",
            name,
            f"{ref_add * 1e3:.2f}",
            f"{ours_add * 1e3:.2f}",
            f"{ref_add / ours_add:.1f}x" if ours_add > 0 else "n/a",
            "",
            "info",
            None,
        )
    )
    notes.append(
        f"{name}: input {tuple(setup.input_shape)}, {len(layers)} hooked modules ({len(monitor.layer_names)} call "
        f"sites); {max(setup.warmup, 1)} warm-up + {len(t['plain'])} (train) / {len(e['plain'])} (eval) timed "
        f"rounds of {setup.inner} step(s) per variant"
    )
    return rows, notes


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


def table(rows: list[Row]) -> list[str]:
    out = [TABLE_HEADER, "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        res = "info" if r.ok is None else ("pass" if r.ok else "FAIL")
        out.append(f"| {r.case} | {r.model} | {r.base} | {r.ours} | {r.ratio} | {r.spread} | {r.target} | {res} |")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Overhead of xaisparse's monitor and penalty (ratios).")
    parser.add_argument("--quick", action="store_true", help="few repeats and batches (smoke test)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--models", default="small_cnn,resnet18", help="comma-separated: small_cnn, resnet18")
    parser.add_argument("--skip-memory", action="store_true", help="skip case (e)")
    parser.add_argument(
        "--omp-passive", action="store_true", help="set OMP_WAIT_POLICY=PASSIVE (read before torch loads)"
    )
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda was given but torch.cuda.is_available() is False")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda, got {args.device!r}")
    torch.set_num_threads(args.threads)
    all_setups = setups(args.quick)
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
    print("at start: " + load_line(cores), flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    if not args.skip_memory:  # first, while VmHWM (a process-lifetime peak) is still low
        r, lines = memory_case(device, args.quick)
        rows += r
        notes += lines
        print(f"... memory case done ({time.perf_counter() - t_start:.0f} s)", flush=True)
    for key in chosen:
        t0 = time.perf_counter()
        r, n = run_model(all_setups[key], device)
        rows += r
        notes += n
        print(f"... {all_setups[key].name} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    order = ["(a)", "(b)", "(c)", "(d)", "(d')", "(e)"]
    models = [all_setups[k].name for k in chosen] + ["SmallCNN"]
    rows.sort(key=lambda r: (order.index(r.case.split()[0]), models.index(r.model)))

    print()
    for line in table(rows):
        print(line)
    print()
    print("ratio: ours/plain for (a)-(c), lower is better; reference/ours for (d) and (d'), a speed-up. (d')")
    print("compares only the time each adds above the plain eval forward. spread: interquartile range of the")
    print("per-repeat ratios (variants interleaved, order rotated). (e): plain and ours columns: VmRSS growth")
    print("from batch 10 (measured without tracemalloc); ratio: the larger of the VmRSS and VmHWM (peak) growth,")
    print("in units of one batch's recorded activations; spread column: tracemalloc growth (separate pass).")
    print()
    for line in notes:
        print(line)
    print("at end: " + load_line(cores))
    print(f"total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
