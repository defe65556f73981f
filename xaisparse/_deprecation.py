"""One way to keep an old keyword of a class working for one release, with a warning."""

from __future__ import annotations

import functools
import warnings
from typing import Any, TypeVar

__all__ = ["renamed_keyword"]

T = TypeVar("T", bound=type)


def renamed_keyword(old: str, new: str) -> Any:
    """Class decorator: ``cls(..., old=x)`` still works as ``cls(..., new=x)``, with a ``DeprecationWarning``.

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

    def wrap(cls: T) -> T:
        init = cls.__init__  # type: ignore[misc]

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if old in kwargs:
                warnings.warn(
                    f"{cls.__name__}({old}=...) is deprecated: use {cls.__name__}({new}=...)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                if new in kwargs:
                    raise TypeError(f"{cls.__name__}() got both {old}= and {new}=; pass only {new}=")
                kwargs[new] = kwargs.pop(old)
            init(self, *args, **kwargs)

        cls.__init__ = __init__  # type: ignore[misc]
        return cls

    return wrap
