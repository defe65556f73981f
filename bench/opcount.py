"""Operator and kernel counts of the monitor and the penalty: what a GPU pays per launch, counted on any device.

On a GPU the cost of small per-layer work is mostly the number of kernels launched (a few µs
each, whatever the tensor size). That number is counted here with ``torch.profiler``: the
**top-level** ``aten::`` operators, i.e. those whose parent is not another ``aten::`` op (what
the Python side dispatches; views such as ``view``/``select`` count too, though they launch
nothing), and on CUDA also the kernels launched. For ``torch.compile`` the kernels are read
from the generated code (``run_and_get_code``): each inductor kernel, plus each op left to
ATen (``extern_kernels``/``aten.`` calls), is one launch per call of the graph.

Imported by ``overhead.py`` (the op-count table) and ``versus.py`` (two source trees side by
side); it uses only the public API plus the estimator's fold, so it runs on older trees too.

    python bench/opcount.py                   # the table alone (ResNet-18, batch 8, 32 px)
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def top_level_ops(fn: Callable[[], object], device: torch.device) -> tuple[int, int, Counter[str]]:
    """``(top-level aten ops, CUDA kernels launched, ops by name)`` while ``fn`` runs."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with torch.profiler.profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    names: Counter[str] = Counter()
    kernels = 0
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")):
            names[e.name] += 1
    return sum(names.values()), kernels, names


def compiled_kernels(fn: Callable[..., object], *args: object, **kwargs: object) -> int:
    """Kernels per call of the graph(s) ``torch.compile(fn)`` builds for these arguments (compiles afresh)."""
    from torch._inductor.utils import run_and_get_code

    torch._dynamo.reset()
    _, codes = run_and_get_code(torch.compile(fn, dynamic=True), *args, **kwargs)
    count = 0
    for code in codes:
        for line in code.splitlines():
            line = line.strip()
            if re.match(r"^(cpp_fused_\w+|triton_\w+)\.run\(|^(cpp_fused_\w+)\(", line):
                count += 1  # an inductor kernel launched by the graph's call()
            elif re.match(r"^(buf\w+ = )?(extern_kernels|torch\.ops\.aten|aten)\.\w+", line):
                count += 1  # an op left to ATen
    return count


@dataclass
class OpRow:
    path: str
    ops: float  # top-level aten ops (per unit)
    kernels: float | None  # CUDA kernels per unit (None on the CPU)
    unit: str
    target: float | None = None  # upper bound on ``ops`` (compiled: on kernels)

    def line(self) -> str:
        kern = "" if self.kernels is None else f"{self.kernels:.1f}"
        target = "info" if self.target is None else f"<= {self.target:g}"
        result = "info" if self.target is None else ("pass" if self.ops <= self.target else "FAIL")
        return f"| {self.path} | {self.ops:.1f} | {kern} | {self.unit} | {target} | {result} |"


HEADER = "| path | top-level aten ops | CUDA kernels | per | target | result |"


def _fold(monitor: object) -> None:
    """Fold in what the monitor's estimators have pending (what ``compute()`` would do first)."""
    for est in getattr(monitor, "_estimators", {}).values():
        est._flush()


