"""A name -> component registry for the learner's extension points (policy losses, advantages)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(ValueError):
    """A name was looked up that no component registered; the message lists the valid names."""


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self._kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self._kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError as e:
            raise UnknownComponentError(f"unknown {self._kind} {name!r}; valid: {', '.join(self.names())}") from e

    def names(self) -> list[str]:
        return sorted(self._items)
