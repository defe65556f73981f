"""Argument checks shared by the whole package: one place for each kind of check and its message.

Every check returns the normalised value or raises ``TypeError`` (wrong kind of value) or
``ValueError`` (right kind, bad value) with a message that names the argument, says what was
expected and shows what was got. Never ``assert`` on user input.
"""

from __future__ import annotations

import fnmatch
import math
import numbers
from collections.abc import Collection, Sequence
from typing import Any

__all__ = [
    "SPLITS",
    "check_bool",
    "check_choice",
    "check_fraction",
    "check_int",
    "check_number",
    "check_split",
    "check_str",
    "is_int",
    "is_number",
    "match_name",
    "select_names",
    "short_names",
]

_GLOB_CHARS = "*?["

#: The data splits a run records. ``train`` and ``test`` are measured by :func:`~xaisparse.train.fit`;
#: ``val`` is for loops that keep a separate validation set (e.g. the Lightning callback).
SPLITS: tuple[str, ...] = ("train", "val", "test")


def is_int(x: Any) -> bool:
    """An integer that is not a bool (``True`` is an int in Python, never a count here)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x: Any) -> bool:
    """A real number that is not a bool."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int within ``[minimum, maximum]``.

    >>> check_int("epochs", 3, minimum=0)
    3
    >>> check_int("epochs", -1, minimum=0)
    Traceback (most recent call last):
    ...
    ValueError: epochs must be an int >= 0, got -1
    """
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an int <= {maximum}, got {value}")
    return value


def check_number(
    name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None, finite: bool = True
) -> float:
    """``value`` as a float within ``[minimum, maximum]`` (finite unless ``finite=False``).

    >>> check_number("lr", 1e-3, minimum=0)
    0.001
    """
    if not is_number(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum:g}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return value


def check_fraction(
    name: str, value: Any, *, low: float = 0.0, high: float = 1.0, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a float in the interval from ``low`` to ``high`` (open or closed at each end).

    >>> check_fraction("label_noise", 1.0, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: label_noise must be in [0, 1), got 1.0
    """
    if not is_number(value):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} {value!r}")
    value = float(value)
    lo_ok = value > low if low_open else value >= low
    hi_ok = value < high if high_open else value <= high
    if math.isnan(value) or not (lo_ok and hi_ok):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is a bool (not a truthy int or string)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def check_str(name: str, value: Any, *, empty: bool = False) -> str:
    """``value`` if it is a (non-empty, unless ``empty``) str."""
    if not isinstance(value, str) or (not empty and not value):
        raise TypeError(f"{name} must be a non-empty str, got {type(value).__name__} {value!r}")
    return value


def check_choice(name: str, value: Any, choices: Collection[str]) -> str:
    """``value`` if it is one of ``choices``; the error lists them.

    >>> check_choice("kind", "pie", ("violin", "box"))
    Traceback (most recent call last):
    ...
    ValueError: kind must be one of ['violin', 'box'], got 'pie'
    """
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    return value


def check_split(value: Any, name: str = "split") -> str:
    """``value`` if it is one of :data:`SPLITS` (``"train"``, ``"val"``, ``"test"``).

    >>> check_split("test")
    'test'
    >>> check_split("held-out")
    Traceback (most recent call last):
    ...
    ValueError: split must be one of ['train', 'val', 'test'], got 'held-out'
    """
    return check_choice(name, value, SPLITS)


def short_names(names: Sequence[str], n: int = 12) -> str:
    """The first ``n`` names, quoted, and how many more there are (for error messages).

    >>> short_names(["a", "b", "c"], 2)
    "'a', 'b', ... (1 more)"
    """
    shown = ", ".join(repr(x) for x in names[:n])
    return shown + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def match_name(pattern: str, available: Sequence[str], what: str = "layer", where: str = "the run") -> list[str]:
    """The names of ``available`` one exact name or ``fnmatch`` glob chooses, in the order of ``available``.

    An exact name is looked up first (so a name holding ``[`` is found); an unknown name
    raises ``UnknownLayerError`` with the closest valid names, a glob that matches nothing one
    listing what exists. ``where`` names the owner in the message (a model's class, ``"the run"``).

    >>> match_name("block*", ["block1", "head", "block2"])
    ['block1', 'block2']
    """
    from ._errors import UnknownLayerError, closest

    names = list(available)
    if pattern in names:
        return [pattern]
    if any(ch in pattern for ch in _GLOB_CHARS):
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if hits:
            return hits
        raise UnknownLayerError(
            f"the pattern {pattern!r} matches no {what} of {where}; available: {short_names(names)}"
        )
    raise UnknownLayerError(
        f"{where} has no {what} named {pattern!r}; closest valid names: {short_names(closest(pattern, names))}; "
        f"available: {short_names(names)}"
    )


def select_names(
    patterns: Collection[str] | None, available: Sequence[str], what: str = "layer", where: str = "the run"
) -> list[str]:
    """The names of ``available`` chosen by exact names and ``fnmatch`` globs (:func:`match_name`), in its order.

    ``None`` chooses everything. The order is that of ``available`` (a model's or a run's
    network order), whatever the order of the patterns: the same rule as
    :func:`~xaisparse.recording.select_layers`.

    >>> select_names(["head", "block*"], ["block1", "block2", "head"])
    ['block1', 'block2', 'head']
    """
    names = list(available)
    if patterns is None:
        return names
    chosen: set[str] = set()
    for pattern in patterns:
        chosen.update(match_name(pattern, names, what, where))
    return [n for n in names if n in chosen]
