"""The on-disk layout of a saved run: writing it crash-safely, reading and validating it.

A run directory (schema 4) holds one manifest and one data directory::

    RUN/history.json          the manifest: what the run is, which files hold it, their SHA-256
    RUN/data-000007/          the files of the latest save (Parquet tables, one NPZ of histograms)

The manifest is the commit point. A save writes a new ``data-N`` directory beside the current
one (fsync'd), then replaces the manifest atomically (a temporary file renamed over it), and only
then removes what is no longer referenced: older ``data-*`` directories, temporary files, the
flat files of a schema-2 run. A process killed at any point therefore leaves a manifest that names
complete files: the old run or the new one. The first save of a path builds the whole directory
under a hidden temporary name beside it and renames it into place (killed before: no run at the
path, as before the save). The next save removes whatever an interrupted one left behind.

Appending (:func:`append_run`, what :class:`~xaisparse.history.HistoryWriter` does after its first
save) fits the same rule: table entries are lists of parts, concatenated in order. An append
writes the new rows of each table as one more part (``metrics-000002.parquet``, ...) and the
histograms and evidence whole under new names, all into the current data directory beside the
committed files, then commits a manifest listing them; killed before the commit, the old manifest
names only files that are still there, and the next save removes the unnamed ones.

Reading validates before it trusts: the manifest's own SHA-256, then its structure against a JSON
schema (every key, type and reference), then each data file's size and SHA-256, and only then
the arrays and tables, which are checked against the manifest (shapes, epochs, columns). Every
failure is a :class:`~xaisparse.HistoryFormatError` that names the file and what was wrong.
Schema 1 and 2 runs (flat files beside the manifest) load too, and so do schema 3 runs (this
layout, with the population histograms named ``channel``); :meth:`History.load
<xaisparse.History.load>` upgrades the statistic names of schemas 1 to 3.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import itertools
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ._errors import HistoryFormatError
from ._io import atomic_write_bytes, fsync_dir, sha256, write_new_file
from ._validation import SPLITS

__all__ = [
    "FORMAT",
    "MANIFEST",
    "SCHEMA_VERSION",
    "TABLE_COLUMNS",
    "RunFiles",
    "RunState",
    "append_run",
    "check_histograms",
    "read_run",
    "write_run",
    "write_whole",
]

FORMAT = "xaisparse.history"
MANIFEST = "history.json"
SCHEMA_VERSION = 4
TABLE_COLUMNS: dict[str, list[str]] = {
    "metrics": ["epoch", "split", "metric", "value"],
    "layers": ["epoch", "split", "layer", "statistic", "value"],
    "channels": ["epoch", "split", "layer", "channel", "statistic", "value"],
}
_ARRAYS = "histograms.npz"
_EVIDENCE = "detection.parquet"
_DATA_DIR = re.compile(r"^data-(\d{6,})$")
# the flat data files of schema 1/2 runs (removed once a schema-4 save has committed)
_LEGACY_FILES = (*(f"{kind}.parquet" for kind in TABLE_COLUMNS), _ARRAYS, _EVIDENCE)
_TRIES = 3  # reads that start over when a concurrent save replaced the run meanwhile

# ---------------------------------------------------------------------------- the schema
_FILE_NAME = {"type": "string", "pattern": r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", "maxLength": 200}
_ARRAY_NAME = {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$", "maxLength": 200}
_SHA256 = {"type": "string", "pattern": r"^[0-9a-f]{64}$"}
_EPOCHS = {"type": "array", "items": {"type": "integer", "minimum": 0}}
_NAMES = {"type": "array", "items": {"type": "string"}}
_DETECTION = {
    "type": "object",
    "required": ["alarm_epoch", "layers", "onsets", "minima", "monitored", "epochs", "params"],
    "properties": {
        "alarm_epoch": {"type": ["integer", "null"], "minimum": 0},
        "alarmed": {"type": "boolean"},
        "layers": _NAMES,
        "onsets": {"type": "object", "additionalProperties": {"type": "integer"}},
        "minima": {"type": "object", "additionalProperties": {"type": "integer"}},
        "monitored": _NAMES,
        "epochs": _EPOCHS,
        "params": {"type": "object"},
        "summary": {"type": "string"},
    },
}
_OUTCOME = {
    "type": "object",
    "properties": {
        "train_seconds": {"type": ["number", "null"]},
        "stopped_early_at": {"type": ["integer", "null"]},
        "stop_reason": {"type": ["string", "null"]},
        "phase_seconds": {"type": "object", "additionalProperties": {"type": "number"}},
    },
}


def _layout_schema(version: int, population: str) -> dict[str, Any]:
    """The schema of a run directory (schemas 3 and 4: ``population`` is the key of the population histograms)."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": [
            "format",
            "schema_version",
            "config",
            "detection",
            "outcome",
            "layer_order",
            "data",
            "tables",
            "evidence",
            "arrays",
            "histograms",
            "files",
            "manifest_sha256",
        ],
        "additionalProperties": False,
        "properties": {
            "format": {"const": FORMAT},
            "schema_version": {"const": version},
            "config": {"type": "object"},
            "detection": {"anyOf": [{"type": "null"}, _DETECTION]},
            "outcome": {**_OUTCOME, "additionalProperties": False},
            "layer_order": {**_NAMES, "uniqueItems": True},
            "data": {"type": "string", "pattern": _DATA_DIR.pattern},
            "tables": {
                "type": "object",
                "required": list(TABLE_COLUMNS),
                "additionalProperties": False,
                "properties": {kind: {"type": "array", "items": _FILE_NAME, "minItems": 1} for kind in TABLE_COLUMNS},
            },
            "evidence": {"anyOf": [{"type": "null"}, _FILE_NAME]},
            "arrays": _FILE_NAME,
            "histograms": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["split", "layer", "epochs", "spatial", population],
                    "additionalProperties": False,
                    "properties": {
                        "split": {"enum": list(SPLITS)},
                        "layer": {"type": "string"},
                        "epochs": _EPOCHS,
                        "spatial": _ARRAY_NAME,
                        population: _ARRAY_NAME,
                    },
                },
            },
            "files": {
                "type": "object",
                "propertyNames": _FILE_NAME,
                "additionalProperties": {
                    "type": "object",
                    "required": ["sha256", "bytes"],
                    "additionalProperties": False,
                    "properties": {"sha256": _SHA256, "bytes": {"type": "integer", "minimum": 0}},
                },
            },
            "manifest_sha256": _SHA256,
        },
    }


