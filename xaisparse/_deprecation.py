"""One way to keep an old keyword of a class or function working for one release, with a warning."""

from __future__ import annotations

import functools
import warnings
from typing import Any

__all__ = ["deprecated", "renamed_keyword"]


def deprecated(message: str, stacklevel: int = 2) -> None:
    """Warn that an old name or use works for one release only (``stacklevel`` as for ``warnings.warn``,
    counted from the caller of this function)."""
    warnings.warn(message, DeprecationWarning, stacklevel=stacklevel + 1)


def renamed_keyword(old: str, new: str) -> Any:
    """Decorator of a class or function: ``f(..., old=x)`` still works as ``f(..., new=x)``, with a ``DeprecationWarning``.

    >>> import dataclasses
    >>> @renamed_keyword("colour", "color")
    ... @dataclasses.dataclass
    ... class Pen:
    ...     color: str = "black"
    >>> import warnings
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")
    ...     Pen(colour="red").color
    'red'
    """

    def translate(name: str, kwargs: dict[str, Any]) -> None:
        if old in kwargs:
            deprecated(f"{name}({old}=...) is deprecated: use {name}({new}=...)", stacklevel=3)
            if new in kwargs:
                raise TypeError(f"{name}() got both {old}= and {new}=; pass only {new}=")
            kwargs[new] = kwargs.pop(old)

    def wrap(obj: Any) -> Any:
        if isinstance(obj, type):
            init = obj.__init__  # type: ignore[misc]

            @functools.wraps(init)
            def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
                translate(obj.__name__, kwargs)
                init(self, *args, **kwargs)

            obj.__init__ = __init__  # type: ignore[misc]
            return obj

        @functools.wraps(obj)
        def call(*args: Any, **kwargs: Any) -> Any:
            translate(obj.__name__, kwargs)
            return obj(*args, **kwargs)

        return call

    return wrap
