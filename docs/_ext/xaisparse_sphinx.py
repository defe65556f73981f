"""The project's small Sphinx extension (loaded by ``docs/conf.py``).

1. ``{xaisparse-cli-help}``: the argparse help of the ``xaisparse`` command, produced by
   :func:`xaisparse.cli.build_parser` at build time (so the page shows what the command
   accepts). No argument: the top-level help; ``demo``/``run``/``report``/``compare``: that
   subcommand's.
2. Docstring sections (napoleon) for functions, classes and modules, but **not** for data and
   attributes: napoleon reads the first line of an attribute docstring as ``type: text``, and
   this project's ``#:`` comments are prose ("The main job: the embedded digits ...").
   A doctest block after the last NumPy-style section (``Parameters`` / ``----------``) is
   given the ``Examples`` header it belongs under, instead of being read as more parameters.
3. Short names resolve to what they name in the module whose docstring uses them: this code
   base writes ``:class:`History``` in :mod:`xaisparse.train`, where ``History`` is the
   imported :class:`xaisparse.history.History`, and Sphinx alone only looks for
   ``xaisparse.train.History``. Unresolved references are looked up in the module (and class)
   namespace and linked to the place where *that object* is documented; a ``TypeVar`` in a
   signature is shown as plain text (it has no page). Anything else stays a warning.
4. Pages that show the widgets' static PNGs carry no ipywidgets state (nothing would read it).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import re
import typing
from typing import Any

from docutils import nodes
from sphinx.ext import napoleon
from sphinx.util.docutils import SphinxDirective


# --------------------------------------------------------------------------- 1. CLI help
def cli_help(command: str | None = None, width: int = 96) -> str:
    """The ``xaisparse`` (or ``xaisparse COMMAND``) help text, wrapped at ``width`` columns."""
    from xaisparse.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = str(width)  # argparse wraps to the terminal width
    try:
        parser = build_parser()
        if command is None:
            return parser.format_help()
        for action in parser._actions:  # argparse has no public accessor for its subparsers
            if isinstance(action, argparse._SubParsersAction):
                if command not in action.choices:
                    raise ValueError(f"no xaisparse subcommand {command!r} (known: {', '.join(action.choices)})")
                return action.choices[command].format_help()
        raise ValueError("xaisparse.cli.build_parser() has no subcommands")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old


class CliHelp(SphinxDirective):
    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        try:
            text = cli_help(self.arguments[0] if self.arguments else None)
        except ValueError as exc:
            raise self.error(str(exc)) from exc
        self.env.note_dependency(importlib.import_module("xaisparse.cli").__file__)
        return [nodes.literal_block(text, text, language="text")]


# --------------------------------------------------------------------------- 2. docstrings
_UNDERLINE = re.compile(r"^\s*-{3,}\s*$")


def examples_after_sections(lines: list[str]) -> list[str]:
    """Put an ``Examples`` header above a doctest that follows the last NumPy-style section.

    >>> examples_after_sections(["Text.", "", "Parameters", "----------", "x:", "    An x.", "", ">>> f(1)", "1"])
    ['Text.', '', 'Parameters', '----------', 'x:', '    An x.', '', 'Examples', '--------', '>>> f(1)', '1']
    >>> examples_after_sections(["Text.", "", ">>> f(1)", "1"])  # no section: untouched
    ['Text.', '', '>>> f(1)', '1']
    """
    headers = [i for i in range(1, len(lines)) if _UNDERLINE.match(lines[i]) and lines[i - 1].strip()]
    if not headers or lines[headers[-1] - 1].strip() == "Examples":
        return lines
    for i in range(headers[-1] + 1, len(lines)):
        if lines[i].startswith(">>>") and not lines[i - 1].strip():
            return [*lines[:i], "Examples", "--------", *lines[i:]]
    return lines


def _docstring_sections(app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]) -> None:
    if what in {"data", "attribute", "property"}:
        return
    lines[:] = examples_after_sections(lines)
    napoleon._process_docstring(app, what, name, obj, options, lines)


# --------------------------------------------------------------------------- 3. references
def _import(dotted: str) -> Any:
    """The object a dotted name refers to (``pkg.mod.Class.attr``), or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: Any = importlib.import_module(".".join(parts[:cut]))
        except Exception:
            continue
        try:
            for part in parts[cut:]:
                obj = getattr(obj, part)
        except AttributeError:
            return None
        return obj
    return None