#: Schema 4 (written now): everything required, nothing unknown (a newer writer bumps the version).
SCHEMA_4: dict[str, Any] = _layout_schema(4, "population")
#: Schema 3: the layout of schema 4, the population histograms under ``channel``.
SCHEMA_3: dict[str, Any] = _layout_schema(3, "channel")
#: Schemas 1 and 2 (flat files beside the manifest): what the reader needs, other keys allowed.
SCHEMA_2: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["format", "schema_version", "histograms", "files"],
    "properties": {
        "format": {"const": FORMAT},
        "schema_version": {"enum": [1, 2]},
        "config": {"type": ["object", "null"]},
        "detection": {"anyOf": [{"type": "null"}, _DETECTION]},
        "detector": {"type": ["object", "null"]},
        "outcome": {"anyOf": [{"type": "null"}, _OUTCOME]},
        "layer_order": {"anyOf": [{"type": "null"}, _NAMES]},
        "histograms": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["split", "layer", "index", "epochs"],
                "properties": {
                    "split": {"enum": list(SPLITS)},
                    "layer": {"type": "string"},
                    "index": {"type": "integer", "minimum": 0},
                    "epochs": _EPOCHS,
                },
            },
        },
        "files": {"type": "object", "propertyNames": _FILE_NAME, "additionalProperties": _SHA256},
    },
}


