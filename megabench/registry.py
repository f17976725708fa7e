"""One registry type for every named thing (models, attention modules, heads, evaluations, data formats).

Duplicate names are an error; a missing name raises :class:`~megabench.errors.UnknownNameError`
(a ``KeyError`` and a ``MegabenchError``) listing close matches.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from megabench.errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object map with a decorator for registration.

    >>> heads = Registry("head", listing="megabench models")
    >>> @heads.register("cosface")
    ... def make_cosface(): ...
    >>> heads.names()
    ['cosface']
    >>> heads.get("cosfase")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    megabench.errors.UnknownNameError: unknown head 'cosfase'; did you mean 'cosface'? (known: 1; ...)

    ``listing`` names the command that lists every name, for the error message.
    """

    def __init__(self, kind: str, *, listing: str | None = None) -> None:
        self.kind = kind
        self.listing = listing
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "__name__", None)
            if not key:
                raise ValueError(f"cannot register an unnamed {self.kind}")
            self.add(key, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T) -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._items, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            where = f"; list them with `{self.listing}`" if self.listing else f": {', '.join(self.names())}"
            raise UnknownNameError(f"unknown {self.kind} {name!r}{hint} (known: {len(self._items)}{where})") from None

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return sorted(self._items.items())
