"""Widgets rendered by a real JupyterLab in headless Chromium.

* ``test_harness_selftest``: a generated notebook (IntSlider wired to an ``ipywidgets.Image``
  showing a matplotlib PNG, like our widgets) - proves the harness itself; runs wherever
  Chromium + Playwright + JupyterLab exist.
* ``test_widgets_gallery``: runs ``notebooks/widgets_gallery.ipynb`` and checks that every
  xaisparse widget renders a non-blank figure, that the epoch slider redraws it, and that the
  AttributionComparison method dropdown and view buttons redraw theirs.

Screenshots land in ``test-artifacts/browser/``.
"""

from __future__ import annotations

from pathlib import Path

import lab_harness as lh
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

GALLERY = lh.REPO_ROOT / "notebooks" / "widgets_gallery.ipynb"

SELFTEST_CELLS = [
    ("markdown", "# Harness self-test\nAn `IntSlider` redraws a matplotlib PNG in an `ipywidgets.Image`."),
    (
        "code",
        """\
import io
import numpy as np
import ipywidgets as widgets
from matplotlib.figure import Figure

def render(epoch: int) -> bytes:
    fig = Figure(figsize=(5, 3), dpi=80, layout="constrained")
    ax = fig.add_subplot()
    x = np.linspace(0, 2 * np.pi, 200)
    ax.plot(x, np.sin(x + epoch), color="#0173b2", lw=2)
    ax.fill_between(x, 0, np.cos(2 * x - epoch), color="#de8f05", alpha=0.4)
    ax.set_title(f"epoch {epoch}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()""",
    ),
    (
        "code",
        """\
slider = widgets.IntSlider(value=0, min=0, max=10, description="epoch")
image = widgets.Image(value=render(0), format="png")
slider.observe(lambda change: setattr(image, "value", render(change["new"])), names="value")
widgets.VBox([slider, image])""",
    ),
    ("code", "widgets.Image(value=render(5), format='png')"),
]


def _write_notebook(path: Path, cells) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.cells = [
        nbformat.v4.new_markdown_cell(src) if kind == "markdown" else nbformat.v4.new_code_cell(src)
        for kind, src in cells
    ]
    nbformat.write(nb, path)
    return path


def test_harness_selftest(lab, tmp_path):
    nb = _write_notebook(tmp_path / "harness_selftest.ipynb", SELFTEST_CELLS)
    page = lab.run(nb, name="selftest")
    art = lab.artifacts_dir

    imgs = lh.widget_images(page)
    assert imgs.count() == 2, f"expected 2 widget images, found {imgs.count()}"
    infos = [lh.assert_nonblank(imgs.nth(i), f"selftest-widget-{i}", art) for i in range(imgs.count())]
    assert infos[0]["sha"] != infos[1]["sha"]
    lh.save_notebook_screenshot(page, art / "selftest-notebook.png")

    slider = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .widget-slider").first
    assert lh.slider_value(slider) == "0"
    lh.move_slider(page, slider, "ArrowRight")
    after = lh.wait_image_changed(page, imgs.nth(0), infos[0]["sha"])
    assert lh.slider_value(slider) == "1"
    moved = lh.assert_nonblank(imgs.nth(0), "selftest-widget-0-after-slider", art)
    assert moved["sha"] == after["sha"] != infos[0]["sha"]
    # the other image is untouched
    assert lh.image_info(imgs.nth(1))["sha"] == infos[1]["sha"]
    lh.save_notebook_screenshot(page, art / "selftest-notebook-after-slider.png")


