"""The documentation site: it builds (and, building, executes every notebook), its code
examples run, and the built pages show what they should, checked in headless Chromium.

The build (``docs/build.py``: warnings are errors, every reference checked, notebooks executed
with errors raised) runs once per test session into a temporary folder; it is the notebook
executor of ``make test``, so a failing notebook fails here. The browser part is skipped with
a message where Chromium or Playwright are missing (like ``tests/browser``); screenshots go to
``test-artifacts/docs/``.
"""

from __future__ import annotations

import doctest
import importlib.util
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ARTIFACTS = ROOT / "test-artifacts" / "docs"
PNG = "image/png"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"

sys.path.insert(0, str(ROOT / "tests" / "browser"))
import lab_harness as lh  # noqa: E402  (Chromium discovery, launch flags, pixel statistics)
import site_layout  # noqa: E402  (widths of output blocks and images on a built page)


def _load(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


docs_build = _load(DOCS / "build.py", "xaisparse_docs_build")


# --------------------------------------------------------------------------- the build
@pytest.fixture(scope="session")
def build(tmp_path_factory) -> dict[str, Any]:
    """Build the site once; the result (return code, log, seconds, output folder)."""
    for module in ("sphinx", "myst_nb", "furo"):
        if importlib.util.find_spec(module) is None:
            pytest.fail(
                f"{module} is not installed: install the docs extra (pip install -e '.[docs]'). The docs "
                "build is also the notebook executor of the test suite, so it is not skipped."
            )
    base = tmp_path_factory.mktemp("docs")
    out = base / "html"
    t0 = time.monotonic()
    proc = subprocess.run(
        docs_build.sphinx_command(out, base / "doctrees"),
        cwd=ROOT,
        env=docs_build.sphinx_env("force"),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    seconds = time.monotonic() - t0
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    log = proc.stdout + "\n" + proc.stderr
    (ARTIFACTS / "sphinx-build.log").write_text(log)
    print(f"\n[docs] sphinx build: {seconds:.0f} s, exit status {proc.returncode}, output {out}")
    return {"rc": proc.returncode, "log": log, "seconds": seconds, "out": out, "executed": base / "jupyter_execute"}


@pytest.fixture(scope="session")
def site(build) -> Path:
    if build["rc"] != 0:
        pytest.fail("the docs build failed (see test_docs_build_has_no_warnings)")
    return build["out"]


@pytest.mark.xdist_group("docs")
def test_docs_build_has_no_warnings(build):
    """Warnings are errors (-W): a broken reference, a bad docstring, a failing notebook cell."""
    lines = build["log"].splitlines()
    problems = [line for line in lines if re.search(r"(WARNING|ERROR|CRITICAL):", line)]
    assert build["rc"] == 0, "docs build failed:\n" + "\n".join([*problems[:40], "...", *lines[-40:]])


# --------------------------------------------------------------------------- notebooks
def _executed(build: dict[str, Any], notebook: Path) -> dict[str, Any]:
    import nbformat

    path = build["executed"] / "notebooks" / notebook.name
    assert path.is_file(), f"MyST-NB wrote no executed copy of {notebook.name} ({path})"
    return nbformat.read(path, as_version=4)


def _outputs(nb: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_figure_is_an_image_on_its_page(build, site, notebook):
    """Each PNG the executed notebook produced (widgets' static PNGs included) is an <img> of
    its page, and no widget view is left for a kernel that a static page does not have."""
    nb = _executed(build, notebook)
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{notebook.name}: not every code cell ran"
    errors = [o for o in _outputs(nb) if o.get("output_type") == "error"]
    assert not errors, f"{notebook.name}: {errors[0]['ename']}: {errors[0]['evalue']}"
    pngs = [o for o in _outputs(nb) if PNG in o.get("data", {})]
    widgets = [o for o in _outputs(nb) if WIDGET_VIEW in o.get("data", {})]
    assert all(PNG in o["data"] for o in widgets), f"{notebook.name}: a widget output without its static PNG"

    html = (site / "notebooks" / f"{notebook.stem}.html").read_text()
    counter = _OutputImages()
    counter.feed(html)
    assert counter.outputs > 0, f"{notebook.name}: its page shows no cell output"
    assert counter.images == len(pngs), f"{notebook.name}: {len(pngs)} PNG outputs, {counter.images} images shown"
    assert "widget-view+json" not in html, f"{notebook.name}: a widget view was rendered instead of its PNG"
    assert "widget-state+json" not in html, f"{notebook.name}: the page carries the unused widget state"


@pytest.mark.xdist_group("docs")
def test_the_widgets_gallery_shows_every_widget(build):
    """The gallery displays each widget class of xaisparse.widgets (but the base class) as a PNG."""
    import xaisparse.widgets as w

    shown = {
        o["data"]["text/plain"].split("(")[0]
        for o in _outputs(_executed(build, ROOT / "notebooks" / "widgets_gallery.ipynb"))
        if WIDGET_VIEW in o.get("data", {}) and PNG in o["data"]
    }
    classes = {n for n in w.__all__ if isinstance(getattr(w, n), type) and issubclass(getattr(w, n), w.FigureWidget)}
    # the playground trains models: it has its own notebook (06), checked here, and a JupyterLab
    # test (tests/browser/test_lab_playground.py)
    assert shown == classes - {"FigureWidget", "OverfittingPlayground"}
    teaching = _outputs(_executed(build, ROOT / "notebooks" / "06_teaching_overfitting.ipynb"))
    assert any(
        WIDGET_VIEW in o.get("data", {})
        and PNG in o["data"]
        and o["data"]["text/plain"].startswith("OverfittingPlayground")
        for o in teaching
    ), "notebook 06 shows no OverfittingPlayground with its static PNG"


class _OutputImages(HTMLParser):
    """Counts the <img> elements inside MyST-NB's cell outputs (``div.cell_output``)."""

    VOID = frozenset(
        {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
    )

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []  # per open element: inside a cell output?
        self.images = self.outputs = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        inside = bool(self.stack and self.stack[-1])
        if tag == "img" and inside:
            self.images += 1
        if tag not in self.VOID:
            output = "cell_output" in (dict(attrs).get("class") or "").split()
            self.outputs += output and not inside
            self.stack.append(inside or output)

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()


# --------------------------------------------------------------------------- API reference
def _public() -> dict[str, list[str]]:
    """``name -> acceptable documented full names`` for every name in ``xaisparse.__all__``."""
    import xaisparse

    out = {}
    for name in xaisparse.__all__:
        module = xaisparse._EXPORTS.get(name)
        out[name] = [f"xaisparse.{name}"] + (
            [f"{module}.{name}"] if module and not module.split(".")[-1].startswith("_") else []
        )
        defined_in = getattr(getattr(xaisparse, name), "__module__", None)  # the page of the defining module
        if isinstance(defined_in, str) and defined_in.startswith("xaisparse.") and "._" not in defined_in:
            out[name].insert(0, f"{defined_in}.{name}")
    return out


def _inventory(site: Path) -> dict[str, str]:
    """``full name -> page#anchor`` of every Python object in the built ``objects.inv``."""
    from sphinx.util.inventory import InventoryFile

    with open(site / "objects.inv", "rb") as f:
        inv = InventoryFile.load(f, "", lambda base, uri: uri)
    entries = {}
    for kind, items in inv.items() if isinstance(inv, dict) else inv.data.items():
        if kind.startswith("py:") and kind != "py:module":  # xaisparse.detect.evaluate is also a module
            for name, item in items.items():
                entries[name] = item[2] if isinstance(item, tuple) else item.uri
    return entries


@pytest.mark.xdist_group("docs")
def test_api_reference_documents_every_public_name(site):
    entries = _inventory(site)
    missing = {name: names for name, names in _public().items() if not any(n in entries for n in names)}
    assert not missing, f"public names without an API entry: {missing}"
    for name, names in _public().items():
        uri = next(entries[n] for n in names if n in entries)
        page, _, anchor = uri.partition("#")
        html = (site / page).read_text()
        assert f'id="{anchor}"' in html, f"{name}: {page} has no anchor {anchor!r}"


# --------------------------------------------------------------------------- doctests of the pages
PAGES_WITH_EXAMPLES = sorted(p for p in DOCS.rglob("*.md") if ">>> " in p.read_text())


@pytest.mark.parametrize("page", PAGES_WITH_EXAMPLES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_examples_run(page, one_thread, tmp_path, monkeypatch):
    """The ``>>>`` examples of the guide pages, as doctests (each page in fresh globals)."""
    monkeypatch.chdir(tmp_path)
    parser = doctest.DocTestParser()
    test = parser.get_doctest(page.read_text(), {"__name__": page.stem}, page.name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    runner.run(test, out=report.append)
    assert runner.failures == 0, "".join(report)
    assert runner.tries > 0


def test_extension_examples_run():
    ext = _load(DOCS / "_ext" / "xaisparse_sphinx.py", "xaisparse_sphinx_doctest")
    result = doctest.testmod(ext, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_cli_help_matches_the_command():
    """The CLI page renders the help the installed ``xaisparse`` command prints."""
    ext = _load(DOCS / "_ext" / "xaisparse_sphinx.py", "xaisparse_sphinx_cli")
    for command in (None, "run"):
        argv = [sys.executable, "-m", "xaisparse.cli", *([command] if command else []), "--help"]
        env = {**os.environ, "COLUMNS": "96"}
        printed = subprocess.run(argv, capture_output=True, text=True, env=env, check=True, timeout=300)
        assert ext.cli_help(command, width=96) == printed.stdout


# --------------------------------------------------------------------------- in the browser
@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Any:
    reason = lh.missing_requirements()
    if reason:
        pytest.skip(reason)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):  # stale screenshots of an earlier run
        old.unlink()
    with lh.chromium(tmp_path_factory.mktemp("docs-chromium"), viewport=(1280, 900)) as context:
        yield context


def _open(context: Any, url: str) -> Any:
    page = context.new_page()
    page.goto(url, wait_until="load")
    page.wait_for_function("() => [...document.images].every(img => img.complete)", timeout=30_000)
    return page


@pytest.mark.browser
@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_page_shows_its_figures(build, site, browser, notebook):
    """Every image in the page's cell outputs is decoded, visible and not blank."""
    expected = len([o for o in _outputs(_executed(build, notebook)) if PNG in o.get("data", {})])
    page = _open(browser, (site / "notebooks" / f"{notebook.stem}.html").as_uri())
    try:
        images = page.locator("article .cell_output img")
        assert images.count() == expected, f"{images.count()} images shown, {expected} figures produced"
        for i in range(images.count()):
            img = images.nth(i)
            img.scroll_into_view_if_needed()
            size = img.evaluate("i => [i.naturalWidth, i.naturalHeight, i.offsetWidth, i.offsetHeight]")
            assert min(size) > 0, f"{notebook.stem} image {i}: not decoded or not visible ({size})"
            stats = lh.pixel_stats(img.screenshot(path=str(ARTIFACTS / f"{notebook.stem}-{i}.png")))
            assert lh.is_nonblank(stats), f"{notebook.stem} image {i} looks blank: {stats}"
        page.screenshot(path=str(ARTIFACTS / f"{notebook.stem}.png"), full_page=True)
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_page_fits_the_page_width(build, site, browser, notebook):
    """Read at a glance: no output block or table of the page scrolls sideways (a conclusion cut
    off at the right edge is the sentence the reader came for), and no figure is up-scaled."""
    page = _open(browser, (site / "notebooks" / f"{notebook.stem}.html").as_uri())
    try:
        found = site_layout.measure(page)
        assert found["blocks"] or found["images"], f"{notebook.stem}: no cell outputs on the page"
        problems = site_layout.layout_problems(page)
        if problems:
            page.screenshot(path=str(ARTIFACTS / f"{notebook.stem}-too-wide.png"), full_page=True)
        assert not problems, f"{notebook.stem}: {len(problems)} blocks wider than the page:\n" + "\n".join(problems)
    finally:
        page.close()


@pytest.mark.browser
@pytest.mark.xdist_group("docs")
def test_api_pages_show_every_public_name(site, browser):
    """Each public name's entry is on its page, visible, with its signature and a docstring."""
    entries = _inventory(site)
    by_page: dict[str, list[tuple[str, str]]] = {}
    for name, names in _public().items():
        uri = next(entries[n] for n in names if n in entries)
        page_uri, _, anchor = uri.partition("#")
        by_page.setdefault(page_uri, []).append((name, anchor))
    for page_uri, items in sorted(by_page.items()):
        page = _open(browser, (site / unquote(urlsplit(page_uri).path)).as_uri())
        try:
            for name, anchor in items:
                entry = page.evaluate(
                    """(id) => { const dt = document.getElementById(id); if (!dt) return null;
                                 const dd = dt.nextElementSibling;
                                 return {sig: dt.innerText, shown: dt.offsetHeight > 0,
                                         doc: dd && dd.tagName === 'DD' ? dd.innerText.trim() : ''}; }""",
                    anchor,
                )
                assert entry is not None, f"{name}: no element #{anchor} on {page_uri}"
                assert entry["shown"] and name in entry["sig"], f"{name}: entry not shown on {page_uri}: {entry}"
                assert len(entry["doc"]) > 10, f"{name}: no docstring shown on {page_uri}"
            stem = page_uri.removesuffix(".html").replace("/", "_")
            page.screenshot(path=str(ARTIFACTS / f"api-{stem}.png"), full_page=True)
        finally:
            page.close()


@pytest.mark.browser
@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize(
    "doc", ["docs/index", "docs/getting-started", "docs/measure", "docs/guide/report-cli", "docs/study"]
)
def test_text_pages_render(site, browser, doc):
    """The root redirect works and the text pages render with their navigation."""
    page = _open(browser, (site / "index.html").as_uri())
    try:
        page.wait_for_url(re.compile(r".*/docs/index\.html$"), timeout=10_000)
        page.goto((site / f"{doc}.html").as_uri(), wait_until="load")
        assert page.locator("article h1").count() == 1
        assert page.locator(".sidebar-tree a").count() > 10  # the navigation of the whole site
        empty = page.evaluate(
            """() => [...document.querySelectorAll('.sidebar-tree p.caption')]
                     .filter(c => !(c.nextElementSibling && c.nextElementSibling.querySelector('a')))
                     .map(c => c.innerText)"""
        )
        assert not empty, f"sidebar headings without a page under them: {empty}"
        page.screenshot(path=str(ARTIFACTS / f"{doc.replace('/', '_')}.png"), full_page=True)
    finally:
        page.close()
