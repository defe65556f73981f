"""The ``xaisparse`` command line: ``demo``, ``run``, ``report``, ``compare`` and ``playground``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._errors import XaisparseError

__all__ = ["DEMO_DEFAULTS", "main"]

#: The main job: the embedded digits, a small train subset with label noise, trained well past
#: the test-loss minimum (about a minute on 2 CPU cores).
DEMO_DEFAULTS: dict[str, Any] = {
    "dataset": "digits",
    "model": "small_cnn",
    "epochs": 60,
    "lr": 2e-3,
    "batch_size": 32,
    "train_subset": 300,
    "label_noise": 0.2,
    "image_size": 16,
    "width": 16,
    "seed": 0,
}


def _add_run_args(
    p: argparse.ArgumentParser,
    defaults: dict[str, Any],
    weight_help: str = "sparsity penalty weight λ (0 or unset: no penalty)",
) -> None:
    p.add_argument(
        "--dataset",
        default=defaults.get("dataset", "digits"),
        help="digits or mnist_embedded (embedded; digits default), cifar10, cifar100, mnist, fashion_mnist, svhn",
    )
    p.add_argument(
        "--data-root", default=None, help="folder of the torchvision datasets (default: $XAISPARSE_DATA or ./data)"
    )
    p.add_argument(
        "--download", action="store_true", help="let torchvision download a missing dataset (needs internet)"
    )
    p.add_argument("--model", default=defaults.get("model", "small_cnn"), help="small_cnn, vgg11 or resnet18")
    p.add_argument("--width", type=int, default=defaults.get("width", 16), help="base channel width of small_cnn")
    p.add_argument("--depth", type=int, default=3, help="conv blocks of small_cnn")
    p.add_argument("--epochs", type=int, default=defaults.get("epochs", 60))
    p.add_argument("--lr", type=float, default=defaults.get("lr", 2e-3))
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd"])
    p.add_argument("--batch-size", type=int, default=defaults.get("batch_size", 32))
    p.add_argument(
        "--image-size",
        type=int,
        default=defaults.get("image_size", 16),
        help="image side of the embedded datasets (digits upsampled, mnist_embedded resized)",
    )
    p.add_argument("--train-subset", type=int, default=defaults.get("train_subset"), help="train on this many samples")
    p.add_argument(
        "--label-noise", type=float, default=defaults.get("label_noise", 0.0), help="fraction of train labels flipped"
    )
    p.add_argument("--weight", type=float, default=None, help=weight_help)
    p.add_argument("--penalty", type=float, default=None, help=argparse.SUPPRESS)  # deprecated alias of --weight
    p.add_argument(
        "--regularizer",
        action="append",
        default=[],
        choices=["dropout", "batchnorm", "weight_decay", "augment"],
        help="add a classical regulariser (repeatable)",
    )
    p.add_argument(
        "--early-stopping",
        type=int,
        nargs="?",
        const=10,
        default=None,
        metavar="PATIENCE",
        help="stop after PATIENCE epochs (default 10) without a lower held-out loss and restore the best epoch's "
        "weights (the held-out set then serves as validation data)",
    )
    p.add_argument("--probe-size", type=int, default=512, help="samples per split measured each epoch")
    p.add_argument("--seed", type=int, default=defaults.get("seed", 0))
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--name", default=None, help="run name shown in comparisons")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _build(args: argparse.Namespace):
    """The dataset (a train/test pair) and the model from parsed arguments."""
    from .data import _EMBEDDED, _canonical_name, load_dataset
    from .models import build_model, regularisation

    regs = set(args.regularizer)
    kw: dict[str, Any] = {"train_subset": args.train_subset, "label_noise": args.label_noise, "seed": args.seed}
    if _canonical_name(args.dataset) in _EMBEDDED:  # embedded: resized to --image-size, nothing to download
        kw["size"] = args.image_size
    else:
        kw.update(download=args.download, augment="augment" in regs)
    data = load_dataset(args.dataset, args.data_root, **kw)
    model_kw, _ = regularisation(args.model, regs)
    if args.model == "small_cnn":
        model_kw.update(width=args.width, depth=args.depth)
    import torch

    torch.manual_seed(args.seed)
    model = build_model(
        args.model,
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        image_size=data.image_size,
        **model_kw,
    )
    return data, model


def _weight(args: argparse.Namespace) -> float:
    """λ from ``--weight`` (or the deprecated ``--penalty``, with a warning on stderr)."""
    if getattr(args, "penalty", None) is not None:
        print("xaisparse: --penalty is deprecated; use --weight", file=sys.stderr)
        if args.weight is None:
            return float(args.penalty)
    return float(args.weight or 0.0)


def _train(args: argparse.Namespace, out: Path):
    from .detect import OverfitDetector
    from .models import regularisation
    from .penalty import SparsityPenalty
    from .stopping import EarlyStopping
    from .train import fit

    data, model = _build(args)
    _, wd = regularisation(args.model, args.regularizer)
    weight = _weight(args)
    name = args.name or (f"{args.model}-penalty{weight:g}" if weight else f"{args.model}-baseline")
    config = {
        "name": name,
        "dataset": data.name,
        "data": data.info,
        "model": args.model,
        "regularizers": sorted(set(args.regularizer)),
        "command": " ".join(sys.argv),
    }
    history = fit(
        model,
        data.train,
        data.test,
        epochs=args.epochs,
        lr=args.lr,
        optimizer=args.optimizer,
        weight_decay=wd,
        batch_size=args.batch_size,
        penalty=SparsityPenalty(model, weight=weight) if weight else None,
        probe_size=args.probe_size,
        device=args.device,
        seed=args.seed,
        detector=OverfitDetector(),
        early_stopping=None if args.early_stopping is None else EarlyStopping(patience=args.early_stopping),
        progress=not args.no_progress,
        checkpoint_dir=out,
        config=config,
    )
    history.save(out / "history")
    return history


def _early_stopping_line(history) -> str:
    """What labelled early stopping did in this run, or what it would have done on its held-out loss."""
    from .detect import early_stopping_epoch, restored_best_epoch

    used = history.config.get("early_stopping")
    if used:
        stop, restored = used.get("stopped_epoch"), used.get("restored_epoch")
        head = f"early stopping (patience {used['patience']}, best weights restored): "
        head += f"stopped at epoch {stop}" if stop is not None else "did not fire"
        return head + (f", restored epoch {restored}" if restored is not None else "")
    loss = history.metric("test", "loss")
    stop = early_stopping_epoch(loss, patience=10)
    if stop is None:
        return "early stopping (patience 10, not used in this run): would not have fired"
    restored = restored_best_epoch(loss, stop)
    return (
        f"early stopping (patience 10, not used in this run; --early-stopping turns it on): would have stopped at "
        f"epoch {stop} and restored epoch {restored} (loss {float(loss[restored]):.3f})"
    )


def _verdict(history) -> str:
    """What ``run``, ``report`` and ``compare`` print about a run: only what the run recorded.

    Runs recorded by an own loop may start at any epoch, have no timing, no test loss, no detector:
    each line says what is there, and the detector's caveat is printed only when a detector ran.
    """
    import pandas as pd

    from .detect import EVIDENCE_NOTE, evaluate_detector
    from .report import run_verdict

    facts = history.summary().iloc[0]  # the run's facts, as every table of runs shows them
    best = None if pd.isna(facts["min-loss epoch"]) else (int(facts["min-loss epoch"]), facts["min test loss"])
    epochs = history.epochs
    span = "no epochs" if not epochs else f"{len(epochs)} recorded epoch{'s' if len(epochs) != 1 else ''}"
    if len(epochs) > 1:
        span += f", {epochs[0]}–{epochs[-1]}" if epochs == list(range(epochs[0], epochs[-1] + 1)) else f" {epochs}"
    elif epochs:
        span += f", epoch {epochs[0]}"
    seconds = history.outcome.train_seconds
    timing = "" if seconds is None else f", {seconds:.1f} s of training"
    lines = [
        f"run: {history.config.get('name') or '(unnamed)'}  ({span}{timing})",
        "test-loss minimum: "
        + ("none (no test loss)" if best is None else f"epoch {best[0]} (loss {best[1]:.3f})")
        + ("" if best is None else f"; last epoch loss {facts['last test loss']:.3f}"),
    ]
    if best is not None:
        lines.append(_early_stopping_line(history))
    # the caveat only where a detector ran (an own loop's run may have none)
    label = (
        "sparsity detector" if history.detection is None else "sparsity event (not validated as an overfitting warning)"
    )
    lines.append(f"{label}: {run_verdict(history)}")
    if history.detection is not None:
        lines.append(f"note: {EVIDENCE_NOTE}")
    if best is not None and history.detection is not None:
        rows, _ = evaluate_detector(history, patience=10)
        rows = rows.sort_values("method", key=lambda m: m != "early_stopping", kind="stable")  # early stopping first
        cols = ["method", "stop_epoch", "lead", "outcome", "loss_at_stop", "accuracy_at_stop"]
        lines.append(rows[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    history = _train(args, out)
    print(_verdict(history))
    if not args.no_report:
        from .report import write_report

        page = write_report(history, out / "report")
        print(f"report: {page}")
    print(f"run directory: {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Baseline and penalised run on the embedded digits, verdicts, a report and a comparison."""
    out = Path(args.out)
    from .report import write_comparison, write_report

    histories = {}
    if args.penalty_weight is not None:
        print("xaisparse: --penalty-weight is deprecated; use --weight", file=sys.stderr)
    lam_penalised = args.weight if args.weight is not None else (args.penalty_weight or 0.1)
    for lam in (0.0, lam_penalised):
        ns = argparse.Namespace(**{**vars(args), "weight": lam, "penalty": None, "name": None})
        label = "baseline" if lam == 0 else "penalty"
        run_dir = out / label
        print(f"== {label}: {'no penalty' if lam == 0 else f'sparsity penalty λ={lam:g}'} ==", flush=True)
        histories[label] = _train(ns, run_dir)
        print(_verdict(histories[label]), flush=True)
        print(f"report: {write_report(histories[label], run_dir / 'report')}", flush=True)
    page = write_comparison(histories, out / "comparison")
    b, p = (histories[k].summary().iloc[0] for k in ("baseline", "penalty"))
    print("== baseline vs penalty (test accuracy) ==")
    print(
        f"best epoch: {b['best test acc']:.3f} vs {p['best test acc']:.3f}; "
        f"last epoch: {b['last test acc']:.3f} vs {p['last test acc']:.3f}"
    )
    print(f"comparison: {page}")
    print(f"run directory: {out}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .history import History
    from .report import write_report

    h = History.load(args.run_dir)
    out = Path(args.out) if args.out else Path(args.run_dir) / "report"
    print(_verdict(h))
    print(f"report: {write_report(h, out)}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from .history import load_runs
    from .report import write_comparison

    if len(args.run_dirs) < 2:
        raise ValueError(f"compare needs at least two run directories, got {len(args.run_dirs)}")
    runs = load_runs(args.run_dirs)
    page = write_comparison(runs, Path(args.out))
    for _name, h in runs.items():
        print(_verdict(h))
    print(f"comparison: {page}")
    return 0


def cmd_playground(args: argparse.Namespace) -> int:
    """Serve the overfitting playground as a web page (Voilà) on localhost until Ctrl+C."""
    try:
        from .widgets.playground.app import serve
    except ImportError as exc:  # ipywidgets missing
        print(
            f"xaisparse: error: {exc}; install the teach extra: pip install 'xaisparse[teach]'",
            file=sys.stderr,
        )
        return 2
    try:
        return serve(args.settings, port=args.port, threads=args.threads)
    except ImportError as exc:  # Voilà missing
        print(f"xaisparse: error: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xaisparse", description=__doc__)
    debug_help = "show the traceback of an error instead of the one-line message"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser(
        "demo",
        help="the main job: train to overfitting on the embedded digits, detect, report",
        description="Train a small CNN on scikit-learn's embedded digits until it overfits, once "
        "without and once with the sparsity penalty; print the detector's verdict "
        "beside the test-loss minimum; write run directories and static reports.",
    )
    _add_run_args(demo, DEMO_DEFAULTS, weight_help="sparsity penalty weight λ of the penalised run (default 0.1)")
    demo.add_argument("--penalty-weight", type=float, default=None, help=argparse.SUPPRESS)  # deprecated: --weight
    demo.add_argument("--out", default="runs/demo", help="output folder")
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser(
        "run",
        help="train one configuration and write a run directory",
        description="Train one model with per-epoch sparsity measurement and write RUN_DIR.",
    )
    _add_run_args(run, DEMO_DEFAULTS)
    run.add_argument("--out", required=True, help="run directory to write")
    run.add_argument("--no-report", action="store_true", help="skip the static report")
    run.set_defaults(func=cmd_run)

    rep = sub.add_parser(
        "report",
        help="static report (PNG + HTML) of a saved run",
        description="Write PNG figures and an HTML page for RUN_DIR.",
    )
    rep.add_argument("run_dir")
    rep.add_argument("--out", default=None, help="report folder (default RUN_DIR/report)")
    rep.set_defaults(func=cmd_report)

    cmp_ = sub.add_parser(
        "compare",
        help="compare two or more saved runs",
        description="Curves and distributions of several runs side by side.",
    )
    cmp_.add_argument("run_dirs", nargs="+")
    cmp_.add_argument("--out", default="runs/comparison")
    cmp_.set_defaults(func=cmd_compare)

    pg = sub.add_parser(
        "playground",
        help="serve the overfitting playground as a web page for a class (needs xaisparse[teach])",
        description="Serve the overfitting playground with Voilà on http://127.0.0.1:PORT/ (no code on the "
        "page; each browser tab gets its own kernel) until Ctrl+C.",
    )
    pg.add_argument("--port", type=int, default=8866, help="port on 127.0.0.1 (default 8866)")
    pg.add_argument("--settings", default=None, help="a playground settings string to start from (pg1&...)")
    pg.add_argument("--threads", type=int, default=1, help="torch threads per kernel (default 1)")
    pg.set_defaults(func=cmd_playground)
    for command in sub.choices.values():  # --debug after the command too (absent there: the top level's value)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    return parser


#: What the library raises on purpose, with a message meant for the user: bad input and settings
#: (ValueError, TypeError, the project's XaisparseError subclasses), missing or unwritable files
#: (OSError), a training loss that blew up (FloatingPointError). Anything else is a bug: it keeps
#: its traceback.
_EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    XaisparseError,
    ValueError,
    TypeError,
    OSError,
    FloatingPointError,
)


def _error_line(exc: BaseException) -> str:
    """``xaisparse: error: <message>`` on one line (what ``main`` prints for an expected error).

    >>> _error_line(FileNotFoundError("no run directory at runs/x"))
    'xaisparse: error: no run directory at runs/x'
    """
    message = " ".join(str(exc).split()) or type(exc).__name__
    return f"xaisparse: error: {message}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status.

    0 on success; 2 for a usage error (argparse) or any error the library raises on purpose
    (``_EXPECTED_ERRORS``), printed as one line ``xaisparse: error: ...`` on stderr; with
    ``--debug`` those raise with their traceback instead. Unexpected exceptions always propagate.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except _EXPECTED_ERRORS as exc:
        if args.debug:
            raise
        print(_error_line(exc), file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
