"""``OverfittingPlayground`` in a real JupyterLab (headless Chromium).

* The cell trains a first tiny run from code, so the curves, the feature-map grid and the
  channel view are non-blank pictures before anyone clicks.
* **Train** clicked in the browser starts a run in the background: while it trains, a new
  cell runs (the kernel is free), the feature-map grid changes from epoch to epoch, and
  **Stop** ends it with its measured epochs kept in ``runs`` — checked by one more cell run
  after Stop.

Screenshots land in ``test-artifacts/browser/`` (look at them).
"""

from __future__ import annotations

import re

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
playground = OverfittingPlayground(train_size=60, label_noise=0.2, width=4, epochs=3, probe_size=64)
playground.train()
playground.epochs.value = 200  # the run clicked in the browser is long enough to be stopped
playground""",
    ),
]


def _epoch(view) -> int:
    found = re.search(r"epoch (\d+) / 200", view.locator(".xaisparse-status").inner_text())
    return int(found.group(1)) if found else -1


def test_playground_trains_in_the_background_and_stops(lab, tmp_path):
    nb = _write_notebook(tmp_path / "playground.ipynb", CELLS)
    page = lab.run(nb, name="playground")
    art = lab.artifacts_dir
    view = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .xaisparse-playground").first
    assert view.count() == 1, "the playground widget was not rendered"
    sliders = view.locator(".widget-slider")
    labels = [sliders.nth(i).inner_text() for i in range(sliders.count())]
    for knob in ("train images", "label noise", "width", "epochs", "learning rate", "dropout", "λ (weight)"):
        assert any(knob in text for text in labels), f"no {knob!r} slider in {labels}"
    images = lh.widget_images(page, within=view)
    assert images.count() == 4, f"expected curves, maps, distribution and channel images, got {images.count()}"
    for i, name in enumerate(("curves", "maps", "distribution", "channel")):
        lh.assert_nonblank(images.nth(i), f"playground-first-run-{name}", art)
    assert "finished" in view.inner_text() and "pg1&n=60" in view.inner_text()
    lh.save_notebook_screenshot(page, art / "playground-first-run.png")

    view.locator("button", has_text="Train").click()
    page.wait_for_function(
        "(el) => /epoch ([2-9]|\\d\\d+) \\/ 200/.test(el.innerText)", arg=view.element_handle(), timeout=120_000
    )
    # the kernel is free while the run trains: a cell runs and sees the run in progress
    during = lh.run_extra_cell(page, "playground.ipynb", "print(playground.run.state, len(playground.runs))")
    assert during.split() in (["running", "1"], ["paused", "1"]), during
    # the feature-map grid is redrawn as epochs pass
    maps = images.nth(1)
    first = lh.assert_nonblank(maps, "playground-maps-epoch-a", art)
    epoch_a = _epoch(view)
    later = lh.wait_image_changed(page, maps, first["sha"], timeout=120)
    assert later["sha"] != first["sha"]
    lh.assert_nonblank(maps, "playground-maps-epoch-b", art)
    assert _epoch(view) > epoch_a
    lh.save_notebook_screenshot(page, art / "playground-training.png")

    view.locator("button", has_text="Stop").click()
    page.wait_for_function(  # stopped, and its last epoch drawn
        "(el) => el.innerText.includes('stopped after epoch') && el.classList.contains('xaisparse-idle')",
        arg=view.element_handle(),
        timeout=60_000,
    )
    after = lh.run_extra_cell(
        page,
        "playground.ipynb",
        "h = playground.runs[-1]\nprint(len(playground.runs), playground.run.state, h.epochs[-1] >= 2, h.outcome.stop_reason)",
    )
    count, state, enough, *reason = after.split()
    assert (count, state, enough) == ("2", "stopped", "True"), after
    assert " ".join(reason).startswith("Stop pressed"), after
    assert not view.locator(".xaisparse-error").count(), view.locator(".xaisparse-error").all_inner_texts()
    lh.save_notebook_screenshot(page, art / "playground-stopped.png")