def _documented(env: Any) -> dict[int, str]:
    """``id(object) -> documented name`` of every Python object this build documents."""
    cache = getattr(env, "_xaisparse_documented", None)
    if cache is None:
        cache = {}
        for name, entry in env.get_domain("py").objects.items():
            if getattr(entry, "aliased", False):
                continue
            obj = _import(name)
            if obj is not None and (
                inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj) or _is_constant(obj)
            ):
                cache.setdefault(id(obj), name)
        env._xaisparse_documented = cache
    return cache


def _is_constant(obj: Any) -> bool:
    """A documented module-level table (a dict or tuple of names): one object, re-exported by identity."""
    return isinstance(obj, (dict, tuple)) and len(obj) > 1


def _candidates(node: Any) -> list[str]:
    target, module, cls = node["reftarget"], node.get("py:module"), node.get("py:class")
    scopes = [f"{module}.{cls}" if module and cls else None, module]
    return [f"{scope}.{target}" for scope in scopes if scope] + [target]


def _resolve(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    if node.get("refdomain") != "py":
        return None
    domain = env.get_domain("py")
    documented = _documented(env)
    for dotted in _candidates(node):
        obj = _import(dotted)
        if obj is None:
            continue
        if isinstance(obj, typing.TypeVar):
            return contnode
        name = documented.get(id(obj))
        if name is None and "." in dotted:  # an attribute: find the class that documents it
            owner_name, attr = dotted.rsplit(".", 1)
            owner = _import(owner_name)
            if inspect.isclass(owner):
                for klass in owner.__mro__:
                    doc = documented.get(id(klass))
                    if doc and f"{doc}.{attr}" in domain.objects:
                        name = f"{doc}.{attr}"
                        break
        if name is None:
            continue
        for role in (node["reftype"], "obj"):
            ref = domain.resolve_xref(env, node["refdoc"], app.builder, role, name, node, contnode)
            if ref is not None:
                return ref
    return None


# --------------------------------------------------------------------------- 4. widget state
def _drop_widget_state(app: Any, doctree: Any) -> None:
    """Leave the ipywidgets state out of pages that show the widgets' PNGs instead of their views.

    MyST-NB embeds a notebook's widget state (the values of every widget, for the widget
    JavaScript to rebuild the views) in its page. With the views switched off, nothing reads
    it, and for our widgets it is their PNGs once more, base64-encoded: 90 % of the page.
    """
    widget_view = "application/vnd.jupyter.widget-view+json"
    if ("html", widget_view, None) not in [tuple(o) for o in app.config.nb_mime_priority_overrides]:
        return
    metadata = getattr(app.env, "nb_metadata", {}).get(app.env.docname, {})
    metadata.get("js_files", {}).pop("ipywidgets_state", None)


def _reset(app: Any, env: Any, *args: Any) -> None:
    env._xaisparse_documented = None


def setup(app: Any) -> dict[str, Any]:
    app.setup_extension("sphinx.ext.autodoc")
    for name, default, rebuild, types in napoleon.Config._config_values:
        app.add_config_value(name, default, rebuild, types=types)
    app.connect("autodoc-process-docstring", _docstring_sections)
    app.add_directive("xaisparse-cli-help", CliHelp)
    app.connect("env-updated", _reset)
    app.connect("missing-reference", _resolve)
    app.connect("doctree-read", _drop_widget_state)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