def _schema(version: int) -> dict[str, Any]:
    """The JSON schema of a manifest of ``version`` (1 and 2 share one)."""
    return {4: SCHEMA_4, 3: SCHEMA_3}.get(version, SCHEMA_2)


@functools.cache
def _validator(version: int) -> Any:
    """The manifest check, compiled by fastjsonschema (imports in ~10 ms; jsonschema's import takes
    about a second, spent only to explain a manifest that fails, see :func:`_schema_problem`)."""
    import fastjsonschema

    schema = _schema(version)
    # The keywords used here mean the same in draft 7, which fastjsonschema compiles.
    return fastjsonschema.compile({**schema, "$schema": "http://json-schema.org/draft-07/schema#"})


# ---------------------------------------------------------------------------- what a run holds
@dataclass
class RunFiles:
    """The contents of a run directory, checked: what :meth:`History.load` builds a History from.

    ``manifest`` is the parsed manifest (schema 1 and 2 as written); ``hists`` maps
    ``(split, layer)`` to ``(epochs, spatial counts, population counts)``.
    """

    version: int
    manifest: dict[str, Any]
    tables: dict[str, pd.DataFrame]
    bin_edges: np.ndarray | None
    hists: dict[tuple[str, str], tuple[list[int], np.ndarray, np.ndarray]] = field(default_factory=dict)
    evidence: pd.DataFrame | None = None


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def _manifest_digest(manifest: Mapping[str, Any]) -> str:
    return hashlib.sha256(_canonical({k: v for k, v in manifest.items() if k != "manifest_sha256"})).hexdigest()


def _strict_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (NaN and infinities are stored as null)")


def check_histograms(
    hists: Mapping[tuple[str, str], tuple[list[int], np.ndarray, np.ndarray]],
    bins: int,
    fail: Callable[[str], Exception],
) -> None:
    """Each histogram's epochs strictly increasing and its arrays shaped ``(epochs, channels, bins)``
    and ``(epochs, bins)`` of non-negative integer counts; ``fail(message)`` builds the error."""
    for (split, layer), (epochs, spatial, population) in hists.items():
        where = f"histograms of ({split!r}, {layer!r})"
        if any(b <= a for a, b in itertools.pairwise(epochs)):
            raise fail(f"{where}: epochs must be strictly increasing, got {epochs}")
        n = len(epochs)
        for name, arr, shape in (("spatial", spatial, (n, None, bins)), ("population", population, (n, bins))):
            ok = arr.ndim == len(shape) and all(s is None or a == s for a, s in zip(arr.shape, shape))
            if not ok:
                want = "(" + ", ".join("channels" if s is None else str(s) for s in shape) + ")"
                raise fail(f"{where}: {name} counts have shape {arr.shape}, expected {want} for {n} epochs")
            if arr.dtype.kind not in "iu" or (arr.size and arr.min() < 0):
                raise fail(f"{where}: {name} counts must be non-negative integers, got dtype {arr.dtype}")


# ---------------------------------------------------------------------------- writing
def _parquet_bytes(frame: pd.DataFrame) -> bytes:
    """``frame.to_parquet(index=False)``'s bytes, through pyarrow directly (pandas' wrapper costs
    more than writing a one-epoch table part)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buf)
    return buf.getvalue()


def _npz_bytes(arrays: Mapping[str, np.ndarray]) -> bytes:
    """What ``np.savez_compressed`` writes, deflated at level 1: about 4x faster than its level 6 and
    a third larger on histogram counts (every save writes the histograms whole). ``np.load`` reads it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for name, array in arrays.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asanyarray(array), allow_pickle=False)
    return buf.getvalue()


