"""Layout checks of a built documentation page in Chromium (used by ``tests/test_docs.py``).

A notebook page is legible at a glance when nothing in its cell outputs has to be scrolled
sideways and no figure is blown up beyond its pixels:

* every output block (printed text, a rich output such as a pandas table) and every table in
  it fits its container: ``scrollWidth <= clientWidth`` (a sideways scroll bar hides the end
  of the sentence or the last columns);
* every image is shown at most at its natural width (an up-scaled PNG is blurred).

Playwright is only used through the ``page`` object handed in, so this module imports where
Playwright is absent.
"""

from __future__ import annotations

from typing import Any

#: Pixels of slack for sub-pixel rounding of the browser's layout.
TOLERANCE_PX = 1

_MEASURE_JS = """
() => {
  const label = (el) => {
    const cell = el.closest('.cell');
    const cells = [...document.querySelectorAll('article .cell')];
    const text = (el.innerText || '').trim().split('\\n')[0].slice(0, 80);
    return `cell ${cells.indexOf(cell)} <${el.tagName.toLowerCase()} class="${el.className}">: ${text}`;
  };
  const blocks = [];
  for (const el of document.querySelectorAll(
      'article .cell_output .output, article .cell_output pre, article .cell_output table')) {
    if (el.offsetParent === null) continue;  // not displayed
    // a table is measured against the output block that holds it, the rest against itself
    const box = el.tagName === 'TABLE' ? el.closest('.output') || el.parentElement : el;
    const width = el.tagName === 'TABLE' ? el.getBoundingClientRect().width : el.scrollWidth;
    blocks.push({what: label(el), scroll: Math.ceil(width), client: box.clientWidth});
  }
  const images = [...document.querySelectorAll('article .cell_output img')].map((img) => ({
    what: label(img), natural: img.naturalWidth, shown: img.getBoundingClientRect().width}));
  return {blocks, images};
}
"""


def measure(page: Any) -> dict[str, list[dict[str, Any]]]:
    """Widths of every output block, table and image in the cell outputs of ``page``."""
    return page.evaluate(_MEASURE_JS)


def layout_problems(page: Any) -> list[str]:
    """One readable line per output block wider than its container and per up-scaled image."""
    found = measure(page)
    problems = [
        f"{b['what']}: {b['scroll']} px of content in a {b['client']} px box (scrolls sideways)"
        for b in found["blocks"]
        if b["scroll"] > b["client"] + TOLERANCE_PX
    ]
    problems += [
        f"{i['what']}: shown {i['shown']:.0f} px wide from {i['natural']} px (up-scaled)"
        for i in found["images"]
        if i["natural"] + TOLERANCE_PX < i["shown"]
    ]
    return problems