def op_table(
    build: Callable[[], nn.Module],
    name: str,
    device: torch.device,
    *,
    batch: int = 8,
    size: int = 32,
    batches: tuple[int, ...] = (16, 32, 64),
    update_shape: tuple[int, ...] = (32, 64, 16, 16),
    use_compile: bool = True,
    amp: torch.dtype | None = None,
) -> tuple[list[OpRow], list[str]]:
    """The op-count rows for one model: eval and train step, plain / monitor / penalty / both; the update."""
    from xaisparse.estimators import LayerSparsity
    from xaisparse.monitor import SparsityMonitor
    from xaisparse.penalty import SparsityPenalty

    torch.manual_seed(0)
    model = build().to(device)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    monitor, penalty = SparsityMonitor(model), SparsityPenalty(model, weight=1e-2)
    autocast = (lambda: torch.autocast(device.type, amp)) if amp is not None else (lambda: _Null())

    def count(fn: Callable[[], object]) -> tuple[int, int]:
        ops, kernels, _ = top_level_ops(fn, device)
        return ops, kernels

    def eval_pass(k: int) -> None:
        with torch.no_grad(), autocast():
            for _ in range(k):
                model(x)

    def step(with_penalty: bool) -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = F.cross_entropy(model(x), y)
            if with_penalty:
                loss = loss + penalty()
        loss.backward()
        opt.step()

    model.eval()
    eval_pass(2)
    plain_ops, plain_k = count(lambda: eval_pass(1))
    with monitor.track("test"):
        eval_pass(2)
    _fold(monitor)  # the first fold builds each estimator's constants: once per estimator, not counted
    sites = len(monitor.layer_names)
    rows = [OpRow(f"plain eval forward ({name}, batch {batch})", plain_ops, _k(plain_k, device), "forward")]
    for k in batches:
        monitor.reset()
        _fold(monitor)

        def monitored(k: int = k) -> None:
            with monitor.track("test"):
                eval_pass(k)
            _fold(monitor)

        ops, kern = count(monitored)
        rows.append(
            OpRow(
                f"+ SparsityMonitor, amortised over {k} batches",
                (ops - k * plain_ops) / (k * sites),
                _k((kern - k * plain_k) / (k * sites), device),
                "call site, batch",
                6.0,
            )
        )

    model.train()
    for _ in range(2):
        step(False)
    train_ops, train_k = count(lambda: step(False))
    rows.append(OpRow(f"plain train step ({name}, forward, backward, SGD)", train_ops, _k(train_k, device), "step"))
    with penalty:
        for _ in range(2):
            step(True)
        ops, kern = count(lambda: step(True))
    rows.append(
        OpRow(
            "+ SparsityPenalty (forward and backward)",
            (ops - train_ops) / sites,
            _k((kern - train_k) / sites, device),
            "call site, step",
            20.0,
        )
    )
    with monitor.track("train"):
        for _ in range(2):
            step(False)
        ops, kern = count(lambda: step(False))
    rows.append(
        OpRow(
            "+ SparsityMonitor on the train step",
            (ops - train_ops) / sites,
            _k((kern - train_k) / sites, device),
            "call site, step",
        )
    )
    with penalty, monitor.track("train"):
        for _ in range(2):
            step(True)
        ops, kern = count(lambda: step(True))
    rows.append(
        OpRow(
            "+ both, one recorder and one read (the monitor's fold not counted)",
            (ops - train_ops) / sites,
            _k((kern - train_k) / sites, device),
            "call site, step",
        )
    )

    # LayerSparsity.update on one tensor, amortised over a fold of 64 batches
    torch.manual_seed(2)
    t = torch.relu(torch.randn(*update_shape, device=device))
    n = 64
    notes = []
    for label, kwargs in (("", {}), (", nonnegative=True (ReLU sites)", {"nonnegative": True})):
        try:
            est = LayerSparsity(update_shape[1], **kwargs).to(device)
        except TypeError:  # an older tree without the flag
            continue

        def updates(est: LayerSparsity = est) -> None:
            for _ in range(n):
                est.update(t)
            est._flush()

        updates()  # warm: the fold's constants
        ops, kern = count(updates)
        rows.append(
            OpRow(
                f"LayerSparsity.update eager{label}, {tuple(update_shape)}",
                ops / n,
                _k(kern / n, device),
                f"call (of {n})",
            )
        )
    if use_compile:
        kernels, detail = _compiled_update_kernels(t, n)
        rows.append(OpRow(f"LayerSparsity.update compiled, {tuple(update_shape)}: kernels", kernels, None, "call", 2.0))
        notes.append(f"compiled update: {detail}")
    return rows, notes


def _compiled_update_kernels(t: torch.Tensor, n: int) -> tuple[float, str]:
    """Kernels per compiled ``update`` call: the per-batch graph, plus the fold's graph over ``n``."""
    from xaisparse.functional import streaming

    if hasattr(streaming, "_packed_increments"):  # the read per batch, the fold once per n batches
        from xaisparse.functional.mapsums import _map_sums

        read = compiled_kernels(_map_sums, t, nonnegative=False)
        total, s = _map_sums(t)
        st = streaming._stack_sums([total] * n, [s] * n)
        consts = streaming._consts(t.shape[1], t[0, 0].numel(), 20, t.device)
        fold = compiled_kernels(streaming._packed_increments, st, t[0, 0].numel(), 20, consts)
        return read + fold / n, f"{read} kernel(s) per batch (the read) + {fold} per fold of {n} batches"
    whole = compiled_kernels(streaming._layer_sparsity_update, t, 20)  # older trees: everything per batch
    return float(whole), f"{whole} kernels per batch (the whole update traced per batch)"


def _k(value: float, device: torch.device) -> float | None:
    return value if device.type == "cuda" else None


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def parse_common(
    parser: argparse.ArgumentParser, argv: list[str] | None
) -> tuple[argparse.Namespace, torch.device, int]:
    """Add --device/--threads/--compile, parse, set the threads: (args, device, batch: 8 on CPU, 256 on CUDA)."""
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: batch 256, synchronised, kernels")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also count the compiled update's kernels")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device on this machine")
    torch.set_num_threads(args.threads)
    return args, device, 8 if device.type == "cpu" else 256


def main(argv: list[str] | None = None) -> int:

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from overhead import cifar_resnet18

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    args, device, batch = parse_common(parser, argv)
    rows, notes = op_table(cifar_resnet18, "ResNet-18", device, batch=batch, use_compile=args.compile)
    print(HEADER)
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row.line())
    for note in notes:
        print(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