def write_run(
    path: str | os.PathLike[str],
    *,
    config: dict[str, Any],
    detection: dict[str, Any] | None,
    outcome: dict[str, Any],
    layer_order: list[str],
    tables: Mapping[str, pd.DataFrame],
    evidence: pd.DataFrame | None,
    bin_edges: np.ndarray,
    hists: Mapping[tuple[str, str], tuple[list[int], np.ndarray, np.ndarray]],
) -> Path:
    """Write one run to directory ``path`` crash-safely (see the module docstring); returns ``path``.

    ``path`` may be absent, an empty directory (or one holding only what an interrupted save into
    it left) or a saved run (any schema); anything else raises ``FileExistsError`` and is left alone.
    """
    target = Path(path)
    state = RunState(config, detection, outcome, layer_order, evidence, bin_edges, hists)
    write_whole(target, tables, state)
    return target


@dataclass
class RunState:
    """What a save writes besides the three tables: the manifest's fields, the evidence, the histograms."""

    config: dict[str, Any]
    detection: dict[str, Any] | None
    outcome: dict[str, Any]
    layer_order: list[str]
    evidence: pd.DataFrame | None
    bin_edges: np.ndarray
    hists: Mapping[tuple[str, str], tuple[list[int], np.ndarray, np.ndarray]]


def _state_files(
    target: Path, state: RunState, suffix: str = ""
) -> tuple[dict[str, bytes], dict[str, Any], list[dict[str, Any]]]:
    """The histogram and evidence files of a save (named with ``suffix``), and the manifest fields naming them."""
    bins = int(np.asarray(state.bin_edges).size) - 1

    def invalid(message: str) -> Exception:
        return ValueError(f"cannot save the History to {target}: {message}")

    check_histograms(state.hists, bins, invalid)
    arrays: dict[str, np.ndarray] = {"bin_edges": np.asarray(state.bin_edges, dtype=np.float64)}
    entries: list[dict[str, Any]] = []
    for i, ((split, layer), (epochs, spatial, population)) in enumerate(sorted(state.hists.items())):
        arrays[f"spatial_{i}"], arrays[f"population_{i}"] = spatial, population
        entries.append(
            {
                "split": split,
                "layer": layer,
                "epochs": list(epochs),
                "spatial": f"spatial_{i}",
                "population": f"population_{i}",
            }
        )
    array_file = _suffixed(_ARRAYS, suffix)
    names: dict[str, Any] = {"arrays": array_file, "evidence": None}
    blobs = {array_file: _npz_bytes(arrays)}
    if state.evidence is not None:
        names["evidence"] = evidence_file = _suffixed(_EVIDENCE, suffix)
        blobs[evidence_file] = _parquet_bytes(state.evidence)
    return blobs, names, entries


def _suffixed(name: str, suffix: str) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}{suffix}{dot}{ext}"


def _manifest(
    state: RunState,
    tables: dict[str, list[str]],
    names: dict[str, Any],
    entries: list[dict[str, Any]],
    files: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "schema_version": SCHEMA_VERSION,
        "config": state.config,
        "detection": state.detection,
        "outcome": state.outcome,
        "layer_order": list(state.layer_order),
        "data": "",  # set by the writer
        "tables": tables,
        "evidence": names["evidence"],
        "arrays": names["arrays"],
        "histograms": entries,
        "files": files,
    }


def _file_entries(blobs: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
    return {name: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)} for name, b in blobs.items()}


def write_whole(target: Path, tables: Mapping[str, pd.DataFrame], state: RunState) -> bytes:
    """The whole run into a new data directory (or a new run directory); returns the manifest's bytes."""
    if target.exists() and not _is_ours(target):
        raise FileExistsError(
            f"{target} exists and is not a saved xaisparse History (no {MANIFEST}); refusing to overwrite it"
        )
    blobs: dict[str, bytes] = {f"{kind}.parquet": _parquet_bytes(tables[kind]) for kind in TABLE_COLUMNS}
    extra, names, entries = _state_files(target, state)
    blobs.update(extra)
    parts = {kind: [f"{kind}.parquet"] for kind in TABLE_COLUMNS}
    manifest = _manifest(state, parts, names, entries, _file_entries(blobs))
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        raw = _replace_in_place(target, manifest, blobs)
    else:
        raw = _create(target, manifest, blobs)
    _remove_leftovers(target, keep=manifest["data"])
    return raw


