"""Build the documentation site (what ``make docs`` and ``tests/test_docs.py`` run).

    python docs/build.py [--out build/docs/html] [--execute force|cache|off]

The source directory is the repository root and the configuration is ``docs/conf.py``.
Warnings are errors (``-W --keep-going``: every problem is listed before it fails), every
cross reference must resolve (``-n``), and the environment is fresh (``-E``), so each build
reads every page and executes every notebook again (``--execute force``, the default;
``cache`` reuses the outputs of notebooks whose code did not change, for writing prose).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXECUTE_MODES = ("force", "cache", "off")


def sphinx_command(out: Path, doctrees: Path) -> list[str]:
    """The ``sphinx-build`` command line, run with this interpreter."""
    return [
        sys.executable,
        "-m",
        "sphinx",
        "-b",
        "html",
        "-n",
        "-W",
        "--keep-going",
        "-E",
        "-c",
        str(ROOT / "docs"),
        "-d",
        str(doctrees),
        str(ROOT),
        str(out),
    ]


def sphinx_env(execute: str = "force") -> dict[str, str]:
    """The environment of the build: ``execute`` is MyST-NB's notebook execution mode."""
    if execute not in EXECUTE_MODES:
        raise ValueError(f"execute must be one of {EXECUTE_MODES}, got {execute!r}")
    return {**os.environ, "XAISPARSE_DOCS_EXECUTE": execute}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "docs" / "html", help="output folder")
    parser.add_argument("--execute", choices=EXECUTE_MODES, default="force", help="notebook execution mode")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    t0 = time.monotonic()
    rc = subprocess.call(sphinx_command(out, out.parent / "doctrees"), cwd=ROOT, env=sphinx_env(args.execute))
    print(f"docs build {'finished' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.0f} s: {out / 'index.html'}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
