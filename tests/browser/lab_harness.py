"""Real-browser harness: a private JupyterLab 4 server driven by headless Chromium (Playwright).

Nothing here talks to the network: the server binds 127.0.0.1 with a random token, news,
update checks and the PyPI extension manager are off, every Jupyter/IPython/JupyterLab
directory points into a temporary folder, and the browser aborts any request that is not
for the local server.

Typical use (see ``conftest.py`` for the fixtures)::

    server = LabServer.start(root_dir)               # waits for /api/status
    context = launch_chromium(playwright, user_data_dir)
    page = run_notebook_in_lab(context, server, "notebooks/x.ipynb")
    imgs = widget_images(page)                       # <img> of every ipywidgets.Image
    assert_nonblank(imgs.nth(0), "x-0", artifacts_dir)
    server.stop()

Playwright is imported lazily so that this module imports (and is collected for doctests)
where Playwright is absent.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS_DIR = REPO_ROOT / "test-artifacts" / "browser"

CHROMIUM_CANDIDATES = ("/usr/bin/chromium",)
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

#: User settings written into the private JUPYTERLAB_SETTINGS_DIR.
LAB_SETTINGS: dict[str, dict[str, Any]] = {
    # no news / update toasts (they would also hit the network)
    "@jupyterlab/apputils-extension/notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
        "doNotDisturbMode": True,
    },
    # keep every cell attached to the DOM so that all outputs can be located
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "scrollPastEnd": False},
}


# --------------------------------------------------------------------------- environment
def find_chromium() -> str | None:
    """Path of a Chromium executable, or None. ``XAISPARSE_CHROMIUM`` overrides the search."""
    override = os.environ.get("XAISPARSE_CHROMIUM")
    if override:
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    for cand in CHROMIUM_CANDIDATES:
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium") or shutil.which("chromium-browser")


def missing_requirements() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if find_chromium() is None:
        where = os.environ.get("XAISPARSE_CHROMIUM") or "/usr/bin/chromium or `chromium` on PATH"
        return f"Chromium not found ({where}); install it (e.g. apt-get install chromium) to run the browser tests"
    for mod, what in (
        ("playwright", "the playwright Python package"),
        ("jupyterlab", "jupyterlab"),
        ("ipykernel", "ipykernel"),
        ("ipywidgets", "ipywidgets"),
        ("PIL", "Pillow"),
    ):
        try:
            __import__(mod)
        except ImportError:
            return f"{what} is not installed (needed for the browser tests)"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- server
@dataclass
class LabServer:
    """A JupyterLab server in its own process group, isolated in ``base_dir``."""

    root_dir: Path
    base_dir: Path
    port: int
    token: str
    proc: subprocess.Popen
    log_path: Path
    env: dict[str, str] = field(repr=False, default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def runtime_dir(self) -> Path:
        return self.base_dir / "runtime"

    # ---------------------------------------------------------------- start
    @classmethod
    def start(
        cls, root_dir: Path, base_dir: Path | None = None, log_path: Path | None = None, timeout: float = 90.0
    ) -> LabServer:
        root_dir = Path(root_dir).resolve()
        root_dir.mkdir(parents=True, exist_ok=True)
        base_dir = Path(base_dir or root_dir.parent / "jupyter-home").resolve()
        dirs = {name: base_dir / name for name in ("config", "data", "runtime", "ipython", "settings", "workspaces")}
        for d in dirs.values():
            d.mkdir(parents=True, exist_ok=True)
        _write_kernelspec(dirs["data"])
        for name, values in LAB_SETTINGS.items():
            path = dirs["settings"] / f"{name}.jupyterlab-settings"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(values, indent=2))

        env = dict(os.environ)
        bindir = str(Path(sys.executable).parent)
        env.update(
            JUPYTER_CONFIG_DIR=str(dirs["config"]),
            JUPYTER_DATA_DIR=str(dirs["data"]),
            JUPYTER_RUNTIME_DIR=str(dirs["runtime"]),
            IPYTHONDIR=str(dirs["ipython"]),
            JUPYTERLAB_SETTINGS_DIR=str(dirs["settings"]),
            JUPYTERLAB_WORKSPACES_DIR=str(dirs["workspaces"]),
            JUPYTER_PLATFORM_DIRS="1",
            PATH=bindir + os.pathsep + env.get("PATH", ""),
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p),
        )
        env.pop("JUPYTER_PATH", None)
        env.pop("MPLBACKEND", None)
        env.pop("JUPYTER_TOKEN", None)

        token = secrets.token_hex(24)
        port = free_port()
        cmd = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            "--ServerApp.ip=127.0.0.1",
            f"--port={port}",
            "--ServerApp.port_retries=0",
            f"--ServerApp.root_dir={root_dir}",
            "--ServerApp.open_browser=False",
            "--ServerApp.disable_check_xsrf=False",
            "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.extension_manager=readonly",
            "--LabApp.expose_app_in_browser=True",
            "--ServerApp.terminals_enabled=False",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        log_path = Path(log_path or base_dir / "jupyter-server.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            cmd,
            cwd=root_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        server = cls(root_dir, base_dir, port, token, proc, log_path, env)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.stop()
            raise
        return server

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                status = self.api("GET", "/api/status", timeout=2)
                if isinstance(status, dict):
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.25)
        raise TimeoutError(f"jupyter lab did not answer /api/status within {timeout:.0f}s ({last}):\n{self.log_tail()}")

    # ---------------------------------------------------------------- REST
    def api(self, method: str, path: str, body: Any = None, timeout: float = 10) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def shutdown_sessions(self) -> None:
        """Shut every session (and its kernel) down; quiet when the server is gone."""
        try:
            for s in self.api("GET", "/api/sessions") or []:
                try:
                    self.api("DELETE", f"/api/sessions/{s['id']}", timeout=20)
                except Exception:
                    pass
        except Exception:
            pass

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ---------------------------------------------------------------- stop
    def _our_kernel_pids(self) -> list[int]:
        """Kernels of this server (they run in their own sessions): pids whose command line
        names a connection file inside our private runtime dir."""
        marker = str(self.runtime_dir).encode()
        pids = []
        for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as fh:
                    if marker in fh.read():
                        pids.append(int(entry))
            except OSError:
                continue
        return [p for p in pids if p != os.getpid()]

    def stop(self, timeout: float = 15.0) -> None:
        """Shut down (REST first, then SIGTERM/SIGKILL to the process group and our kernels)."""
        kernels = self._our_kernel_pids()
        if self.proc.poll() is None:
            try:
                self.api("POST", "/api/shutdown", timeout=5)
            except Exception:
                pass
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    pass
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    pass
        # kernels started by the server live in their own process groups
        for pid in set(kernels) | set(self._our_kernel_pids()):
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.kill(pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                time.sleep(0.2)


def _write_kernelspec(data_dir: Path) -> None:
    """A ``python3`` kernelspec that runs *this* interpreter (the venv's), not whatever
    ``python`` is first on PATH."""
    spec = data_dir / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "Python 3 (ipykernel)",
                "language": "python",
                "metadata": {"debugger": False},
            },
            indent=1,
        )
    )


# --------------------------------------------------------------------------- browser
def launch_chromium(playwright: Any, user_data_dir: Path, viewport: tuple[int, int] = (1400, 1000)) -> Any:
    """A persistent Chromium context (fresh profile in ``user_data_dir``) that blocks every
    request not aimed at 127.0.0.1/localhost."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("Chromium not found")
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=exe,
        headless=True,
        args=CHROMIUM_ARGS + ["--disable-features=Translate,MediaRouter,OptimizationHints"],
        viewport={"width": viewport[0], "height": viewport[1]},
        device_scale_factor=1,
        accept_downloads=False,
    )
    context.route(
        re.compile(r"^(?!https?://(127\.0\.0\.1|localhost)[:/])(https?|wss?)://"), lambda route: route.abort()
    )
    context.set_default_timeout(30_000)
    return context