_PART_NUMBER = re.compile(r"^[a-z]+-(\d{6,})\.")


def append_run(
    path: str | os.PathLike[str],
    committed: bytes,
    parts: Mapping[str, pd.DataFrame],
    state: RunState,
    max_parts: int,
) -> bytes | None:
    """Append table rows to the run at ``path`` whose manifest is ``committed`` (bytes this process wrote).

    ``parts[kind]`` holds the rows to add to table ``kind``; the histograms and the evidence are
    written whole (under new names). The new files go into the current data directory beside the
    committed ones, and a new manifest listing them is the commit point; files no manifest names
    (the old histograms, what a killed append left) are removed. Returns the new manifest's bytes,
    or None (nothing written) when the run on disk is not ``committed`` any more or a table would
    have more than ``max_parts`` parts: the caller then writes the whole run.
    """
    target = Path(path)
    try:
        raw = (target / MANIFEST).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None
    if raw != committed:
        return None
    previous = json.loads(raw)
    tables = {kind: [*previous["tables"][kind]] for kind in TABLE_COLUMNS}
    if any(len(tables[kind]) + 1 > max_parts for kind in parts):
        return None
    folder = target / previous["data"]
    named = {*previous["files"]}
    for p in folder.iterdir():  # leftovers of an interrupted append: never committed, so never read
        if p.name not in named:
            _remove(p)
    number = 1 + max((int(m.group(1)) for name in named if (m := _PART_NUMBER.match(name))), default=1)
    suffix = f"-{number:06d}"
    blobs = {}
    for kind, frame in parts.items():
        name = _suffixed(f"{kind}.parquet", suffix)
        blobs[name] = _parquet_bytes(frame)
        tables[kind].append(name)
    extra, names, entries = _state_files(target, state, suffix)
    blobs.update(extra)
    kept = {p: previous["files"][p] for parts_ in tables.values() for p in parts_ if p in previous["files"]}
    manifest = _manifest(state, tables, names, entries, {**kept, **_file_entries(blobs)})
    manifest["data"] = previous["data"]
    data = _manifest_bytes(manifest, target)
    try:
        for name, blob in blobs.items():
            write_new_file(folder / name, blob)
        fsync_dir(folder)
        atomic_write_bytes(target / MANIFEST, data)  # the commit point
    except BaseException:
        for name in blobs:  # never referenced: the old manifest is in place
            (folder / name).unlink(missing_ok=True)
        raise
    for p in folder.iterdir():  # the histograms and evidence of the previous save
        if p.name not in manifest["files"]:
            _remove(p)
    _remove_leftovers(target, keep=manifest["data"])
    return data


def _manifest_bytes(manifest: dict[str, Any], target: Path) -> bytes:
    """The manifest as written, with its own SHA-256; validated first (a save never writes what load rejects)."""
    manifest = json.loads(json.dumps(manifest, allow_nan=False))  # exactly what a reader will parse
    manifest["manifest_sha256"] = _manifest_digest(manifest)
    problem = _schema_problem(manifest, SCHEMA_VERSION)
    if problem:
        raise ValueError(f"cannot save the History to {target}: its manifest would be invalid: {problem}")
    return json.dumps(manifest, indent=1, allow_nan=False).encode("utf-8")


def _write_data_dir(folder: Path, blobs: Mapping[str, bytes]) -> None:
    folder.mkdir()
    for name, data in blobs.items():
        write_new_file(folder / name, data)
    fsync_dir(folder)


