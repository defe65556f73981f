"""File helpers shared by the package: atomic writes and JSON-safe values, each written once.

Atomic means: the data go to a temporary file (or directory) next to the target and are
renamed into place, so a reader sees the old contents or the new ones, never a half-written
file, and a failure leaves the previous contents as they were.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "fsync_dir",
    "jsonable",
    "sha256",
    "write_new_file",
]


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'd temporary file, then ``os.replace``)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_new_file(path: str | os.PathLike[str], data: bytes) -> Path:
    """Create ``path`` (it must not exist) holding ``data``, fsync'd before returning."""
    target = Path(path)
    with open(target, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return target


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a directory's entries (files created or renamed in it) durable; a no-op where unsupported."""
    if os.name == "nt":  # pragma: no cover - Windows cannot open a directory
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``jsonable(obj)`` to ``path`` atomically (strict JSON: no NaN)."""
    return atomic_write_text(path, json.dumps(jsonable(obj), indent=1, allow_nan=False))


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: NaN/Inf become None, NumPy scalars/arrays and paths plain values.

    >>> import numpy as np
    >>> jsonable({"a": np.float64("nan"), "b": (1, np.int64(2)), "c": np.arange(2)})
    {'a': None, 'b': [1, 2], 'c': [0, 1]}
    """
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and callable(obj.tolist) and type(obj).__module__.startswith("numpy"):
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