@contextmanager
def chromium(user_data_dir: Path, viewport: tuple[int, int] = (1400, 1000)) -> Iterator[Any]:
    """Playwright started and a :func:`launch_chromium` context open for the block; both are
    closed after it, also after an exception."""
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    try:
        context = launch_chromium(pw, user_data_dir, viewport)
        try:
            yield context
        finally:
            context.close()
    finally:
        pw.stop()


_STATE_JS = """
(path) => {
  const app = window.jupyterapp;
  if (!app) return {stage: 'no jupyterapp'};
  let panel = null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.model) { panel = w; break; }
  }
  if (!panel) return {stage: 'no notebook panel'};
  const sc = panel.sessionContext;
  const kernel = sc && sc.session ? sc.session.kernel : null;
  const model = panel.content.model;
  const cells = [];
  for (let i = 0; i < model.cells.length; i++) {
    const c = model.cells.get(i);
    if (c.type !== 'code') continue;
    const outs = c.outputs.toJSON();
    const errors = outs.filter(o => o.output_type === 'error')
                       .map(o => ({ename: o.ename, evalue: o.evalue,
                                   traceback: (o.traceback || []).join('\\n').replace(/\\u001b\\[[0-9;]*m/g, '')}));
    const widgets = outs.filter(o => o.data && o.data['application/vnd.jupyter.widget-view+json']).length;
    const stderr = outs.filter(o => o.output_type === 'stream' && o.name === 'stderr').map(o => o.text).join('');
    const source = c.sharedModel.getSource();
    cells.push({index: i, count: c.executionCount, errors, widgets, stderr,
                empty: source.trim() === ''});
  }
  return {stage: 'open', id: panel.id, kernel: kernel ? kernel.name : null,
          status: kernel ? kernel.status : (sc ? sc.kernelDisplayStatus : null),
          ready: !!(sc && sc.isReady), cells};
}
"""