def _create(target: Path, manifest: dict[str, Any], blobs: Mapping[str, bytes]) -> bytes:
    """First save: build the run under a hidden name beside ``target``, then rename it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        manifest["data"] = "data-000001"
        _write_data_dir(tmp / manifest["data"], blobs)
        raw = _manifest_bytes(manifest, target)
        write_new_file(tmp / MANIFEST, raw)
        fsync_dir(tmp)
        os.rename(tmp, target)  # fails (and changes nothing) if target appeared meanwhile
        fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return raw


def _replace_in_place(target: Path, manifest: dict[str, Any], blobs: Mapping[str, bytes]) -> bytes:
    """Later saves: a new data directory, then the manifest replaced atomically (the commit point)."""
    numbers = [int(m.group(1)) for p in target.iterdir() if (m := _DATA_DIR.match(p.name))]
    manifest["data"] = f"data-{max(numbers, default=0) + 1:06d}"
    folder = target / manifest["data"]
    try:
        _write_data_dir(folder, blobs)
        raw = _manifest_bytes(manifest, target)
        atomic_write_bytes(target / MANIFEST, raw)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)  # never referenced: the old manifest is in place
        raise
    return raw


def _is_ours(target: Path) -> bool:
    """A saved run, or a directory holding nothing but what an interrupted save into it left (or nothing)."""
    if not target.is_dir():
        return False
    return (target / MANIFEST).is_file() or all(_is_leftover(p.name) for p in target.iterdir())


def _is_leftover(name: str) -> bool:
    return bool(_DATA_DIR.match(name)) or name.startswith(f".{MANIFEST}.")


def _remove_leftovers(target: Path, keep: str) -> None:
    """After a committed save: what no manifest references any more, and what interrupted saves left."""
    for p in target.iterdir():
        if (_is_leftover(p.name) and p.name != keep) or (p.name in _LEGACY_FILES and p.is_file()):
            _remove(p)
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if p.name.startswith((f".{target.name}.tmp-", f".{target.name}.old-")):  # this writer's and 0.x's
            _remove(p)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- reading
class _Replaced(Exception):
    """A file the manifest names vanished because a concurrent save replaced the run: read again."""


def read_run(path: str | os.PathLike[str]) -> RunFiles:
    """Read and validate a run directory (or a directory holding one in ``history/``)."""
    root = Path(path)
    if not root.exists():
        raise FileNotFoundError(f"no run directory at {root}{_leftover_note(root)}")
    if root.is_dir() and not (root / MANIFEST).exists() and (root / "history" / MANIFEST).exists():
        root = root / "history"
    man_path = root / MANIFEST
    if not man_path.is_file():
        raise HistoryFormatError(
            f"{root} is not an xaisparse run directory: expected {MANIFEST} (written by History.save) inside it"
        )
    for attempt in range(_TRIES):
        raw = _manifest_bytes_of(man_path)
        try:
            return _read(root, man_path, raw)
        except _Replaced as exc:
            if attempt == _TRIES - 1 or _manifest_bytes_of(man_path) == raw:
                raise HistoryFormatError(str(exc)) from None
    raise AssertionError("unreachable")  # pragma: no cover


def _manifest_bytes_of(man_path: Path) -> bytes:
    """The manifest's bytes (one seam: the corruption tests feed edited bytes here, not to the disk)."""
    return man_path.read_bytes()


def _leftover_note(root: Path) -> str:
    """A hint when an interrupted save of xaisparse 0.x left the run under a hidden name beside ``root``."""
    if not root.parent.is_dir():
        return ""
    found = sorted(p.name for p in root.parent.glob(f".{glob.escape(root.name)}.*") if (p / MANIFEST).is_file())
    if not found:
        return ""
    return (
        f" (an interrupted save left {', '.join(found)} beside it: the .old-* directory is the run as it was "
        f"before that save; rename it to {root.name} to recover it)"
    )


