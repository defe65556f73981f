"""``OverfittingPlayground`` rendered by a real JupyterLab in headless Chromium: the trained
dashboard shows a non-blank figure, and clicking **Train** in the browser trains again and
redraws it. Screenshots land in ``test-artifacts/browser/``."""

from __future__ import annotations

import lab_harness as lh
import pytest
from test_lab_widgets import _write_notebook

pytestmark = [pytest.mark.browser, pytest.mark.xdist_group("browser")]

CELLS = [
    ("markdown", "# Playground in JupyterLab"),
    (
        "code",
        """\
import torch
from xaisparse.widgets import OverfittingPlayground

torch.set_num_threads(1)
playground = OverfittingPlayground(train_size=60, label_noise=0.2, width=2, epochs=3, probe_size=64)
playground.train()
playground""",
    ),
]


def test_playground_renders_and_trains_on_click(lab, tmp_path):
    page = lab.run(_write_notebook(tmp_path / "playground.ipynb", CELLS), name="playground")
    art = lab.artifacts_dir
    view = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output > .xaisparse-widget").first
    assert view.count() == 1, "the playground widget was not rendered"
    sliders = view.locator(".widget-slider")
    labels = [sliders.nth(i).inner_text() for i in range(sliders.count())]
    for knob in ("train images", "label noise", "width", "epochs", "λ (weight)"):
        assert any(knob in text for text in labels), f"no {knob!r} slider in {labels}"
    img = lh.widget_images(page, within=view).first
    before = lh.assert_nonblank(img, "playground-trained", art)
    assert "epoch 3 / 3" in view.inner_text()
    view.screenshot(path=str(art / "playground-widget.png"))

    epochs = next(sliders.nth(i) for i in range(sliders.count()) if "epochs" in labels[i])
    lh.move_slider(page, epochs, "ArrowRight")  # 3 -> 4 epochs, then train in the browser
    assert lh.slider_value(epochs) == "4"
    view.locator("button", has_text="Train").click()
    page.wait_for_function("(el) => el.innerText.includes('epoch 4 / 4')", arg=view.element_handle(), timeout=90_000)
    lh.wait_image_changed(page, img, before["sha"], timeout=90)
    after = lh.assert_nonblank(img, "playground-after-click", art)
    assert after["sha"] != before["sha"]
    assert not view.locator(".xaisparse-error").count(), view.locator(".xaisparse-error").all_inner_texts()
    view.screenshot(path=str(art / "playground-widget-after-click.png"))
    print(f"[browser] playground: PNG {after['w']}x{after['h']}, {after['colors']} colours after a Train click")