class NotebookRunError(AssertionError):
    """A cell of the notebook raised; ``errors`` holds ``(cell index, ename, evalue)``."""

    def __init__(self, message: str, errors: list[tuple[int, str, str]] = ()):
        super().__init__(message)
        self.errors = list(errors)


def _poll(fn, timeout: float, interval: float, what: str, page: Any) -> Any:
    """Call ``fn() -> (done, state)`` until done; returns the state."""
    deadline = time.monotonic() + timeout
    while True:
        done, state = fn()
        if done:
            return state
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}; last state: {state!r}")
        page.wait_for_timeout(int(interval * 1000))


def notebook_state(page: Any, path: str) -> dict[str, Any]:
    return page.evaluate(_STATE_JS, path)


def run_notebook_in_lab(
    context: Any,
    server: LabServer,
    notebook_path: str | os.PathLike,
    timeout: float = 150.0,
    artifacts_dir: Path | None = None,
    name: str | None = None,
) -> Any:
    """Open ``notebook_path`` in JupyterLab, run all cells, wait until the kernel is idle,
    every code cell has an execution count and every widget output has rendered.

    The notebook is copied into the server's root dir when it is not already inside it.
    Raises :class:`NotebookRunError` (with the traceback) when a cell errors. Returns the
    Playwright page (caller closes it).
    """
    src = Path(notebook_path).resolve()
    try:
        rel = src.relative_to(server.root_dir)
    except ValueError:
        dst = server.root_dir / src.name
        shutil.copyfile(src, dst)
        rel = dst.relative_to(server.root_dir)
    path = rel.as_posix()
    name = name or src.stem
    t0 = time.monotonic()

    page = context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}") if m.type in ("error", "warning") else None)
    page.on("pageerror", lambda e: console.append(f"[pageerror] {e}"))
    page._xaisparse_console = console  # type: ignore[attr-defined]
    try:
        _open_and_run(page, server, path, name, timeout, artifacts_dir, t0)
    except BaseException:
        _fail_shot(page, artifacts_dir, name)
        if artifacts_dir is not None and console:
            (artifacts_dir / f"{name}-console.log").write_text("\n".join(console))
        page.close()
        raise
    return page


