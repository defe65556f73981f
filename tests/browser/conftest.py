"""Fixtures of the real-browser tests: one private JupyterLab server and one headless Chromium
per test session (both torn down at the end, also after failures), and a per-test ``lab``
helper that opens and runs notebooks and cleans up after itself.

Skipped with a message when Chromium, Playwright or JupyterLab are missing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import lab_harness as lh


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session")
def browser_requirements() -> None:
    reason = lh.missing_requirements()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    lh.ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    for old in [*lh.ARTIFACTS_DIR.glob("*.png"), *lh.ARTIFACTS_DIR.glob("*.log")]:  # stale results
        old.unlink(missing_ok=True)
    return lh.ARTIFACTS_DIR


@pytest.fixture(scope="session")
def lab_server(browser_requirements, artifacts_dir, tmp_path_factory) -> Any:
    base = tmp_path_factory.mktemp("jupyterlab")
    t0 = time.monotonic()
    server = lh.LabServer.start(base / "root", base / "home", log_path=artifacts_dir / "jupyter-server.log")
    print(f"\n[browser] JupyterLab up on {server.url} in {time.monotonic() - t0:.1f}s (root {server.root_dir})")
    try:
        yield server
    finally:
        server.stop()


# Module scope: Playwright's sync API runs one event loop per thread, so a browser kept for the
# whole session would make every later sync_playwright() in this worker fail (test_docs.py's
# site checks run in the same worker when xdist puts both groups there).
@pytest.fixture(scope="module")
def lab_browser(browser_requirements, tmp_path_factory) -> Any:
    with lh.chromium(tmp_path_factory.mktemp("chromium-profile")) as context:
        yield context


class Lab:
    """Per-test handle: ``lab.run(notebook)`` -> page with every cell executed."""

    def __init__(self, server: lh.LabServer, context: Any, artifacts_dir: Path):
        self.server, self.context, self.artifacts_dir = server, context, artifacts_dir
        self.pages: list[tuple[str, Any]] = []
        self.timings: dict[str, float] = {}

    def run(self, notebook_path: str | Path, name: str | None = None, timeout: float = 150.0) -> Any:
        name = name or Path(notebook_path).stem
        t0 = time.monotonic()
        page = lh.run_notebook_in_lab(
            self.context, self.server, notebook_path, timeout=timeout, artifacts_dir=self.artifacts_dir, name=name
        )
        self.pages.append((name, page))
        self.timings.update({f"{name}: {k}": v for k, v in page._xaisparse_timing.items()})
        self.timings[f"{name}: open+run"] = time.monotonic() - t0
        return page

    def close(self, failed: bool) -> None:
        for name, page in self.pages:
            try:
                if failed:
                    page.screenshot(path=str(self.artifacts_dir / f"{name}-FAILED.png"))
                console = getattr(page, "_xaisparse_console", [])
                if console:
                    (self.artifacts_dir / f"{name}-console.log").write_text("\n".join(console))
                page.close()
            except Exception:
                pass
        self.server.shutdown_sessions()


@pytest.fixture
def lab(request, lab_server, lab_browser, artifacts_dir) -> Any:
    handle = Lab(lab_server, lab_browser, artifacts_dir)
    t0 = time.monotonic()
    try:
        yield handle
    finally:
        rep = getattr(request.node, "rep_call", None)
        handle.close(failed=bool(rep is not None and rep.failed))
        timings = ", ".join(f"{k} {v:.1f}s" for k, v in handle.timings.items())
        print(f"\n[browser] {request.node.name}: {time.monotonic() - t0:.1f}s ({timings})")
