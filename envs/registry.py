"""The one registry mechanism of Tidal's extension points.

Environments, rewards, task sources and opponents (envs), advantage estimators, policy losses,
aggregation modes and KL estimators (learner), selectors and removers (buffer): each is a
`Registry` filled by a decorator, and a lookup miss raises `UnknownNameError` listing the valid
names. It lives here, in the package with no dependencies on the others, so that every light
package can import it (learner and buffer import nothing else from envs).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """A configured name is not registered; the message lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; valid names: {', '.join(sorted(valid)) or '(none)'}")
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)


class Registry(Generic[T]):
    """Name -> component. `@REGISTRY.register("name")` on a function or class, or
    `REGISTRY.register("name")(value)` for any other object."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorate(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return decorate

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError as e:
            raise UnknownNameError(self.kind, name, list(self._items)) from e

    def build(self, name: str, **params: Any) -> Any:
        """The component `name` called with `params`. A parameter it does not take is named, with
        the ones it does, as a ValueError (config validation reports those with the setting's key;
        the TypeError from inside the call escaped it as a traceback)."""
        item = self.get(name)
        accepted = inspect.signature(item).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
            unknown = sorted(set(params) - set(accepted))
            if unknown:
                raise ValueError(f"{self.kind} {name!r} has no parameter {', '.join(map(repr, unknown))}; "
                                 f"its parameters: {', '.join(accepted) or '(none)'}")
        return item(**params)

    def check(self, name: str) -> str:
        """`name` if it is registered (for config validators), else UnknownNameError."""
        self.get(name)
        return name

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
