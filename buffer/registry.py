"""A name -> component registry whose lookup lists the valid names on a miss."""

from __future__ import annotations

from typing import Generic, TypeVar

from buffer.errors import ReplayError

T = TypeVar("T")


class UnknownNameError(ReplayError, ValueError):
    """A configured name is not in its registry."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, item: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError as e:
            raise UnknownNameError(f"unknown {self.kind} {name!r}; valid: {sorted(self._items)}") from e

    def names(self) -> list[str]:
        return sorted(self._items)