def _open_and_run(
    page: Any, server: LabServer, path: str, name: str, timeout: float, artifacts_dir: Path | None, t0: float
) -> None:
    console = page._xaisparse_console
    # a fresh, uniquely named workspace per page: the default layout plus this notebook, and
    # no state of earlier tests (``?reset`` would reload the page once more)
    workspace = f"t{secrets.token_hex(6)}"
    page.goto(
        f"{server.url}/lab/workspaces/{workspace}/tree/{path}?token={server.token}", wait_until="domcontentloaded"
    )
    for attempt in range(3):
        try:
            page.wait_for_function("() => window.jupyterapp !== undefined", timeout=60_000)
            page.evaluate("async () => { await window.jupyterapp.started; await window.jupyterapp.restored; }")
            break
        except Exception as exc:  # the page navigated (e.g. a login redirect) under us: wait again
            if "context was destroyed" not in str(exc) or attempt == 2:
                raise
            page.wait_for_load_state("domcontentloaded")
    t_restored = time.monotonic()

    def opened():
        st = notebook_state(page, path)
        return (
            st.get("stage") == "open"
            and st.get("ready")
            and st.get("kernel") is not None
            and st.get("status") == "idle",
            st,
        )

    try:
        st = _poll(opened, 90, 0.25, f"notebook {path} to open with an idle kernel", page)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\nconsole: {console[-20:]}\nserver log:\n{server.log_tail()}") from None
    # make room, focus the notebook and run everything
    page.evaluate(
        """(id) => {
        const app = window.jupyterapp;
        try { app.shell.collapseLeft(); app.shell.collapseRight(); } catch (e) {}
        app.shell.activateById(id);
    }""",
        st["id"],
    )
    t_run = time.monotonic()
    # clear stored outputs and execution counts first (so that "every cell has a count" means
    # "every cell ran now"), then run all; fire and forget: the command's promise only
    # settles when every cell has run
    page.evaluate("""async () => {
        window.__xaisparse_run_error = null;
        const commands = window.jupyterapp.commands;
        await commands.execute('notebook:clear-all-cell-outputs');
        commands.execute('notebook:run-all-cells')
            .catch(e => { window.__xaisparse_run_error = String(e); });
    }""")

    def finished():
        st = notebook_state(page, path)
        cells = [c for c in st.get("cells", []) if not c["empty"]]
        errs = [c for c in cells if c["errors"]]
        if errs:
            return (True, st)
        run_error = page.evaluate("() => window.__xaisparse_run_error")
        if run_error:
            raise NotebookRunError(f"{path}: 'Run All Cells' failed: {run_error}")
        done = st.get("status") == "idle" and all(c["count"] is not None for c in cells)
        return (done, st)

    try:
        st = _poll(finished, max(10.0, timeout - (t_run - t0)), 0.3, f"all cells of {path} to run", page)
        # settle: the state must still be finished a moment later (no queued cell left)
        page.wait_for_timeout(300)
        st = _poll(finished, 30, 0.3, f"all cells of {path} to run", page)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\nconsole: {console[-20:]}") from None
    errors = [(c["index"], e) for c in st["cells"] for e in c["errors"]]
    if errors:
        msg = "\n\n".join(f"cell {i}: {e['ename']}: {e['evalue']}\n{e['traceback']}" for i, e in errors)
        raise NotebookRunError(f"{path}: a cell raised\n{msg}", [(i, e["ename"], e["evalue"]) for i, e in errors])
    page._xaisparse_stderr = [(c["index"], c["stderr"]) for c in st["cells"] if c["stderr"]]  # type: ignore[attr-defined]

    # every widget output has a rendered view (ipywidgets renders asynchronously)
    n_widget_outputs = sum(c["widgets"] for c in st["cells"])
    page.wait_for_function(
        """(n) => {
            const views = document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output > .jupyter-widgets');
            const bad = [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
                        .some(el => el.textContent.includes('Error displaying widget'));
            return bad || views.length >= n;
        }""",
        arg=n_widget_outputs,
        timeout=30_000,
    )
    outs_text = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").all_inner_texts()
    broken = [t for t in outs_text if "Error displaying widget" in t]
    if broken:
        raise NotebookRunError(f"{path}: widget views failed to render: {broken}\nconsole: {console[-20:]}")
    wait_images_loaded(page)
    page._xaisparse_timing = {
        "load_s": t_restored - t0,
        "kernel_start_s": t_run - t_restored,
        "run_cells_s": time.monotonic() - t_run,
    }  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- images
WIDGET_IMG = ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output img.jupyter-widgets.widget-image"


def widget_images(page: Any, within: Any = None) -> Any:
    """Locator of every ``ipywidgets.Image`` <img> in the notebook's outputs (or in ``within``)."""
    return page.locator(WIDGET_IMG) if within is None else within.locator("img.jupyter-widgets.widget-image")


