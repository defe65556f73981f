"""Sphinx configuration of the xaisparse documentation site (``make docs``).

Sphinx + MyST-NB + Furo, chosen over Jupyter Book and MkDocs (see ``docs/about-docs.md``):
the pages are Markdown, the notebooks are executed by MyST-NB at build time (this build *is*
the notebook executor of ``make test``), the API reference comes from the docstrings through
``sphinx.ext.autodoc`` and every cross reference is checked (``nitpicky``, warnings are errors).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the checkout, also without an editable install
sys.path.insert(0, str(DOCS / "_ext"))

import xaisparse  # noqa: E402

project = "xaisparse"
author = "xaisparse developers"
copyright = "xaisparse developers"
release = version = xaisparse.__version__

extensions = [
    "myst_nb",  # Markdown pages (MyST) and notebooks, executed at build time
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx_copybutton",
    # docs/_ext: napoleon (Google "Args:" / NumPy "Parameters" sections) for everything but
    # data docstrings, short names resolved in their module, and the real `xaisparse --help`
    "xaisparse_sphinx",
]

# The source directory is the repository root (`sphinx-build -c docs . OUT`), so that the
# notebooks, bench/README.md, studies/results/results.md and the README sections included in
# these pages are read where they live: no copies, and their relative links resolve as they do
# on a code host. Only these files are pages:
include_patterns = [
    "docs/**.md",
    "notebooks/*.ipynb",
    "bench/README.md",
    "studies/results/results.md",
    "studies/results/v2/results.md",
    "studies/results/v3/results.md",
]
exclude_patterns = [".venv", ".tools", ".git", "build", "runs", "test-artifacts", "**/.ipynb_checkpoints"]
root_doc = "docs/index"
html_extra_path = ["_root"]  # index.html at the site root: a redirect to docs/index.html
language = "en"

# ----------------------------------------------------------------------------- MyST
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# ----------------------------------------------------------------------------- notebooks
# Every notebook is executed by this build, top to bottom, in a fresh kernel and a temporary
# working directory; an error in any cell fails the build (and so `make test`).
# `make docs DOCS_EXECUTE=cache` reuses unchanged notebooks' outputs (jupyter-cache) while
# writing prose; `make test` always executes ("force").
nb_execution_mode = os.environ.get("XAISPARSE_DOCS_EXECUTE", "force")
nb_execution_cache_path = str(ROOT / "build" / "docs" / ".jupyter_cache")
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_execution_in_temp = True
nb_execution_timeout = 900  # seconds per cell; notebook 2 trains two 60-epoch runs in one cell each
nb_merge_streams = True
# The widgets put an image/png beside their widget view in the display bundle. A static page
# has no kernel (and this site loads no widget JavaScript from a CDN), so it shows the PNG.
nb_mime_priority_overrides = [
    ("html", "application/vnd.jupyter.widget-view+json", None),
    ("html", "application/javascript", None),
]
nb_ipywidgets_js: dict[str, dict[str, str]] = {}

# ----------------------------------------------------------------------------- API reference
autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented_params"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True
autodoc_inherit_docstrings = False  # no torch boilerplate under every forward()
autosummary_generate = False  # the API pages are written by hand, one per module (docs/api/)
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_use_ivar = True  # "Attributes:" as fields: the dataclass fields are documented once, by autodoc

# Warnings are errors (-W); every cross reference must resolve, except to the third-party
# libraries below, whose inventories cannot be fetched in an offline build (no intersphinx).
nitpicky = True
nitpick_ignore_regex = [
    # third-party libraries in signatures and docstrings
    (r"py:.*", r"(torch|numpy|np|pandas|pd|matplotlib|ipywidgets|scipy|sklearn|torchvision|captum|lightning)\..*"),
    # the standard library in signatures (no Python inventory offline either)
    (r"py:.*", r"(pathlib|os|collections\.abc|typing|argparse)\..*"),
]

# ----------------------------------------------------------------------------- HTML
html_theme = "furo"
html_static_path = ["_static"]  # relative to docs/ (the configuration directory)
html_css_files = ["xaisparse.css"]  # compact notebook tables (they must fit the page width)
html_title = f"xaisparse {release}"
html_show_sourcelink = False
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