def test_widgets_gallery(lab):
    """Skipped (with the kernel's ImportError) only while ``xaisparse.widgets`` cannot be imported."""
    assert GALLERY.exists(), f"{GALLERY} is missing"
    try:
        page = lab.run(GALLERY, name="gallery", timeout=170)
    except lh.NotebookRunError as exc:
        imp = [e for e in exc.errors if e[1] in ("ImportError", "ModuleNotFoundError") and "xaisparse" in e[2]]
        if imp and imp[0] == exc.errors[0]:
            pytest.skip(f"xaisparse.widgets is not importable in the kernel yet ({imp[0][1]}: {imp[0][2]})")
        raise
    art = lab.artifacts_dir
    for index, text in getattr(page, "_xaisparse_stderr", []):
        print(f"[browser] gallery cell {index} wrote to stderr: {text.strip()[:500]}")
    lh.save_notebook_screenshot(page, art / "gallery-notebook.png")

    views = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output > .xaisparse-widget")
    n = views.count()
    expected = [
        "SparsityDistribution",
        "SparsityTimeline",
        "LayerEpochHeatmap",
        "ChannelInspector",
        "AttributionComparison",
        "RunComparison",
        "LiveDashboard",
    ]
    assert n == len(expected), f"expected {len(expected)} xaisparse widgets ({expected}), found {n}"
    problems = []
    for i, kind in enumerate(expected):
        view = views.nth(i)
        errors = view.locator(".xaisparse-error").all_inner_texts()
        if errors:
            problems.append(f"{kind}: error message {errors}")
        imgs = lh.widget_images(page, within=view)
        if imgs.count() == 0:
            problems.append(f"{kind}: no image; message: {view.inner_text()[:300]!r}")
            continue
        view.screenshot(path=str(art / f"gallery-{i}-{kind}.png"))
        for j in range(imgs.count()):
            try:
                info = lh.assert_nonblank(imgs.nth(j), f"gallery-{i}-{kind}-image", art)
                print(
                    f"[browser] {kind}: PNG {info['w']}x{info['h']} shown at {info['shown_w']}x{info['shown_h']},"
                    f" {info['colors']} colours, dominant {info['dominant']:.1%}"
                )
            except AssertionError as exc:
                problems.append(f"{kind}: {exc}")
    assert not problems, "\n".join(problems)

    # move the first epoch slider and check that its widget redraws
    epoch_views = [views.nth(i) for i in range(n) if views.nth(i).locator(".widget-slider", has_text="epoch").count()]
    assert epoch_views, "no widget with an epoch slider found"
    view = epoch_views[0]
    slider = view.locator(".widget-slider", has_text="epoch").first
    img = lh.widget_images(page, within=view).first
    before = lh.assert_nonblank(img, "gallery-epoch-before", art)
    value = lh.slider_value(slider)
    key = "ArrowLeft" if _at_max(slider) else "ArrowRight"
    lh.move_slider(page, slider, key)
    lh.wait_image_changed(page, img, before["sha"])
    assert lh.slider_value(slider) != value
    lh.assert_nonblank(img, "gallery-epoch-after", art)
    print(f"[browser] epoch slider {value} -> {lh.slider_value(slider)}: image redrawn")
    view.screenshot(path=str(art / "gallery-epoch-widget-after-slider.png"))

    _check_attribution_controls(page, views.nth(expected.index("AttributionComparison")), art)


def _check_attribution_controls(page, view, art) -> None:
    """The method dropdown redraws the maps; the view buttons switch to the channel table."""
    img = lh.widget_images(page, within=view).first
    before = lh.assert_nonblank(img, "gallery-attribution-maps", art)
    method = view.locator(".widget-dropdown", has_text="method").locator("select")
    assert method.count() == 1, "no method dropdown in the AttributionComparison widget"
    assert method.input_value() == "integrated gradients"  # ipywidgets 8 uses the labels as option values
    method.select_option(label="saliency")
    changed = lh.wait_image_changed(page, img, before["sha"], timeout=90)
    after = lh.assert_nonblank(img, "gallery-attribution-maps-saliency", art)
    assert after["sha"] == changed["sha"] != before["sha"]
    assert not view.locator(".xaisparse-error").count(), view.locator(".xaisparse-error").all_inner_texts()
    view.screenshot(path=str(art / "gallery-attribution-after-method.png"))
    print(
        f"[browser] AttributionComparison method integrated_gradients -> saliency: image redrawn ({after['w']}x{after['h']})"
    )

    view.locator("button", has_text="channel table").click()
    table = lh.wait_image_changed(page, img, after["sha"], timeout=120)
    shown = lh.assert_nonblank(img, "gallery-attribution-channels", art)
    assert shown["sha"] == table["sha"]
    assert view.locator(".widget-dropdown", has_text="layer").is_visible()
    assert not method.is_visible(), "the maps controls stay visible in the channel view"
    assert not view.locator(".xaisparse-error").count(), view.locator(".xaisparse-error").all_inner_texts()
    view.screenshot(path=str(art / "gallery-attribution-channel-table.png"))
    print(f"[browser] AttributionComparison view -> channel table: image redrawn ({shown['w']}x{shown['h']})")


def _at_max(slider) -> bool:
    handle = slider.locator(".noUi-handle").first
    now, hi = handle.get_attribute("aria-valuenow"), handle.get_attribute("aria-valuemax")
    try:
        return float(now) >= float(hi)
    except (TypeError, ValueError):
        return False