def wait_images_loaded(page: Any, timeout: float = 30.0) -> None:
    """Wait until every visible widget image has finished loading."""
    page.wait_for_function(
        """(sel) => [...document.querySelectorAll(sel)]
              .filter(img => img.getAttribute('src'))
              .every(img => img.complete)""",
        arg=WIDGET_IMG,
        timeout=timeout * 1000,
    )


def image_info(img: Any) -> dict[str, Any]:
    """natural size, src and SHA-256 of the bytes behind an <img> (fetched from its blob URL)."""
    return img.evaluate("""async (img) => {
        const out = {w: img.naturalWidth, h: img.naturalHeight, src: img.getAttribute('src') || '',
                     shown_w: img.offsetWidth, shown_h: img.offsetHeight,
                     visible: img.offsetWidth > 0 && img.offsetHeight > 0, sha: null, bytes: 0};
        if (!out.src) return out;
        for (let attempt = 0; attempt < 5; attempt++) {
            try {
                const buf = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
                const d = new Uint8Array(await crypto.subtle.digest('SHA-256', buf));
                out.sha = [...d].map(b => b.toString(16).padStart(2, '0')).join('');
                out.bytes = buf.length;
                break;
            } catch (e) { await new Promise(r => setTimeout(r, 100)); }
        }
        return out;
    }""")


def pixel_stats(png: bytes) -> dict[str, float]:
    """Distinct colours, share of the most common colour and grey-level std of a PNG.

    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (10, 10), "white").save(buf, "PNG")
    >>> s = pixel_stats(buf.getvalue()); (s["colors"], s["dominant"], s["std"])
    (1, 1.0, 0.0)
    """
    from PIL import Image, ImageStat

    im = Image.open(io.BytesIO(png)).convert("RGB")
    n = im.width * im.height
    colors = im.getcolors(maxcolors=n + 1) or []
    dominant = max(c for c, _ in colors) / n if colors else 0.0
    std = ImageStat.Stat(im.convert("L")).stddev[0]
    return {"colors": len(colors), "dominant": dominant, "std": float(std), "width": im.width, "height": im.height}


def is_nonblank(
    stats: dict[str, float], min_colors: int = 16, max_dominant: float = 0.995, min_std: float = 2.0
) -> bool:
    return stats["colors"] >= min_colors and stats["dominant"] <= max_dominant and stats["std"] >= min_std


def assert_nonblank(img: Any, name: str, artifacts_dir: Path | None = None) -> dict[str, Any]:
    """Assert that a widget <img> has a loaded, visible, non-blank picture; saves its screenshot
    as ``<artifacts_dir>/<name>.png``. Returns image_info + pixel stats."""
    img.scroll_into_view_if_needed()
    info = image_info(img)
    assert info["src"], f"{name}: the image has no src (empty Image value?)"
    assert info["w"] > 0 and info["h"] > 0, f"{name}: image not decoded (natural size {info['w']}x{info['h']})"
    assert info["visible"], f"{name}: image is not visible (display:none or zero size)"
    shot = img.screenshot(path=str(artifacts_dir / f"{name}.png") if artifacts_dir else None)
    stats = pixel_stats(shot)
    info.update(stats)
    assert is_nonblank(stats), f"{name}: widget image looks blank: {stats}"
    return info


def _fail_shot(page: Any, artifacts_dir: Path | None, name: str) -> None:
    if artifacts_dir is None:
        return
    try:
        page.screenshot(path=str(artifacts_dir / f"{name}-FAILED.png"))
    except Exception:
        pass


def save_notebook_screenshot(page: Any, path: Path, max_height: int = 16000) -> None:
    """Screenshot of the whole notebook: the viewport is stretched to the notebook's height
    for the shot (JupyterLab scrolls inside a panel, so ``full_page`` alone shows one screen)."""
    vp = page.viewport_size
    height = page.evaluate("""() => {
        const el = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer');
        return el ? el.scrollHeight : document.body.scrollHeight;
    }""")
    chrome = 200  # menu bar, tabs, toolbar, status bar
    page.set_viewport_size({"width": vp["width"], "height": min(max_height, max(vp["height"], height + chrome))})
    try:
        page.wait_for_timeout(500)
        page.evaluate("""() => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-WindowedPanel-outer')
                                .forEach(el => { el.scrollTop = 0; })""")
        page.wait_for_timeout(100)
        wait_images_loaded(page)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(vp)
        page.wait_for_timeout(200)


