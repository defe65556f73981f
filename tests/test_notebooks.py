"""The committed tutorials read at a glance (static checks of ``notebooks/*.ipynb``, no kernel).

* No line of text output is wider than :data:`MAX_LINE` characters: a longer line scrolls
  sideways on the docs page, and its end (usually the conclusion) is cut off. Conclusions are
  shown as Markdown, which wraps.
* No code cell is longer than :data:`MAX_CELL_LINES` lines: analysis that long belongs in the
  library, where it is tested once.
* Every tutorial (``01``–``07``) shows at least two figures, notebook 01 at least three.

The committed outputs are the ones checked (the docs build re-executes the notebooks and
``tests/test_docs.py`` checks the rendered pages in Chromium).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
TUTORIALS = [nb for nb in NOTEBOOKS if nb.name[:2].isdigit()]
MAX_LINE = 100
MAX_CELL_LINES = 25
MIN_FIGURES = {"01": 3}  # the rest: 2
#: Bundles with one of these types are rendered from it, not from their text/plain.
RICH = ("text/html", "text/markdown", "image/png", "image/svg+xml", "application/vnd.jupyter.widget-view+json")


def _params(notebooks: list[Path]) -> list[Any]:
    return [pytest.param(nb, id=nb.stem) for nb in notebooks]


def _read(path: Path) -> Any:
    return nbformat.read(path, as_version=4)


def text_lines(output: dict[str, Any]) -> list[str]:
    """The lines of text an output shows on the page (stream, plain-text result, traceback)."""
    if output["output_type"] == "stream":
        return str(output["text"]).splitlines()
    if output["output_type"] == "error":
        return [line for entry in output.get("traceback", []) for line in str(entry).splitlines()]
    data = output.get("data", {})
    if "text/plain" in data and not any(kind in data for kind in RICH):
        text = data["text/plain"]
        return ("".join(text) if isinstance(text, list) else str(text)).splitlines()
    return []


def figures(nb: Any) -> int:
    """Number of images among the notebook's outputs."""
    return sum(
        1
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {}) or "image/svg+xml" in out.get("data", {})
    )


def test_the_checks_see_the_tutorials():
    assert [nb.name[:2] for nb in TUTORIALS] == ["01", "02", "03", "04", "05", "06", "07"]


@pytest.mark.parametrize("notebook", _params(NOTEBOOKS))
def test_no_output_line_is_wider_than_the_page(notebook):
    wide = [
        f"cell {i}: {len(line)} characters: {line[:60]}…"
        for i, cell in enumerate(_read(notebook).cells)
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        for line in text_lines(out)
        if len(line) > MAX_LINE
    ]
    assert not wide, f"{notebook.name}: output lines over {MAX_LINE} characters:\n" + "\n".join(wide)


@pytest.mark.parametrize("notebook", _params(NOTEBOOKS))
def test_no_code_cell_is_longer_than_a_screenful(notebook):
    long = [
        f"cell {i}: {n} lines"
        for i, cell in enumerate(_read(notebook).cells)
        if cell.cell_type == "code" and (n := len(cell.source.rstrip().splitlines())) > MAX_CELL_LINES
    ]
    assert not long, f"{notebook.name}: code cells over {MAX_CELL_LINES} lines: {long}"


@pytest.mark.parametrize("notebook", [pytest.param(nb, id=nb.stem) for nb in TUTORIALS])
def test_every_tutorial_shows_figures(notebook):
    wanted = MIN_FIGURES.get(notebook.name[:2], 2)
    found = figures(_read(notebook))
    assert found >= wanted, f"{notebook.name} shows {found} figures, wants at least {wanted}"


@pytest.mark.parametrize(
    ("output", "lines"),
    [
        ({"output_type": "stream", "name": "stdout", "text": "a\nbb\n"}, ["a", "bb"]),
        ({"output_type": "execute_result", "data": {"text/plain": "x" * 3}}, ["xxx"]),
        ({"output_type": "execute_result", "data": {"text/plain": "x" * 300, "text/html": "<b>"}}, []),
        ({"output_type": "display_data", "data": {"text/plain": "<Image>", "image/png": ""}}, []),
        ({"output_type": "error", "traceback": ["T\nU", "V"]}, ["T", "U", "V"]),
    ],
)
def test_text_lines_reads_what_the_page_shows(output, lines):
    assert text_lines(output) == lines


LINK = re.compile(r"\[([^\]]+)\]\(([^)#\s]+\.ipynb)(#[^)]*)?\)")


def test_links_between_tutorials_name_the_right_number():
    """A link written ``[3 · Title](03_x.ipynb)`` points at an existing notebook of that number."""
    wrong = []
    for source in [*NOTEBOOKS, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "README.md"]:
        cells = (
            _read(source).cells if source.suffix == ".ipynb" else [nbformat.v4.new_markdown_cell(source.read_text())]
        )
        for cell in cells:
            if cell.cell_type != "markdown":
                continue
            for text, target, _ in LINK.findall(cell.source):
                path = (source.parent / target).resolve()
                number = re.match(r"(\d+) · ", text)
                if not path.is_file():
                    wrong.append(f"{source.name}: [{text}] -> {target} does not exist")
                elif number and not path.name.startswith(f"{int(number[1]):02d}_"):
                    wrong.append(f"{source.name}: [{text}] -> {target} (another number)")
    assert not wrong, "\n".join(wrong)
