"""Name -> class registries for the things users add (filters, storage tiers, table formats)."""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A dict of classes by name, filled by a decorator: `@FILTERS.register("vfx")`."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                warnings.warn(
                    f"{self.kind} {name!r} registered twice; the later one wins", stacklevel=2
                )
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        from vqf.errors import ConfigError

        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}", hint=f"known: {', '.join(sorted(self._items))}"
            ) from None

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def items(self):
        return sorted(self._items.items())