# --------------------------------------------------------------------------- interaction
def slider_value(slider: Any) -> str:
    return slider.locator(".widget-readout").inner_text().strip()


def move_slider(page: Any, slider: Any, key: str = "ArrowRight", presses: int = 1) -> None:
    """Move an ipywidgets 8 slider (``.widget-slider``) with the keyboard on its noUiSlider
    handle; falls back to typing into the readout when the value did not change."""
    before = slider_value(slider)
    handle = slider.locator(".noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(presses):
        handle.press(key)
    try:
        page.wait_for_function(
            "([el, v]) => el.querySelector('.widget-readout').textContent.trim() !== v",
            arg=[slider.element_handle(), before],
            timeout=3000,
        )
        return
    except Exception:
        pass
    readout = slider.locator(".widget-readout")
    try:
        new = str(int(before) + (presses if key == "ArrowRight" else -presses))
    except ValueError:
        raise AssertionError(f"slider did not move with {key} and its readout {before!r} is not an int") from None
    readout.click()
    page.keyboard.press("Control+A")
    page.keyboard.type(new)
    page.keyboard.press("Enter")


def wait_image_changed(page: Any, img: Any, old_sha: str, timeout: float = 30.0) -> dict[str, Any]:
    """Poll the <img> until the bytes behind it differ from ``old_sha``; returns image_info."""
    deadline = time.monotonic() + timeout
    while True:
        info = image_info(img)
        if info["sha"] and info["sha"] != old_sha and info["w"] > 0:
            page.wait_for_function("(img) => img.complete", arg=img.element_handle(), timeout=5000)
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"image did not change within {timeout:.0f}s (still {old_sha[:12]})")
        page.wait_for_timeout(200)


def widget_views(page: Any) -> Any:
    """Locator of the top-level widget view of every output that has one."""
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output > .jupyter-widgets")


_APPEND_AND_RUN_JS = """
async ([path, source]) => {
  const app = window.jupyterapp;
  let panel = null;
  for (const w of app.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.model) { panel = w; break; }
  }
  if (!panel) throw new Error('no notebook panel for ' + path);
  const nb = panel.content;
  nb.model.sharedModel.insertCell(nb.model.cells.length, {cell_type: 'code', source});
  nb.activeCellIndex = nb.model.cells.length - 1;
  app.shell.activateById(panel.id);
  app.commands.execute('notebook:run-cell');
  return nb.model.cells.length - 1;
}
"""

_CELL_JS = """
([path, index]) => {
  for (const w of window.jupyterapp.shell.widgets('main')) {
    if (w.context && w.context.path === path && w.content && w.content.model) {
      const c = w.content.model.cells.get(index);
      const outs = c.outputs.toJSON();
      const text = outs.map(o => o.text || (o.data && o.data['text/plain']) || o.evalue || '').join('');
      return {count: c.executionCount, text, error: outs.some(o => o.output_type === 'error')};
    }
  }
  return null;
}
"""


def run_extra_cell(page: Any, notebook_path: str, source: str, timeout: float = 60.0) -> str:
    """Append a code cell to the open notebook, run it and return its text output once it ran.

    The kernel must be free to run it: a cell that does not finish within ``timeout`` fails
    the test (that is the point when checking that training does not block the kernel).
    """
    index = page.evaluate(_APPEND_AND_RUN_JS, [notebook_path, source])
    state = _poll(
        lambda: ((s := page.evaluate(_CELL_JS, [notebook_path, index])) is not None and s["count"] is not None, s),
        timeout,
        0.2,
        f"the extra cell {source[:40]!r} to run",
        page,
    )
    assert not state["error"], f"the extra cell raised: {state['text']}"
    return state["text"]


def save_tall_screenshot(page: Any, path: Path, max_height: int = 8000) -> None:
    """Screenshot of a page whose content scrolls inside an element (Voilà's lab template): the
    viewport is stretched to the tallest scroll height for the shot, then restored."""
    vp = page.viewport_size
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))")
    page.set_viewport_size({"width": vp["width"], "height": min(max_height, max(vp["height"], int(height) + 40))})
    try:
        page.wait_for_timeout(400)
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(vp)
