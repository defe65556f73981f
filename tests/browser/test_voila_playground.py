"""The classroom app: ``xaisparse playground`` serves the playground with Voilà; headless
Chromium opens the printed URL.

Checks: the page shows the how-to and the playground and no code; **Train** redraws the
dashboard while the run trains; **Stop** ends it and the runs table shows the stopped run;
stopping the command (SIGTERM, as Ctrl+C) stops the server. Skipped with a message where
Voilà, Chromium or Playwright are missing. Screenshots land in ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import lab_harness as lh
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

SETTINGS = "pg1&n=60&width=4&epochs=200&probe=64&seed=0"


@pytest.fixture(scope="module")
def app(browser_requirements, artifacts_dir, tmp_path_factory):
    """``xaisparse playground`` on a free port with private Jupyter folders; stopped afterwards."""
    try:
        import voila  # noqa: F401
    except ImportError:
        pytest.skip("Voilà is not installed (pip install 'xaisparse[teach]'): the classroom app cannot be tested")
    home = tmp_path_factory.mktemp("voila-home")
    env = dict(os.environ)
    for name in ("config", "data", "runtime"):
        (home / name).mkdir()
    env.update(
        JUPYTER_CONFIG_DIR=str(home / "config"),
        JUPYTER_DATA_DIR=str(home / "data"),
        JUPYTER_RUNTIME_DIR=str(home / "runtime"),
        IPYTHONDIR=str(home / "ipython"),
        JUPYTER_PLATFORM_DIRS="1",
        PYTHONPATH=os.pathsep.join(p for p in (str(lh.REPO_ROOT), env.get("PYTHONPATH", "")) if p),
    )
    port = lh.free_port()
    log = open(artifacts_dir / "voila-server.log", "wb")
    cmd = [sys.executable, "-m", "xaisparse.cli", "playground", "--port", str(port), "--settings", SETTINGS]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=log, cwd=home, start_new_session=True)
    url = None
    deadline = time.monotonic() + 180
    lines = []
    while url is None and time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline().decode()
        lines.append(line)
        found = re.search(r"running at (http://127\.0\.0\.1:\d+/)", line)
        url = found.group(1) if found else None
    if url is None:
        proc.kill()
        pytest.fail(f"xaisparse playground printed no URL: {lines}\n{(artifacts_dir / 'voila-server.log').read_text()}")
    try:
        yield url, proc, port
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.fixture(scope="module")
def voila_browser(browser_requirements, tmp_path_factory):
    with lh.chromium(tmp_path_factory.mktemp("voila-chromium")) as context:
        yield context


def _status(view) -> str:
    return view.locator(".xaisparse-status").inner_text()


def test_the_app_serves_the_playground_without_code_and_trains(app, voila_browser, artifacts_dir: Path):
    url, proc, port = app
    art = artifacts_dir
    assert url == f"http://127.0.0.1:{port}/"
    page = voila_browser.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(f"[{m.type}] {m.text}") if m.type == "error" else None)
    try:
        page.goto(url, wait_until="domcontentloaded", timeout=180_000)
        view = page.locator(".xaisparse-playground").first
        view.wait_for(state="visible", timeout=180_000)
        # no code: no editor, no input area, not the source text
        assert page.locator(".jp-InputArea-editor, .jp-CodeMirrorEditor, .cm-editor, .CodeMirror").count() == 0
        assert "from_settings" not in page.content() and "import torch" not in page.inner_text("body")
        assert page.get_by_role("heading", name="Overfitting playground").count() == 1
        assert _status(view).strip() == "ready" and "Set the knobs and press Train." in view.inner_text()
        assert view.locator("img.widget-image:visible").count() == 0  # no empty (broken) pictures before a run
        assert view.locator("input[type=text]").first.input_value() == SETTINGS
        voila_browser.grant_permissions(["clipboard-read", "clipboard-write"], origin=url.rstrip("/"))
        view.locator("button.xaisparse-copy").click()  # Copy puts the settings string on the clipboard
        assert page.evaluate("() => navigator.clipboard.readText()") == SETTINGS
        lh.save_tall_screenshot(page, art / "voila-loaded.png")

        view.locator("button", has_text="Train").click()
        page.wait_for_function(
            "(el) => /epoch ([2-9]|\\d\\d+) \\/ 200/.test(el.innerText)", arg=view.element_handle(), timeout=120_000
        )
        images = lh.widget_images(page, within=view)
        page.wait_for_function(  # every view drawn once
            "(v) => [...v.querySelectorAll('img.widget-image')].filter(i => i.naturalWidth > 0).length >= 4",
            arg=view.element_handle(),
            timeout=120_000,
        )
        curves = lh.assert_nonblank(images.nth(0), "voila-curves", art)
        redrawn = lh.wait_image_changed(page, images.nth(0), curves["sha"], timeout=120)  # the dashboard redraws
        assert redrawn["sha"] != curves["sha"]
        lh.assert_nonblank(images.nth(1), "voila-maps", art)
        lh.save_tall_screenshot(page, art / "voila-training.png")

        view.locator("button", has_text="Stop").click()
        page.wait_for_function(
            "(el) => el.innerText.includes('stopped after epoch') && el.classList.contains('xaisparse-idle')",
            arg=view.element_handle(),
            timeout=60_000,
        )
        assert "stopped" in _status(view) and not view.locator(".xaisparse-error").count()
        assert view.locator("button", has_text="Train").is_enabled()
        lh.save_tall_screenshot(page, art / "voila-stopped.png")
        assert not [c for c in console if "Error displaying widget" in c], console
    finally:
        page.close()
    # Ctrl+C (here SIGTERM) stops the command and its server
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
