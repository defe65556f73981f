#!/usr/bin/env python
"""Two source trees of xaisparse side by side in one process: op counts and the ratios that matter.

For a before/after comparison of a change on a shared, noisy machine: both trees' monitor,
penalty and estimator are built in the same process and timed interleaved with the same plain
model (``overhead.interleaved``), so their ratios to plain are measured under the same load.

    git archive f3601da xaisparse | tar -x -C /tmp/base      # the baseline's package
    python bench/versus.py /tmp/base                          # baseline vs this working tree

Each tree is imported in turn (``sys.modules`` swapped); objects keep the module globals they
were built with, so both run side by side afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import opcount  # noqa: E402
from overhead import BenchCNN, Setup, cifar_resnet18, interleaved, load_line  # noqa: E402


def load(root: Path) -> dict[str, types.ModuleType]:
    """Import the package ``xaisparse`` found in ``root``; its modules, taken out of ``sys.modules``."""
    _forget()
    sys.path.insert(0, str(root))
    try:
        import xaisparse.estimators
        import xaisparse.functional.streaming
        import xaisparse.monitor
        import xaisparse.penalty  # noqa: F401
    finally:
        sys.path.remove(str(root))
    mods = {name: mod for name, mod in sys.modules.items() if name == "xaisparse" or name.startswith("xaisparse.")}
    if Path(mods["xaisparse"].__file__).resolve().parents[1] != root.resolve():
        raise RuntimeError(f"imported xaisparse from {mods['xaisparse'].__file__}, expected it under {root}")
    _forget()
    return mods


def _forget() -> None:
    for name in [n for n in sys.modules if n == "xaisparse" or n.startswith("xaisparse.")]:
        del sys.modules[name]


def use(mods: dict[str, types.ModuleType]) -> None:
    _forget()
    sys.modules.update(mods)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="a directory holding the baseline's xaisparse/ package")
    parser.add_argument("--repeats", type=int, default=15, help="timed rounds per comparison")
    args, device, batch = opcount.parse_common(parser, argv)
    trees = {"before": load(args.base), "after": load(HERE.parent)}
    print(f"# versus: before = {args.base}, after = {HERE.parent}; {args.threads} threads; device {device}")
    print("at start: " + load_line(2))

    print(f"\nop counts (ResNet-18 with the CIFAR stem, batch {batch}, 32 px)")
    print("| path | before | after | per | target |")
    print("|---|---|---|---|---|")
    counted = {}
    for label, mods in trees.items():
        use(mods)
        counted[label] = opcount.op_table(cifar_resnet18, "ResNet-18", device, batch=batch, use_compile=args.compile)
    before = {row.path: row for row in counted["before"][0]}
    for new in counted["after"][0]:  # matched by path: a row one tree lacks shows a dash
        target = "" if new.target is None else f"<= {new.target:g}"
        old = f"{before[new.path].ops:.1f}" if new.path in before else "-"
        print(f"| {new.path} | {old} | {new.ops:.1f} | {new.unit} | {target} |")
    for label, (_, notes) in counted.items():
        for note in notes:
            print(f"{label}: {note}")

    print("\ntimings, interleaved: ratio to plain (median of per-round ratios; IQR)")
    print("| case | model | before | after | target |")
    print("|---|---|---|---|---|")
    for name, build, shape, eval_target, pen_target in (
        ("SmallCNN", BenchCNN, (64 if batch == 8 else 256, 1, 16, 16), 1.25, 1.25),
        ("ResNet-18", cifar_resnet18, (batch, 3, 32, 32), 1.10, 1.05),
    ):
        for line in _timings(trees, name, build, shape, eval_target, pen_target, args.repeats, device):
            print(line, flush=True)
    for line in _update_timings(trees, args.repeats, device):
        print(line, flush=True)
    print("at end: " + load_line(2))
    return 0


def _ratio(times: dict[str, list[float]], key: str, base: str = "plain") -> str:
    r = [t / b for t, b in zip(times[key], times[base])]
    q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
    return f"{statistics.median(r):.2f}x [{q[0]:.2f}, {q[2]:.2f}]"


def _timings(
    trees, name: str, build: Callable, shape: tuple[int, ...], eval_t: float, pen_t: float, repeats: int, device
):
    torch.manual_seed(0)
    model = build().to(device)
    x = torch.randn(*shape, device=device)
    y = torch.randint(0, 10, (shape[0],), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every variant sees the same weights
    users = {}
    for label, mods in trees.items():
        use(mods)
        users[label] = (
            mods["xaisparse.monitor"].SparsityMonitor(model),
            mods["xaisparse.penalty"].SparsityPenalty(model),
        )

    def plain_eval(k: int) -> None:
        with torch.no_grad():
            for _ in range(k):
                model(x)

    def monitor_eval(monitor, k: int) -> None:
        with monitor.track("test"), torch.no_grad():
            for _ in range(k):
                model(x)

    def train(penalty, k: int) -> None:
        for _ in range(k):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()

    def penalty_train(penalty, k: int) -> None:
        with penalty:
            train(penalty, k)

    setup = Setup(name, build, shape, 4 if name == "SmallCNN" else 1, 2, repeats, repeats, 0.0)
    model.eval()
    e = interleaved(
        {"plain": plain_eval, **{lab: partial(monitor_eval, m) for lab, (m, _) in users.items()}},
        setup,
        device,
    )
    model.train()
    t = interleaved(
        {"plain": partial(train, None), **{lab: partial(penalty_train, p) for lab, (_, p) in users.items()}},
        setup,
        device,
    )
    return [
        f"| monitor, eval pass | {name} | {_ratio(e, 'before')} | {_ratio(e, 'after')} | <= {eval_t:.2f} |",
        f"| penalty, train step | {name} | {_ratio(t, 'before')} | {_ratio(t, 'after')} | <= {pen_t:.2f} |",
    ]


def _update_timings(trees, repeats: int, device: torch.device):
    lines = []
    tiny = torch.finfo(torch.float32).tiny
    for shape in ((64, 32, 16, 16), (32, 64, 32, 32)):
        torch.manual_seed(2)
        x = torch.relu(torch.randn(*shape, device=device))
        variants: dict[str, Callable[[int], None]] = {
            "log": lambda k, x=x: [x.clamp_min(tiny).log_() for _ in range(k)]
        }
        for label, mods in trees.items():
            use(mods)
            est = mods["xaisparse.estimators"].LayerSparsity(shape[1]).to(device)
            variants[label] = lambda k, est=est, x=x: [est.update(x) for _ in range(k)]
        setup = Setup("update", lambda: None, shape, 64, 1, repeats, repeats, 0.0)  # 64 updates: a fold
        times = interleaved(variants, setup, device)
        lines.append(
            f"| update / one log pass | {shape} | {_ratio(times, 'before', 'log')} | {_ratio(times, 'after', 'log')} | <= 1.50 |"
        )
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
