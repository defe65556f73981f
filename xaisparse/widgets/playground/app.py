"""The classroom app: the playground as a standalone web page, served by Voilà.

``xaisparse playground`` (see :func:`serve`) writes a two-cell notebook — a short how-to and
the playground — into a temporary folder and serves it with Voilà: the page shows the
rendered playground and no code; every browser tab that opens it gets its own kernel (its
own runs). Voilà comes with the ``teach`` extra (``pip install 'xaisparse[teach]'``). The
server listens on ``127.0.0.1`` only and prints its URL.

>>> nb = app_notebook("pg1&noise=0.4&seed=1")
>>> [c["cell_type"] for c in nb["cells"]]
['markdown', 'code']
>>> "OverfittingPlayground.from_settings('pg1&noise=0.4&seed=1')" in nb["cells"][1]["source"]
True
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from .settings import PlaygroundSettings, settings_from

__all__ = ["HOW_TO", "app_notebook", "serve", "voila_command", "write_app"]

#: The how-to shown above the playground on the app's page (Markdown).
HOW_TO = """\
# Overfitting playground

A small convolutional network learns to read handwritten digits. **Train** it and watch the
**test loss** (solid blue, left): it falls, reaches its lowest point (green line) and — when the
network starts memorising its training images — rises again while the training loss keeps
falling. That is **overfitting**.

1. Press **Train**. Pause, **Step** one epoch at a time, or **Stop** whenever you like.
2. Change one knob (fewer *train images*, more *label noise*, a wider network) and train again:
   the earlier runs stay as grey lines behind the new one and as rows of the table at the bottom.
3. Look *inside the network*: every small picture is one feature map of a test image, titled
   with its sparsity (0: the whole map is active, 1: one pixel; **dead**: nothing at all).
4. Try the regularisers — dropout, weight decay, the sparsity penalty λ — also while training.

To share a run, copy its **settings** string; **Load** sets the knobs from one.
"""


def app_notebook(settings: str | PlaygroundSettings | None = None, threads: int = 1) -> dict[str, Any]:
    """The app's notebook (nbformat 4 JSON): the how-to and a playground set to ``settings``."""
    text = settings_from(settings if settings is not None else PlaygroundSettings()).to_string()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be an int >= 1, got {threads!r}")
    code = (
        "import torch\n"
        "from xaisparse.widgets import OverfittingPlayground\n\n"
        f"torch.set_num_threads({threads})  # one kernel per browser tab: share the CPU\n"
        f"OverfittingPlayground.from_settings({text!r})"
    )
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
            "language_info": {"name": "python"},
        },
        "cells": [
            {"cell_type": "markdown", "id": "how-to", "metadata": {}, "source": HOW_TO},
            {
                "cell_type": "code",
                "id": "playground",
                "metadata": {},
                "execution_count": None,
                "outputs": [],
                "source": code,
            },
        ],
    }


def write_app(folder: str | os.PathLike[str], settings: Any = None, threads: int = 1) -> Path:
    """Write the app's notebook into ``folder``; returns its path."""
    path = Path(folder) / "Overfitting playground.ipynb"  # Voilà titles the page with the file name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(app_notebook(settings, threads), indent=1), encoding="utf-8")
    return path


def voila_command(notebook: str | os.PathLike[str], port: int) -> list[str]:
    """The Voilà command line serving ``notebook`` on ``127.0.0.1:port`` (no browser, no code shown)."""
    return [
        sys.executable,
        "-m",
        "voila",
        str(notebook),
        "--no-browser",
        f"--port={port}",
        "--Voila.ip=127.0.0.1",
        "--Voila.port_retries=0",
        "--VoilaConfiguration.strip_sources=True",
        "--VoilaConfiguration.show_tracebacks=False",
        "--VoilaConfiguration.theme=light",
    ]


def _environment() -> dict[str, str]:
    """The server's environment: this interpreter first on PATH (its kernels run this xaisparse)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _wait_until_up(port: int, proc: subprocess.Popen, timeout: float) -> None:
    """Wait until the server accepts connections (a bare connect: no page is rendered, no kernel started)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Voilà exited with status {proc.returncode} before serving port {port} (is the port in use?)"
            )
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"Voilà did not listen on port {port} within {timeout:.0f}s")


def serve(
    settings: Any = None,
    port: int = 8866,
    threads: int = 1,
    *,
    ready: Any = None,
    timeout: float = 120.0,
) -> int:
    """Serve the app with Voilà on ``http://127.0.0.1:port/`` until Ctrl+C (or the server exits).

    Prints the URL once the server answers (``ready(url)`` is called too, when given).
    Returns the server's exit status (0 after Ctrl+C). Needs Voilà (the ``teach`` extra).
    """
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ValueError(f"port must be an int in [1, 65535], got {port!r}")
    text = settings_from(settings if settings is not None else PlaygroundSettings()).to_string()
    app_notebook(text, threads)  # checks threads
    try:
        import voila  # noqa: F401
    except ImportError:
        raise ImportError(
            "xaisparse playground needs Voilà, which is not installed: pip install 'xaisparse[teach]'"
        ) from None
    folder = Path(tempfile.mkdtemp(prefix="xaisparse-playground-"))
    proc: subprocess.Popen | None = None
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM stops the server like Ctrl+C
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        notebook = write_app(folder, text, threads)
        # its own session: Ctrl+C reaches this process only, which then stops the server cleanly
        proc = subprocess.Popen(
            voila_command(notebook, port),
            cwd=folder,
            env=_environment(),
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}/"
        _wait_until_up(port, proc, timeout)
        print(f"The overfitting playground is running at {url}", flush=True)
        print("Open it in a browser on this computer (each tab gets its own kernel); Ctrl+C stops it.", flush=True)
        if ready is not None:
            ready(url)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
