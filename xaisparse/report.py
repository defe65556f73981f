"""Static reports: PNG figures and a self-contained HTML page for a run or a comparison.

The figures come from :mod:`xaisparse.plots`, the same functions the widgets draw with, so
the report shows exactly what the notebooks show. Needs matplotlib only (no ipywidgets).
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ._io import atomic_write_bytes, atomic_write_text
from .history import History

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = ["run_verdict", "write_comparison", "write_report"]

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;color:#222}
h1{font-size:1.5em} h2{font-size:1.15em;margin-top:1.6em} img{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em} td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
.verdict{background:#f5f7fa;border-left:4px solid #4c72b0;padding:.6em 1em}
"""


def run_verdict(history: History) -> str:
    """The detector's verdict beside the test-loss minimum, one line (``"no detector"`` when none ran)."""
    best = history.test_loss_minimum()
    if history.detection is not None:
        return history.detection.verdict(best)
    if best is None:
        return "no sparsity detector was run; no test loss was measured"
    return f"no sparsity detector was run; the test-loss minimum is at epoch {best[0]} (loss {best[1]:.3f})"


def _figure(make: Callable[[], Figure], title: str) -> Figure:
    from .plots import NoData, message_figure

    try:
        return make()
    except NoData as exc:
        return message_figure(str(exc), title)


def _save_figure(fig: Figure, path: Path) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", facecolor="white")
    atomic_write_bytes(path, buf.getvalue())
    return path.name


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{title}</h1>{body}</body></html>"
    )


def write_report(history: History, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``timeline.png``, ``heatmap.png``, ``distribution.png`` and ``index.html``; returns the page."""
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    split = "test" if "test" in history.sparsity_splits else (history.sparsity_splits or ["test"])[0]
    last_layer = history.layer_names[-1] if history.layer_names else None
    sections: list[tuple[str, str, Callable[[], Figure]]] = [
        ("Sparsity and loss over epochs", "timeline.png", lambda: plots.timeline(history, split)),
        ("Layers × epochs", "heatmap.png", lambda: plots.heatmap(history, split)),
        (
            "Per-channel sparsity distribution, last epoch, deepest layer",
            "distribution.png",
            lambda: plots.distribution(history, last_layer, None, split),
        ),
    ]
    figures = [(title, _save_figure(_figure(make, title), out / name)) for title, name, make in sections]
    cfg = {k: v for k, v in history.config.items() if not isinstance(v, (dict, list))}
    outcome = {f"outcome: {k}": v for k, v in vars(history.outcome).items() if v is not None}
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in {**cfg, **outcome}.items()
    )
    body = "".join(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for t, n in figures)
    title = html.escape(str(history.config.get("name", "xaisparse run")))
    verdict = f"<p class='verdict'>{html.escape(run_verdict(history))}</p>"
    atomic_write_text(out / "index.html", _page(title, f"{verdict}{body}<h2>Configuration</h2><table>{rows}</table>"))
    return out / "index.html"


def write_comparison(runs: Mapping[str, History], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``comparison.png`` and ``index.html`` comparing several runs; returns the page."""
    from . import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = _save_figure(_figure(lambda: plots.comparison(dict(runs)), "run comparison"), out / "comparison.png")
    rows = []
    for run, h in runs.items():
        best = h.test_loss_minimum()
        has_acc = "test" in h.splits and "accuracy" in h.metric_names()
        acc = h.metric("test", "accuracy") if has_acc else None
        cells = ["–"] * 5
        if best is not None:
            cells[:2] = [str(best[0]), f"{best[1]:.3f}"]
        if acc is not None and not acc.empty:
            cells[2:4] = [f"{acc.max():.3f}", f"{acc.iloc[-1]:.3f}"]
        if h.alarm_epoch is not None:
            cells[4] = str(h.alarm_epoch)
        rows.append(f"<tr><th>{html.escape(run)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    table = (
        "<table><tr><th>run</th><th>test-loss min epoch</th><th>min test loss</th><th>best test acc</th>"
        "<th>last test acc</th><th>alarm epoch</th></tr>" + "".join(rows) + "</table>"
    )
    verdicts = "".join(f"<li><b>{html.escape(r)}</b>: {html.escape(run_verdict(h))}</li>" for r, h in runs.items())
    body = f"{table}<ul>{verdicts}</ul><h2>Curves and distributions</h2><img src='{name}' alt='comparison'>"
    atomic_write_text(out / "index.html", _page("Run comparison", body))
    return out / "index.html"
