"""Static reports: PNG figures and a self-contained HTML page for a run or a comparison.

The figures are the widgets' static forms (``to_figure()``), so the report shows exactly
what the notebooks show.
"""

from __future__ import annotations

import html
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

from .history import History

__all__ = ["write_comparison", "write_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em} img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
.verdict{background:#f5f7fa;border-left:4px solid #4c72b0;padding:.6em 1em}
"""


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_figure(fig, path: Path) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _atomic_write(path, buf.getvalue())
    return path.name


def _verdict_html(history: History) -> str:
    loss = history.metric("test", "loss")
    det = history.detector or {}
    parts = []
    if len(loss):
        parts.append(
            f"Test-loss minimum at epoch <b>{int(loss.idxmin())}</b> (loss {loss.min():.3f}; "
            f"last epoch {loss.iloc[-1]:.3f})."
        )
    else:
        parts.append("No test data was measured.")
    alarm = det.get("alarm_epoch")
    if alarm is None:
        parts.append("Sparsity detector: <b>no alarm</b>.")
    else:
        layers = ", ".join(html.escape(str(x)) for x in det.get("layers") or [])
        parts.append(f"Sparsity detector: alarm at epoch <b>{alarm}</b> (layers {layers}).")
    return "<p class='verdict'>" + " ".join(parts) + "</p>"


def write_report(history: History, out_dir: str | os.PathLike) -> Path:
    """Write ``timeline.png``, ``heatmap.png``, ``distribution.png`` and ``index.html``; returns the page."""
    from .widgets import LayerEpochHeatmap, PerplexityDistribution, SparsityTimeline

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = "test" if "test" in history.splits else (history.splits[0] if history.splits else "test")
    figures = []
    epochs = history.epochs
    sections = [
        ("Sparsity and loss over epochs", "timeline.png", lambda: SparsityTimeline(history, split=split)),
        ("Layers × epochs", "heatmap.png", lambda: LayerEpochHeatmap(history, split=split)),
        (
            "Per-channel sparsity distribution, last epoch, deepest layer",
            "distribution.png",
            lambda: PerplexityDistribution(
                history,
                layer=history.layer_names[-1] if history.layer_names else None,
                epoch=epochs[-1] if epochs else None,
                split=split,
            ),
        ),
    ]
    for title, name, make in sections:
        fig = make().to_figure()
        figures.append((title, _save_figure(fig, out / name)))
    cfg = {k: v for k, v in history.config.items() if not isinstance(v, (dict, list))}
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in cfg.items())
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for t, n in figures)
    title = html.escape(str(history.config.get("name", "xaisparse run")))
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{title}</h1>{_verdict_html(history)}{body}<h2>Configuration</h2><table>{rows}</table>"
        "</body></html>"
    )
    _atomic_write(out / "index.html", page.encode("utf-8"))
    return out / "index.html"


def write_comparison(runs: Mapping[str, History], out_dir: str | os.PathLike) -> Path:
    """Write ``comparison.png`` and ``index.html`` comparing several runs; returns the page."""
    from .widgets import RunComparison

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _save_figure(RunComparison(dict(runs)).to_figure(), out / "comparison.png")
    rows = []
    for run, h in runs.items():
        acc, loss = h.metric("test", "accuracy"), h.metric("test", "loss")
        alarm = (h.detector or {}).get("alarm_epoch")
        rows.append(
            f"<tr><th>{html.escape(run)}</th><td>{int(loss.idxmin()) if len(loss) else '–'}</td>"
            f"<td>{loss.min():.3f}</td><td>{acc.max():.3f}</td><td>{acc.iloc[-1]:.3f}</td>"
            f"<td>{'–' if alarm is None else alarm}</td></tr>"
            if len(loss)
            else f"<tr><th>{html.escape(run)}</th></tr>"
        )
    table = (
        "<table><tr><th>run</th><th>test-loss min epoch</th><th>min test loss</th><th>best test acc</th>"
        "<th>last test acc</th><th>alarm epoch</th></tr>" + "".join(rows) + "</table>"
    )
    page = (
        f"<!doctype html><html><head><meta charset='utf-8'><title>run comparison</title><style>{_STYLE}</style>"
        f"</head><body><h1>Run comparison</h1>{table}<h2>Curves and distributions</h2>"
        f"<img src='{name}' alt='comparison'></body></html>"
    )
    _atomic_write(out / "index.html", page.encode("utf-8"))
    return out / "index.html"