def _schema_problem(manifest: Any, version: int) -> str | None:
    """None for a manifest that fits the schema of ``version``, else where and why it does not."""
    import fastjsonschema

    try:
        _validator(version)(manifest)
        return None
    except fastjsonschema.JsonSchemaValueException as fast:
        import jsonschema  # a damaged manifest: jsonschema's best match names the deepest cause

        schema = _schema(version)
        error = jsonschema.exceptions.best_match(
            jsonschema.validators.validator_for(schema)(schema).iter_errors(manifest)
        )
        if error is None:  # the two disagree (e.g. 1.0 as an integer): keep the stricter verdict
            where, message = "$" + str(fast.name)[len("data") :], str(fast.message)
        else:
            where, message = error.json_path, error.message
    message = message if len(message) <= 300 else message[:300] + "…"
    return f"at {where}: {message}"


def _parse(man_path: Path, raw: bytes) -> tuple[dict[str, Any], int]:
    def bad(problem: str) -> HistoryFormatError:
        return HistoryFormatError(f"{man_path} is not a valid xaisparse history manifest: {problem}")

    try:
        manifest = json.loads(raw.decode("utf-8"), parse_constant=_strict_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise HistoryFormatError(f"{man_path} is corrupt or truncated (not valid JSON: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise HistoryFormatError(f"{man_path} is not an xaisparse history: expected format {FORMAT!r}, got {got!r}")
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= SCHEMA_VERSION:
        raise HistoryFormatError(
            f"{man_path} has schema version {version!r}; this xaisparse reads versions 1..{SCHEMA_VERSION} "
            "(upgrade xaisparse to read newer runs)"
        )
    if version >= 3:
        stored = manifest.get("manifest_sha256")
        if stored != _manifest_digest(manifest):
            raise bad("its SHA-256 does not match its contents (the file was edited or damaged)")
    problem = _schema_problem(manifest, version)
    if problem:
        raise bad(f"{problem} (schema {version})")
    return manifest, version


def _layout(manifest: dict[str, Any], version: int, bad: Callable[[str], HistoryFormatError]) -> dict[str, Any]:
    """Where the data are, in schema-4 terms (schemas 1 and 2 keep flat files beside the manifest)."""
    if version >= 3:
        layout = {k: manifest[k] for k in ("data", "tables", "evidence", "arrays", "histograms", "files")}
        if version == 3:  # schema 3 named the population histograms "channel"
            layout["histograms"] = [
                {**{k: v for k, v in h.items() if k != "channel"}, "population": h["channel"]}
                for h in layout["histograms"]
            ]
    else:
        files = manifest["files"]
        layout = {
            "data": "",
            "tables": {kind: [f"{kind}.parquet"] for kind in TABLE_COLUMNS},
            "evidence": _EVIDENCE if _EVIDENCE in files else None,
            "arrays": _ARRAYS,
            "histograms": [
                {**h, "spatial": f"spatial_{h['index']}", "population": f"channel_{h['index']}"}
                for h in manifest["histograms"]
            ],
            "files": {name: {"sha256": digest, "bytes": None} for name, digest in files.items()},
        }
    named = [*(p for parts in layout["tables"].values() for p in parts), layout["arrays"]]
    named += [layout["evidence"]] if layout["evidence"] else []
    for name in named:
        if name not in layout["files"]:
            raise bad(f"{name} is used but not listed in 'files' (with its SHA-256)")
    keys, arrays = set(), set()
    for i, h in enumerate(layout["histograms"]):
        key = (h["split"], h["layer"])
        if key in keys:
            raise bad(f"histograms[{i}] repeats split {key[0]!r}, layer {key[1]!r}")
        keys.add(key)
        for name in (h["spatial"], h["population"]):
            if name in arrays or name == "bin_edges":
                raise bad(f"histograms[{i}] uses array {name!r} twice")
            arrays.add(name)
    return layout


def _read(root: Path, man_path: Path, raw: bytes) -> RunFiles:
    manifest, version = _parse(man_path, raw)

    def bad(problem: str) -> HistoryFormatError:
        return HistoryFormatError(f"{man_path} is not a valid xaisparse history manifest: {problem}")

    layout = _layout(manifest, version, bad)
    folder = root / layout["data"]
    for name, entry in layout["files"].items():
        fpath = folder / name
        try:
            size = fpath.stat().st_size if fpath.is_file() else None
            digest = None if size is None or size != (entry["bytes"] or size) else sha256(fpath)
        except FileNotFoundError:  # removed between the two looks: a concurrent save
            size = None
        if size is None:
            raise _Replaced(f"run directory {root} is incomplete: {Path(layout['data'], name)} is missing")
        if entry["bytes"] is not None and size != entry["bytes"]:
            raise _Replaced(f"{fpath} is corrupt or truncated: {size} bytes, the manifest says {entry['bytes']} bytes")
        if digest != entry["sha256"]:
            raise _Replaced(f"{fpath} is corrupt or truncated (its SHA-256 does not match the manifest)")

    def damaged(name: str, exc: Exception) -> HistoryFormatError:
        return HistoryFormatError(f"{folder / name} cannot be read: {type(exc).__name__}: {exc}")

    tables = {kind: _read_table(folder, parts, kind, damaged) for kind, parts in layout["tables"].items()}
    try:
        with np.load(folder / layout["arrays"], allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise _Replaced(f"{folder / layout['arrays']} vanished while it was read") from None
    except Exception as exc:  # zipfile / format errors of a damaged file
        raise damaged(layout["arrays"], exc) from None

    def wrong(problem: str) -> HistoryFormatError:
        return HistoryFormatError(f"{folder / layout['arrays']} does not match {man_path}: {problem}")

    edges = arrays.get("bin_edges")
    if edges is None and version >= 3:
        raise wrong("no bin_edges array")
    if edges is not None and (
        edges.ndim != 1 or edges.size < 2 or edges.dtype.kind != "f" or not np.all(np.diff(edges) > 0)
    ):
        raise wrong(f"bin_edges must be increasing floats (at least 2), got {edges.dtype} of shape {edges.shape}")
    hists = {}
    for h in layout["histograms"]:
        for name in (h["spatial"], h["population"]):
            if name not in arrays:
                raise wrong(f"array {name!r} of ({h['split']!r}, {h['layer']!r}) is missing")
        hists[(h["split"], h["layer"])] = ([int(e) for e in h["epochs"]], arrays[h["spatial"]], arrays[h["population"]])
    bins = edges.size - 1 if edges is not None else 20
    check_histograms(hists, bins, wrong)
    evidence = None
    if layout["evidence"]:
        evidence = _read_parquet(folder / layout["evidence"], damaged)
    return RunFiles(version, manifest, tables, edges, hists, evidence)


def _read_parquet(fpath: Path, damaged: Callable[[str, Exception], HistoryFormatError]) -> pd.DataFrame:
    try:
        return pd.read_parquet(fpath)
    except FileNotFoundError:
        raise _Replaced(f"{fpath} vanished while it was read") from None
    except Exception as exc:  # pyarrow's errors on damaged files
        raise damaged(fpath.name, exc) from None


def _read_table(
    folder: Path, parts: list[str], kind: str, damaged: Callable[[str, Exception], HistoryFormatError]
) -> pd.DataFrame:
    """The parts of one table, concatenated, with checked columns and the dtypes the writer used."""
    cols = TABLE_COLUMNS[kind]
    frames = []
    for name in parts:
        t = _read_parquet(folder / name, damaged)
        if list(t.columns) != cols:
            raise HistoryFormatError(f"{folder / name} has columns {list(t.columns)}, expected {cols}")
        for col in cols:
            kind_ok = {"epoch": "iu", "channel": "iu", "value": "fiu"}.get(col)
            if kind_ok is not None and t[col].dtype.kind not in kind_ok:
                raise HistoryFormatError(f"{folder / name}: column {col!r} has dtype {t[col].dtype}, expected numbers")
        splits = set(t["split"].astype(str)) - set(SPLITS)
        if splits:
            raise HistoryFormatError(f"{folder / name}: unknown split(s) {sorted(splits)}; expected {list(SPLITS)}")
        frames.append(t)
    return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
